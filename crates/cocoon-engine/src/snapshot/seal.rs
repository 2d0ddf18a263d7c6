//! Sealing: filling in the digests `snapshot save` leaves out of a
//! snapshot's manifest, so that hashing is not on the save's path.
//!
//! `snapshot save` writes `cocoon.json` with each file's size and a `null`
//! digest, records the snapshot saved, starts a detached low-priority
//! `cocoon snapshot-seal <dir>` and returns. Every use that needs the
//! digests (export, push, restore) calls [`seal`] first: a sealed snapshot
//! costs one read of its manifest; an unsealed one is sealed there and then,
//! after the sealer if one is at work (its lock), or in its place if it died.
//! The sealer runs at nice 19 in the idle I/O class; a use that has to
//! wait for it raises it to the default priority first. It also syncs each
//! file it sums (the save syncs none of them, to keep the writeback of a
//! memory image off its path), so a sealed snapshot is on disk: an
//! operating system crash or power loss before its seal can leave an
//! unsealed snapshot whose files are incomplete.
//!
//! The seal lock is an exclusive `flock` on the snapshot directory itself
//! (no lock file to leave behind or to recreate). The sealer only reads the
//! snapshot's files (each opened without following links, beneath the
//! directory's descriptor) and replaces the manifest by one rename. Removal
//! ([`removal`]) unlinks the manifest first, which a sealer at work notices
//! within a block and stops at, then takes the lock, so no sealer ever
//! writes into a directory being removed, and none recreates one: it only
//! works through the descriptor of the directory it opened.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use super::manifest::{self, MANIFEST, Manifest};

/// The hidden `cocoon` subcommand that seals one snapshot directory.
pub const SEAL_SUBCOMMAND: &str = "snapshot-seal";

/// The sealed manifest before its rename over `cocoon.json`.
const SEALING: &str = ".cocoon.json.sealing";
/// A manifest is small; a larger one is not this engine's.
const MAX_MANIFEST: u64 = 16 << 20;

/// What [`seal`] found.
#[derive(Debug)]
pub enum Sealed {
    /// Sealed already (by its sealer, an earlier use, or at import).
    Already(Manifest),
    /// This call computed the digests: they describe the files as they are
    /// now, so checking the files against them again would prove nothing.
    Now(Manifest),
    /// The snapshot is being removed, or is gone.
    Gone,
}

/// Seals the snapshot in `dir` if it is not sealed yet (see the module
/// documentation). Errors say what is wrong with the snapshot.
pub fn seal(dir: &Path) -> Result<Sealed, String> {
    let dirfd = match open_dir(dir) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Sealed::Gone),
        Err(e) => return Err(format!("cannot open {}: {e}", dir.display())),
    };
    match read_manifest(&dirfd)? {
        None => return Ok(Sealed::Gone),
        Some((m, _)) if m.is_sealed() => return Ok(Sealed::Already(m)),
        Some(_) => {}
    }
    lock_hurrying(&dirfd).map_err(|e| format!("cannot lock {}: {e}", dir.display()))?;
    // Under the lock: the one who held it before may have sealed it.
    let Some((mut manifest, mode)) = read_manifest(&dirfd)? else {
        return Ok(Sealed::Gone);
    };
    if manifest.is_sealed() {
        return Ok(Sealed::Already(manifest));
    }
    // What a sealer killed before its rename left.
    let _ = rustix::fs::unlinkat(&dirfd, SEALING, AtFlags::empty());
    let removing = || removal_started(&dirfd);
    for (name, entry) in manifest
        .files
        .iter_mut()
        .filter(|(_, e)| e.sha256.is_none())
    {
        let file = open_listed(&dirfd, name, entry.size)?;
        match manifest::block_digests_of(&file, &removing) {
            Ok((size, _)) if size != entry.size => {
                return Err(format!("{name} changed size while it was summed"));
            }
            Ok((_, digests)) => {
                // The save wrote its files without syncing them (the VMM's
                // state and memory, the disk copies): a sealed manifest
                // promises they are on disk, so this pass, having read them
                // at idle priority, flushes them before the manifest names
                // their digests.
                file.sync_data()
                    .map_err(|e| format!("cannot write {name} to disk: {e}"))?;
                entry.sha256 = Some(manifest::tree_root(&digests));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(Sealed::Gone),
            Err(e) => return Err(format!("cannot checksum {name}: {e}")),
        }
    }
    crate::failpoint::hit_io("snapshot.seal.summed").map_err(|e| e.to_string())?;
    if removing() {
        return Ok(Sealed::Gone);
    }
    write_manifest(&dirfd, &manifest, mode)
        .map_err(|e| format!("cannot write the sealed {MANIFEST}: {e}"))?;
    Ok(Sealed::Now(manifest))
}

