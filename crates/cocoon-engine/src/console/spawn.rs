//! Starting the relay as a detached process, and the argv that carries its
//! spec across the exec:
//! `--socket S --log L --log-max-bytes N [--watch-pid P --watch-start T] --port NAME=FD ...`.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::io::FdFlags;

use super::{RelayPort, RelaySpec};
use crate::process::ProcessIdentity;

const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// The relay listens a few milliseconds after its exec; a coarser poll
/// added up to its own length to every `vm start`.
const READY_POLL: Duration = Duration::from_millis(1);

/// Starts a detached relay: `exe args_prefix... <relay args>`, in its own
/// session, stdio on /dev/null (stderr to `stderr` if given), with the port
/// fds inherited. Returns once the relay accepts connections; the child is
/// not waited for (it outlives the caller).
///
/// Each port is passed at the fd number its `--port NAME=FD` names: a copy
/// of the caller's fd, above the stdio range, whose close-on-exec flag is
/// cleared in the child only, so no concurrent spawn elsewhere inherits it.
pub fn spawn_relay(
    exe: &Path,
    args_prefix: &[&str],
    spec: &RelaySpec,
    stderr: Option<&Path>,
) -> io::Result<ProcessIdentity> {
    let child = start(exe, args_prefix, spec, None, stderr)?;
    wait_until_listening(child, &spec.socket)
}

/// A relay started before the VMM has named its ports (see
/// [`super::handoff`]): it listens and logs at once, and serves the ports
/// [`PendingRelay::hand_over`] sends. Dropped without a hand-over, it gets
/// none and exits by itself.
pub struct PendingRelay {
    child: Child,
    channel: OwnedFd,
    socket: PathBuf,
}

/// [`spawn_relay`] for the ports in `spec` plus those handed over later.
pub fn spawn_relay_ahead(
    exe: &Path,
    args_prefix: &[&str],
    spec: &RelaySpec,
    stderr: Option<&Path>,
) -> io::Result<PendingRelay> {
    let (ours, theirs) = super::handoff::channel()?;
    let child = start(exe, args_prefix, spec, Some(&theirs), stderr)?;
    Ok(PendingRelay {
        child,
        channel: ours,
        socket: spec.socket.clone(),
    })
}

impl PendingRelay {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends the ports, closes the channel and returns once the relay
    /// accepts connections (at once, usually: it started long before).
    pub fn hand_over(mut self, ports: &[RelayPort]) -> io::Result<ProcessIdentity> {
        if let Err(e) = ports
            .iter()
            .try_for_each(|port| super::handoff::send(&self.channel, port))
        {
            let _ = self.child.kill();
            let _ = self.child.wait();
            return Err(e);
        }
        drop(self.channel);
        wait_until_listening(self.child, &self.socket)
    }
}

/// Spawns the relay (see [`spawn_relay`]) with `channel`, if given, passed
/// on as `--ports-from FD` the way the ports are.
fn start(
    exe: &Path,
    args_prefix: &[&str],
    spec: &RelaySpec,
    channel: Option<&OwnedFd>,
    stderr: Option<&Path>,
) -> io::Result<Child> {
    // A live relay would keep serving this socket and our readiness check would lie.
    if UnixStream::connect(&spec.socket).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "a console relay already listens on {}",
                spec.socket.display()
            ),
        ));
    }
    let inherited: Vec<OwnedFd> = spec
        .ports
        .iter()
        .map(|port| &port.fd)
        .chain(channel)
        .map(|fd| rustix::io::fcntl_dupfd_cloexec(fd, 3).map_err(io::Error::from))
        .collect::<io::Result<_>>()?;
    let raw: Vec<RawFd> = inherited.iter().map(AsRawFd::as_raw_fd).collect();
    let (port_fds, channel_fd) = raw.split_at(spec.ports.len());

    let mut command = Command::new(exe);
    command
        .args(args_prefix)
        .args(relay_args(spec, port_fds, channel_fd.first().copied()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(relay_stderr(stderr)?);
    // SAFETY: only async-signal-safe syscalls run between fork and exec, and
    // `raw` is not reallocated in the child.
    unsafe {
        command.pre_exec(move || {
            // Own session: no terminal hang-up or Ctrl+C reaches the relay.
            rustix::process::setsid()?;
            for &fd in &raw {
                rustix::io::fcntl_setfd(BorrowedFd::borrow_raw(fd), FdFlags::empty())?;
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    drop(inherited);
    Ok(child)
}

/// The relay's stderr: appended to `stderr` if given, else /dev/null.
fn relay_stderr(stderr: Option<&Path>) -> io::Result<Stdio> {
    Ok(match stderr {
        Some(path) => Stdio::from(
            File::options()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("relay stderr {}: {e}", path.display()))
                })?,
        ),
        None => Stdio::null(),
    })
}

/// Waits until the relay accepts connections on its socket; kills it if it
/// does not within [`READY_TIMEOUT`].
fn wait_until_listening(mut child: Child, socket: &Path) -> io::Result<ProcessIdentity> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!(
                "the console relay exited before listening on {} ({status})",
                socket.display()
            )));
        }
        if UnixStream::connect(socket).is_ok() {
            return ProcessIdentity::of(child.id());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the console relay did not listen on {} within {}s",
                    socket.display(),
                    READY_TIMEOUT.as_secs()
                ),
            ));
        }
        std::thread::sleep(READY_POLL);
    }
}

