//! `vm ls`, `vm inspect`, and where a VM's console and logs are: reads that
//! check each VM's state against its VMM process.

use std::path::PathBuf;

use crate::context::Ctx;
use crate::error::Result;
use crate::layout::VmPaths;
use crate::model::{Vm, VmListing, VmView};
use crate::supervise;
use crate::vm::VmError;

/// Every VM, oldest first, with its state checked against its VMM process.
pub(crate) fn list(ctx: &mut Ctx) -> Result<Vec<VmView>> {
    let mut views: Vec<VmView> = ctx
        .store()
        .list_vms()?
        .into_iter()
        .map(VmView::reconcile)
        .collect();
    for view in &mut views {
        with_cpu_stat(ctx, view);
    }
    Ok(views)
}

/// What `vm ls` shows of every VM, oldest first, with its state checked
/// against its VMM process: [`list`] without reading whole records.
pub(crate) fn listings(ctx: &mut Ctx) -> Result<Vec<VmListing>> {
    let mut listings = ctx.store().list_vm_listings()?;
    let groups = super::vm_cgroup::Groups::detect(ctx);
    for listing in &mut listings {
        listing.reconcile();
        if listing.state == crate::model::VmState::Running {
            listing.cpu_stat = groups.stat(&listing.id);
        }
    }
    Ok(listings)
}

/// A running VM's cgroup figures (a stopped VM has no group).
fn with_cpu_stat(ctx: &Ctx, view: &mut VmView) {
    if view.vm.state == crate::model::VmState::Running {
        view.cpu_stat = super::vm_cgroup::stat(ctx, &view.vm.id);
    }
}

pub(crate) fn inspect(ctx: &mut Ctx, reference: &str) -> Result<VmView> {
    let mut view = VmView::reconcile(ctx.store().resolve_vm(reference)?);
    if boots_cocoon_init(ctx, &view.vm) && !is_running(&view.vm) {
        view.exit_code = exit_code(&view.vm);
    }
    with_cpu_stat(ctx, &mut view);
    Ok(view)
}

/// A container image's VM: its initramfs is one of the default kernel's.
pub(crate) fn boots_cocoon_init(ctx: &Ctx, vm: &Vm) -> bool {
    let kernels = ctx.layout.kernels().dir;
    vm.boot_config
        .as_ref()
        .and_then(|b| b.initrd_path.as_ref())
        .is_some_and(|p| p.starts_with(&kernels))
}

/// The status cocoon-init printed when the main process exited, from the
/// console log (the current boot's, see `cocoon_guest_proto::run`).
pub fn exit_code(vm: &Vm) -> Option<u8> {
    let log = crate::console::read_log(&VmPaths::of(vm).console_log()).ok()?;
    cocoon_guest_proto::run::exit_status(&String::from_utf8_lossy(&log))
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
