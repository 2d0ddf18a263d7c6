//! `vm restore`: a VM restored in place from one of its own snapshots and
//! left running. A running VM's VMM is replaced; a stopped, hibernated or
//! failed one (no VMM) is brought back running, as upstream cocoon does
//! since its #87. Every check, checksums included, runs before the VM is
//! touched; the disks are swapped all or nothing (`disk_swap`). A failed
//! restore of a VM that had no VMM leaves it as it was (retryable); one
//! that had a VMM is marked error, its old disks back.

use std::path::PathBuf;

use jiff::Timestamp;

use crate::backend::{self, Boot, RestoreMode};
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::intent::{Op, step};
use crate::model::{Snapshot, StorageConfig, StorageRole, Vm, VmState, VmmProcess};
use crate::process::ProcessIdentity;
use crate::snapshot::SnapshotError;
use crate::snapshot::copy::copy_file;
use crate::snapshot::manifest::{self, Manifest};
use crate::store::IntentGuard;
use crate::vm::VmError;

use super::disk_swap::{self, grow_cow};
use super::snapshot_check::{self, load_manifest};
use super::vm_launch::{launch_and_boot, stop_leftovers};
use super::{cidata, new_vm};

/// `vm restore` flags.
#[derive(Debug, Clone, Default)]
pub struct RestoreRequest {
    pub cpu: u32,
    pub memory: Option<u64>,
    pub storage: Option<u64>,
    pub restore_mode: RestoreMode,
    /// CPU control replacing the VM's (None: kept).
    pub resources: Option<crate::cgroup::CpuLimits>,
    /// Device switches asked for: each must be the snapshot's already.
    pub devices: crate::model::DeviceSwitches,
    /// The snapshot's source VM was checked by the caller (`--from-dir`,
    /// where `--force` skips that check): any snapshot of the VM's shape.
    pub any_source: bool,
}

/// What the checks decided: the VM as it will be, and how to restore it.
struct Restore {
    vm: Vm,
    snapshot: Snapshot,
    manifest: Manifest,
    on_demand: bool,
    /// Where a cidata disk the snapshot needs is written back.
    cidata: Option<PathBuf>,
    /// The state before the restore.
    origin: VmState,
}

pub(crate) fn run(
    ctx: &mut Ctx,
    vm_ref: &str,
    snapshot_ref: &str,
    request: RestoreRequest,
) -> Result<Vm> {
    let (_lock, vm) = ctx.lock_resolved_vm(vm_ref)?;
    let snapshot = ctx.store().resolve_snapshot(snapshot_ref)?;
    if let Some(resources) = &request.resources {
        let what = format!("VM {}", vm.config.name);
        super::vm_cgroup::check_request(ctx, &what, resources)?;
    }
    let mut plan = check(ctx, vm, snapshot, &request)?;
    restore_checked(ctx, &mut plan, &request)
}

/// `vm start` of a hibernated VM (its lock held): restored from its
/// hibernation snapshot, in the backend's default restore mode.
pub(crate) fn wake_locked(ctx: &mut Ctx, vm: Vm) -> Result<Vm> {
    let Some(snapshot_id) = vm.hibernation_snapshot.clone() else {
        return Err(Error::Invalid(format!(
            "VM {} ({}) is hibernated but names no hibernation snapshot; restore it from one of its snapshots (`cocoon vm restore {} SNAPSHOT`) or remove it",
            vm.config.name, vm.id, vm.config.name
        )));
    };
    let snapshot = ctx.store().resolve_snapshot(&snapshot_id)?;
    let request = RestoreRequest::default();
    let mut plan = check(ctx, vm, snapshot, &request)?;
    restore_checked(ctx, &mut plan, &request)
}

/// The restore once every check passed (the VM's lock is held).
fn restore_checked(ctx: &mut Ctx, plan: &mut Restore, request: &RestoreRequest) -> Result<Vm> {
    let op = Op::VmRestore {
        snapshot: plan.snapshot.id.clone(),
        origin: Some(plan.origin),
    };
    let id = plan.vm.id.clone();
    ctx.with_intent(&op, &id, |ctx, intent| {
        // From here on the VM is replaced.
        match replace(ctx, plan, request, intent) {
            Ok((vmm, relay)) => commit(ctx, &plan.vm, vmm, relay, intent),
            Err(e) => {
                let _ = ctx.block_on(async |ctx| stop_leftovers(ctx, &plan.vm).await);
                disk_swap::roll_back(&plan.vm.storage_configs);
                if let Some(path) = &plan.cidata {
                    let _ = std::fs::remove_file(path);
                }
                let back = state_after_failure(plan.origin);
                if back != VmState::Error
                    && let Err(q) = crate::net::quiesce(&plan.vm)
                {
                    tracing::warn!("VM {}: cannot quiesce its NICs: {q}", plan.vm.id);
                }
                new_vm::settle(ctx, &plan.vm.id, back, back.as_str())?;
                Err(e)
            }
        }
    })
}

