//! Cloud images on Cloud Hypervisor (docs/reference/cocoon-v0.3.8.md §4.2, §9): UEFI firmware, a
//! qcow2 overlay over the image's blob, and a cloud-init NoCloud disk that is
//! attached on the first boot only.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use super::VmError;
use super::launch::VmPaths;
use super::lifecycle::{CreateVm, Plan, data_disks, direct_io_ok};
use super::overlay::OverlayPrep;
use crate::engine::Engine;
use crate::error::Result;
use crate::guest::cidata::{self, CidataSpec, Credentials};
use crate::image::cloud;
use crate::image::store::ImageDirs;
use crate::model::{
    BootConfig, Empty, Hypervisor, Image, ImageType, StorageConfig, StorageRole, Vm,
};

/// How long CH's serial socket may take to appear once the VM runs.
const SERIAL_SOCKET_WAIT: Duration = Duration::from_secs(2);

impl Engine {
    /// The record and disks of a cloud-image VM: overlay (role cow, no
    /// serial), data disks, then the cidata disk (read-only, no serial)
    /// unless the guest is Windows.
    pub(super) fn plan_cloud_vm(
        &mut self,
        request: &CreateVm,
        id: &str,
        image: Image,
        overlay_override: Option<&Path>,
    ) -> Result<Plan> {
        if request.hypervisor == Hypervisor::Firecracker {
            return Err(VmError::CloudImageOnFirecracker { image: image.name }.into());
        }
        let firmware = self.config().firmware_path.clone();
        if !firmware.is_file() {
            return Err(VmError::FirmwareMissing {
                image: image.name,
                path: firmware,
            }
            .into());
        }
        let base = cloud::blob_path(&ImageDirs::new(&self.config().root_dir), &image.id);
        let paths = self.vm_paths(id);
        let mut config = request.config.clone();
        config.image = image.name.clone();
        config.image_digest = image.id.to_string();
        config.image_type = ImageType::Cloudimg;
        let mut vm = Vm::new(
            id,
            request.hypervisor,
            config,
            paths.run_dir.clone(),
            paths.log_dir.clone(),
        );
        vm.image_blob_ids = [(image.id.to_string(), Empty {})].into_iter().collect();
        let direct_ok = direct_io_ok(&vm.config, &paths);
        let overlay = overlay_override.map_or_else(|| paths.overlay(), Path::to_path_buf);
        let mut storage = vec![StorageConfig {
            path: overlay.clone(),
            ro: false,
            serial: String::new(),
            role: StorageRole::Cow,
            mount_point: String::new(),
            fstype: None,
            direct_io: Some(direct_ok),
            directio_mode: None,
        }];
        let (prep, data) = data_disks(request, &paths, direct_ok);
        storage.extend(data);
        if !vm.config.windows {
            storage.push(cidata_disk(&paths));
        }
        vm.storage_configs = storage;
        vm.boot_config = Some(BootConfig {
            kernel_path: None,
            initrd_path: None,
            cmdline: String::new(),
            firmware_path: Some(firmware),
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
        })
    }

    /// Writes a cidata disk at `path` for the VM's current identity: ID,
    /// name, NICs, data-disk mounts.
    pub(super) fn write_cidata(
        &self,
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
            dns: &self.config().dns,
        };
        cidata::write(&spec, path).map_err(VmError::from)?;
        Ok(())
    }

    /// A clone of a cloud-image snapshot gets a cidata disk with its own
    /// identity (no credentials: the guest keeps the snapshot's). The
    /// snapshot's cidata entry, if any, is pointed at it; otherwise the disk
    /// is returned, for the caller to add once config.json is patched.
    pub(super) fn clone_cidata(&self, vm: &mut Vm) -> Result<Option<StorageConfig>> {
        if vm.config.image_type != ImageType::Cloudimg || vm.config.windows {
            return Ok(None);
        }
        let disk = cidata_disk(&VmPaths::of(vm));
        self.write_cidata(vm, &disk.path, None)?;
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
    pub(super) fn drop_cidata_after_first_boot(&mut self, vm: Vm) -> Result<Vm> {
        let direct_boot = vm
            .boot_config
            .as_ref()
            .is_some_and(|b| b.kernel_path.is_some());
        let has_cidata = vm
            .storage_configs
            .iter()
            .any(|d| d.role == StorageRole::Cidata);
        if !vm.first_booted || direct_boot || !has_cidata {
            return Ok(vm);
        }
        let (vm, _) = self.store().update_vm(&vm.id, "first boot done", |v| {
            v.storage_configs.retain(|d| d.role != StorageRole::Cidata);
        })?;
        let _ = std::fs::remove_file(VmPaths::of(&vm).cidata());
        Ok(vm)
    }
}

/// A snapshot taken on a cloud-image VM's first boot carries the cidata
/// disk in its VMM state; restoring it into the VM after its cidata disk was
/// dropped puts the entry back at the snapshot's position. Returns the path
/// to write the disk to (same identity; the guest has run cloud-init for it).
pub(super) fn restore_cidata_entry(
    vm: &mut Vm,
    saved: &[StorageConfig],
) -> Option<std::path::PathBuf> {
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

/// The cidata entry of a VM's storage: read-only, no serial (docs/reference/cocoon-v0.3.8.md §4.2).
pub(super) fn cidata_disk(paths: &VmPaths) -> StorageConfig {
    StorageConfig {
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

/// Connects to CH's serial port socket (UEFI boot), for the console relay.
pub(super) async fn connect_serial(paths: &VmPaths) -> std::io::Result<OwnedFd> {
    let socket = paths.serial_socket();
    let deadline = tokio::time::Instant::now() + SERIAL_SOCKET_WAIT;
    loop {
        match std::os::unix::net::UnixStream::connect(&socket) {
            Ok(stream) => return Ok(stream.into()),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
