use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::compress::Encoder;
use super::progress::Progress;
use super::sparse::{data_segments, encode_pax1_map};
use super::writer::TarWriter;
use super::{
    ArchiveError, ExportOptions, LEGACY_MANIFEST, MANIFEST_SUM, MAX_DATA_SIZE, MAX_FILE_SIZE,
    MAX_MANIFEST_SIZE, listing,
};
use crate::snapshot::manifest::{FileSum, MANIFEST, TreeHasher};

const COPY_BUFFER: usize = 1 << 20;

/// Writes the snapshot directory `dir` to `out` as a tar stream: upstream's
/// `snapshot.json` envelope, `cocoon.json`, then every file its `"files"` map lists, sorted by
/// name, nothing else. Files with holes (SEEK_DATA/SEEK_HOLE) become PAX 1.0
/// sparse entries, which GNU tar extracts sparse. Each file is checked
/// against its manifest size and digest on the way, so an archive that would
/// not import is an error here, not at the other end. `progress` gets the
/// bytes of file content handled so far, holes included.
pub fn export(
    dir: &Path,
    out: &mut dyn Write,
    options: &ExportOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<(), ArchiveError> {
    let manifest_path = dir.join(MANIFEST);
    let (manifest_file, manifest) = read_manifest(&manifest_path)?;
    let doc = serde_json::from_slice(&manifest).map_err(|e| ArchiveError::BadManifest {
        name: MANIFEST.into(),
        reason: format!("is not JSON: {e}"),
    })?;
    let files = listing::listed_files(&doc)?;

    let mut encoder = Encoder::new(out, options.compression).map_err(write_error)?;
    let mut progress = Progress::new(progress);
    let mut tar = TarWriter::new(BufWriter::with_capacity(COPY_BUFFER, &mut encoder));
    let meta = manifest_file
        .metadata()
        .map_err(source_error(&manifest_path))?;
    let (mode, mtime) = (meta.mode() & 0o777, mtime_of(&meta));
    // First, upstream's envelope: what epoch (and so vk-cocoon's hibernate
    // push) requires of an export stream, and what cocoon (Go) imports by;
    // this engine's import reads `cocoon.json` after it and ignores it.
    let envelope = serde_json::to_vec_pretty(&serde_json::json!({
        "version": 1,
        "config": doc.get("snapshot").cloned().unwrap_or_default(),
    }))
    .expect("envelope serialises");
    (|| {
        let len = envelope.len() as u64;
        tar.regular(LEGACY_MANIFEST, LEGACY_MANIFEST, len, mode, mtime, &[])?;
        tar.data(&envelope)?;
        tar.pad(len)
    })()
    .map_err(write_error)?;
    let size = manifest.len() as u64;
    (|| {
        tar.regular(MANIFEST, MANIFEST, size, mode, mtime, &[])?;
        tar.data(&manifest)?;
        tar.pad(size)
    })()
    .map_err(write_error)?;
    progress.advance(size);

    let mut buf = vec![0u8; COPY_BUFFER];
    for (name, sum) in &files {
        let file = FileExport {
            tar: &mut tar,
            buf: &mut buf,
            progress: &mut progress,
            hasher: TreeHasher::default(),
        };
        file.append(dir, name, sum)?;
    }
    // Last: the manifest's own sum, after everything it describes.
    let sum = manifest_sum_line(&manifest);
    (|| {
        let len = sum.len() as u64;
        tar.regular(MANIFEST_SUM, MANIFEST_SUM, len, 0o600, mtime, &[])?;
        tar.data(sum.as_bytes())?;
        tar.pad(len)
    })()
    .map_err(write_error)?;
    tar.finish().map_err(write_error)?;
    encoder.finish().map_err(write_error)
}

/// `sha256sum`'s line for the manifest bytes.
pub(super) fn manifest_sum_line(manifest: &[u8]) -> String {
    use sha2::Digest as _;
    let hex: String = sha2::Sha256::digest(manifest)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{hex}  {MANIFEST}\n")
}

struct FileExport<'a, 'p, W: Write> {
    tar: &'a mut TarWriter<W>,
    buf: &'a mut [u8],
    progress: &'a mut Progress<'p>,
    hasher: TreeHasher,
}

impl<W: Write> FileExport<'_, '_, W> {
    fn append(mut self, dir: &Path, name: &str, sum: &FileSum) -> Result<(), ArchiveError> {
        let path = dir.join(name);
        let source = source_error(&path);
        // O_NOFOLLOW: a symlink in the snapshot directory is never followed
        // out of it.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(&source)?;
        let meta = file.metadata().map_err(&source)?;
        if !meta.is_file() {
            return Err(source(io::Error::other("not a regular file")));
        }
        let size = meta.len();
        if size != sum.size {
            return Err(ArchiveError::SizeMismatch {
                name: name.into(),
                expected: sum.size,
                actual: size,
            });
        }
        limit(name, "file size", size, MAX_FILE_SIZE)?;
        let segments = data_segments(&file, size).map_err(&source)?;
        let data: u64 = segments.iter().map(|s| s.len).sum();
        let (mode, mtime) = (meta.mode() & 0o777, mtime_of(&meta));

        if data == size {
            limit(name, "entry data", size, MAX_DATA_SIZE)?;
            self.tar
                .regular(name, name, size, mode, mtime, &[])
                .map_err(write_error)?;
            self.copy(&file, &path, 0, size)?;
            self.tar.pad(size).map_err(write_error)?;
        } else {
            let map = encode_pax1_map(&segments, size);
            let entry_size = map.len() as u64 + data;
            limit(name, "entry data", entry_size, MAX_DATA_SIZE)?;
            let real_size = size.to_string();
            let records: [(&str, &[u8]); 4] = [
                ("GNU.sparse.major", b"1"),
                ("GNU.sparse.minor", b"0"),
                ("GNU.sparse.name", name.as_bytes()),
                ("GNU.sparse.realsize", real_size.as_bytes()),
            ];
            // What a reader without sparse support extracts: GNU tar's name.
            let header_name = format!("GNUSparseFile.0/{name}");
            (|| {
                self.tar
                    .regular(name, &header_name, entry_size, mode, mtime, &records)?;
                self.tar.data(&map)
            })()
            .map_err(write_error)?;
            let mut pos = 0;
            for segment in &segments {
                self.hole(segment.offset - pos);
                self.copy(&file, &path, segment.offset, segment.len)?;
                pos = segment.offset + segment.len;
            }
            self.hole(size - pos);
            self.tar.pad(entry_size).map_err(write_error)?;
        }
        let actual = self.hasher.finalize(size);
        if actual != sum.sha256 {
            return Err(ArchiveError::ChecksumMismatch {
                name: name.into(),
                expected: sum.sha256.clone(),
                actual,
            });
        }
        Ok(())
    }

    fn hole(&mut self, len: u64) {
        self.hasher.update_zeros(len);
        self.progress.advance(len);
    }

    fn copy(
        &mut self,
        file: &File,
        path: &Path,
        mut offset: u64,
        len: u64,
    ) -> Result<(), ArchiveError> {
        let end = offset + len;
        while offset < end {
            let want = self
                .buf
                .len()
                .min(usize::try_from(end - offset).unwrap_or(usize::MAX));
            let n = match file.read_at(&mut self.buf[..want], offset) {
                Ok(0) => {
                    let shrank = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file shrank while exporting",
                    );
                    return Err(source_error(path)(shrank));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(source_error(path)(e)),
            };
            let data = &self.buf[..n];
            self.hasher.update(data);
            self.tar.data(data).map_err(write_error)?;
            self.progress.advance(n as u64);
            offset += n as u64;
        }
        Ok(())
    }
}

/// The manifest, bounded: it is read into memory whole.
pub(super) fn read_manifest(path: &Path) -> Result<(File, Vec<u8>), ArchiveError> {
    let source = source_error(path);
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(&source)?;
    let mut bytes = Vec::new();
    (&file)
        .take(MAX_MANIFEST_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(&source)?;
    limit(MANIFEST, "manifest", bytes.len() as u64, MAX_MANIFEST_SIZE)?;
    Ok((file, bytes))
}

/// Export refuses what import would, so no archive is made that cannot be
/// read back.
fn limit(name: &str, what: &'static str, size: u64, limit: u64) -> Result<(), ArchiveError> {
    if size > limit {
        return Err(ArchiveError::TooLarge {
            name: name.into(),
            what,
            size,
            limit,
        });
    }
    Ok(())
}

fn mtime_of(meta: &std::fs::Metadata) -> u64 {
    u64::try_from(meta.mtime()).unwrap_or(0)
}

fn write_error(source: io::Error) -> ArchiveError {
    ArchiveError::Write { source }
}

pub(super) fn source_error(path: &Path) -> impl Fn(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Source {
        path: path.to_path_buf(),
        source,
    }
}
