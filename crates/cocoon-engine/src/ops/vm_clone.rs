//! `vm clone`: a new VM from a snapshot, running from the snapshot's state
//! with a fresh identity and network. Every flag is checked against the
//! snapshot before anything is made.

use crate::backend::{self, Boot, RestoreMode};
use crate::context::Ctx;
use crate::error::Result;
use crate::intent::Op;
use crate::model::{Snapshot, Vm, VmConfig};
use crate::name::VmName;
use crate::snapshot::SnapshotError;
use crate::snapshot::manifest::Manifest;

use super::clone_files;
use super::new_vm::{self, Network};
use super::snapshot_check::{self, load_manifest};
use super::vm_launch::{launch_and_boot, stop_leftovers};

/// `vm clone` flags; zero/None inherit from the snapshot.
#[derive(Debug, Clone, Default)]
pub struct CloneRequest {
    pub name: Option<VmName>,
    pub cpu: u32,
    pub memory: Option<u64>,
    pub storage: Option<u64>,
    pub nics: u32,
    pub network: String,
    pub bridge: Option<String>,
    pub queue_size: u32,
    pub disk_queue_size: u32,
    pub no_direct_io: bool,
    pub restore_mode: RestoreMode,
    /// CPU control replacing the snapshot's (None: the snapshot's).
    pub resources: Option<crate::cgroup::CpuLimits>,
    /// Device switches asked for: each must be the snapshot's already (the
    /// clone keeps its snapshot's devices and memory backing).
    pub devices: crate::model::DeviceSwitches,
    /// New data disks (`--data-disk`, upstream #100), after the snapshot's.
    pub data_disks: Vec<crate::spec::DataDiskSpec>,
}

pub(crate) fn run(ctx: &mut Ctx, reference: &str, request: CloneRequest) -> Result<Vm> {
    let snapshot = ctx.store().resolve_snapshot(reference)?;
    let manifest = load_manifest(&snapshot, false)?;
    let checked = snapshot_check::check(ctx, &snapshot, &manifest)?;
    let on_demand = request_fits(&snapshot, &manifest, &request)?;
    snapshot_check::check_base_files(ctx, &manifest)?;
    let id = crate::id::generate_id();
    let config = clone_config(&manifest.source, &request, &id)?;
    super::vm_cgroup::check_request(ctx, &format!("VM {}", config.name), &config.resources)?;
    let paths = ctx.layout.vm(&id);
    let mut vm = Vm::new(
        &id,
        snapshot.hypervisor,
        config,
        paths.run_dir.clone(),
        paths.log_dir.clone(),
    );
    // Pinned: the image blobs its own disks use, as checked above (not the
    // list the snapshot record carries).
    vm.image_blob_ids = checked
        .blobs
        .iter()
        .map(|d| (d.to_string(), crate::model::Empty {}))
        .collect();
    let op = Op::VmClone {
        snapshot: snapshot.id.clone(),
        run_dir: vm.run_dir.clone(),
        log_dir: vm.log_dir.clone(),
    };
    ctx.with_intent(&op, &id, |ctx, _| {
        ctx.store().insert_vm(&vm)?;
        let mut network = Network {
            attached: true,
            leases: Vec::new(),
        };
        let built = build(ctx, &snapshot, &manifest, &request, &mut vm, &mut network);
        let launched = built.and_then(|()| {
            let boot = Boot::Restore {
                source: vm.run_dir.clone(),
                on_demand,
            };
            ctx.block_on(async |ctx| launch_and_boot(ctx, &vm, &boot).await)
        });
        match launched {
            Ok((vmm, relay)) => new_vm::mark_started(ctx, &id, vmm, relay),
            Err(e) => {
                let _ = ctx.block_on(async |ctx| stop_leftovers(ctx, &vm).await);
                new_vm::roll_back(ctx, &vm, &network);
                Err(e)
            }
        }
    })
}

/// The clone's configuration: the snapshot's, with the request's changes.
fn clone_config(source: &VmConfig, request: &CloneRequest, id: &str) -> Result<VmConfig> {
    let mut config = source.clone();
    config.name = match &request.name {
        Some(name) => name.clone(),
        None => format!("cocoon-clone-{}", id[..8].to_ascii_lowercase()).parse()?,
    };
    if request.cpu != 0 {
        config.cpu = request.cpu;
    }
    config.memory = request.memory.unwrap_or(source.memory);
    config.storage = request.storage.unwrap_or(source.storage);
    if request.queue_size != 0 {
        config.queue_size = request.queue_size;
    }
    if request.disk_queue_size != 0 {
        config.disk_queue_size = request.disk_queue_size;
    }
    config.no_direct_io |= request.no_direct_io;
    if !request.network.is_empty() {
        config.network = request.network.clone();
    }
    if let Some(resources) = &request.resources {
        config.resources = resources.clone();
    }
    crate::spec::validate_cpu(config.cpu, crate::spec::host_cpus())?;
    Ok(config)
}

