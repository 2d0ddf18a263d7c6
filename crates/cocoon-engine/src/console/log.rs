//! The console log: everything the guest printed, in at most two files
//! (`<log>.1` and `<log>`) of at most `log_max_bytes` each, so a chatty
//! guest can never fill the disk.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the previous generation of `log` lives after a rotation.
pub fn rotated_log(log: &Path) -> PathBuf {
    let mut name = OsString::from(log.as_os_str());
    name.push(".1");
    PathBuf::from(name)
}

/// Appends to the log, rotating exactly at the limit.
pub(super) struct RotatingLog {
    path: PathBuf,
    max_bytes: u64,
    file: Option<File>,
    size: u64,
    /// Set after a failure was reported, so a full disk is reported once, not per chunk.
    failing: bool,
}

impl RotatingLog {
    pub(super) fn new(path: PathBuf, max_bytes: u64) -> RotatingLog {
        RotatingLog {
            path,
            max_bytes,
            file: None,
            size: 0,
            failing: false,
        }
    }

    /// Never fails: the console must keep draining even when the log cannot be written.
    pub(super) fn write(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let result = self.write_some(data);
            match result {
                Ok(n) => {
                    data = &data[n..];
                    self.failing = false;
                }
                Err(error) => {
                    if !self.failing {
                        tracing::warn!(log = %self.path.display(), %error, "cannot write the console log; output is dropped until it works again");
                    }
                    self.failing = true;
                    self.file = None;
                    return;
                }
            }
        }
    }

    fn write_some(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.file.is_none() {
            let file = open_append(&self.path)?;
            self.size = file.metadata()?.len();
            self.file = Some(file);
        }
        if self.max_bytes > 0 && self.size >= self.max_bytes {
            self.file = None;
            std::fs::rename(&self.path, rotated_log(&self.path))?;
            self.file = Some(open_append(&self.path)?);
            self.size = 0;
        }
        let room = match self.max_bytes {
            0 => data.len(),
            // Room beyond the address space is as good as unbounded.
            max => data
                .len()
                .min(usize::try_from(max - self.size).unwrap_or(usize::MAX)),
        };
        let file = self.file.as_mut().expect("opened above");
        file.write_all(&data[..room])?;
        self.size += room as u64;
        Ok(room)
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

/// The captured output, oldest first: `<log>.1` then `<log>`.
/// NotFound only when neither file exists (the VM never had a console log).
pub fn read_log(log: &Path) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut found = false;
    for path in [rotated_log(log), log.to_path_buf()] {
        match File::open(&path) {
            Ok(mut file) => {
                found = true;
                file.read_to_end(&mut out)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if found {
        Ok(out)
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no console log at {}", log.display()),
        ))
    }
}

const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// Writes the existing log, then its growth, following rotations, until `stop()`.
/// A log that does not exist yet is waited for. Output of a generation that
/// was rotated away twice within one poll interval is skipped.
pub fn follow_log(log: &Path, out: &mut dyn Write, stop: &dyn Fn() -> bool) -> io::Result<()> {
    // Open the current generation before reading `.1`: if a rotation slips
    // in between, `.1` is the file we hold and is not printed twice.
    let mut current = open_existing(log)?;
    if let Some(older) = open_existing(&rotated_log(log))? {
        let same = current
            .as_ref()
            .is_some_and(|c| same_file(c, &older).unwrap_or(false));
        if !same {
            copy_rest(&mut &older, out)?;
        }
    }
    loop {
        if let Some(file) = current.as_mut() {
            copy_rest(file, out)?;
        }
        out.flush()?;
        if stop() {
            return Ok(());
        }
        std::thread::sleep(FOLLOW_POLL);
        let Some(latest) = open_existing(log)? else {
            continue;
        };
        let rotated = match current.as_ref() {
            Some(file) => !same_file(file, &latest)?,
            None => true,
        };
        if rotated {
            // Whatever was appended to the old generation before the rotation.
            if let Some(file) = current.as_mut() {
                copy_rest(file, out)?;
            }
            current = Some(latest);
        }
    }
}

fn open_existing(path: &Path) -> io::Result<Option<File>> {
    match File::open(path) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn same_file(a: &File, b: &File) -> io::Result<bool> {
    let (a, b) = (a.metadata()?, b.metadata()?);
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}

fn copy_rest(file: &mut impl Read, out: &mut dyn Write) -> io::Result<()> {
    io::copy(file, out).map(|_| ())
}

#[cfg(test)]
pub(super) fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    #[test]
    fn rotates_exactly_at_the_limit_and_reads_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut log = RotatingLog::new(path.clone(), 10);
        let data: Vec<u8> = (0..35u8).collect();
        log.write(&data[..7]);
        log.write(&data[7..35]);
        // 35 bytes: three full generations and 5 bytes; only the last two survive.
        assert_eq!(std::fs::read(rotated_log(&path)).unwrap(), &data[20..30]);
        assert_eq!(std::fs::read(&path).unwrap(), &data[30..35]);
        assert_eq!(read_log(&path).unwrap(), &data[20..35]);
    }

    #[test]
    fn an_existing_full_log_is_rotated_on_the_first_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        std::fs::write(&path, b"0123456789").unwrap();
        let mut log = RotatingLog::new(path.clone(), 10);
        log.write(b"new");
        assert_eq!(std::fs::read(rotated_log(&path)).unwrap(), b"0123456789");
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
    }

    #[test]
    fn read_log_without_any_file_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_log(&dir.path().join("nope.log")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn follow_prints_history_then_growth_across_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut log = RotatingLog::new(path.clone(), 8);
        log.write(b"old-old-"); // exactly full: rotated on the next write
        log.write(b"cur");

        let out = Shared::default();
        let stop = Arc::new(AtomicBool::new(false));
        let follower = {
            let (path, mut out, stop) = (path.clone(), out.clone(), stop.clone());
            std::thread::spawn(move || follow_log(&path, &mut out, &|| stop.load(Ordering::SeqCst)))
        };
        let wait_for = |want: &[u8]| {
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while out.0.lock().unwrap().as_slice() != want {
                assert!(
                    std::time::Instant::now() < deadline,
                    "follow_log printed {:?}, want {:?}",
                    String::from_utf8_lossy(&out.0.lock().unwrap()),
                    String::from_utf8_lossy(want)
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        wait_for(b"old-old-cur");
        log.write(b"rent|next"); // fills "current", rotates, starts "next"
        wait_for(b"old-old-current|next");
        stop.store(true, Ordering::SeqCst);
        follower.join().unwrap().unwrap();
        assert_eq!(file_len(&path), 4);
    }
}
