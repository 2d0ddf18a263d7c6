//! The `exec` session: run a command, stream its output, forward stdin,
//! window sizes and signals, report how it ended.

use std::io::{self, BufRead, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cocoon_guest_proto::agent::{ExecRequest, FrameReader, Input, Reply, WinSize, valid_signal};
use rustix::event::{PollFd, PollFlags};

use super::session::Out;
use super::{Root, user};

/// How long output is still read after the command exited: a daemon it
/// left behind may hold its pipes forever (upstream's `execWaitDelay`).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// Output chunk size, as Go's `io.Copy` reads.
const CHUNK: usize = 32 * 1024;
/// Stdin chunks queued for a command that does not read (upstream's 8).
const STDIN_QUEUE: usize = 8;
/// For a command the agent starts with no `PATH` of its own (init's
/// environment is bare).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// The running command: its output ends and where its input goes.
struct Spawned {
    child: Child,
    outputs: Vec<(OwnedFd, Stream)>,
    stdin: Box<dyn Write + Send>,
    /// The PTY master, for window size changes.
    pty: Option<OwnedFd>,
}

/// The command's process group, signalled only while it exists: once the
/// leader is reaped its number may name another group.
struct Group {
    pgid: i32,
    alive: Mutex<bool>,
}

impl Group {
    fn signal(&self, signal: i32) {
        let alive = self.alive.lock().unwrap_or_else(|e| e.into_inner());
        if *alive {
            // SAFETY: kill takes no pointers; a negative pid names the group.
            unsafe { libc::kill(-self.pgid, signal) };
        }
    }
    fn exited(&self) {
        *self.alive.lock().unwrap_or_else(|e| e.into_inner()) = false;
    }
}

pub fn run<R, W>(request: ExecRequest, frames: FrameReader<R>, out: Arc<Out<W>>, root: &Root)
where
    R: BufRead + Send + 'static,
    W: Write + Send + 'static,
{
    let argv0 = request.argv[0].clone();
    let spawned = match spawn(&request, root) {
        Ok(spawned) => spawned,
        Err(e) => {
            let _ = out.send(&Reply::Error(format!("exec: start {argv0}: {e}")));
            return;
        }
    };
    let Spawned {
        mut child,
        outputs,
        stdin,
        pty,
    } = spawned;
    let pid = child.id();
    let group = Arc::new(Group {
        pgid: pid as i32,
        alive: Mutex::new(true),
    });
    let pidfd = rustix::process::Pid::from_raw(pid as i32)
        .ok_or_else(|| io::Error::other("pid 0"))
        .and_then(|p| {
            Ok(rustix::process::pidfd_open(
                p,
                rustix::process::PidfdFlags::empty(),
            )?)
        });
    let started = out.send(&Reply::Started {
        pid: i64::from(pid),
    });
    let (Ok(pidfd), Ok(())) = (pidfd, started) else {
        group.signal(libc::SIGKILL);
        let _ = child.wait();
        return;
    };
    let (stdin_tx, stdin_rx) = mpsc::sync_channel(STDIN_QUEUE);
    std::thread::spawn(move || feed_stdin(stdin, &stdin_rx));
    let tty = request.tty.is_some();
    {
        let (group, out) = (Arc::clone(&group), Arc::clone(&out));
        std::thread::spawn(move || read_input(frames, stdin_tx, tty, pty, &group, &out));
    }
    let pumped = pump(outputs, &pidfd, &out, &group);
    group.exited();
    if pumped.is_err() {
        // The host is gone: nobody will see this command's end.
        // SAFETY: kill takes no pointers; the leader is not reaped yet, so
        // the group number is still this command's.
        unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
    }
    let status = child.wait();
    if pumped.is_err() {
        return;
    }
    let _ = match status {
        Ok(status) => out.send(&Reply::Exit(exit_code(status))),
        Err(e) => out.send(&Reply::Error(format!("exec: wait {argv0}: {e}"))),
    };
}

/// The shell's convention (and the one `cocoon-init` prints for the main
/// process): the status, or 128 + the signal that killed it. Upstream
/// reports -1 for a signal death; docs/agent.md lists the difference.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

fn spawn(request: &ExecRequest, root: &Root) -> io::Result<Spawned> {
    let mut cmd = Command::new(&request.argv[0]);
    cmd.args(&request.argv[1..]);
    if std::env::var_os("PATH").is_none() {
        cmd.env("PATH", DEFAULT_PATH);
    }
    let user = user::resolve(&request.user, root)?;
    if let Some(home) = user.as_ref().and_then(|u| u.home.clone()) {
        cmd.env("HOME", home);
    }
    if request.tty.is_some() && std::env::var_os("TERM").is_none() {
        cmd.env("TERM", "xterm");
    }
    cmd.envs(&request.env);
    if !request.cwd.is_empty() {
        cmd.current_dir(&request.cwd);
    }
    match request.tty {
        None => spawn_piped(cmd, user),
        Some(size) => spawn_on_pty(cmd, size, user),
    }
}

/// Becomes `user` in the child, last (after the session and terminal
/// steps, which need root): supplementary groups, group, then user. std's
/// `uid()` cannot set supplementary groups (it clears them).
fn become_user(cmd: &mut Command, user: Option<user::Credentials>) {
    let Some(user) = user else {
        return;
    };
    let (uid, gid, groups) = (user.uid, user.gid, user.groups);
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe system calls on memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let check = |rc: libc::c_int| {
                if rc < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            check(libc::setgroups(groups.len(), groups.as_ptr()))?;
            check(libc::setgid(gid))?;
            check(libc::setuid(uid))
        });
    }
}

