//! Process identity: a pid alone is not an identity once the kernel reuses it,
//! so every process we record is pid + start time (field 22 of `/proc/<pid>/stat`,
//! in clock ticks since boot), which no other process can share.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    pub pid: u32,
    pub start_time: u64,
}

impl ProcessIdentity {
    pub fn current() -> ProcessIdentity {
        let pid = std::process::id();
        let start_time = start_time(pid).expect("/proc/self/stat is readable");
        ProcessIdentity { pid, start_time }
    }

    pub fn of(pid: u32) -> io::Result<ProcessIdentity> {
        Ok(ProcessIdentity {
            pid,
            start_time: start_time(pid)?,
        })
    }

    /// True while the very process we recorded runs (not a later one with its pid).
    /// A zombie counts as dead: it no longer does anything.
    pub fn is_alive(&self) -> bool {
        match stat(self.pid) {
            Ok(stat) => {
                stat.start_time == self.start_time && stat.state != 'Z' && stat.state != 'X'
            }
            Err(_) => false,
        }
    }
}

/// Runs `cmd` with `input` on its stdin and its stdout and stderr captured,
/// for at most `timeout`: a command that hangs (a CNI plugin waiting on a lock,
/// say) is killed and the call fails with `TimedOut` instead of holding the
/// caller, and its VM lock, forever. stdin is written and the outputs are read
/// on their own threads, so a command that fills one pipe while we wait on
/// another cannot deadlock.
pub fn output_with_timeout(
    cmd: &mut std::process::Command,
    input: &[u8],
    timeout: std::time::Duration,
) -> io::Result<std::process::Output> {
    use std::io::{Read, Write};
    use std::process::Stdio;
    use wait_timeout::ChildExt;

    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().expect("piped");
    let input = input.to_vec();
    // A command that exits without reading its input closes the pipe: that
    // write error is not the command's failure.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = read(Box::new(child.stdout.take().expect("piped")));
    let stderr = read(Box::new(child.stderr.take().expect("piped")));
    let status = match child.wait_timeout(timeout)? {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "did not finish within {} s and was killed",
                    timeout.as_secs()
                ),
            ));
        }
    };
    let _ = writer.join();
    Ok(std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Why [`run`] found no success: the program could not be started (most
/// often: it is not installed), or it ran and failed.
#[derive(Debug)]
pub enum RunError {
    Spawn(io::Error),
    /// Its stdout then its stderr, trimmed: what an error message quotes.
    Failed(String),
}

/// Runs `cmd` to its end with stdout and stderr captured (stdin from
/// /dev/null); its stdout when it succeeds. The one place external tools
/// (`mkfs.erofs`, `qemu-img`) are run for their exit status and output.
pub fn run(cmd: &mut std::process::Command) -> Result<Vec<u8>, RunError> {
    let out = cmd.output().map_err(RunError::Spawn)?;
    if !out.status.success() {
        return Err(RunError::Failed(combined_output(&out)));
    }
    Ok(out.stdout)
}

/// A finished command's stdout then stderr, as text, trimmed.
fn combined_output(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .trim()
    .to_string()
}

struct Stat {
    state: char,
    start_time: u64,
}

pub fn start_time(pid: u32) -> io::Result<u64> {
    stat(pid).map(|s| s.start_time)
}

fn stat(pid: u32) -> io::Result<Stat> {
    let text = read_small(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("malformed /proc/{pid}/stat"),
        )
    })
}

/// The whole text of a small kernel file (`/proc`, cgroupfs), read into a
/// page-sized buffer: those files say size 0, and `std::fs::read_to_string`
/// then probes them with a `statx` and reads of 32, 32, 64... bytes (7
/// system calls for a `/proc/<pid>/stat`, where this makes 2). `vm ls` and
/// every command's cgroup sweep read several per running VM.
pub(crate) fn read_small(path: impl AsRef<Path>) -> io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(len * 2, 0);
        }
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The command name (field 2) is in parentheses and may itself contain spaces
/// and parentheses, so fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    // After the state (field 3), start time is field 22: 18 fields further.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(Stat { state, start_time })
}

/// Where `Command::new(program)` would find `program`: a name with a slash is
/// a path (relative to the working directory), anything else is looked up on
/// PATH, as the engine's own launches do.
pub(crate) fn find_program(program: &str) -> Result<PathBuf, String> {
    if program.contains('/') {
        let path = std::env::current_dir()
            .map(|cwd| cwd.join(program))
            .unwrap_or_else(|_| PathBuf::from(program));
        return match std::fs::metadata(&path) {
            Err(_) => Err(format!("{} does not exist", path.display())),
            Ok(m) if !m.is_file() => Err(format!("{} is not a file", path.display())),
            Ok(_) if !is_executable(&path) => Err(format!("{} is not executable", path.display())),
            Ok(_) => Ok(path),
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file() && is_executable(candidate))
        .ok_or_else(|| format!("{program} not found on PATH"))
}

/// A helper program: as [`find_program`], and a bare name not on PATH also
/// in `~/.cargo/bin` (where `cargo install` puts it) and `/usr/local/bin`
/// (PATH of a service or `sudo` may lack both).
pub(crate) fn find_helper_program(program: &str) -> Result<PathBuf, String> {
    let on_path = find_program(program);
    if on_path.is_ok() || program.contains('/') {
        return on_path;
    }
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin"));
    home.into_iter()
        .chain([PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file() && is_executable(candidate))
        .ok_or_else(|| format!("{program} not found on PATH, in ~/.cargo/bin or /usr/local/bin"))
}

fn is_executable(path: &Path) -> bool {
    rustix::fs::access(path, rustix::fs::Access::EXEC_OK).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_gets_its_input_and_a_hung_one_is_killed_in_time() {
        let out = output_with_timeout(
            std::process::Command::new("cat").arg("-"),
            b"config on stdin",
            std::time::Duration::from_secs(10),
        )
        .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, b"config on stdin");

        let started = std::time::Instant::now();
        let err = output_with_timeout(
            std::process::Command::new("sleep").arg("30"),
            b"",
            std::time::Duration::from_millis(300),
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn run_gives_stdout_or_the_trimmed_output_of_a_failure() {
        let out = run(std::process::Command::new("sh").args(["-c", "echo ok"])).unwrap();
        assert_eq!(out, b"ok\n");
        let err =
            run(std::process::Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]))
                .unwrap_err();
        assert!(
            matches!(err, RunError::Failed(ref text) if text == "out\nerr"),
            "{err:?}"
        );
        let err = run(&mut std::process::Command::new("/nonexistent/tool")).unwrap_err();
        assert!(matches!(err, RunError::Spawn(_)), "{err:?}");
    }

    #[test]
    fn parses_stat_with_hostile_comm() {
        let line =
            "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.start_time, 987654);
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn current_process_is_alive_and_a_reused_pid_is_not() {
        let me = ProcessIdentity::current();
        assert!(me.is_alive());
        let impostor = ProcessIdentity {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!impostor.is_alive());
    }

    #[test]
    fn exited_process_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let id = ProcessIdentity::of(child.id()).unwrap();
        child.wait().unwrap();
        assert!(!id.is_alive());
    }
}
