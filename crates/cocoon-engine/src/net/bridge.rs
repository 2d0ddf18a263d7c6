//! Bridge mode (`--bridge DEV`): persistent TAPs with random MACs enslaved
//! to an existing host bridge, in the host's namespace, and their deletion.
//! Kept apart from CNI mode, which shares none of these steps.

use std::io;

use netlink_packet_route::link::{LinkAttribute, LinkMessage};

use super::{
    Attached, Marker, NetContext, NetError, NetRequest, in_namespace, queue_size, queues, tap,
    tap_name, wire,
};
use crate::model::{NetBackend, NetworkConfig};

pub(super) fn attach_bridge(
    ctx: &NetContext,
    request: &NetRequest<'_>,
    bridge: &str,
) -> Result<Attached, NetError> {
    let bad = |reason: String| NetError::Bridge {
        dev: bridge.to_string(),
        reason,
    };
    let n_queues = queues(request.hypervisor, request.cpu);
    let configs: Vec<NetworkConfig> = (0..request.nics as usize)
        .map(|i| NetworkConfig {
            tap: tap_name(ctx.bridge_tap_prefix(), request.vm_id, i),
            mac: random_mac(),
            num_queues: n_queues,
            queue_size: queue_size(request),
            backend: NetBackend::Bridge,
            slot: None,
            bridge_dev: bridge.to_string(),
            netns_path: String::new(),
            network: None,
        })
        .collect();
    ctx.mark(
        request.vm_id,
        &Marker {
            netns: None,
            taps: configs.iter().map(|c| c.tap.clone()).collect(),
        },
    );
    if let Err(e) = make_taps(bridge, &configs) {
        if delete_links(configs.iter().map(|c| c.tap.clone()).collect()).is_ok() {
            ctx.unmark(request.vm_id);
        }
        return Err(bad(e.to_string()));
    }
    Ok(Attached {
        configs,
        leases: vec![],
        network: String::new(),
    })
}

/// Creates each NIC's TAP and enslaves it to `bridge`, with the bridge's MTU.
pub(super) fn make_taps(bridge: &str, configs: &[NetworkConfig]) -> io::Result<()> {
    in_namespace(None, async |handle| {
        // Checked over netlink: /sys shows the namespace sysfs was mounted in.
        let br = wire::link(handle, bridge)
            .await?
            .filter(is_bridge)
            .ok_or_else(|| io::Error::other("no such bridge in this network namespace"))?;
        let mtu = br
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
            .unwrap_or(1500);
        for c in configs {
            tap::create_persistent(&c.tap, c.num_queues > 2)?;
            let tap = wire::link(handle, &c.tap)
                .await?
                .ok_or_else(|| io::Error::other("TAP vanished"))?;
            wire::tap_up(handle, tap.header.index, mtu, Some(br.header.index))
                .await
                .map_err(|e| io::Error::other(format!("cannot attach {}: {e}", c.tap)))?;
        }
        Ok(())
    })
}

fn is_bridge(link: &LinkMessage) -> bool {
    use netlink_packet_route::link::{InfoKind, LinkInfo};
    link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge))),
        _ => false,
    })
}

/// A random locally administered unicast MAC.
pub(super) fn random_mac() -> String {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).expect("random bytes");
    bytes[0] = (bytes[0] | 0x02) & 0xfe;
    wire::format_mac(&bytes)
}

/// Deletes the host links (bridge TAPs) named, those that exist.
pub(super) fn delete_links(names: Vec<String>) -> io::Result<()> {
    in_namespace(None, async |handle| {
        for name in &names {
            if let Some(l) = wire::link(handle, name).await? {
                let _ = handle.link().del(l.header.index).execute().await;
            }
        }
        Ok(())
    })
}
