//! The per-VM console: a small detached relay process owns the guest's PTY
//! ports for the VM's whole life, so guest output is never lost and a VMM
//! writing to its console never blocks, whether or not anyone is attached.
//!
//! - [`run_relay`] is the relay itself (the hidden `cocoon` subcommand calls it);
//!   [`spawn_relay`] starts it detached and [`relay_spec_from_args`] parses the
//!   argv it was given.
//! - [`attach`] is the interactive client; [`read_log`] and [`follow_log`]
//!   read the bounded log the relay writes.
//!
//! Client → relay: frames `[kind: u8][len: u16 BE][payload]` (see `frame`);
//! relay → client: the raw output bytes.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use crate::process::ProcessIdentity;

mod attach;
mod frame;
mod handoff;
mod listener;
mod log;
mod relay;
mod ring;
mod spawn;
mod tty;
mod watch;

#[cfg(test)]
mod tests;

pub use attach::{Detached, attach};
pub use log::{follow_log, read_log, rotated_log};
pub use relay::run_relay;
pub use spawn::{PendingRelay, relay_spec_from_args, spawn_relay, spawn_relay_ahead};
pub(crate) use tty::make_raw;

/// Output kept in memory for a client that attaches later.
pub const RING_BYTES: usize = 64 * 1024;

/// One guest console port: a PTY master (Firecracker) or slave (Cloud Hypervisor).
#[derive(Debug)]
pub struct RelayPort {
    /// For messages and the relay's argv (`serial`, `console`, ...).
    pub name: String,
    pub fd: OwnedFd,
}

#[derive(Debug)]
pub struct RelaySpec {
    /// Unix socket the relay listens on (mode 0600).
    pub socket: PathBuf,
    /// Guest output log; rotated to [`rotated_log`] when it reaches `log_max_bytes`.
    pub log: PathBuf,
    /// 0 means never rotate.
    pub log_max_bytes: u64,
    /// `ports[0]` is the primary: it takes input until some port has produced output.
    pub ports: Vec<RelayPort>,
    /// The relay exits when this process (the VMM) does.
    pub watch: Option<ProcessIdentity>,
    /// Stopped by the relay when the watched VMM is gone: a process that
    /// serves the VMM and would outlive it (QEMU's vhost-device-vsock waits
    /// for a new VMM forever), so a guest that powers off leaks nothing.
    pub reap: Option<crate::model::VmmProcess>,
    /// The relay's end of a [`handoff`] channel: ports that come after the
    /// relay starts. `ports` may then be empty.
    pub more_ports: Option<OwnedFd>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error(
        "the console relay is not running (socket {}): start the VM, or restart it if the VM runs without one",
        socket.display()
    )]
    NotRunning { socket: PathBuf },
    #[error("cannot connect to the console relay at {}: {source}", socket.display())]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("console {what} failed: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}
