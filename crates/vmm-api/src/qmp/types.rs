//! What QMP answers with: the results of the commands the client sends, the
//! enums they carry, and the asynchronous events.
//!
//! Like the CH/FC models, each result names the fields the engine uses and
//! keeps the rest in `extra`, and each enum keeps a value it does not know
//! (`Other`) instead of failing: a newer QEMU adding a run state must not
//! turn every `query-status` into an error. `tests/qmp_conformance.rs` checks
//! every name here against the QAPI schema of the QEMU in `spec/qemu/`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::ch::models::VmState;

pub type Extra = Map<String, Value>;

/// An enum of the QAPI schema, spelled as QEMU spells it, with `Other` for a
/// value this client does not know.
macro_rules! qapi_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
            /// A value this client does not know (a newer QEMU's).
            Other(String),
        }

        impl $name {
            /// Every value this client knows, as QEMU spells it.
            pub const KNOWN: &'static [&'static str] = &[$($text),*];

            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $text,)*
                    $name::Other(text) => text,
                }
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                match text {
                    $($text => $name::$variant,)*
                    other => $name::Other(other.to_string()),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                Ok($name::from(String::deserialize(deserializer)?.as_str()))
            }
        }
    };
}

qapi_enum! {
    /// `RunState`: what `query-status` reports.
    RunState {
        Debug = "debug",
        /// Started with `-incoming`, waiting for (or loading) a migration.
        InMigrate = "inmigrate",
        InternalError = "internal-error",
        IoError = "io-error",
        Paused = "paused",
        /// The migration out of this QEMU completed; `cont` runs the VM again.
        PostMigrate = "postmigrate",
        /// Started with `-S` and never run.
        Prelaunch = "prelaunch",
        FinishMigrate = "finish-migrate",
        RestoreVm = "restore-vm",
        Running = "running",
        SaveVm = "save-vm",
        /// The guest powered off and QEMU runs with `-no-shutdown`.
        Shutdown = "shutdown",
        Suspended = "suspended",
        Watchdog = "watchdog",
        GuestPanicked = "guest-panicked",
        Colo = "colo",
    }
}

qapi_enum! {
    /// `MigrationStatus`: where a migration (out or in) is.
    MigrationStatus {
        None = "none",
        Setup = "setup",
        Cancelling = "cancelling",
        Cancelled = "cancelled",
        Active = "active",
        PostcopyActive = "postcopy-active",
        PostcopyPaused = "postcopy-paused",
        PostcopyRecoverSetup = "postcopy-recover-setup",
        PostcopyRecover = "postcopy-recover",
        Completed = "completed",
        Failed = "failed",
        Colo = "colo",
        PreSwitchover = "pre-switchover",
        Device = "device",
        WaitUnplug = "wait-unplug",
    }
}

impl MigrationStatus {
    /// The migration is over, one way or the other.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            MigrationStatus::Completed | MigrationStatus::Failed | MigrationStatus::Cancelled
        )
    }
}

qapi_enum! {
    /// `MigrationCapability`: the ones this client sets.
    MigrationCapability {
        /// Fixed offsets for each RAM page in the file: the file is as large
        /// as guest RAM (sparse), written once, and loadable page by page.
        MappedRam = "mapped-ram",
        /// Leave shared memory (`share=on` backends) out of the stream: the
        /// destination maps the same memory. Unstable in QEMU's schema, and
        /// broken with `mapped-ram` in QEMU 10.0.2 (see `save_to_file`).
        XIgnoreShared = "x-ignore-shared",
        /// `MIGRATION` events for each status change.
        Events = "events",
        Multifd = "multifd",
    }
}

/// `ChardevReturn`, the result of `chardev-add`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChardevReturn {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `ChardevInfo`, one entry of `query-chardev`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChardevInfo {
    pub label: String,
    pub filename: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `BlockInfo`, one entry of `query-block`: a drive (`device`, empty for a
/// `-blockdev`/`blockdev-add` node) and the device it backs (`qdev`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockInfo {
    pub device: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qdev: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inserted: Option<BlockDeviceInfo>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `BlockDeviceInfo`: the medium of a drive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockDeviceInfo {
    /// The host file.
    pub file: String,
    #[serde(default, rename = "node-name", skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    pub ro: bool,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `StatusInfo`, the result of `query-status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// Whether the vCPUs run.
    pub running: bool,
    pub status: RunState,
    #[serde(flatten)]
    pub extra: Extra,
}

impl StatusInfo {
    /// The run state in the notion the CH and FC clients share: `Running`
    /// when the vCPUs run; `Created` before the first run (`prelaunch`) or
    /// while an incoming migration is awaited (`inmigrate`); `Shutdown` after
    /// a guest power-off under `-no-shutdown`; `Paused` for every other
    /// stopped state (`paused`, `postmigrate`, errors, panics), which
    /// [`RunState`] in `status` tells apart.
    pub fn vm_state(&self) -> VmState {
        match &self.status {
            _ if self.running => VmState::Running,
            RunState::Prelaunch | RunState::InMigrate => VmState::Created,
            RunState::Shutdown => VmState::Shutdown,
            _ => VmState::Paused,
        }
    }
}

/// `VersionTriple`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionTriple {
    pub major: i64,
    pub minor: i64,
    pub micro: i64,
}

