//! Streams into `images/tmp/`: the one place imported or decompressed bytes
//! are written, hashed on the way, so the digest always describes exactly
//! the bytes stored (a source that changes mid-read cannot slip through, the
//! failure cocoon needed a second hashing pass for).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::{CloudError, Origin, io_err};
use crate::image::limits::SpaceWatch;
use crate::image::store::digest_of;

/// A work file that disappears when dropped, so a failed command leaves
/// nothing behind (a killed one leaves it for gc).
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
}

impl TempFile {
    /// A fresh name in `tmp`: `<prefix>-<pid>-<random><suffix>`.
    pub fn new_in(tmp: &Path, prefix: &str, suffix: &str) -> TempFile {
        TempFile {
            path: tmp.join(format!(
                "{prefix}-{}-{}{suffix}",
                std::process::id(),
                crate::id::generate_id()
            )),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub struct Staged {
    pub file: TempFile,
    /// `sha256:<hex>` of the bytes written.
    pub digest: crate::digest::Digest,
    pub size: u64,
}

/// Zero blocks this size or larger become holes: raw disk images are mostly
/// zeros, and the staged copy should not cost their full size.
const HOLE_BLOCK: usize = 64 << 10;

/// Copies `input` into a new file in `tmp`. `read_err` turns a read failure
/// into the caller's error (a decompression error, a broken pipe), `limit`
/// caps the size, `space` (if any) checks free space as bytes are written,
/// `on_progress` hears the running byte count.
#[allow(clippy::too_many_arguments)]
pub fn stage(
    tmp: &Path,
    input: &mut dyn Read,
    origin: &Origin,
    limit: Option<u64>,
    mut space: Option<&mut SpaceWatch>,
    read_err: &dyn Fn(io::Error) -> CloudError,
    on_progress: &mut dyn FnMut(u64),
) -> Result<Staged, CloudError> {
    let staged = TempFile::new_in(tmp, "stage", ".img");
    let path = staged.path().to_path_buf();
    let mut file = File::options()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io_err("cannot create", &path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    let mut hole = 0u64;
    loop {
        let n = read_full(input, &mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        if limit.is_some_and(|limit| size > limit) {
            return Err(CloudError::TooLarge {
                origin: origin.clone(),
                limit: limit.unwrap_or_default(),
            });
        }
        hasher.update(&buf[..n]);
        for block in buf[..n].chunks(HOLE_BLOCK) {
            if is_zero(block) {
                hole += block.len() as u64;
                continue;
            }
            if hole > 0 {
                file.seek(SeekFrom::Current(hole as i64))
                    .map_err(io_err("cannot write", &path))?;
                hole = 0;
            }
            file.write_all(block)
                .map_err(io_err("cannot write", &path))?;
            if let Some(space) = space.as_deref_mut() {
                space.wrote(block.len() as u64)?;
            }
        }
        on_progress(size);
    }
    // A trailing run of zeros is a hole up to the final length.
    file.set_len(size).map_err(io_err("cannot write", &path))?;
    file.sync_all().map_err(io_err("cannot sync", &path))?;
    Ok(Staged {
        file: staged,
        digest: digest_of(hasher),
        size,
    })
}

fn is_zero(block: &[u8]) -> bool {
    let (words, rest) = block.split_at(block.len() / 8 * 8);
    words
        .chunks_exact(8)
        .all(|w| u64::from_ne_bytes(w.try_into().unwrap()) == 0)
        && rest.iter().all(|b| *b == 0)
}

/// Reads until `buf` is full or the input ends (pipes deliver small pieces).
pub fn read_full(input: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Counts the bytes read through it, for progress on a stream a decoder consumes.
pub struct Counting<R> {
    pub inner: R,
    pub count: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

/// The first `HEAD_LEN` bytes of a file (fewer if it is shorter).
pub fn read_head(path: &Path) -> Result<Vec<u8>, CloudError> {
    let mut file = File::open(path).map_err(io_err("cannot open", path))?;
    let mut head = vec![0u8; super::sniff::HEAD_LEN];
    let n = read_full(&mut file, &mut head).map_err(io_err("cannot read", path))?;
    head.truncate(n);
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn plain(e: io::Error) -> CloudError {
        CloudError::Read {
            origin: Origin::Local("input".into()),
            source: e,
        }
    }

    #[test]
    fn staged_bytes_are_exact_zero_runs_become_holes() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = vec![0u8; 8 << 20];
        data[..5].copy_from_slice(b"start");
        data[(4 << 20) + 3] = 7;
        // Ends in a long zero run: the file must still have the full length.
        let mut seen = 0;
        let staged = stage(
            dir.path(),
            &mut &data[..],
            &Origin::Local("input".into()),
            None,
            None,
            &plain,
            &mut |n| seen = n,
        )
        .unwrap();
        assert_eq!(seen, data.len() as u64);
        assert_eq!(staged.size, data.len() as u64);
        assert_eq!(std::fs::read(staged.file.path()).unwrap(), data);
        let expected = digest_of(Sha256::new_with_prefix(&data));
        assert_eq!(staged.digest, expected);
        let meta = std::fs::metadata(staged.file.path()).unwrap();
        assert!(
            meta.blocks() * 512 < 1 << 20,
            "zeros are not written: {} blocks",
            meta.blocks()
        );
        let path = staged.file.path().to_path_buf();
        drop(staged);
        assert!(!path.exists(), "dropping the stage removes it");
    }

    #[test]
    fn limit_and_read_errors_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let origin = Origin::Local("big".into());
        let err = stage(
            dir.path(),
            &mut &[1u8; 3000][..],
            &origin,
            Some(2048),
            None,
            &plain,
            &mut |_| {},
        )
        .err()
        .unwrap();
        assert_eq!(
            err.to_string(),
            "big is larger than the 0 GiB limit for cloud images"
        );
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("pipe broke"))
            }
        }
        let err = stage(
            dir.path(),
            &mut Broken,
            &origin,
            None,
            None,
            &plain,
            &mut |_| {},
        )
        .err()
        .unwrap();
        assert_eq!(err.to_string(), "cannot read input: pipe broke");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
