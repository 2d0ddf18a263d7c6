//! `image import NAME [FILE...]`: what the sources are decides what is made.
//!
//! - tar layers (files, or one stream on stdin), possibly compressed, become
//!   an OCI image exactly as pulled layers do; the layer digest is the sha256
//!   of the uncompressed tar, as cocoon has it;
//! - a qcow2 or raw disk image (a file, stdin, or several files that are the
//!   `split` parts of one, concatenated in order), possibly compressed,
//!   becomes a cloud image (`image::cloud`).
//!
//! The first source's first bytes decide, after undoing gzip, xz, zstd or
//! bzip2: a tar header, the qcow2 magic, or a partition table (MBR/GPT; cloud
//! images boot through UEFI, so a raw disk without one is refused rather than
//! guessed at, unlike cocoon, which took anything unknown for a tar).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use sha2::{Digest, Sha256};

use super::cloud::import::DiskSource;
use super::cloud::sniff::{self, Compression, HEAD_LEN};
use super::cloud::stage::{Counting, read_full};
use super::cloud::{CloudError, Origin};
use super::commit;
use super::layer;
use super::oci::PulledLayer;
use super::store::{self, ImageDirs};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {source_name}: {source}")]
    Read {
        source_name: String,
        source: io::Error,
    },
    #[error(
        "cannot tell what {source_name} is: it is not a tar archive, a qcow2 image or a raw disk image with a partition table (MBR or GPT)"
    )]
    Unrecognised { source_name: String },
    #[error(
        "{source_name} is {found}, not a tar archive: when the first file is a tar layer, every file must be one (the parts of a split disk image start with a qcow2 header or partition table)"
    )]
    NotALayer {
        source_name: String,
        found: &'static str,
    },
    #[error(transparent)]
    Cloud(#[from] CloudError),
    #[error(transparent)]
    Archive(#[from] super::archive::ArchiveError),
    #[error(
        "{source_name} is a whole image archive (docker save or an OCI layout): import it alone, not with other files"
    )]
    ArchiveWithOthers { source_name: String },
    /// Free space ran out (or would have).
    #[error(transparent)]
    Limit(#[from] super::limits::LimitError),
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
    Compressed(Compression),
    Qcow2,
    Tar,
    /// Starts with a partition table: a raw disk image.
    RawDisk,
    Unknown,
}

