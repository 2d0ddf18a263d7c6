//! `vm stop`: the backend's graceful step, then SIGTERM, then SIGKILL.
//! Stopping a stopped VM is success.

use std::time::Duration;

use jiff::Timestamp;

use crate::backend;
use crate::context::Ctx;
use crate::error::Result;
use crate::intent::Op;
use crate::model::{Vm, VmState, VmmProcess};
use crate::supervise::{self, StopTimeouts};
use crate::vm::VmError;

use super::vm_launch::stop_leftovers;

#[derive(Debug, Clone, Copy, Default)]
pub struct StopOptions {
    /// Skip the graceful guest shutdown.
    pub force: bool,
    /// Wait this long for the guest instead of `stop_timeout_seconds`.
    pub timeout: Option<Duration>,
}

pub(crate) fn run(ctx: &mut Ctx, id: &str, options: StopOptions) -> Result<Vm> {
    let (_lock, vm) = ctx.lock_vm_record(id)?;
    stop_locked(ctx, vm, options)
}

/// The stop, with the VM's lock held by the caller.
pub(crate) fn stop_locked(ctx: &mut Ctx, vm: Vm, options: StopOptions) -> Result<Vm> {
    let live = vm.vmm.clone().filter(supervise::is_running);
    ctx.with_intent(&Op::VmStop {}, &vm.id, |ctx, _| {
        if let Some(vmm) = live {
            terminate(ctx, &vm, &vmm, options)?;
            crate::failpoint::hit("vm.stop.stopped")?;
        }
        ctx.block_on(async |ctx| stop_leftovers(ctx, &vm).await)?;
        if let Err(e) = crate::net::quiesce(&vm) {
            tracing::warn!("VM {}: cannot quiesce its NICs: {e}", vm.id);
        }
        let was_running = matches!(vm.state, VmState::Running);
        let (vm, _) = ctx.store().update_vm(&vm.id, "stopped", |v| {
            if was_running || v.state == VmState::Error {
                v.state = VmState::Stopped;
                v.stopped_at = Some(Timestamp::now());
            }
            v.pid = 0;
            v.vmm = None;
            v.console_relay = None;
            v.vsock_socket.clear();
            v.vsock_helper = None;
        })?;
        Ok(vm)
    })
}

/// Stops the VMM; a VMM that survives is recorded as an error.
fn terminate(ctx: &mut Ctx, vm: &Vm, vmm: &VmmProcess, options: StopOptions) -> Result<()> {
    let backend = backend::of(vm.hypervisor);
    let direct_boot = backend::direct_boot(vm);
    let config = ctx.config();
    let guest_wait = options
        .timeout
        .unwrap_or(Duration::from_secs(config.stop_timeout_seconds));
    let term = Duration::from_secs(config.terminate_grace_period_seconds.max(1));
    let timeouts = StopTimeouts {
        graceful: backend.graceful_wait(direct_boot, guest_wait, term),
        term,
        kill: Duration::from_secs(5),
    };
    let socket = vmm.api_socket.clone();
    let graceful = (!options.force).then_some(move || backend.graceful_stop(socket, direct_boot));
    let stopped =
        ctx.block_on(async |_| Ok(supervise::terminate(vmm, graceful, timeouts).await))?;
    match stopped {
        Ok(outcome) => {
            tracing::debug!(vm = %vm.id, ?outcome, "VMM stopped");
            Ok(())
        }
        Err(source) => {
            ctx.store()
                .update_vm(&vm.id, "error", |v| v.state = VmState::Error)?;
            Err(VmError::Stop {
                id: vm.id.clone(),
                name: vm.config.name.clone(),
                source,
            }
            .into())
        }
    }
}
