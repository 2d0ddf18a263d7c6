//! `image import NAME [FILE...]`: local tar layers (or one stream on stdin),
//! possibly gzip-wrapped, become an image exactly as pulled layers do. The
//! layer digest is the sha256 of the uncompressed tar, as cocoon has it.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::commit;
use super::layer;
use super::oci::PulledLayer;
use super::store::ImageDirs;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {source_name}: {source}")]
    Read {
        source_name: String,
        source: io::Error,
    },
    #[error(
        "{source_name} is a {kind} disk image: importing cloud images is not implemented yet in this build (it arrives with the cloud images work); nothing was changed"
    )]
    CloudImage {
        source_name: String,
        kind: &'static str,
    },
    #[error("{source_name}: {source}")]
    Layer {
        source_name: String,
        source: layer::LayerError,
    },
    #[error("{source_name}: {source}")]
    Commit {
        source_name: String,
        source: commit::CommitError,
    },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// What a stream's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Gzip,
    Qcow2,
    Tar,
    /// Anything else: a raw disk image (a cloud image).
    Raw,
}

pub fn detect(head: &[u8]) -> Format {
    if head.starts_with(&[0x1f, 0x8b]) {
        Format::Gzip
    } else if head.starts_with(b"QFI\xfb") {
        Format::Qcow2
    } else if head.len() >= 262 && &head[257..262] == b"ustar" || tar_checksum_ok(head) {
        Format::Tar
    } else {
        Format::Raw
    }
}

/// A pre-POSIX (v7) tar header has no magic; its checksum identifies it: the
/// byte sum of the header with the checksum field read as spaces.
fn tar_checksum_ok(head: &[u8]) -> bool {
    let Some(header) = head.get(..512) else {
        return false;
    };
    let field = String::from_utf8_lossy(&header[148..156]);
    let Ok(stored) = u32::from_str_radix(field.trim_matches(|c: char| c == '\0' || c == ' '), 8)
    else {
        return false;
    };
    let sum: u32 = header
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                *b as u32
            }
        })
        .sum();
    header[0] != 0 && sum == stored
}

/// Hashes what passes through.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Opens a source (a file, or stdin for `-`/none), undoing gzip, and checks it is a tar.
pub fn open(source: Option<&Path>) -> Result<(String, Box<dyn BufRead + Send>), ImportError> {
    let name = source.map_or("standard input".to_string(), |p| p.display().to_string());
    let read_err = |source| ImportError::Read {
        source_name: name.clone(),
        source,
    };
    let raw: Box<dyn Read + Send> = match source {
        Some(path) => Box::new(File::open(path).map_err(read_err)?),
        None => Box::new(io::stdin()),
    };
    let mut reader: Box<dyn BufRead + Send> = Box::new(BufReader::with_capacity(1 << 20, raw));
    let mut format = detect(reader.fill_buf().map_err(read_err)?);
    if format == Format::Gzip {
        reader = Box::new(BufReader::with_capacity(
            1 << 20,
            flate2::bufread::MultiGzDecoder::new(reader),
        ));
        format = detect(reader.fill_buf().map_err(read_err)?);
    }
    match format {
        Format::Tar => Ok((name, reader)),
        Format::Qcow2 => Err(ImportError::CloudImage {
            source_name: name,
            kind: "qcow2",
        }),
        Format::Raw | Format::Gzip => Err(ImportError::CloudImage {
            source_name: name,
            kind: "raw (not a tar archive)",
        }),
    }
}

/// Converts one tar stream into a stored layer; returns its digest-named layer.
pub fn import_layer(
    dirs: &ImageDirs,
    source_name: &str,
    reader: impl Read,
) -> Result<PulledLayer, ImportError> {
    dirs.create().map_err(|source| ImportError::Io {
        what: "cannot create",
        path: dirs.root.clone(),
        source,
    })?;
    let staging = dirs.root.join("tmp").join(format!(
        "import-{}-{}",
        std::process::id(),
        crate::id::generate_id()
    ));
    let io_err = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| ImportError::Io {
            what,
            path: path.clone(),
            source,
        }
    };
    let tree = staging.join("tree");
    std::fs::create_dir_all(&tree).map_err(io_err("cannot create", &tree))?;
    let result = (|| {
        let mut hashing = Hashing {
            inner: reader,
            hasher: Sha256::new(),
        };
        let unpacked = layer::unpack(&mut hashing, &tree).map_err(|source| ImportError::Layer {
            source_name: source_name.to_string(),
            source,
        })?;
        // Hash the tar's trailing padding too, as a file digest would.
        io::copy(&mut hashing, &mut io::sink()).map_err(|source| ImportError::Read {
            source_name: source_name.to_string(),
            source,
        })?;
        let digest = super::store::digest_of(hashing.hasher);
        let lock_path = dirs.lock(&digest);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("cannot lock", &lock_path))?;
        lock.lock().map_err(io_err("cannot lock", &lock_path))?;
        if dirs.blob(&digest).is_file() {
            // Same content already stored (imported or pulled): reuse it.
            let size = std::fs::metadata(dirs.blob(&digest))
                .map_err(io_err("cannot stat", &dirs.blob(&digest)))?
                .len();
            return Ok(PulledLayer {
                has_kernel: dirs.kernel(&digest).is_file(),
                has_initrd: dirs.initrd(&digest).is_file(),
                digest,
                erofs_size: size,
                fetched: false,
            });
        }
        let size =
            commit::commit_layer(dirs, &digest, &staging, &tree, &unpacked).map_err(|source| {
                ImportError::Commit {
                    source_name: source_name.to_string(),
                    source,
                }
            })?;
        Ok(PulledLayer {
            digest,
            erofs_size: size,
            has_kernel: unpacked.kernel.is_some(),
            has_initrd: unpacked.initrd.is_some(),
            fetched: true,
        })
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_formats_by_magic() {
        assert_eq!(detect(&[0x1f, 0x8b, 8, 0]), Format::Gzip);
        assert_eq!(detect(b"QFI\xfb\x00\x00\x00\x03"), Format::Qcow2);
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(detect(&tar), Format::Tar);
        assert_eq!(detect(b"\xeb\x63\x90"), Format::Raw);
        let mut v7 = tar::Header::new_old();
        v7.set_path("etc/x").unwrap();
        v7.set_size(0);
        v7.set_cksum();
        assert_eq!(detect(v7.as_bytes()), Format::Tar, "a v7 tar without magic");
        assert_eq!(detect(&[0u8; 512]), Format::Raw);
        assert_eq!(detect(b""), Format::Raw);
    }
}
