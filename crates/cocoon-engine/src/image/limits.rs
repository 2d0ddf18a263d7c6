//! Bounds on what images may cost the host: free space checked before and
//! while writing, and the decompressed size of one layer capped.
//!
//! [`Bounded`] wraps a layer's decompressed stream: it fails the read that
//! would pass `max_bytes` (a gzip or zstd bomb stops at the limit, not after
//! it), and every [`SPACE_STEP`] bytes it checks that the images directory
//! still has room for what was unpacked so far once more (the EROFS disk is
//! built from the unpacked tree) plus the next step. The failure is kept
//! for the caller, which reports it instead of the unpacker's I/O error.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The largest manifest (or index) a registry may send.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// How often (in decompressed bytes) free space is checked again.
pub const SPACE_STEP: u64 = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error(
        "not enough free space in {}: {what} needs {}, {} free (free some space or move root_dir)",
        dir.display(), human(*need), human(*free)
    )]
    NoSpace {
        dir: PathBuf,
        what: String,
        need: u64,
        free: u64,
    },
    #[error("{what} is larger than {} uncompressed (max_layer_bytes = {limit})", human(*limit))]
    TooLarge { what: String, limit: u64 },
}

/// `12345678` → `11.8 MiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Bytes available to this (root) process in the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// The decision alone: `need` bytes fit in `free`?
pub fn check_space(dir: &Path, what: &str, need: u64, free: u64) -> Result<(), LimitError> {
    if need > free {
        return Err(LimitError::NoSpace {
            dir: dir.to_path_buf(),
            what: what.to_string(),
            need,
            free,
        });
    }
    Ok(())
}

/// Checks that `dir`'s filesystem has `need` bytes free. A filesystem that
/// cannot say is not refused here: the write itself will fail if it must.
pub fn require_space(dir: &Path, what: &str, need: u64) -> Result<(), LimitError> {
    match free_bytes(dir) {
        Ok(free) => check_space(dir, what, need, free),
        Err(e) => {
            tracing::debug!(dir = %dir.display(), "cannot read free space: {e}");
            Ok(())
        }
    }
}

/// What the space check during unpacking requires after `read` bytes:
/// room for another copy of them (the EROFS disk) and the next step.
pub fn space_needed_after(read: u64) -> u64 {
    read.saturating_add(SPACE_STEP)
}

/// Free space watched while a cloud image is copied into `images/tmp/`:
/// every [`SPACE_STEP`] bytes written, the next step must still fit. The
/// copy is sparse (runs of zeros are holes), so bytes written, not bytes
/// read, are what it costs.
pub struct SpaceWatch {
    dir: PathBuf,
    what: String,
    written: u64,
    next_check: u64,
    free: fn(&Path) -> io::Result<u64>,
}

impl SpaceWatch {
    pub fn new(dir: &Path, what: &str) -> SpaceWatch {
        SpaceWatch::with_free(dir, what, free_bytes)
    }

    /// With `free` answering how much room `dir` has (tests).
    pub fn with_free(dir: &Path, what: &str, free: fn(&Path) -> io::Result<u64>) -> SpaceWatch {
        SpaceWatch {
            dir: dir.to_path_buf(),
            what: what.to_string(),
            written: 0,
            next_check: SPACE_STEP,
            free,
        }
    }

    /// Before anything is written: room for `need` bytes (what the sources
    /// take on disk, or one step for a stream of unknown length).
    pub fn start(&self, need: u64) -> Result<(), LimitError> {
        self.check(&self.what, need)
    }

    /// `n` more bytes were written: past each step, the next one must fit.
    pub fn wrote(&mut self, n: u64) -> Result<(), LimitError> {
        self.written = self.written.saturating_add(n);
        if self.written < self.next_check {
            return Ok(());
        }
        self.next_check = self.written.saturating_add(SPACE_STEP);
        let what = format!("{} ({} copied so far)", self.what, human(self.written));
        self.check(&what, SPACE_STEP)
    }

    fn check(&self, what: &str, need: u64) -> Result<(), LimitError> {
        match (self.free)(&self.dir) {
            Ok(free) => check_space(&self.dir, what, need, free),
            Err(e) => {
                tracing::debug!(dir = %self.dir.display(), "cannot read free space: {e}");
                Ok(())
            }
        }
    }
}

/// A decompressed layer stream with its size bounded and free space watched.
pub struct Bounded<R> {
    inner: R,
    read: u64,
    max_bytes: u64,
    next_check: u64,
    space_dir: PathBuf,
    what: String,
    /// How the too-large error names the stream (`what` unless set).
    too_large: Option<String>,
    failure: Arc<Mutex<Option<LimitError>>>,
}

impl<R: Read> Bounded<R> {
    pub fn new(inner: R, max_bytes: u64, space_dir: &Path, what: &str) -> Bounded<R> {
        Bounded {
            inner,
            read: 0,
            max_bytes,
            next_check: SPACE_STEP,
            space_dir: space_dir.to_path_buf(),
            what: what.to_string(),
            too_large: None,
            failure: Arc::default(),
        }
    }

    /// Names the stream `name` when it exceeds `max_bytes` (the free-space
    /// messages keep `what`).
    pub fn too_large_as(mut self, name: &str) -> Bounded<R> {
        self.too_large = Some(name.to_string());
        self
    }

    /// Where the limit that stopped the stream is kept.
    pub fn failure(&self) -> Arc<Mutex<Option<LimitError>>> {
        self.failure.clone()
    }

