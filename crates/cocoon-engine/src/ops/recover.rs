//! Crash recovery: converge what an operation left half-done when the
//! process running it died (SIGKILL, OOM, power loss). Every multi-step
//! operation records an intent ([`Op`]) before its first side effect; an
//! intent whose owner is dead is claimed here and rolled forward or back by
//! its step. `Engine::open` runs it: with nothing to do it is one query.

use std::path::Path;
use std::time::Duration;

use crate::backend;
use crate::context::Ctx;
use crate::error::Result;
use crate::intent::{Op, step};
use crate::layout::VmPaths;
use crate::model::{Vm, VmState, VmmProcess};
use crate::store::Intent;
use crate::supervise::{self, StopTimeouts};
use crate::vm::VmError;

use super::{disk_swap, new_vm};

/// One thing crash recovery did, for logs and `gc -o json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Repair {
    pub op: String,
    pub object: String,
    pub action: String,
}

const QUICK: StopTimeouts = StopTimeouts {
    graceful: Duration::ZERO,
    term: Duration::from_secs(2),
    kill: Duration::from_secs(5),
};

/// Converges every intent whose owner is dead.
pub(crate) fn run(ctx: &mut Ctx) -> Result<Vec<Repair>> {
    let orphans = ctx.store().orphaned_intents()?;
    let mut repairs = Vec::new();
    for intent in orphans {
        let Some(claim) = ctx.store().claim_intent(&intent)? else {
            continue; // another process took it
        };
        let action = match Op::of(&intent) {
            Some(op) => converge(ctx, &intent, &op),
            None => Ok(format!(
                "no recovery for `{}`; dropped its intent",
                intent.op
            )),
        };
        let action = match action {
            Ok(action) => action,
            Err(e) => {
                // Left claimed by us; once we exit it is orphaned again.
                tracing::warn!(
                    "could not converge {} of {} left by pid {}: {e}",
                    intent.op,
                    intent.object_id,
                    intent.owner.pid
                );
                continue;
            }
        };
        tracing::warn!(
            "recovered from a dead `{}` of {} (pid {} at step {}): {action}",
            intent.op,
            intent.object_id,
            intent.owner.pid,
            intent.step
        );
        claim.finish_recovered(ctx.store(), &intent, &action)?;
        repairs.push(Repair {
            op: intent.op.clone(),
            object: intent.object_id.clone(),
            action,
        });
    }
    for id in super::vm_cgroup::sweep(ctx)? {
        tracing::info!("removed the empty cgroup of VM {id}, whose VMM is gone");
        repairs.push(Repair {
            op: "cgroup".into(),
            object: id,
            action: "removed its empty cgroup (its VMM is gone)".into(),
        });
    }
    Ok(repairs)
}

/// What recovery does for each operation: the match is exhaustive, so a
/// new operation cannot be added without saying how it recovers.
fn converge(ctx: &mut Ctx, intent: &Intent, op: &Op) -> Result<String> {
    let id = intent.object_id.as_str();
    match op {
        Op::SnapshotSave {
            vm_id,
            data_dir,
            api_socket,
        } => snapshot_save(ctx, id, vm_id, data_dir, api_socket),
        Op::VmCreate { run_dir, log_dir }
        | Op::VmClone {
            run_dir, log_dir, ..
        } => new_vm(ctx, id, run_dir, log_dir),
        Op::VmStart {} => vm_start(ctx, id),
        Op::VmHibernate {
            snapshot,
            data_dir,
            api_socket,
        } => vm_hibernate(ctx, id, &intent.step, snapshot, data_dir, api_socket),
        Op::VmRestore { origin, .. } => vm_restore(ctx, id, &intent.step, *origin),
        Op::VmStop {} => vm_stop(ctx, id),
        Op::VmResize {
            api_socket,
            cpu,
            memory,
        } => super::vm_resize::recover(ctx, id, api_socket, *cpu, *memory),
        Op::VmDiskAttach { name } => super::vm_disk::recover(ctx, id, name, true),
        Op::VmDiskDetach { name } => super::vm_disk::recover(ctx, id, name, false),
        Op::VmNet { from, nics } => super::vm_net::recover(ctx, id, *from, *nics),
        Op::VmFsAttach { tag } => super::vm_fs::recover(ctx, id, tag, true),
        Op::VmFsDetach { tag } => super::vm_fs::recover(ctx, id, tag, false),
        Op::VmDeviceAttach { id: device } => super::vm_device::recover(ctx, id, device, true),
        Op::VmDeviceDetach { id: device } => super::vm_device::recover(ctx, id, device, false),
        Op::VmRemove { .. } => vm_remove(ctx, id),
        Op::ImagePull { .. } | Op::ImageImport { .. } => {
            // Layers and cloud blobs appear by one rename each and the image
            // record by one transaction: nothing half-made is visible. Stored
            // blobs stay as cache (gc takes unpinned ones); the dead owner's
            // work files go now.
            let removed = crate::image::store::remove_work_of(&ctx.images(), intent.owner.pid);
            Ok(format!(
                "no image was recorded half-way; removed {removed} work file(s) it left"
            ))
        }
        Op::SnapshotImport { data_dir, staging } => snapshot_import(ctx, id, data_dir, staging),
        Op::SnapshotEvict { data_dir } => {
            super::snapshot_gc::finish(ctx, id, data_dir)?;
            Ok("finished evicting the snapshot (files and record removed)".into())
        }
    }
}

