//! `vm ls`, `vm inspect`, and where a VM's console and logs are: reads that
//! check each VM's state against its VMM process.

use std::path::PathBuf;

use crate::context::Ctx;
use crate::error::Result;
use crate::layout::VmPaths;
use crate::model::{Vm, VmView};
use crate::supervise;
use crate::vm::VmError;

/// Every VM, oldest first, with its state checked against its VMM process.
pub(crate) fn list(ctx: &mut Ctx) -> Result<Vec<VmView>> {
    Ok(ctx
        .store()
        .list_vms()?
        .into_iter()
        .map(VmView::reconcile)
        .collect())
}

pub(crate) fn inspect(ctx: &mut Ctx, reference: &str) -> Result<VmView> {
    Ok(VmView::reconcile(ctx.store().resolve_vm(reference)?))
}

/// Whether the VM's recorded VMM runs.
pub fn is_running(vm: &Vm) -> bool {
    vm.vmm.as_ref().is_some_and(supervise::is_running)
}

/// The console socket of a running VM.
pub(crate) fn console_socket(ctx: &mut Ctx, reference: &str) -> Result<PathBuf> {
    let vm = ctx.store().resolve_vm(reference)?;
    if !is_running(&vm) {
        return Err(VmError::NotRunning {
            id: vm.id,
            name: vm.config.name,
        }
        .into());
    }
    Ok(VmPaths::of(&vm).console_socket())
}

/// The captured guest output file of a VM (running or not).
pub(crate) fn console_log(ctx: &mut Ctx, reference: &str) -> Result<(Vm, PathBuf)> {
    let vm = ctx.store().resolve_vm(reference)?;
    let log = VmPaths::of(&vm).console_log();
    Ok((vm, log))
}

/// The VMM's own output file of a VM (running or not).
pub(crate) fn vmm_log(ctx: &mut Ctx, reference: &str) -> Result<(Vm, PathBuf)> {
    let vm = ctx.store().resolve_vm(reference)?;
    let log = VmPaths::of(&vm).vmm_log();
    Ok((vm, log))
}
