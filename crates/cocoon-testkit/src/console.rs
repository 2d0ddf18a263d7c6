//! `cocoon vm console` driven the way a user's terminal drives it: on a
//! fresh PTY, read with timeouts, typed into.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long [`ConsoleSession::expect`] waits.
const EXPECT_LIMIT: Duration = Duration::from_secs(15);

/// A running `cocoon vm console VM` and everything it printed so far.
pub struct ConsoleSession {
    pub child: Child,
    master: std::fs::File,
    seen: Vec<u8>,
}

impl ConsoleSession {
    /// Runs `cocoon` (`cmd`: the binary with the installation's
    /// environment) as `vm console VM`, on a PTY.
    pub fn open(mut cmd: Command, vm: &str) -> ConsoleSession {
        let (master, slave) = pty();
        let io = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
        cmd.args(["vm", "console", vm])
            .stdin(io(&slave))
            .stdout(io(&slave))
            .stderr(io(&slave));
        let child = cmd.spawn().unwrap();
        drop(slave);
        // Non-blocking reads so `expect` can time out.
        // SAFETY: fcntl(F_SETFL) on the PTY master this session owns and keeps open.
        unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        ConsoleSession {
            child,
            master: std::fs::File::from(master),
            seen: Vec::new(),
        }
    }

    /// Everything the session printed so far.
    pub fn seen(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    /// Reads what is there; sleeps a little if nothing is.
    fn pump(&mut self) {
        let mut buf = [0u8; 4096];
        match self.master.read(&mut buf) {
            Ok(n) if n > 0 => self.seen.extend_from_slice(&buf[..n]),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }

    /// Reads until the output holds `what` or `until` passes; whether it did.
    pub fn wait_until(&mut self, what: &str, until: Instant) -> bool {
        while !self.seen().contains(what) {
            if Instant::now() >= until {
                return false;
            }
            self.pump();
        }
        true
    }

    /// Waits up to 15 s for the output to hold `what`; panics with what was
    /// seen if it does not.
    pub fn expect(&mut self, what: &str) {
        self.expect_within(what, EXPECT_LIMIT);
    }

    pub fn expect_within(&mut self, what: &str, limit: Duration) {
        let found = self.wait_until(what, Instant::now() + limit);
        assert!(
            found,
            "console never showed {what:?} within {limit:?}; saw:\n{}",
            self.seen()
        );
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).unwrap();
    }

    /// Types `input` every `every` until the output holds `answer`, for at
    /// most `limit`. Input typed while `vm console` is still setting its
    /// terminal up is lost, so a first question must be asked again.
    pub fn ask(&mut self, input: &[u8], answer: &str, every: Duration, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            self.send(input);
            let resend = (Instant::now() + every).min(deadline);
            if self.wait_until(answer, resend) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {answer:?} within {limit:?} after typing {:?}; the console saw:\n{}",
                String::from_utf8_lossy(input),
                self.seen()
            );
        }
    }

    /// Asks the test guest for its count (`?` → `count=<n>`) and returns
    /// the answer, asking again every 2 s (see [`Self::ask`]).
    pub fn count(&mut self) -> u64 {
        use crate::guest::counts;
        let before = counts(&self.seen()).len();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.send(&[crate::guest::QUERY]);
            let resend = Instant::now() + Duration::from_secs(2);
            while Instant::now() < resend {
                let answers = counts(&self.seen());
                if answers.len() > before {
                    return answers[before];
                }
                self.pump();
            }
            assert!(
                Instant::now() < deadline,
                "the guest never answered `?`; the console saw:\n{}",
                self.seen()
            );
        }
    }

    /// Types the escape sequence (`^]` `.`) and checks that `vm console`
    /// says so and exits successfully.
    pub fn detach(mut self, vm: &str) {
        self.send(&[0x1d, b'.']);
        self.expect(&format!("Disconnected from {vm}"));
        assert!(self.child.wait().unwrap().success());
    }
}

impl Drop for ConsoleSession {
    fn drop(&mut self) {
        // No-op once reaped: std never signals a pid it has waited for.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pty() -> (OwnedFd, OwnedFd) {
    // SAFETY: plain libc PTY calls on fds we take ownership of.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(master >= 0);
        assert_eq!(libc::grantpt(master), 0);
        assert_eq!(libc::unlockpt(master), 0);
        let name = std::ffi::CStr::from_ptr(libc::ptsname(master)).to_owned();
        let slave = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
        assert!(slave >= 0);
        (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave))
    }
}
