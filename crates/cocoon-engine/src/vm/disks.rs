//! The writable disks of a VM: the copy-on-write root disk and data disks,
//! sparse raw files formatted with ext4 when asked.
//!
//! The argv builders are shared by the real preparation and by `vm debug`, so
//! what debug prints is what create runs.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
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
    /// Files written into the new filesystem's root (`mkfs.ext4 -d`):
    /// a container image's run config on its COW disk. Paths are the
    /// engine's own constants, relative, never from input.
    pub seed: Vec<(&'static str, Vec<u8>)>,
    /// May be cloned from the shared pre-formatted template (see
    /// [`super::disk_template`]): the root disk, when it has no seed.
    pub template: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot create disk {}: {source}", path.display())]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot run mkfs.ext4 for {}: {source}; install e2fsprogs", path.display())]
    MkfsMissing { path: PathBuf, source: io::Error },
    #[error(
        "cannot make the ext4 template {} for root disks: {source}; check that mkfs.ext4 (e2fsprogs) is installed and the directory is writable",
        path.display()
    )]
    Template { path: PathBuf, source: io::Error },
    #[error("mkfs.ext4 failed for {} ({status}): {stderr}", path.display())]
    Mkfs {
        path: PathBuf,
        status: String,
        stderr: String,
    },
}

/// cocoon's mkfs options: no reserved blocks, lazy init so a 10 GiB disk
/// formats in milliseconds, discard so the sparse file stays sparse.
pub fn mkfs_argv(path: &Path, seed: Option<&Path>) -> Vec<OsString> {
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
    if let Some(dir) = seed {
        argv.push("-d".into());
        argv.push(dir.as_os_str().to_owned());
    }
    argv.push(path.as_os_str().to_owned());
    argv
}

/// The directory `mkfs.ext4 -d` copies a disk's seed files from.
fn seed_dir(disk: &Path) -> PathBuf {
    let mut name = disk.file_name().unwrap_or_default().to_owned();
    name.push(".seed");
    disk.with_file_name(name)
}

/// Writes the seed files into a fresh private directory.
fn write_seed(disk: &DiskPrep) -> io::Result<Option<PathBuf>> {
    if disk.seed.is_empty() {
        return Ok(None);
    }
    let dir = seed_dir(&disk.path);
    let _ = std::fs::remove_dir_all(&dir);
    for (relative, content) in &disk.seed {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)?;
        }
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?
            .write_all(content)?;
    }
    Ok(Some(dir))
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
        let seed = (!disk.seed.is_empty()).then(|| seed_dir(&disk.path));
        for (relative, content) in &disk.seed {
            let path = seed_dir(&disk.path).join(relative);
            commands.push(vec![
                "sh".into(),
                "-c".into(),
                "mkdir -p \"$(dirname \"$1\")\" && printf %s \"$2\" > \"$1\"".into(),
                "sh".into(),
                path.into_os_string(),
                OsString::from(String::from_utf8_lossy(content).into_owned()),
            ]);
        }
        commands.push(mkfs_argv(&disk.path, seed.as_deref()));
    }
    commands
}

/// Creates the sparse file (it must not exist yet) and formats it: a clone
/// of the template in `templates` where the disk may be one, else its own
/// `mkfs.ext4`.
pub fn prepare(disk: &DiskPrep, templates: &Path) -> Result<(), DiskError> {
    let create = |source| DiskError::Create {
        path: disk.path.clone(),
        source,
    };
    if disk.ext4 && disk.template && disk.seed.is_empty() {
        let template = super::disk_template::ensure(templates, disk.size).map_err(|source| {
            DiskError::Template {
                path: templates.join(super::disk_template::template_name(disk.size)),
                source,
            }
        })?;
        match crate::snapshot::copy::copy_from(&template, &disk.path) {
            Ok(_) => return Ok(()),
            // A run directory on another filesystem than the root can refuse
            // copy_file_range (EXDEV): the disk gets its own mkfs instead.
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                tracing::debug!("cloning the disk template failed ({e}); running mkfs.ext4");
            }
            Err(e) => return Err(create(e)),
        }
    }
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&disk.path)
        .map_err(create)?;
    file.set_len(disk.size).map_err(create)?;
    drop(file);
    if disk.ext4 {
        let seed = write_seed(disk).map_err(create)?;
        let argv = mkfs_argv(&disk.path, seed.as_deref());
        let output = Command::new(&argv[0]).args(&argv[1..]).output();
        if let Some(dir) = &seed {
            let _ = std::fs::remove_dir_all(dir);
        }
        let output = output.map_err(|source| DiskError::MkfsMissing {
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
    fn seed_files_land_in_the_new_filesystem_and_the_seed_dir_goes() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskPrep {
            path: dir.path().join("cow.raw"),
            size: 64 << 20,
            ext4: true,
            seed: vec![(".cocoon/run.json", br#"{"version":1}"#.to_vec())],
            template: true,
        };
        prepare(&disk, &dir.path().join("t")).unwrap();
        // debugfs reads the filesystem without mounting it.
        let out = Command::new("debugfs")
            .args(["-R", "cat /.cocoon/run.json"])
            .arg(&disk.path)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), r#"{"version":1}"#);
        assert!(!seed_dir(&disk.path).exists());
        let shown = prep_commands(&disk);
        assert_eq!(
            shown.len(),
            3,
            "truncate, the seed file, mkfs -d: {shown:?}"
        );
        assert!(shown[2].contains(&OsString::from("-d")));
    }

    #[test]
    fn prepares_a_sparse_ext4_disk() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskPrep {
            path: dir.path().join("cow.raw"),
            size: 64 << 20,
            ext4: true,
            seed: Vec::new(),
            template: false,
        };
        prepare(&disk, &dir.path().join("t")).unwrap();
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
        assert!(matches!(
            prepare(&disk, &dir.path().join("t")),
            Err(DiskError::Create { .. })
        ));
    }

    #[test]
    fn a_root_disk_is_cloned_from_the_template() {
        let dir = tempfile::tempdir().unwrap();
        let templates = dir.path().join("t");
        for name in ["a.raw", "b.raw"] {
            let disk = DiskPrep {
                path: dir.path().join(name),
                size: 64 << 20,
                ext4: true,
                seed: Vec::new(),
                template: true,
            };
            prepare(&disk, &templates).unwrap();
            let fsck = Command::new("e2fsck")
                .arg("-fn")
                .arg(&disk.path)
                .output()
                .unwrap();
            assert!(fsck.status.success(), "{name}: {fsck:?}");
            assert_eq!(std::fs::metadata(&disk.path).unwrap().len(), 64 << 20);
            // An existing disk is never overwritten, template or not.
            assert!(matches!(
                prepare(&disk, &templates),
                Err(DiskError::Create { .. })
            ));
        }
        let made: Vec<_> = std::fs::read_dir(&templates).unwrap().collect();
        assert_eq!(made.len(), 1, "one template for both disks");
    }

    #[test]
    fn raw_data_disk_is_left_unformatted() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskPrep {
            path: dir.path().join("data-x.raw"),
            size: 16 << 20,
            ext4: false,
            seed: Vec::new(),
            template: false,
        };
        prepare(&disk, &dir.path().join("t")).unwrap();
        assert!(std::fs::read(&disk.path).unwrap().iter().all(|b| *b == 0));
        assert_eq!(prep_commands(&disk).len(), 1);
    }
}
