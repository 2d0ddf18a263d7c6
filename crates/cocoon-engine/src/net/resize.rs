//! `vm net --nics N` (upstream #42): one more NIC for a running VM, made as
//! its create made the others (CNI ADD of `eth<i>` in the VM's namespace on
//! the VM's network and a TAP wired to it; or a TAP on the VM's bridge),
//! and one NIC's release (CNI DEL with its lease, its TAP deleted). Every
//! step is idempotent, so crash recovery can release whatever lies beyond
//! the record ([`release_beyond`]).

use std::io;
use std::path::{Path, PathBuf};

use super::cni;
use super::{
    Marker, NetContext, NetError, bridge, in_namespace, netns, queues, tap_name, wire, wire_error,
    wire_nic,
};
use crate::model::{IpConfig, NetBackend, NetworkConfig, NetworkLease, Vm};

/// Most NICs `vm net` gives a VM: its PCI bus has 32 slots, shared with
/// its disks and other devices.
pub const MAX_NICS: usize = 16;

/// NIC `index` of `vm`, made like its others (or like the one it had
/// before `vm net --nics 0`).
/// On failure nothing of it is left.
pub fn add_nic(
    ctx: &NetContext,
    vm: &Vm,
    index: usize,
) -> Result<(NetworkConfig, Option<NetworkLease>), NetError> {
    let first = vm.nic_template().ok_or_else(|| NetError::Wire {
        nic: format!("eth{index} of VM {}", vm.id),
        source: io::Error::other("the VM has no NIC to model a new one on"),
    })?;
    let n_queues = queues(vm.hypervisor, vm.config.cpu);
    if first.backend == NetBackend::Bridge {
        return add_bridge_nic(ctx, vm, index, first, n_queues);
    }
    let ns = PathBuf::from(&first.netns_path);
    let list = cni::pick(cni::load(&ctx.conf_dir)?, &vm.config.network, &ctx.conf_dir)?;
    let ifname = format!("eth{index}");
    let call = ctx.call(&vm.id, &ns, &ifname);
    let result = match cni::add(&list, &call) {
        Ok(r) => r,
        Err(e) => {
            let _ = cni::del(&list, &call, None);
            return Err(e);
        }
    };
    let mut config = NetworkConfig {
        tap: tap_name("tap", &vm.id, index),
        mac: String::new(),
        num_queues: n_queues,
        queue_size: first.queue_size,
        backend: NetBackend::Cni,
        slot: None,
        bridge_dev: String::new(),
        netns_path: first.netns_path.clone(),
        network: cni::ipv4_of(&result),
    };
    let nic = wire_nic(&config, index, None);
    let wired = in_namespace(Some(&ns), async |handle| wire::wire(handle, &nic).await)
        .map_err(wire_error(&vm.id));
    match wired {
        Ok(w) => config.mac = w.mac,
        Err(e) => {
            let _ = cni::del(&list, &call, Some(&result));
            let _ = delete_in(&ns, &config.tap);
            return Err(e);
        }
    }
    let lease = NetworkLease {
        id: format!("{}-{ifname}", vm.id),
        vm_id: vm.id.clone(),
        if_name: ifname,
        network_name: list.name.clone(),
        network: config.network.clone().unwrap_or(IpConfig {
            ip: String::new(),
            gateway: String::new(),
            prefix: 0,
        }),
        cni_result: Some(result),
    };
    Ok((config, Some(lease)))
}

/// NIC `index` of a bridge-mode VM: a TAP on its bridge.
fn add_bridge_nic(
    ctx: &NetContext,
    vm: &Vm,
    index: usize,
    first: &NetworkConfig,
    n_queues: u32,
) -> Result<(NetworkConfig, Option<NetworkLease>), NetError> {
    let config = NetworkConfig {
        tap: tap_name(ctx.bridge_tap_prefix(), &vm.id, index),
        mac: bridge::random_mac(),
        num_queues: n_queues,
        queue_size: first.queue_size,
        backend: NetBackend::Bridge,
        slot: None,
        bridge_dev: first.bridge_dev.clone(),
        netns_path: String::new(),
        network: None,
    };
    let mut taps: Vec<String> = (0..index)
        .map(|i| tap_name(ctx.bridge_tap_prefix(), &vm.id, i))
        .collect();
    taps.push(config.tap.clone());
    ctx.mark(&vm.id, &Marker { netns: None, taps });
    if let Err(e) = bridge::make_taps(&first.bridge_dev, std::slice::from_ref(&config)) {
        let _ = bridge::delete_links(vec![config.tap.clone()]);
        return Err(NetError::Bridge {
            dev: first.bridge_dev.clone(),
            reason: e.to_string(),
        });
    }
    Ok((config, None))
}

