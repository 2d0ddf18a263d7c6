//! TAP devices, created persistent with the exact flags the VMM will open
//! them with (a mismatch in IFF_MULTI_QUEUE makes the VMM's open fail).
//! Hand-written: about twenty lines of ioctl, where the crates either pull a
//! whole async stack (tun-rs) or cannot set persistence (tun).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;

/// TAP flags: every VMM wants a virtio-net header and no packet info;
/// Cloud Hypervisor opens several queues when it has more than one pair.
pub fn flags(multi_queue: bool) -> libc::c_short {
    let mut flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    if multi_queue {
        flags |= IFF_MULTI_QUEUE;
    }
    flags
}

/// Opens (creating if needed) one queue of TAP `name` in the current
/// namespace. The queue lives as long as the returned file.
pub fn open_queue(name: &str, flags: libc::c_short) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain data; the name fits (checked) and is NUL-terminated.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} is too long"),
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = flags;
    // SAFETY: TUNSETIFF reads and writes the ifreq we own.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// Creates a persistent TAP in the current namespace: it outlives this
/// process and waits for the VMM to open it by name.
pub fn create_persistent(name: &str, multi_queue: bool) -> io::Result<()> {
    let file = open_queue(name, flags(multi_queue))?;
    // SAFETY: TUNSETPERSIST takes an integer argument.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
