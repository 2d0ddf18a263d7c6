//! The engine's locks, all `flock(2)`, which the kernel drops when the
//! holder dies, so a crashed command can never wedge the next one.
//!
//! - [`VmLock`] on `<run_dir>/vms/<id>/lock`: two commands on the same VM
//!   (start and snapshot, two starts) are serialised; commands on different
//!   VMs never wait for each other.
//! - [`BlobLock`] on `<root_dir>/images/locks/<hex>.lock`: one process
//!   stores a layer or cloud blob at a time, and gc removes a blob only
//!   under it after a fresh look at the records. A pull, an import and a VM
//!   create all look for a stored blob under this lock, never before it, so
//!   a blob they found stays until their record pins it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::digest::Digest;
use crate::image::store::ImageDirs;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "VM {id} is busy: another cocoon command holds its lock ({path}); retry when it finishes"
    )]
    Busy { id: String, path: PathBuf },
    #[error("cannot open lock file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Held for the lifetime of the value; dropping it (or dying) releases the lock.
#[derive(Debug)]
pub struct VmLock {
    _file: File,
    path: PathBuf,
}

impl VmLock {
    pub fn path_for(run_dir: &Path, id: &str) -> PathBuf {
        crate::layout::VmPaths::run_only(&run_dir.join("vms").join(id)).lock()
    }

    /// Waits up to `timeout` for the lock, polling briefly (cocoon's 100 ms poll
    /// cost it p99 latency under concurrent clones; 2 ms is what it moved to).
    pub fn acquire(run_dir: &Path, id: &str, timeout: Duration) -> Result<VmLock, LockError> {
        Self::acquire_as(run_dir, id, timeout, false)
    }

    /// The lock shared with other shared holders (Firecracker clones using
    /// a run directory's mount targets), excluding exclusive ones.
    pub fn acquire_shared(
        run_dir: &Path,
        id: &str,
        timeout: Duration,
    ) -> Result<VmLock, LockError> {
        Self::acquire_as(run_dir, id, timeout, true)
    }

    fn acquire_as(
        run_dir: &Path,
        id: &str,
        timeout: Duration,
        shared: bool,
    ) -> Result<VmLock, LockError> {
        let path = Self::path_for(run_dir, id);
        let deadline = Instant::now() + timeout;
        loop {
            let file = match open(&path) {
                // The directory went between its creation and the open (gc,
                // or the last clone using it, removed it): make it again.
                Err(LockError::Io { source, .. })
                    if source.kind() == io::ErrorKind::NotFound && Instant::now() < deadline =>
                {
                    continue;
                }
                other => other?,
            };
            let taken = if shared {
                file.try_lock_shared()
            } else {
                file.try_lock()
            };
            match taken {
                // gc removes a directory with its lock file while holding the
                // lock: a lock taken on a file no longer at `path` guards
                // nothing, so take the new one.
                Ok(()) if !same_file(&file, &path) => continue,
                Ok(()) => return Ok(VmLock { _file: file, path }),
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(LockError::Busy {
                        id: id.to_string(),
                        path,
                    });
                }
                Err(TryLockError::Error(source)) => return Err(LockError::Io { path, source }),
            }
        }
    }

    /// The exclusive lock on a directory's existing lock file, without
    /// waiting and without creating anything: for removing the directory
    /// while holding it. None when someone holds it or there is no lock file.
    pub fn try_existing(path: &Path) -> Option<VmLock> {
        let file = File::open(path).ok()?;
        file.try_lock().ok()?;
        same_file(&file, path).then(|| VmLock {
            _file: file,
            path: path.to_path_buf(),
        })
    }

    /// Removes the lock's directory if it holds nothing but the lock file,
    /// while the lock is held (as gc does: a command waiting for it finds
    /// its lock file gone and starts afresh). For a lock taken on a VM whose
    /// record turned out to be gone: taking it made the directory again.
    pub fn remove_if_bare(self) {
        let Some(dir) = self.path.parent() else {
            return;
        };
        let lock_name = self.path.file_name();
        let bare = std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .filter_map(|e| e.ok())
                .all(|e| Some(e.file_name().as_os_str()) == lock_name)
        });
        if bare {
            let _ = std::fs::remove_file(&self.path);
            let _ = std::fs::remove_dir(dir);
        }
    }

    /// Turns a shared hold into the exclusive one if no one else holds it.
    /// (flock converts by releasing first: on failure the hold may be gone,
    /// so call this only when done with the lock.)
    pub fn try_upgrade(&self) -> bool {
        self._file.try_lock().is_ok()
    }

    pub fn try_acquire(run_dir: &Path, id: &str) -> Result<VmLock, LockError> {
        Self::acquire(run_dir, id, Duration::ZERO)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// An image blob's lock, held for the lifetime of the value.
#[derive(Debug)]
pub struct BlobLock {
    _file: File,
}

impl BlobLock {
    /// Waits for the lock of `digest`'s blob, creating its lock file.
    pub fn acquire(dirs: &ImageDirs, digest: &Digest) -> io::Result<BlobLock> {
        let file = crate::image::store::open_lock_file(&dirs.lock(digest))?;
        file.lock()?;
        Ok(BlobLock { _file: file })
    }

    /// The lock without waiting and without creating its file: None when
    /// another process holds it, or when no pull or import ever stored the
    /// blob (no lock file): gc leaves those alone.
    pub fn try_existing(dirs: &ImageDirs, digest: &Digest) -> Option<BlobLock> {
        let file = File::open(dirs.lock(digest)).ok()?;
        file.try_lock().ok()?;
        Some(BlobLock { _file: file })
    }

    /// Whether an operation holds `digest`'s lock right now.
    pub fn is_held(dirs: &ImageDirs, digest: &Digest) -> bool {
        match File::open(dirs.lock(digest)) {
            Ok(f) => matches!(f.try_lock(), Err(TryLockError::WouldBlock)),
            Err(_) => false,
        }
    }
}

fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

fn open(path: &Path) -> Result<File, LockError> {
    let io_err = |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        create_private_dir(dir).map_err(io_err)?;
    }
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err)
}

