//! A confined view of the host for a VMM that loads state it did not write.
//!
//! Firecracker's `vmstate` is its own binary format and names the disk
//! paths the VMM reopens on `snapshot/load`; the engine cannot rewrite them
//! (Firecracker has no drive override on load), so a doctored snapshot
//! could point a drive at any host file. The answer is Firecracker's own
//! (its jailer): the VMM runs in a private mount namespace whose root is an
//! empty tmpfs holding only what it needs, at the paths it expects. What is
//! not shown there does not exist for the VMM, whatever its state names.
//!
//! The root is built in the forked child, before exec, from a plan made in
//! the parent ([`Jail::prepare`]): between fork and exec only syscalls may
//! run, so every path is a C string allocated beforehand.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Host paths shown read-only in every jail when they exist: the system's
/// programs and libraries (a dynamically linked VMM, or a wrapper script),
/// and the dynamic linker's cache.
const SYSTEM_PATHS: &[&str] = &["/usr", "/etc/ld.so.cache"];
/// Top-level directories that are links into `/usr` on merged-/usr systems
/// (made as the same links) or directories of their own (shown read-only).
const SYSTEM_TOP_DIRS: &[&str] = &["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];
/// Device nodes a VMM opens: KVM, TAPs, and the harmless character devices.
const DEVICES: &[&str] = &[
    "/dev/kvm",
    "/dev/net/tun",
    "/dev/null",
    "/dev/zero",
    "/dev/urandom",
];

/// Whether `target` lies where the jail shows the host's own files (system
/// paths, the top-level directories, devices, and the kernel's virtual
/// filesystems): a disk shown there could stand in for a library or a
/// device the VMM opens. Paths a snapshot names are never shown there.
pub fn reserved(target: &Path) -> bool {
    target.parent().is_none()
        || SYSTEM_PATHS
            .iter()
            .chain(SYSTEM_TOP_DIRS)
            .chain(&["/dev", "/proc", "/sys", "/etc"])
            .any(|p| target.starts_with(p))
}

/// A host path shown in the jail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The host path (the engine's own, or a system path).
    pub source: PathBuf,
    /// Where the VMM sees it: an absolute path inside the jail.
    pub target: PathBuf,
    pub writable: bool,
}

/// What a confined VMM sees: the system paths, the devices, and the mounts
/// the backend adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jail {
    /// An empty host directory the jail's tmpfs is mounted on (in the
    /// VMM's mount namespace only: on the host it stays empty).
    pub root: PathBuf,
    pub mounts: Vec<Mount>,
}

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("cannot confine the VMM: {} is not a plain absolute path", .0.display())]
    Target(PathBuf),
    #[error("cannot confine the VMM: {}: {source}", path.display())]
    Source { path: PathBuf, source: io::Error },
    #[error("cannot confine the VMM: a path contains a NUL byte")]
    Nul,
}

impl Jail {
    /// A jail on `root` with the system paths and devices, read-only
    /// (devices read-write).
    pub fn new(root: PathBuf) -> Jail {
        let mut jail = Jail {
            root,
            mounts: Vec::new(),
        };
        for path in SYSTEM_PATHS {
            jail.show(Path::new(path), false);
        }
        for path in DEVICES {
            jail.show(Path::new(path), true);
        }
        jail
    }

    /// Shows host `path` at the same path.
    pub fn show(&mut self, path: &Path, writable: bool) {
        self.show_at(path, path, writable);
    }

    /// Shows host `source` at `target`. A target shown twice keeps the
    /// first mount; a path already visible through a directory shown at its
    /// own path (as writable, or more) is not mounted again.
    pub fn show_at(&mut self, source: &Path, target: &Path, writable: bool) {
        let covered = |m: &Mount| {
            m.target == target
                || (source == target
                    && m.source == m.target
                    && target.starts_with(&m.target)
                    && (m.writable || !writable))
        };
        if self.mounts.iter().any(covered) {
            return;
        }
        self.mounts.push(Mount {
            source: source.to_path_buf(),
            target: target.to_path_buf(),
            writable,
        });
    }

