//! `identity` (an extension): what the guest contract's initramfs gives a
//! fresh boot, for a clone or a restored VM that is already running: a
//! hostname, a machine-id, and its NICs' MACs, addresses, routes and DNS.

use std::ffi::CString;
use std::io;

use cocoon_guest_proto::agent::{IdentityRequest, Nic, parse_cidr, parse_mac};

use super::{Root, reseed};
use crate::netlink::{Netlink, same_subnet};

const HOSTNAME: &str = "/etc/hostname";
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Applies each part in turn, stopping at the first failure (the host sees
/// which part failed and may retry the whole request: each part is
/// idempotent).
pub fn run(request: &IdentityRequest, root: &Root) -> Result<(), String> {
    if !request.hostname.is_empty() {
        set_hostname(&request.hostname, root).map_err(|e| format!("hostname: {e}"))?;
    }
    let machine_id = match request.machine_id.as_str() {
        "" => reseed::random_machine_id().map_err(|e| format!("machine-id: {e}"))?,
        id => id.to_owned(),
    };
    reseed::write_machine_id(root, &machine_id).map_err(|e| format!("machine-id: {e}"))?;
    if request.nics.is_empty() {
        return Ok(());
    }
    let mut netlink = Netlink::open().map_err(|e| format!("netlink: {e}"))?;
    for (position, nic) in request.nics.iter().enumerate() {
        let metric = u32::try_from(position).unwrap_or(u32::MAX);
        configure(&mut netlink, nic, metric).map_err(|e| format!("NIC {}: {e}", nic.name))?;
    }
    let dns: Vec<&String> = request.nics.iter().flat_map(|n| &n.dns).collect();
    if !dns.is_empty() {
        let text: String = dns.iter().map(|d| format!("nameserver {d}\n")).collect();
        std::fs::write(root.path(RESOLV_CONF), text).map_err(|e| format!("resolv.conf: {e}"))?;
    }
    Ok(())
}

fn set_hostname(name: &str, root: &Root) -> io::Result<()> {
    let bytes = CString::new(name).map_err(io::Error::other)?;
    // SAFETY: bytes is a valid buffer of the length passed; the kernel
    // copies it.
    if unsafe { libc::sethostname(bytes.as_ptr(), name.len()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    std::fs::write(root.path(HOSTNAME), format!("{name}\n"))
}

/// Down, new MAC, up; then the address replaces the old ones and the
/// default route (at the NIC's `metric`, as at boot) points at the new
/// gateway. A DHCP NIC (no address) only gets its MAC: its client asks
/// again for the new one.
fn configure(netlink: &mut Netlink, nic: &Nic, metric: u32) -> io::Result<()> {
    let name = CString::new(nic.name.as_str()).map_err(io::Error::other)?;
    // SAFETY: name is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::new(io::ErrorKind::NotFound, "no such interface"));
    }
    let mac = parse_mac(&nic.mac).ok_or_else(|| io::Error::other("bad MAC"))?;
    netlink.set_link(index, None, false)?;
    netlink.set_link(index, Some(mac), true)?;
    let Some((ip, prefix)) = nic.address.as_deref().and_then(parse_cidr) else {
        return Ok(());
    };
    netlink.flush_ipv4(index)?;
    netlink.add_ipv4(index, ip, prefix)?;
    if let Some(gateway) = &nic.gateway {
        let gateway = gateway.parse().map_err(io::Error::other)?;
        let onlink = !same_subnet(ip, gateway, prefix);
        netlink.default_route(index, gateway, metric, onlink)?;
    }
    Ok(())
}