/// The first step of removing the snapshot directory `dir`: its manifest
/// goes (a sealer at work stops), and the seal lock is taken. Keep the
/// returned descriptor until the directory is removed. `None`: there is no
/// directory of ours to lock (gone, or not a directory).
pub fn removal(dir: &Path) -> io::Result<Option<OwnedFd>> {
    let dirfd = match open_dir(dir) {
        Ok(fd) => fd,
        Err(e)
            if e.kind() == io::ErrorKind::NotFound
                || matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    match rustix::fs::unlinkat(&dirfd, MANIFEST, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    // A sealer at work stops at its next block: it gets there at our priority.
    lock_hurrying(&dirfd)?;
    Ok(Some(dirfd))
}

/// Starts `exe snapshot-seal <dir>`: detached (its own session, no
/// terminal, stdio on /dev/null), so it outlives the command that saved
/// the snapshot; it lowers its own priority ([`run_sealer`]).
pub fn spawn_sealer(exe: &Path, dir: &Path) -> io::Result<()> {
    let mut command = Command::new(exe);
    command
        .arg(SEAL_SUBCOMMAND)
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            rustix::process::setsid()?;
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    // Reaped by a thread of ours while we live; by init after.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(())
}

/// The sealer's body: lowest CPU priority and the idle I/O class, then
/// [`seal`]. A snapshot removed meanwhile is not an error.
pub fn run_sealer(dir: &Path) -> Result<(), String> {
    // Its hashing threads inherit both. A use that waits for it raises
    // them again (`hurry_sealers`).
    set_priority(0, 19, IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT);
    seal(dir).map(|_| ())
}

fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The exclusive seal lock on the directory; released when its descriptor
/// closes (or its process dies).
fn lock(dirfd: &OwnedFd) -> io::Result<()> {
    loop {
        match rustix::fs::flock(dirfd, FlockOperation::LockExclusive) {
            Err(Errno::INTR) => continue,
            other => return Ok(other?),
        }
    }
}

/// The seal lock if it is free; `false` if someone holds it.
fn try_lock(dirfd: &OwnedFd) -> io::Result<bool> {
    match rustix::fs::flock(dirfd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The seal lock, waiting for its holder if there is one. A sealer at
/// work runs at the lowest priorities, which a busy host may starve: from
/// then on it works at ours.
fn lock_hurrying(dirfd: &OwnedFd) -> io::Result<()> {
    if try_lock(dirfd)? {
        return Ok(());
    }
    hurry_sealers(dirfd);
    lock(dirfd)
}

/// How `/proc/locks` names the file `fd` is open on (`MAJOR:MINOR:INODE`).
fn lock_key(fd: &OwnedFd) -> io::Result<String> {
    let st = rustix::fs::fstat(fd)?;
    Ok(format!(
        "{:02x}:{:02x}:{}",
        rustix::fs::major(st.st_dev),
        rustix::fs::minor(st.st_dev),
        st.st_ino
    ))
}

/// Gives every sealer process holding the seal lock on `dirfd` (found in
/// `/proc/locks` by the directory's device and inode) the default CPU and
/// I/O priority, thread by thread (both are per thread on Linux). Best
/// effort: raising another process's priority needs CAP_SYS_NICE, and a
/// sealer that has just ended is simply not there.
fn hurry_sealers(dirfd: &OwnedFd) {
    let Ok(key) = lock_key(dirfd) else {
        return;
    };
    let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
        return;
    };
    for pid in lock_holders(&locks, &key) {
        if !is_sealer(pid) {
            continue;
        }
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten();
        for tid in tasks
            .flatten()
            .filter_map(|t| t.file_name().to_str()?.parse::<u32>().ok())
        {
            set_priority(tid, 0, (IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT) | 4);
        }
    }
}

/// The pids holding (not waiting for) a `flock` on the file `key`
/// (`MAJOR:MINOR:INODE` as `/proc/locks` writes it).
fn lock_holders(locks: &str, key: &str) -> Vec<u32> {
    locks
        .lines()
        .filter_map(|line| {
            // "N: FLOCK ADVISORY WRITE PID DEV:INO START END"; a waiter
            // has "->" after "N:".
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() >= 6 && f[1] == "FLOCK" && f[5] == key).then(|| f[4].parse().ok())?
        })
        .collect()
}

/// Whether `pid` runs `cocoon snapshot-seal` (a pid is checked before it is
/// touched: it may have ended and been reused).
fn is_sealer(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| cmdline.split(|b| *b == 0).nth(1) == Some(SEAL_SUBCOMMAND.as_bytes()))
}

const IOPRIO_WHO_PROCESS: libc::c_long = 1;
const IOPRIO_CLASS_SHIFT: libc::c_long = 13;
const IOPRIO_CLASS_BE: libc::c_long = 2;
const IOPRIO_CLASS_IDLE: libc::c_long = 3;

/// The nice value and I/O priority of thread `tid` (0: this one).
fn set_priority(tid: u32, nice: i32, ioprio: libc::c_long) {
    // SAFETY: plain syscalls; a failure leaves the priority as it was.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, tid, nice);
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            libc::c_long::from(tid),
            ioprio,
        );
    }
}

