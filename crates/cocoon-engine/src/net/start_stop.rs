//! What a VM's stop and start do to its NICs: a stop quiesces them (see
//! [`super::wire::quiesce`]); a start restores the wiring, and first
//! rebuilds the namespace if a host reboot destroyed it.

use std::path::{Path, PathBuf};

use super::{
    NetContext, NetError, cni, create_netns, in_namespace, netns, vmm_netns, wire, wire_error,
    wire_nic,
};
use crate::model::{NetBackend, NetworkConfig, NetworkLease, Vm};

/// Makes a VM's NICs ready for its VMM: rebuilds a namespace a host reboot
/// destroyed (CNI DEL of the stale lease, ADD asking for the recorded IP,
/// recorded MAC restored), and restores the wiring a stop quiesced.
pub fn prepare_start(ctx: &NetContext, vm: &Vm, leases: &[NetworkLease]) -> Result<(), NetError> {
    let cni_nics: Vec<(usize, &NetworkConfig)> = vm
        .network_configs
        .iter()
        .enumerate()
        .filter(|(_, c)| c.backend == NetBackend::Cni)
        .collect();
    if cni_nics.is_empty() {
        // A VM `vm net --nics 0` left without NICs: its VMM runs in its
        // namespace, which a host reboot may have taken.
        if let Some(ns) = vmm_netns(vm).filter(|ns| !netns::exists(ns)) {
            create_netns(&ns)?;
        }
        return Ok(());
    }
    let ns = PathBuf::from(&cni_nics[0].1.netns_path);
    if !netns::exists(&ns) {
        rebuild_namespace(ctx, vm, leases, &ns, &cni_nics)?;
    }
    let nics: Vec<wire::Nic> = cni_nics
        .iter()
        .map(|(i, c)| wire_nic(c, *i, Some(c.mac.clone())))
        .collect();
    in_namespace(Some(&ns), async |handle| {
        for nic in &nics {
            wire::wire(handle, nic).await?;
        }
        Ok(())
    })
    .map_err(wire_error(&vm.id))?;
    Ok(())
}

/// A new namespace at `ns` with each NIC added back by CNI, asking for the
/// IP it had.
fn rebuild_namespace(
    ctx: &NetContext,
    vm: &Vm,
    leases: &[NetworkLease],
    ns: &Path,
    cni_nics: &[(usize, &NetworkConfig)],
) -> Result<(), NetError> {
    tracing::info!(
        "VM {}: rebuilding its network namespace {}",
        vm.id,
        ns.display()
    );
    let lists = cni::load(&ctx.conf_dir)?;
    create_netns(ns)?;
    for (i, config) in cni_nics {
        let lease = leases.iter().find(|l| l.if_name == format!("eth{i}"));
        let name = lease.map_or(vm.config.network.as_str(), |l| l.network_name.as_str());
        let list = cni::pick(lists.clone(), name, &ctx.conf_dir)?;
        let ifname = format!("eth{i}");
        let mut call = ctx.call(&vm.id, ns, &ifname);
        // The old lease is still held in IPAM; release it, then ask for it back.
        let _ = cni::del(&list, &call, lease.and_then(|l| l.cni_result.as_ref()));
        if let Some(ip) = &config.network {
            call.args = Some(format!("IgnoreUnknown=1;IP={}", ip.ip));
        }
        cni::add(&list, &call)?;
    }
    Ok(())
}

/// Quiesces the NICs of a stopped VM (see [`wire::quiesce`]).
pub fn quiesce(vm: &Vm) -> Result<(), NetError> {
    let Some(ns) = vmm_netns(vm) else {
        return Ok(());
    };
    if !netns::exists(&ns) {
        return Ok(());
    }
    let nics: Vec<wire::Nic> = vm
        .network_configs
        .iter()
        .enumerate()
        .map(|(i, c)| wire_nic(c, i, None))
        .collect();
    in_namespace(Some(&ns), async |handle| {
        for nic in &nics {
            wire::quiesce(handle, nic).await?;
        }
        Ok(())
    })
    .map_err(wire_error(&vm.id))
}