    /// The steps that build the jail, with every path resolved and
    /// allocated. System paths that do not exist on this host are left
    /// out; any other missing source is an error.
    pub fn prepare(&self) -> Result<Prepared, JailError> {
        let root = c_path(&self.root)?;
        let mut steps = Vec::new();
        let mut made: Vec<PathBuf> = Vec::new();
        for top in SYSTEM_TOP_DIRS {
            let path = Path::new(top);
            match std::fs::symlink_metadata(path) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    let target = std::fs::read_link(path).map_err(|source| JailError::Source {
                        path: path.to_path_buf(),
                        source,
                    })?;
                    steps.push(Step::Symlink {
                        target: c_path(&target)?,
                        link: c_path(&inside(&self.root, path)?)?,
                    });
                }
                Ok(meta) if meta.is_dir() => self.bind_steps(
                    &Mount {
                        source: path.to_path_buf(),
                        target: path.to_path_buf(),
                        writable: false,
                    },
                    true,
                    &mut made,
                    &mut steps,
                )?,
                _ => {}
            }
        }
        for mount in &self.mounts {
            let system = SYSTEM_PATHS
                .iter()
                .chain(DEVICES)
                .any(|p| mount.source == Path::new(p));
            if system && !mount.source.exists() {
                continue;
            }
            self.bind_steps(mount, system, &mut made, &mut steps)?;
        }
        Ok(Prepared { root, steps })
    }

    /// The parents of `mount.target` made in the jail, its mount point
    /// (a directory or an empty file, as its source), and the bind: with
    /// what is mounted below it for system paths, without for the engine's
    /// own (a VM's run directory holds the jail's mount point).
    fn bind_steps(
        &self,
        mount: &Mount,
        recursive: bool,
        made: &mut Vec<PathBuf>,
        steps: &mut Vec<Step>,
    ) -> Result<(), JailError> {
        let target = inside(&self.root, &mount.target)?;
        let meta = std::fs::metadata(&mount.source).map_err(|source| JailError::Source {
            path: mount.source.clone(),
            source,
        })?;
        let mut parents: Vec<&Path> = target
            .ancestors()
            .skip(1)
            .take_while(|p| *p != self.root)
            .collect();
        parents.reverse();
        for dir in parents {
            if !made.iter().any(|m| m == dir) {
                made.push(dir.to_path_buf());
                steps.push(Step::Dir(c_path(dir)?));
            }
        }
        if !made.contains(&target) {
            made.push(target.clone());
            steps.push(if meta.is_dir() {
                Step::Dir(c_path(&target)?)
            } else {
                Step::File(c_path(&target)?)
            });
        }
        steps.push(Step::Bind {
            source: c_path(&mount.source)?,
            target: c_path(&target)?,
            writable: mount.writable,
            recursive,
        });
        Ok(())
    }
}

/// `target` (absolute, plain components only) under `root`.
fn inside(root: &Path, target: &Path) -> Result<PathBuf, JailError> {
    let mut path = root.to_path_buf();
    let mut components = target.components();
    if components.next() != Some(Component::RootDir) {
        return Err(JailError::Target(target.to_path_buf()));
    }
    for component in components {
        match component {
            Component::Normal(part) => path.push(part),
            _ => return Err(JailError::Target(target.to_path_buf())),
        }
    }
    if path == root {
        return Err(JailError::Target(target.to_path_buf()));
    }
    Ok(path)
}

fn c_path(path: &Path) -> Result<CString, JailError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| JailError::Nul)
}

/// One step of building the jail, in the child.
#[derive(Debug)]
enum Step {
    Dir(CString),
    File(CString),
    Bind {
        source: CString,
        target: CString,
        writable: bool,
        recursive: bool,
    },
    Symlink {
        target: CString,
        link: CString,
    },
}

