//! `vm device attach` / `vm device detach` (upstream `extend/vfio`): a host
//! PCI device bound to vfio-pci passed through to a running VM, and taken
//! out again. Binding the device to vfio-pci (and the IOMMU) is the
//! user's job, as upstream; the engine checks it before asking the VMM.
//!
//! Recorded like a virtio-fs share (`vm_fs`): with the VM (`pci_devices`;
//! snapshots refuse while one is there, a VMM cannot save a passed-through
//! device), passed through again at `vm start` if still bound to vfio-pci
//! (`vm_replug`; upstream: "runtime-only"). Intents and crash recovery as
//! there.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::hot_plugged;
use crate::backend;
use crate::context::Ctx;
use crate::error::Result;
use crate::intent::Op;
use crate::model::{PciDevice, Vm, VmmProcess, pci_device_id};
use crate::name::{DeviceId, PciAddress};
use crate::spec::SpecError;
use crate::vm::VmError;

/// What `vm device attach`/`detach` print with `-o json`, as upstream:
/// `{"vm", "pci", "id"}` / `{"vm", "id"}`.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceChange {
    pub vm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pci: Option<String>,
    pub id: String,
}

pub(crate) fn attach(
    ctx: &mut Ctx,
    reference: &str,
    pci: &PciAddress,
    id: Option<&DeviceId>,
) -> Result<DeviceChange> {
    let (_lock, vm, vmm) = locked(ctx, reference, "pass a PCI device through to")?;
    let bdf = pci.as_str();
    let id = id.map_or_else(|| pci_device_id(bdf), |i| i.to_string());
    if let Some(taken) = vm.pci_devices.iter().find(|d| d.id == id || d.bdf == bdf) {
        return Err(VmError::DeviceTaken {
            vm: vm.config.name.clone(),
            what: format!("PCI device {} as id {}", taken.bdf, taken.id),
            id: taken.id.clone(),
        }
        .into());
    }
    let sysfs = check_vfio(bdf)?;
    let device = PciDevice {
        id: id.clone(),
        bdf: bdf.to_string(),
        slot: None,
    };
    plug(ctx, &vm, &vmm, device, &sysfs)?;
    Ok(DeviceChange {
        vm: reference.to_string(),
        pci: Some(bdf.to_string()),
        id,
    })
}

/// Passes `device` through to the running VMM and records it, under an
/// intent (the caller holds the VM's lock).
fn plug(ctx: &mut Ctx, vm: &Vm, vmm: &VmmProcess, device: PciDevice, sysfs: &Path) -> Result<()> {
    let id = device.id.clone();
    let op = Op::VmDeviceAttach { id: id.clone() };
    ctx.with_intent(&op, &vm.id, |ctx, _| {
        let backend = backend::of(vm.hypervisor);
        let plugged = ctx.block_on(async |_| {
            Ok(backend
                .attach_device(vm, &vmm.api_socket, &device, sysfs)
                .await)
        })?;
        let slot = plugged.map_err(|reason| hot_plug_error(vm, "attach", &id, reason))?;
        let device = PciDevice { slot, ..device };
        let recorded = crate::failpoint::hit("vm.device.attach.plugged").and_then(|()| {
            ctx.store()
                .update_vm(&vm.id, "PCI device attached", |v| {
                    v.pci_devices.push(device)
                })
                .map(drop)
                .map_err(Into::into)
        });
        if let Err(e) = recorded {
            hot_plugged::unplug(ctx, &KIND, vm, vmm, &id);
            return Err(e);
        }
        Ok(())
    })
}

/// A recorded device again, into the VMM `vm start` just launched: its
/// binding checked again first.
pub(super) fn replug(ctx: &mut Ctx, vm: &Vm, vmm: &VmmProcess, device: PciDevice) -> Result<()> {
    let sysfs = check_vfio(&device.bdf)?;
    plug(
        ctx,
        vm,
        vmm,
        PciDevice {
            slot: None,
            ..device
        },
        &sysfs,
    )
}

