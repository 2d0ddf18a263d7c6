//! Bringing a VMM up from snapshot state: CH's config.json patched for the
//! VM it becomes, the restore calls on both VMMs, and CH's NIC hot-swap.

use std::path::Path;

use serde_json::{Value, json};
use vmm_api::ApiError;
use vmm_api::ch::CloudHypervisor;
use vmm_api::ch::models::{DiskConfig, MemoryRestoreMode, NetConfig, RestoreConfig, file_url};

use crate::model::Vm;

/// Rewrites a CH snapshot's `config.json` for `vm`: its disk paths and I/O
/// settings, consoles, vsock socket, boot files, entropy source, CPUs and memory. What
/// else CH saved (device ids, topology, platform) is kept once
/// `snapshot::trust::check_ch_config` found nothing in it that attaches a
/// host file; `num_queues` is never changed (CH cannot restore a different
/// count).
pub fn patch_ch_config(config: &mut Value, vm: &Vm) -> Result<(), String> {
    patch_disks(config, vm)?;
    patch_consoles(config, vm);
    patch_vsock(config, vm)?;
    let c = &vm.config;
    config["cpus"]["boot_vcpus"] = json!(c.cpu);
    if config["cpus"]["max_vcpus"]
        .as_u64()
        .is_some_and(|m| m < u64::from(c.cpu))
    {
        config["cpus"]["max_vcpus"] = json!(c.cpu);
    }
    // Memory `vm resize` plugged in is restored as CH saved it, beside the
    // boot size: the two add up to the VM's.
    let plugged = config["memory"]["hotplugged_size"].as_u64().unwrap_or(0);
    config["memory"]["size"] = json!(c.memory.saturating_sub(plugged));
    patch_payload(config, vm);
    // The entropy source is the engine's, as on its command line.
    if config["rng"].is_object() {
        config["rng"]["src"] = json!("/dev/urandom");
    }
    if config["debug_console"].is_object() {
        set_mode(&mut config["debug_console"], "Off");
    }
    patch_balloon(config, vm)
}

/// The VM's disk paths and I/O settings, disk for disk.
fn patch_disks(config: &mut Value, vm: &Vm) -> Result<(), String> {
    let disks = config["disks"].as_array_mut().map_or(0, |d| d.len());
    if disks != vm.storage_configs.len() {
        return Err(format!(
            "the snapshot has {disks} disks, the VM {}",
            vm.storage_configs.len()
        ));
    }
    let c = &vm.config;
    if let Some(list) = config["disks"].as_array_mut() {
        for (disk, storage) in list.iter_mut().zip(&vm.storage_configs) {
            disk["path"] = json!(storage.path);
            disk["queue_size"] = json!(if c.disk_queue_size == 0 {
                512
            } else {
                c.disk_queue_size
            });
            disk["direct"] = json!(storage.direct_io.unwrap_or(!storage.ro && !c.no_direct_io));
        }
    }
    Ok(())
}

/// The serial port and console as a fresh start of this VM sets them.
fn patch_consoles(config: &mut Value, vm: &Vm) {
    if crate::backend::direct_boot(vm) {
        // As a fresh start: serial on the VMM's terminal, hvc0 on a new PTY
        // (the saved PTY path belonged to the old process).
        set_mode(&mut config["serial"], "Tty");
        set_mode(&mut config["console"], "Pty");
    } else {
        // UEFI: the guest's ttyS0 on this VM's serial socket, no virtio console.
        set_mode(&mut config["serial"], "Socket");
        config["serial"]["socket"] = json!(crate::layout::VmPaths::of(vm).serial_socket());
        set_mode(&mut config["console"], "Off");
    }
}

/// The vsock device on this VM's own socket (the saved one is the source
/// VM's, still in use by it). The device is in CH's saved state or not:
/// it can be moved, never added or removed, so the VM must agree.
fn patch_vsock(config: &mut Value, vm: &Vm) -> Result<(), String> {
    let saved = config["vsock"].is_object();
    if saved == vm.config.no_agent {
        return Err(if saved {
            "the snapshot has a vsock device, the VM has none (--no-agent)".to_string()
        } else {
            "the snapshot has no vsock device, the VM has one".to_string()
        });
    }
    if saved {
        let socket = crate::layout::VmPaths::of(vm).vsock_socket();
        config["vsock"]["socket"] = json!(socket);
        config["vsock"]["cid"] = json!(crate::backend::GUEST_CID);
    }
    Ok(())
}

