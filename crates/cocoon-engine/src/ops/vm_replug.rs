//! `vm start` gives a VM back the virtio-fs shares and PCI devices it had
//! when it stopped (`vm fs attach`, `vm device attach`): each is plugged
//! into the new VMM again, as its attach does (checks, intent, record).
//! One that cannot be (virtiofsd is gone: it exits when the old VMM lets
//! go of it, unless it is restarted; the device was rebound) is dropped
//! from the record with a warning, and the VM runs without it: a start
//! never fails for a share or a device.

use crate::context::Ctx;
use crate::error::Result;
use crate::model::Vm;

/// Plugs the record's shares and devices into the running `vm`'s new VMM;
/// returns the record after.
pub(crate) fn replug(ctx: &mut Ctx, vm: Vm) -> Result<Vm> {
    if vm.filesystems.is_empty() && vm.pci_devices.is_empty() {
        return Ok(vm);
    }
    let Some(vmm) = vm.vmm.clone() else {
        return Ok(vm);
    };
    let (shares, devices) = (vm.filesystems.clone(), vm.pci_devices.clone());
    // The new VMM has none of them yet: each is recorded again once plugged.
    let (mut vm, _) = ctx
        .store()
        .update_vm(&vm.id, "devices to plug again", |v| {
            v.filesystems.clear();
            v.pci_devices.clear();
        })?;
    for fs in shares {
        let tag = fs.tag.clone();
        if let Err(e) = super::vm_fs::replug(ctx, &vm, &vmm, fs) {
            tracing::warn!(
                "VM {}: virtio-fs share {tag} is not attached again (attach it with `cocoon vm fs attach`): {e}",
                vm.config.name
            );
        }
        vm = ctx.store().resolve_vm(&vm.id)?;
    }
    for device in devices {
        let id = device.id.clone();
        if let Err(e) = super::vm_device::replug(ctx, &vm, &vmm, device) {
            tracing::warn!(
                "VM {}: PCI device {id} is not attached again (attach it with `cocoon vm device attach`): {e}",
                vm.config.name
            );
        }
        vm = ctx.store().resolve_vm(&vm.id)?;
    }
    Ok(vm)
}
