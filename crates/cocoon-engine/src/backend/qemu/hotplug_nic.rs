//! `vm net` on QEMU. A NIC `vm net` adds is a `tap` netdev over its TAP
//! (by name, as `-netdev tap` at launch; QEMU runs in the VM's namespace)
//! and a `virtio-net-pci` device on a free hot-plug slot (the PCIe root
//! ports disk hot-plug made, shared with attached disks), both named
//! `cocoon-net-<mac>`; it keeps its slot, recorded: a fresh boot plugs it
//! there again before the guest runs, a restore has it on the command line.
//! Removal is `device_del`, its `DEVICE_DELETED`, then `netdev_del`. The
//! NICs a VM was made with sit on virtio-mmio (or the root bus), which has
//! no hot-plug: they cannot be removed while it runs.

use std::path::Path;
use std::time::Duration;

use vmm_api::qmp::{DeviceAdd, NetdevAdd, NetdevDel, Qmp, QomList};

use super::args::queue_pairs;
use crate::model::{NetworkConfig, Vm};

/// How long a guest may take to let go of a NIC being removed.
const UNPLUG_WAIT: Duration = Duration::from_secs(20);

const PREFIX: &str = "cocoon-net-";

/// The netdev and device id of the NIC with MAC `mac`.
pub(super) fn nic_id(mac: &str) -> String {
    format!("{PREFIX}{}", mac.replace(':', "").to_lowercase())
}

/// The MAC an id of [`nic_id`] names.
fn mac_of(id: &str) -> Option<String> {
    let hex = id.strip_prefix(PREFIX)?;
    if hex.len() != 12 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let pairs: Vec<&str> = (0..6).map(|i| &hex[2 * i..2 * i + 2]).collect();
    Some(pairs.join(":"))
}

/// Why NIC `nic` of `vm` cannot be taken out while it runs (None: it can).
pub(super) fn removal_refusal(vm: &Vm, index: usize, nic: &NetworkConfig) -> Option<String> {
    nic.slot.is_none().then(|| {
        format!(
            "NIC eth{index} was made with QEMU VM {} on a bus without hot-plug, so it cannot be taken out while the VM runs; keep at least {} NIC(s), or stop the VM and clone a snapshot of it with fewer (`cocoon vm clone --nics N`)",
            vm.config.name,
            index + 1
        )
    })
}

/// The netdev and the device of `nic` on `slot`: as QMP commands and as
/// `-netdev`/`-device` arguments.
fn parts(nic: &NetworkConfig, slot: u32) -> (NetdevAdd, DeviceAdd, String, String) {
    let id = nic_id(&nic.mac);
    let pairs = queue_pairs(nic);
    let port = format!("cocoon-hp{slot}");
    let netdev = NetdevAdd {
        kind: "tap".into(),
        id: id.clone(),
        ifname: nic.tap.clone(),
        script: "no".into(),
        downscript: "no".into(),
        vhost: None,
        queues: (pairs > 1).then_some(pairs),
    };
    let mut properties = serde_json::Map::new();
    properties.insert("netdev".into(), id.clone().into());
    properties.insert("mac".into(), nic.mac.clone().into());
    properties.insert("romfile".into(), "".into());
    if pairs > 1 {
        properties.insert("mq".into(), true.into());
        properties.insert("vectors".into(), (2 * pairs + 2).into());
    }
    let device = DeviceAdd {
        driver: "virtio-net-pci".into(),
        bus: Some(port.clone()),
        id: Some(id.clone()),
        properties,
    };
    let queues = if pairs > 1 {
        format!(",queues={pairs}")
    } else {
        String::new()
    };
    let netdev_arg = format!(
        "tap,id={id},ifname={},script=no,downscript=no{queues}",
        nic.tap
    );
    let device_arg = format!(
        "virtio-net-pci,netdev={id},id={id},mac={},romfile=,bus={port}{}",
        nic.mac,
        super::args::multiqueue(nic, true)
    );
    (netdev, device, netdev_arg, device_arg)
}

/// The first hot-plug slot no attached disk, hot-plugged NIC, virtio-fs
/// share or passed-through device of the record takes.
pub(super) fn free_slot(vm: &Vm) -> Result<u32, String> {
    let taken: Vec<u32> = vm
        .storage_configs
        .iter()
        .filter_map(|d| d.slot)
        .chain(vm.network_configs.iter().filter_map(|n| n.slot))
        .chain(vm.filesystems.iter().filter_map(|f| f.slot))
        .chain(vm.pci_devices.iter().filter_map(|d| d.slot))
        .collect();
    (0..vm.config.hotplug_slots)
        .find(|n| !taken.contains(n))
        .ok_or_else(|| {
            format!(
                "all {} hot-plug slots are taken (by attached disks, NICs, shares and devices); detach one or remove a NIC first",
                vm.config.hotplug_slots
            )
        })
}

