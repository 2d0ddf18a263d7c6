//! A snapshot is a flat directory, so an entry name must be one plain file
//! name: anything else could write outside the destination or shadow a path.

use super::ArchiveError;

/// Longest file name Linux accepts (NAME_MAX).
const NAME_MAX: usize = 255;

/// The entry name as a file name, or why it is not one.
pub(super) fn plain_name(raw: &[u8]) -> Result<String, ArchiveError> {
    let reason = if raw.is_empty() {
        Some("empty")
    } else if raw.contains(&0) {
        Some("contains a NUL byte")
    } else if raw.starts_with(b"/") {
        Some("absolute path")
    } else if raw.split(|b| *b == b'/').any(|part| part == b"..") {
        Some("refers to a parent directory")
    } else if raw.contains(&b'/') {
        Some("has a directory part")
    } else if raw == b"." {
        Some("is the current directory")
    } else if raw.len() > NAME_MAX {
        Some("longer than 255 bytes")
    } else {
        None
    };
    let name = String::from_utf8_lossy(raw).into_owned();
    match reason {
        Some(reason) => Err(ArchiveError::UnsafeName { name, reason }),
        None if std::str::from_utf8(raw).is_err() => Err(ArchiveError::UnsafeName {
            name,
            reason: "not UTF-8",
        }),
        None => Ok(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(raw: &[u8]) -> &'static str {
        match plain_name(raw) {
            Err(ArchiveError::UnsafeName { reason, .. }) => reason,
            other => panic!("{raw:?} accepted: {other:?}"),
        }
    }

    #[test]
    fn only_plain_names_pass() {
        assert_eq!(plain_name(b"cow.raw").unwrap(), "cow.raw");
        assert_eq!(plain_name(b"memory-range-0").unwrap(), "memory-range-0");
        assert_eq!(plain_name(b"..data").unwrap(), "..data");
        assert_eq!(reason(b""), "empty");
        assert_eq!(reason(b"a\0b"), "contains a NUL byte");
        assert_eq!(reason(b"/etc/x"), "absolute path");
        assert_eq!(reason(b"../x"), "refers to a parent directory");
        assert_eq!(reason(b".."), "refers to a parent directory");
        assert_eq!(reason(b"a/b"), "has a directory part");
        assert_eq!(reason(b"x/"), "has a directory part");
        assert_eq!(reason(b"./x"), "has a directory part");
        assert_eq!(reason(b"."), "is the current directory");
        assert_eq!(reason(&[b'a'; 256]), "longer than 255 bytes");
        assert_eq!(reason(b"\xff"), "not UTF-8");
    }
}
