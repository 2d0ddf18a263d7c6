//! Pre-formatted ext4 templates for root (COW) disks: `mkfs.ext4` runs once
//! per disk size and mkfs options, and every new VM's root disk is a clone of
//! that sparse file (a reflink where the filesystem shares extents, else a
//! `copy_file_range` of its few MiB of data), instead of a `mkfs.ext4`
//! process per VM.
//!
//! Crash safety: a template is written under a temporary name, synced, checked
//! and only then renamed into place (and the directory synced), so a name a
//! template is found under always held a whole filesystem. A template damaged
//! afterwards (truncated, overwritten) fails the superblock check made before
//! every clone and is made again. Temporaries a killed process left are
//! removed by the next maker once their process is gone.
//!
//! Every clone of one template has the same filesystem UUID; that is why only
//! root disks come from templates (one per VM, never mounted by UUID), while
//! ext4 data disks keep their own `mkfs.ext4` and their own UUIDs.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

/// The prefix of a template being written.
const TMP_PREFIX: &str = ".tmp-";

/// The file name of the template for disks of `size` bytes: the size and a
/// digest of the mkfs options, so a change of options makes a new template.
pub fn template_name(size: u64) -> String {
    let mut hasher = Sha256::new();
    for arg in mkfs_argv(Path::new("")) {
        hasher.update(arg.as_encoded_bytes());
        hasher.update([0]);
    }
    let key = hasher.finalize();
    let hex: String = key[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("ext4-{size}-{hex}.raw")
}

/// cocoon's mkfs options, without the reserved group-descriptor blocks
/// (`resize_inode`): they are 4 MiB of a 10 GiB template's 4.4 MiB of data,
/// which every clone copies where extents cannot be shared. They are kept
/// for online growth to 1,024 times the size, which a root disk never
/// makes (and which Linux's online resize manages without, through `meta_bg`).
fn mkfs_argv(path: &Path) -> Vec<std::ffi::OsString> {
    let mut argv = super::disks::mkfs_argv(path, None);
    let at = argv.len() - 1;
    argv.splice(at..at, ["-O".into(), "^resize_inode".into()]);
    argv
}

/// The template in `dir` for ext4 disks of `size` bytes, opened for
/// cloning: made first if it is missing or damaged.
pub fn ensure(dir: &Path, size: u64) -> io::Result<File> {
    let template = dir.join(template_name(size));
    if let Some(file) = open_valid(&template, size)? {
        return Ok(file);
    }
    make(dir, &template, size)?;
    open_valid(&template, size)?.ok_or_else(|| {
        io::Error::other(format!(
            "{} is not a valid ext4 filesystem right after mkfs",
            template.display()
        ))
    })
}

/// The template, opened without following links, if it is a regular file
/// of `size` bytes holding a clean ext4 filesystem of that size.
fn open_valid(path: &Path, size: u64) -> io::Result<Option<File>> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        // A link (ELOOP) or anything unreadable: not ours, make a new one.
        Err(_) => return Ok(None),
    };
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() != size {
        return Ok(None);
    }
    Ok(superblock_matches(&file, size).then_some(file))
}