/// A jail ready to be entered: every path allocated.
#[derive(Debug)]
pub struct Prepared {
    root: CString,
    steps: Vec<Step>,
}

impl Prepared {
    /// Builds the jail and makes it this process's root: a private mount
    /// namespace, a tmpfs on the root directory, the steps, the tmpfs made
    /// read-only, then `pivot_root` with the old root detached.
    ///
    /// # Safety
    /// For the child between fork and exec: it makes plain syscalls on
    /// memory allocated before the fork, and allocates nothing.
    pub unsafe fn enter(&self) -> io::Result<()> {
        let check = |rc: libc::c_int| {
            if rc == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        };
        let null = std::ptr::null();
        // SAFETY: syscalls on NUL-terminated strings that outlive the calls;
        // the caller is the freshly forked child, whose namespace this is.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWNS))?;
            // Nothing mounted here may leak back to the host.
            check(libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                null,
                libc::MS_REC | libc::MS_PRIVATE,
                null.cast(),
            ))?;
            check(libc::mount(
                c"tmpfs".as_ptr(),
                self.root.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID,
                c"mode=0755".as_ptr().cast(),
            ))?;
            for step in &self.steps {
                step.run(check)?;
            }
            check(libc::mount(
                c"tmpfs".as_ptr(),
                self.root.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID,
                c"mode=0755".as_ptr().cast(),
            ))?;
            check(libc::chdir(self.root.as_ptr()))?;
            // pivot_root(".", "."): the old root ends up on top of the new
            // one, and is detached at once (as runc does).
            if libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))?;
            check(libc::chdir(c"/".as_ptr()))
        }
    }
}

