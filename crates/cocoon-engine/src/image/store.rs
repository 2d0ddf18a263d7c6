//! Where images live on disk: `<root_dir>/images/`.
//!
//! ```text
//! blobs/<hex>.erofs        one read-only EROFS disk per layer, named by layer digest
//! boot/<hex>/vmlinuz       kernel found in that layer (if any)
//! boot/<hex>/initrd.img    initrd found in that layer (if any)
//! locks/<hex>.lock         per-layer flock: one process converts a layer at a time
//! tmp/<hex>/               work area of the lock holder (wiped on entry)
//! ```
//! A layer is committed by renaming its EROFS file into `blobs/` after its
//! boot files are in place, so `blobs/<hex>.erofs` existing means the layer
//! is complete.

use std::path::{Path, PathBuf};

use crate::digest::Digest;

#[derive(Debug, Clone)]
pub struct ImageDirs {
    pub root: PathBuf,
}

/// The hex part of a recorded digest string, for comparing records with
/// store file names. Never used to build a path: paths come from [`Digest`].
pub fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// `sha256:<hex>` of what `hasher` has seen.
pub fn digest_of(hasher: sha2::Sha256) -> Digest {
    Digest::of(hasher)
}

impl ImageDirs {
    pub fn new(root_dir: &Path) -> ImageDirs {
        ImageDirs {
            root: root_dir.join("images"),
        }
    }

    pub fn blob(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(format!("{}.erofs", digest.hex()))
    }

    pub fn boot_dir(&self, digest: &Digest) -> PathBuf {
        self.root.join("boot").join(digest.hex())
    }

    pub fn kernel(&self, digest: &Digest) -> PathBuf {
        self.boot_dir(digest).join("vmlinuz")
    }

    pub fn initrd(&self, digest: &Digest) -> PathBuf {
        self.boot_dir(digest).join("initrd.img")
    }

    pub fn lock(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("locks")
            .join(format!("{}.lock", digest.hex()))
    }

    pub fn work(&self, digest: &Digest) -> PathBuf {
        self.root.join("tmp").join(digest.hex())
    }

    pub fn create(&self) -> std::io::Result<()> {
        for sub in ["blobs", "boot", "locks", "tmp"] {
            crate::lock::create_private_dir(&self.root.join(sub))?;
        }
        Ok(())
    }
}

/// Opens the lock file at `path`, creating it if needed, without taking
/// its lock.
pub fn open_lock_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

/// Removes the work files a dead process left in `tmp/`: its own
/// `<prefix>-<pid>-<id>` files and directories, and layer work areas
/// (`tmp/<hex>`) whose lock is free, taken here while removing so no live
/// puller loses its work area. If `pid` is alive again (reused), its named
/// files are left to gc's grace period. Resumable partial downloads stay.
/// Returns how many entries went.
pub fn remove_work_of(dirs: &ImageDirs, pid: u32) -> usize {
    let Ok(entries) = std::fs::read_dir(dirs.root.join("tmp")) else {
        return 0;
    };
    let pid_reused = Path::new("/proc").join(pid.to_string()).exists();
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let remove = |path: &Path| {
            if path.is_dir() {
                std::fs::remove_dir_all(path)
            } else {
                std::fs::remove_file(path)
            }
            .is_ok()
        };
        let owned = name.split('-').nth(1) == Some(&pid.to_string());
        if owned && !pid_reused && !name.ends_with(".partial") && remove(&path) {
            removed += 1;
        } else {
            let Ok(digest) = Digest::from_hex(&name) else {
                continue;
            };
            let Ok(lock) = std::fs::File::open(dirs.lock(&digest)) else {
                continue;
            };
            if lock.try_lock().is_ok() && remove(&path) {
                removed += 1;
            }
        }
    }
    removed
}
