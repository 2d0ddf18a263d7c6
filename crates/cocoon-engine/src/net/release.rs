//! Releasing a VM's network: CNI DEL with the recorded leases, then the
//! namespace (`detach`), or, for a VM whose record a crash lost, DEL of
//! whatever is left in its namespace (`release_orphan`).

use std::io;
use std::path::Path;

use super::{NetContext, NetError, bridge, cni, in_namespace, netns, vmm_netns};
use crate::model::{NetBackend, NetworkLease, Vm};

/// Releases every NIC of a VM: CNI DEL with the cached results, then the
/// namespace (which takes the TAPs and veths with it); bridge TAPs are deleted.
pub fn detach(ctx: &NetContext, vm: &Vm, leases: &[NetworkLease]) -> Result<(), NetError> {
    let bridge_taps: Vec<String> = vm
        .network_configs
        .iter()
        .filter(|c| c.backend == NetBackend::Bridge)
        .map(|c| c.tap.clone())
        .collect();
    if !bridge_taps.is_empty() {
        bridge::delete_links(bridge_taps).map_err(|e| NetError::Bridge {
            dev: vm.network_configs[0].bridge_dev.clone(),
            reason: e.to_string(),
        })?;
    }
    let Some(ns) = vmm_netns(vm) else {
        ctx.unmark(&vm.id);
        return Ok(());
    };
    let lists = cni::load(&ctx.conf_dir).unwrap_or_default();
    let mut first_error = None;
    for lease in leases {
        let Some(list) = lists.iter().find(|l| l.name == lease.network_name) else {
            tracing::warn!(
                "CNI network {:?} of {} is gone; its lease cannot be released by DEL",
                lease.network_name,
                lease.if_name
            );
            continue;
        };
        let call = ctx.call(&vm.id, &ns, &lease.if_name);
        if let Err(e) = cni::del(list, &call, lease.cni_result.as_ref()) {
            first_error.get_or_insert(e);
        }
    }
    netns::delete(&ns).map_err(|source| NetError::Namespace {
        path: ns.clone(),
        source,
    })?;
    ctx.unmark(&vm.id);
    first_error.map_or(Ok(()), Err)
}

/// Releases the namespace of a VM that has no record any more (a crash
/// lost it): CNI DEL of every `eth*` in it against every configured network
/// (DEL of something a plugin does not know is a no-op), then the namespace.
pub fn release_orphan(ctx: &NetContext, vm_id: &str, ns: &Path) {
    let ifnames = cni_ifnames(ns).unwrap_or_default();
    for list in cni::load(&ctx.conf_dir).unwrap_or_default() {
        for ifname in &ifnames {
            let _ = cni::del(&list, &ctx.call(vm_id, ns, ifname), None);
        }
    }
    if let Err(e) = netns::delete(ns) {
        tracing::warn!("gc: cannot remove {}: {e}", ns.display());
    }
}

/// The names of the CNI interfaces (`eth*`) in the namespace `ns`.
pub(super) fn cni_ifnames(ns: &Path) -> io::Result<Vec<String>> {
    in_namespace(Some(ns), async |handle| {
        use futures_util::TryStreamExt;
        use netlink_packet_route::link::{LinkAttribute, LinkMessage};
        let links: Vec<LinkMessage> = handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(links
            .iter()
            .filter_map(|l| {
                l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) if n.starts_with("eth") => Some(n.clone()),
                    _ => None,
                })
            })
            .collect())
    })
}