/// `mkdir -p` with mode 0750 for every directory it creates.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_waits_then_fails_busy() {
        let dir = tempfile::tempdir().unwrap();
        let held = VmLock::acquire(dir.path(), "VMA", Duration::from_secs(1)).unwrap();
        assert!(held.path().ends_with("vms/VMA/lock"));
        let err = VmLock::acquire(dir.path(), "VMA", Duration::from_millis(20)).unwrap_err();
        assert!(
            matches!(err, LockError::Busy { ref id, .. } if id == "VMA"),
            "{err}"
        );
        // A different VM is not blocked.
        VmLock::try_acquire(dir.path(), "VMB").unwrap();
        drop(held);
        VmLock::try_acquire(dir.path(), "VMA").unwrap();
    }

    /// A lock that made its VM's directory again (the VM was removed while
    /// the lock was awaited) takes the directory away; a directory with
    /// anything else in it stays.
    #[test]
    fn a_bare_directory_goes_with_its_lock_and_a_used_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let bare = VmLock::try_acquire(dir.path(), "VMD").unwrap();
        let bare_dir = bare.path().parent().unwrap().to_path_buf();
        bare.remove_if_bare();
        assert!(!bare_dir.exists());

        let used = VmLock::try_acquire(dir.path(), "VME").unwrap();
        let used_dir = used.path().parent().unwrap().to_path_buf();
        std::fs::write(used_dir.join("cow.raw"), b"disk").unwrap();
        used.remove_if_bare();
        assert!(used_dir.join("lock").exists());
        assert_eq!(std::fs::read(used_dir.join("cow.raw")).unwrap(), b"disk");
    }

    #[test]
    fn lock_is_released_when_holder_process_dies() {
        let dir = tempfile::tempdir().unwrap();
        let path = VmLock::path_for(dir.path(), "VMC");
        create_private_dir(path.parent().unwrap()).unwrap();
        // A child takes the flock and then becomes `sleep`, keeping the fd; we kill -9 it.
        let mut child = std::process::Command::new("bash")
            .args(["-c", "exec 9>\"$0\" && flock 9 && exec sleep 30"])
            .arg(&path)
            .spawn()
            .unwrap();
        let start = Instant::now();
        while VmLock::try_acquire(dir.path(), "VMC").is_ok() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "child never took the lock"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        VmLock::acquire(dir.path(), "VMC", Duration::from_secs(2)).unwrap();
    }

    #[test]
    fn blob_lock_excludes_and_try_existing_never_creates() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = ImageDirs::new(dir.path());
        dirs.create().unwrap();
        let digest = Digest::from_hex(&"ab".repeat(32)).unwrap();
        // No lock file: nothing ever stored it, gc must leave it alone.
        assert!(BlobLock::try_existing(&dirs, &digest).is_none());
        assert!(!dirs.lock(&digest).exists());
        assert!(!BlobLock::is_held(&dirs, &digest));
        let held = BlobLock::acquire(&dirs, &digest).unwrap();
        assert!(BlobLock::is_held(&dirs, &digest));
        assert!(BlobLock::try_existing(&dirs, &digest).is_none());
        drop(held);
        assert!(!BlobLock::is_held(&dirs, &digest));
        assert!(BlobLock::try_existing(&dirs, &digest).is_some());
    }
}
