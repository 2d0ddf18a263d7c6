//! Typed clients for the Cloud Hypervisor (v53 OpenAPI) and Firecracker
//! (v1.16 Swagger) REST APIs and for QEMU's QMP (10.0 QAPI schema), spoken
//! over the VMM's unix socket.
//!
//! Knows nothing about cocoon. What it adds over raw HTTP:
//! - errors typed by cause: transport, timeout, or the VMM's own answer, with
//!   Cloud Hypervisor's `InvalidStateTransition(from, to)` and Firecracker's
//!   `fault_message` and QMP's `{"error": {"class", "desc"}}` parsed;
//! - same-state pause/resume treated as success, decided from the error itself;
//! - retries only for idempotent calls, bounded, and never for snapshot,
//!   restore or load;
//! - unknown response fields kept, so a newer VMM's data is never dropped.

pub mod ch;
pub mod error;
pub mod fc;
pub mod qmp;
mod retry;
mod transport;

pub use error::{ApiError, QmpError, VmmError};
pub use retry::RetryPolicy;
pub use transport::{DEFAULT_TIMEOUT, transfer_timeout};

/// What a state-changing call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The VMM changed state.
    Applied,
    /// The VM already was in the requested state (e.g. paused by a command
    /// that died before resuming it); nothing was changed.
    AlreadyInState,
}