/// The state a restore that failed (or died) before it committed leaves:
/// a VM that had no VMM keeps its state, its old disks back, so the
/// restore (or a wake) can be tried again; one whose VMM was killed is an
/// error.
pub(crate) fn state_after_failure(origin: VmState) -> VmState {
    match origin {
        VmState::Stopped | VmState::Hibernated => origin,
        _ => VmState::Error,
    }
}

/// The states a restore starts from.
fn restorable(vm: &Vm) -> Result<VmState> {
    if super::vm_query::is_running(vm) {
        return Ok(VmState::Running);
    }
    match vm.state {
        VmState::Stopped | VmState::Hibernated | VmState::Error => Ok(vm.state),
        // Left `running` by a dead VMM (a host reboot): it has no VMM now.
        VmState::Running => Ok(VmState::Stopped),
        VmState::Creating | VmState::Created => Err(VmError::NotRestorable {
            id: vm.id.clone(),
            name: vm.config.name.clone(),
            state: vm.state,
        }
        .into()),
    }
}

/// Everything checked before the VM is touched.
fn check(
    ctx: &mut Ctx,
    mut vm: Vm,
    snapshot: Snapshot,
    request: &RestoreRequest,
) -> Result<Restore> {
    let on_demand = backend::of(vm.hypervisor).on_demand(request.restore_mode)?;
    if !request.any_source && snapshot.vm_id.as_deref() != Some(vm.id.as_str()) {
        return Err(Error::Invalid(format!(
            "snapshot {} was not taken from VM {} ({}); restore only accepts the VM's own snapshots, use `cocoon vm clone {}` to start a new VM from it",
            snapshot.id, vm.id, vm.config.name, snapshot.id
        )));
    }
    let origin = restorable(&vm)?;
    // Digests this very call computed describe the files as they are.
    let fresh = snapshot_check::ensure_sealed(&snapshot)?;
    let manifest = load_manifest(&snapshot, !fresh)?;
    snapshot_check::check(ctx, &snapshot, &manifest)?;
    let cidata = cidata::restore_entry(&mut vm, &manifest.storage);
    request_fits(&vm, &manifest, request)?;
    switches_fit(&snapshot, &manifest, &request.devices)?;
    snapshot_check::check_base_files(ctx, &manifest)?;
    Ok(Restore {
        vm,
        snapshot,
        manifest,
        on_demand,
        cidata,
        origin,
    })
}

/// The flags and the VM's shape against the snapshot's.
fn request_fits(vm: &Vm, manifest: &Manifest, request: &RestoreRequest) -> Result<()> {
    let s = &manifest.source;
    let over = |e: String| Error::from(SnapshotError::Override(e));
    if manifest.network.len() != vm.network_configs.len() {
        return Err(over(format!(
            "the snapshot has {} NICs, the VM {}",
            manifest.network.len(),
            vm.network_configs.len()
        )));
    }
    // NICs `vm net` plugged sit on hot-plug slots the saved state names.
    let slots = |n: &[crate::model::NetworkConfig]| n.iter().map(|n| n.slot).collect::<Vec<_>>();
    if slots(&manifest.network) != slots(&vm.network_configs) {
        return Err(over(
            "the snapshot's hot-plugged NICs are on other slots than the VM's (`vm net` changed them since); clone the snapshot instead (`cocoon vm clone`)".into(),
        ));
    }
    let roles = |d: &[StorageConfig]| d.iter().map(|d| d.role.clone()).collect::<Vec<_>>();
    if roles(&manifest.storage) != roles(&vm.storage_configs) {
        return Err(over("the snapshot's disks do not match the VM's".into()));
    }
    snapshot_check::inherits_resources(s, request.cpu, request.memory, request.storage)?;
    Ok(())
}

/// The device switches asked of a restore or clone from `snapshot`: its
/// VMM state has its devices and memory backing, so each switch asked for
/// must be one the snapshot was taken with.
pub(crate) fn switches_fit(
    snapshot: &Snapshot,
    manifest: &Manifest,
    asked: &crate::model::DeviceSwitches,
) -> Result<()> {
    let name = snapshot
        .name
        .as_ref()
        .map_or_else(|| snapshot.id.clone(), ToString::to_string);
    // An imported manifest is input: switches its VMM cannot take are
    // refused as a create would refuse them.
    let backend = backend::of(snapshot.hypervisor);
    let had = &manifest.source.devices;
    if let Some((flag, reason)) = backend.refused_switch(had) {
        return Err(Error::Invalid(format!(
            "snapshot {name} records {flag}, which {} cannot take ({reason}); it cannot be restored or cloned",
            backend.title()
        )));
    }
    match asked.missing_from(had) {
        Some(flag) => Err(VmError::SwitchNotInSnapshot {
            snapshot: name,
            flag,
        }
        .into()),
        None => Ok(()),
    }
}

