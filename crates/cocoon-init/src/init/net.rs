//! Static addresses from the `ip=` arguments, over rtnetlink. Debian's cloud
//! kernel has no `ip=` autoconfiguration built in (and it would run before
//! virtio_net is loaded), so PID 1 does what the contract's
//! `cocoon-network` script does. A synchronous netlink socket suffices:
//! one request at a time, each acknowledged before the next.

use std::fs;
use std::net::Ipv4Addr;
use std::thread::sleep;
use std::time::{Duration, Instant};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::cmdline::IpConfig;

struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    fn open() -> Result<Netlink, String> {
        let mut socket =
            Socket::new(NETLINK_ROUTE).map_err(|e| format!("cannot open a netlink socket: {e}"))?;
        socket
            .bind_auto()
            .map_err(|e| format!("cannot bind a netlink socket: {e}"))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| format!("cannot connect a netlink socket: {e}"))?;
        Ok(Netlink { socket, seq: 0 })
    }

    /// Sends one request and waits for the kernel's acknowledgement.
    fn request(&mut self, message: RouteNetlinkMessage, flags: u16) -> std::io::Result<()> {
        self.seq += 1;
        let mut request = NetlinkMessage::from(message);
        request.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        request.header.sequence_number = self.seq;
        request.finalize();
        let mut buf = vec![0u8; request.buffer_len()];
        request.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        loop {
            let (reply, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < reply.len() {
                let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[offset..])
                    .map_err(|e| std::io::Error::other(format!("bad netlink reply: {e}")))?;
                let length = usize::try_from(message.header.length).unwrap_or(usize::MAX);
                if message.header.sequence_number == self.seq
                    && let NetlinkPayload::Error(error) = message.payload
                {
                    return match error.code {
                        None => Ok(()),
                        Some(_) => Err(error.to_io()),
                    };
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
        }
    }

    fn link_up(&mut self, index: u32) -> std::io::Result<()> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.header.flags = LinkFlags::Up;
        link.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(link), 0)
    }

    fn add_address(&mut self, index: u32, address: Ipv4Addr, prefix: u8) -> std::io::Result<()> {
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.prefix_len = prefix;
        message.header.index = index;
        message
            .attributes
            .push(AddressAttribute::Local(address.into()));
        message
            .attributes
            .push(AddressAttribute::Address(address.into()));
        if prefix < 31 {
            let broadcast = u32::from(address) | (u32::MAX >> prefix);
            message
                .attributes
                .push(AddressAttribute::Broadcast(Ipv4Addr::from(broadcast)));
        }
        // REPLACE: a second boot of a restored VM finds it already there.
        self.request(
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// A default route via `gateway` out of `index`. Each NIC's default
    /// route gets its own metric (the first `ip=` is preferred), so two NICs
    /// with gateways do not collide.
    fn add_default_route(
        &mut self,
        index: u32,
        gateway: Ipv4Addr,
        metric: u32,
        onlink: bool,
    ) -> std::io::Result<()> {
        let mut route = RouteMessage::default();
        route.header.address_family = AddressFamily::Inet;
        route.header.table = RouteHeader::RT_TABLE_MAIN;
        route.header.protocol = RouteProtocol::Boot;
        route.header.scope = RouteScope::Universe;
        route.header.kind = RouteType::Unicast;
        if onlink {
            route.header.flags = RouteFlags::Onlink;
        }
        route
            .attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        route.attributes.push(RouteAttribute::Oif(index));
        route.attributes.push(RouteAttribute::Priority(metric));
        self.request(
            RouteNetlinkMessage::NewRoute(route),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }
}

/// Brings `lo` up and configures every `ip=` interface, waiting up to
/// `timeout` for each to appear.
pub fn configure(ips: &[IpConfig], timeout: Duration) -> Result<(), String> {
    let mut netlink = Netlink::open()?;
    let lo = wait_for_interface("lo", Duration::ZERO)?;
    netlink
        .link_up(lo)
        .map_err(|e| format!("cannot bring lo up: {e}"))?;
    for (i, ip) in ips.iter().enumerate() {
        let dev = &ip.device;
        let index = wait_for_interface(dev, timeout)?;
        netlink
            .add_address(index, ip.address, ip.prefix)
            .map_err(|e| format!("cannot add {}/{} to {dev}: {e}", ip.address, ip.prefix))?;
        netlink
            .link_up(index)
            .map_err(|e| format!("cannot bring {dev} up: {e}"))?;
        if let Some(gateway) = ip.gateway {
            let metric = u32::try_from(i).unwrap_or(u32::MAX);
            let onlink = !same_subnet(ip.address, gateway, ip.prefix);
            netlink
                .add_default_route(index, gateway, metric, onlink)
                .map_err(|e| format!("cannot add the default route via {gateway} on {dev}: {e}"))?;
        }
    }
    Ok(())
}

/// A gateway outside the address's subnet (a /32 from a CNI plugin) is
/// still on the link: the route must say so or the kernel refuses it.
pub fn same_subnet(address: Ipv4Addr, other: Ipv4Addr, prefix: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    u32::from(address) & mask == u32::from(other) & mask
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateways_are_on_link_or_in_the_subnet() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert!(same_subnet(ip("10.0.0.5"), ip("10.0.0.1"), 24));
        assert!(!same_subnet(ip("10.0.1.5"), ip("10.0.0.1"), 24));
        assert!(!same_subnet(ip("10.0.0.5"), ip("10.0.0.1"), 32));
        assert!(same_subnet(ip("10.0.0.5"), ip("192.168.0.1"), 0));
    }
}