/// Whether a removal of the directory has begun: its manifest is gone.
fn removal_started(dirfd: &OwnedFd) -> bool {
    matches!(
        rustix::fs::statat(dirfd, MANIFEST, AtFlags::SYMLINK_NOFOLLOW),
        Err(Errno::NOENT)
    )
}

/// A file beneath `dirfd` by a plain name, never through a link.
fn open_beneath(dirfd: &OwnedFd, name: &str, flags: OFlags, mode: Mode) -> io::Result<File> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a plain file name"),
        ));
    }
    let fd = rustix::fs::openat(
        dirfd,
        name,
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY,
        mode,
    )?;
    Ok(File::from(fd))
}

/// The manifest and its permission bits; `None` if it is gone.
fn read_manifest(dirfd: &OwnedFd) -> Result<Option<(Manifest, u32)>, String> {
    let mut file = match open_beneath(dirfd, MANIFEST, OFlags::RDONLY, Mode::empty()) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "cannot open {MANIFEST} (links are not followed): {e}"
            ));
        }
    };
    let meta = file.metadata().map_err(|e| format!("{MANIFEST}: {e}"))?;
    if !meta.is_file() || meta.len() > MAX_MANIFEST {
        return Err(format!(
            "{MANIFEST} is not a regular file of at most 16 MiB"
        ));
    }
    let mut raw = Vec::new();
    file.read_to_end(&mut raw)
        .map_err(|e| format!("cannot read {MANIFEST}: {e}"))?;
    let manifest = serde_json::from_slice(&raw).map_err(|e| format!("bad {MANIFEST}: {e}"))?;
    Ok(Some((manifest, meta.permissions().mode() & 0o777)))
}