pub fn detect(head: &[u8]) -> Format {
    if let Some(compression) = Compression::detect(head) {
        Format::Compressed(compression)
    } else if head.starts_with(sniff::QCOW2_MAGIC) {
        Format::Qcow2
    } else if head.len() >= 262 && &head[257..262] == b"ustar" || tar_checksum_ok(head) {
        Format::Tar
    } else if sniff::has_partition_table(head) {
        Format::RawDisk
    } else {
        Format::Unknown
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

type Stream = Box<dyn Read + Send>;

/// Reads up to `HEAD_LEN` bytes and gives them back in front of the rest.
fn peek(mut stream: Stream) -> io::Result<(Vec<u8>, Stream)> {
    let mut head = vec![0u8; HEAD_LEN];
    let n = read_full(&mut stream, &mut head)?;
    head.truncate(n);
    Ok((head.clone(), Box::new(Cursor::new(head).chain(stream))))
}

/// Undoes one layer of compression, if the head shows one.
fn decompress(head: Vec<u8>, stream: Stream) -> io::Result<(Vec<u8>, Stream, Option<Compression>)> {
    match Compression::detect(&head) {
        Some(compression) => {
            let decoder = compression.decoder(BufReader::with_capacity(1 << 20, stream));
            let (head, stream) = peek(decoder)?;
            Ok((head, stream, Some(compression)))
        }
        None => Ok((head, stream, None)),
    }
}

/// The import sources, recognised.
pub enum Opened {
    /// Tar layers, bottom first.
    Layers(Vec<(String, Box<dyn BufRead + Send>)>),
    /// A whole image (`docker save`, an OCI layout): its name and stream.
    Archive(String, Box<dyn BufRead + Send>),
    Disk(DiskSource),
}

fn display(source: Option<&Path>) -> String {
    source.map_or("standard input".to_string(), |p| p.display().to_string())
}

/// The sources read one after the other, with their total length and the
/// space they take on disk (both unknown when stdin is among them).
fn concatenate(
    sources: &[Option<&Path>],
) -> Result<(Stream, Option<u64>, Option<u64>), ImportError> {
    let mut total = Some(0u64);
    let mut on_disk = Some(0u64);
    let mut parts: Vec<Stream> = Vec::with_capacity(sources.len());
    for source in sources {
        parts.push(match source {
            Some(path) => {
                let file = File::open(path).map_err(|source| ImportError::Read {
                    source_name: display(Some(path)),
                    source,
                })?;
                let meta = file.metadata().ok();
                total = total.zip(meta.as_ref()).map(|(t, m)| t + m.len());
                on_disk = on_disk.zip(meta.as_ref()).map(|(t, m)| t + allocated(m));
                Box::new(file)
            }
            None => {
                total = None;
                on_disk = None;
                Box::new(io::stdin())
            }
        });
    }
    let raw = parts
        .into_iter()
        .rev()
        .fold(Box::new(io::empty()) as Stream, |rest, part| {
            Box::new(part.chain(rest))
        });
    Ok((raw, total, on_disk))
}

/// Opens every source (stdin when `files` is empty or just `-`) and decides
/// from the first one's bytes whether they are tar layers or the parts of a
/// disk image. Nothing is written.
pub fn open_all(files: &[PathBuf]) -> Result<Opened, ImportError> {
    let sources: Vec<Option<&Path>> = match files {
        [] => vec![None],
        [one] if one.as_os_str() == "-" => vec![None],
        _ => files.iter().map(|f| Some(f.as_path())).collect(),
    };
    let first = display(sources[0]);
    let (raw, total, on_disk) = concatenate(&sources)?;
    let consumed = Arc::new(AtomicU64::new(0));
    let raw: Stream = Box::new(Counting {
        inner: raw,
        count: consumed.clone(),
    });
    let read_err = |source| ImportError::Read {
        source_name: first.clone(),
        source,
    };
    let (head, stream) = peek(raw).map_err(read_err)?;
    let (head, stream, compression) = decompress(head, stream).map_err(read_err)?;
    let name = match sources.len() {
        1 => first.clone(),
        n => format!("{first} (+{} more parts)", n - 1),
    };
    let archive = super::archive::is_archive(&head);
    match detect(&head) {
        Format::Tar if archive && sources.len() == 1 => Ok(Opened::Archive(
            first,
            Box::new(BufReader::with_capacity(1 << 20, stream)),
        )),
        Format::Tar if archive => Err(ImportError::ArchiveWithOthers { source_name: first }),
        Format::Tar if sources.len() == 1 => Ok(Opened::Layers(vec![(
            first,
            Box::new(BufReader::with_capacity(1 << 20, stream)),
        )])),
        // Each file is its own layer: open them one by one.
        Format::Tar => {
            drop(stream);
            let layers = sources
                .into_iter()
                .map(open)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Opened::Layers(layers))
        }
        Format::Qcow2 | Format::RawDisk => {
            // A qcow2 refused for its header is refused before anything is copied.
            if head.starts_with(sniff::QCOW2_MAGIC) {
                super::cloud::commit::qcow2_plan(&head, &Origin::Local(name.clone()))?;
            }
            Ok(Opened::Disk(DiskSource {
                name,
                reader: stream,
                compression,
                total,
                on_disk,
                consumed,
            }))
        }
        Format::Compressed(inner) => Err(CloudError::CompressedTwice {
            origin: Origin::Local(name),
            outer: compression.unwrap_or(inner),
            inner,
        }
        .into()),
        Format::Unknown => Err(unknown(&head, name)),
    }
}

/// What a source file takes on disk: its allocated blocks, at most its
/// length (a sparse raw disk costs what it holds, not its size).
pub fn allocated(meta: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.blocks().saturating_mul(512).min(meta.len())
}

/// The clearest refusal for bytes that are neither tar nor a disk image.
fn unknown(head: &[u8], name: String) -> ImportError {
    if let Some(found) = sniff::foreign(head) {
        return CloudError::NotAnImage {
            origin: Origin::Local(name),
            found,
        }
        .into();
    }
    if let Some(format) = sniff::other_disk_format(head) {
        return CloudError::Unsupported {
            origin: Origin::Local(name),
            format: format.to_string(),
        }
        .into();
    }
    ImportError::Unrecognised { source_name: name }
}

/// Opens one tar layer (a file, or stdin for None), undoing compression.
pub fn open(source: Option<&Path>) -> Result<(String, Box<dyn BufRead + Send>), ImportError> {
    let name = display(source);
    let read_err = |source| ImportError::Read {
        source_name: name.clone(),
        source,
    };
    let raw: Stream = match source {
        Some(path) => Box::new(File::open(path).map_err(read_err)?),
        None => Box::new(io::stdin()),
    };
    let (head, stream) = peek(raw).map_err(read_err)?;
    let (head, stream, _) = decompress(head, stream).map_err(read_err)?;
    let found = match detect(&head) {
        Format::Tar if super::archive::is_archive(&head) => {
            return Err(ImportError::ArchiveWithOthers { source_name: name });
        }
        Format::Tar => return Ok((name, Box::new(BufReader::with_capacity(1 << 20, stream)))),
        Format::Qcow2 => "a qcow2 disk image",
        Format::RawDisk => "a raw disk image",
        Format::Compressed(_) => "compressed twice",
        Format::Unknown => "unrecognised data",
    };
    Err(ImportError::NotALayer {
        source_name: name,
        found,
    })
}

/// Converts one tar stream into a stored layer; returns its digest-named
/// layer. Its decompressed size is capped at `max_layer_bytes`, as a pulled
/// layer's is.
pub fn import_layer(
    dirs: &ImageDirs,
    source_name: &str,
    reader: impl Read,
    max_layer_bytes: u64,
) -> Result<PulledLayer, ImportError> {
    dirs.create().map_err(io_err("cannot create", &dirs.root))?;
    let staging = dirs.root.join("tmp").join(format!(
        "import-{}-{}",
        std::process::id(),
        crate::id::generate_id()
    ));
    // Free space: the first step's worth before anything is written, then
    // checked again as the layer unpacks (see `limits::Bounded`), which also
    // stops a decompression bomb at `max_layer_bytes`.
    let what = format!("importing {source_name}");
    super::limits::require_space(&dirs.root, &what, super::limits::SPACE_STEP)?;
    let tree = staging.join("tree");
    std::fs::create_dir_all(&tree).map_err(io_err("cannot create", &tree))?;
    let result = (|| {
        let bounded = super::limits::Bounded::new(reader, max_layer_bytes, &dirs.root, &what)
            .too_large_as(&format!("layer {source_name}"));
        let (unpacked, digest) = unpack_hashed(bounded, source_name, &tree)?;
        store_unpacked(dirs, source_name, &digest, &staging, &tree, &unpacked)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

fn io_err(what: &'static str, path: &Path) -> impl Fn(io::Error) -> ImportError + use<> {
    let path = path.to_path_buf();
    move |source| ImportError::Io {
        what,
        path: path.clone(),
        source,
    }
}

/// Unpacks the tar into `tree`, hashing every byte read, its trailing
/// padding included, as a file digest would: the layer's digest.
fn unpack_hashed<R: Read>(
    bounded: super::limits::Bounded<R>,
    source_name: &str,
    tree: &Path,
) -> Result<(layer::Unpacked, crate::digest::Digest), ImportError> {
    let failure = bounded.failure();
    let mut hashing = Hashing {
        inner: bounded,
        hasher: Sha256::new(),
    };
    let limit_or = |e: ImportError| match super::limits::take_failure(&failure) {
        Some(limit) => ImportError::Limit(limit),
        None => e,
    };
    let unpacked = layer::unpack(&mut hashing, tree).map_err(|source| {
        limit_or(ImportError::Layer {
            source_name: source_name.to_string(),
            source,
        })
    })?;
    // Hash the tar's trailing padding too, as a file digest would.
    io::copy(&mut hashing, &mut io::sink()).map_err(|source| {
        limit_or(ImportError::Read {
            source_name: source_name.to_string(),
            source,
        })
    })?;
    crate::failpoint::hit_io("image.import.unpacked").map_err(|source| ImportError::Read {
        source_name: source_name.to_string(),
        source,
    })?;
    Ok((unpacked, store::digest_of(hashing.hasher)))
}

/// Commits the unpacked tree as layer `digest`, under that layer's lock;
/// a layer already stored with the same content is reused as it is.
fn store_unpacked(
    dirs: &ImageDirs,
    source_name: &str,
    digest: &crate::digest::Digest,
    staging: &Path,
    tree: &Path,
    unpacked: &layer::Unpacked,
) -> Result<PulledLayer, ImportError> {
    let _lock = crate::lock::BlobLock::acquire(dirs, digest)
        .map_err(io_err("cannot lock", &dirs.lock(digest)))?;
    if dirs.blob(digest).is_file() {
        // Same content already stored (imported or pulled): reuse it.
        let size = std::fs::metadata(dirs.blob(digest))
            .map_err(io_err("cannot stat", &dirs.blob(digest)))?
            .len();
        return Ok(PulledLayer {
            has_kernel: dirs.kernel(digest).is_file(),
            has_initrd: dirs.initrd(digest).is_file(),
            digest: digest.clone(),
            erofs_size: size,
            fetched: false,
        });
    }
    let size = commit::commit_layer(dirs, digest, staging, tree, unpacked).map_err(|source| {
        ImportError::Commit {
            source_name: source_name.to_string(),
            source,
        }
    })?;
    Ok(PulledLayer {
        digest: digest.clone(),
        erofs_size: size,
        has_kernel: unpacked.kernel.is_some(),
        has_initrd: unpacked.initrd.is_some(),
        fetched: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_formats_by_magic() {
        assert_eq!(
            detect(&[0x1f, 0x8b, 8, 0]),
            Format::Compressed(Compression::Gzip)
        );
        assert_eq!(detect(b"QFI\xfb\x00\x00\x00\x03"), Format::Qcow2);
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(detect(&tar), Format::Tar);
        let mut v7 = tar::Header::new_old();
        v7.set_path("etc/x").unwrap();
        v7.set_size(0);
        v7.set_cksum();
        assert_eq!(detect(v7.as_bytes()), Format::Tar, "a v7 tar without magic");
        let mut mbr = vec![0u8; 1024];
        mbr[..3].copy_from_slice(b"\xeb\x63\x90");
        assert_eq!(detect(&mbr), Format::Unknown, "no boot signature");
        mbr[510..512].copy_from_slice(&[0x55, 0xaa]);
        assert_eq!(detect(&mbr), Format::RawDisk);
        assert_eq!(detect(&[0u8; 512]), Format::Unknown);
        assert_eq!(detect(b""), Format::Unknown);
    }

    #[test]
    fn peeking_a_trickling_stream_sees_a_whole_head() {
        struct Trickle(Vec<u8>, usize);
        impl Read for Trickle {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(3).min(self.0.len() - self.1);
                buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
                self.1 += n;
                Ok(n)
            }
        }
        let mut tar = vec![0u8; 2048];
        tar[257..262].copy_from_slice(b"ustar");
        let (head, mut stream) = peek(Box::new(Trickle(tar.clone(), 0))).unwrap();
        assert_eq!(detect(&head), Format::Tar);
        let mut all = Vec::new();
        stream.read_to_end(&mut all).unwrap();
        assert_eq!(all, tar, "the peeked bytes are given back");
    }
}
