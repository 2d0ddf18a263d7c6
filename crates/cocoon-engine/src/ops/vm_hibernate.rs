//! `vm hibernate`: the running VM's guest goes into a snapshot and its VMM
//! is stopped, releasing its CPUs and memory; the record, disks and network
//! identity stay, in state `hibernated`. `vm start` (or `vm restore`) wakes
//! it from that snapshot.
//!
//! As upstream cocoon (`cmd/vm/hibernate.go`): the guest is paused, the
//! snapshot written, and the VMM killed while still paused, so the guest
//! never runs past the snapshot and nothing it does is lost or repeated.
//! A failure before the snapshot is complete resumes the guest and drops
//! the snapshot; past it, the hibernation goes through (crash recovery
//! rolls it forward). Upstream leaves the VM `stopped`; ours is
//! `hibernated` and remembers its snapshot (docs/compatibility.md).

use jiff::Timestamp;
use serde::Serialize;

use crate::backend;
use crate::context::Ctx;
use crate::error::Result;
use crate::intent::{Op, step};
use crate::model::{Snapshot, Vm, VmState, VmmProcess};
use crate::name::SnapshotName;

use super::snapshot_save::{capture_paused, finish, locked_for_snapshot, start_sealer};
use super::vm_launch::stop_leftovers;

/// What `vm hibernate` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Hibernated {
    pub vm: Vm,
    pub snapshot: Snapshot,
}

pub(crate) fn run(
    ctx: &mut Ctx,
    reference: &str,
    name: Option<SnapshotName>,
    description: &str,
) -> Result<Hibernated> {
    let (_lock, vm, vmm) = locked_for_snapshot(ctx, reference)?;
    let id = crate::id::generate_id();
    let data_dir = ctx.layout.snapshot(&id);
    let mut record = Snapshot::of_vm(&id, name, &vm, data_dir.clone());
    record.description = description.to_string();
    let op = Op::VmHibernate {
        snapshot: id.clone(),
        data_dir: data_dir.clone(),
        api_socket: vmm.api_socket.clone(),
    };
    // The pending record and the intent about it, in one commit (a taken
    // name fails here, before the guest is paused).
    let intent = ctx.store().begin_intent_inserting_snapshot(
        op.name(),
        op.kind(),
        &vm.id,
        &op.data(),
        &record,
    )?;
    ctx.under_intent(intent, |ctx, intent| {
        // Held before the snapshot is complete: `snapshot rm` never sees
        // it without its VM's claim.
        ctx.store().update_vm(&vm.id, "hibernating", |v| {
            v.hibernation_snapshot = Some(id.clone())
        })?;
        let captured = capture(ctx, &vm, &vmm, &record);
        let snapshot = match captured {
            Ok(snapshot) => snapshot,
            Err(e) => {
                undo(ctx, &vm, &record);
                return Err(e);
            }
        };
        ctx.step(intent, step::CAPTURED)?;
        // Past this point the hibernation goes through whatever fails.
        let failed = crate::failpoint::hit("vm.hibernate.captured");
        let vm = put_to_sleep(ctx, &vm)?;
        failed?;
        // After the VMM is gone: the sealer takes none of its CPU time.
        start_sealer(ctx, &snapshot);
        Ok(Hibernated { vm, snapshot })
    })
}

/// The snapshot, complete, with the guest left paused; on failure the
/// guest runs again.
fn capture(ctx: &mut Ctx, vm: &Vm, vmm: &VmmProcess, record: &Snapshot) -> Result<Snapshot> {
    capture_paused(ctx, vm, vmm, &record.data_dir, true)?;
    crate::failpoint::hit("vm.hibernate.paused")
        .and_then(|()| finish(ctx, vm, record, &record.data_dir))
        .inspect_err(|_| {
            let resumed = ctx
                .block_on(async |_| Ok(backend::of(vm.hypervisor).resume(&vmm.api_socket).await));
            if let Ok(Err(e)) = resumed {
                tracing::warn!("VM {}: cannot resume it: {e}", vm.id);
            }
        })
}

/// Drops the unfinished snapshot and the VM's claim on it.
pub(crate) fn undo(ctx: &mut Ctx, vm: &Vm, record: &Snapshot) {
    let _ = std::fs::remove_dir_all(&record.data_dir);
    let _ = ctx
        .store()
        .update_vm(&vm.id, "running", |v| v.hibernation_snapshot = None);
    let _ = ctx.store().delete_snapshot(&record.id);
}

/// Kills the VMM and its helpers (no guest shutdown: the guest is frozen
/// in its snapshot), and records the VM hibernated, its NICs quiesced.
pub(crate) fn put_to_sleep(ctx: &mut Ctx, vm: &Vm) -> Result<Vm> {
    ctx.block_on(async |ctx| stop_leftovers(ctx, vm).await)?;
    if let Err(e) = crate::net::quiesce(vm) {
        tracing::warn!("VM {}: cannot quiesce its NICs: {e}", vm.id);
    }
    let (vm, _) = ctx.store().update_vm(&vm.id, "hibernated", |v| {
        v.state = VmState::Hibernated;
        // The snapshot holds the VMM's RAM: it wakes with all of it.
        v.config.memory = v.vmm_memory.take().unwrap_or(v.config.memory);
        v.stopped_at = Some(Timestamp::now());
        v.pid = 0;
        v.vmm = None;
        v.console_relay = None;
        v.vsock_socket.clear();
        v.vsock_helper = None;
    })?;
    Ok(vm)
}
