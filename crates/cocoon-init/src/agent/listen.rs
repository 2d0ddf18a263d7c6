//! Accepting connections: AF_VSOCK in a guest, a unix socket in host tests.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{Root, session};

/// The vsock driver may still be binding when the agent starts (upstream
/// retries for two minutes too).
const LISTEN_RETRY: Duration = Duration::from_secs(1);
const LISTEN_RETRY_FOR: Duration = Duration::from_secs(120);

/// 16 bytes: the cast cannot truncate.
#[allow(clippy::cast_possible_truncation)]
const VM_ADDR_LEN: libc::socklen_t = size_of::<libc::sockaddr_vm>() as libc::socklen_t;

/// Serves `port` on every CID until the listener fails.
pub fn serve_vsock(port: u32, root: &Root) -> io::Result<()> {
    let deadline = Instant::now() + LISTEN_RETRY_FOR;
    let listener = loop {
        match listen_vsock(port) {
            Ok(fd) => break fd,
            Err(e) if Instant::now() < deadline => {
                eprintln!("cocoon-init agent: vsock listen: {e} (retrying)");
                std::thread::sleep(LISTEN_RETRY);
            }
            Err(e) => return Err(e),
        }
    };
    loop {
        let (conn, peer_cid) = accept_vsock(&listener)?;
        // Only the host may run commands: a guest process connecting to
        // the local CID would otherwise get root.
        if peer_cid != libc::VMADDR_CID_HOST {
            eprintln!("cocoon-init agent: refusing vsock peer CID {peer_cid}");
            continue;
        }
        spawn_session(conn, root);
    }
}

/// Test mode: the same sessions on a unix socket.
pub fn serve_unix(path: &Path, root: &Root) -> io::Result<()> {
    let listener = UnixListener::bind(path)?;
    for conn in listener.incoming() {
        spawn_session(OwnedFd::from(conn?), root);
    }
    Ok(())
}

fn spawn_session(conn: OwnedFd, root: &Root) {
    let root = root.clone();
    std::thread::spawn(move || {
        let Ok(reader) = conn.try_clone() else {
            return;
        };
        let writer = match conn.try_clone() {
            Ok(fd) => fd,
            Err(_) => return,
        };
        session::serve(FdStream(reader), FdStream(writer), &root);
        // Wakes the session's input thread, still blocked reading.
        let _ = rustix::net::shutdown(&conn, rustix::net::Shutdown::Both);
    });
}

/// A connected socket as a byte stream.
pub struct FdStream(pub OwnedFd);

impl Read for FdStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(rustix::io::read(&self.0, buf)?)
    }
}

impl Write for FdStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let sent = rustix::net::send(&self.0, buf, rustix::net::SendFlags::NOSIGNAL);
        match sent {
            Ok(n) => Ok(n),
            // Not a socket (a pipe in tests): a plain write.
            Err(rustix::io::Errno::NOTSOCK) => Ok(rustix::io::write(&self.0, buf)?),
            Err(e) => Err(e.into()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn listen_vsock(port: u32) -> io::Result<OwnedFd> {
    // SAFETY: socket() takes no pointers; the result is checked below.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket() and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let addr = vsock_addr(libc::VMADDR_CID_ANY, port);
    // SAFETY: addr is a valid sockaddr_vm that outlives the call, and the
    // length passed is its size.
    let bound = unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), VM_ADDR_LEN) };
    if bound < 0 {
        return Err(io::Error::last_os_error());
    }
    rustix::net::listen(&fd, 64)?;
    Ok(fd)
}

fn vsock_addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family =
        libc::sa_family_t::try_from(libc::AF_VSOCK).expect("AF_VSOCK fits sa_family_t");
    addr.svm_cid = cid;
    addr.svm_port = port;
    addr
}

/// The next connection and its peer's CID.
fn accept_vsock(listener: &OwnedFd) -> io::Result<(OwnedFd, u32)> {
    loop {
        let mut peer = vsock_addr(0, 0);
        let mut len = VM_ADDR_LEN;
        // SAFETY: peer and len are valid for writes and sized as the kernel
        // expects for an AF_VSOCK address.
        let fd = unsafe {
            libc::accept4(
                listener.as_fd().as_raw_fd(),
                (&raw mut peer).cast(),
                &raw mut len,
                libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: accept4 returned a fresh descriptor that nothing else owns.
            return Ok((unsafe { OwnedFd::from_raw_fd(fd) }, peer.svm_cid));
        }
        let e = io::Error::last_os_error();
        // A peer that went away before we accepted it is no reason to stop.
        if !matches!(
            e.raw_os_error(),
            Some(libc::EINTR | libc::ECONNABORTED | libc::EPROTO)
        ) {
            return Err(e);
        }
    }
}
