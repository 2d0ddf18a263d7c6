//! Starting the image's main process (and the guest agent beside it) inside
//! the switched root.
//!
//! The environment is exactly the run config's `env` (later entries of the
//! same name win, as `docker run -e` overrides the image's `Env`), plus, only
//! where it is missing: `PATH` (docker's default), `HOSTNAME` (docker sets
//! it), `HOME` (the passwd entry's, else `/`, as runc does) and
//! `TERM=linux` (the console is a terminal and the kernel gives init the
//! same value; docker sets `TERM` only with `-t`, but here the console is
//! always a terminal).

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::user::Credentials;

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The status a shell reports for a command it cannot find / cannot run.
pub const NOT_FOUND: u8 = 127;
pub const NOT_EXECUTABLE: u8 = 126;

/// The main process's environment (see the module comment).
pub fn environment(
    config_env: &[String],
    hostname: Option<&str>,
    home: Option<&str>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for entry in config_env {
        let (key, value) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
        if key.is_empty() {
            continue;
        }
        match env.iter_mut().find(|(k, _)| k == key) {
            Some(existing) => existing.1 = value.to_string(),
            None => env.push((key.to_string(), value.to_string())),
        }
    }
    let defaults = [
        ("PATH", Some(DEFAULT_PATH)),
        ("HOSTNAME", hostname),
        ("HOME", Some(home.unwrap_or("/"))),
        ("TERM", Some("linux")),
    ];
    for (key, value) in defaults {
        if let Some(value) = value
            && !env.iter().any(|(k, _)| k == key)
        {
            env.push((key.to_string(), value.to_string()));
        }
    }
    env
}

/// Finds `program` as a shell would: a name with a `/` is taken as it is,
/// anything else is looked up in `path` (directories under `root`). The
/// error carries the shell's status.
pub fn find_program(program: &str, path: &str, root: &Path) -> Result<PathBuf, (u8, String)> {
    if program.is_empty() {
        return Err((NOT_FOUND, "the command is an empty string".into()));
    }
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    let mut not_executable = None;
    for dir in path.split(':') {
        // An empty PATH entry means the working directory, as in shells.
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(program);
        let on_disk = root.join(candidate.strip_prefix("/").unwrap_or(&candidate));
        match fs::metadata(&on_disk) {
            Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => {
                return Ok(candidate);
            }
            Ok(meta) if meta.is_file() => not_executable = not_executable.or(Some(candidate)),
            _ => {}
        }
    }
    match not_executable {
        Some(path) => Err((
            NOT_EXECUTABLE,
            format!("{}: permission denied", path.display()),
        )),
        None => Err((
            NOT_FOUND,
            format!("{program}: command not found in PATH {path}"),
        )),
    }
}

/// What exec's error means as a shell status.
pub fn exec_failure_status(error: &io::Error) -> u8 {
    match error.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => NOT_FOUND,
        _ => NOT_EXECUTABLE,
    }
}

pub struct MainProcess<'a> {
    pub program: &'a Path,
    pub args: &'a [String],
    pub env: &'a [(String, String)],
    pub cwd: &'a Path,
    pub credentials: &'a Credentials,
    /// The console's terminal device, to become the controlling terminal.
    pub tty: &'a Path,
}

/// Starts the main process in a session of its own with the console as its
/// controlling terminal (so an interactive shell gets job control and ^C),
/// and the console as its standard streams. std's `Command` resets the
/// signal mask and SIGPIPE in the child and reports exec's errno back.
pub fn start_main(main: &MainProcess<'_>) -> io::Result<u32> {
    let tty = File::options().read(true).write(true).open(main.tty)?;
    let mut command = Command::new(main.program);
    command
        .arg0(&main.args[0])
        .args(&main.args[1..])
        .env_clear()
        .envs(main.env.iter().map(|(k, v)| (k, v)))
        .current_dir(main.cwd)
        .stdin(Stdio::from(tty.try_clone()?))
        .stdout(Stdio::from(tty.try_clone()?))
        .stderr(Stdio::from(tty));
    let (uid, gid, groups) = (
        main.credentials.uid,
        main.credentials.gid,
        main.credentials.groups.clone(),
    );
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe system calls on memory prepared before the fork.
    unsafe {
        command.pre_exec(move || {
            reset_signals();
            check(libc::setsid())?;
            // stdin is the tty by now: steal it even if another session had it.
            check(libc::ioctl(0, libc::TIOCSCTTY, 1))?;
            check(libc::setgroups(groups.len(), groups.as_ptr()))?;
            check(libc::setgid(gid))?;
            check(libc::setuid(uid))?;
            Ok(())
        });
    }
    command.spawn().map(|child| child.id())
}

