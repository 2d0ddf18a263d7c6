//! The kernel command line as the engine writes it
//! (docs/reference/guest-contract.md, "Kernel command line"). The engine is
//! the only writer, but a value is still checked before it becomes a path,
//! a hostname or an address: a malformed one stops the boot with a message
//! naming it, rather than a guess.

use std::net::Ipv4Addr;
use std::time::Duration;

/// The disk wait when `cocoon.timeout=` is absent, as the contract says.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// A ceiling on `cocoon.timeout=`: a typo must not make a VM wait for days.
const MAX_TIMEOUT_SECS: u64 = 3600;
/// `HOST_NAME_MAX` on Linux.
const MAX_HOSTNAME: usize = 64;
/// `IFNAMSIZ` minus the terminating NUL.
const MAX_IFNAME: usize = 15;

/// Where a disk is: a device path (Firecracker) or a virtio-blk serial
/// (Cloud Hypervisor), found in `/sys/block/vd*/serial`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskRef {
    Path(String),
    Serial(String),
}

/// One `ip=<ip>::<gateway>:<netmask>:<hostname>:<device>:off[:<dns0>[:<dns1>]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub hostname: Option<String>,
    pub device: String,
    pub dns: Vec<Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootArgs {
    /// Top layer first, as `lowerdir` wants them.
    pub layers: Vec<DiskRef>,
    pub cow: Option<DiskRef>,
    pub timeout: Duration,
    pub hostname: Option<String>,
    pub ips: Vec<IpConfig>,
    /// `reboot=k` (Firecracker): the VMM ends on a reboot, not on a power-off.
    pub reboot_ends_vm: bool,
}

impl BootArgs {
    /// `cocoon.hostname=`, else the first `ip=` hostname.
    pub fn effective_hostname(&self) -> Option<&str> {
        self.hostname
            .as_deref()
            .or_else(|| self.ips.iter().find_map(|ip| ip.hostname.as_deref()))
    }

    /// The name servers of every `ip=`, in order, without repeats.
    pub fn name_servers(&self) -> Vec<Ipv4Addr> {
        let mut all: Vec<Ipv4Addr> = Vec::new();
        for dns in self.ips.iter().flat_map(|ip| &ip.dns) {
            if !all.contains(dns) {
                all.push(*dns);
            }
        }
        all
    }
}

/// Parses `/proc/cmdline`. Later `cocoon.*` values replace earlier ones (as
/// the kernel treats repeated parameters); `ip=` adds up. Words after `--`
/// belong to init's argv, not to us.
pub fn parse(cmdline: &str) -> Result<BootArgs, String> {
    let mut args = BootArgs {
        layers: Vec::new(),
        cow: None,
        timeout: DEFAULT_TIMEOUT,
        hostname: None,
        ips: Vec::new(),
        reboot_ends_vm: false,
    };
    for word in cmdline.split_ascii_whitespace() {
        if word == "--" {
            break;
        }
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        match key {
            "cocoon.layers" => args.layers = parse_layers(value)?,
            "cocoon.cow" => {
                args.cow = Some(parse_disk(value).map_err(|e| format!("cocoon.cow={value}: {e}"))?)
            }
            "cocoon.timeout" => args.timeout = parse_timeout(value)?,
            "cocoon.hostname" => {
                args.hostname = Some(
                    parse_hostname(value).map_err(|e| format!("cocoon.hostname={value}: {e}"))?,
                )
            }
            "ip" => args
                .ips
                .extend(parse_ip(value).map_err(|e| format!("ip={value}: {e}"))?),
            // The kernel takes the first letter: k(bd), t(riple), a(cpi), ...
            "reboot" => args.reboot_ends_vm = value.starts_with('k'),
            _ => {}
        }
    }
    Ok(args)
}

fn parse_layers(value: &str) -> Result<Vec<DiskRef>, String> {
    value
        .split(',')
        .map(|entry| {
            parse_disk(entry).map_err(|e| format!("cocoon.layers={value}: {entry:?}: {e}"))
        })
        .collect()
}

