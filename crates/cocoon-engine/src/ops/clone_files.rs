//! A clone's files: the snapshot's copied into the clone's run directory
//! (memory hard-linked, disks reflinked or sparse-copied, the rest copied),
//! and, for a VMM that reopens the source VM's disk paths from its state
//! (Firecracker), the bind mounts that show the copies at those paths.

use std::path::PathBuf;

use crate::backend;
use crate::context::{Ctx, VM_LOCK_TIMEOUT};
use crate::error::{Error, Result};
use crate::lock::VmLock;
use crate::model::{Snapshot, StorageRole, Vm};
use crate::snapshot::SnapshotError;
use crate::snapshot::copy::copy_file;
use crate::snapshot::manifest::{self, Manifest};

use super::disk_swap::grow_cow;

/// Bind mounts: (the clone's copy, the source path the VMM reopens).
pub(crate) type Binds = Vec<(PathBuf, PathBuf)>;

/// A clone's hold on the directories its disks are bound over.
#[derive(Default)]
pub(crate) struct MountTargets {
    leases: Vec<(String, VmLock)>,
}

/// Copies a snapshot's files into `vm.run_dir` and points the VM's storage
/// at them. Returns the bind mounts and the hold on their targets.
pub(crate) fn place(
    ctx: &Ctx,
    snapshot: &Snapshot,
    manifest: &Manifest,
    vm: &mut Vm,
) -> Result<(Binds, MountTargets)> {
    copy_files(snapshot, manifest, vm)?;
    let reopens = backend::of(vm.hypervisor).reopens_source_disks();
    let run_root = ctx.config().run_dir.clone();
    let mut binds = Vec::new();
    vm.storage_configs = manifest.storage.clone();
    for disk in vm.storage_configs.iter_mut().filter(|d| !d.ro) {
        let name = manifest::file_of(disk).unwrap_or_default();
        let copy = vm.run_dir.join(&name);
        if disk.role == StorageRole::Cow && vm.config.storage > manifest.source.storage {
            grow_cow(&copy, vm.config.storage)
                .map_err(|e| Error::io(format!("cannot grow {name}"), e))?;
        }
        if reopens && disk.path != copy {
            if !disk.path.starts_with(&run_root) {
                return Err(SnapshotError::Invalid {
                    id: snapshot.id.clone(),
                    reason: format!(
                        "disk {} is outside this engine's run directory",
                        disk.path.display()
                    ),
                }
                .into());
            }
            binds.push((copy.clone(), disk.path.clone()));
        }
        disk.path = copy;
    }
    let targets = hold_mount_targets(ctx, &binds)?;
    Ok((binds, targets))
}

/// The snapshot's files into the clone's run directory.
fn copy_files(snapshot: &Snapshot, manifest: &Manifest, vm: &Vm) -> Result<()> {
    let backend = backend::of(vm.hypervisor);
    let io = |what: String| move |e: std::io::Error| Error::io(what, e);
    for name in manifest.files.keys() {
        let from = snapshot.data_dir.join(name);
        let to = vm.run_dir.join(name);
        let is_disk = manifest
            .storage
            .iter()
            .any(|d| manifest::file_of(d).as_deref() == Some(name.as_str()));
        if backend.is_memory_file(name) {
            // Read-only for the VMM (CH copies or maps it private, FC maps it private).
            std::fs::hard_link(&from, &to)
                .or_else(|_| std::fs::copy(&from, &to).map(drop))
                .map_err(io(format!("cannot place {name}")))?;
        } else if is_disk {
            copy_file(&from, &to).map_err(io(format!("cannot copy disk {name}")))?;
        } else {
            std::fs::copy(&from, &to).map_err(io(format!("cannot copy {name}")))?;
        }
    }
    Ok(())
}

/// The targets live in the source VM's run directory, which is gone when
/// the source VM is (removed, or the snapshot was imported): then they are
/// made as empty files. Each target directory is held under a shared lock
/// until the clone's VMM has opened its disks, so concurrent clones share
/// the targets and gc, which removes a directory without a record only
/// under its exclusive lock, waits.
fn hold_mount_targets(ctx: &Ctx, binds: &Binds) -> Result<MountTargets> {
    let mut targets = MountTargets::default();
    let vms_root = ctx.layout.vm_runs();
    for (_, target) in binds {
        let Some(dir) = target.parent() else { continue };
        let Some(id) = dir
            .strip_prefix(&vms_root)
            .ok()
            .and_then(|rest| rest.to_str())
            .filter(|id| !id.is_empty() && !id.contains('/'))
        else {
            continue;
        };
        if !targets.leases.iter().any(|(held, _)| held == id) {
            let lease = VmLock::acquire_shared(&ctx.config().run_dir, id, VM_LOCK_TIMEOUT)?;
            targets.leases.push((id.to_string(), lease));
        }
        if !target.exists() {
            std::fs::File::create(target)
                .map_err(|e| Error::io(format!("cannot create {}", target.display()), e))?;
        }
    }
    Ok(targets)
}

/// Lets go of a clone's mount targets once its VMM holds its disks open:
/// the last clone out removes a target directory no VM owns.
pub(crate) fn release_mount_targets(ctx: &mut Ctx, targets: MountTargets) {
    for (id, lease) in targets.leases {
        if lease.try_upgrade() && matches!(ctx.store().get_vm(&id), Ok(None)) {
            let _ = std::fs::remove_dir_all(ctx.layout.vm_runs().join(&id));
        }
    }
}
