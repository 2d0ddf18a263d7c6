//! Watching the VMM: the relay must not outlive it, even when the VMM dies
//! without closing its side of the PTY cleanly (or a child of it keeps it open).

use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags};

use crate::process::ProcessIdentity;

/// How often the identity is checked where pidfds are unavailable.
pub(super) const POLL_INTERVAL: Duration = Duration::from_millis(500);

pub(super) enum Watch {
    Nothing,
    /// Readable once the process has exited.
    Pidfd(OwnedFd),
    Polling(ProcessIdentity),
    Gone,
}

impl Watch {
    pub(super) fn open(identity: Option<ProcessIdentity>) -> Watch {
        let Some(identity) = identity else {
            return Watch::Nothing;
        };
        let Some(pid) = i32::try_from(identity.pid).ok().and_then(Pid::from_raw) else {
            return Watch::Gone;
        };
        match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
            Err(Errno::SRCH) => Watch::Gone,
            // The identity check comes after the open: a pidfd pins the
            // process, so if the start time matches now, the pidfd is the VMM's.
            Ok(fd) if identity.is_alive() => Watch::Pidfd(fd),
            Err(_) if identity.is_alive() => Watch::Polling(identity),
            _ => Watch::Gone,
        }
    }

    /// For the polling fallback; a pidfd reports through poll instead.
    pub(super) fn check(&mut self) {
        if let Watch::Polling(identity) = self
            && !identity.is_alive()
        {
            *self = Watch::Gone;
        }
    }
}
