//! PID 1's life after the main process started: reap every orphan, pass
//! the stop signals on to the main process, and when it exits, stop the
//! rest and report its status.

use std::fs::File;
use std::io::{self, Read};
use std::mem::{size_of, zeroed};
use std::os::fd::{FromRawFd, OwnedFd};
use std::thread::sleep;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, poll};

use super::power::PowerButtons;
use super::sys::log;

/// Signals PID 1 passes on to the main process, as docker's and tini's init do.
pub const FORWARDED: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// How long the other processes get between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(2);

/// Blocks SIGCHLD and the forwarded signals (before any fork, so none is
/// lost) and returns a signalfd that receives them. The kernel drops a
/// signal sent to PID 1 that has no handler unless it is blocked, so
/// blocking is what makes them arrive at all.
pub fn block_signals() -> io::Result<OwnedFd> {
    // SAFETY: sigset manipulation on a local set, then sigprocmask and
    // signalfd with valid pointers; the returned fd is owned here.
    unsafe {
        let mut set: libc::sigset_t = zeroed();
        libc::sigemptyset(&mut set);
        for signal in FORWARDED.iter().chain(&[libc::SIGCHLD]) {
            libc::sigaddset(&mut set, *signal);
        }
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// The status a shell reports for a wait status: the exit code, or 128 plus
/// the signal that killed the process.
pub fn status_of(wait_status: libc::c_int) -> u8 {
    if libc::WIFEXITED(wait_status) {
        u8::try_from(libc::WEXITSTATUS(wait_status) & 0xff).unwrap_or(255)
    } else if libc::WIFSIGNALED(wait_status) {
        u8::try_from((128 + libc::WTERMSIG(wait_status)).min(255)).unwrap_or(255)
    } else {
        255
    }
}

/// Reaps whatever has exited; the main process's status if it was among them.
fn reap(main: libc::pid_t) -> Option<u8> {
    let mut main_status = None;
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid status pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return main_status;
        }
        if pid == main {
            main_status = Some(status_of(status));
        }
    }
}

fn send(pid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: kill(2) takes plain integers.
    unsafe { libc::kill(pid, signal) };
}

/// Waits for the main process, forwarding signals and the power button,
/// and returns its status.
pub fn supervise(signals: &OwnedFd, main: u32, buttons: &mut PowerButtons) -> u8 {
    let main = libc::pid_t::try_from(main).expect("pids fit pid_t");
    let mut signal_file = File::from(signals.try_clone().expect("dup the signalfd"));
    loop {
        if let Some(status) = reap(main) {
            return status;
        }
        let mut fds = vec![PollFd::new(&signal_file, PollFlags::IN)];
        fds.extend(
            buttons
                .fds()
                .map(|fd| PollFd::from_borrowed_fd(fd, PollFlags::IN)),
        );
        if poll(&mut fds, None).is_err() {
            continue;
        }
        let button_ready: Vec<bool> = fds[1..].iter().map(|fd| !fd.revents().is_empty()).collect();
        let signal_ready = !fds[0].revents().is_empty();
        drop(fds);
        if signal_ready
            && let Some(signal) = read_signal(&mut signal_file)
            && signal != libc::SIGCHLD
        {
            send(main, signal);
        }
        if buttons.pressed(&button_ready) {
            log("power button pressed: sending SIGTERM to the main process");
            send(main, libc::SIGTERM);
        }
    }
}

fn read_signal(file: &mut File) -> Option<libc::c_int> {
    // SAFETY: signalfd_siginfo is plain data; all zeroes is a valid value.
    let mut info: libc::signalfd_siginfo = unsafe { zeroed() };
    // SAFETY: a byte view of `info`, which lives for the whole borrow.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(
            (&raw mut info).cast::<u8>(),
            size_of::<libc::signalfd_siginfo>(),
        )
    };
    match file.read(bytes) {
        Ok(n) if n == bytes.len() => libc::c_int::try_from(info.ssi_signo).ok(),
        _ => None,
    }
}

/// Stops every other process: SIGTERM, up to [`GRACE`] to exit, then
/// SIGKILL; reaps them all.
pub fn stop_everything() {
    send(-1, libc::SIGTERM);
    let deadline = Instant::now() + GRACE;
    while Instant::now() < deadline {
        let mut status = 0;
        // SAFETY: waitpid with a valid status pointer.
        match unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } {
            // ECHILD: nothing is left.
            -1 => return,
            0 => sleep(Duration::from_millis(20)),
            _ => {}
        }
    }
    send(-1, libc::SIGKILL);
    // SAFETY: waitpid with a null status pointer is allowed.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), 0) } > 0 {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_what_shells_report() {
        assert_eq!(status_of(0), 0);
        assert_eq!(status_of(3 << 8), 3);
        assert_eq!(status_of(255 << 8), 255);
        assert_eq!(status_of(libc::SIGKILL), 137);
        assert_eq!(status_of(libc::SIGTERM), 143);
        // A core dump flag does not change the signal.
        assert_eq!(status_of(libc::SIGSEGV | 0x80), 139);
    }
}
