//! The guest agent: upstream cocoon-agent's protocol on vsock port 1024
//! (docs/agent.md), served by `cocoon-init agent`.
//!
//! Each connection is one session, served on its own thread: `exec` (a
//! command with its output streamed back), `reseed` (host entropy into the
//! kernel CRNG) or `identity` (hostname, machine-id, NICs after a clone).
//! The serving logic ([`session::serve`]) works on any byte stream, so the
//! host tests drive it over a unix socket (`cocoon-init agent --unix PATH`).

mod exec;
mod identity;
mod listen;
mod reseed;
mod session;
mod user;

use std::path::PathBuf;

/// Where the agent's files are: `/` in a guest; a test tree under
/// `--root` so host tests never touch the host's `/etc`.
#[derive(Debug, Clone)]
pub struct Root(PathBuf);

impl Root {
    pub fn path(&self, absolute: &str) -> PathBuf {
        self.0.join(absolute.trim_start_matches('/'))
    }
}

pub fn run() -> i32 {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let (unix, root) = match parse_args(&args) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("cocoon-init agent: {e}");
            return 2;
        }
    };
    let result = match unix {
        Some(path) => listen::serve_unix(&path, &root),
        None => listen::serve_vsock(cocoon_guest_proto::agent::PORT, &root),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cocoon-init agent: {e}");
            1
        }
    }
}

/// `[--unix PATH] [--root DIR]`: both only for tests on the host (a unix
/// socket instead of vsock, a file tree instead of `/`).
fn parse_args(args: &[String]) -> Result<(Option<PathBuf>, Root), String> {
    let (mut unix, mut root) = (None, Root(PathBuf::from("/")));
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--unix" => unix = Some(PathBuf::from(value()?)),
            "--root" => root = Root(PathBuf::from(value()?)),
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    Ok((unix, root))
}
