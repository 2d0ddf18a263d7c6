//! The QMP commands this client sends, each a type: its name, its
//! arguments (the struct's fields, spelled as QEMU spells them) and the type
//! of its result.
//!
//! A command is sent only through [`Command`], and [`COMMANDS`] is built from
//! the same list as the impls, so the conformance test
//! (`tests/qmp_conformance.rs`) sees every command the client can send.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::types::*;

/// A QMP command: serialises to its `arguments` (a unit struct to none).
pub trait Command: Serialize {
    /// The name QEMU knows it by.
    const NAME: &'static str;
    /// What its `return` holds.
    type Output: DeserializeOwned;
}

macro_rules! commands {
    ($($name:literal => $command:ty => $output:ty;)*) => {
        $(impl Command for $command {
            const NAME: &'static str = $name;
            type Output = $output;
        })*

        /// Every command this client can send.
        pub const COMMANDS: &[&str] = &[$($name),*];
    };
}

commands! {
    "qmp_capabilities" => QmpCapabilities => Empty;
    "query-status" => QueryStatus => StatusInfo;
    "stop" => Stop => Empty;
    "cont" => Cont => Empty;
    "system_powerdown" => SystemPowerdown => Empty;
    "quit" => Quit => Empty;
    "query-version" => QueryVersion => VersionInfo;
    "migrate-set-capabilities" => MigrateSetCapabilities => Empty;
    "migrate-set-parameters" => MigrateSetParameters => Empty;
    "migrate" => Migrate => Empty;
    "migrate-incoming" => MigrateIncoming => Empty;
    "query-migrate" => QueryMigrate => MigrationInfo;
    "migrate_cancel" => MigrateCancel => Empty;
    "balloon" => Balloon => Empty;
    "query-balloon" => QueryBalloon => BalloonInfo;
    "query-cpus-fast" => QueryCpusFast => Vec<CpuInfoFast>;
    "query-memory-size-summary" => QueryMemorySizeSummary => MemoryInfo;
    "blockdev-add" => BlockdevAdd => Empty;
    "blockdev-del" => BlockdevDel => Empty;
    "device_add" => DeviceAdd => Empty;
    "device_del" => DeviceDel => Empty;
    "query-block" => QueryBlock => Vec<BlockInfo>;
    "netdev_add" => NetdevAdd => Empty;
    "netdev_del" => NetdevDel => Empty;
    "qom-list" => QomList => Vec<ObjectPropertyInfo>;
    "chardev-add" => ChardevAdd => ChardevReturn;
    "chardev-remove" => ChardevRemove => Empty;
    "query-chardev" => QueryChardev => Vec<ChardevInfo>;
    "qom-get" => QomGet => serde_json::Value;
}

/// Leaves capabilities negotiation mode; QEMU accepts no other command before.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QmpCapabilities {
    /// `QMPCapability`s to enable (`oob`); none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct QueryStatus;

/// Stops the vCPUs. QEMU accepts it on a stopped VM (and sends no second
/// `STOP` event); while an incoming migration is awaited it keeps the VM
/// stopped once the migration completes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Stop;

/// Runs the vCPUs. QEMU accepts it on a running VM; while an incoming
/// migration is awaited it only lets the VM run once that completes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Cont;

/// Presses the ACPI power button; the guest decides what to do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct SystemPowerdown;

/// Ends QEMU at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Quit;

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct QueryVersion;

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct QueryMigrate;

/// Cancels the outgoing migration; nothing if there is none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct MigrateCancel;

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct QueryBalloon;

/// The guest's vCPUs as QEMU has them (one entry each).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct QueryCpusFast;

/// The guest's RAM: what it booted with and what was plugged in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct QueryMemorySizeSummary;

/// `MigrationCapabilityStatus`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapabilityState {
    pub capability: MigrationCapability,
    pub state: bool,
}

/// Sets migration capabilities; both ends of a migration need the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrateSetCapabilities {
    pub capabilities: Vec<CapabilityState>,
}

/// Migration parameters this client sets (only those named; QEMU keeps the
/// others).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrateSetParameters {
    /// Bytes per second; QEMU's default (128 MiB/s) would throttle a save
    /// to a local file.
    #[serde(
        default,
        rename = "max-bandwidth",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_bandwidth: Option<i64>,
    /// `O_DIRECT` for the file (needs `mapped-ram` and `multifd`).
    #[serde(default, rename = "direct-io", skip_serializing_if = "Option::is_none")]
    pub direct_io: Option<bool>,
    /// Parallel channels (needs the `multifd` capability).
    #[serde(
        default,
        rename = "multifd-channels",
        skip_serializing_if = "Option::is_none"
    )]
    pub multifd_channels: Option<i64>,
}