/// The CPUs and memory the restored VM gets.
fn resources(manifest: &Manifest, request: &RestoreRequest) -> (u32, u64) {
    let s = &manifest.source;
    let cpu = if request.cpu == 0 { s.cpu } else { request.cpu };
    (cpu, request.memory.unwrap_or(s.memory))
}

/// Kills the running VMM, swaps the disks and launches from the snapshot.
fn replace(
    ctx: &mut Ctx,
    plan: &mut Restore,
    request: &RestoreRequest,
    intent: &IntentGuard,
) -> Result<(VmmProcess, Option<ProcessIdentity>)> {
    ctx.block_on(async |ctx| stop_leftovers(ctx, &plan.vm).await)?;
    crate::failpoint::hit("vm.restore.killed")?;
    let (cpu, memory) = resources(&plan.manifest, request);
    let vm = &mut plan.vm;
    vm.config.cpu = cpu;
    vm.config.memory = memory;
    // The snapshot's VMM state has its devices and memory backing.
    vm.config.devices = plan.manifest.source.devices;
    if let Some(resources) = &request.resources {
        vm.config.resources = resources.clone();
    }
    if let Some(st) = request.storage {
        vm.config.storage = st;
    }
    if let Some(path) = &plan.cidata {
        cidata::write(ctx, vm, path, None)?;
    }
    let writable = stage_disks(vm, &plan.snapshot, &plan.manifest)?;
    ctx.step(intent, step::SWAPPING)?;
    for (i, path) in writable.iter().enumerate() {
        disk_swap::swap_in(path)
            .map_err(|e| Error::io(format!("cannot restore disk {}", path.display()), e))?;
        if i == 0 {
            crate::failpoint::hit("vm.restore.swapped")?;
        }
    }
    let backend = backend::of(vm.hypervisor);
    if backend.reopens_source_disks() {
        // The state names the disks where the snapshot's VMM saw them.
        for (disk, saved) in vm.storage_configs.iter_mut().zip(&plan.manifest.storage) {
            let seen = saved.vmm_path.as_ref().unwrap_or(&saved.path);
            disk.vmm_path = (*seen != disk.path).then(|| seen.clone());
        }
    }
    let source = backend.stage_restore(vm, &plan.snapshot, &plan.manifest)?;
    let boot = Boot::Restore {
        source: source.clone(),
        on_demand: plan.on_demand,
    };
    let vm = plan.vm.clone();
    // A VM that was not running has its NICs quiesced (or its namespace
    // gone after a reboot): ready them as `vm start` does.
    let leases = ctx.store().leases(&vm.id)?;
    crate::net::prepare_start(&ctx.net(), &vm, &leases).map_err(VmError::from)?;
    let launched = ctx.block_on(async |ctx| launch_and_boot(ctx, &vm, &boot).await);
    backend.drop_staged_restore(&source, plan.on_demand);
    launched
}

/// Stages every writable disk's replacement beside it; returns their paths.
fn stage_disks(vm: &Vm, snapshot: &Snapshot, manifest: &Manifest) -> Result<Vec<PathBuf>> {
    let mut writable = Vec::new();
    for (disk, saved) in vm.storage_configs.iter().zip(&manifest.storage) {
        if disk.ro {
            continue;
        }
        let name = manifest::file_of(saved).unwrap_or_default();
        let staged = disk_swap::staged(&disk.path);
        let _ = std::fs::remove_file(&staged);
        copy_file(&snapshot.data_dir.join(&name), &staged)
            .and_then(|_| {
                if disk.role == StorageRole::Cow && vm.config.storage > manifest.source.storage {
                    grow_cow(&staged, vm.config.storage)?;
                }
                Ok(())
            })
            .map_err(|e| Error::io(format!("cannot stage disk {}", disk.path.display()), e))?;
        writable.push(disk.path.clone());
    }
    Ok(writable)
}

/// Records the restored VM running; past the `committing` step crash
/// recovery rolls forward (drops the old disks) instead of back.
fn commit(
    ctx: &mut Ctx,
    vm: &Vm,
    vmm: VmmProcess,
    relay: Option<ProcessIdentity>,
    intent: &IntentGuard,
) -> Result<Vm> {
    let done = vm.config.clone();
    let storage = vm.storage_configs.clone();
    let (vm, _) = ctx.store().update_vm(&vm.id, "restored", |v| {
        v.config = done;
        v.storage_configs = storage;
        v.state = VmState::Running;
        v.pid = vmm.identity.pid;
        v.vmm = Some(vmm);
        v.vmm_memory = None;
        v.console_relay = relay;
        v.started_at = Some(Timestamp::now());
        v.hibernation_snapshot = None;
    })?;
    ctx.step(intent, step::COMMITTING)?;
    disk_swap::finish(&vm.storage_configs);
    Ok(vm)
}
