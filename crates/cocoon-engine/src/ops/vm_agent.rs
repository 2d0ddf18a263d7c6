//! `vm exec`, `vm reseed` and the identity push: sessions with a running
//! VM's guest agent. None takes the VM lock: they change nothing the
//! engine records, and an exec may run for as long as the user wants.

use crate::agent::{self, Agent, ExecRequest, ExecSession, IdentityRequest};
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::layout::VmPaths;
use crate::vm::VmError;

use super::vm_query::is_running;

/// Upstream's host entropy per reseed.
const RESEED_BYTES: usize = 32;

/// The agent of a running VM, connected.
fn connect(ctx: &mut Ctx, reference: &str) -> Result<Agent> {
    let vm = ctx.store().resolve_vm(reference)?;
    if !is_running(&vm) {
        return Err(VmError::NotRunning {
            id: vm.id,
            name: vm.config.name,
        }
        .into());
    }
    let socket = VmPaths::of(&vm).vsock_socket();
    Ok(agent::connect(
        &socket,
        vm.config.name.as_ref(),
        agent::HANDSHAKE_TIMEOUT,
    )?)
}

pub(crate) fn exec(ctx: &mut Ctx, reference: &str, request: &ExecRequest) -> Result<ExecSession> {
    Ok(connect(ctx, reference)?.exec(request)?)
}

pub(crate) fn reseed(ctx: &mut Ctx, reference: &str, regen_machine_id: bool) -> Result<()> {
    let agent = connect(ctx, reference)?;
    let mut entropy = vec![0u8; RESEED_BYTES];
    getrandom::fill(&mut entropy).map_err(|e| {
        Error::io(
            "cannot draw entropy for the reseed",
            std::io::Error::other(e),
        )
    })?;
    Ok(agent.reseed(entropy, regen_machine_id)?)
}

pub(crate) fn set_identity(
    ctx: &mut Ctx,
    reference: &str,
    request: &IdentityRequest,
) -> Result<()> {
    Ok(connect(ctx, reference)?.identity(request)?)
}
