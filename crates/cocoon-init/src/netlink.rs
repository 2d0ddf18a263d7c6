//! The few rtnetlink requests the guest side makes, synchronously: PID 1
//! applying the `ip=` arguments at boot (`init/net.rs`) and the agent
//! re-applying a clone's NICs (`agent/identity.rs`). One request at a
//! time, each acknowledged before the next; no async runtime in PID 1.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    pub fn open() -> io::Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Netlink { socket, seq: 0 })
    }

    /// Brings the link down or up, setting its MAC on the way (many
    /// drivers refuse a new MAC while the link is up).
    pub fn set_link(&mut self, index: u32, mac: Option<[u8; 6]>, up: bool) -> io::Result<()> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.header.change_mask = LinkFlags::Up;
        if up {
            link.header.flags = LinkFlags::Up;
        }
        if let Some(mac) = mac {
            link.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        self.request(RouteNetlinkMessage::SetLink(link), 0)
            .map(drop)
    }

    pub fn link_up(&mut self, index: u32) -> io::Result<()> {
        self.set_link(index, None, true)
    }

    /// Removes every IPv4 address of the link.
    pub fn flush_ipv4(&mut self, index: u32) -> io::Result<()> {
        let mut query = AddressMessage::default();
        query.header.family = AddressFamily::Inet;
        let all = self.request(RouteNetlinkMessage::GetAddress(query), NLM_F_DUMP)?;
        for message in all {
            if let RouteNetlinkMessage::NewAddress(address) = message
                && address.header.index == index
                && address.header.family == AddressFamily::Inet
            {
                self.request(RouteNetlinkMessage::DelAddress(address), 0)?;
            }
        }
        Ok(())
    }

    /// Adds (or keeps) `ip/prefix`: REPLACE, so a second boot of a
    /// restored VM, or a repeated identity, finds it already there.
    pub fn add_ipv4(&mut self, index: u32, ip: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let mut address = AddressMessage::default();
        address.header.family = AddressFamily::Inet;
        address.header.prefix_len = prefix;
        address.header.index = index;
        address.attributes = vec![
            AddressAttribute::Local(IpAddr::V4(ip)),
            AddressAttribute::Address(IpAddr::V4(ip)),
        ];
        // /31 and /32 have no broadcast address.
        if prefix < 31 {
            let broadcast = u32::from(ip) | (u32::MAX >> prefix);
            address
                .attributes
                .push(AddressAttribute::Broadcast(Ipv4Addr::from(broadcast)));
        }
        let flags = NLM_F_CREATE | NLM_F_REPLACE;
        self.request(RouteNetlinkMessage::NewAddress(address), flags)
            .map(drop)
    }

    /// The default route via `gateway` out of `index`, replacing the one
    /// with the same `metric`. Each NIC gets its own metric (its position:
    /// the first is preferred), so two NICs with gateways do not collide; a
    /// gateway outside the address's subnet (a /32 from a CNI plugin) is
    /// marked on-link, or the kernel refuses the route.
    pub fn default_route(
        &mut self,
        index: u32,
        gateway: Ipv4Addr,
        metric: u32,
        onlink: bool,
    ) -> io::Result<()> {
        let mut route = RouteMessage::default();
        route.header.address_family = AddressFamily::Inet;
        route.header.table = RouteHeader::RT_TABLE_MAIN;
        route.header.protocol = RouteProtocol::Boot;
        route.header.scope = RouteScope::Universe;
        route.header.kind = RouteType::Unicast;
        if onlink {
            route.header.flags = RouteFlags::Onlink;
        }
        route.attributes = vec![
            RouteAttribute::Gateway(RouteAddress::Inet(gateway)),
            RouteAttribute::Oif(index),
            RouteAttribute::Priority(metric),
        ];
        let flags = NLM_F_CREATE | NLM_F_REPLACE;
        self.request(RouteNetlinkMessage::NewRoute(route), flags)
            .map(drop)
    }

    /// Sends one request; collects a dump's messages, or waits for the ack.
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq += 1;
        let mut header = NetlinkHeader::default();
        // NLM_F_DUMP shares bits with NLM_F_REPLACE: compare, not mask.
        let ack = if flags == NLM_F_DUMP { 0 } else { NLM_F_ACK };
        header.flags = NLM_F_REQUEST | flags | ack;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut replies = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let length = reply.header.length as usize;
                if reply.header.sequence_number == self.seq {
                    match reply.payload {
                        NetlinkPayload::InnerMessage(m) => replies.push(m),
                        NetlinkPayload::Done(_) => return Ok(replies),
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                None => Ok(replies),
                                Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                            };
                        }
                        _ => {}
                    }
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
        }
    }
}

/// Whether `other` is in `address/prefix` (else a gateway there is on-link).
pub fn same_subnet(address: Ipv4Addr, other: Ipv4Addr, prefix: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    u32::from(address) & mask == u32::from(other) & mask
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
