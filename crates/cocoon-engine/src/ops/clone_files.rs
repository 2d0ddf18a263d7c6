//! A clone's files: the snapshot's copied into the clone's run directory
//! (memory hard-linked, disks reflinked or sparse-copied, the rest copied),
//! and, for a VMM that reopens the source VM's disk paths from its state
//! (Firecracker), the paths its jail shows the copies at.

use crate::backend;
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::model::{Snapshot, StorageRole, Vm};
use crate::snapshot::SnapshotError;
use crate::snapshot::copy::copy_file;
use crate::snapshot::manifest::{self, Manifest};

use super::disk_swap::grow_cow;

/// Copies a snapshot's files into `vm.run_dir` and points the VM's storage
/// at them. For a VMM that reopens the snapshot's disk paths, each disk
/// records the path the VMM sees it at (`vmm_path`): its jail shows the
/// copy there, inside the jail only (see [`crate::jail`]), so nothing is
/// made on the host at the source VM's paths.
pub(crate) fn place(
    ctx: &Ctx,
    snapshot: &Snapshot,
    manifest: &Manifest,
    vm: &mut Vm,
) -> Result<()> {
    copy_files(snapshot, manifest, vm)?;
    let reopens = backend::of(vm.hypervisor).reopens_source_disks();
    let run_root = ctx.config().run_dir.clone();
    vm.storage_configs = manifest.storage.clone();
    for disk in vm.storage_configs.iter_mut().filter(|d| !d.ro) {
        let name = manifest::file_of(disk).unwrap_or_default();
        let copy = vm.run_dir.join(&name);
        if disk.role == StorageRole::Cow && vm.config.storage > manifest.source.storage {
            grow_cow(&copy, vm.config.storage)
                .map_err(|e| Error::io(format!("cannot grow {name}"), e))?;
        }
        // Where the snapshot's VMM saw this disk: its vmstate names that path.
        let seen = disk.vmm_path.take().unwrap_or_else(|| disk.path.clone());
        if reopens && seen != copy {
            // Another installation's run directory is shown only where
            // nothing of the host is (the snapshot's checks said so too).
            if !seen.starts_with(&run_root) && !crate::snapshot::rebase::foreign_target_ok(&seen) {
                return Err(SnapshotError::Invalid {
                    id: snapshot.id.clone(),
                    reason: format!(
                        "disk {} is outside this engine's run directory",
                        seen.display()
                    ),
                }
                .into());
            }
            disk.vmm_path = Some(seen);
        }
        disk.path = copy;
    }
    Ok(())
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
