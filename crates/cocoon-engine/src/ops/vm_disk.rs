//! `vm disk attach` / `vm disk detach` (upstream #100/#101): a host file (a
//! raw disk image or a block device) the user owns goes into a running VM
//! as a virtio-blk disk whose serial is the name the user gave it, and out
//! again. The engine never makes, grows or removes that file.
//!
//! An attached disk is recorded among the VM's disks (`storage_configs`,
//! `"external": true`, as upstream), so every launch gives it back (`vm
//! start`), a snapshot copies it like a data disk and a clone or restore
//! gets that copy. Attach plugs it into the VMM first and records it after;
//! detach unplugs it first and forgets it after. Each records an intent
//! before touching the VMM: crash recovery unplugs a disk the record does
//! not have (attach rolls back) and finishes a detach (rolls forward), so
//! the record and the VMM agree after any crash.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::hot_plugged;
use crate::backend;
use crate::context::Ctx;
use crate::error::Result;
use crate::intent::Op;
use crate::lock::VmLock;
use crate::model::{StorageConfig, StorageRole, Vm, VmmProcess, attached_disk_id};
use crate::name::DiskName;
use crate::spec::{DirectIo, FsType, SpecError};
use crate::vm::VmError;

/// `vm disk attach`'s flags.
#[derive(Debug, Clone)]
pub struct DiskAttach {
    pub path: PathBuf,
    pub name: DiskName,
    pub readonly: bool,
    pub directio: DirectIo,
}

