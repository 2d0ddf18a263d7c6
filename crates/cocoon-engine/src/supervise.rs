//! VMM process supervision without a daemon.
//!
//! A VMM is launched detached (own session, stdin from /dev/null or a given
//! file, output to its log), optionally inside a network namespace, and is
//! known from then on by pid + start time + API socket path. Every check and
//! every signal verifies all three, and signals go through a pidfd, so a
//! recycled pid can never make cocoon signal a stranger. When the record of a
//! VMM is lost, it is found by scanning `/proc/*/cmdline` for its socket.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
use tokio::io::unix::AsyncFd;

use crate::jail::{Jail, JailError, Prepared};
use crate::model::VmmProcess;
use crate::process::ProcessIdentity;

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("cannot start {binary}: {source}")]
    Spawn { binary: String, source: io::Error },
    #[error("cannot open {what} {}: {source}", path.display())]
    Open {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{binary} exited ({status}) before its API socket {} was ready{}", socket.display(), log_tail(.log))]
    ExitedEarly {
        binary: String,
        status: String,
        socket: PathBuf,
        log: String,
    },
    #[error("{binary} did not open its API socket {} within {}s{}", socket.display(), timeout.as_secs_f64(), log_tail(.log))]
    SocketTimeout {
        binary: String,
        socket: PathBuf,
        timeout: Duration,
        log: String,
    },
    #[error("process {pid} did not exit after SIGKILL")]
    Unkillable { pid: u32 },
    #[error("cannot signal process {pid}: {source}")]
    Signal { pid: u32, source: io::Error },
    #[error(transparent)]
    Jail(#[from] JailError),
}

fn log_tail(log: &str) -> String {
    if log.trim().is_empty() {
        String::new()
    } else {
        format!("; last output:\n{}", log.trim_end())
    }
}

/// Where a VMM's stdin comes from.
#[derive(Debug, Clone)]
pub enum Stdin {
    Null,
    /// A file or FIFO opened for reading (e.g. a serial console input).
    Path(PathBuf),
    /// A terminal (a PTY slave) for stdin and stdout both: Firecracker's
    /// serial console. stderr still goes to the log.
    Terminal(std::sync::Arc<OwnedFd>),
}

#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub binary: PathBuf,
    pub args: Vec<OsString>,
    /// The API socket the VMM will listen on; part of its identity.
    pub api_socket: PathBuf,
    /// stdout and stderr go here (truncated at each launch).
    pub log_file: PathBuf,
    pub stdin: Stdin,
    /// Run inside this network namespace (e.g. `/var/run/netns/cocoon-<id>`).
    pub netns: Option<PathBuf>,
    /// How long to wait for the API socket to accept connections.
    pub socket_timeout: Duration,
    /// Run confined to this view of the host (a VMM loading state it did
    /// not write: see [`crate::jail`]).
    pub jail: Option<Jail>,
    /// `cgroup.procs` files (open for writing) of the cgroup(s) to run in:
    /// joined between fork and exec, so no thread ever runs outside.
    pub cgroup: Vec<std::sync::Arc<OwnedFd>>,
}

/// When a launched process's socket counts as ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ready {
    /// It accepts a connection (a VMM's API socket).
    Accepts,
    /// It exists as a socket: a server that takes its first connection for
    /// its one client (vhost-user) must not be probed by connecting.
    Bound,
}

/// Starts the VMM and waits until its API socket accepts a connection. On any
/// failure the process is killed and reaped: nothing is left running.
pub async fn launch(spec: &LaunchSpec) -> Result<VmmProcess, SuperviseError> {
    launch_until(spec, Ready::Accepts).await
}

/// Starts a helper that serves one client on `spec.api_socket` (a vhost-user
/// backend) and waits until the socket is there, without connecting to it.
pub async fn launch_listener(spec: &LaunchSpec) -> Result<VmmProcess, SuperviseError> {
    launch_until(spec, Ready::Bound).await
}