fn relay_args(spec: &RelaySpec, fds: &[RawFd], channel: Option<RawFd>) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--socket".into(),
        spec.socket.clone().into(),
        "--log".into(),
        spec.log.clone().into(),
        "--log-max-bytes".into(),
        spec.log_max_bytes.to_string().into(),
    ];
    if let Some(watch) = spec.watch {
        args.extend([
            "--watch-pid".into(),
            watch.pid.to_string().into(),
            "--watch-start".into(),
            watch.start_time.to_string().into(),
        ]);
    }
    if let Some(reap) = &spec.reap {
        args.extend([
            "--reap-pid".into(),
            reap.identity.pid.to_string().into(),
            "--reap-start".into(),
            reap.identity.start_time.to_string().into(),
            "--reap-socket".into(),
            reap.api_socket.clone().into(),
        ]);
    }
    for (port, fd) in spec.ports.iter().zip(fds) {
        args.push("--port".into());
        args.push(format!("{}={fd}", port.name).into());
    }
    if let Some(fd) = channel {
        args.extend(["--ports-from".into(), fd.to_string().into()]);
    }
    args
}

/// Parses what [`spawn_relay`] passed after `args_prefix`, taking ownership
/// of the inherited port fds.
///
/// Meant for the start of the relay process. An fd is only adopted if it is
/// open, above stdio, named once, and was inherited across exec (close-on-exec
/// clear): every fd Rust opens itself has the flag set, so a wrong argv cannot
/// make this steal a descriptor something else in the process owns.
pub fn relay_spec_from_args(args: &[OsString]) -> Result<RelaySpec, String> {
    let mut socket = None;
    let mut log = None;
    let mut log_max_bytes = None;
    let mut watch_pid = None;
    let mut watch_start = None;
    let (mut reap_pid, mut reap_start, mut reap_socket) = (None, None, None);
    let mut ports: Vec<(String, RawFd)> = Vec::new();
    let mut channel = None;
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let flag = flag.to_str().ok_or("non-UTF-8 flag")?;
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag {
            "--socket" => socket = Some(PathBuf::from(value)),
            "--log" => log = Some(PathBuf::from(value)),
            "--log-max-bytes" => log_max_bytes = Some(number(flag, value)?),
            "--watch-pid" => watch_pid = Some(number(flag, value)?),
            "--watch-start" => watch_start = Some(number(flag, value)?),
            "--reap-pid" => reap_pid = Some(number(flag, value)?),
            "--reap-start" => reap_start = Some(number(flag, value)?),
            "--reap-socket" => reap_socket = Some(PathBuf::from(value)),
            "--port" => ports.push(port(value)?),
            "--ports-from" => channel = Some(number::<RawFd>(flag, value)?),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    let watch = match (watch_pid, watch_start) {
        (Some(pid), Some(start_time)) => Some(ProcessIdentity { pid, start_time }),
        (None, None) => None,
        _ => return Err("--watch-pid and --watch-start go together".into()),
    };
    let reap = match (reap_pid, reap_start, reap_socket) {
        (Some(pid), Some(start_time), Some(api_socket)) => Some(crate::model::VmmProcess {
            identity: ProcessIdentity { pid, start_time },
            api_socket,
        }),
        (None, None, None) => None,
        _ => return Err("--reap-pid, --reap-start and --reap-socket go together".into()),
    };
    if ports.is_empty() && channel.is_none() {
        return Err("at least one --port is needed".into());
    }
    let mut seen = HashSet::new();
    let named = ports
        .iter()
        .map(|(name, fd)| (name.as_str(), *fd))
        .chain(channel.map(|fd| ("--ports-from", fd)));
    for (name, fd) in named {
        if !seen.insert(fd) {
            return Err(format!("fd {fd} is named twice (port {name})"));
        }
        check_inherited(fd).map_err(|e| format!("port {name}: {e}"))?;
    }
    let ports = ports
        .into_iter()
        .map(|(name, fd)| RelayPort {
            name,
            fd: adopt(fd),
        })
        .collect();
    Ok(RelaySpec {
        socket: socket.ok_or("--socket is required")?,
        log: log.ok_or("--log is required")?,
        log_max_bytes: log_max_bytes.ok_or("--log-max-bytes is required")?,
        ports,
        watch,
        reap,
        more_ports: channel.map(adopt),
    })
}

/// Takes ownership of an inherited fd checked by [`check_inherited`].
fn adopt(fd: RawFd) -> OwnedFd {
    // SAFETY: checked by the caller: open, inherited across exec (so nothing
    // in this process opened it), and adopted exactly once.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // Not passed on to anything the relay might ever start.
    let _ = rustix::io::fcntl_setfd(&fd, FdFlags::CLOEXEC);
    fd
}

fn number<T: std::str::FromStr>(flag: &str, value: &OsStr) -> Result<T, String> {
    value
        .to_str()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{flag}: not a number: {}", value.to_string_lossy()))
}

fn port(value: &OsStr) -> Result<(String, RawFd), String> {
    let text = value
        .to_str()
        .ok_or_else(|| format!("--port: not UTF-8: {}", value.to_string_lossy()))?;
    let (name, fd) = text
        .rsplit_once('=')
        .ok_or_else(|| format!("--port {text}: expected NAME=FD"))?;
    let fd: RawFd = fd
        .parse()
        .map_err(|_| format!("--port {text}: {fd} is not an fd number"))?;
    Ok((name.to_string(), fd))
}

fn check_inherited(fd: RawFd) -> Result<(), String> {
    if fd < 3 {
        return Err(format!("fd {fd} is standard I/O"));
    }
    // SAFETY: only inspects the flags; a closed fd number yields EBADF.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    match rustix::io::fcntl_getfd(borrowed) {
        Ok(flags) if flags.contains(FdFlags::CLOEXEC) => {
            Err(format!("fd {fd} was not inherited (close-on-exec is set)"))
        }
        Ok(_) => Ok(()),
        Err(e) => Err(format!("fd {fd} is not open: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    /// A complete socket and log part of the argv, then `rest`.
    fn with_log(rest: &[&str]) -> Vec<OsString> {
        let head = ["--socket", "s", "--log", "l", "--log-max-bytes", "9"];
        os(&[&head[..], rest].concat())
    }

    #[test]
    fn bad_argv_is_rejected_before_any_fd_is_adopted() {
        let err = relay_spec_from_args(&os(&["--socket", "s", "--log", "l"])).unwrap_err();
        assert!(err.contains("--port"), "{err}");
        let err = relay_spec_from_args(&os(&["--bogus", "1"])).unwrap_err();
        assert!(err.contains("unknown flag --bogus"), "{err}");
        let err = relay_spec_from_args(&with_log(&["--port", "serial=1"])).unwrap_err();
        assert!(err.contains("standard I/O"), "{err}");
        // Our own fds have close-on-exec set: never adopted.
        let file = File::open("/dev/null").unwrap();
        let arg = format!("serial={}", file.as_raw_fd());
        let err = relay_spec_from_args(&with_log(&["--port", &arg])).unwrap_err();
        assert!(err.contains("not inherited"), "{err}");
        let err =
            relay_spec_from_args(&with_log(&["--watch-pid", "5", "--port", &arg])).unwrap_err();
        assert!(err.contains("go together"), "{err}");
    }

    #[test]
    fn argv_carries_the_whole_spec() {
        let spec = RelaySpec {
            socket: "/run/vm/console.sock".into(),
            log: "/run/vm/console.log".into(),
            log_max_bytes: 1234,
            ports: Vec::new(),
            watch: Some(ProcessIdentity {
                pid: 42,
                start_time: 777,
            }),
            reap: Some(crate::model::VmmProcess {
                identity: ProcessIdentity {
                    pid: 43,
                    start_time: 778,
                },
                api_socket: "/run/vm/vhost-vsock.sock".into(),
            }),
            more_ports: None,
        };
        let args = relay_args(&spec, &[], None);
        assert_eq!(
            args,
            os(&[
                "--socket",
                "/run/vm/console.sock",
                "--log",
                "/run/vm/console.log",
                "--log-max-bytes",
                "1234",
                "--watch-pid",
                "42",
                "--watch-start",
                "777",
                "--reap-pid",
                "43",
                "--reap-start",
                "778",
                "--reap-socket",
                "/run/vm/vhost-vsock.sock",
            ])
        );
        let err = relay_spec_from_args(&os(&["--reap-pid", "43"])).unwrap_err();
        assert!(
            err.contains("go together") || err.contains("required"),
            "{err}"
        );
        assert_eq!(port(OsStr::new("a=b=7")).unwrap(), ("a=b".to_string(), 7));
    }
}