impl Step {
    /// # Safety
    /// As [`Prepared::enter`].
    unsafe fn run(&self, check: impl Fn(libc::c_int) -> io::Result<()>) -> io::Result<()> {
        let null = std::ptr::null();
        // SAFETY: as `Prepared::enter`: syscalls on strings allocated before the fork.
        unsafe {
            match self {
                Step::Dir(path) => {
                    if libc::mkdir(path.as_ptr(), 0o755) != 0
                        && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST)
                    {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                }
                Step::File(path) => {
                    let fd = libc::open(
                        path.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                        0o600,
                    );
                    if fd < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    libc::close(fd);
                    Ok(())
                }
                Step::Symlink { target, link } => {
                    check(libc::symlink(target.as_ptr(), link.as_ptr()))
                }
                Step::Bind {
                    source,
                    target,
                    writable,
                    recursive,
                } => {
                    let rec = if *recursive { libc::MS_REC } else { 0 };
                    check(libc::mount(
                        source.as_ptr(),
                        target.as_ptr(),
                        null,
                        libc::MS_BIND | rec,
                        null.cast(),
                    ))?;
                    if *writable {
                        return Ok(());
                    }
                    check(libc::mount(
                        null,
                        target.as_ptr(),
                        null,
                        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                        null.cast(),
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_paths_and_devices_are_reserved() {
        for p in [
            "/",
            "/usr/lib/libc.so.6",
            "/lib64/ld-linux-x86-64.so.2",
            "/etc/ld.so.cache",
            "/dev/kvm",
            "/proc/self",
            "/bin",
        ] {
            assert!(reserved(Path::new(p)), "{p}");
        }
        for p in [
            "/var/lib/cocoon/images/blobs/x.erofs",
            "/run/cocoon/vms/a/cow.raw",
            "/usr2/x",
        ] {
            assert!(!reserved(Path::new(p)), "{p}");
        }
    }

    #[test]
    fn targets_must_be_plain_absolute_paths() {
        let root = Path::new("/j");
        assert_eq!(
            inside(root, Path::new("/a/b")).unwrap(),
            Path::new("/j/a/b")
        );
        for bad in ["a/b", "/a/../b", "./a", "/", ""] {
            assert!(
                matches!(inside(root, Path::new(bad)), Err(JailError::Target(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_missing_engine_path_is_an_error_a_missing_system_path_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut jail = Jail::new(dir.path().join("root"));
        // Whatever this host lacks of the system paths, prepare succeeds.
        jail.prepare().unwrap();
        jail.show(&dir.path().join("gone"), true);
        let err = jail.prepare().unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "cannot confine the VMM: {}: ",
                dir.path().join("gone").display()
            )),
            "{err}"
        );
    }

    #[test]
    fn parents_are_made_once_and_mount_points_match_their_source() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/f"), b"x").unwrap();
        let root = dir.path().join("root");
        let mut jail = Jail {
            root: root.clone(),
            mounts: Vec::new(),
        };
        jail.show(&dir.path().join("d"), true);
        jail.show_at(
            &dir.path().join("d/f"),
            Path::new("/other/vm/cow.raw"),
            true,
        );
        jail.show_at(
            &dir.path().join("d/f"),
            Path::new("/other/vm/cow.raw"),
            false,
        );
        jail.show(&dir.path().join("d/f"), false);
        assert_eq!(jail.mounts.len(), 2, "d/f is visible through d");
        let prepared = jail.prepare().unwrap();
        let dirs: Vec<_> = prepared
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Dir(p) => Some(p.to_str().unwrap().to_string()),
                _ => None,
            })
            .collect();
        let unique: std::collections::HashSet<_> = dirs.iter().collect();
        assert_eq!(unique.len(), dirs.len(), "{dirs:?}");
        assert!(dirs.contains(&root.join("other/vm").display().to_string()));
        let files: Vec<_> = prepared
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::File(p) => Some(p.to_str().unwrap().to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(files, [root.join("other/vm/cow.raw").display().to_string()]);
        let binds = prepared
            .steps
            .iter()
            .filter(|s| matches!(s, Step::Bind { target, .. } if target.to_str().unwrap().ends_with("cow.raw")))
            .count();
        assert_eq!(binds, 1, "a target shown twice keeps its first mount");
    }

    /// A process in the jail sees what was shown, writes only where it may,
    /// and finds nothing else of the host.
    #[test]
    fn a_jailed_process_sees_only_what_was_shown() {
        use std::os::unix::process::CommandExt;
        if !rustix::process::geteuid().is_root() {
            eprintln!("*** SKIPPED a_jailed_process_sees_only_what_was_shown: needs root ***");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let shown = dir.path().join("shown");
        let secret = dir.path().join("secret");
        std::fs::create_dir(&shown).unwrap();
        std::fs::create_dir(dir.path().join("root")).unwrap();
        std::fs::write(shown.join("in"), b"inside").unwrap();
        std::fs::write(&secret, b"host only").unwrap();
        let mut jail = Jail::new(dir.path().join("root"));
        jail.show(&shown, true);
        jail.show_at(&secret, Path::new("/elsewhere/ro"), false);
        let prepared = jail.prepare().unwrap();
        let script = format!(
            "set -e; cat {shown}/in; echo out > {shown}/out; cat /elsewhere/ro; \
             ! echo x 2>/dev/null > /elsewhere/ro; ! touch /usr/x 2>/dev/null; ! mkdir /new 2>/dev/null; \
             test ! -e {secret}; test ! -e /etc/passwd; test ! -e /proc/self; test -c /dev/null",
            shown = shown.display(),
            secret = secret.display()
        );
        let mut command = std::process::Command::new("/bin/sh");
        command.args(["-c", &script]);
        // SAFETY: `enter` only makes syscalls on memory allocated before the fork.
        unsafe {
            command.pre_exec(move || prepared.enter());
        }
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "insidehost only");
        assert_eq!(std::fs::read(shown.join("out")).unwrap(), b"out\n");
        assert_eq!(std::fs::read(&secret).unwrap(), b"host only");
        assert_eq!(
            std::fs::read_dir(dir.path().join("root")).unwrap().count(),
            0
        );
    }
}