async fn launch_until(spec: &LaunchSpec, ready: Ready) -> Result<VmmProcess, SuperviseError> {
    let binary = spec.binary.display().to_string();
    let log = open_log(spec)?;
    let (stdin, stdout_tty) = open_stdin(&spec.stdin)?;
    let netns = open_netns(spec)?;
    let jail = spec.jail.as_ref().map(Jail::prepare).transpose()?;
    // A stale socket from a dead VMM would make the readiness check lie.
    let _ = std::fs::remove_file(&spec.api_socket);

    let mut command = Command::new(&spec.binary);
    let stdout = match stdout_tty {
        Some(tty) => Stdio::from(tty),
        None => Stdio::from(log.try_clone().map_err(|source| SuperviseError::Open {
            what: "log file",
            path: spec.log_file.clone(),
            source,
        })?),
    };
    command
        .args(&spec.args)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(log);
    let cgroup: Vec<std::os::fd::RawFd> = spec.cgroup.iter().map(|fd| fd.as_raw_fd()).collect();
    detach_in_child(
        &mut command,
        jail,
        netns.as_ref().map(|fd| fd.as_raw_fd()),
        cgroup,
    );
    let mut child = command.spawn().map_err(|source| SuperviseError::Spawn {
        binary: binary.clone(),
        source,
    })?;
    drop(netns);
    let identity = match ProcessIdentity::of(child.id()) {
        Ok(identity) => identity,
        Err(_) => {
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            return Err(SuperviseError::ExitedEarly {
                binary,
                status,
                socket: spec.api_socket.clone(),
                log: read_tail(&spec.log_file),
            });
        }
    };
    wait_for_socket(spec, binary, &mut child, identity, ready).await
}

/// The VMM's log, truncated: its stderr, and its stdout unless a terminal has it.
fn open_log(spec: &LaunchSpec) -> Result<File, SuperviseError> {
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&spec.log_file)
        .map_err(|source| SuperviseError::Open {
            what: "log file",
            path: spec.log_file.clone(),
            source,
        })
}

/// The VMM's stdin, and for a terminal a second handle on it for stdout.
fn open_stdin(stdin: &Stdin) -> Result<(Stdio, Option<OwnedFd>), SuperviseError> {
    Ok(match stdin {
        Stdin::Null => (Stdio::null(), None),
        Stdin::Terminal(tty) => {
            let dup = |fd: &OwnedFd| {
                fd.try_clone().map_err(|source| SuperviseError::Open {
                    what: "terminal",
                    path: PathBuf::from("<pty>"),
                    source,
                })
            };
            let stdout_tty = dup(tty)?;
            (Stdio::from(dup(tty)?), Some(stdout_tty))
        }
        Stdin::Path(path) => (
            Stdio::from(
                OpenOptions::new()
                    .read(true)
                    .write(true) // a FIFO opened read-write never blocks and never sees EOF
                    .open(path)
                    .map_err(|source| SuperviseError::Open {
                        what: "stdin",
                        path: path.clone(),
                        source,
                    })?,
            ),
            None,
        ),
    })
}

/// The network namespace to run in, opened before the fork.
fn open_netns(spec: &LaunchSpec) -> Result<Option<OwnedFd>, SuperviseError> {
    let Some(path) = &spec.netns else {
        return Ok(None);
    };
    let file = File::open(path).map_err(|source| SuperviseError::Open {
        what: "network namespace",
        path: path.clone(),
        source,
    })?;
    Ok(Some(file.into()))
}

/// What the child does between fork and exec: its cgroups (if any), its
/// own session, its jail (if any), the VM's network namespace (if any).
/// `netns_fd` and the `cgroup` descriptors must stay open until the
/// command is spawned.
fn detach_in_child(
    command: &mut Command,
    jail: Option<Prepared>,
    netns_fd: Option<std::os::fd::RawFd>,
    cgroup: Vec<std::os::fd::RawFd>,
) {
    // SAFETY: the closure runs in the forked child, where only async-signal-safe
    // calls may run: it makes plain syscalls (setsid, the jail's unshare,
    // mount and pivot_root, setns) on C strings allocated before the fork and
    // a descriptor the caller keeps open until spawn returns, and reads errno
    // without allocating.
    unsafe {
        command.pre_exec(move || {
            // Into the VM's cgroup before anything else: `0` is the
            // writer itself, and the threads it starts after exec follow.
            for fd in &cgroup {
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            // Own session: no terminal signals (Ctrl+C) reach the VMM, and it
            // outlives the CLI that started it.
            rustix::process::setsid()?;
            if let Some(jail) = &jail {
                jail.enter()?;
            }
            if let Some(fd) = netns_fd {
                // The VMM (and the TAPs it opens) live in the VM's namespace;
                // switching in the child keeps every thread of ours untouched.
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Polls until the VMM accepts a connection on its API socket; kills and
/// reaps it if it does not within the timeout.
async fn wait_for_socket(
    spec: &LaunchSpec,
    binary: String,
    child: &mut std::process::Child,
    identity: ProcessIdentity,
    ready: Ready,
) -> Result<VmmProcess, SuperviseError> {
    use std::os::unix::fs::FileTypeExt;
    let deadline = Instant::now() + spec.socket_timeout;
    let watch = crate::socket_watch::SocketWatch::new(&spec.api_socket);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(SuperviseError::ExitedEarly {
                binary,
                status: status.to_string(),
                socket: spec.api_socket.clone(),
                log: read_tail(&spec.log_file),
            });
        }
        let up = match ready {
            Ready::Accepts => tokio::net::UnixStream::connect(&spec.api_socket)
                .await
                .is_ok(),
            Ready::Bound => {
                std::fs::symlink_metadata(&spec.api_socket).is_ok_and(|m| m.file_type().is_socket())
            }
        };
        if up {
            // Dropping `child` neither kills nor waits: the VMM runs on, and
            // init reaps it once this process is gone.
            return Ok(VmmProcess {
                identity,
                api_socket: spec.api_socket.clone(),
            });
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(SuperviseError::SocketTimeout {
                binary,
                socket: spec.api_socket.clone(),
                timeout: spec.socket_timeout,
                log: read_tail(&spec.log_file),
            });
        }
        // Woken when the socket appears (2 ms at most, to notice an exit).
        watch.wait(Duration::from_millis(2)).await;
    }
}

/// The last 2 KiB of a log, for error messages.
fn read_tail(path: &Path) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(2048)));
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    text
}

/// The raw arguments of a process.
fn cmdline(pid: u32) -> Option<Vec<OsString>> {
    use std::os::unix::ffi::OsStringExt;
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        bytes
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| OsString::from_vec(a.to_vec()))
            .collect(),
    )
}

