//! Static addresses from the `ip=` arguments, over rtnetlink. Debian's cloud
//! kernel has no `ip=` autoconfiguration built in (and it would run before
//! virtio_net is loaded), so PID 1 does what the contract's
//! `cocoon-network` script does, through the crate's netlink wrapper.

use std::fs;
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::cmdline::IpConfig;
use crate::netlink::{Netlink, same_subnet};

/// Brings `lo` up and configures every `ip=` interface, waiting up to
/// `timeout` for each to appear.
pub fn configure(ips: &[IpConfig], timeout: Duration) -> Result<(), String> {
    let mut netlink = Netlink::open().map_err(|e| format!("cannot open a netlink socket: {e}"))?;
    let lo = wait_for_interface("lo", Duration::ZERO)?;
    netlink
        .link_up(lo)
        .map_err(|e| format!("cannot bring lo up: {e}"))?;
    for (i, ip) in ips.iter().enumerate() {
        let dev = &ip.device;
        let index = wait_for_interface(dev, timeout)?;
        netlink
            .add_ipv4(index, ip.address, ip.prefix)
            .map_err(|e| format!("cannot add {}/{} to {dev}: {e}", ip.address, ip.prefix))?;
        netlink
            .link_up(index)
            .map_err(|e| format!("cannot bring {dev} up: {e}"))?;
        if let Some(gateway) = ip.gateway {
            let metric = u32::try_from(i).unwrap_or(u32::MAX);
            let onlink = !same_subnet(ip.address, gateway, ip.prefix);
            netlink
                .default_route(index, gateway, metric, onlink)
                .map_err(|e| format!("cannot add the default route via {gateway} on {dev}: {e}"))?;
        }
    }
    Ok(())
}

/// The interface's index, once the kernel has it (virtio_net probes in the
/// background).
fn wait_for_interface(name: &str, timeout: Duration) -> Result<u32, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
            && let Ok(index) = text.trim().parse()
        {
            return Ok(index);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no network interface {name} after {}s",
                timeout.as_secs()
            ));
        }
        sleep(Duration::from_millis(50));
    }
}
