//! Validation of what users type: sizes, CPU counts, data-disk specs,
//! cloud-init credentials, DNS servers, console escape characters. Names
//! are [`crate::name`]'s.
//!
//! The rules and limits are cocoon's (docs/reference/cocoon-v0.3.8.md §1.3), so scripts that worked
//! there keep working; the messages say what was wrong and what is accepted.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::units::{self, BinarySize, GIB, MIB};

pub const MIN_MEMORY: u64 = 512 * MIB;
pub const MIN_STORAGE: u64 = 10 * GIB;
pub const MIN_DATA_DISK: u64 = 16 * MIB;
pub const DEFAULT_QUEUE_SIZE: u32 = 512;
pub const MAX_QUEUE_SIZE: u32 = 32768;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A VM or snapshot name refused by [`crate::name::Name`].
    #[error(
        "invalid {what} name {name:?}: must start with a letter or digit and contain only letters, digits, '.', '_' or '-' (at most 63 characters)"
    )]
    Name { what: &'static str, name: String },
    #[error(transparent)]
    Size(#[from] units::SizeError),
    #[error("--cpu must be at least 1")]
    CpuZero,
    #[error("--cpu {requested} exceeds the {host} CPUs of this host")]
    CpuAboveHost { requested: u32, host: u32 },
    #[error("--memory {} is below the minimum of {}", BinarySize(*.0), BinarySize(MIN_MEMORY))]
    MemoryTooSmall(u64),
    #[error("--storage {} is below the minimum of {}", BinarySize(*.0), BinarySize(MIN_STORAGE))]
    StorageTooSmall(u64),
    #[error("{flag} {value} is not a power of two between 2 and {MAX_QUEUE_SIZE}")]
    QueueSize { flag: &'static str, value: u32 },
    #[error(
        "invalid --user {0:?}: must start with a lowercase letter or '_' and contain only lowercase letters, digits, '_' or '-' (at most 32 characters)"
    )]
    User(String),
    #[error("invalid --password: must not be empty")]
    PasswordEmpty,
    #[error(
        "invalid --password: the character {0:?} is not allowed (rejected: ` $ ; | & ( ) {{ }} \\ < > !)"
    )]
    PasswordChar(char),
    #[error("invalid --data-disk {spec:?}: {reason}")]
    DataDisk { spec: String, reason: String },
    #[error(
        "invalid disk name {0:?}: must match [a-z][a-z0-9_-]{{0,19}} and must not start with \"cocoon-\" (it is the guest's /dev/disk/by-id/virtio-<name> and the detach key)"
    )]
    DiskName(String),
    #[error(
        "invalid tag {0:?}: must match [A-Za-z0-9][A-Za-z0-9_-]{{0,35}} (it is the guest's mount tag and the detach key)"
    )]
    FsTag(String),
    #[error(
        "invalid --pci {0:?}: expect a PCI address (01:00.0 or 0000:01:00.0, as lspci prints it) or its sysfs path /sys/bus/pci/devices/0000:01:00.0"
    )]
    PciAddress(String),
    #[error(
        "invalid --id {0:?}: must match [A-Za-z0-9][A-Za-z0-9_.-]{{0,63}} and not start with \"cocoon-\""
    )]
    DeviceId(String),
    #[error("cannot pass through PCI device {bdf}: {reason}")]
    PciDevice { bdf: String, reason: String },
    #[error("invalid --queue-size {0}: must be a power of two up to 32768 (0: 1024)")]
    FsQueueSize(u32),
    #[error("invalid --socket {}: {reason}", path.display())]
    FsSocket {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("invalid --path {}: {reason}", path.display())]
    AttachPath {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("invalid DNS server {0:?}: not an IP address")]
    Dns(String),
    #[error(
        "invalid escape character {0:?}: use a single ASCII character or caret notation such as ^] or ^a"
    )]
    EscapeChar(String),
}

/// CPUs this process may run on, as Go's `runtime.NumCPU` (the affinity mask).
pub fn host_cpus() -> u32 {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for pid 0 (us).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            return libc::CPU_COUNT(&set).max(1) as u32;
        }
    }
    std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
}

/// The host's RAM in bytes (`MemTotal`); 0 when it cannot be read.
pub fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            kib.checked_mul(1024)
        })
        .unwrap_or(0)
}

pub fn validate_cpu(cpu: u32, host: u32) -> Result<(), SpecError> {
    if cpu == 0 {
        return Err(SpecError::CpuZero);
    }
    if cpu > host {
        return Err(SpecError::CpuAboveHost {
            requested: cpu,
            host,
        });
    }
    Ok(())
}

