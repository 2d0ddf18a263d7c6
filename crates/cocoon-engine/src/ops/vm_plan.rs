//! Planning a new VM: the record and the disks `vm create` (and `vm debug`)
//! will make, from the request and the image, with no side effect. An OCI
//! image boots its own kernel from layer disks plus a COW disk; a cloud
//! image boots UEFI firmware from a qcow2 overlay over the image's blob,
//! with a cloud-init disk for its first boot.

use std::path::Path;

use crate::backend::{self, Backend};
use crate::context::Ctx;
use crate::error::Result;
use crate::guest::cmdline::{self, CmdlineSpec, GuestNic};
use crate::image::agent_layer::AgentLayer;
use crate::image::cloud;
use crate::image::store::ImageDirs;
use crate::layout::VmPaths;
use crate::lock::create_private_dir;
use crate::model::{
    BootConfig, Empty, Hypervisor, Image, ImageType, StorageConfig, StorageRole, Vm, VmConfig,
};
use crate::spec::{DataDiskSpec, DirectIo, FsType};
use crate::vm::VmError;
use crate::vm::disks::DiskPrep;
use crate::vm::overlay::OverlayPrep;

use super::vm_create::CreateVm;

/// A VM record built from a request, plus the disks it needs.
pub(crate) struct Plan {
    pub vm: Vm,
    pub disks: Vec<DiskPrep>,
    /// A cloud image's qcow2 overlay.
    pub overlay: Option<OverlayPrep>,
    /// The guest agent's layer, on top of an image built for cocoon's, to
    /// store before the VM is made (see [`crate::image::agent_layer`]).
    pub agent_layer: Option<AgentLayer>,
}

/// The record and disks of a new VM. `cow_override` replaces the COW path (debug).
pub(crate) fn plan(
    ctx: &mut Ctx,
    request: &CreateVm,
    id: &str,
    cow_override: Option<&Path>,
) -> Result<Plan> {
    crate::spec::validate_cpu(request.config.cpu, crate::spec::host_cpus())?;
    check_switches(request)?;
    let image = super::image_query::inspect(ctx, &request.config.image)?;
    if image.kind == ImageType::Cloudimg {
        return plan_cloud(ctx, request, id, image, cow_override);
    }
    if request.config.windows {
        return Err(VmError::WindowsNeedsCloudImage { image: image.name }.into());
    }
    let backend = backend::of(request.hypervisor);
    let dirs = ctx.images();
    let paths = ctx.layout.vm(id);
    let mut vm = new_record(request, id, &image, ImageType::Oci, &paths);
    vm.image_blob_ids = image
        .layers
        .iter()
        .map(|d| (d.to_string(), Empty {}))
        .collect();
    let direct_ok = direct_io_ok(&vm.config, &paths);
    let mut storage = layer_disks(&image, &dirs, backend);
    let agent_layer = add_agent_layer(ctx, request, &image, backend, &mut vm, &mut storage);
    let cow = cow_override.map_or_else(|| paths.cow(), Path::to_path_buf);
    let (kernel_path, initrd_path, seed) = if image.own_kernel {
        let (kernel_layer, initrd_layer) = boot_layers(&image)?;
        let kernel = backend.kernel(&dirs, &kernel_layer)?;
        (kernel, dirs.initrd(&initrd_layer), Vec::new())
    } else {
        container_boot(ctx, request, &image, backend)?
    };
    let mut prep = vec![DiskPrep {
        path: cow.clone(),
        size: vm.config.storage,
        ext4: true,
        seed,
        template: true,
    }];
    storage.push(StorageConfig {
        vmm_path: None,
        external: false,
        slot: None,
        path: cow,
        ro: false,
        serial: cmdline::COW_SERIAL.into(),
        role: StorageRole::Cow,
        mount_point: String::new(),
        fstype: None,
        direct_io: backend.has_direct_io().then_some(direct_ok),
        directio_mode: None,
    });
    let (data_prep, data) = data_disks(&request.data_disks, request.hypervisor, &paths, direct_ok);
    prep.extend(data_prep);
    storage.extend(data);
    vm.storage_configs = storage;
    vm.boot_config = Some(BootConfig {
        kernel_path: Some(kernel_path),
        initrd_path: Some(initrd_path),
        cmdline: String::new(),
        firmware_path: None,
    });
    let cmdline = cmdline_of(ctx, &vm);
    if let Some(boot) = vm.boot_config.as_mut() {
        boot.cmdline = cmdline;
    }
    Ok(Plan {
        vm,
        disks: prep,
        overlay: None,
        agent_layer,
    })
}

