//! QEMU Machine Protocol (QMP) client: typed commands, events and errors over
//! QEMU's `-qmp unix:<path>,server=on,wait=off` socket, every call under a
//! deadline.
//!
//! # Sessions, not requests
//! Cloud Hypervisor and Firecracker answer HTTP requests, one connection
//! each. QMP is a session: QEMU greets (`{"QMP": {"version", ...}}`),
//! refuses everything but `qmp_capabilities` until it is sent (with
//! `CommandNotFound`), and from then on answers commands in order, one JSON
//! object per line, with asynchronous events (`STOP`, `SHUTDOWN`, ...)
//! between the answers. So a [`Qmp`] is one connection: [`Qmp::connect`]
//! reads the greeting and negotiates, and the client is dropped to hang up.
//!
//! - **One client at a time.** QEMU serves one client per QMP socket; a
//!   second connection is accepted by the kernel but greeted only after the
//!   first hangs up. A second `connect` therefore fails at its deadline
//!   ([`ApiError::Timeout`] on `connect`) while another client holds the
//!   socket: connect for an operation and drop the client after it, as a
//!   short-lived CLI does.
//! - **No reconnect.** A session that broke (QEMU exited, a command was cut
//!   off half-written, QEMU sent something that is not QMP) fails every
//!   later call with [`ApiError::Closed`]. Reconnecting silently would lose
//!   events and could repeat a command that is not idempotent (`migrate`);
//!   the caller connects again if it wants to.
//! - **Events** that arrive while the client waits for an answer are kept, up
//!   to [`EVENT_BUFFER`] (the oldest go first, counted by
//!   [`Qmp::dropped_events`]), for [`Qmp::take_events`] and
//!   [`Qmp::wait_event`]. QEMU sends events only to a connected client:
//!   what happened while none was connected is learnt from `query-status`.
//! - **Deadlines.** Every call has one (the client's timeout, or the
//!   caller's for migrations). A call that runs out of time leaves the
//!   session usable: the late answer is recognised by its `id` and dropped.
//!   A QEMU that dies during a call ends it at once with
//!   [`ApiError::Closed`].
//!
//! # Why not the `qapi` crate
//! `qapi` (qapi-rs, with `qapi-qmp`) generates every QMP type from a QAPI
//! schema vendored into the crate (QEMU 9.1's in 0.15), async over
//! tokio-util codecs. It does not fit: it has no deadlines; its generated
//! enums are closed, so a newer QEMU's run state or migration status fails
//! to parse; it numbers commands only when QEMU offers out-of-band
//! execution; and it compiles thousands of types for the fifteen commands
//! used here. Instead, the conformance test (`tests/qmp_conformance.rs`)
//! checks each command and result here against the schema that QEMU itself
//! reports (`spec/qemu/`), which is the check code generation would give.
//!
//! `human-monitor-command` is deliberately absent: HMP's text is for humans
//! and changes without notice.

mod commands;
mod migration;
mod session;
#[cfg(test)]
mod tests;
mod types;

use std::path::Path;
use std::time::Duration;

pub use commands::*;
pub use session::EVENT_BUFFER;
pub use types::*;

use crate::Transition;
use crate::error::ApiError;
use crate::transport::DEFAULT_TIMEOUT;
use session::{Deadline, Session};

/// A QMP session with one QEMU.
pub struct Qmp {
    session: Session,
    greeting: Greeting,
    timeout: Duration,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("socket", &self.session.socket())
            .field("qemu", &self.greeting.version.qemu)
            .finish()
    }
}

impl Qmp {
    /// Connects, reads the greeting and leaves negotiation mode, all within
    /// [`DEFAULT_TIMEOUT`], which also becomes the deadline of each call.
    pub async fn connect(socket: &Path) -> Result<Qmp, ApiError> {
        Qmp::connect_within(socket, DEFAULT_TIMEOUT).await
    }

    /// [`Qmp::connect`] with `timeout` for the connection and for each call.
    pub async fn connect_within(socket: &Path, timeout: Duration) -> Result<Qmp, ApiError> {
        let deadline = Deadline::after(timeout);
        let (session, greeting) = Session::open(socket, deadline).await?;
        let mut qmp = Qmp {
            session,
            greeting,
            timeout,
        };
        qmp.execute_by(&QmpCapabilities::default(), deadline)
            .await?;
        Ok(qmp)
    }