pub fn parse_memory(text: &str) -> Result<u64, SpecError> {
    let bytes = units::parse_size(text)?;
    if bytes < MIN_MEMORY {
        return Err(SpecError::MemoryTooSmall(bytes));
    }
    Ok(bytes)
}

pub fn parse_storage(text: &str) -> Result<u64, SpecError> {
    let bytes = units::parse_size(text)?;
    if bytes < MIN_STORAGE {
        return Err(SpecError::StorageTooSmall(bytes));
    }
    Ok(bytes)
}

/// 0 means "the default" (512); anything else must be a valid virtio ring size.
pub fn validate_queue_size(flag: &'static str, value: u32) -> Result<(), SpecError> {
    if value == 0 || (value.is_power_of_two() && (2..=MAX_QUEUE_SIZE).contains(&value)) {
        Ok(())
    } else {
        Err(SpecError::QueueSize { flag, value })
    }
}

/// `^[a-z_][a-z0-9_-]{0,31}$`, the cloud-init user name rule of cocoon.
pub fn validate_user(user: &str) -> Result<(), SpecError> {
    let bytes = user.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 32
        && (bytes[0].is_ascii_lowercase() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(SpecError::User(user.to_string()))
    }
}

/// The password ends up in cloud-init user-data and a shell `chpasswd` line, so the
/// shell metacharacters cocoon rejects are rejected here too.
pub fn validate_password(password: &str) -> Result<(), SpecError> {
    if password.is_empty() {
        return Err(SpecError::PasswordEmpty);
    }
    match password.chars().find(|c| "`$;|&(){}\\<>!".contains(*c)) {
        Some(c) => Err(SpecError::PasswordChar(c)),
        None => Ok(()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    #[default]
    Ext4,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DirectIo {
    On,
    Off,
    #[default]
    Auto,
}

/// One `--data-disk` after parsing and normalisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataDiskSpec {
    pub name: String,
    pub size: u64,
    pub fstype: FsType,
    /// Empty when `fstype=none`.
    pub mount: String,
    pub directio: DirectIo,
}

/// A data-disk spec as typed, before names are assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDataDisk {
    spec: String,
    name: Option<String>,
    size: u64,
    fstype: FsType,
    mount: Option<String>,
    directio: DirectIo,
}

/// `^[a-z][a-z0-9_-]{0,19}$`, not starting with `cocoon-` (reserved for our own serials).
pub fn valid_data_disk_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 20
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
        && !name.starts_with("cocoon-")
}

/// Parses `size=20G[,name=NAME][,fstype=ext4|none][,mount=/mnt/x][,directio=on|off|auto]`.
pub fn parse_data_disk(spec: &str) -> Result<RawDataDisk, SpecError> {
    let fail = |reason: String| SpecError::DataDisk {
        spec: spec.to_string(),
        reason,
    };
    let mut size = None;
    let mut name = None;
    let mut fstype = None;
    let mut mount = None;
    let mut directio = None;
    for part in spec.split(',') {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| fail(format!("{part:?} is not key=value")))?;
        let key = key.trim();
        let value = value.trim();
        let duplicate = match key {
            "size" => size.replace(value).is_some(),
            "name" => name.replace(value).is_some(),
            "fstype" => fstype.replace(value).is_some(),
            "mount" => mount.replace(value).is_some(),
            "directio" => directio.replace(value).is_some(),
            other => {
                return Err(fail(format!(
                    "unknown key {other:?} (known: size, name, fstype, mount, directio)"
                )));
            }
        };
        if duplicate {
            return Err(fail(format!("{key} is given twice")));
        }
    }
    let size = size.ok_or_else(|| fail("size= is required, e.g. size=20G".into()))?;
    let size = units::parse_size(size).map_err(|e| fail(e.to_string()))?;
    if size < MIN_DATA_DISK {
        return Err(fail(format!(
            "size {} is below the minimum of {}",
            BinarySize(size),
            BinarySize(MIN_DATA_DISK)
        )));
    }
    if let Some(name) = name
        && !valid_data_disk_name(name)
    {
        return Err(fail(format!(
            "name {name:?} must match [a-z][a-z0-9_-]{{0,19}} and must not start with \"cocoon-\""
        )));
    }
    let fstype = match fstype {
        None | Some("ext4") => FsType::Ext4,
        Some("none") => FsType::None,
        Some(other) => return Err(fail(format!("fstype {other:?} is not ext4 or none"))),
    };
    let directio = match directio {
        None | Some("auto") => DirectIo::Auto,
        Some("on") => DirectIo::On,
        Some("off") => DirectIo::Off,
        Some(other) => return Err(fail(format!("directio {other:?} is not on, off or auto"))),
    };
    if let Some(mount) = mount {
        if fstype == FsType::None && !mount.is_empty() {
            return Err(fail(
                "fstype=none disks are not mounted, so mount= must be empty".into(),
            ));
        }
        if !mount.is_empty() && (!mount.starts_with('/') || mount == "/") {
            return Err(fail(format!(
                "mount {mount:?} must be an absolute path other than /"
            )));
        }
    }
    Ok(RawDataDisk {
        spec: spec.to_string(),
        name: name.map(str::to_string),
        size,
        fstype,
        mount: mount.filter(|m| !m.is_empty()).map(str::to_string),
        directio,
    })
}

