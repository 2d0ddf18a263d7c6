//! Cloud images' cloud-init NoCloud disk (docs/reference/cocoon-v0.3.8.md
//! §4.2, §9): written at create for the VM's identity, attached on the
//! first boot only, made anew for a clone, put back by a restore that needs
//! it.

use std::path::{Path, PathBuf};

use crate::context::Ctx;
use crate::error::Result;
use crate::guest::cidata::{self, CidataSpec, Credentials};
use crate::layout::VmPaths;
use crate::model::{ImageType, StorageConfig, StorageRole, Vm};
use crate::vm::VmError;

use super::vm_plan::cidata_disk;

/// Writes a cidata disk at `path` for the VM's current identity: ID,
/// name, NICs, data-disk mounts.
pub(crate) fn write(
    ctx: &Ctx,
    vm: &Vm,
    path: &Path,
    credentials: Option<Credentials>,
) -> Result<()> {
    let nics = cidata::nics_of(vm);
    let mounts = cidata::mounts_of(vm);
    let spec = CidataSpec {
        instance_id: &vm.id,
        hostname: &vm.config.name,
        credentials,
        nics: &nics,
        mounts: &mounts,
        dns: &ctx.config().dns,
    };
    cidata::write(&spec, path).map_err(VmError::from)?;
    Ok(())
}

/// A clone of a cloud-image snapshot gets a cidata disk with its own
/// identity (no credentials: the guest keeps the snapshot's). The
/// snapshot's cidata entry, if any, is pointed at it; otherwise the disk
/// is returned, for the caller to add once the VMM state is patched.
pub(crate) fn for_clone(ctx: &Ctx, vm: &mut Vm) -> Result<Option<StorageConfig>> {
    if vm.config.image_type != ImageType::Cloudimg || vm.config.windows {
        return Ok(None);
    }
    let disk = cidata_disk(&VmPaths::of(vm));
    write(ctx, vm, &disk.path, None)?;
    match vm
        .storage_configs
        .iter_mut()
        .find(|d| d.role == StorageRole::Cidata)
    {
        Some(entry) => {
            *entry = disk;
            Ok(None)
        }
        None => Ok(Some(disk)),
    }
}

/// cloud-init runs on the first boot only: once a UEFI VM has booted,
/// its cidata disk leaves the record (and the run directory), so the
/// VMM's disks, snapshots and clones all agree on what is attached.
pub(crate) fn drop_after_first_boot(ctx: &mut Ctx, vm: Vm) -> Result<Vm> {
    let has_cidata = vm
        .storage_configs
        .iter()
        .any(|d| d.role == StorageRole::Cidata);
    if !vm.first_booted || crate::backend::direct_boot(&vm) || !has_cidata {
        return Ok(vm);
    }
    let (vm, _) = ctx.store().update_vm(&vm.id, "first boot done", |v| {
        v.storage_configs.retain(|d| d.role != StorageRole::Cidata);
    })?;
    let _ = std::fs::remove_file(VmPaths::of(&vm).cidata());
    Ok(vm)
}

/// A snapshot taken on a cloud-image VM's first boot carries the cidata
/// disk in its VMM state; restoring it into the VM after its cidata disk was
/// dropped puts the entry back at the snapshot's position. Returns the path
/// to write the disk to (same identity; the guest has run cloud-init for it).
pub(crate) fn restore_entry(vm: &mut Vm, saved: &[StorageConfig]) -> Option<PathBuf> {
    let position = saved.iter().position(|d| d.role == StorageRole::Cidata)?;
    if vm.config.image_type != ImageType::Cloudimg
        || vm
            .storage_configs
            .iter()
            .any(|d| d.role == StorageRole::Cidata)
        || position > vm.storage_configs.len()
    {
        return None;
    }
    let disk = cidata_disk(&VmPaths::of(vm));
    let path = disk.path.clone();
    vm.storage_configs.insert(position, disk);
    Some(path)
}
