//! `vm disk attach`/`detach` on QEMU. Its machines hot-plug only on PCIe
//! root ports made at launch (virtio-mmio, microvm's own bus, has no
//! hot-plug, and neither has the PCIe root bus): a VM gets
//! [`SLOTS`] of them (`cocoon-hp<N>`, microvm then with `pcie=on`), recorded
//! as its `hotplug_slots` so a VM from before them (and its snapshots)
//! launches as it always did.
//!
//! An attached disk is a block node over the host file (`file`, or
//! `host_device` for a block device; raw, so no format node) and a
//! `virtio-blk-pci` device on a free slot, both named by the disk's device
//! id, its serial the disk's name. Detach is `device_del`, its
//! `DEVICE_DELETED`, then `blockdev-del`. Each disk keeps its slot: a fresh
//! boot plugs it there again before the guest runs, a restore has it there
//! on the command line.
//!
//! A virtio-fs share (`vm fs attach`) takes a slot the same way: a chardev
//! to virtiofsd's socket and a `vhost-user-fs-pci` over it, both named by
//! the share's device id; it lives as long as the VMM (see `ops::vm_fs`).

use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::Duration;

use vmm_api::qmp::{
    BlockdevAdd, BlockdevCacheOptions, BlockdevDel, ChardevAdd, ChardevRemove, DeviceAdd, Qmp,
    QomGet, QomList, QueryChardev,
};

use super::args::value;
use crate::model::{StorageConfig, Vm};

/// Root ports a new QEMU VM gets.
pub const SLOTS: u32 = 8;

/// How long a guest may take to let go of a device being removed.
const UNPLUG_WAIT: Duration = Duration::from_secs(20);

/// The root port of slot `n`.
fn port(n: u32) -> String {
    format!("cocoon-hp{n}")
}

/// The launch arguments of the VM's root ports.
pub(super) fn root_ports(vm: &Vm, push: &mut impl FnMut(&str, String)) {
    for n in 0..vm.config.hotplug_slots {
        push(
            "-device",
            format!("pcie-root-port,id={},chassis={}", port(n), n + 1),
        );
    }
}