fn spawn_piped(mut cmd: Command, user: Option<user::Credentials>) -> io::Result<Spawned> {
    // Its own group, so that a signal or a kill reaches what it started.
    cmd.process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    become_user(&mut cmd, user);
    let mut child = cmd.spawn()?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        unreachable!("all three were piped");
    };
    Ok(Spawned {
        child,
        outputs: vec![
            (OwnedFd::from(stdout), Stream::Stdout),
            (OwnedFd::from(stderr), Stream::Stderr),
        ],
        stdin: Box::new(stdin),
        pty: None,
    })
}

fn spawn_on_pty(
    mut cmd: Command,
    size: WinSize,
    user: Option<user::Credentials>,
) -> io::Result<Spawned> {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    set_size(&master, size)?;
    let name = ptsname(&master, Vec::new())?;
    let slave: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(std::ffi::OsStr::from_bytes(name.as_bytes()))?
        .into();
    cmd.stdin(slave.try_clone()?)
        .stdout(slave.try_clone()?)
        .stderr(slave);
    // SAFETY: the closure only makes raw system calls (setsid, ioctl), which
    // are async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            // A session of its own, the PTY (its stdin by now) its terminal:
            // job control and ^C work as on a console.
            rustix::process::setsid()?;
            rustix::process::ioctl_tiocsctty(std::os::fd::BorrowedFd::borrow_raw(0))?;
            Ok(())
        });
    }
    become_user(&mut cmd, user);
    let child = cmd.spawn()?;
    // The slave copies die with `cmd`: the master sees EIO once the
    // command and whatever it started have all closed it.
    drop(cmd);
    Ok(Spawned {
        child,
        outputs: vec![(master.try_clone()?, Stream::Stdout)],
        stdin: Box::new(std::fs::File::from(master.try_clone()?)),
        pty: Some(master),
    })
}

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;

fn set_size(pty: &OwnedFd, size: WinSize) -> io::Result<()> {
    let winsize = rustix::termios::Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    Ok(rustix::termios::tcsetwinsize(pty, winsize)?)
}

/// Writes stdin chunks as they come; the command's stdin closes when the
/// channel does (`stdin_close`, or the host went away).
fn feed_stdin(mut stdin: Box<dyn Write + Send>, chunks: &Receiver<Vec<u8>>) {
    for chunk in chunks {
        // A command may close its stdin early (`head -1`): not an error.
        if stdin.write_all(&chunk).is_err() {
            return;
        }
    }
}