/// What `vm disk attach`/`detach` print with `-o json`, as upstream:
/// the VM as given, the disk's name and (attach) its VMM device id.
#[derive(Debug, Clone, Serialize)]
pub struct DiskChange {
    pub vm: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

pub(crate) fn attach(ctx: &mut Ctx, reference: &str, request: &DiskAttach) -> Result<DiskChange> {
    let (_lock, vm, vmm) = locked_running(ctx, reference, "attach")?;
    let disk = plan(ctx, &vm, request)?;
    let id = attached_disk_id(request.name.as_str());
    let op = Op::VmDiskAttach {
        name: request.name.to_string(),
    };
    ctx.with_intent(&op, &vm.id, |ctx, _| {
        let backend = backend::of(vm.hypervisor);
        let plugged =
            ctx.block_on(async |_| Ok(backend.attach_disk(&vm, &vmm.api_socket, &disk).await))?;
        let slot =
            plugged.map_err(|reason| hot_plug_error(&vm, "attach", &request.name, reason))?;
        let disk = StorageConfig { slot, ..disk };
        let recorded = crate::failpoint::hit("vm.disk.attach.plugged").and_then(|()| {
            ctx.store()
                .update_vm(&vm.id, "disk attached", |v| v.storage_configs.push(disk))
                .map(drop)
                .map_err(Into::into)
        });
        if let Err(e) = recorded {
            hot_plugged::unplug(ctx, &KIND, &vm, &vmm, &id);
            return Err(e);
        }
        Ok(DiskChange {
            vm: reference.to_string(),
            name: request.name.to_string(),
            id: Some(id.clone()),
        })
    })
}

pub(crate) fn detach(ctx: &mut Ctx, reference: &str, name: &DiskName) -> Result<DiskChange> {
    let (_lock, vm, vmm) = locked_running(ctx, reference, "detach")?;
    if !vm
        .storage_configs
        .iter()
        .any(|d| d.external && d.serial == name.as_str())
    {
        return Err(VmError::NoAttachedDisk {
            vm: vm.config.name.clone(),
            name: name.to_string(),
        }
        .into());
    }
    let op = Op::VmDiskDetach {
        name: name.to_string(),
    };
    ctx.with_intent(&op, &vm.id, |ctx, _| {
        let backend = backend::of(vm.hypervisor);
        let id = attached_disk_id(name.as_str());
        ctx.block_on(async |_| Ok(backend.detach_disk(&vmm.api_socket, &id).await))?
            .map_err(|reason| hot_plug_error(&vm, "detach", name, reason))?;
        // The disk is out of the VMM: the record forgets it whatever fails.
        let failed = crate::failpoint::hit("vm.disk.detach.unplugged");
        hot_plugged::forget(ctx, &KIND, &vm.id, name.as_str())?;
        failed?;
        Ok(DiskChange {
            vm: reference.to_string(),
            name: name.to_string(),
            id: None,
        })
    })
}

/// The VM, locked, with its running VMM; refused where its VMM cannot
/// hot-plug.
fn locked_running(
    ctx: &mut Ctx,
    reference: &str,
    what: &'static str,
) -> Result<(VmLock, Vm, VmmProcess)> {
    hot_plugged::locked_running(ctx, reference, |vm| {
        let reason = backend::of(vm.hypervisor).disk_hot_plug_refusal(vm)?;
        Some(VmError::HotPlugRefused {
            vm: vm.config.name.clone(),
            what,
            reason,
        })
    })
}

/// The record of the disk to attach, once the file and the name are
/// checked against the host and the VM.
fn plan(ctx: &Ctx, vm: &Vm, request: &DiskAttach) -> Result<StorageConfig> {
    let (path, block_device) = check_path(ctx, &request.path)?;
    check_free(vm, request, &path)?;
    let backend = backend::of(vm.hypervisor);
    let direct = match request.directio {
        DirectIo::On => true,
        DirectIo::Off => false,
        DirectIo::Auto => {
            !request.readonly
                && !vm.config.no_direct_io
                && (block_device
                    || path
                        .parent()
                        .is_some_and(crate::vm::disks::supports_direct_io))
        }
    };
    Ok(StorageConfig {
        path,
        ro: request.readonly,
        serial: request.name.to_string(),
        role: StorageRole::Data,
        mount_point: String::new(),
        // The user's filesystem: nothing formats or mounts it.
        fstype: Some(FsType::None),
        direct_io: backend.has_direct_io().then_some(direct),
        directio_mode: Some(request.directio),
        vmm_path: None,
        external: true,
        slot: None,
    })
}

/// The host file: an absolute path with no symbolic link in it, to a
/// regular file or a block device outside the engine's own directories.
/// Returns it and whether it is a block device.
fn check_path(ctx: &Ctx, path: &Path) -> Result<(PathBuf, bool), SpecError> {
    use std::os::unix::fs::FileTypeExt as _;
    let wanted = super::host_path::Wanted {
        noun: "file",
        kind: |kind| {
            (!kind.is_file() && !kind.is_block_device())
                .then_some("is neither a regular file nor a block device")
        },
        elsewhere: "attach a file of your own",
    };
    let (real, kind) =
        super::host_path::check(ctx, path, &wanted).map_err(|reason| SpecError::AttachPath {
            path: path.to_path_buf(),
            reason,
        })?;
    Ok((real, kind.is_block_device()))
}

/// The name, the file and the file's name in a snapshot (writable disks
/// are copied there by file name, beside the VMM's state) must be free.
fn check_free(vm: &Vm, request: &DiskAttach, path: &Path) -> Result<()> {
    let taken = |what: String| VmError::DiskTaken {
        vm: vm.config.name.clone(),
        what,
        name: request.name.to_string(),
    };
    let name = request.name.as_str();
    if vm.storage_configs.iter().any(|d| d.serial == name) {
        return Err(taken(format!("a disk named {name}")).into());
    }
    if let Some(d) = vm.storage_configs.iter().find(|d| d.path == path) {
        return Err(taken(format!("{} as disk {:?}", path.display(), d.serial)).into());
    }
    let file = path.file_name().unwrap_or_default();
    let backend = backend::of(vm.hypervisor);
    let file_text = file.to_string_lossy();
    let clash = !request.readonly
        && (vm
            .storage_configs
            .iter()
            .any(|d| !d.ro && d.path.file_name() == Some(file))
            || vm.run_dir.join(file).exists()
            || backend.is_state_file(&file_text)
            || backend.is_memory_file(&file_text)
            || file_text.starts_with(crate::snapshot::manifest::MANIFEST));
    if clash {
        return Err(taken(format!(
            "a disk or file called {file_text:?} (a snapshot keeps each writable disk under its file name)"
        ))
        .into());
    }
    Ok(())
}

fn hot_plug_error(vm: &Vm, what: &'static str, name: &DiskName, reason: String) -> VmError {
    VmError::HotPlug {
        vm: vm.config.name.clone(),
        what,
        name: name.to_string(),
        reason,
    }
}

/// Attached disks, by name: external storage records.
const KIND: hot_plugged::Kind = hot_plugged::Kind {
    label: "disk",
    recorded: |vm, name| {
        vm.storage_configs
            .iter()
            .any(|d| d.external && d.serial == name)
    },
    drop: |vm, name| {
        vm.storage_configs
            .retain(|d| !(d.external && d.serial == name));
    },
    device_id: attached_disk_id,
    detach: |backend, socket, id| backend.detach_disk(socket, id),
};

/// Crash recovery of the attach (`attach`) or detach of `name`.
pub(crate) fn recover(ctx: &mut Ctx, vm_id: &str, name: &str, attach: bool) -> Result<String> {
    hot_plugged::recover(ctx, &KIND, vm_id, name, attach)
}