/// Whether an argument list names `socket` as a value (`--api-socket PATH`,
/// `--api-sock=PATH`, or the `path=PATH` key/value syntax of CH and QEMU,
/// whose option values double a path's commas: `path=/a,,b/api.sock`).
pub(crate) fn names_socket(args: &[OsString], socket: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let plain = socket.as_os_str().as_bytes();
    let doubled: Option<Vec<u8>> = plain.contains(&b',').then(|| {
        let mut doubled = Vec::with_capacity(plain.len() + 4);
        for &b in plain {
            doubled.push(b);
            if b == b',' {
                doubled.push(b',');
            }
        }
        doubled
    });
    let names = |arg: &[u8], wanted: &[u8]| {
        arg == wanted
            || arg.ends_with(wanted)
                && matches!(
                    arg.get(arg.len() - wanted.len() - 1),
                    Some(b'=') | Some(b',')
                )
    };
    args.iter().any(|arg| {
        let arg = arg.as_bytes();
        names(arg, plain) || doubled.as_deref().is_some_and(|d| names(arg, d))
    })
}

/// True while the recorded VMM runs: same pid, same start time, and its command
/// line still names the recorded API socket.
pub fn is_running(vmm: &VmmProcess) -> bool {
    vmm.identity.is_alive()
        && cmdline(vmm.identity.pid).is_some_and(|args| names_socket(&args, &vmm.api_socket))
}

/// Every live process whose command line names `api_socket`: how a VMM whose
/// record or pidfile is gone is still found.
pub fn find_by_socket(api_socket: &Path) -> Vec<VmmProcess> {
    find_by_sockets(&[api_socket.to_path_buf()])
}

/// [`find_by_socket`] for several sockets in one pass over `/proc` (each
/// pass reads every process's command line).
pub fn find_by_sockets(sockets: &[PathBuf]) -> Vec<VmmProcess> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    let me = std::process::id();
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(|pid| {
            let args = cmdline(pid)?;
            let socket = sockets.iter().find(|s| names_socket(&args, s))?;
            Some(VmmProcess {
                identity: ProcessIdentity::of(pid).ok()?,
                api_socket: socket.clone(),
            })
        })
        .collect()
}

/// How a termination ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The process was not running (or was another process by now): nothing signalled.
    AlreadyGone,
    /// It exited after the graceful step.
    Graceful,
    /// It exited after SIGTERM.
    Terminated,
    /// It needed SIGKILL.
    Killed,
}

#[derive(Debug, Clone, Copy)]
pub struct StopTimeouts {
    /// Wait after the graceful step (guest shutdown).
    pub graceful: Duration,
    /// Wait after SIGTERM.
    pub term: Duration,
    /// Wait after SIGKILL.
    pub kill: Duration,
}

impl Default for StopTimeouts {
    fn default() -> Self {
        StopTimeouts {
            graceful: Duration::from_secs(30),
            term: Duration::from_secs(5),
            kill: Duration::from_secs(5),
        }
    }
}

