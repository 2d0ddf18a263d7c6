//! The interactive client: the user's terminal on one side, the relay's
//! socket on the other, an escape sequence to leave.
//!
//! A poll(2) loop on borrowed fds rather than tokio: making the user's
//! terminal non-blocking (as an async reactor needs) would change the file
//! description the shell shares with us.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags};
use rustix::pipe::PipeFlags;

use super::{ConsoleError, frame, tty};

/// Why [`attach`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detached {
    /// The user typed the escape sequence, or the input reached end of file.
    Escape,
    /// The relay closed the connection (the VM stopped).
    RemoteClosed,
}

const CHUNK: usize = 16 * 1024;

/// Copies `input` (the caller has put it in raw mode) to the relay and the
/// relay's output to `output` until the user types `escape` `.`, the relay
/// closes, or `input` ends. `escape` `escape` sends one escape byte; `escape`
/// followed by anything else sends both. With `tty_for_winsize`, its window
/// size is sent on connect and on every SIGWINCH that changes it.
///
/// At end of input, pending input is sent and `Detached::Escape` is returned
/// without waiting for more output: `echo cmd | cocoon vm console` types and leaves.
pub fn attach(
    socket: &Path,
    escape: u8,
    input: BorrowedFd<'_>,
    output: BorrowedFd<'_>,
    tty_for_winsize: Option<BorrowedFd<'_>>,
) -> Result<Detached, ConsoleError> {
    let stream = connect(socket)?;
    let resize = match tty_for_winsize {
        Some(tty) => Some(Resize {
            tty,
            signal: WinchSignal::register().map_err(io_error("window size signal setup"))?,
            last: None,
        }),
        None => None,
    };
    let mut session = Session {
        stream: stream.into(),
        output,
        escaper: Escaper::new(escape),
        resize,
    };
    session.run(input)
}

fn connect(socket: &Path) -> Result<UnixStream, ConsoleError> {
    UnixStream::connect(socket).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ConsoleError::NotRunning {
            socket: socket.to_path_buf(),
        },
        _ => ConsoleError::Connect {
            socket: socket.to_path_buf(),
            source,
        },
    })
}

fn io_error(what: &'static str) -> impl Fn(io::Error) -> ConsoleError {
    move |source| ConsoleError::Io { what, source }
}

struct Session<'a> {
    stream: OwnedFd,
    output: BorrowedFd<'a>,
    escaper: Escaper,
    resize: Option<Resize<'a>>,
}

struct Resize<'a> {
    tty: BorrowedFd<'a>,
    signal: WinchSignal,
    last: Option<(u16, u16)>,
}

impl Session<'_> {
    fn run(&mut self, input: BorrowedFd<'_>) -> Result<Detached, ConsoleError> {
        self.send_window_size()?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let (input_ready, stream_ready, signal_ready) = {
                let mut fds = vec![
                    PollFd::new(&input, PollFlags::IN),
                    PollFd::new(&self.stream, PollFlags::IN),
                ];
                if let Some(resize) = &self.resize {
                    fds.push(PollFd::new(&resize.signal.read, PollFlags::IN));
                }
                match rustix::event::poll(&mut fds, None) {
                    Ok(_) => {}
                    // SIGWINCH interrupts poll; its pipe byte is seen next round.
                    Err(Errno::INTR) => continue,
                    Err(e) => return Err(io_error("poll")(e.into())),
                }
                let ready = |i: usize| fds.get(i).is_some_and(|fd| !fd.revents().is_empty());
                (ready(0), ready(1), ready(2))
            };
            // Output first: on a relay that closed, show everything it sent.
            if stream_ready && let Some(detached) = self.relay_output(&mut buf)? {
                return Ok(detached);
            }
            if signal_ready {
                if let Some(resize) = &self.resize {
                    resize.signal.drain();
                }
                self.send_window_size()?;
            }
            if input_ready && let Some(detached) = self.user_input(input, &mut buf)? {
                return Ok(detached);
            }
        }
    }

    fn relay_output(&mut self, buf: &mut [u8]) -> Result<Option<Detached>, ConsoleError> {
        match rustix::net::recv(&self.stream, &mut *buf, RecvFlags::empty()) {
            Ok((0, _)) | Err(Errno::CONNRESET) => Ok(Some(Detached::RemoteClosed)),
            Ok((n, _)) => {
                write_all(self.output, &buf[..n]).map_err(io_error("output write"))?;
                Ok(None)
            }
            Err(Errno::INTR | Errno::AGAIN) => Ok(None),
            Err(e) => Err(io_error("relay read")(e.into())),
        }
    }

    fn user_input(
        &mut self,
        input: BorrowedFd<'_>,
        buf: &mut [u8],
    ) -> Result<Option<Detached>, ConsoleError> {
        let mut typed = Vec::new();
        let outcome = match rustix::io::read(input, &mut *buf) {
            // EIO: the terminal we read from hung up; same as end of input.
            Ok(0) | Err(Errno::IO) => {
                self.escaper.finish(&mut typed);
                Some(Detached::Escape)
            }
            Ok(n) => self
                .escaper
                .feed(&buf[..n], &mut typed)
                .then_some(Detached::Escape),
            Err(Errno::INTR | Errno::AGAIN) => None,
            Err(e) => return Err(io_error("input read")(e.into())),
        };
        if !typed.is_empty() {
            let mut frames = Vec::with_capacity(typed.len() + 8);
            frame::encode_input(&typed, &mut frames);
            self.send(&frames)?;
        }
        Ok(outcome)
    }

    fn send_window_size(&mut self) -> Result<(), ConsoleError> {
        let Some(resize) = &mut self.resize else {
            return Ok(());
        };
        let Ok((rows, cols)) = tty::window_size(resize.tty) else {
            return Ok(());
        };
        // 0x0 is what a terminal without a size reports; telling the guest helps nobody.
        if rows == 0 || cols == 0 || resize.last == Some((rows, cols)) {
            return Ok(());
        }
        resize.last = Some((rows, cols));
        let mut frames = Vec::new();
        frame::encode_winsize(rows, cols, &mut frames);
        self.send(&frames)
    }

    fn send(&self, mut bytes: &[u8]) -> Result<(), ConsoleError> {
        while !bytes.is_empty() {
            match rustix::net::send(&self.stream, bytes, SendFlags::NOSIGNAL) {
                Ok(n) => bytes = &bytes[n..],
                Err(Errno::INTR) => {}
                Err(e) => return Err(io_error("relay write")(e.into())),
            }
        }
        Ok(())
    }
}

