//! Launching a VMM (or a helper) and waiting until its socket is up: the
//! fork and exec, the move into its cgroup beside its start-up, the
//! readiness wait.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{LaunchSpec, Stdin, SuperviseError};
use crate::jail::{Jail, Prepared};
use crate::model::VmmProcess;
use crate::process::ProcessIdentity;

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
    spawn(spec)?.ready(spec).await
}

/// Starts a helper that serves one client on `spec.api_socket` (a vhost-user
/// backend) and waits until the socket is there, without connecting to it.
pub async fn launch_listener(spec: &LaunchSpec) -> Result<VmmProcess, SuperviseError> {
    spawn_until(spec, Ready::Bound)?.ready(spec).await
}

/// A launched process whose socket is not waited for yet: the caller can
/// start what runs beside it ([`launch`] is `spawn` then `ready`).
pub struct Spawned {
    /// None once [`Spawned::ready`] has settled it; a `Spawned` dropped
    /// before that (the caller failed in between) kills and reaps it.
    child: Option<std::process::Child>,
    identity: ProcessIdentity,
    binary: String,
    until: Ready,
    joining: CgroupJoin,
}

/// The first half of [`launch`]: forks and execs the VMM and starts moving
/// it into its cgroup. Must run inside the tokio runtime (the move runs on
/// its blocking pool).
pub fn spawn(spec: &LaunchSpec) -> Result<Spawned, SuperviseError> {
    spawn_until(spec, Ready::Accepts)
}

fn spawn_until(spec: &LaunchSpec, until: Ready) -> Result<Spawned, SuperviseError> {
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
    detach_in_child(&mut command, jail, netns.as_ref().map(|fd| fd.as_raw_fd()));
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
    Ok(Spawned {
        joining: CgroupJoin::start(&spec.cgroup, identity.pid),
        child: Some(child),
        identity,
        binary,
        until,
    })
}

impl Spawned {
    pub fn identity(&self) -> ProcessIdentity {
        self.identity
    }

    /// The second half of [`launch`]: waits for the socket and for the
    /// cgroup move; on failure the process is killed and reaped.
    pub async fn ready(mut self, spec: &LaunchSpec) -> Result<VmmProcess, SuperviseError> {
        let Some(mut child) = self.child.take() else {
            unreachable!("a Spawned is settled only by ready, which consumes it");
        };
        let binary = self.binary.clone();
        let up = wait_for_socket(spec, binary.clone(), &mut child, self.identity, self.until).await;
        let joined = self.joining.finish().await;
        match (up, joined) {
            (Err(e), _) => Err(e),
            (Ok(process), Ok(())) => Ok(process),
            (Ok(_), Err(source)) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(SuperviseError::Cgroup { binary, source })
            }
        }
    }
}

/// A launch given up before its socket was waited for: nothing is left
/// running (the process may not have made its socket yet, so nothing
/// would find it by its socket later).
impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Moving a launched process into its cgroup(s), on a blocking thread
/// while the process starts.
///
/// Why after the exec and not between fork and exec (where every thread
/// would start inside): a write to `cgroup.procs` takes the kernel's global
/// `cgroup_threadgroup_rwsem` for writing, and the first writer after a
/// quiet spell waits out an RCU grace period. Written by the child before
/// its `exec`, that wait held up every VM start by 6-23 ms on the test
/// host; beside the VMM's own start-up it is off the path to the guest.
/// The price: the VMM's first milliseconds run in the CLI's group (without
/// the VM's CPU cap); every thread it has by then moves with it, since
/// `cgroup.procs` moves the whole thread group, and the launch only
/// succeeds once it is in.
struct CgroupJoin(Option<tokio::task::JoinHandle<io::Result<()>>>);

impl CgroupJoin {
    fn start(files: &[std::sync::Arc<OwnedFd>], pid: u32) -> CgroupJoin {
        if files.is_empty() {
            return CgroupJoin(None);
        }
        let files = files.to_vec();
        CgroupJoin(Some(tokio::task::spawn_blocking(move || {
            let pid = pid.to_string();
            for file in &files {
                rustix::io::write(&**file, pid.as_bytes())?;
            }
            Ok(())
        })))
    }

    async fn finish(&mut self) -> io::Result<()> {
        match self.0.take() {
            None => Ok(()),
            Some(task) => task.await.map_err(io::Error::other)?,
        }
    }
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

/// What the child does between fork and exec: its own session, its jail
/// (if any), the VM's network namespace (if any). `netns_fd` must stay open
/// until the command is spawned.
fn detach_in_child(
    command: &mut Command,
    jail: Option<Prepared>,
    netns_fd: Option<std::os::fd::RawFd>,
) {
    // SAFETY: the closure runs in the forked child, where only async-signal-safe
    // calls may run: it makes plain syscalls (setsid, the jail's unshare,
    // mount and pivot_root, setns) on C strings allocated before the fork and
    // a descriptor the caller keeps open until spawn returns, and reads errno
    // without allocating.
    unsafe {
        command.pre_exec(move || {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A launch given up between its spawn and its readiness wait (the
    /// caller failed in between) leaves nothing running, although the
    /// process never made its socket.
    #[test]
    fn a_spawn_given_up_before_its_socket_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let spec = LaunchSpec {
            binary: "sleep".into(),
            args: vec!["30".into()],
            api_socket: dir.path().join("api.sock"),
            log_file: dir.path().join("vmm.log"),
            stdin: Stdin::Null,
            netns: None,
            socket_timeout: Duration::from_secs(5),
            jail: None,
            cgroup: Vec::new(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let identity = runtime.block_on(async {
            let spawned = spawn(&spec).unwrap();
            let identity = spawned.identity();
            assert!(identity.is_alive());
            drop(spawned);
            identity
        });
        assert!(!identity.is_alive(), "the process was killed and reaped");
        assert!(!spec.api_socket.exists());
    }
}
