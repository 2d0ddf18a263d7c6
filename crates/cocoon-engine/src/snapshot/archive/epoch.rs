//! Upstream's whole-file registry layout (cocoonstack/epoch,
//! `snapshot/push.go` and `snapshot/pull.go`): one blob per entry of
//! `snapshot export -o -` (the `snapshot.json` envelope excepted: it goes
//! into the config blob), a sparse file sent as its data only, with cocoon
//! (Go)'s `COCOON.sparse.map` / `COCOON.sparse.size` in the config blob's
//! `files` map.
//!
//! [`entries`] (each [`Entry::prepare`]d) is what `snapshot push --layout
//! whole` sends; [`import`]
//! rebuilds the stream epoch's pull feeds `cocoon snapshot import` and
//! imports it, so a pulled artifact goes through every check an import
//! makes, whoever pushed it (this engine, or epoch over cocoon (Go)).

use std::fs::{File, OpenOptions};
use std::io::{self, Cursor, Read};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::Digest as _;

use super::export::{manifest_sum_line, read_manifest, source_error};
use super::sparse::{Segment, data_segments};
use super::writer::{BLOCK, BLOCK_LEN, TarWriter};
use super::{ArchiveError, Imported, LEGACY_MANIFEST, MANIFEST_SUM, listing};
use crate::digest::Digest;
use crate::snapshot::manifest::{FileSum, MANIFEST, TreeHasher};

/// cocoon (Go)'s PAX keys for a sparse file, which epoch keeps in its
/// config blob.
pub const SPARSE_MAP: &str = "COCOON.sparse.map";
pub const SPARSE_SIZE: &str = "COCOON.sparse.size";

/// Pieces of a file read at once; one that is all zeros is left out of
/// the blob, as a hole.
const ZERO_PIECE: usize = 1 << 20;

/// One entry of the export stream, as one blob.
pub struct Entry {
    pub name: String,
    pub mode: u32,
    /// The file's size, holes included.
    pub size: u64,
    body: Body,
    segments: Vec<Segment>,
    /// What `cocoon.json` says of it (the snapshot's data files).
    sum: Option<FileSum>,
}

enum Body {
    Bytes(Vec<u8>),
    File(PathBuf),
}

impl Entry {
    /// Bytes of the blob: the file's data, holes left out.
    pub fn blob_len(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// `COCOON.sparse.map` (JSON `[{"o":…,"l":…}]`) when the blob is not
    /// the whole file.
    pub fn sparse_map(&self) -> Option<String> {
        (self.blob_len() != self.size).then(|| {
            let segments: Vec<_> = self
                .segments
                .iter()
                .map(|s| serde_json::json!({"o": s.offset, "l": s.len}))
                .collect();
            serde_json::to_string(&segments).expect("map serialises")
        })
    }

    /// The blob's bytes, read as they are sent.
    pub fn open(&self) -> io::Result<Box<dyn Read + Send>> {
        Ok(match &self.body {
            Body::Bytes(bytes) => Box::new(Cursor::new(bytes.clone())),
            Body::File(path) => Box::new(SegmentReader {
                file: open_plain(path)?,
                segments: self.segments.clone(),
                at: 0,
                done: 0,
            }),
        })
    }

    /// Reads the entry once: a data file is checked against `cocoon.json`
    /// (holes summed as zeros), so a file changed since the snapshot was
    /// taken is never sent; its 1 MiB pieces of zeros become holes too
    /// (guest memory the guest never touched is written out as zeros, not
    /// holes); returns the blob's digest.
    pub fn prepare(&mut self) -> Result<Digest, ArchiveError> {
        let mut blob = sha2::Sha256::new();
        let mut tree = TreeHasher::default();
        let mut reader = self.open().map_err(self.source())?;
        let mut buf = vec![0u8; ZERO_PIECE];
        let (mut pos, mut data) = (0, Vec::new());
        let zeros_are_holes = matches!(self.body, Body::File(_));
        for segment in &self.segments {
            tree.update_zeros(segment.offset - pos);
            let (mut at, end) = (segment.offset, segment.offset + segment.len);
            while at < end {
                // Pieces aligned to the file, so a piece is the same
                // wherever it is cut from.
                let next = (at + 1).next_multiple_of(ZERO_PIECE as u64).min(end);
                let piece = &mut buf[..super::small_len(next - at)];
                reader.read_exact(piece).map_err(self.source())?;
                tree.update(piece);
                if !(zeros_are_holes && piece.iter().all(|&b| b == 0)) {
                    blob.update(&*piece);
                    push_data(&mut data, at, next - at);
                }
                at = next;
            }
            pos = end;
        }
        tree.update_zeros(self.size - pos);
        if let Some(sum) = &self.sum {
            let actual = tree.finalize(self.size);
            if actual != sum.sha256 {
                return Err(ArchiveError::ChecksumMismatch {
                    name: self.name.clone(),
                    expected: sum.sha256.clone(),
                    actual,
                });
            }
        }
        self.segments = data;
        Ok(Digest::of(blob))
    }

    fn source(&self) -> impl Fn(io::Error) -> ArchiveError + '_ {
        move |source| ArchiveError::Source {
            path: PathBuf::from(&self.name),
            source,
        }
    }
}

/// Adds `len` bytes of data at `offset`, joining it to the last segment
/// when they touch.
fn push_data(segments: &mut Vec<Segment>, offset: u64, len: u64) {
    match segments.last_mut() {
        Some(last) if last.offset + last.len == offset => last.len += len,
        _ => segments.push(Segment { offset, len }),
    }
}

