//! The fake guest's consoles, made as the real VMMs make them: a PTY whose
//! slave path `vm.info` names, or CH's serial port in socket mode. Kept
//! apart from the API so the launch (`--serial`, `--console`) and a restore
//! open consoles the same way.

use std::path::PathBuf;

/// CH's serial port in socket mode: a unix socket the console connects to.
/// The fake guest greets each connection with `banner` and echoes its input.
/// Binding fails on an existing path, as CH's does.
pub fn serve_serial_socket(path: PathBuf, banner: &'static str) {
    let listener = match tokio::net::UnixListener::bind(&path) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!(
                "fake-vmm: cannot bind the serial socket {}: {e}",
                path.display()
            );
            std::process::exit(1);
        }
    };
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = stream.write_all(format!("{banner}\r\n").as_bytes()).await;
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// A PTY master and its slave's path.
pub fn open_pty() -> (libc::c_int, String) {
    // SAFETY: plain libc PTY calls on a fd we own and check; ptsname's result
    // is checked non-null, and its static buffer is copied into an owned
    // String before any other call (this process opens PTYs from one thread
    // at a time) could overwrite it.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(master >= 0, "posix_openpt");
        assert_eq!(libc::grantpt(master), 0);
        assert_eq!(libc::unlockpt(master), 0);
        let name = libc::ptsname(master);
        assert!(!name.is_null(), "ptsname");
        let name = std::ffi::CStr::from_ptr(name);
        (master, name.to_string_lossy().into_owned())
    }
}

/// Writes `line` to a PTY master, as the guest writes to its console.
pub fn write_pty(master: libc::c_int, line: &str) {
    // SAFETY: `line` is a live buffer of `line.len()` bytes for the whole
    // call, and `master` is a fd this process opened and keeps open.
    unsafe { libc::write(master, line.as_ptr().cast(), line.len()) };
}
