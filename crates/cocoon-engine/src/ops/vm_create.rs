//! `vm create`: the record first (the name is reserved), then directories,
//! network and disks, then state `created`. Any failure removes what was
//! made, record included; a crash leaves an intent crash recovery rolls back.

use crate::context::Ctx;
use crate::error::Result;
use crate::intent::Op;
use crate::lock::BlobLock;
use crate::model::{Hypervisor, StorageRole, Vm, VmConfig, VmState};
use crate::spec::DataDiskSpec;
use crate::store::IntentGuard;
use crate::vm::VmError;
use crate::vm::overlay;

use super::new_vm::{self, Network};
use super::vm_plan::{self, Plan};

/// What `vm create` asks for.
#[derive(Debug, Clone)]
pub struct CreateVm {
    pub config: VmConfig,
    pub hypervisor: Hypervisor,
    pub nics: u32,
    pub data_disks: Vec<DataDiskSpec>,
    /// `--bridge DEV`: TAPs on this host bridge instead of CNI.
    pub bridge: Option<String>,
    /// `--user` / `--password`: the login cloud-init sets up (cloud images).
    pub user: String,
    pub password: String,
    /// Container images: arguments replacing the image's `Cmd` (`vm run
    /// IMAGE -- ARGS…`), and `KEY=VALUE` entries over its `Env` (`-e`).
    pub command: Vec<String>,
    pub env: Vec<String>,
}

pub(crate) fn run(ctx: &mut Ctx, request: CreateVm) -> Result<Vm> {
    create(ctx, request, false)
}

/// A create whose second commit is not synced either: for `vm run`, which
/// syncs the state once the VM has started (`Engine::run_vm`), before it
/// returns. A power loss before that sync finds the create's intent (a VM
/// with NICs: synced) and converges it, or no record at all and the VM's
/// directories, which `gc` removes.
pub(crate) fn run_unsynced(ctx: &mut Ctx, request: CreateVm) -> Result<Vm> {
    create(ctx, request, true)
}

fn create(ctx: &mut Ctx, request: CreateVm, unsynced: bool) -> Result<Vm> {
    let what = format!("VM {}", request.config.name);
    super::vm_cgroup::check_request(ctx, &what, &request.config.resources)?;
    let id = crate::id::generate_id();
    let plan = vm_plan::plan(ctx, &request, &id, None)?;
    let wants_cidata = plan
        .vm
        .storage_configs
        .iter()
        .any(|d| d.role == StorageRole::Cidata);
    if wants_cidata {
        crate::spec::validate_user(&request.user)?;
        crate::spec::validate_password(&request.password)?;
    }
    let op = Op::VmCreate {
        run_dir: plan.vm.run_dir.clone(),
        log_dir: plan.vm.log_dir.clone(),
    };
    // The intent and the record (which reserves the name) in one commit;
    // `created` and the intent's end in another: a create is two commits.
    let intent = begin(ctx, &op, &plan.vm, request.nics == 0)?;
    let Plan {
        mut vm,
        disks,
        overlay,
        agent_layer,
    } = plan;
    let mut network = Network::default();
    let built = ensure_agent_layer(ctx, agent_layer.as_ref()).and_then(|()| {
        build(
            ctx,
            &request,
            &mut vm,
            &disks,
            overlay.as_ref(),
            wants_cidata,
            &mut network,
        )
    });
    let error = match built.and_then(|()| commit(ctx, &intent, &vm, unsynced)) {
        Ok(vm) => return Ok(vm),
        Err(e) => e,
    };
    new_vm::roll_back(ctx, &vm, &network);
    intent.finish(ctx.store())?;
    Err(error)
}

/// The create's first commit: its intent and the VM's record.
///
/// Without NICs it is not synced on its own (`Store::relaxed`): the
/// second commit (`created`, with the intent's end) is, and a sync of the
/// WAL makes every earlier commit durable with it. A process crash in
/// between loses nothing either way (the commit is in the WAL); only an
/// operating system crash or power loss can drop it, and then what the
/// create had made is all inside the VM's own run and log directories
/// (disks, cloud-init disk, overlay), which `gc` removes as directories
/// without a record (tests/gc.rs: the VM "whose record a crash lost"). A
/// VM with NICs keeps the synced commit: its intent is what lets recovery
/// give back the network (IPAM leases live on the host, outside those
/// directories) after such a crash.
fn begin(ctx: &mut Ctx, op: &Op, vm: &Vm, relaxed: bool) -> Result<IntentGuard> {
    Ok(ctx.store().relaxed_if(relaxed, |store| {
        store.begin_intent_inserting_vm(op.name(), &op.data(), vm)
    })?)
}