/// The snapshot directory `dir` as the entries of its export stream, in
/// order: `cocoon.json`, every file it lists (sorted by name),
/// `cocoon.json.sha256`; and the snapshot record, for the config blob.
pub fn entries(dir: &Path) -> Result<(serde_json::Value, Vec<Entry>), ArchiveError> {
    let manifest_path = dir.join(MANIFEST);
    let (manifest_file, manifest) = read_manifest(&manifest_path)?;
    let mode = manifest_file
        .metadata()
        .map_err(source_error(&manifest_path))?
        .mode()
        & 0o777;
    let doc: serde_json::Value =
        serde_json::from_slice(&manifest).map_err(|e| ArchiveError::BadManifest {
            name: MANIFEST.into(),
            reason: format!("is not JSON: {e}"),
        })?;
    let files = listing::listed_files(&doc)?;
    let sum_line = manifest_sum_line(&manifest).into_bytes();
    let mut entries = vec![bytes_entry(MANIFEST, mode, manifest)];
    for (name, sum) in files {
        let path = dir.join(&name);
        let file = open_plain(&path).map_err(source_error(&path))?;
        let meta = file.metadata().map_err(source_error(&path))?;
        if !meta.is_file() {
            return Err(source_error(&path)(io::Error::other("not a regular file")));
        }
        if meta.len() != sum.size {
            return Err(ArchiveError::SizeMismatch {
                name,
                expected: sum.size,
                actual: meta.len(),
            });
        }
        let segments = data_segments(&file, meta.len()).map_err(source_error(&path))?;
        entries.push(Entry {
            name,
            mode: meta.mode() & 0o777,
            size: meta.len(),
            body: Body::File(path),
            segments,
            sum: Some(sum),
        });
    }
    entries.push(bytes_entry(MANIFEST_SUM, 0o600, sum_line));
    let record = doc.get("snapshot").cloned().unwrap_or_default();
    Ok((record, entries))
}

fn bytes_entry(name: &str, mode: u32, bytes: Vec<u8>) -> Entry {
    let len = bytes.len() as u64;
    Entry {
        name: name.to_string(),
        mode,
        size: len,
        body: Body::Bytes(bytes),
        segments: vec![Segment { offset: 0, len }],
        sum: None,
    }
}

/// O_NOFOLLOW: a symlink in the snapshot directory is never followed out
/// of it.
fn open_plain(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// The data segments of a file, one after another.
struct SegmentReader {
    file: File,
    segments: Vec<Segment>,
    /// The segment being read, and how much of it is read.
    at: usize,
    done: u64,
}

impl Read for SegmentReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(segment) = self.segments.get(self.at) {
            if self.done == segment.len {
                (self.at, self.done) = (self.at + 1, 0);
                continue;
            }
            let want = super::small_len((segment.len - self.done).min(buf.len() as u64));
            let n = self
                .file
                .read_at(&mut buf[..want], segment.offset + self.done)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file shrank while it was read",
                ));
            }
            self.done += n as u64;
            return Ok(n);
        }
        Ok(0)
    }
}

/// One layer of a pulled whole-file artifact, its blob already on disk and
/// verified against its digest.
pub struct Layer {
    /// Its title: the entry's name (checked by the import).
    pub name: String,
    pub blob: PathBuf,
    pub len: u64,
    /// The config blob's `mode` for it (0: epoch's default, 0640).
    pub mode: u32,
    /// The config blob's `sparseMap` and `sparseSize` for it.
    pub sparse: Option<(String, u64)>,
}

/// Imports the stream epoch's pull would write: `envelope` as
/// `snapshot.json`, then each layer as an entry (its sparse map as
/// `COCOON.sparse.*` records), into `dest`, through every check
/// `snapshot import` makes.
pub fn import(
    dest: &Path,
    envelope: &serde_json::Value,
    layers: &[Layer],
    progress: &mut dyn FnMut(u64),
) -> Result<Imported, ArchiveError> {
    let envelope = serde_json::to_vec_pretty(envelope).expect("envelope serialises");
    let mut parts: Vec<Box<dyn Read>> = Vec::new();
    let header = |name: &str, size: u64, mode: u32, records: &[(&str, &[u8])]| {
        let mut tar = TarWriter::new(Vec::new());
        tar.regular(name, name, size, mode, 0, records)
            .expect("writing to memory");
        tar.into_inner()
    };
    let pad = |size: u64| {
        Cursor::new(vec![
            0u8;
            super::small_len(size.next_multiple_of(BLOCK) - size)
        ])
    };
    let len = envelope.len() as u64;
    parts.push(Box::new(Cursor::new(header(
        LEGACY_MANIFEST,
        len,
        0o644,
        &[],
    ))));
    parts.push(Box::new(Cursor::new(envelope)));
    parts.push(Box::new(pad(len)));
    for layer in layers {
        let mode = match layer.mode & 0o777 {
            0 => 0o640,
            mode => mode,
        };
        let size = layer.sparse.as_ref().map(|(_, size)| size.to_string());
        let records: Vec<(&str, &[u8])> = match (&layer.sparse, &size) {
            (Some((map, _)), Some(size)) => {
                vec![(SPARSE_MAP, map.as_bytes()), (SPARSE_SIZE, size.as_bytes())]
            }
            _ => Vec::new(),
        };
        parts.push(Box::new(Cursor::new(header(
            &layer.name,
            layer.len,
            mode,
            &records,
        ))));
        let blob = File::open(&layer.blob).map_err(source_error(&layer.blob))?;
        parts.push(Box::new(blob.take(layer.len)));
        parts.push(Box::new(pad(layer.len)));
    }
    parts.push(Box::new(Cursor::new(vec![0u8; 2 * BLOCK_LEN])));
    let mut stream = parts
        .into_iter()
        .reduce(|a, b| Box::new(a.chain(b)))
        .expect("never empty");
    super::import(&mut stream, dest, progress)
}
