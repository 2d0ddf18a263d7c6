//! VMM process supervision without a daemon.
//!
//! A VMM is launched detached (own session, stdin from /dev/null or a given
//! file, output to its log), optionally inside a network namespace, and is
//! known from then on by pid + start time + API socket path. Every check and
//! every signal verifies all three, and signals go through a pidfd, so a
//! recycled pid can never make cocoon signal a stranger. When the record of a
//! VMM is lost, it is found by scanning `/proc/*/cmdline` for its socket.

use std::ffi::OsString;
use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
use tokio::io::unix::AsyncFd;

use crate::jail::{Jail, JailError};
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
    #[error("cannot move {binary} into its cgroup: {source}")]
    Cgroup { binary: String, source: io::Error },
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
    /// `cgroup.procs` files (open for writing) of the cgroup(s) to run in.
    /// The process is moved in right after it is spawned, while it starts
    /// (see [`CgroupJoin`]), and the launch succeeds only once it is in.
    pub cgroup: Vec<std::sync::Arc<OwnedFd>>,
}

mod launch;
pub use launch::{Spawned, launch, launch_listener, spawn};

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