/// Writes everything, waiting on an output that happens to be non-blocking.
fn write_all(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match rustix::io::write(fd, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => {
                let mut fds = [PollFd::new(&fd, PollFlags::OUT)];
                let _ = rustix::event::poll(&mut fds, None);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The escape state machine, kept apart so it is tested without sockets.
struct Escaper {
    escape: u8,
    after_escape: bool,
}

impl Escaper {
    fn new(escape: u8) -> Escaper {
        Escaper {
            escape,
            after_escape: false,
        }
    }

    /// Appends to `out` what should be sent for `input`; true when the user
    /// asked to detach (whatever followed in `input` is discarded).
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> bool {
        for &byte in input {
            if self.after_escape {
                self.after_escape = false;
                if byte == b'.' {
                    return true;
                }
                out.push(self.escape);
                if byte != self.escape {
                    out.push(byte);
                }
            } else if byte == self.escape {
                self.after_escape = true;
            } else {
                out.push(byte);
            }
        }
        false
    }

    /// An escape byte left pending at end of input is sent as typed.
    fn finish(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.after_escape) {
            out.push(self.escape);
        }
    }
}

/// SIGWINCH turned into a readable pipe, so the poll loop can wait on it.
struct WinchSignal {
    read: OwnedFd,
    id: signal_hook_registry::SigId,
}

impl WinchSignal {
    fn register() -> io::Result<WinchSignal> {
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        // SAFETY: the action only calls write(2), which is async-signal-safe,
        // on a non-blocking pipe it owns; a full pipe already says "resized".
        let id = unsafe {
            signal_hook_registry::register(libc::SIGWINCH, move || {
                let _ = rustix::io::write(&write, &[0]);
            })
        }?;
        Ok(WinchSignal { read, id })
    }

    fn drain(&self) {
        let mut buf = [0u8; 64];
        while matches!(rustix::io::read(self.read.as_fd(), &mut buf), Ok(n) if n > 0) {}
    }
}

impl Drop for WinchSignal {
    fn drop(&mut self) {
        signal_hook_registry::unregister(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ESC: u8 = 0x1d; // ^]

    fn feed_all(chunks: &[&[u8]]) -> (Vec<u8>, bool) {
        let mut escaper = Escaper::new(ESC);
        let mut out = Vec::new();
        for chunk in chunks {
            if escaper.feed(chunk, &mut out) {
                return (out, true);
            }
        }
        escaper.finish(&mut out);
        (out, false)
    }

    #[test]
    fn escape_dot_detaches_and_drops_what_follows() {
        assert_eq!(feed_all(&[b"ls\r\x1d.more"]), (b"ls\r".to_vec(), true));
        // Split across reads.
        assert_eq!(feed_all(&[b"a\x1d", b".b"]), (b"a".to_vec(), true));
    }

    #[test]
    fn doubled_escape_sends_one_and_other_bytes_pass_through() {
        assert_eq!(feed_all(&[b"\x1d\x1dx"]), (b"\x1dx".to_vec(), false));
        assert_eq!(feed_all(&[b"\x1d", b"q"]), (b"\x1dq".to_vec(), false));
        assert_eq!(feed_all(&[b"end\x1d"]), (b"end\x1d".to_vec(), false));
        assert_eq!(feed_all(&[b".\x1d\x1d."]), (b".\x1d.".to_vec(), false));
    }
}