fn parse_disk(value: &str) -> Result<DiskRef, String> {
    if let Some(name) = value.strip_prefix("/dev/") {
        // One component under /dev: nothing the guest could steer elsewhere.
        let plain = !name.is_empty()
            && name != "."
            && name != ".."
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        return if plain {
            Ok(DiskRef::Path(value.to_string()))
        } else {
            Err("not a plain /dev/<name> path".into())
        };
    }
    // virtio-blk serials are at most 20 bytes; printable, no separators.
    let serial_ok = !value.is_empty()
        && value.len() <= 20
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b',');
    if serial_ok {
        Ok(DiskRef::Serial(value.to_string()))
    } else {
        Err("neither a /dev/ path nor a virtio serial (1-20 printable bytes)".into())
    }
}

fn parse_timeout(value: &str) -> Result<Duration, String> {
    match value.parse::<u64>() {
        Ok(secs) if secs <= MAX_TIMEOUT_SECS => Ok(Duration::from_secs(secs)),
        _ => Err(format!(
            "cocoon.timeout={value}: not a number of seconds up to {MAX_TIMEOUT_SECS}"
        )),
    }
}

/// A hostname as RFC 1123 allows: letters, digits, `-` and `.`. It ends up
/// in files and in `sethostname`, so nothing else gets through.
pub fn parse_hostname(value: &str) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= MAX_HOSTNAME
        && !value.starts_with(['-', '.'])
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(value.to_string())
    } else {
        Err(format!(
            "not a hostname (letters, digits, '-', '.'; at most {MAX_HOSTNAME} bytes)"
        ))
    }
}

/// One `ip=` value; `None` for the kernel's "no autoconfiguration" forms.
fn parse_ip(value: &str) -> Result<Option<IpConfig>, String> {
    if matches!(value, "off" | "none" | "") {
        return Ok(None);
    }
    let fields: Vec<&str> = value.split(':').collect();
    if fields.len() < 7 || fields.len() > 10 {
        return Err(
            "expected <ip>::<gateway>:<netmask>:<hostname>:<device>:off[:<dns0>[:<dns1>]]".into(),
        );
    }
    let address = parse_addr(fields[0], "address")?;
    let gateway = optional_addr(fields[2], "gateway")?;
    let prefix = prefix_of(fields[3]).ok_or_else(|| format!("bad netmask {:?}", fields[3]))?;
    let hostname = match fields[4] {
        "" => None,
        name => Some(parse_hostname(name)?),
    };
    let device = parse_ifname(fields[5])?;
    if !matches!(fields[6], "off" | "none" | "") {
        return Err(format!(
            "autoconfiguration {:?} is not supported (only off)",
            fields[6]
        ));
    }
    let mut dns = Vec::new();
    for field in fields.iter().skip(7).take(2) {
        dns.extend(optional_addr(field, "name server")?);
    }
    Ok(Some(IpConfig {
        address,
        prefix,
        gateway,
        hostname,
        device,
        dns,
    }))
}

fn parse_addr(text: &str, what: &str) -> Result<Ipv4Addr, String> {
    text.parse().map_err(|_| format!("bad {what} {text:?}"))
}

fn optional_addr(text: &str, what: &str) -> Result<Option<Ipv4Addr>, String> {
    match text {
        "" | "0.0.0.0" => Ok(None),
        _ => parse_addr(text, what).map(Some),
    }
}

fn parse_ifname(name: &str) -> Result<String, String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IFNAME
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(name.to_string())
    } else {
        Err(format!("bad interface name {name:?}"))
    }
}

/// The prefix length of a dotted IPv4 netmask, if it is one (ones, then
/// only zeros).
pub fn prefix_of(netmask: &str) -> Option<u8> {
    let bits = u32::from(netmask.parse::<Ipv4Addr>().ok()?);
    let prefix = bits.leading_ones();
    (bits.checked_shl(prefix).unwrap_or(0) == 0).then(|| u8::try_from(prefix).ok())?
}

#[cfg(test)]
mod tests;