/// Boot files from the VM's own (checked) record, never the snapshot's
/// (CH does not reload them on restore, but keeps them as its config).
fn patch_payload(config: &mut Value, vm: &Vm) {
    let Some(payload) = config["payload"].as_object_mut() else {
        return;
    };
    let boot = vm.boot_config.clone().unwrap_or_default();
    for (key, path) in [
        ("kernel", boot.kernel_path),
        ("initramfs", boot.initrd_path),
        ("firmware", boot.firmware_path),
    ] {
        match path {
            Some(path) => {
                payload.insert(key.into(), json!(path));
            }
            None => {
                payload.remove(key);
            }
        }
    }
}

/// The balloon the VM gets on a fresh start (`backend::launch::balloon`).
fn patch_balloon(config: &mut Value, vm: &Vm) -> Result<(), String> {
    let object = config
        .as_object_mut()
        .ok_or("config.json is not an object")?;
    match crate::backend::launch::balloon(&vm.config) {
        None => {
            object.remove("balloon");
        }
        Some(size) if object.get("balloon").is_some_and(|b| !b.is_null()) => {
            object["balloon"]["size"] = json!(size);
        }
        Some(size) => {
            object.insert(
                "balloon".into(),
                json!({"size": size, "deflate_on_oom": true, "free_page_reporting": true}),
            );
        }
    }
    Ok(())
}

fn set_mode(port: &mut Value, mode: &str) {
    if !port.is_object() {
        *port = json!({});
    }
    let object = port.as_object_mut().expect("object");
    object.remove("file");
    object.remove("socket");
    object.insert("mode".into(), json!(mode));
}

/// CH: restore from `source` (a directory with the patched config.json),
/// swap the snapshot's NICs for the VM's when they differ; the VM stays
/// paused (the caller resumes it).
pub async fn ch_restore(
    api: &CloudHypervisor,
    vm: &Vm,
    source: &Path,
    on_demand: bool,
) -> Result<(), ApiError> {
    let config = RestoreConfig {
        source_url: file_url(source),
        prefault: None,
        memory_restore_mode: on_demand.then_some(MemoryRestoreMode::OnDemand),
        resume: None,
        extra: Default::default(),
    };
    api.restore(&config, vmm_api::transfer_timeout(vm.config.memory))
        .await?;
    let info = api.info().await?;
    let saved: Vec<&Value> = info.config["net"]
        .as_array()
        .map_or(vec![], |n| n.iter().collect());
    let same = saved.len() == vm.network_configs.len()
        && saved.iter().zip(&vm.network_configs).all(|(s, n)| {
            s["tap"].as_str() == Some(n.tap.as_str()) && s["mac"].as_str() == Some(n.mac.as_str())
        });
    if !same {
        // The guest keeps its NIC state from the snapshot; a hot-swap gives
        // it devices with this VM's TAPs and MACs (the restored ones opened
        // throwaway TAPs under the source's names).
        for net in &saved {
            if let Some(id) = net["id"].as_str() {
                api.remove_device(id).await?;
            }
        }
        for n in &vm.network_configs {
            api.add_net(&NetConfig {
                tap: Some(n.tap.clone()),
                mac: Some(n.mac.clone()),
                num_queues: Some(n.num_queues.max(2)),
                queue_size: Some(n.queue_size),
                ..Default::default()
            })
            .await?;
        }
    }
    // Disks of the VM beyond those the snapshot had (a clone's cidata disk
    // when the snapshot was taken after the first boot) are hot-plugged.
    let restored = info.config["disks"].as_array().map_or(0, Vec::len);
    for disk in vm.storage_configs.iter().skip(restored) {
        api.add_disk(&hot_plug_disk(vm, disk)).await?;
    }
    Ok(())
}

/// `vm.add-disk` body of a disk, as `--disk` would have given it.
pub(super) fn hot_plug_disk(vm: &Vm, disk: &crate::model::StorageConfig) -> DiskConfig {
    let c = &vm.config;
    let qcow2 = disk.path.extension().is_some_and(|e| e == "qcow2");
    let mut extra = vmm_api::ch::models::Extra::default();
    extra.insert(
        "image_type".into(),
        json!(if qcow2 { "Qcow2" } else { "Raw" }),
    );
    DiskConfig {
        path: Some(disk.path.display().to_string()),
        readonly: Some(disk.ro),
        direct: Some(disk.direct_io.unwrap_or(!disk.ro && !c.no_direct_io)),
        num_queues: Some(c.cpu),
        queue_size: Some(if c.disk_queue_size == 0 {
            512
        } else {
            c.disk_queue_size
        }),
        id: disk.device_id(),
        serial: (!disk.serial.is_empty()).then(|| disk.serial.clone()),
        sparse: Some(!disk.ro),
        extra,
    }
}