/// PID 1 blocks the signals it forwards (see `reaper::block_signals`);
/// its children must start with none blocked and default dispositions
/// (std's `Command` resets neither the mask nor, with `pre_exec`, SIGPIPE).
pub fn reset_signals() {
    // SAFETY: sigprocmask and signal on this process's own signal state,
    // with a local set; both are async-signal-safe.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        for signal in super::reaper::FORWARDED
            .iter()
            .chain(&[libc::SIGPIPE, libc::SIGCHLD])
        {
            libc::signal(*signal, libc::SIG_DFL);
        }
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Forks the guest agent. PID 1 is single threaded here, so the child may
/// run ordinary Rust code; it gets the default signal mask and its own
/// session (a ^C on the console must not reach it), and never returns into
/// PID 1's code, even if the agent panics.
pub fn start_agent(console: &File) -> io::Result<u32> {
    // SAFETY: fork in a single-threaded process; the child only continues
    // in `agent_child`, which ends with _exit.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => agent_child(console),
        pid => Ok(pid.unsigned_abs()),
    }
}

fn agent_child(console: &File) -> ! {
    reset_signals();
    // The agent is Rust code, which expects SIGPIPE ignored as std set it.
    // SAFETY: plain system calls on this process's own signal state and fds.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::setsid();
        for fd in 0..3 {
            libc::dup2(console.as_raw_fd(), fd);
        }
    }
    let code = std::panic::catch_unwind(crate::agent::run).unwrap_or(101);
    // SAFETY: ends this child without running PID 1's exit path.
    unsafe { libc::_exit(code) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
        env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn the_environment_gets_defaults_only_where_missing() {
        let env = environment(
            &[
                "A=1".into(),
                "PATH=/x".into(),
                "A=2".into(),
                "NOVALUE".into(),
                "=bad".into(),
            ],
            Some("vm"),
            None,
        );
        assert_eq!(get(&env, "A"), Some("2"));
        assert_eq!(get(&env, "PATH"), Some("/x"));
        assert_eq!(get(&env, "NOVALUE"), Some(""));
        assert_eq!(get(&env, "HOSTNAME"), Some("vm"));
        assert_eq!(get(&env, "HOME"), Some("/"));
        assert_eq!(get(&env, "TERM"), Some("linux"));
        assert_eq!(env.len(), 6);
        let env = environment(
            &[
                "HOME=/h".into(),
                "TERM=xterm".into(),
                "HOSTNAME=mine".into(),
            ],
            None,
            Some("/home/app"),
        );
        assert_eq!(get(&env, "HOME"), Some("/h"));
        assert_eq!(get(&env, "TERM"), Some("xterm"));
        assert_eq!(get(&env, "HOSTNAME"), Some("mine"));
        assert_eq!(get(&env, "PATH"), Some(DEFAULT_PATH));
        assert_eq!(
            get(&environment(&[], None, Some("/home/app")), "HOME"),
            Some("/home/app")
        );
        assert_eq!(get(&environment(&[], None, None), "HOSTNAME"), None);
    }

    #[test]
    fn programs_are_found_in_path_under_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for (dir, name, mode) in [
            ("usr/bin", "tool", 0o755),
            ("bin", "tool", 0o755),
            ("sbin", "data", 0o644),
            ("bin", "data", 0o644),
        ] {
            fs::create_dir_all(r.join(dir)).unwrap();
            fs::write(r.join(dir).join(name), "").unwrap();
            fs::set_permissions(r.join(dir).join(name), fs::Permissions::from_mode(mode)).unwrap();
        }
        fs::create_dir_all(r.join("usr/local/bin/tool")).unwrap();
        assert_eq!(
            find_program("tool", DEFAULT_PATH, r).unwrap(),
            Path::new("/usr/bin/tool")
        );
        assert_eq!(
            find_program("tool", "/bin:/usr/bin", r).unwrap(),
            Path::new("/bin/tool")
        );
        assert_eq!(
            find_program("./x/y", DEFAULT_PATH, r).unwrap(),
            Path::new("./x/y")
        );
        let (status, message) = find_program("data", DEFAULT_PATH, r).unwrap_err();
        assert_eq!(
            (status, message.as_str()),
            (NOT_EXECUTABLE, "/sbin/data: permission denied")
        );
        assert_eq!(
            find_program("missing", DEFAULT_PATH, r).unwrap_err().0,
            NOT_FOUND
        );
        assert_eq!(find_program("", DEFAULT_PATH, r).unwrap_err().0, NOT_FOUND);
    }

    #[test]
    fn exec_errors_map_to_shell_statuses() {
        assert_eq!(
            exec_failure_status(&io::Error::from_raw_os_error(libc::ENOENT)),
            127
        );
        assert_eq!(
            exec_failure_status(&io::Error::from_raw_os_error(libc::EACCES)),
            126
        );
        assert_eq!(
            exec_failure_status(&io::Error::from_raw_os_error(libc::ENOEXEC)),
            126
        );
    }
}