/// Assigns `dataN` names (skipping taken ones), default mounts, and rejects duplicates.
pub fn normalize_data_disks(raw: Vec<RawDataDisk>) -> Result<Vec<DataDiskSpec>, SpecError> {
    let mut taken: Vec<String> = Vec::new();
    for disk in &raw {
        if let Some(name) = &disk.name {
            if taken.contains(name) {
                return Err(SpecError::DataDisk {
                    spec: disk.spec.clone(),
                    reason: format!("name {name:?} is used by another --data-disk"),
                });
            }
            taken.push(name.clone());
        }
    }
    let mut next = 1;
    let mut mounts: Vec<String> = Vec::new();
    let mut out = Vec::with_capacity(raw.len());
    for disk in raw {
        let name = match disk.name {
            Some(name) => name,
            None => loop {
                let candidate = format!("data{next}");
                next += 1;
                if !taken.contains(&candidate) {
                    taken.push(candidate.clone());
                    break candidate;
                }
            },
        };
        let mount = match (disk.fstype, disk.mount) {
            (FsType::None, _) => String::new(),
            (FsType::Ext4, Some(mount)) => mount,
            (FsType::Ext4, None) => format!("/mnt/{name}"),
        };
        if !mount.is_empty() {
            if mounts.contains(&mount) {
                return Err(SpecError::DataDisk {
                    spec: disk.spec,
                    reason: format!("mount {mount:?} is used by another --data-disk"),
                });
            }
            mounts.push(mount.clone());
        }
        out.push(DataDiskSpec {
            name,
            size: disk.size,
            fstype: disk.fstype,
            mount,
            directio: disk.directio,
        });
    }
    Ok(out)
}

/// DNS servers separated by `,` or `;`, each an IP address.
pub fn parse_dns(text: &str) -> Result<Vec<IpAddr>, SpecError> {
    text.split([',', ';'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| SpecError::Dns(s.to_string())))
        .collect()
}

/// A console escape character: caret notation (`^]`, `^a`, `^@`..`^_`) or one
/// ASCII byte. NUL, CR, LF, DEL and non-ASCII are refused: they cannot be typed
/// reliably or would break line handling.
pub fn parse_escape_char(text: &str) -> Result<u8, SpecError> {
    let fail = || SpecError::EscapeChar(text.to_string());
    let byte = match text.as_bytes() {
        [b'^', c @ b'@'..=b'_'] => c - b'@',
        [b'^', c @ b'a'..=b'z'] => c - b'a' + 1,
        [c] if c.is_ascii() => *c,
        _ => return Err(fail()),
    };
    if matches!(byte, 0 | b'\r' | b'\n' | 0x7f) {
        return Err(fail());
    }
    Ok(byte)
}