/// Stores the guest agent's layer the VM's record already names (so gc,
/// which keeps what records name, cannot take it in between).
fn ensure_agent_layer(
    ctx: &Ctx,
    agent_layer: Option<&crate::image::agent_layer::AgentLayer>,
) -> Result<()> {
    if let Some(agent) = agent_layer {
        agent.ensure(&ctx.images(), ctx.config().max_layer_bytes)?;
    }
    Ok(())
}

/// Directories, network, disks and the cloud-init disk of the new VM.
fn build(
    ctx: &mut Ctx,
    request: &CreateVm,
    vm: &mut Vm,
    disks: &[crate::vm::disks::DiskPrep],
    overlay: Option<&overlay::OverlayPrep>,
    wants_cidata: bool,
    network: &mut Network,
) -> Result<()> {
    crate::failpoint::hit("vm.create.recorded")?;
    check_pinned_blobs(ctx, vm)?;
    new_vm::make_dirs(vm)?;
    if request.nics > 0 {
        new_vm::attach_network(ctx, vm, request.nics, request.bridge.as_deref(), network)?;
        new_vm::refresh_cmdline(ctx, vm);
    }
    if let Some(overlay) = overlay {
        overlay::prepare(overlay).map_err(VmError::from)?;
    }
    crate::failpoint::hit("vm.create.network")?;
    let templates = crate::vm::disk_template::dir_under(&ctx.layout.root_dir);
    for disk in disks {
        crate::vm::disks::prepare(disk, &templates).map_err(VmError::from)?;
    }
    if wants_cidata {
        let credentials = crate::guest::cidata::Credentials {
            user: request.user.clone(),
            password: request.password.clone(),
        };
        let path = crate::layout::VmPaths::of(vm).cidata();
        super::cidata::write(ctx, vm, &path, Some(credentials))?;
    }
    crate::failpoint::hit("vm.create.disks")
}

/// Records the VM `created` with what was made for it, and ends the intent.
/// (Not synced if `unsynced`: see [`run_unsynced`].)
fn commit(ctx: &mut Ctx, intent: &IntentGuard, done: &Vm, unsynced: bool) -> Result<Vm> {
    let (vm, _) = ctx.store().relaxed_if(unsynced, |store| {
        intent.finish_updating_vm(store, &done.id, "created", |v| {
            v.state = VmState::Created;
            v.config.network = done.config.network.clone();
            v.network_configs = done.network_configs.clone();
            v.storage_configs = done.storage_configs.clone();
            v.boot_config = done.boot_config.clone();
        })
    })?;
    Ok(vm)
}

/// The VM's record now pins its image's blobs; each must still be here.
/// The image was read before the pin: an `image rm` plus gc in between
/// could have removed one. gc removes a blob only under its lock after a
/// fresh look at the pins, so a blob seen under that lock after our pin is
/// committed stays.
fn check_pinned_blobs(ctx: &Ctx, vm: &Vm) -> Result<()> {
    let dirs = ctx.images();
    for digest in vm.image_blob_ids.keys() {
        let digest = crate::digest::Digest::parse(digest)
            .map_err(|e| crate::error::Error::Invalid(format!("VM {}: {e}", vm.config.name)))?;
        let lock = BlobLock::acquire(&dirs, &digest).map_err(|e| {
            crate::error::Error::io(format!("cannot lock {}", dirs.lock(&digest).display()), e)
        })?;
        let (layer, cloud) = (
            dirs.blob(&digest),
            crate::image::cloud::blob_path(&dirs, &digest),
        );
        let present = layer.is_file() || cloud.is_file();
        drop(lock);
        if !present {
            let path = if vm.config.image_type == crate::model::ImageType::Cloudimg {
                cloud
            } else {
                layer
            };
            return Err(crate::error::Error::Invalid(format!(
                "image {} is missing {}; pull or import the image again",
                vm.config.image,
                path.display()
            )));
        }
    }
    Ok(())
}
