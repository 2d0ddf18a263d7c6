//! `vm start`: starts a created or stopped VM (or one left `running` by a
//! host reboot), and wakes a hibernated one from its hibernation snapshot.
//! Starting a running VM is success.

use crate::backend::Boot;
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::intent::Op;
use crate::layout::VmPaths;
use crate::lock::create_private_dir;
use crate::model::{Vm, VmState};
use crate::supervise;
use crate::vm::VmError;

use super::new_vm;
use super::vm_launch::{launch_and_boot, stop_leftovers};

pub(crate) fn run(ctx: &mut Ctx, id: &str) -> Result<Vm> {
    let (_lock, vm) = ctx.lock_vm_record(id)?;
    if vm.vmm.as_ref().is_some_and(supervise::is_running) {
        return already_running(ctx, vm);
    }
    if vm.state == VmState::Hibernated {
        return super::vm_restore::wake_locked(ctx, vm);
    }
    ctx.block_on(async |ctx| stop_leftovers(ctx, &vm).await)?;
    let vm = super::cidata::drop_after_first_boot(ctx, vm)?;
    let log_dir = VmPaths::of(&vm).log_dir;
    create_private_dir(&log_dir)
        .map_err(|e| Error::io(format!("cannot create {}", log_dir.display()), e))?;
    // Runtime state only from here: see `Store::relaxed` for why these
    // commits need no sync of their own.
    ctx.store().relaxed(true)?;
    let result = start_under_intent(ctx, &vm);
    ctx.store().relaxed(false)?;
    result
}

/// Boots the VM under a start intent; the `running` record and the end of
/// the intent are one commit.
fn start_under_intent(ctx: &mut Ctx, vm: &Vm) -> Result<Vm> {
    let op = Op::VmStart {};
    let intent = ctx
        .store()
        .begin_intent(op.name(), op.kind(), &vm.id, &op.data())?;
    let error = match boot(ctx, vm) {
        Ok((vmm, relay)) => match new_vm::finish_started(ctx, &intent, &vm.id, vmm, relay) {
            Ok(vm) => return super::vm_replug::replug(ctx, vm),
            Err(e) => e,
        },
        Err(e) => e,
    };
    let _ = ctx.block_on(async |ctx| stop_leftovers(ctx, vm).await);
    let settled = new_vm::settle(ctx, &vm.id, VmState::Error, "error");
    intent.finish(ctx.store())?;
    settled?;
    Err(error)
}

/// A VMM runs: the record says so too.
fn already_running(ctx: &mut Ctx, vm: Vm) -> Result<Vm> {
    if vm.state == VmState::Running {
        return Ok(vm);
    }
    let (vm, _) = ctx
        .store()
        .update_vm(&vm.id, "started", |v| v.state = VmState::Running)?;
    Ok(vm)
}

/// The network readied, then the VMM launched and the guest booted.
fn boot(
    ctx: &mut Ctx,
    vm: &Vm,
) -> Result<(
    crate::model::VmmProcess,
    Option<crate::process::ProcessIdentity>,
)> {
    let leases = ctx.store().leases(&vm.id)?;
    crate::net::prepare_start(&ctx.net(), vm, &leases).map_err(VmError::from)?;
    ctx.block_on(async |ctx| launch_and_boot(ctx, vm, &Boot::Fresh).await)
}