/// `^]` for 0x1d, `x` for printable bytes.
pub fn format_escape_char(byte: u8) -> String {
    if byte < 0x20 {
        format!("^{}", (byte + b'@') as char)
    } else {
        (byte as char).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disks(specs: &[&str]) -> Result<Vec<DataDiskSpec>, SpecError> {
        let raw = specs
            .iter()
            .map(|s| parse_data_disk(s))
            .collect::<Result<Vec<_>, _>>()?;
        normalize_data_disks(raw)
    }

    #[test]
    fn cpu_limits() {
        validate_cpu(1, 2).unwrap();
        validate_cpu(2, 2).unwrap();
        assert_eq!(
            validate_cpu(0, 2).unwrap_err().to_string(),
            "--cpu must be at least 1"
        );
        assert_eq!(
            validate_cpu(3, 2).unwrap_err().to_string(),
            "--cpu 3 exceeds the 2 CPUs of this host"
        );
        assert!(host_cpus() >= 1);
    }

    #[test]
    fn memory_and_storage_minimums() {
        assert_eq!(parse_memory("512M").unwrap(), 512 * MIB);
        assert_eq!(
            parse_memory("511M").unwrap_err().to_string(),
            "--memory 511MiB is below the minimum of 512MiB"
        );
        assert_eq!(parse_storage("10G").unwrap(), 10 * GIB);
        assert_eq!(
            parse_storage("9G").unwrap_err().to_string(),
            "--storage 9GiB is below the minimum of 10GiB"
        );
    }

    #[test]
    fn queue_sizes() {
        for ok in [0, 2, 256, 512, 32768] {
            validate_queue_size("--queue-size", ok).unwrap();
        }
        for bad in [1, 3, 500, 65536] {
            assert!(validate_queue_size("--queue-size", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn users_and_passwords() {
        validate_user("root").unwrap();
        validate_user("_svc-1").unwrap();
        for bad in ["", "Root", "1abc", "a b", &"a".repeat(33)] {
            assert!(validate_user(bad).is_err(), "{bad}");
        }
        validate_password("cocoon").unwrap();
        for c in "`$;|&(){}\\<>!".chars() {
            assert_eq!(
                validate_password(&format!("ab{c}d")),
                Err(SpecError::PasswordChar(c))
            );
        }
        assert_eq!(validate_password(""), Err(SpecError::PasswordEmpty));
    }

    #[test]
    fn data_disk_defaults_and_auto_names() {
        let out = disks(&["size=20G", "size=1G,name=data1", "size=16M,fstype=none"]).unwrap();
        assert_eq!(out[0].name, "data2");
        assert_eq!(out[0].mount, "/mnt/data2");
        assert_eq!(out[0].size, 20 * GIB);
        assert_eq!(out[0].fstype, FsType::Ext4);
        assert_eq!(out[0].directio, DirectIo::Auto);
        assert_eq!(out[1].name, "data1");
        assert_eq!(out[2].name, "data3");
        assert_eq!(out[2].mount, "");
        let out = disks(&["size=2G,name=db,mount=/var/lib/db,directio=off"]).unwrap();
        assert_eq!(out[0].mount, "/var/lib/db");
        assert_eq!(out[0].directio, DirectIo::Off);
    }

    #[test]
    fn data_disk_errors() {
        let cases = [
            ("name=x", "size= is required, e.g. size=20G"),
            ("size=1M", "size 1MiB is below the minimum of 16MiB"),
            (
                "size=1G,name=Data",
                "name \"Data\" must match [a-z][a-z0-9_-]{0,19} and must not start with \"cocoon-\"",
            ),
            (
                "size=1G,name=cocoon-x",
                "name \"cocoon-x\" must match [a-z][a-z0-9_-]{0,19} and must not start with \"cocoon-\"",
            ),
            ("size=1G,fstype=xfs", "fstype \"xfs\" is not ext4 or none"),
            (
                "size=1G,fstype=none,mount=/mnt/x",
                "fstype=none disks are not mounted, so mount= must be empty",
            ),
            (
                "size=1G,mount=relative",
                "mount \"relative\" must be an absolute path other than /",
            ),
            (
                "size=1G,directio=maybe",
                "directio \"maybe\" is not on, off or auto",
            ),
            (
                "size=1G,colour=red",
                "unknown key \"colour\" (known: size, name, fstype, mount, directio)",
            ),
            ("size=1G,size=2G", "size is given twice"),
            ("size", "\"size\" is not key=value"),
        ];
        for (spec, reason) in cases {
            let err = parse_data_disk(spec).unwrap_err();
            assert_eq!(
                err,
                SpecError::DataDisk {
                    spec: spec.into(),
                    reason: reason.into()
                },
                "{spec}"
            );
        }
        let err = disks(&["size=1G,name=db", "size=2G,name=db"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid --data-disk \"size=2G,name=db\": name \"db\" is used by another --data-disk"
        );
        let err = disks(&["size=1G,mount=/srv", "size=2G,mount=/srv"]).unwrap_err();
        assert!(
            err.to_string()
                .contains("mount \"/srv\" is used by another --data-disk")
        );
    }

    #[test]
    fn dns_servers() {
        let dns = parse_dns("8.8.8.8, 1.1.1.1;2001:db8::1").unwrap();
        assert_eq!(dns.len(), 3);
        assert_eq!(
            parse_dns("8.8.8.8,dns.google"),
            Err(SpecError::Dns("dns.google".into()))
        );
    }

    #[test]
    fn escape_chars() {
        assert_eq!(parse_escape_char("^]").unwrap(), 0x1d);
        assert_eq!(parse_escape_char("^a").unwrap(), 1);
        assert_eq!(parse_escape_char("^A").unwrap(), 1);
        assert_eq!(parse_escape_char("~").unwrap(), b'~');
        for bad in ["^@", "^J", "^M", "\u{7f}", "é", "ab", ""] {
            assert!(parse_escape_char(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_escape_char(0x1d), "^]");
        assert_eq!(format_escape_char(b'~'), "~");
    }
}