pub(crate) fn detach(ctx: &mut Ctx, reference: &str, id: &str) -> Result<DeviceChange> {
    let (_lock, vm, vmm) = locked(ctx, reference, "take a PCI device out of")?;
    if !vm.pci_devices.iter().any(|d| d.id == id) {
        return Err(VmError::NoAttachedDevice {
            vm: vm.config.name.clone(),
            id: id.to_string(),
        }
        .into());
    }
    let op = Op::VmDeviceDetach { id: id.to_string() };
    ctx.with_intent(&op, &vm.id, |ctx, _| {
        let backend = backend::of(vm.hypervisor);
        ctx.block_on(async |_| Ok(backend.detach_device(&vmm.api_socket, id).await))?
            .map_err(|reason| hot_plug_error(&vm, "detach", id, reason))?;
        let failed = crate::failpoint::hit("vm.device.detach.unplugged");
        hot_plugged::forget(ctx, &KIND, &vm.id, id)?;
        failed?;
        Ok(DeviceChange {
            vm: reference.to_string(),
            pci: None,
            id: id.to_string(),
        })
    })
}

fn locked(
    ctx: &mut Ctx,
    reference: &str,
    what: &'static str,
) -> Result<(crate::lock::VmLock, Vm, VmmProcess)> {
    hot_plugged::locked_running(ctx, reference, |vm| {
        let reason = backend::of(vm.hypervisor).device_hot_plug_refusal(vm)?;
        Some(VmError::DeviceRefused {
            vm: vm.config.name.clone(),
            what,
            reason,
        })
    })
}

/// The device's sysfs directory, once it is there and bound to vfio-pci
/// (the link `driver` names the driver; sysfs is the kernel's, its links
/// are read, never written).
fn check_vfio(bdf: &str) -> Result<PathBuf, SpecError> {
    let refuse = |reason: String| SpecError::PciDevice {
        bdf: bdf.to_string(),
        reason,
    };
    let root = crate::failpoint::sysfs_pci_devices();
    let dir = root.join(bdf);
    if !dir.is_dir() {
        return Err(refuse(format!(
            "no such PCI device ({} is missing); `lspci -D` lists the host's devices",
            dir.display()
        )));
    }
    let driver = std::fs::read_link(dir.join("driver")).ok();
    let name = driver
        .as_deref()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned());
    match name.as_deref() {
        Some("vfio-pci") => Ok(dir),
        Some(other) => Err(refuse(format!(
            "it is bound to driver {other}, not vfio-pci; unbind it and bind it to vfio-pci first (`echo {bdf} > /sys/bus/pci/drivers/{other}/unbind`, `echo vfio-pci > {}/driver_override`, `echo {bdf} > /sys/bus/pci/drivers_probe`)",
            dir.display()
        ))),
        None => Err(refuse(format!(
            "it is bound to no driver; bind it to vfio-pci first (`modprobe vfio-pci`, `echo vfio-pci > {}/driver_override`, `echo {bdf} > /sys/bus/pci/drivers_probe`)",
            dir.display()
        ))),
    }
}

fn hot_plug_error(vm: &Vm, what: &'static str, id: &str, reason: String) -> VmError {
    VmError::DeviceHotPlug {
        vm: vm.config.name.clone(),
        what,
        name: format!("PCI device {id}"),
        reason,
    }
}

/// Passed-through PCI devices, by id (the VMM's device id too).
const KIND: hot_plugged::Kind = hot_plugged::Kind {
    label: "PCI device",
    recorded: |vm, id| vm.pci_devices.iter().any(|d| d.id == id),
    drop: |vm, id| vm.pci_devices.retain(|d| d.id != id),
    device_id: str::to_string,
    detach: |backend, socket, id| backend.detach_device(socket, id),
};

/// Crash recovery of the attach (`attach`) or detach of `id`.
pub(crate) fn recover(ctx: &mut Ctx, vm_id: &str, id: &str, attach: bool) -> Result<String> {
    hot_plugged::recover(ctx, &KIND, vm_id, id, attach)
}