/// Adds the NIC on the first free slot; returns it.
pub(super) async fn attach(
    vm: &Vm,
    socket: &Path,
    nic: &NetworkConfig,
) -> Result<Option<u32>, String> {
    if let Some(reason) = super::hotplug::refusal(vm) {
        return Err(reason);
    }
    let slot = free_slot(vm)?;
    plug(&mut connect(socket).await?, nic, slot).await?;
    Ok(Some(slot))
}

/// The netdev and the device; the netdev goes again if the device cannot
/// be added.
async fn plug(qmp: &mut Qmp, nic: &NetworkConfig, slot: u32) -> Result<(), String> {
    let (netdev, device, _, _) = parts(nic, slot);
    qmp.execute(&netdev)
        .await
        .map_err(|e| format!("netdev_add: {e}"))?;
    if let Err(e) = qmp.execute(&device).await {
        let _ = qmp.execute(&NetdevDel { id: netdev.id }).await;
        return Err(format!("device_add: {e}"));
    }
    Ok(())
}

/// A fresh boot's hot-plugged NICs, plugged before the guest runs.
pub(super) async fn plug_recorded(qmp: &mut Qmp, vm: &Vm) -> Result<(), String> {
    for nic in &vm.network_configs {
        if let Some(slot) = nic.slot {
            plug(qmp, nic, slot).await?;
        }
    }
    Ok(())
}

/// The QMP calls of [`plug_recorded`], for `vm debug`.
pub(super) fn plug_calls(vm: &Vm) -> Vec<(String, String, serde_json::Value)> {
    let mut calls = Vec::new();
    for nic in &vm.network_configs {
        if let Some(slot) = nic.slot {
            let (netdev, device, _, _) = parts(nic, slot);
            calls.push((
                "QMP".into(),
                "netdev_add".into(),
                serde_json::to_value(netdev).unwrap_or_default(),
            ));
            calls.push((
                "QMP".into(),
                "device_add".into(),
                serde_json::to_value(device).unwrap_or_default(),
            ));
        }
    }
    calls
}

/// The launch arguments of a restore's hot-plugged NICs (its saved device
/// state expects them, each on its slot).
pub(super) fn launch_nics(vm: &Vm, restoring: bool, push: &mut impl FnMut(&str, String)) {
    for nic in vm.network_configs.iter().filter(|_| restoring) {
        if let Some(slot) = nic.slot {
            let (_, _, netdev, device) = parts(nic, slot);
            push("-netdev", netdev);
            push("-device", device);
        }
    }
}

/// Removes the NIC with MAC `mac` (waiting for QEMU to say the device is
/// gone) and its netdev; either already gone is success.
pub(super) async fn detach(socket: &Path, mac: &str) -> Result<(), String> {
    let mut qmp = connect(socket).await?;
    let id = nic_id(mac);
    if peripherals(&mut qmp).await?.contains(&id) {
        qmp.device_del_and_wait(&id, UNPLUG_WAIT)
            .await
            .map_err(|e| format!("device_del {id}: {e}"))?;
    }
    match qmp.execute(&NetdevDel { id: id.clone() }).await {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("not found") => Ok(()),
        Err(e) => Err(format!("netdev_del {id}: {e}")),
    }
}

/// The MACs of the hot-plugged NICs QEMU has.
pub(super) async fn macs(socket: &Path) -> Result<Vec<String>, String> {
    let mut qmp = connect(socket).await?;
    Ok(peripherals(&mut qmp)
        .await?
        .iter()
        .filter_map(|id| mac_of(id))
        .collect())
}

/// The ids of the devices given one (`/machine/peripheral`'s children).
async fn peripherals(qmp: &mut Qmp) -> Result<Vec<String>, String> {
    let list = qmp
        .execute(&QomList {
            path: "/machine/peripheral".into(),
        })
        .await
        .map_err(|e| format!("qom-list: {e}"))?;
    Ok(list
        .into_iter()
        .filter(|p| p.kind.starts_with("child<"))
        .map(|p| p.name)
        .collect())
}

async fn connect(socket: &Path) -> Result<Qmp, String> {
    Qmp::connect(socket)
        .await
        .map_err(|e| format!("cannot reach QEMU's QMP socket: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_the_mac() {
        let id = nic_id("0A:0b:0c:0d:0e:0f");
        assert_eq!(id, "cocoon-net-0a0b0c0d0e0f");
        assert_eq!(mac_of(&id).as_deref(), Some("0a:0b:0c:0d:0e:0f"));
        assert_eq!(mac_of("cocoon-disk-a"), None);
        assert_eq!(mac_of("cocoon-net-zz"), None);
    }
}