/// The clone's files, network, boot configuration and patched VMM state.
fn build(
    ctx: &mut Ctx,
    snapshot: &Snapshot,
    manifest: &Manifest,
    request: &CloneRequest,
    vm: &mut Vm,
    network: &mut Network,
) -> Result<()> {
    new_vm::make_dirs(vm)?;
    clone_files::place(ctx, snapshot, manifest, vm)?;
    crate::failpoint::hit("vm.clone.files")?;
    let nics = match request.nics {
        0 => snapshot_nics(manifest),
        n => n,
    };
    if nics > 0 {
        new_vm::attach_network(ctx, vm, nics, request.bridge.as_deref(), network)?;
        // NICs `vm net` plugged into the source sit where its saved state
        // has them (QEMU's hot-plug slots).
        for (nic, source) in vm.network_configs.iter_mut().zip(&manifest.network) {
            nic.slot = source.slot;
        }
    }
    vm.boot_config = Some(manifest.boot.clone());
    new_vm::refresh_cmdline(ctx, vm);
    let hot_plug_cidata = super::cidata::for_clone(ctx, vm)?;
    backend::of(vm.hypervisor).patch_clone(vm, &snapshot.id)?;
    if let Some(disk) = hot_plug_cidata {
        // After the patch: the VMM state keeps the snapshot's disks, and the
        // restore hot-plugs this one.
        vm.storage_configs.push(disk);
    }
    // New data disks the same way: made in the clone's directory (a failed
    // clone removes them with it) and hot-plugged by the restore.
    let paths = crate::layout::VmPaths::of(vm);
    let direct_ok = super::vm_plan::direct_io_ok(&vm.config, &paths);
    let (prep, disks) =
        super::vm_plan::data_disks(&request.data_disks, vm.hypervisor, &paths, direct_ok);
    let templates = crate::vm::disk_template::dir_under(&ctx.layout.root_dir);
    for disk in &prep {
        crate::vm::disks::prepare(disk, &templates).map_err(crate::vm::VmError::from)?;
    }
    vm.storage_configs.extend(disks);
    let done = vm.clone();
    ctx.store().update_vm(&vm.id, "cloned", |v| {
        v.config = done.config;
        v.storage_configs = done.storage_configs;
        v.network_configs = done.network_configs;
        v.boot_config = done.boot_config;
    })?;
    Ok(())
}

/// `--data-disk` on a clone: a backend whose restore adds disks, and names
/// the snapshot's disks do not have (a data disk's file is named after it).
fn new_disks_fit(snapshot: &Snapshot, manifest: &Manifest, request: &CloneRequest) -> Result<()> {
    let Some(first) = request.data_disks.first() else {
        return Ok(());
    };
    let backend = backend::of(snapshot.hypervisor);
    if let Some(reason) = backend.clone_data_disk_refusal() {
        return Err(SnapshotError::Override(format!(
            "cannot add data disk {} to a clone: {reason}",
            first.name
        ))
        .into());
    }
    for disk in &request.data_disks {
        if manifest.storage.iter().any(|s| s.serial == disk.name) {
            return Err(SnapshotError::Override(format!(
                "the snapshot already has a disk named {}; give the new data disk another name",
                disk.name
            ))
            .into());
        }
    }
    Ok(())
}

fn snapshot_nics(manifest: &Manifest) -> u32 {
    u32::try_from(manifest.network.len()).unwrap_or(u32::MAX)
}

/// The `vm clone` flags a snapshot can take: CPU, memory and storage are
/// the snapshot's ([`snapshot_check::inherits_resources`]); NICs may grow
/// where the backend resizes, never shrink; the restore mode must be the
/// backend's. Checked before
/// anything is made or pulled. Returns whether the restore is on demand.
pub(crate) fn request_fits(
    snapshot: &Snapshot,
    manifest: &Manifest,
    request: &CloneRequest,
) -> Result<bool> {
    let backend = backend::of(snapshot.hypervisor);
    let on_demand = backend.on_demand(request.restore_mode)?;
    let s = &manifest.source;
    super::vm_restore::switches_fit(snapshot, manifest, &request.devices)?;
    let over = |e: String| crate::error::Error::from(SnapshotError::Override(e));
    snapshot_check::inherits_resources(s, request.cpu, request.memory, request.storage)?;
    new_disks_fit(snapshot, manifest, request)?;
    let fixed = !backend.resizes_on_restore();
    let snap_nics = snapshot_nics(manifest);
    if request.nics != 0 && request.nics < snap_nics {
        return Err(over(format!(
            "--nics {} is below the snapshot's {snap_nics}",
            request.nics
        )));
    }
    if fixed && request.nics != 0 && request.nics != snap_nics {
        return Err(over(format!(
            "{} cannot change the NIC count on clone (snapshot: {snap_nics})",
            backend.title()
        )));
    }
    Ok(on_demand)
}