/// The VM may be paused inside the dead save's window: resume it (a no-op
/// on a running VM), then drop the half-made snapshot.
fn snapshot_save(
    ctx: &mut Ctx,
    id: &str,
    vm_id: &str,
    data_dir: &Path,
    api_socket: &Path,
) -> Result<String> {
    let mut resumed = "";
    if !vm_id.is_empty() && !api_socket.as_os_str().is_empty() {
        let locked = ctx.lock_vm_if_recorded(vm_id)?;
        let hypervisor = locked.as_ref().map(|(_, v)| v.hypervisor);
        if let Some(h) = hypervisor
            && api_socket.exists()
        {
            match ctx.block_on(async |_| Ok(backend::of(h).resume(api_socket).await))? {
                Ok(_) => resumed = "resumed the VM, ",
                Err(e) => tracing::warn!("cannot resume VM {vm_id}: {e}"),
            }
        }
    }
    let snapshot = ctx.store().get_snapshot(id)?;
    if snapshot.as_ref().is_some_and(|s| s.pending) {
        remove_dir(data_dir);
        ctx.store().delete_snapshot(id)?;
        return Ok(format!("{resumed}removed the unfinished snapshot"));
    }
    Ok(format!("{resumed}the snapshot was complete"))
}

/// Past `captured` the snapshot is complete: the hibernation goes through
/// (the VMM is killed, the VM recorded hibernated). Before, it is undone:
/// the guest resumed, the half-made snapshot and the VM's claim dropped.
fn vm_hibernate(
    ctx: &mut Ctx,
    id: &str,
    at: &str,
    snapshot: &str,
    data_dir: &Path,
    api_socket: &Path,
) -> Result<String> {
    let Some((_lock, vm)) = ctx.lock_vm_if_recorded(id)? else {
        return Ok("the VM is gone".into());
    };
    if at == step::CAPTURED {
        super::vm_hibernate::put_to_sleep(ctx, &vm)?;
        return Ok("the snapshot was complete: stopped the VMM, the VM is hibernated".into());
    }
    let mut resumed = "";
    if api_socket.exists() {
        match ctx.block_on(async |_| Ok(backend::of(vm.hypervisor).resume(api_socket).await))? {
            Ok(_) => resumed = "resumed the VM, ",
            Err(e) => tracing::warn!("cannot resume VM {id}: {e}"),
        }
    }
    ctx.store()
        .update_vm(id, "running", |v| v.hibernation_snapshot = None)?;
    if ctx.store().get_snapshot(snapshot)?.is_some() {
        ctx.store().delete_snapshot(snapshot)?;
    }
    remove_dir(data_dir);
    Ok(format!(
        "{resumed}removed the unfinished hibernation snapshot"
    ))
}

/// A create or clone: rolled back unless it had finished starting.
fn new_vm(ctx: &mut Ctx, id: &str, run_dir: &Path, log_dir: &Path) -> Result<String> {
    let _lock = ctx.lock_vm(id)?;
    let Some(vm) = ctx.store().get_vm(id)? else {
        remove_dir(run_dir);
        remove_dir(log_dir);
        return Ok("nothing was recorded; removed its directories".into());
    };
    if vm.state == VmState::Running && super::vm_query::is_running(&vm) {
        return Ok("the VM had finished starting; kept".into());
    }
    discard_vm(ctx, &vm)?;
    Ok("rolled back the half-created VM (processes, network, disks, record)".into())
}

/// A start records `running` only once it is done.
fn vm_start(ctx: &mut Ctx, id: &str) -> Result<String> {
    let Some((_lock, vm)) = ctx.lock_vm_if_recorded(id)? else {
        return Ok("the VM is gone".into());
    };
    if vm.state == VmState::Running && super::vm_query::is_running(&vm) {
        return Ok("the VM is running; kept".into());
    }
    settle_without_vmm(ctx, &vm, VmState::Error, "error")?;
    Ok("killed the half-started VMM; the VM is marked error (start it again)".into())
}