impl fmt::Display for VersionTriple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// `VersionInfo`, the result of `query-version` and part of the greeting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub qemu: VersionTriple,
    /// The distribution's package version (`Debian 1:10.0.2+ds-...`), or empty.
    pub package: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// The greeting QEMU sends first: `{"QMP": {"version", "capabilities"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Greeting {
    pub version: VersionInfo,
    /// Capabilities QEMU offers (`oob`); this client enables none.
    pub capabilities: Vec<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `MigrationStats` (the `ram` of `query-migrate`), in bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationStats {
    pub transferred: i64,
    pub remaining: i64,
    pub total: i64,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `MigrationInfo`, the result of `query-migrate`. QEMU leaves out what does
/// not apply: before any migration the answer is `{}`, and the incoming side
/// reports `status` alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<MigrationStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram: Option<MigrationStats>,
    /// Milliseconds since the migration started (or took in all, once over).
    #[serde(
        default,
        rename = "total-time",
        skip_serializing_if = "Option::is_none"
    )]
    pub total_time: Option<i64>,
    /// Milliseconds the VM was stopped for the switch-over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime: Option<i64>,
    #[serde(
        default,
        rename = "setup-time",
        skip_serializing_if = "Option::is_none"
    )]
    pub setup_time: Option<i64>,
    /// Why the migration failed.
    #[serde(
        default,
        rename = "error-desc",
        skip_serializing_if = "Option::is_none"
    )]
    pub error_desc: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `BalloonInfo`, the result of `query-balloon`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BalloonInfo {
    /// Bytes of RAM the guest has (its size less the balloon).
    pub actual: i64,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `CpuInfoFast`, one entry of `query-cpus-fast`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuInfoFast {
    #[serde(rename = "cpu-index")]
    pub cpu_index: i64,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `MemoryInfo`, the result of `query-memory-size-summary`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryInfo {
    /// Bytes of RAM the guest booted with.
    #[serde(rename = "base-memory")]
    pub base_memory: u64,
    /// Bytes plugged in since (absent without memory hot-plug).
    #[serde(
        rename = "plugged-memory",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub plugged_memory: Option<u64>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// The empty result of the commands that return nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// When QEMU emitted an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timestamp {
    pub seconds: i64,
    pub microseconds: i64,
}

/// An asynchronous event: `{"event", "data", "timestamp"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "event")]
    pub name: String,
    /// The event's members; `Null` for events without any (`STOP`).
    #[serde(default)]
    pub data: Value,
    pub timestamp: Timestamp,
}

/// `SHUTDOWN`'s data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShutdownEvent {
    /// The guest asked for it (power-off, reset); false for `quit` or a signal.
    pub guest: bool,
    /// `ShutdownCause`: `host-qmp-quit`, `guest-shutdown`, `host-signal`, ...
    pub reason: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `MIGRATION`'s data (sent only with the `events` capability on).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationEvent {
    pub status: MigrationStatus,
    #[serde(flatten)]
    pub extra: Extra,
}

/// The events the engine acts on, typed; every other one is `Other`.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    Stop,
    Resume,
    Powerdown,
    Shutdown(ShutdownEvent),
    Migration(MigrationEvent),
    Other,
}

impl Event {
    /// Names of the events [`Event::kind`] types.
    pub const TYPED: &'static [&'static str] =
        &["STOP", "RESUME", "POWERDOWN", "SHUTDOWN", "MIGRATION"];

    /// The event typed; `Other` too when its data does not parse.
    pub fn kind(&self) -> EventKind {
        let data = || self.data.clone();
        match self.name.as_str() {
            "STOP" => EventKind::Stop,
            "RESUME" => EventKind::Resume,
            "POWERDOWN" => EventKind::Powerdown,
            "SHUTDOWN" => serde_json::from_value(data())
                .map(EventKind::Shutdown)
                .unwrap_or(EventKind::Other),
            "MIGRATION" => serde_json::from_value(data())
                .map(EventKind::Migration)
                .unwrap_or(EventKind::Other),
            _ => EventKind::Other,
        }
    }
}

/// One property of a QOM object (`qom-list`): a child device's `type` is
/// `child<...>` (`child<vhost-user-fs-pci>` for a share's device under
/// `/machine/peripheral`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectPropertyInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(
        default,
        rename = "default-value",
        skip_serializing_if = "Option::is_none"
    )]
    pub default_value: Option<Value>,
}
