//! `vm disk attach`/`detach` on Cloud Hypervisor: `vm.add-disk` with the
//! disk's device id (`cocoon-disk-<name>`) and `vm.remove-device`, the
//! running disks read from `vm.info`.

use std::path::Path;

use vmm_api::ch::CloudHypervisor;

use super::restore::hot_plug_disk;
use crate::model::{StorageConfig, Vm};

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
    let info = CloudHypervisor::new(socket)
        .info()
        .await
        .map_err(|e| format!("vm.info: {e}"))?;
    Ok(info.config["disks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["id"].as_str().map(str::to_string))
        .collect())
}