/// `FileMigrationArgs`: a plain file, from `offset` bytes on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileAddress {
    pub filename: String,
    pub offset: i64,
}

/// `MigrationAddress`: only the `file` transport is used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "transport", rename_all = "lowercase")]
pub enum MigrationAddress {
    File(FileAddress),
}

/// `MigrationChannel`. Channels rather than a `file:` URI: a URI is parsed
/// by QEMU (`,offset=` in a path would be taken for an option), a channel's
/// file name is taken as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationChannel {
    /// `main` (`cpr` is for CPR transfer, not used).
    #[serde(rename = "channel-type")]
    pub channel_type: String,
    pub addr: MigrationAddress,
}

impl MigrationChannel {
    /// The main channel to or from a file, from its first byte.
    pub fn file(path: &Path) -> MigrationChannel {
        MigrationChannel {
            channel_type: "main".into(),
            addr: MigrationAddress::File(FileAddress {
                filename: path.to_string_lossy().into_owned(),
                offset: 0,
            }),
        }
    }
}

/// Starts an outgoing migration and answers at once; `query-migrate` (or
/// the `MIGRATION` events) tells how it goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Migrate {
    pub channels: Vec<MigrationChannel>,
}

/// Starts the incoming migration of a QEMU started with `-incoming defer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrateIncoming {
    pub channels: Vec<MigrationChannel>,
    /// QEMU's default (true) exits on a failed load, so the reason is only on
    /// its stderr; false keeps it running with the reason in `query-migrate`.
    #[serde(
        default,
        rename = "exit-on-error",
        skip_serializing_if = "Option::is_none"
    )]
    pub exit_on_error: Option<bool>,
}

/// Asks the balloon driver for a guest RAM size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Balloon {
    /// Target guest RAM in bytes.
    pub value: i64,
}

/// `blockdev-add` of a protocol node over a host file (`driver` `file`) or
/// block device (`host_device`): a raw disk needs no format node on top, a
/// device attaches to this node directly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockdevAdd {
    /// `file` or `host_device`.
    pub driver: String,
    #[serde(rename = "node-name")]
    pub node_name: String,
    pub filename: String,
    #[serde(default, rename = "read-only", skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<BlockdevCacheOptions>,
}

/// `BlockdevCacheOptions`: `direct` is O_DIRECT on the host file.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BlockdevCacheOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct: Option<bool>,
}

/// Removes a block node no device uses any more.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockdevDel {
    #[serde(rename = "node-name")]
    pub node_name: String,
}

/// `device_add`: the schema names `driver`, `bus` and `id`; every other
/// member is a property of the device (`drive`, `serial`), which QEMU
/// checks against the device type (the command is not generated from the
/// schema, `json-cli`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceAdd {
    pub driver: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(flatten)]
    pub properties: serde_json::Map<String, serde_json::Value>,
}

/// Asks for a device's removal; QEMU sends `DEVICE_DELETED` once it is gone
/// (at once for a device the guest never enabled, else when the guest lets go).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceDel {
    pub id: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct QueryBlock;

/// `netdev_add` of a TAP backend (`Netdev`, `type` `tap`): the TAP by its
/// name, no scripts, as `-netdev tap` gives one at launch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetdevAdd {
    /// Always `tap`.
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
    pub ifname: String,
    pub script: String,
    pub downscript: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<u32>,
}

/// Removes a network backend no device uses any more.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetdevDel {
    pub id: String,
}

/// `chardev-add`: a character device; here a client socket to a Unix
/// socket path (a vhost-user back-end's, e.g. virtiofsd).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChardevAdd {
    pub id: String,
    /// `ChardevBackend`, a tagged union (see [`ChardevAdd::unix_client`]).
    pub backend: serde_json::Value,
}

impl ChardevAdd {
    /// A chardev `id` that connects to the Unix socket `path` (QEMU is the
    /// client: `server` off).
    pub fn unix_client(id: &str, path: &Path) -> ChardevAdd {
        ChardevAdd {
            id: id.to_string(),
            backend: serde_json::json!({
                "type": "socket",
                "data": {
                    "addr": {"type": "unix", "data": {"path": path.display().to_string()}},
                    "server": false,
                },
            }),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChardevRemove {
    pub id: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct QueryChardev;

/// `qom-list`: the properties (children included) of the object at `path`,
/// e.g. `/machine/peripheral`, whose children are the devices with an id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QomList {
    pub path: String,
}

/// `qom-get`: one property's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QomGet {
    pub path: String,
    pub property: String,
}
