//! Inside a VM's namespace: the TAP the VMM opens, joined to the CNI veth by
//! an ingress qdisc and a u32 match-all filter with a mirred egress redirect
//! in each direction (no bridge in the data path, tc-redirect-tap style).
//! Runs on a namespace thread with its own runtime: the netlink socket binds
//! to the namespace it is opened in.

use std::io;

use futures_util::TryStreamExt;
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkUnspec};

use super::tap;

/// tc's `protocol all`, which the kernel compares in network byte order; in
/// host order it installs `protocol [768]` and matches nothing.
#[allow(clippy::cast_possible_truncation)] // ETH_P_ALL is 0x0003: it fits.
const PROTOCOL_ALL: u16 = (libc::ETH_P_ALL as u16).to_be();
const INGRESS_PARENT: u32 = 0xffff_0000;

/// One NIC to wire.
#[derive(Debug, Clone)]
pub struct Nic {
    /// The CNI interface in the namespace (`eth<i>`).
    pub veth: String,
    pub tap: String,
    pub multi_queue: bool,
    /// Restore this MAC on the veth (a rebuilt namespace after a reboot).
    pub mac: Option<String>,
}

/// What the guest needs from the wiring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wired {
    /// The veth's MAC, which the guest takes.
    pub mac: String,
    pub mtu: u32,
}

fn err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

pub(crate) fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

pub(crate) async fn connect() -> io::Result<Handle> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    Ok(handle)
}

pub(crate) async fn link(handle: &Handle, name: &str) -> io::Result<Option<LinkMessage>> {
    match handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(link) => Ok(link),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(err(format!("cannot look up {name}"), e)),
    }
}

fn mac_of(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(bytes) => Some(format_mac(bytes)),
        _ => None,
    })
}

fn mtu_of(link: &LinkMessage) -> u32 {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .unwrap_or(1500)
}

pub fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn parse_mac(text: &str) -> Option<Vec<u8>> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    (bytes.len() == 6).then_some(bytes)
}

/// Wires one NIC in the current namespace; safe to run again (it replaces
/// the qdiscs and filters), which is how a quiesced NIC is restored.
pub async fn wire(handle: &Handle, nic: &Nic) -> io::Result<Wired> {
    let veth = link(handle, &nic.veth)
        .await?
        .ok_or_else(|| err(&nic.veth, "the CNI plugin created no such interface"))?;
    let veth_index = veth.header.index;
    if let Some(mac) = &nic.mac
        && mac_of(&veth).as_deref() != Some(mac.as_str())
    {
        set_mac(handle, &nic.veth, veth_index, mac).await?;
    }
    let veth = link(handle, &nic.veth).await?.expect("just found");
    let mac = mac_of(&veth).ok_or_else(|| err(&nic.veth, "no MAC address"))?;
    let mtu = mtu_of(&veth);
    // The guest owns the address; left on the veth it would answer for it.
    flush_addresses(handle, &nic.veth, veth_index).await?;
    let tap_index = make_tap(handle, nic, mtu).await?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(veth_index).up().build())
        .execute()
        .await
        .map_err(|e| err(format!("cannot bring up {}", nic.veth), e))?;
    for (from, to, name) in [
        (veth_index, tap_index, &nic.veth),
        (tap_index, veth_index, &nic.tap),
    ] {
        redirect(handle, from, to, name).await?;
    }
    Ok(Wired { mac, mtu })
}

/// Gives the veth `veth` (at `index`) the MAC `mac`, taking it down first.
async fn set_mac(handle: &Handle, veth: &str, index: u32, mac: &str) -> io::Result<()> {
    let bytes = parse_mac(mac).ok_or_else(|| err("bad MAC", mac))?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).down().build())
        .execute()
        .await
        .map_err(|e| err(format!("cannot take {veth} down"), e))?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).address(bytes).build())
        .execute()
        .await
        .map_err(|e| err(format!("cannot set the MAC of {veth}"), e))
}

/// Removes every address of the interface `name` (at `index`).
async fn flush_addresses(handle: &Handle, name: &str, index: u32) -> io::Result<()> {
    let addresses: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(|e| err(format!("cannot list addresses of {name}"), e))?;
    for address in addresses {
        handle
            .address()
            .del(address)
            .execute()
            .await
            .map_err(|e| err(format!("cannot flush addresses of {name}"), e))?;
    }
    Ok(())
}

/// Creates the NIC's TAP and brings it up with the veth's MTU: its index.
async fn make_tap(handle: &Handle, nic: &Nic, mtu: u32) -> io::Result<u32> {
    tap::create_persistent(&nic.tap, nic.multi_queue)
        .map_err(|e| err(format!("cannot create TAP {}", nic.tap), e))?;
    let tap_index = link(handle, &nic.tap)
        .await?
        .ok_or_else(|| err(&nic.tap, "TAP vanished after creation"))?
        .header
        .index;
    tap_up(handle, tap_index, mtu, None)
        .await
        .map_err(|e| err(format!("cannot bring up {}", nic.tap), e))?;
    Ok(tap_index)
}

/// Brings the TAP at `index` up with `mtu` and a long transmit queue,
/// enslaved to `controller` (a bridge) if given.
pub(crate) async fn tap_up(
    handle: &Handle,
    index: u32,
    mtu: u32,
    controller: Option<u32>,
) -> Result<(), rtnetlink::Error> {
    let mut link = LinkUnspec::new_with_index(index);
    if let Some(controller) = controller {
        link = link.controller(controller);
    }
    handle
        .link()
        .set(link.mtu(mtu).txqueuelen(10_000).up().build())
        .execute()
        .await
}

/// Redirects everything arriving on `from` (named `name`) out of `to`: a
/// fresh ingress qdisc with a match-all mirred redirect filter.
async fn redirect(handle: &Handle, from: u32, to: u32, name: &str) -> io::Result<()> {
    remove_ingress(handle, from).await;
    handle
        .qdisc()
        .add(from as i32)
        .ingress()
        .execute()
        .await
        .map_err(|e| err(format!("cannot add the ingress qdisc on {name}"), e))?;
    handle
        .traffic_filter(from as i32)
        .add()
        .parent(INGRESS_PARENT)
        .priority(1)
        .protocol(PROTOCOL_ALL)
        .redirect(to)
        .map_err(|e| err("cannot build the redirect filter", e))?
        .execute()
        .await
        .map_err(|e| err(format!("cannot add the redirect filter on {name}"), e))?;
    Ok(())
}

/// Removes an interface's ingress qdisc and with it its filters.
async fn remove_ingress(handle: &Handle, index: u32) {
    let mut request = handle.qdisc().del(index as i32);
    request.message_mut().header.parent = netlink_packet_route::tc::TcHandle::INGRESS;
    request.message_mut().header.handle = INGRESS_PARENT.into();
    let _ = request.execute().await;
}

/// Quiesces a NIC of a stopped VM: no redirect, TAP down (a carrier-less
/// TAP with a live redirect caused host softirq storms in cocoon).
pub async fn quiesce(handle: &Handle, nic: &Nic) -> io::Result<()> {
    for name in [&nic.veth, &nic.tap] {
        if let Some(l) = link(handle, name).await? {
            remove_ingress(handle, l.header.index).await;
        }
    }
    if let Some(tap) = link(handle, &nic.tap).await? {
        handle
            .link()
            .set(LinkUnspec::new_with_index(tap.header.index).down().build())
            .execute()
            .await
            .map_err(|e| err(format!("cannot take {} down", nic.tap), e))?;
    }
    Ok(())
}