/// The host's frames after `exec`, until it closes the connection.
fn read_input<R: BufRead, W: Write>(
    mut frames: FrameReader<R>,
    stdin: SyncSender<Vec<u8>>,
    tty: bool,
    pty: Option<OwnedFd>,
    group: &Group,
    out: &Out<W>,
) {
    let mut stdin = Some(stdin);
    loop {
        let frame = match frames.next_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(e) => {
                // Corruption is no stdin EOF: say so and stop the command.
                let _ = out.send(&Reply::Error(format!("stdin: {e}")));
                group.signal(libc::SIGKILL);
                return;
            }
        };
        match Input::from(frame) {
            Input::Stdin(data) => {
                // The feeder is gone when the command closed its stdin.
                let gone =
                    !data.is_empty() && stdin.as_ref().is_some_and(|tx| tx.send(data).is_err());
                if gone {
                    stdin = None;
                }
            }
            // A PTY has no end of input to give; `stdin_close` only means
            // the host stops typing.
            Input::StdinClose if !tty => stdin = None,
            Input::Resize(size) if size.rows > 0 && size.cols > 0 => {
                if let Some(pty) = &pty {
                    let _ = set_size(pty, size);
                }
            }
            Input::Signal(signal) if valid_signal(signal) => group.signal(signal),
            _ => {}
        }
    }
}

/// Streams the output until the command has exited and its output ended
/// (or [`DRAIN_AFTER_EXIT`] passed). Err: the host can no longer be written.
fn pump<W: Write>(
    mut outputs: Vec<(OwnedFd, Stream)>,
    pidfd: &OwnedFd,
    out: &Out<W>,
    group: &Group,
) -> io::Result<()> {
    let mut exited_at: Option<Instant> = None;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let timeout = match exited_at {
            None => None,
            Some(at) => match DRAIN_AFTER_EXIT.checked_sub(at.elapsed()) {
                Some(left) if !outputs.is_empty() => Some(left),
                _ => return Ok(()),
            },
        };
        let ready = poll(&outputs, exited_at.is_none().then_some(pidfd), timeout)?;
        let mut ended = Vec::new();
        for (i, _) in ready.outputs.iter().enumerate().filter(|(_, r)| **r) {
            let (fd, stream) = &outputs[i];
            match rustix::io::read(fd, &mut buf) {
                Ok(0) | Err(rustix::io::Errno::IO) => ended.push(i),
                Ok(n) => {
                    let data = buf[..n].to_vec();
                    let reply = match stream {
                        Stream::Stdout => Reply::Stdout(data),
                        Stream::Stderr => Reply::Stderr(data),
                    };
                    out.send(&reply)?;
                }
                Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
                Err(e) => return Err(e.into()),
            }
        }
        for i in ended.into_iter().rev() {
            outputs.remove(i);
        }
        if ready.exited {
            group.exited();
            exited_at = Some(Instant::now());
        }
    }
}

struct Ready {
    outputs: Vec<bool>,
    exited: bool,
}

fn poll(
    outputs: &[(OwnedFd, Stream)],
    pidfd: Option<&OwnedFd>,
    timeout: Option<Duration>,
) -> io::Result<Ready> {
    let mut fds: Vec<PollFd<'_>> = outputs
        .iter()
        .map(|(fd, _)| PollFd::new(fd, PollFlags::IN))
        .collect();
    if let Some(pidfd) = pidfd {
        fds.push(PollFd::from_borrowed_fd(pidfd.as_fd(), PollFlags::IN));
    }
    let timeout = timeout.map(|d| rustix::event::Timespec {
        tv_sec: d.as_secs() as i64,
        tv_nsec: i64::from(d.subsec_nanos()),
    });
    match rustix::event::poll(&mut fds, timeout.as_ref()) {
        Ok(_) | Err(rustix::io::Errno::INTR) => {}
        Err(e) => return Err(e.into()),
    }
    let fired = |fd: &PollFd<'_>| !fd.revents().is_empty();
    Ok(Ready {
        outputs: fds[..outputs.len()].iter().map(fired).collect(),
        exited: pidfd.is_some() && fired(&fds[outputs.len()]),
    })
}
