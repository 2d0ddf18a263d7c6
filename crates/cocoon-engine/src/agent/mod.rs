//! The engine's side of the guest agent (docs/agent.md): reach a running
//! VM's agent through the VMM's hybrid vsock socket, then speak upstream
//! cocoon-agent's protocol to it.
//!
//! The guest is not trusted: every line it sends is bounded (8 MiB) and
//! validated, and anything unexpected ends the session with a
//! [`AgentError::Protocol`] instead of being skipped.

mod session;

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

pub use cocoon_guest_proto::agent::{ExecRequest, IdentityRequest, Nic, WinSize};
pub use session::{Agent, ExecInput, ExecSession, Output};

/// The whole connect + `CONNECT` handshake: a VM without an agent must be
/// reported in well under 5 s.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Upstream's bound on the VMM's `OK <port>` line.
const REPLY_MAX: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "VM {vm} has no guest agent answering on vsock port {port} ({reason}): it was started \
         with --no-agent, or its image has no agent (a VM that is still booting may need a few \
         more seconds)",
        port = cocoon_guest_proto::agent::PORT
    )]
    NoAgent { vm: String, reason: String },
    #[error("the guest agent of VM {vm} broke the protocol: {reason}")]
    Protocol { vm: String, reason: String },
    /// The agent's own `error` frame.
    #[error("VM {vm}: {message}")]
    Remote { vm: String, message: String },
    #[error("VM {vm}: the guest agent closed the session before reporting an exit status")]
    Closed { vm: String },
    #[error("VM {vm}: talking to the guest agent: {source}")]
    Io { vm: String, source: io::Error },
}

/// Connects to the VM's hybrid vsock socket and asks the VMM for the
/// agent's port: `CONNECT 1024\n`, answered by `OK <host port>\n`. A VMM
/// with nothing listening on that guest port closes the connection (or,
/// for a guest that does not answer, never replies): all of it is
/// [`AgentError::NoAgent`], within `timeout`.
pub fn connect(socket: &Path, vm: &str, timeout: Duration) -> Result<Agent, AgentError> {
    let no_agent = |reason: String| AgentError::NoAgent {
        vm: vm.to_owned(),
        reason,
    };
    let mut stream = UnixStream::connect(socket)
        .map_err(|e| no_agent(format!("cannot connect to {}: {e}", socket.display())))?;
    let deadline = Instant::now() + timeout;
    let handshake = (|| {
        stream.set_write_timeout(Some(timeout))?;
        stream.write_all(format!("CONNECT {}\n", cocoon_guest_proto::agent::PORT).as_bytes())?;
        read_reply(&mut stream, deadline)
    })();
    let reply = handshake.map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => no_agent(format!(
            "no answer to CONNECT within {}s",
            timeout.as_secs()
        )),
        io::ErrorKind::UnexpectedEof => no_agent("the VMM closed the connection".into()),
        _ => no_agent(format!("handshake: {e}")),
    })?;
    if !reply.starts_with("OK ") {
        return Err(no_agent(format!("the VMM answered {:?}", reply.trim_end())));
    }
    stream
        .set_read_timeout(None)
        .and_then(|()| stream.set_write_timeout(None))
        .map_err(|e| AgentError::Io {
            vm: vm.to_owned(),
            source: e,
        })?;
    Ok(Agent::new(stream, vm))
}

/// One line, byte by byte: a buffered read could swallow the agent's first
/// frame.
fn read_reply(stream: &mut UnixStream, deadline: Instant) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < REPLY_MAX {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut byte) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) if byte[0] == b'\n' => return Ok(String::from_utf8_lossy(&line).into_owned()),
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!(
        "reply line exceeds {REPLY_MAX} bytes"
    )))
}
