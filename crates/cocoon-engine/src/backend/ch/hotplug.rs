//! `vm disk attach`/`detach` on Cloud Hypervisor: `vm.add-disk` with the
//! disk's device id (`cocoon-disk-<name>`) and `vm.remove-device`, the
//! running disks read from `vm.info`. `vm net`: `vm.add-net` of a NIC (its
//! TAP by name, as the launch gives it: CH runs in the VM's namespace)
//! and `vm.remove-device` of the NIC with its MAC.
//! `vm fs attach`/`detach`: `vm.add-fs` (`cocoon-fs-<tag>`) and
//! `vm.remove-device`; `vm device`: `vm.add-device`/`vm.remove-device`.

use std::path::Path;

use serde_json::json;
use vmm_api::ch::CloudHypervisor;
use vmm_api::ch::models::{DeviceConfig, FsConfig as ChFsConfig, NetConfig};

use super::restore::hot_plug_disk;
use crate::model::{FsConfig, NetworkConfig, PciDevice, StorageConfig, Vm};

/// Adds the disk; CH has no slots to report.
pub(super) async fn attach(
    vm: &Vm,
    socket: &Path,
    disk: &StorageConfig,
) -> Result<Option<u32>, String> {
    CloudHypervisor::new(socket)
        .add_disk(&hot_plug_disk(vm, disk))
        .await
        .map(|_| None)
        .map_err(|e| format!("vm.add-disk: {e}"))
}

/// Removes the device `id` unless the VMM no longer has it.
pub(super) async fn detach(socket: &Path, id: &str) -> Result<(), String> {
    if !disk_ids(socket).await?.iter().any(|d| d == id) {
        return Ok(());
    }
    CloudHypervisor::new(socket)
        .remove_device(id)
        .await
        .map_err(|e| format!("vm.remove-device {id}: {e}"))
}

/// The ids of every disk in the running VM's configuration.
pub(super) async fn disk_ids(socket: &Path) -> Result<Vec<String>, String> {
    config_ids(socket, "disks").await
}

/// `vm fs attach` needs the guest's memory shared with virtiofsd, which is
/// fixed at launch (upstream's rule: `--shared-memory`).
pub(super) fn fs_refusal(vm: &Vm) -> Option<String> {
    (!vm.config.devices.shared_memory).then(|| {
        format!(
            "VM {} was created without --shared-memory: virtiofsd maps the guest's memory, which must be shared, and that cannot change while the VM runs; create the VM with --shared-memory to attach virtio-fs shares",
            vm.config.name
        )
    })
}

/// `vm.add-fs` with the share's device id; CH has no slots to report.
pub(super) async fn attach_fs(socket: &Path, fs: &FsConfig) -> Result<Option<u32>, String> {
    let body = ChFsConfig {
        tag: fs.tag.clone(),
        socket: fs.socket.display().to_string(),
        num_queues: fs.num_queues,
        queue_size: fs.queue_size,
        id: Some(fs.device_id()),
        extra: Default::default(),
    };
    CloudHypervisor::new(socket)
        .add_fs(&body)
        .await
        .map(|_| None)
        .map_err(|e| e.to_string())
}

/// Removes the share device `id` unless the VMM no longer has it.
pub(super) async fn detach_fs(socket: &Path, id: &str) -> Result<(), String> {
    if !config_ids(socket, "fs").await?.iter().any(|d| d == id) {
        return Ok(());
    }
    CloudHypervisor::new(socket)
        .remove_device(id)
        .await
        .map_err(|e| format!("vm.remove-device {id}: {e}"))
}

/// The ids of the devices of one kind (`disks`, `fs`, `devices`) in the
/// running VM's configuration.
pub(super) async fn config_ids(socket: &Path, kind: &str) -> Result<Vec<String>, String> {
    let info = CloudHypervisor::new(socket)
        .info()
        .await
        .map_err(|e| format!("vm.info: {e}"))?;
    Ok(info.config[kind]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["id"].as_str().map(str::to_string))
        .collect())
}

/// Adds the NIC on its TAP, as `--net` gives one at launch; its device id
/// is `cocoon-net-<mac>` (a launch's NICs get CH's own `_net<N>`: removal
/// finds a NIC by its MAC).
pub(super) async fn attach_nic(socket: &Path, nic: &NetworkConfig) -> Result<(), String> {
    let mut extra = vmm_api::ch::models::Extra::default();
    for offload in ["offload_tso", "offload_ufo", "offload_csum"] {
        extra.insert(offload.into(), json!(true));
    }
    CloudHypervisor::new(socket)
        .add_net(&NetConfig {
            tap: Some(nic.tap.clone()),
            mac: Some(nic.mac.clone()),
            num_queues: Some(nic.num_queues.max(2)),
            queue_size: Some(nic.queue_size),
            id: Some(format!("cocoon-net-{}", nic.mac.replace(':', ""))),
            extra,
            ..Default::default()
        })
        .await
        .map(drop)
        .map_err(|e| format!("vm.add-net: {e}"))
}

/// Removes the NIC with MAC `mac` unless the VMM no longer has it.
pub(super) async fn detach_nic(socket: &Path, mac: &str) -> Result<(), String> {
    let Some((id, _)) = nics(socket)
        .await?
        .into_iter()
        .find(|(_, m)| m.eq_ignore_ascii_case(mac))
    else {
        return Ok(());
    };
    CloudHypervisor::new(socket)
        .remove_device(&id)
        .await
        .map_err(|e| format!("vm.remove-device {id}: {e}"))
}

/// The (id, MAC) of every NIC in the running VM's configuration.
pub(super) async fn nics(socket: &Path) -> Result<Vec<(String, String)>, String> {
    let info = CloudHypervisor::new(socket)
        .info()
        .await
        .map_err(|e| format!("vm.info: {e}"))?;
    Ok(info.config["net"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| {
            Some((
                n["id"].as_str()?.to_string(),
                n["mac"].as_str()?.to_string(),
            ))
        })
        .collect())
}

/// `vm.add-device` with the device's sysfs directory and id.
pub(super) async fn attach_device(
    socket: &Path,
    device: &PciDevice,
    sysfs: &Path,
) -> Result<Option<u32>, String> {
    let body = DeviceConfig {
        path: Some(sysfs.display().to_string()),
        id: Some(device.id.clone()),
        extra: Default::default(),
    };
    CloudHypervisor::new(socket)
        .add_device(&body)
        .await
        .map(|_| None)
        .map_err(|e| e.to_string())
}

/// Removes the device `id` unless the VMM no longer has it.
pub(super) async fn detach_device(socket: &Path, id: &str) -> Result<(), String> {
    if !config_ids(socket, "devices").await?.iter().any(|d| d == id) {
        return Ok(());
    }
    CloudHypervisor::new(socket)
        .remove_device(id)
        .await
        .map_err(|e| format!("vm.remove-device {id}: {e}"))
}
