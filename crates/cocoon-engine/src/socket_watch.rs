//! Waiting for a socket file to appear without a polling sleep: an inotify
//! watch on its directory wakes the waiter as soon as a VMM binds its API
//! socket. Without inotify (or on any error) the wait is a plain timeout,
//! so callers keep their deadline checks and lose only latency.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use rustix::fs::inotify;
use tokio::io::unix::AsyncFd;

pub(crate) struct SocketWatch {
    fd: Option<AsyncFd<OwnedFd>>,
}

impl SocketWatch {
    /// Watches the directory `socket` is (or will be) made in.
    pub fn new(socket: &Path) -> SocketWatch {
        let fd = socket.parent().and_then(|dir| {
            let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
                .ok()?;
            inotify::add_watch(
                &fd,
                dir,
                inotify::WatchFlags::CREATE | inotify::WatchFlags::MOVED_TO,
            )
            .ok()?;
            // SAFETY: the OwnedFd moves into the AsyncFd, which keeps it
            // open and unchanged until it is dropped.
            unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.ok()
        });
        SocketWatch { fd }
    }

    /// Returns when a file was made in the directory since the last call,
    /// or after `at_most`, whichever is first.
    pub async fn wait(&self, at_most: Duration) {
        let Some(fd) = &self.fd else {
            return tokio::time::sleep(at_most).await;
        };
        let _ = tokio::time::timeout(at_most, async {
            if let Ok(mut guard) = fd.readable().await {
                // Drain the events (their content does not matter: the
                // caller looks at the socket itself).
                let mut buf = [0u8; 4096];
                while rustix::io::read(fd.get_ref(), &mut buf).is_ok_and(|n| n > 0) {}
                guard.clear_ready();
            }
        })
        .await;
    }
}

/// Closed on a thread of its own: closing an inotify instance that had a
/// watch waits out an SRCU grace period in the kernel (8-20 ms on the test
/// host), which would otherwise sit between a VMM's socket coming up and
/// its boot.
impl Drop for SocketWatch {
    fn drop(&mut self) {
        if let Some(fd) = self.fd.take() {
            // Out of the reactor here, where the runtime is; closed there.
            let fd = fd.into_inner();
            let _ = std::thread::Builder::new()
                .name("inotify-close".into())
                .spawn(move || drop(fd));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_when_the_socket_is_bound() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(wakes());
    }

    async fn wakes() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let watch = SocketWatch::new(&socket);
        assert!(watch.fd.is_some(), "inotify is available here");
        let path = socket.clone();
        let binder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            std::os::unix::net::UnixListener::bind(&path).unwrap()
        });
        // Woken by the bind, long before the 10 s fallback.
        let t0 = std::time::Instant::now();
        watch.wait(Duration::from_secs(10)).await;
        let _listener = binder.join().unwrap();
        assert!(socket.exists());
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
}
