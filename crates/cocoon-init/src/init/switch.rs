//! From the initramfs into the image's root: the classic switch_root (free
//! the initramfs, move the API filesystems, move the new root over `/`,
//! chroot), then the mounts a container expects on top of devtmpfs.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use rustix::fs::{FileType, FsWord, statfs};
use rustix::mount::{MountFlags, mount_move};

use super::sys::mount_fs;

const RAMFS_MAGIC: FsWord = 0x8584_58f6;
const TMPFS_MAGIC: FsWord = 0x0102_1994;

/// Switches the root to `new_root`.
pub fn switch_root(new_root: &str) -> Result<(), String> {
    for api in ["dev", "proc", "sys"] {
        let target = format!("{new_root}/{api}");
        ensure_dir(Path::new(&target), 0o755)?;
        mount_move(format!("/{api}"), &target)
            .map_err(|e| format!("cannot move /{api} to {target}: {e}"))?;
    }
    free_initramfs()?;
    std::env::set_current_dir(new_root).map_err(|e| format!("cannot enter {new_root}: {e}"))?;
    mount_move(".", "/").map_err(|e| format!("cannot move {new_root} to /: {e}"))?;
    rustix::process::chroot(".").map_err(|e| format!("cannot chroot into {new_root}: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("cannot enter the new root: {e}"))
}

/// Deletes the initramfs's files, as busybox's switch_root does, to give
/// its memory back; only on the initramfs itself (checked: ramfs or tmpfs)
/// and never below a mount point.
fn free_initramfs() -> Result<(), String> {
    let fs_type = statfs("/")
        .map_err(|e| format!("cannot statfs /: {e}"))?
        .f_type;
    if !matches!(fs_type, RAMFS_MAGIC | TMPFS_MAGIC) {
        return Err("/ is not an initramfs: refusing to empty it".into());
    }
    let root_dev = fs::symlink_metadata("/")
        .map_err(|e| format!("cannot stat /: {e}"))?
        .dev();
    delete_contents(Path::new("/"), root_dev);
    Ok(())
}

fn delete_contents(dir: &Path, root_dev: u64) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != root_dev {
            continue;
        }
        if meta.is_dir() {
            delete_contents(&path, root_dev);
            // A directory holding a mount point stays; nothing else to do.
            let _ = fs::remove_dir(&path);
        } else {
            let _ = fs::remove_file(&path);
        }
    }
}

/// Makes `path` a directory: a link or file the image has there is
/// replaced (a mount must never land where a link points).
pub fn ensure_dir(path: &Path, mode: u32) -> Result<(), String> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => {
            fs::remove_file(path).map_err(|e| format!("cannot replace {}: {e}", path.display()))?
        }
        Err(_) => {}
    }
    fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    // The umask must not narrow a sticky world-writable directory.
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot chmod {}: {e}", path.display()))
}

/// The mounts a container expects, in the new root (after the chroot).
///
/// `/tmp` gets a tmpfs only where the image's `/tmp` is empty (or missing):
/// docker mounts none and an image may ship files there; `/run` always gets
/// one (it holds run-time state only) with the image's top-level
/// directories recreated in it (Debian images ship an empty `/run/lock`).
pub fn mount_container_fs() -> Result<(), String> {
    let nosuid_nodev = MountFlags::NOSUID | MountFlags::NODEV;
    ensure_dir(Path::new("/dev/pts"), 0o755)?;
    mount_fs(
        "devpts",
        "devpts",
        "/dev/pts",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620,gid=5",
    )?;
    ensure_dir(Path::new("/dev/shm"), 0o1777)?;
    mount_fs("tmpfs", "shm", "/dev/shm", nosuid_nodev, "mode=1777")?;
    dev_links()?;
    if is_empty_dir(Path::new("/tmp")) {
        ensure_dir(Path::new("/tmp"), 0o1777)?;
        mount_fs("tmpfs", "tmpfs", "/tmp", nosuid_nodev, "mode=1777")?;
    }
    let run_dirs = image_dirs(Path::new("/run"));
    ensure_dir(Path::new("/run"), 0o755)?;
    mount_fs("tmpfs", "tmpfs", "/run", nosuid_nodev, "mode=0755")?;
    for (name, mode) in run_dirs {
        let _ = fs::DirBuilder::new()
            .mode(mode)
            .create(Path::new("/run").join(&name));
        let _ = fs::set_permissions(
            Path::new("/run").join(&name),
            fs::Permissions::from_mode(mode),
        );
    }
    Ok(())
}

/// The links devtmpfs does not make; `/dev/ptmx` must be the new devpts
/// instance's, not the initial one's node.
fn dev_links() -> Result<(), String> {
    let links = [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
        ("/dev/core", "/proc/kcore"),
    ];
    for (link, target) in links {
        if fs::symlink_metadata(link).is_err() {
            symlink(target, link).map_err(|e| format!("cannot link {link}: {e}"))?;
        }
    }
    let _ = fs::remove_file("/dev/ptmx");
    symlink("pts/ptmx", "/dev/ptmx").map_err(|e| format!("cannot link /dev/ptmx: {e}"))
}

pub fn is_empty_dir(path: &Path) -> bool {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            fs::read_dir(path).is_ok_and(|mut entries| entries.next().is_none())
        }
        Ok(_) => false,
        Err(_) => true,
    }
}

/// The directories directly under `dir` with their modes.
fn image_dirs(dir: &Path) -> Vec<(std::ffi::OsString, u32)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let meta = fs::symlink_metadata(entry.path()).ok()?;
            (FileType::from_raw_mode(meta.mode()) == FileType::Directory)
                .then(|| (entry.file_name(), meta.mode() & 0o7777))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_replace_links_and_keep_their_mode() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let outside = tempfile::tempdir().unwrap();
        symlink(outside.path(), r.join("tmp")).unwrap();
        assert!(
            !is_empty_dir(&r.join("tmp")),
            "a link is not an empty directory"
        );
        ensure_dir(&r.join("tmp"), 0o1777).unwrap();
        let meta = fs::symlink_metadata(r.join("tmp")).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.mode() & 0o7777, 0o1777);
        assert!(outside.path().exists());
        assert!(is_empty_dir(&r.join("tmp")));
        assert!(is_empty_dir(&r.join("missing")));
        fs::write(r.join("tmp/x"), "").unwrap();
        assert!(!is_empty_dir(&r.join("tmp")));
        ensure_dir(&r.join("tmp"), 0o755).unwrap();
        assert!(
            r.join("tmp/x").exists(),
            "an existing directory is left alone"
        );
    }

    #[test]
    fn image_run_dirs_are_listed() {
        let root = tempfile::tempdir().unwrap();
        fs::DirBuilder::new()
            .mode(0o1777)
            .create(root.path().join("lock"))
            .unwrap();
        fs::set_permissions(root.path().join("lock"), fs::Permissions::from_mode(0o1777)).unwrap();
        fs::write(root.path().join("file"), "").unwrap();
        assert_eq!(image_dirs(root.path()), [("lock".into(), 0o1777)]);
    }
}
