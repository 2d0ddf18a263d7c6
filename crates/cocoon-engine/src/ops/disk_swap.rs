//! A restore's disk swap, all or nothing: every replacement is staged
//! beside its disk (same filesystem) before any is swapped in by renames;
//! until the restore commits, the old disks can be put back, here or by
//! crash recovery. Also how a COW disk grows.

use std::path::{Path, PathBuf};

use crate::model::StorageConfig;

const NEW: &str = "restore-new";
const OLD: &str = "restore-old";

/// `<disk>.restore-new`: where a disk's replacement is staged.
pub(crate) fn staged(path: &Path) -> PathBuf {
    swap_name(path, NEW)
}

/// Swaps the staged replacement of `path` in, keeping the old disk aside.
pub(crate) fn swap_in(path: &Path) -> std::io::Result<()> {
    std::fs::rename(path, swap_name(path, OLD))?;
    std::fs::rename(swap_name(path, NEW), path)
}

/// `<disk>.<what>`: a restore's staged copy or the disk it replaced, beside
/// the disk so the swap is a rename.
fn swap_name(path: &Path, what: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(what);
    path.with_file_name(name)
}

/// Undoes a restore's disk swap: each disk whose old copy is still there
/// gets it back, staged copies go. Idempotent: a crash during it is
/// converged by running it again.
pub(crate) fn roll_back(disks: &[StorageConfig]) {
    for disk in disks.iter().filter(|d| !d.ro) {
        let old = swap_name(&disk.path, OLD);
        if old.exists()
            && let Err(e) = std::fs::rename(&old, &disk.path)
        {
            tracing::warn!("cannot put back {}: {e}", disk.path.display());
        }
        let _ = std::fs::remove_file(swap_name(&disk.path, NEW));
    }
}

/// Completes a restore's disk swap: the replaced disks go.
pub(crate) fn finish(disks: &[StorageConfig]) {
    for disk in disks.iter().filter(|d| !d.ro) {
        let _ = std::fs::remove_file(swap_name(&disk.path, OLD));
        let _ = std::fs::remove_file(swap_name(&disk.path, NEW));
    }
}

/// Grows a COW disk to `size`: a raw file by length, a cloud image's qcow2
/// overlay by its virtual size (its file length means nothing to the guest).
pub(crate) fn grow_cow(path: &Path, size: u64) -> std::io::Result<()> {
    if is_qcow2(path) {
        return crate::vm::overlay::grow(path, size).map_err(std::io::Error::other);
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(size)
}

fn is_qcow2(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok_and(|()| &magic == b"QFI\xfb")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::StorageRole;

    fn disk(path: &Path) -> StorageConfig {
        StorageConfig {
            vmm_path: None,
            external: false,
            slot: None,
            path: path.to_path_buf(),
            ro: false,
            serial: String::new(),
            role: StorageRole::Cow,
            mount_point: String::new(),
            fstype: None,
            direct_io: None,
            directio_mode: None,
        }
    }

    #[test]
    fn a_swap_rolls_back_to_the_old_disks_or_finishes_on_the_new() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.raw"), dir.path().join("b.raw"));
        for (path, text) in [(&a, "old a"), (&b, "old b")] {
            std::fs::write(path, text).unwrap();
            std::fs::write(staged(path), text.replace("old", "new")).unwrap();
        }
        // A crash after the first swap: one new disk, one old.
        swap_in(&a).unwrap();
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "new a");
        let disks = [disk(&a), disk(&b)];
        roll_back(&disks);
        roll_back(&disks); // idempotent
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "old a");
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "old b");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);

        for path in [&a, &b] {
            std::fs::write(staged(path), "new").unwrap();
            swap_in(path).unwrap();
        }
        finish(&disks);
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn a_raw_cow_grows_by_length() {
        let dir = tempfile::tempdir().unwrap();
        let cow = dir.path().join("cow.raw");
        std::fs::write(&cow, b"data").unwrap();
        grow_cow(&cow, 1 << 20).unwrap();
        assert_eq!(std::fs::metadata(&cow).unwrap().len(), 1 << 20);
    }
}
