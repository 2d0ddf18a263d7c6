//! Object IDs: 26 characters of RFC 4648 base32 (`A-Z2-7`), 130 random bits.
//!
//! The format is cocoon's, kept on purpose rather than switching to a
//! time-ordered ULID: users resolve objects by short ID prefixes (3+ chars) and
//! TAP devices are named after the first 8 characters, so the leading
//! characters must carry entropy. A ULID's first 10 characters are a timestamp
//! shared by everything created in the same millisecond.

pub const ID_LEN: usize = 26;
const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

pub fn generate_id() -> String {
    let mut bytes = [0u8; ID_LEN];
    getrandom::fill(&mut bytes).expect("the kernel's random source is available");
    bytes
        .iter()
        .map(|b| ALPHABET[(b & 31) as usize] as char)
        .collect()
}

/// Whether `text` can be (a prefix of) an ID, ignoring case.
pub fn is_id_prefix(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= ID_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_alphabetic() || (b'2'..=b'7').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_26_base32_chars_and_distinct() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| generate_id()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in &ids {
            assert_eq!(id.len(), ID_LEN);
            assert!(id.bytes().all(|b| ALPHABET.contains(&b)), "{id}");
            assert!(is_id_prefix(id));
        }
        // 8-char prefixes name TAP devices: they must not collide in a fleet.
        let taps: std::collections::HashSet<&str> = ids.iter().map(|id| &id[..8]).collect();
        assert_eq!(taps.len(), ids.len());
    }

    #[test]
    fn id_prefix_shape() {
        assert!(is_id_prefix("abc"));
        assert!(!is_id_prefix("ab1"));
        assert!(!is_id_prefix("my-vm"));
        assert!(!is_id_prefix(""));
    }
}
