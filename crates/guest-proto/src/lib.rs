//! The guest's interface with the engine, shared by both sides so that
//! neither can drift:
//! - [`run`]: what cocoon-init runs, written by the engine onto the VM's
//!   COW disk, and the line cocoon-init prints when the main process exits;
//! - [`agent`]: the guest agent's wire protocol (upstream cocoon-agent's
//!   line-delimited JSON on vsock port 1024, see docs/agent.md).

pub mod agent;
pub mod run;
