//! Attaching a VM's NICs through CNI: the namespace, a CNI ADD per NIC, the
//! TAP wiring, and the leases to record; on any failure, everything made so
//! far is released. (Bridge mode is in `bridge.rs`.)

use std::io;
use std::path::Path;

use serde_json::Value;

use super::cni::{self, ConfList};
use super::{
    Attached, Marker, NetContext, NetError, NetRequest, bridge, create_netns, in_namespace, netns,
    queue_size, queues, tap_name, wire, wire_error, wire_nic,
};
use crate::model::{IpConfig, NetBackend, NetworkConfig, NetworkLease};

/// Creates the VM's NICs. On failure everything made so far is released.
pub fn attach(ctx: &NetContext, request: &NetRequest<'_>) -> Result<Attached, NetError> {
    if let Some(bridge) = request.bridge {
        return bridge::attach_bridge(ctx, request, bridge);
    }
    let list = cni::pick(cni::load(&ctx.conf_dir)?, request.network, &ctx.conf_dir)?;
    let ns_path = netns::path_in(&ctx.scope, request.vm_id);
    // Marked before anything is made, so even a crash right after leaves a trace.
    ctx.mark(
        request.vm_id,
        &Marker {
            netns: Some(ns_path.clone()),
            taps: vec![],
        },
    );
    create_netns(&ns_path)?;
    let nics = CniNics {
        ctx,
        request,
        list: &list,
        ns_path: &ns_path,
    };
    let results = nics.add_all()?;
    let mut configs = nics.configs(&results);
    let wired = match nics.wire(&configs) {
        Ok(w) => w,
        Err(e) => {
            nics.rollback(results.len(), &results);
            return Err(e);
        }
    };
    for (config, w) in configs.iter_mut().zip(&wired) {
        config.mac = w.mac.clone();
    }
    let leases = leases(request.vm_id, &list.name, &configs, &results);
    Ok(Attached {
        configs,
        leases,
        network: list.name,
    })
}

/// The NICs of one VM on one CNI network, in its namespace.
struct CniNics<'a> {
    ctx: &'a NetContext,
    request: &'a NetRequest<'a>,
    list: &'a ConfList,
    ns_path: &'a Path,
}

impl CniNics<'_> {
    /// CNI ADD of every NIC (`eth0`, `eth1`, …): their results, in order.
    fn add_all(&self) -> Result<Vec<Value>, NetError> {
        let mut results: Vec<Value> = Vec::new();
        for i in 0..self.request.nics as usize {
            let ifname = format!("eth{i}");
            let call = self.ctx.call(self.request.vm_id, self.ns_path, &ifname);
            match cni::add(self.list, &call) {
                Ok(result) => results.push(result),
                Err(e) => {
                    // A failed ADD may have half-configured this NIC too.
                    self.rollback(i + 1, &results);
                    return Err(e);
                }
            }
        }
        Ok(results)
    }

    /// CNI DEL of the first `added` NICs, last first, then the namespace.
    fn rollback(&self, added: usize, results: &[Value]) {
        for i in (0..added).rev() {
            let ifname = format!("eth{i}");
            let call = self.ctx.call(self.request.vm_id, self.ns_path, &ifname);
            if let Err(e) = cni::del(self.list, &call, results.get(i)) {
                tracing::warn!("rollback of eth{i}: {e}");
            }
        }
        match netns::delete(self.ns_path) {
            Ok(()) => self.ctx.unmark(self.request.vm_id),
            Err(e) => tracing::warn!("rollback: cannot remove {}: {e}", self.ns_path.display()),
        }
    }

    /// The VMM's view of each NIC (its MAC comes with the wiring).
    fn configs(&self, results: &[Value]) -> Vec<NetworkConfig> {
        let request = self.request;
        let n_queues = queues(request.hypervisor, request.cpu);
        let queue_size = queue_size(request);
        (0..request.nics as usize)
            .map(|i| NetworkConfig {
                tap: tap_name("tap", request.vm_id, i),
                mac: String::new(),
                num_queues: n_queues,
                queue_size,
                backend: NetBackend::Cni,
                slot: None,
                bridge_dev: String::new(),
                netns_path: self.ns_path.display().to_string(),
                network: cni::ipv4_of(&results[i]),
            })
            .collect()
    }

    /// Wires each NIC's TAP to its veth inside the namespace.
    fn wire(&self, configs: &[NetworkConfig]) -> Result<Vec<wire::Wired>, NetError> {
        let nics: Vec<wire::Nic> = configs
            .iter()
            .enumerate()
            .map(|(i, c)| wire_nic(c, i, None))
            .collect();
        in_namespace(Some(self.ns_path), async |handle| {
            let mut out = Vec::new();
            for nic in &nics {
                out.push(
                    wire::wire(handle, nic)
                        .await
                        .map_err(|e| io::Error::other(format!("{}: {e}", nic.tap)))?,
                );
            }
            Ok(out)
        })
        .map_err(wire_error(self.request.vm_id))
    }
}

/// The lease of each NIC, with the CNI result DEL will need.
fn leases(
    vm_id: &str,
    network_name: &str,
    configs: &[NetworkConfig],
    results: &[Value],
) -> Vec<NetworkLease> {
    configs
        .iter()
        .zip(results)
        .enumerate()
        .map(|(i, (c, result))| NetworkLease {
            id: format!("{vm_id}-eth{i}"),
            vm_id: vm_id.to_string(),
            if_name: format!("eth{i}"),
            network_name: network_name.to_string(),
            network: c.network.clone().unwrap_or(IpConfig {
                ip: String::new(),
                gateway: String::new(),
                prefix: 0,
            }),
            cni_result: Some(result.clone()),
        })
        .collect()
}
