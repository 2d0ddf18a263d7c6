//! The writable disks of a VM: the copy-on-write root disk and data disks,
//! sparse raw files formatted with ext4 when asked.
//!
//! The argv builders are shared by the real preparation and by `vm debug`, so
//! what debug prints is what create runs.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One disk to create before the first boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPrep {
    pub path: PathBuf,
    pub size: u64,
    /// Format with ext4 (COW disks and `fstype=ext4` data disks).
    pub ext4: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot create disk {}: {source}", path.display())]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot run mkfs.ext4 for {}: {source}; install e2fsprogs", path.display())]
    MkfsMissing { path: PathBuf, source: io::Error },
    #[error("mkfs.ext4 failed for {} ({status}): {stderr}", path.display())]
    Mkfs {
        path: PathBuf,
        status: String,
        stderr: String,
    },
}

/// cocoon's mkfs options: no reserved blocks, lazy init so a 10 GiB disk
/// formats in milliseconds, discard so the sparse file stays sparse.
pub fn mkfs_argv(path: &Path) -> Vec<OsString> {
    let mut argv: Vec<OsString> = [
        "mkfs.ext4",
        "-F",
        "-m",
        "0",
        "-q",
        "-E",
        "lazy_itable_init=1,lazy_journal_init=1,discard",
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    argv.push(path.as_os_str().to_owned());
    argv
}

/// The shell commands `vm debug` prints for a disk.
pub fn prep_commands(disk: &DiskPrep) -> Vec<Vec<OsString>> {
    let mut commands = vec![vec![
        OsString::from("truncate"),
        OsString::from("-s"),
        OsString::from(disk.size.to_string()),
        disk.path.as_os_str().to_owned(),
    ]];
    if disk.ext4 {
        commands.push(mkfs_argv(&disk.path));
    }
    commands
}

/// Creates the sparse file (it must not exist yet) and formats it.
pub fn prepare(disk: &DiskPrep) -> Result<(), DiskError> {
    let create = |source| DiskError::Create {
        path: disk.path.clone(),
        source,
    };
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&disk.path)
        .map_err(create)?;
    file.set_len(disk.size).map_err(create)?;
    drop(file);
    if disk.ext4 {
        let argv = mkfs_argv(&disk.path);
        let output = Command::new(&argv[0])
            .args(&argv[1..])
            .output()
            .map_err(|source| DiskError::MkfsMissing {
                path: disk.path.clone(),
                source,
            })?;
        if !output.status.success() {
            return Err(DiskError::Mkfs {
                path: disk.path.clone(),
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
    }
    Ok(())
}

/// Whether files in `dir` can be opened with O_DIRECT (tmpfs and some
/// overlay setups refuse it, and a VMM asked for it would fail to start).
pub fn supports_direct_io(dir: &Path) -> bool {
    let probe = dir.join(format!(".direct-io-probe-{}", std::process::id()));
    let ok = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepares_a_sparse_ext4_disk() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskPrep {
            path: dir.path().join("cow.raw"),
            size: 64 << 20,
            ext4: true,
        };
        prepare(&disk).unwrap();
        let meta = std::fs::metadata(&disk.path).unwrap();
        assert_eq!(meta.len(), 64 << 20);
        use std::os::unix::fs::MetadataExt;
        assert!(
            meta.blocks() * 512 < 16 << 20,
            "sparse: {} blocks",
            meta.blocks()
        );
        // ext4 superblock magic 0xEF53 at offset 1024 + 56.
        let bytes = std::fs::read(&disk.path).unwrap();
        assert_eq!(&bytes[1024 + 56..1024 + 58], &[0x53, 0xef]);
        // An existing disk is never overwritten.
        assert!(matches!(prepare(&disk), Err(DiskError::Create { .. })));
    }

    #[test]
    fn raw_data_disk_is_left_unformatted() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskPrep {
            path: dir.path().join("data-x.raw"),
            size: 16 << 20,
            ext4: false,
        };
        prepare(&disk).unwrap();
        assert!(std::fs::read(&disk.path).unwrap().iter().all(|b| *b == 0));
        assert_eq!(prep_commands(&disk).len(), 1);
    }
}