    fn fail(&self, error: LimitError) -> io::Error {
        let text = error.to_string();
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
        io::Error::other(text)
    }
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Never ask for more than one byte past the limit: the read that
        // crosses it is the one refused.
        let room = self.max_bytes.saturating_add(1).saturating_sub(self.read);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.read += n as u64;
        if self.read > self.max_bytes {
            return Err(self.fail(LimitError::TooLarge {
                what: self.too_large.clone().unwrap_or_else(|| self.what.clone()),
                limit: self.max_bytes,
            }));
        }
        if self.read >= self.next_check {
            self.next_check = self.read.saturating_add(SPACE_STEP);
            let what = format!("{} ({} unpacked so far)", self.what, human(self.read));
            if let Err(e) = require_space(&self.space_dir, &what, space_needed_after(self.read)) {
                return Err(self.fail(e));
            }
        }
        Ok(n)
    }
}

/// Picks the limit failure over the unpacker's error that it caused.
pub fn take_failure(failure: &Arc<Mutex<Option<LimitError>>>) -> Option<LimitError> {
    failure.lock().unwrap_or_else(|e| e.into_inner()).take()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_human() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(4 << 20), "4.0 MiB");
        assert_eq!(human(64 << 30), "64.0 GiB");
        assert_eq!(human((3 << 20) + (1 << 19)), "3.5 MiB");
    }

    #[test]
    fn space_arithmetic() {
        let dir = Path::new("/r/images");
        assert_eq!(check_space(dir, "x", 10, 10), Ok(()));
        assert_eq!(
            check_space(dir, "layer sha256:ab", 11 << 20, 3 << 20)
                .unwrap_err()
                .to_string(),
            "not enough free space in /r/images: layer sha256:ab needs 11.0 MiB, 3.0 MiB free (free some space or move root_dir)"
        );
        assert_eq!(space_needed_after(0), SPACE_STEP);
        assert_eq!(space_needed_after(10 << 20), (10 << 20) + SPACE_STEP);
        assert_eq!(space_needed_after(u64::MAX), u64::MAX);
        // The real filesystem answers something.
        assert!(free_bytes(Path::new("/")).is_ok());
        assert!(require_space(Path::new("/"), "nothing", 0).is_ok());
        assert!(require_space(Path::new("/"), "everything", u64::MAX).is_err());
    }

    #[test]
    fn the_read_that_crosses_the_limit_fails_and_no_later() {
        let dir = tempfile::tempdir().unwrap();
        // An endless stream: a bomb.
        let mut bounded = Bounded::new(io::repeat(0), 10 << 20, dir.path(), "layer L");
        let failure = bounded.failure();
        let mut sink = Vec::new();
        let err = io::copy(&mut bounded, &mut sink).unwrap_err();
        assert_eq!(
            err.to_string(),
            "layer L is larger than 10.0 MiB uncompressed (max_layer_bytes = 10485760)"
        );
        // The crossing read's bytes are dropped with it: how many came
        // before depends on the caller's buffer sizes, never past the limit.
        assert!(
            sink.len() <= 10 << 20 && !sink.is_empty(),
            "{} bytes passed on, the limit is {}",
            sink.len(),
            10 << 20
        );
        assert!(matches!(
            take_failure(&failure),
            Some(LimitError::TooLarge { limit, .. }) if limit == 10 << 20
        ));
        // Exactly the limit is fine.
        let mut bounded = Bounded::new(io::repeat(1).take(10 << 20), 10 << 20, dir.path(), "l");
        assert_eq!(io::copy(&mut bounded, &mut io::sink()).unwrap(), 10 << 20);
        assert_eq!(take_failure(&bounded.failure()), None);
    }

    #[test]
    fn a_copy_checks_room_before_and_at_each_step() {
        fn six_mib(_: &Path) -> io::Result<u64> {
            Ok(6 << 20)
        }
        fn unknown(_: &Path) -> io::Result<u64> {
            Err(io::Error::other("no statvfs"))
        }
        let dir = Path::new("/r/images");
        let mut watch = SpaceWatch::with_free(dir, "importing disk.raw", six_mib);
        assert_eq!(watch.start(6 << 20), Ok(()));
        assert_eq!(
            watch.start(16 << 20).unwrap_err().to_string(),
            "not enough free space in /r/images: importing disk.raw needs 16.0 MiB, 6.0 MiB free (free some space or move root_dir)"
        );
        // Below the first step nothing is asked.
        assert_eq!(watch.wrote(SPACE_STEP - 1), Ok(()));
        // Six MiB free: the next 4 MiB step still fits.
        assert_eq!(watch.wrote(1), Ok(()));
        assert_eq!(
            watch.wrote(SPACE_STEP - 1),
            Ok(()),
            "no check before the next step"
        );
        let mut tight = SpaceWatch::with_free(dir, "importing standard input", |_| Ok(3 << 20));
        assert_eq!(
            tight.wrote(5 << 20).unwrap_err().to_string(),
            "not enough free space in /r/images: importing standard input (5.0 MiB copied so far) needs 4.0 MiB, 3.0 MiB free (free some space or move root_dir)"
        );
        // A filesystem that cannot say is not refused.
        let mut blind = SpaceWatch::with_free(dir, "x", unknown);
        assert_eq!(blind.start(u64::MAX), Ok(()));
        assert_eq!(blind.wrote(u64::MAX), Ok(()));
    }

    #[test]
    fn the_too_large_name_can_differ_from_the_space_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut bounded = Bounded::new(io::repeat(0), 1 << 20, dir.path(), "importing l.tar")
            .too_large_as("layer l.tar");
        let err = io::copy(&mut bounded, &mut io::sink()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "layer l.tar is larger than 1.0 MiB uncompressed (max_layer_bytes = 1048576)"
        );
    }
}
