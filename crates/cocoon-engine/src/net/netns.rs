//! Named network namespaces (`/run/netns/NAME`, as `ip netns` keeps them),
//! created and entered only on dedicated threads: a namespace switch affects
//! the calling thread, and no pool or runtime thread may ever be left in one.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::thread::{LinkNameSpaceType, UnshareFlags, move_into_link_name_space, unshare_unsafe};

pub const NETNS_DIR: &str = "/run/netns";

/// `/run/netns/cocoon-<vm id>`: the unscoped name.
pub fn path_for(vm_id: &str) -> PathBuf {
    path_in("", vm_id)
}

/// `/run/netns/cocoon-<vm id>`, or `<scope>-<vm id>` with `net_scope`.
/// Releases use the recorded path, so changing the scope strands nothing.
pub fn path_in(scope: &str, vm_id: &str) -> PathBuf {
    let prefix = if scope.is_empty() { "cocoon" } else { scope };
    Path::new(NETNS_DIR).join(format!("{prefix}-{vm_id}"))
}

/// Whether `path` is a live namespace (a bind mount of an nsfs inode), not
/// just the empty file a host reboot leaves behind.
pub fn exists(path: &Path) -> bool {
    rustix::fs::statfs(path).is_ok_and(|s| s.f_type == 0x6e73_6673 /* NSFS_MAGIC */)
}

/// Runs `f` on a new thread inside the namespace at `netns`.
pub fn run_in<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let ns = File::open(netns)?;
                move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network))?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
    })
}

/// Creates a named namespace (replacing a stale file a reboot left).
pub fn create(path: &Path) -> io::Result<()> {
    if exists(path) {
        return Ok(());
    }
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new(NETNS_DIR)))?;
    let _ = std::fs::remove_file(path);
    File::create(path)?;
    let made = std::thread::scope(|scope| {
        scope
            .spawn(|| -> io::Result<()> {
                // This thread alone moves into the new namespace and dies there.
                // SAFETY: only the network namespace is unshared, on a thread
                // that owns no file table or fs state shared assumptions rely on.
                unsafe { unshare_unsafe(UnshareFlags::NEWNET)? };
                rustix::mount::mount_bind("/proc/thread-self/ns/net", path)?;
                Ok(())
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
    });
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made
}

/// Unmounts and removes a named namespace; gone already is success. The
/// kernel may hold it briefly after its last process exits, so EBUSY is
/// retried for a second (cocoon's fix for the same race).
pub fn delete(path: &Path) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH) {
            Ok(()) => {}
            Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => {}
            Err(rustix::io::Errno::BUSY) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
}

#[cfg(test)]
mod scope_tests {
    #[test]
    fn the_scope_names_the_namespace() {
        assert_eq!(
            super::path_in("", "ABC").to_str(),
            Some("/run/netns/cocoon-ABC")
        );
        assert_eq!(
            super::path_in("a1", "ABC").to_str(),
            Some("/run/netns/a1-ABC")
        );
    }
}
