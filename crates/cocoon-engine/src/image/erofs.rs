//! Directory tree → EROFS image with `mkfs.erofs`.
//!
//! Built from an unpacked tree, never with `--tar`: erofs-utils before 1.8
//! (bookworm ships 1.5) silently corrupts tar-mode input.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::RunError;

#[derive(Debug, thiserror::Error)]
pub enum ErofsError {
    #[error("cannot run mkfs.erofs ({0}); install erofs-utils")]
    Missing(std::io::Error),
    #[error("mkfs.erofs failed for {}: {output}", tree.display())]
    Failed { tree: PathBuf, output: String },
}

/// A stable filesystem UUID for a layer digest, so the same layer always
/// produces the same image.
pub fn layer_uuid(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    let mut h: Vec<char> = hex
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(32)
        .collect();
    h.resize(32, '0');
    h[12] = '5'; // version nibble
    h[16] = ['8', '9', 'a', 'b'][h[16].to_digit(16).unwrap_or(0) as usize & 3]; // RFC 4122 variant
    let s: String = h.into_iter().collect();
    format!(
        "{}-{}-{}-{}-{}",
        &s[0..8],
        &s[8..12],
        &s[12..16],
        &s[16..20],
        &s[20..32]
    )
}

/// Builds `output` from `tree`: uncompressed, timestamps zeroed, ownership
/// and xattrs (including overlayfs whiteout markers) kept.
///
/// Uncompressed because the build is on the critical path of every pull:
/// lz4 (`-zlz4`, single-threaded in erofs-utils 1.5) was a fifth of a
/// pull's CPU time (`bench pull`, `perf record`), and the guest then pays
/// for decompression on every read. The price is disk: a layer's disk is
/// about its unpacked size (58.7 MB instead of 38.0 MB for the bench's
/// 56 MiB half-random file; text and binaries compress better).
pub fn build(tree: &Path, output: &Path, uuid: &str) -> Result<(), ErofsError> {
    crate::process::run(
        Command::new("mkfs.erofs")
            .arg("-T0")
            .arg(format!("-U{uuid}"))
            .arg("--quiet")
            .arg(output)
            .arg(tree),
    )
    .map_err(|e| match e {
        RunError::Spawn(e) => ErofsError::Missing(e),
        RunError::Failed(output) => ErofsError::Failed {
            tree: tree.to_path_buf(),
            output,
        },
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_stable_and_well_formed() {
        let digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let uuid = layer_uuid(digest);
        assert_eq!(uuid, layer_uuid(digest));
        assert_eq!(uuid.len(), 36);
        assert_eq!(&uuid[14..15], "5");
        assert!(["8", "9", "a", "b"].contains(&&uuid[19..20]));
        assert_ne!(uuid, layer_uuid("sha256:ff"));
    }
}
