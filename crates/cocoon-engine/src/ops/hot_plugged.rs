//! What `vm disk`, `vm fs` and `vm device` share once a hot-plugged item
//! is in the VMM: taking it out again after a failed attach, dropping it
//! from the record, and crash recovery (an attach is rolled back unless it
//! was recorded, a detach is finished), so that the VMM has the item
//! exactly when the record does. Each kind says how its items are named,
//! found in the record and taken out of the VMM.

use std::path::Path;

use crate::backend::{self, Backend, LocalFuture};
use crate::context::Ctx;
use crate::error::Result;
use crate::model::{Vm, VmmProcess};

/// A backend's detach of one kind of device: (backend, API socket, id).
pub(super) type Detach =
    for<'a> fn(&'a dyn Backend, &'a Path, &'a str) -> LocalFuture<'a, Result<(), String>>;

pub(super) struct Kind {
    /// "disk", "virtio-fs share", "PCI device": the item in messages.
    pub label: &'static str,
    /// Whether the record has the item `key` (a disk's name, a share's
    /// tag, a device's id).
    pub recorded: fn(&Vm, &str) -> bool,
    /// Drops the item `key` from the record.
    pub drop: fn(&mut Vm, &str),
    /// The VMM's device id of the item `key`.
    pub device_id: fn(&str) -> String,
    /// Takes the device id out of the running VMM; one it does not have
    /// is success.
    pub detach: Detach,
}

/// Takes the device `id` out of the VMM, best effort (a failed attach's
/// undo; recovery retries what is left).
pub(super) fn unplug(ctx: &mut Ctx, kind: &Kind, vm: &Vm, vmm: &VmmProcess, id: &str) {
    let backend = backend::of(vm.hypervisor);
    let undone = ctx.block_on(async |_| Ok((kind.detach)(backend, &vmm.api_socket, id).await));
    if let Ok(Err(e)) = undone {
        tracing::warn!(
            "VM {}: cannot take {} {id} out again: {e}",
            vm.id,
            kind.label
        );
    }
}

/// Drops the item `key` from the VM's record.
pub(super) fn forget(ctx: &mut Ctx, kind: &Kind, vm_id: &str, key: &str) -> Result<()> {
    let reason = format!("{} detached", kind.label);
    ctx.store()
        .update_vm(vm_id, &reason, |v| (kind.drop)(v, key))?;
    Ok(())
}

/// Crash recovery of an attach (`attach`: roll back unless recorded) or a
/// detach (roll forward) of the item `key`.
pub(super) fn recover(
    ctx: &mut Ctx,
    kind: &Kind,
    vm_id: &str,
    key: &str,
    attach: bool,
) -> Result<String> {
    let Some(vm) = ctx.store().get_vm(vm_id)? else {
        return Ok("the VM is gone; nothing to do".into());
    };
    let label = kind.label;
    let recorded = (kind.recorded)(&vm, key);
    if attach && recorded {
        return Ok(format!("{label} {key} was attached and recorded; kept"));
    }
    if !attach && recorded {
        forget(ctx, kind, vm_id, key)?;
    }
    if let Some(vmm) = vm.vmm.clone().filter(crate::supervise::is_running) {
        let backend = backend::of(vm.hypervisor);
        let id = (kind.device_id)(key);
        ctx.block_on(async |_| Ok((kind.detach)(backend, &vmm.api_socket, &id).await))?
            .map_err(|reason| crate::Error::Invalid(format!("VM {vm_id}: {reason}")))?;
    }
    Ok(if attach {
        format!("{label} {key} was not recorded; took it out of the VMM")
    } else {
        format!("finished detaching {label} {key}")
    })
}

/// The VM, locked, with its running VMM, unless `refused` gives the error
/// that says why its VMM cannot take the item: the first step of every
/// attach and detach.
pub(super) fn locked_running(
    ctx: &mut Ctx,
    reference: &str,
    refused: impl FnOnce(&Vm) -> Option<crate::vm::VmError>,
) -> Result<(crate::lock::VmLock, Vm, VmmProcess)> {
    let (lock, vm) = ctx.lock_resolved_vm(reference)?;
    if let Some(error) = refused(&vm) {
        return Err(error.into());
    }
    let Some(vmm) = vm.vmm.clone().filter(crate::supervise::is_running) else {
        return Err(crate::vm::VmError::NotRunning {
            id: vm.id,
            name: vm.config.name,
        }
        .into());
    };
    Ok((lock, vm, vmm))
}