/// The launch arguments of the attached disks of a restore (its saved
/// device state expects them, each on its slot): each one's node and
/// device. A fresh boot plugs them before the guest runs instead
/// ([`plug_recorded`]), so they are hot-plugged devices its guest can let
/// go of (a device on the command line is powered on for the guest, and
/// only the guest can take it out again).
pub(super) fn launch_disks(vm: &Vm, restoring: bool, push: &mut impl FnMut(&str, String)) {
    for disk in vm.storage_configs.iter().filter(|_| restoring) {
        let (Some(id), Some(slot)) = (disk.device_id(), disk.slot) else {
            continue;
        };
        let node = node(disk, &id);
        let mut blockdev = format!(
            "driver={},node-name={id},filename={},read-only={}",
            node.driver,
            value(&disk.path),
            on_off(disk.ro)
        );
        if let Some(cache) = node.cache {
            blockdev.push_str(&format!(
                ",cache.direct={}",
                on_off(cache.direct == Some(true))
            ));
        }
        push("-blockdev", blockdev);
        push("-device", device(disk, &id, slot).1);
    }
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

/// The block node of an attached disk.
fn node(disk: &StorageConfig, id: &str) -> BlockdevAdd {
    let block_device = std::fs::metadata(&disk.path).is_ok_and(|m| m.file_type().is_block_device());
    BlockdevAdd {
        driver: if block_device { "host_device" } else { "file" }.into(),
        node_name: id.to_string(),
        filename: disk.path.display().to_string(),
        read_only: Some(disk.ro),
        cache: disk.direct_io.map(|direct| BlockdevCacheOptions {
            direct: Some(direct),
        }),
    }
}

/// Why `vm` cannot hot-plug: made with `--no-hotplug`, or from before the slots.
pub(super) fn refusal(vm: &Vm) -> Option<String> {
    if vm.config.hotplug_slots > 0 {
        return None;
    }
    if vm.config.devices.no_hotplug {
        return Some(format!(
            "VM {} was created with --no-hotplug (no PCIe root ports), so nothing can be plugged into it; create it without --no-hotplug to attach disks, NICs or shares",
            vm.config.name
        ));
    }
    Some(format!(
        "VM {} was created before QEMU VMs had hot-plug slots (PCIe root ports made at launch), so nothing can be plugged into it; create a new VM (or clone a snapshot of one made since) to attach disks",
        vm.config.name
    ))
}

/// Adds the node and the device on the first slot no disk of the record
/// takes; the node goes again if the device cannot be added.
pub(super) async fn attach(
    vm: &Vm,
    socket: &Path,
    disk: &StorageConfig,
) -> Result<Option<u32>, String> {
    let slot = super::hotplug_nic::free_slot(vm)?;
    plug(&mut connect(socket).await?, disk, slot).await?;
    Ok(Some(slot))
}

/// A fresh boot's attached disks, plugged before the guest runs.
pub(super) async fn plug_recorded(qmp: &mut Qmp, vm: &Vm) -> Result<(), String> {
    for disk in &vm.storage_configs {
        if let (true, Some(slot)) = (disk.external, disk.slot) {
            plug(qmp, disk, slot).await?;
        }
    }
    Ok(())
}

/// The QMP calls of [`plug_recorded`], for `vm debug`.
pub(super) fn plug_calls(vm: &Vm) -> Vec<(String, String, serde_json::Value)> {
    let mut calls = Vec::new();
    for disk in &vm.storage_configs {
        let (Some(id), Some(slot)) = (disk.device_id(), disk.slot) else {
            continue;
        };
        let node = serde_json::to_value(node(disk, &id)).unwrap_or_default();
        let device = serde_json::to_value(device(disk, &id, slot).0).unwrap_or_default();
        calls.push(("QMP".into(), "blockdev-add".into(), node));
        calls.push(("QMP".into(), "device_add".into(), device));
    }
    calls
}

/// The device of an attached disk on `slot`: as `device_add` and as
/// `-device`.
fn device(disk: &StorageConfig, id: &str, slot: u32) -> (DeviceAdd, String) {
    let mut properties = serde_json::Map::new();
    properties.insert("drive".into(), id.into());
    properties.insert("serial".into(), disk.serial.clone().into());
    let add = DeviceAdd {
        driver: "virtio-blk-pci".into(),
        bus: Some(port(slot)),
        id: Some(id.to_string()),
        properties,
    };
    let arg = format!(
        "virtio-blk-pci,drive={id},id={id},serial={},bus={}",
        disk.serial,
        port(slot)
    );
    (add, arg)
}

/// The node and the device of `disk` on `slot`; the node goes again if
/// the device cannot be added.
async fn plug(qmp: &mut Qmp, disk: &StorageConfig, slot: u32) -> Result<(), String> {
    let id = disk.device_id().ok_or("not an attached disk")?;
    qmp.execute(&node(disk, &id))
        .await
        .map_err(|e| format!("blockdev-add: {e}"))?;
    if let Err(e) = qmp.execute(&device(disk, &id, slot).0).await {
        let _ = qmp.execute(&BlockdevDel { node_name: id }).await;
        return Err(format!("device_add: {e}"));
    }
    Ok(())
}

/// Removes the device (waiting for QEMU to say it is gone) and its node;
/// either already gone is success.
pub(super) async fn detach(socket: &Path, id: &str) -> Result<(), String> {
    let mut qmp = connect(socket).await?;
    let (device, node) = present(&mut qmp, id).await?;
    if device {
        qmp.device_del_and_wait(id, UNPLUG_WAIT)
            .await
            .map_err(|e| format!("device_del {id}: {e}"))?;
    }
    if node {
        qmp.execute(&BlockdevDel {
            node_name: id.to_string(),
        })
        .await
        .map_err(|e| format!("blockdev-del {id}: {e}"))?;
    }
    Ok(())
}

/// Whether the device `id` and the node `id` exist.
async fn present(qmp: &mut Qmp, id: &str) -> Result<(bool, bool), String> {
    let blocks = qmp
        .query_block()
        .await
        .map_err(|e| format!("query-block: {e}"))?;
    let device_path = format!("/machine/peripheral/{id}/");
    let device = blocks.iter().any(|b| {
        b.qdev
            .as_deref()
            .is_some_and(|q| q.starts_with(&device_path))
    });
    let node = blocks.iter().any(|b| {
        b.inserted
            .as_ref()
            .is_some_and(|i| i.node_name.as_deref() == Some(id))
    });
    Ok((device, node))
}

/// The attached disks' device ids: devices with a block node.
pub(super) async fn disk_ids(socket: &Path) -> Result<Vec<String>, String> {
    let mut qmp = connect(socket).await?;
    let blocks = qmp
        .query_block()
        .await
        .map_err(|e| format!("query-block: {e}"))?;
    Ok(blocks
        .iter()
        .filter_map(|b| {
            let id = b.qdev.as_deref()?.strip_prefix("/machine/peripheral/")?;
            let id = id.split('/').next()?;
            id.starts_with(crate::model::ATTACHED_DISK_PREFIX)
                .then(|| id.to_string())
        })
        .collect())
}

async fn connect(socket: &Path) -> Result<Qmp, String> {
    Qmp::connect(socket)
        .await
        .map_err(|e| format!("cannot reach QEMU's QMP socket: {e}"))
}

/// Why `vm` cannot take a virtio-fs share: no slots (see [`refusal`]).
/// Whether its memory is shared is asked of QEMU at attach.
pub(super) fn fs_refusal(vm: &Vm) -> Option<String> {
    refusal(vm)
}

/// A chardev to virtiofsd's socket and a `vhost-user-fs-pci` on a free
/// slot, both named by the share's device id; the chardev goes again if
/// the device cannot be added. vhost-user maps guest memory into
/// virtiofsd: the memory backend must be shared (`--shared-memory`, or a
/// vsock device, whose vhost-user back-end needs the same).
pub(super) async fn attach_fs(
    vm: &Vm,
    socket: &Path,
    fs: &crate::model::FsConfig,
) -> Result<Option<u32>, String> {
    let slot = super::hotplug_nic::free_slot(vm)?;
    let mut qmp = connect(socket).await?;
    let shared = qmp
        .execute(&QomGet {
            path: format!("/objects/{}", super::vsock::MEMORY),
            property: "share".into(),
        })
        .await
        .is_ok_and(|v| v == serde_json::Value::Bool(true));
    if !shared {
        return Err("its guest memory is not shared, and virtiofsd must map it (this cannot change while the VM runs); create the VM with --shared-memory to attach virtio-fs shares".to_string());
    }
    let id = fs.device_id();
    qmp.execute(&ChardevAdd::unix_client(&id, &fs.socket))
        .await
        .map_err(|e| format!("chardev-add: {e}"))?;
    let mut properties = serde_json::Map::new();
    properties.insert("chardev".into(), id.clone().into());
    properties.insert("tag".into(), fs.tag.clone().into());
    properties.insert("num-request-queues".into(), fs.num_queues.into());
    properties.insert("queue-size".into(), fs.queue_size.into());
    let device = DeviceAdd {
        driver: "vhost-user-fs-pci".into(),
        bus: Some(port(slot)),
        id: Some(id.clone()),
        properties,
    };
    if let Err(e) = qmp.execute(&device).await {
        let _ = qmp.execute(&ChardevRemove { id }).await;
        return Err(format!("device_add: {e}"));
    }
    Ok(Some(slot))
}

/// Removes the device (waiting for QEMU to say it is gone) and its
/// chardev; either already gone is success.
pub(super) async fn detach_fs(socket: &Path, id: &str) -> Result<(), String> {
    let mut qmp = connect(socket).await?;
    unplug_device(&mut qmp, id).await?;
    let chardevs = qmp
        .execute(&QueryChardev)
        .await
        .map_err(|e| format!("query-chardev: {e}"))?;
    if chardevs.iter().any(|c| c.label == id) {
        qmp.execute(&ChardevRemove { id: id.to_string() })
            .await
            .map_err(|e| format!("chardev-remove {id}: {e}"))?;
    }
    Ok(())
}

/// `device_del` of `id` and its `DEVICE_DELETED`, unless QEMU has no
/// such device.
async fn unplug_device(qmp: &mut Qmp, id: &str) -> Result<(), String> {
    let devices = qmp
        .execute(&QomList {
            path: "/machine/peripheral".into(),
        })
        .await
        .map_err(|e| format!("qom-list: {e}"))?;
    if devices.iter().any(|d| d.name == id) {
        qmp.device_del_and_wait(id, UNPLUG_WAIT)
            .await
            .map_err(|e| format!("device_del {id}: {e}"))?;
    }
    Ok(())
}

/// `device_add vfio-pci host=<bdf>` on a free slot.
pub(super) async fn attach_device(
    vm: &Vm,
    socket: &Path,
    device: &crate::model::PciDevice,
) -> Result<Option<u32>, String> {
    let slot = super::hotplug_nic::free_slot(vm)?;
    let mut properties = serde_json::Map::new();
    properties.insert("host".into(), device.bdf.clone().into());
    let add = DeviceAdd {
        driver: "vfio-pci".into(),
        bus: Some(port(slot)),
        id: Some(device.id.clone()),
        properties,
    };
    connect(socket)
        .await?
        .execute(&add)
        .await
        .map_err(|e| format!("device_add: {e}"))?;
    Ok(Some(slot))
}

/// Removes the passed-through device `id`; gone already is success.
pub(super) async fn detach_device(socket: &Path, id: &str) -> Result<(), String> {
    unplug_device(&mut connect(socket).await?, id).await
}