    /// The deadline of each later call (not of migrations, which take theirs).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn socket(&self) -> &Path {
        self.session.socket()
    }

    /// What QEMU said when the session opened: its version and the
    /// capabilities it offers.
    pub fn greeting(&self) -> &Greeting {
        &self.greeting
    }

    /// Sends `command` and parses its result, within the client's timeout.
    pub async fn execute<C: Command>(&mut self, command: &C) -> Result<C::Output, ApiError> {
        self.execute_within(command, self.timeout).await
    }

    /// Sends `command` and parses its result, within `timeout`.
    pub async fn execute_within<C: Command>(
        &mut self,
        command: &C,
        timeout: Duration,
    ) -> Result<C::Output, ApiError> {
        self.execute_by(command, Deadline::after(timeout)).await
    }

    async fn execute_by<C: Command>(
        &mut self,
        command: &C,
        deadline: Deadline,
    ) -> Result<C::Output, ApiError> {
        let arguments = serde_json::to_value(command).map_err(|source| ApiError::Decode {
            op: C::NAME.into(),
            body: String::new(),
            source,
        })?;
        let value = self.session.execute(C::NAME, arguments, deadline).await?;
        serde_json::from_value(value.clone()).map_err(|source| ApiError::Decode {
            op: C::NAME.into(),
            body: value.to_string(),
            source,
        })
    }

    pub async fn status(&mut self) -> Result<StatusInfo, ApiError> {
        self.execute(&QueryStatus).await
    }

    pub async fn version(&mut self) -> Result<VersionInfo, ApiError> {
        self.execute(&QueryVersion).await
    }

    /// Stops the vCPUs. `stop` is sent in every state (QEMU accepts it on a
    /// stopped VM, and while an incoming migration is awaited it keeps the
    /// VM stopped afterwards); the result says whether the vCPUs ran before.
    pub async fn pause(&mut self) -> Result<Transition, ApiError> {
        let before = self.status().await?;
        self.execute(&Stop).await?;
        Ok(if before.running {
            Transition::Applied
        } else {
            Transition::AlreadyInState
        })
    }

    /// Runs the vCPUs. `cont` is sent in every state; the result says whether
    /// they were stopped before. While an incoming migration is awaited,
    /// QEMU only notes that the VM is to run once it completes.
    pub async fn resume(&mut self) -> Result<Transition, ApiError> {
        let before = self.status().await?;
        self.execute(&Cont).await?;
        Ok(if before.running {
            Transition::AlreadyInState
        } else {
            Transition::Applied
        })
    }

    /// Presses the ACPI power button (`POWERDOWN` follows; the guest decides).
    pub async fn system_powerdown(&mut self) -> Result<(), ApiError> {
        self.execute(&SystemPowerdown).await.map(drop)
    }

    /// Ends QEMU. QEMU answers and then closes the socket; a close that
    /// overtakes the answer is success too. The session is closed after.
    pub async fn quit(&mut self) -> Result<(), ApiError> {
        match self.execute(&Quit).await {
            Ok(_) | Err(ApiError::Closed { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Asks the balloon driver for a guest RAM size of `bytes`
    /// (`DeviceNotActive` without a balloon device).
    pub async fn balloon(&mut self, bytes: i64) -> Result<(), ApiError> {
        self.execute(&Balloon { value: bytes }).await.map(drop)
    }

    pub async fn query_balloon(&mut self) -> Result<BalloonInfo, ApiError> {
        self.execute(&QueryBalloon).await
    }

    pub async fn query_cpus_fast(&mut self) -> Result<Vec<CpuInfoFast>, ApiError> {
        self.execute(&QueryCpusFast).await
    }

    pub async fn query_memory_size_summary(&mut self) -> Result<MemoryInfo, ApiError> {
        self.execute(&QueryMemorySizeSummary).await
    }

    /// The drives and block nodes devices use.
    pub async fn query_block(&mut self) -> Result<Vec<BlockInfo>, ApiError> {
        self.execute(&QueryBlock).await
    }

    /// `device_del` of `id`, then waits up to `timeout` for its
    /// `DEVICE_DELETED` (the device is gone only then; its block node can
    /// be deleted after).
    pub async fn device_del_and_wait(
        &mut self,
        id: &str,
        timeout: Duration,
    ) -> Result<(), ApiError> {
        self.execute(&DeviceDel { id: id.to_string() }).await?;
        self.wait_event_where("DEVICE_DELETED", timeout, |e| {
            e.name == "DEVICE_DELETED" && e.data["device"].as_str() == Some(id)
        })
        .await
        .map(drop)
    }

    pub async fn query_migrate(&mut self) -> Result<MigrationInfo, ApiError> {
        self.execute(&QueryMigrate).await
    }

    pub async fn set_migration_capabilities(
        &mut self,
        capabilities: &[(MigrationCapability, bool)],
    ) -> Result<(), ApiError> {
        let capabilities = capabilities
            .iter()
            .map(|(capability, state)| CapabilityState {
                capability: capability.clone(),
                state: *state,
            })
            .collect();
        self.execute(&MigrateSetCapabilities { capabilities })
            .await
            .map(drop)
    }

    /// Takes the events kept so far, oldest first.
    pub fn take_events(&mut self) -> Vec<Event> {
        self.session.take_events()
    }

    /// Reads the events QEMU sends within `window` into the kept ones, for
    /// a caller that sends no command but wants to see what happened.
    pub async fn poll_events(&mut self, window: Duration) -> Result<(), ApiError> {
        self.session.poll("events", window).await
    }

    /// Events dropped because [`EVENT_BUFFER`] were kept and none taken.
    pub fn dropped_events(&self) -> u64 {
        self.session.dropped_events()
    }

    /// Waits up to `timeout` for an event named `name` (a kept one first),
    /// and takes it; the events before it stay kept.
    pub async fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<Event, ApiError> {
        self.wait_event_where(name, timeout, |e| e.name == name)
            .await
    }

    /// Waits up to `timeout` for an event `wanted` accepts (a kept one first).
    /// `op` names the wait in a timeout error.
    pub async fn wait_event_where(
        &mut self,
        op: &str,
        timeout: Duration,
        mut wanted: impl FnMut(&Event) -> bool,
    ) -> Result<Event, ApiError> {
        let deadline = Deadline::after(timeout);
        self.session.wait_event(op, &mut wanted, deadline).await
    }
}