/// An image built for cocoon (its own kernel, systemd as init) gets the
/// guest agent's layer on top of its own, unless `--no-agent` or the
/// backend gives such VMs no vsock (QEMU).
fn add_agent_layer(
    ctx: &Ctx,
    request: &CreateVm,
    image: &Image,
    backend: &dyn Backend,
    vm: &mut Vm,
    storage: &mut Vec<StorageConfig>,
) -> Option<AgentLayer> {
    if !image.own_kernel || request.config.no_agent || !backend.vsock_for_own_kernel_images() {
        return None;
    }
    let agent = AgentLayer::installed(&ctx.config().init_binary, &ctx.images())?;
    let top = layer_disk(&ctx.images(), &agent.digest, backend, image.layers.len());
    storage.push(top);
    vm.image_blob_ids.insert(agent.digest.to_string(), Empty {});
    Some(agent)
}

/// The kernel, initramfs and COW seed files of a container image's VM.
type ContainerBoot = (
    std::path::PathBuf,
    std::path::PathBuf,
    Vec<(&'static str, Vec<u8>)>,
);

/// A container image boots the default kernel with cocoon-init's
/// initramfs; the run config (the image's, with the request's command and
/// environment) goes onto the COW disk. The paths are pinned in the VM's
/// record: a later `kernel install` changes new VMs only.
fn container_boot(
    ctx: &Ctx,
    request: &CreateVm,
    image: &Image,
    backend: &dyn Backend,
) -> Result<ContainerBoot> {
    use cocoon_guest_proto::run::{RUN_CONFIG_PATH, RUN_CONFIG_VERSION, RunConfig};
    let config = ctx.config();
    if crate::doctor::kvm_is_pvm() && !backend.emulates_cpu() {
        return Err(crate::error::Error::Invalid(format!(
            "{} cannot boot container image {}: this host's KVM is PVM (kvm_pvm), which runs only \
             guest kernels built for it, not the default kernel; use --qemu (it emulates the CPU here)",
            backend.title(),
            image.name
        )));
    }
    let kernel = ctx.layout.kernels().resolve(&config.default_kernel)?;
    let init = crate::kernel::initramfs::find_init(&config.init_binary)?;
    let initrd = crate::kernel::initramfs::ensure(&kernel, &init)?;
    let image_config = image.config.clone().unwrap_or_default();
    for entry in &request.env {
        crate::image::config::check_env(entry).map_err(crate::error::Error::Invalid)?;
    }
    let run = RunConfig {
        version: RUN_CONFIG_VERSION,
        args: image_config.command(&request.command),
        env: image_config.env_with(&request.env),
        cwd: image_config.working_dir.clone(),
        user: image_config.user.clone(),
        agent: !request.config.no_agent,
    };
    let json = serde_json::to_vec(&run).expect("a run config serialises");
    Ok((
        backend.default_kernel(&kernel),
        initrd,
        vec![(RUN_CONFIG_PATH, json)],
    ))
}

/// The layers holding the image's kernel and initrd.
fn boot_layers(image: &Image) -> Result<(crate::digest::Digest, crate::digest::Digest)> {
    let missing = |what| VmError::MissingBootFile {
        image: image.name.clone(),
        what,
    };
    let kernel = image
        .kernel_layer
        .clone()
        .ok_or_else(|| missing("kernel"))?;
    let initrd = image
        .initrd_layer
        .clone()
        .ok_or_else(|| missing("initrd"))?;
    Ok((kernel, initrd))
}

/// The record of a new VM of `image`, before its disks are planned.
fn new_record(request: &CreateVm, id: &str, image: &Image, kind: ImageType, paths: &VmPaths) -> Vm {
    let mut config = request.config.clone();
    config.image = image.name.clone();
    config.image_digest = image.id.to_string();
    config.image_type = kind;
    // `--no-hotplug`: none (QEMU then boots a machine without PCIe).
    config.hotplug_slots = if config.devices.no_hotplug {
        0
    } else {
        backend::of(request.hypervisor).hotplug_slots()
    };
    Vm::new(
        id,
        request.hypervisor,
        config,
        paths.run_dir.clone(),
        paths.log_dir.clone(),
    )
}

/// The record and disks of a cloud-image VM: overlay (role cow, no
/// serial), data disks, then the cidata disk (read-only, no serial)
/// unless the guest is Windows.
fn plan_cloud(
    ctx: &mut Ctx,
    request: &CreateVm,
    id: &str,
    image: Image,
    overlay_override: Option<&Path>,
) -> Result<Plan> {
    let backend = backend::of(request.hypervisor);
    if !backend.boots_uefi() {
        return Err(VmError::CloudImageOnFirecracker { image: image.name }.into());
    }
    let files = backend.firmware(ctx.config());
    if let Some(missing) = files.iter().find(|f| !f.is_file()) {
        return Err(backend.firmware_missing(image.name, missing.clone()).into());
    }
    let firmware = files.into_iter().next();
    let base = cloud::blob_path(&ctx.images(), &image.id);
    let paths = ctx.layout.vm(id);
    let mut vm = new_record(request, id, &image, ImageType::Cloudimg, &paths);
    vm.image_blob_ids = [(image.id.to_string(), Empty {})].into_iter().collect();
    let direct_ok = direct_io_ok(&vm.config, &paths);
    let overlay = overlay_override.map_or_else(|| paths.overlay(), Path::to_path_buf);
    let mut storage = vec![StorageConfig {
        vmm_path: None,
        external: false,
        slot: None,
        path: overlay.clone(),
        ro: false,
        serial: String::new(),
        role: StorageRole::Cow,
        mount_point: String::new(),
        fstype: None,
        direct_io: Some(direct_ok),
        directio_mode: None,
    }];
    let (prep, data) = data_disks(&request.data_disks, request.hypervisor, &paths, direct_ok);
    storage.extend(data);
    if !vm.config.windows {
        storage.push(cidata_disk(&paths));
    }
    vm.storage_configs = storage;
    vm.boot_config = Some(BootConfig {
        kernel_path: None,
        initrd_path: None,
        cmdline: String::new(),
        firmware_path: firmware,
    });
    let size = vm.config.storage;
    Ok(Plan {
        vm,
        disks: prep,
        overlay: Some(OverlayPrep {
            base,
            path: overlay,
            size,
        }),
        agent_layer: None,
    })
}

/// The request's device switches, which its VMM must take.
fn check_switches(request: &CreateVm) -> Result<()> {
    let switches = &request.config.devices;
    if switches.mergeable && switches.shared_memory {
        return Err(VmError::MergeableSharedMemory {
            name: request.config.name.clone(),
        }
        .into());
    }
    let backend = backend::of(request.hypervisor);
    match backend.refused_switch(&request.config.devices) {
        Some((flag, reason)) => Err(VmError::SwitchRefused {
            name: request.config.name.clone(),
            vmm: backend.title(),
            flag,
            reason,
        }
        .into()),
        None => Ok(()),
    }
}

/// The kernel command line of a VM as it is now (layers, name, NICs).
pub(crate) fn cmdline_of(ctx: &Ctx, vm: &Vm) -> String {
    let nics: Vec<GuestNic> = vm
        .network_configs
        .iter()
        .map(|c| GuestNic {
            address: c.network.clone(),
        })
        .collect();
    cmdline::build(&CmdlineSpec {
        hypervisor: vm.hypervisor,
        layers: vm
            .storage_configs
            .iter()
            .filter(|d| d.role == StorageRole::Layer)
            .count(),
        vm_name: &vm.config.name,
        nics: &nics,
        dns: &ctx.config().dns,
        container: super::vm_query::boots_cocoon_init(ctx, vm),
        pci: vm.config.devices.pci || vm.config.hotplug_slots > 0,
        hotplug_ports: vm.config.hotplug_slots > 0,
    })
}

/// Writable disks use O_DIRECT unless the user or the filesystem says no.
pub(super) fn direct_io_ok(config: &VmConfig, paths: &VmPaths) -> bool {
    !config.no_direct_io && {
        let probe_dir = paths.run_dir.parent().unwrap_or(&paths.run_dir);
        create_private_dir(probe_dir).is_ok() && crate::vm::disks::supports_direct_io(probe_dir)
    }
}

/// The `--data-disk` disks (of `vm create` and `vm clone`): what to create
/// and how the VM sees them.
pub(super) fn data_disks(
    disks: &[DataDiskSpec],
    hypervisor: Hypervisor,
    paths: &VmPaths,
    direct_ok: bool,
) -> (Vec<DiskPrep>, Vec<StorageConfig>) {
    let backend = backend::of(hypervisor);
    let mut prep = Vec::new();
    let mut storage = Vec::new();
    for disk in disks {
        let path = paths.data_disk(&disk.name);
        prep.push(DiskPrep {
            path: path.clone(),
            size: disk.size,
            ext4: disk.fstype == FsType::Ext4,
            seed: Vec::new(),
            // Each data disk keeps its own filesystem UUID.
            template: false,
        });
        let direct = match disk.directio {
            DirectIo::On => true,
            DirectIo::Off => false,
            DirectIo::Auto => direct_ok,
        };
        if !backend.has_direct_io() && disk.directio != DirectIo::Auto {
            tracing::warn!(
                "data disk {}: {} has no direct I/O switch; directio={:?} is ignored",
                disk.name,
                backend.title(),
                disk.directio
            );
        }
        storage.push(StorageConfig {
            vmm_path: None,
            external: false,
            slot: None,
            path,
            ro: false,
            serial: disk.name.clone(),
            role: StorageRole::Data,
            mount_point: disk.mount.clone(),
            fstype: Some(disk.fstype),
            direct_io: backend.has_direct_io().then_some(direct),
            directio_mode: Some(disk.directio),
        });
    }
    (prep, storage)
}

/// Layers bottom-up, read-only, with the backend's serials.
fn layer_disks(image: &Image, dirs: &ImageDirs, backend: &dyn Backend) -> Vec<StorageConfig> {
    image
        .layers
        .iter()
        .enumerate()
        .map(|(j, digest)| layer_disk(dirs, digest, backend, j))
        .collect()
}

/// Layer `j` (from the bottom), read-only.
fn layer_disk(
    dirs: &ImageDirs,
    digest: &crate::digest::Digest,
    backend: &dyn Backend,
    j: usize,
) -> StorageConfig {
    StorageConfig {
        vmm_path: None,
        external: false,
        slot: None,
        path: dirs.blob(digest),
        ro: true,
        serial: backend.layer_serial(j),
        role: StorageRole::Layer,
        mount_point: String::new(),
        fstype: None,
        direct_io: None,
        directio_mode: None,
    }
}

/// The cidata entry of a VM's storage: read-only, no serial (docs/reference/cocoon-v0.3.8.md §4.2).
pub(crate) fn cidata_disk(paths: &VmPaths) -> StorageConfig {
    StorageConfig {
        vmm_path: None,
        external: false,
        slot: None,
        path: paths.cidata(),
        ro: true,
        serial: String::new(),
        role: StorageRole::Cidata,
        mount_point: String::new(),
        fstype: None,
        direct_io: None,
        directio_mode: None,
    }
}