/// The primary superblock (1024 bytes at offset 1024) says: ext4 magic,
/// cleanly unmounted with no errors, and blocks filling `size` bytes.
pub(crate) fn superblock_matches(file: &File, size: u64) -> bool {
    let mut sb = [0u8; 1024];
    if file.read_exact_at(&mut sb, 1024).is_err() {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([sb[o], sb[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([sb[o], sb[o + 1], sb[o + 2], sb[o + 3]]);
    let magic = u16_at(0x38);
    let state = u16_at(0x3A);
    let log_block = u32_at(0x18);
    if magic != 0xEF53 || state != 1 || log_block > 6 {
        return false;
    }
    let incompat = u32_at(0x60);
    let blocks_hi = if incompat & 0x80 != 0 {
        u64::from(u32_at(0x150))
    } else {
        0
    };
    let blocks = (blocks_hi << 32) | u64::from(u32_at(0x04));
    // mkfs uses every whole block: what is left is less than one.
    let block = 1024u64 << log_block;
    blocks
        .checked_mul(block)
        .is_some_and(|bytes| bytes <= size && size - bytes < block)
}

/// Makes the template at `path`: mkfs into a temporary file, sync, check,
/// rename into place, sync the directory.
fn make(dir: &Path, path: &Path, size: u64) -> io::Result<()> {
    crate::lock::create_private_dir(dir)?;
    sweep_dead_temporaries(dir);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!("{TMP_PREFIX}{}-{nonce}-{name}", std::process::id()));
    let result = write_template(&tmp, size).and_then(|()| {
        crate::failpoint::hit_io("disk.template.written")?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_template(tmp: &Path, size: u64) -> io::Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)?;
    file.set_len(size)?;
    let argv = mkfs_argv(tmp);
    let output = Command::new(&argv[0]).args(&argv[1..]).output()?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "mkfs.ext4 failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    file.sync_all()?;
    if !superblock_matches(&File::open(tmp)?, size) {
        return Err(io::Error::other("mkfs.ext4 wrote no valid superblock"));
    }
    Ok(())
}

/// Removes temporaries whose writer is gone (a crash mid-mkfs).
fn sweep_dead_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(TMP_PREFIX)) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<i32>().ok());
        let alive = pid
            .and_then(rustix::process::Pid::from_raw)
            .is_some_and(|pid| {
                !matches!(
                    rustix::process::test_kill_process(pid),
                    Err(rustix::io::Errno::SRCH)
                )
            });
        if !alive {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The template directory under the root: `<root_dir>/disk-templates`.
pub fn dir_under(root_dir: &Path) -> PathBuf {
    root_dir.join("disk-templates")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    const SIZE: u64 = 64 << 20;

    /// `e2fsck -fn`: the filesystem is consistent (read-only check).
    fn fsck_clean(path: &Path) -> bool {
        Command::new("e2fsck")
            .arg("-fn")
            .arg(path)
            .output()
            .unwrap()
            .status
            .success()
    }

    fn clone_to(dir: &Path, name: &str) -> PathBuf {
        let dst = dir.join(name);
        let template = ensure(&dir.join("templates"), SIZE).unwrap();
        crate::snapshot::copy::copy_from(&template, &dst).unwrap();
        dst
    }

    #[test]
    fn a_clone_is_a_valid_sparse_ext4_of_the_requested_size() {
        let dir = tempfile::tempdir().unwrap();
        let disk = clone_to(dir.path(), "cow.raw");
        let meta = std::fs::metadata(&disk).unwrap();
        assert_eq!(meta.len(), SIZE);
        assert!(meta.blocks() * 512 < 16 << 20, "sparse: {}", meta.blocks());
        // No reserved group-descriptor blocks: a clone of a 10 GiB root
        // disk copies well under 1 MiB of data (with them, 4.4 MiB).
        let template = ensure(&dir.path().join("big"), 10 << 30).unwrap();
        assert!(
            template.metadata().unwrap().blocks() * 512 < 1 << 20,
            "template data: {} sectors",
            template.metadata().unwrap().blocks()
        );
        assert!(superblock_matches(&File::open(&disk).unwrap(), SIZE));
        assert!(fsck_clean(&disk));
        // The next clone comes from the same template, not a second mkfs.
        let templates: Vec<_> = std::fs::read_dir(dir.path().join("templates"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(templates, [std::ffi::OsString::from(template_name(SIZE))]);
        let again = clone_to(dir.path(), "cow2.raw");
        assert!(fsck_clean(&again));
        // Another size has its own template.
        assert_ne!(template_name(SIZE), template_name(SIZE * 2));
        // A size that is no whole number of blocks (mkfs leaves the rest).
        let odd = SIZE + 1000;
        let template = ensure(&dir.path().join("templates"), odd).unwrap();
        assert_eq!(template.metadata().unwrap().len(), odd);
        let disk = dir.path().join("odd.raw");
        crate::snapshot::copy::copy_from(&template, &disk).unwrap();
        assert!(fsck_clean(&disk));
    }

    #[test]
    fn a_damaged_template_is_detected_and_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let templates = dir.path().join("templates");
        let path = templates.join(template_name(SIZE));
        drop(ensure(&templates, SIZE).unwrap());
        // Garbage over the superblock.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xAB; 1024], 1024).unwrap();
        drop(file);
        assert!(!superblock_matches(&File::open(&path).unwrap(), SIZE));
        let disk = clone_to(dir.path(), "a.raw");
        assert!(fsck_clean(&disk), "cloned from a remade template");
        assert!(superblock_matches(&File::open(&path).unwrap(), SIZE));
        // Cut short, as a write that never finished.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(SIZE / 2).unwrap();
        drop(file);
        let disk = clone_to(dir.path(), "b.raw");
        assert!(fsck_clean(&disk));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), SIZE);
        // Zeroed (a file whose data never reached the disk).
        std::fs::remove_file(&path).unwrap();
        File::create(&path).unwrap().set_len(SIZE).unwrap();
        let disk = clone_to(dir.path(), "c.raw");
        assert!(fsck_clean(&disk));
    }

    #[test]
    fn a_link_at_the_template_name_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let templates = dir.path().join("templates");
        std::fs::create_dir(&templates).unwrap();
        let target = dir.path().join("elsewhere.raw");
        std::fs::write(&target, b"keep me").unwrap();
        std::os::unix::fs::symlink(&target, templates.join(template_name(SIZE))).unwrap();
        let disk = clone_to(dir.path(), "cow.raw");
        assert!(fsck_clean(&disk));
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
        assert!(
            !std::fs::symlink_metadata(templates.join(template_name(SIZE)))
                .unwrap()
                .is_symlink()
        );
    }

    #[test]
    fn temporaries_of_dead_writers_are_swept_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let templates = dir.path().join("templates");
        std::fs::create_dir(&templates).unwrap();
        // A pid that exited: a child reaped before we look.
        let mut child = Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = templates.join(format!("{TMP_PREFIX}{dead}-1-x.raw"));
        let live = templates.join(format!("{TMP_PREFIX}{}-1-x.raw", std::process::id()));
        std::fs::write(&stale, b"half").unwrap();
        std::fs::write(&live, b"being written").unwrap();
        drop(ensure(&templates, SIZE).unwrap());
        assert!(!stale.exists(), "a dead writer's temporary is removed");
        assert!(live.exists(), "a live writer's temporary is left alone");
    }
}
