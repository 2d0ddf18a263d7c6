//! The relay's unix socket: private to its owner, and removed on exit only
//! if it is still ours.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use rustix::fs::Mode;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

pub(super) struct Listener {
    pub(super) fd: OwnedFd,
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Listener {
    pub(super) fn bind(path: &Path) -> io::Result<Listener> {
        let context = |e: io::Error| {
            io::Error::new(e.kind(), format!("console socket {}: {e}", path.display()))
        };
        // Replacing the socket of a live relay would orphan it and split the console.
        if UnixStream::connect(path).is_ok() {
            return Err(context(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another console relay is listening there",
            )));
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(context(e)),
            _ => {}
        }
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        // Linux gives the file that bind creates the socket inode's mode, so
        // this closes the window in which the socket would be world-connectable.
        // The chmod after bind is what guarantees the mode.
        let _ = rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o600));
        let addr = SocketAddrUnix::new(path).map_err(|e| context(e.into()))?;
        rustix::net::bind(&fd, &addr).map_err(|e| context(e.into()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(context)?;
        rustix::net::listen(&fd, 16).map_err(|e| context(e.into()))?;
        let meta = std::fs::symlink_metadata(path).map_err(context)?;
        Ok(Listener {
            fd,
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Leaves a socket alone that a newer relay has bound in the meantime.
    pub(super) fn remove(&self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && meta.dev() == self.dev
            && meta.ino() == self.ino
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