/// A file the manifest lists, opened for reading: a regular file of the
/// listed size.
fn open_listed(dirfd: &OwnedFd, name: &str, size: u64) -> Result<File, String> {
    let file = open_beneath(
        dirfd,
        name,
        OFlags::RDONLY | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| format!("{name}: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("{name}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{name} is not a regular file"));
    }
    if meta.len() != size {
        return Err(format!(
            "{name} is {} bytes, the manifest says {size}",
            meta.len()
        ));
    }
    Ok(file)
}

/// The sealed manifest in place of the old one, by one rename, durable.
fn write_manifest(dirfd: &OwnedFd, manifest: &Manifest, mode: u32) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(manifest).expect("manifest serialises");
    let mut file = open_beneath(
        dirfd,
        SEALING,
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC,
        Mode::from_raw_mode(mode),
    )?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    drop(file);
    rustix::fs::renameat(dirfd, SEALING, dirfd, MANIFEST)?;
    rustix::fs::fsync(dirfd)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::manifest::{FileEntry, sum_file};

    /// A snapshot directory with `files` and an unsealed manifest of them.
    fn unsealed(files: &[(&str, &[u8])]) -> (tempfile::TempDir, Manifest) {
        let dir = tempfile::tempdir().unwrap();
        let mut manifest = crate::snapshot::rebase::tests::manifest_fixture();
        for (name, body) in files {
            std::fs::write(dir.path().join(name), body).unwrap();
            manifest
                .files
                .insert(name.to_string(), FileEntry::unsealed(body.len() as u64));
        }
        let raw = serde_json::to_vec(&manifest).unwrap();
        std::fs::write(dir.path().join(MANIFEST), raw).unwrap();
        (dir, manifest)
    }

    fn on_disk(dir: &Path) -> Manifest {
        serde_json::from_slice(&std::fs::read(dir.join(MANIFEST)).unwrap()).unwrap()
    }

    #[test]
    fn seals_once_with_the_digests_sum_file_computes() {
        let big = vec![7u8; usize::try_from(manifest::HASH_BLOCK).unwrap() + 5];
        let (dir, written) = unsealed(&[("mem", &big), ("state.json", b"{}"), ("empty", b"")]);
        assert!(!written.is_sealed());
        let text = std::fs::read_to_string(dir.path().join(MANIFEST)).unwrap();
        assert!(text.contains("\"sha256\":null"), "{text}");
        let Sealed::Now(sealed) = seal(dir.path()).unwrap() else {
            panic!("not sealed by this call")
        };
        assert!(sealed.is_sealed());
        for (name, entry) in &sealed.files {
            let sum = sum_file(&dir.path().join(name)).unwrap();
            assert_eq!(entry, &FileEntry::from(sum), "{name}");
        }
        assert_eq!(on_disk(dir.path()).files, sealed.files);
        // The second time it is only read; nothing is left behind.
        assert!(matches!(seal(dir.path()).unwrap(), Sealed::Already(_)));
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["cocoon.json", "empty", "mem", "state.json"]);
    }

    #[test]
    fn a_manifest_with_digests_reads_as_sealed() {
        // What every manifest before sealing existed looks like.
        let mut doc =
            serde_json::to_value(crate::snapshot::rebase::tests::manifest_fixture()).unwrap();
        doc["files"] = serde_json::json!({"mem": {"size": 3, "sha256": "ab"}});
        let old: Manifest = serde_json::from_value(doc).unwrap();
        assert!(old.is_sealed());
        assert_eq!(old.files["mem"].sha256.as_deref(), Some("ab"));
    }

    #[test]
    fn links_and_changed_files_are_refused_and_nothing_is_written() {
        let (dir, _) = unsealed(&[("mem", b"data")]);
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"data").unwrap();
        std::fs::remove_file(dir.path().join("mem")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("mem")).unwrap();
        let before = std::fs::read(dir.path().join(MANIFEST)).unwrap();
        let err = seal(dir.path()).unwrap_err();
        assert!(err.starts_with("mem: "), "{err}");
        std::fs::remove_file(dir.path().join("mem")).unwrap();
        std::fs::write(dir.path().join("mem"), b"longer").unwrap();
        let err = seal(dir.path()).unwrap_err();
        assert_eq!(err, "mem is 6 bytes, the manifest says 4");
        assert_eq!(std::fs::read(dir.path().join(MANIFEST)).unwrap(), before);
        // A manifest that is a link is not read either.
        let link = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(dir.path().join(MANIFEST), link.path().join(MANIFEST)).unwrap();
        assert!(
            seal(link.path())
                .unwrap_err()
                .contains("links are not followed")
        );
    }

    #[test]
    fn removal_stops_a_seal_and_nothing_is_recreated() {
        let (dir, _) = unsealed(&[("mem", b"data")]);
        let guard = removal(dir.path()).unwrap().expect("a directory to lock");
        // The manifest is gone first: a seal now (or one at work) ends.
        assert!(matches!(seal(dir.path()).unwrap(), Sealed::Gone));
        std::fs::remove_dir_all(dir.path()).unwrap();
        drop(guard);
        assert!(matches!(seal(dir.path()).unwrap(), Sealed::Gone));
        assert!(!dir.path().exists());
        assert!(removal(dir.path()).unwrap().is_none());
    }

    #[test]
    fn lock_holders_are_read_from_proc_locks_without_the_waiters() {
        let locks = "1: FLOCK  ADVISORY  WRITE 4242 00:1d:77 0 EOF\n\
                     1: -> FLOCK  ADVISORY  WRITE 4343 00:1d:77 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 4444 00:1d:7 0 EOF\n\
                     3: POSIX  ADVISORY  WRITE 4545 00:1d:77 0 EOF\n";
        assert_eq!(lock_holders(locks, "00:1d:77"), [4242]);
        // This very process holds one: it is found, and it is no sealer.
        let (dir, _) = unsealed(&[]);
        let held = open_dir(dir.path()).unwrap();
        lock(&held).unwrap();
        let key = lock_key(&held).unwrap();
        let me = std::process::id();
        let holders = lock_holders(&std::fs::read_to_string("/proc/locks").unwrap(), &key);
        assert_eq!(holders, [me]);
        assert!(!is_sealer(me));
    }

    #[test]
    fn a_seal_waits_for_the_lock_holder() {
        let (dir, _) = unsealed(&[("mem", b"data")]);
        let held = open_dir(dir.path()).unwrap();
        lock(&held).unwrap();
        let path = dir.path().to_path_buf();
        let sealing = std::thread::spawn(move || seal(&path));
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!sealing.is_finished(), "it waits for the lock");
        drop(held);
        assert!(matches!(sealing.join().unwrap().unwrap(), Sealed::Now(_)));
    }
}