/// Releases NIC `index` (`config`) of `vm`: CNI DEL with its lease (or on
/// the VM's network without one), then its TAP. Gone already is success.
pub fn remove_nic(
    ctx: &NetContext,
    vm: &Vm,
    index: usize,
    config: &NetworkConfig,
    lease: Option<&NetworkLease>,
) -> Result<(), NetError> {
    if config.backend == NetBackend::Bridge {
        return bridge::delete_links(vec![config.tap.clone()]).map_err(|e| NetError::Bridge {
            dev: config.bridge_dev.clone(),
            reason: e.to_string(),
        });
    }
    let ns = PathBuf::from(&config.netns_path);
    if !netns::exists(&ns) {
        return Ok(());
    }
    let ifname = format!("eth{index}");
    del_ifname(ctx, vm, &ns, &ifname, lease)?;
    delete_in(&ns, &config.tap).map_err(wire_error(&vm.id))
}

/// Releases what a crash left of NICs at `keep` and beyond (the record
/// has `keep`): their CNI interfaces and TAPs in the VM's namespace, or
/// their bridge TAPs. `ns`: the VM's namespace (CNI mode).
pub fn release_beyond(
    ctx: &NetContext,
    vm: &Vm,
    keep: usize,
    ns: Option<&Path>,
    leases: &[NetworkLease],
) -> Result<(), NetError> {
    match ns {
        Some(ns) if netns::exists(ns) => {
            let ifnames = super::release::cni_ifnames(ns).map_err(wire_error(&vm.id))?;
            for ifname in ifnames {
                let Some(i) = ifname
                    .strip_prefix("eth")
                    .and_then(|n| n.parse::<usize>().ok())
                else {
                    continue;
                };
                if i < keep {
                    continue;
                }
                let lease = leases.iter().find(|l| l.if_name == ifname);
                del_ifname(ctx, vm, ns, &ifname, lease)?;
            }
            let taps: Vec<String> = (keep..MAX_NICS)
                .map(|i| tap_name("tap", &vm.id, i))
                .collect();
            for tap in taps {
                delete_in(ns, &tap).map_err(wire_error(&vm.id))?;
            }
            Ok(())
        }
        Some(_) => Ok(()),
        None => {
            let taps = (keep..MAX_NICS)
                .map(|i| tap_name(ctx.bridge_tap_prefix(), &vm.id, i))
                .collect();
            bridge::delete_links(taps).map_err(|e| NetError::Bridge {
                dev: String::new(),
                reason: e.to_string(),
            })
        }
    }
}

/// CNI DEL of `ifname` in `ns`, on its lease's network (or the VM's).
fn del_ifname(
    ctx: &NetContext,
    vm: &Vm,
    ns: &Path,
    ifname: &str,
    lease: Option<&NetworkLease>,
) -> Result<(), NetError> {
    let name = lease.map_or(vm.config.network.as_str(), |l| l.network_name.as_str());
    let list = cni::pick(cni::load(&ctx.conf_dir)?, name, &ctx.conf_dir)?;
    let call = ctx.call(&vm.id, ns, ifname);
    cni::del(&list, &call, lease.and_then(|l| l.cni_result.as_ref()))
}

/// Deletes the link `name` in `ns` if it is there.
fn delete_in(ns: &Path, name: &str) -> io::Result<()> {
    in_namespace(Some(ns), async |handle| {
        if let Some(l) = wire::link(handle, name).await? {
            handle
                .link()
                .del(l.header.index)
                .execute()
                .await
                .map_err(|e| io::Error::other(format!("cannot delete {name}: {e}")))?;
        }
        Ok(())
    })
}