/// A pidfd for the recorded process, or None if that exact process is gone.
fn open_verified(vmm: &VmmProcess) -> Option<OwnedFd> {
    if !is_running(vmm) {
        return None;
    }
    let pid = Pid::from_raw(vmm.identity.pid as i32)?;
    let fd = pidfd_open(pid, PidfdFlags::empty()).ok()?;
    // The pid could have been recycled between the check and pidfd_open; the
    // pidfd is pinned now, so one more check makes it certain.
    is_running(vmm).then_some(fd)
}

/// Waits until the pidfd's process exits; false on timeout.
async fn wait_exit(pidfd: &AsyncFd<OwnedFd>, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, async {
        loop {
            match pidfd.readable().await {
                Ok(mut guard) => {
                    // Readable means exited; it stays readable, so no need to clear.
                    guard.retain_ready();
                    return;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    })
    .await
    .is_ok()
}

/// Stops a VMM: `graceful` (e.g. a guest shutdown request through the API)
/// if given, then SIGTERM, then SIGKILL, each followed by its wait. Identity is
/// re-verified before every signal; a process that is not the recorded VMM is
/// never signalled.
pub async fn terminate<F, Fut>(
    vmm: &VmmProcess,
    graceful: Option<F>,
    timeouts: StopTimeouts,
) -> Result<Stopped, SuperviseError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let pid = vmm.identity.pid;
    let Some(fd) = open_verified(vmm) else {
        return Ok(Stopped::AlreadyGone);
    };
    // SAFETY: the OwnedFd moves into the AsyncFd, which keeps it open and
    // unchanged until it is dropped.
    let pidfd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| SuperviseError::Signal {
            pid,
            source: e.into(),
        })?;
    if let Some(step) = graceful {
        step().await;
        if wait_exit(&pidfd, timeouts.graceful).await {
            return Ok(Stopped::Graceful);
        }
    }
    for (signal, wait, outcome) in [
        (Signal::TERM, timeouts.term, Stopped::Terminated),
        (Signal::KILL, timeouts.kill, Stopped::Killed),
    ] {
        if !vmm.identity.is_alive() {
            return Ok(outcome);
        }
        match pidfd_send_signal(pidfd.get_ref(), signal) {
            Ok(()) => {}
            // ESRCH: it exited between the check and the signal.
            Err(rustix::io::Errno::SRCH) => return Ok(outcome),
            Err(e) => {
                return Err(SuperviseError::Signal {
                    pid,
                    source: e.into(),
                });
            }
        }
        if wait_exit(&pidfd, wait).await {
            return Ok(outcome);
        }
    }
    Err(SuperviseError::Unkillable { pid })
}

/// Terminates every process that names `api_socket`, recorded or not (an
/// orphan left by a crash between launch and record). Returns how many.
pub async fn terminate_all_by_socket(
    api_socket: &Path,
    timeouts: StopTimeouts,
) -> Result<usize, SuperviseError> {
    let mut stopped = 0;
    for vmm in find_by_socket(api_socket) {
        if terminate(&vmm, None::<fn() -> std::future::Ready<()>>, timeouts).await?
            != Stopped::AlreadyGone
        {
            stopped += 1;
        }
    }
    Ok(stopped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_matching_is_exact() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        let sock = Path::new("/run/cocoon/vms/A/api.sock");
        assert!(names_socket(
            &args(&["ch", "--api-socket", "/run/cocoon/vms/A/api.sock"]),
            sock
        ));
        assert!(names_socket(
            &args(&["ch", "--api-socket=/run/cocoon/vms/A/api.sock"]),
            sock
        ));
        assert!(names_socket(
            &args(&["ch", "--api-socket", "path=/run/cocoon/vms/A/api.sock"]),
            sock
        ));
        assert!(!names_socket(
            &args(&["ch", "--api-socket", "/run/cocoon/vms/AB/api.sock"]),
            sock
        ));
        assert!(!names_socket(
            &args(&["ch", "--api-socket", "/x/run/cocoon/vms/A/api.sock"]),
            sock
        ));
        assert!(!names_socket(&args(&["ch"]), sock));
        // QEMU doubles the commas of a path inside an option value.
        let comma = Path::new("/tmp/a,b/vms/A/api.sock");
        assert!(names_socket(
            &args(&[
                "qemu",
                "-chardev",
                "socket,id=qmp,path=/tmp/a,,b/vms/A/api.sock"
            ]),
            comma
        ));
        assert!(names_socket(
            &args(&["ch", "--api-socket", "/tmp/a,b/vms/A/api.sock"]),
            comma
        ));
        assert!(!names_socket(
            &args(&[
                "qemu",
                "-chardev",
                "socket,id=qmp,path=/tmp/a,,b/vms/AB/api.sock"
            ]),
            comma
        ));
    }
}