/// A restore may replace a VM that was already `running`, so the record
/// proves nothing: an unfinished restore is undone. Disks: all old or all
/// new, never a mix; before the restore committed, the old ones come back
/// and a VM that had no VMM (stopped, hibernated) gets its state back, so
/// the restore or the wake can be run again.
fn vm_restore(ctx: &mut Ctx, id: &str, at: &str, origin: Option<VmState>) -> Result<String> {
    let Some((_lock, vm)) = ctx.lock_vm_if_recorded(id)? else {
        return Ok("the VM is gone".into());
    };
    if at == step::COMMITTING {
        settle_without_vmm(ctx, &vm, VmState::Error, "error")?;
        disk_swap::finish(&vm.storage_configs);
        return Ok("killed the half-started VMM; the VM is marked error (start it again)".into());
    }
    let back = origin.map_or(VmState::Error, super::vm_restore::state_after_failure);
    settle_without_vmm(ctx, &vm, back, back.as_str())?;
    disk_swap::roll_back(&vm.storage_configs);
    if back == VmState::Error {
        return Ok("killed the half-started VMM and put the VM's old disks back; the VM is marked error (start it again)".into());
    }
    if let Err(e) = crate::net::quiesce(&vm) {
        tracing::warn!("VM {}: cannot quiesce its NICs: {e}", vm.id);
    }
    Ok(format!(
        "killed the half-started VMM and put the VM's old disks back; the VM is {back} again"
    ))
}

fn vm_stop(ctx: &mut Ctx, id: &str) -> Result<String> {
    let Some((_lock, vm)) = ctx.lock_vm_if_recorded(id)? else {
        return Ok("the VM is gone".into());
    };
    settle_without_vmm(ctx, &vm, VmState::Stopped, "stopped")?;
    Ok("finished the stop".into())
}

fn vm_remove(ctx: &mut Ctx, id: &str) -> Result<String> {
    let Some((_lock, vm)) = ctx.lock_vm_if_recorded(id)? else {
        return Ok("the VM was already removed".into());
    };
    discard_vm(ctx, &vm)?;
    Ok("finished the removal".into())
}

fn snapshot_import(ctx: &mut Ctx, id: &str, data_dir: &Path, staging: &Path) -> Result<String> {
    remove_dir(staging);
    if ctx.store().get_snapshot(id)?.is_some() {
        return Ok("the import had finished; kept".into());
    }
    // Renamed into place but never recorded: not visible, drop it.
    remove_dir(data_dir);
    Ok("removed the unfinished import".into())
}

/// Removes a directory an intent names (none named: nothing to do).
fn remove_dir(dir: &Path) {
    if !dir.as_os_str().is_empty() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Kills the VM's processes and records it in `state` with none.
fn settle_without_vmm(ctx: &mut Ctx, vm: &Vm, state: VmState, action: &str) -> Result<()> {
    kill_vm_processes(ctx, &vm.run_dir, vm.vmm.as_ref())?;
    remove_cgroup(ctx, vm);
    new_vm::settle(ctx, &vm.id, state, action)?;
    Ok(())
}

/// The dead start's cgroup goes with its processes; one that will not go
/// now is left to the sweep (it never holds recovery up).
fn remove_cgroup(ctx: &Ctx, vm: &Vm) {
    if let Err(e) = super::vm_cgroup::remove(ctx, vm) {
        tracing::warn!("VM {}: {e}", vm.id);
    }
}

/// Kills the VM's processes, releases its network, removes its
/// directories and then its record.
pub(crate) fn discard_vm(ctx: &mut Ctx, vm: &Vm) -> Result<()> {
    kill_vm_processes(ctx, &vm.run_dir, vm.vmm.as_ref())?;
    remove_cgroup(ctx, vm);
    let leases = ctx.store().leases(&vm.id)?;
    crate::net::detach(&ctx.net(), vm, &leases).map_err(VmError::from)?;
    let _ = std::fs::remove_dir_all(&vm.run_dir);
    let _ = std::fs::remove_dir_all(&vm.log_dir);
    ctx.store().delete_vm(&vm.id)?;
    Ok(())
}

/// Kills a VM's VMM and console relay: the recorded one and anything
/// else naming its sockets (an orphan whose record was lost).
fn kill_vm_processes(ctx: &mut Ctx, run_dir: &Path, vmm: Option<&VmmProcess>) -> Result<()> {
    let paths = VmPaths::run_only(run_dir);
    ctx.block_on(async |_| {
        if let Some(vmm) = vmm {
            let _ = supervise::terminate(vmm, None::<fn() -> std::future::Ready<()>>, QUICK).await;
        }
        for socket in paths.process_sockets() {
            let _ = supervise::terminate_all_by_socket(&socket, QUICK).await;
        }
        Ok(())
    })?;
    for file in paths.runtime_files() {
        let _ = std::fs::remove_file(file);
    }
    Ok(())
}
