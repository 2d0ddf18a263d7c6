//! A VM's disks as recorded: the engine's own (image layers, the COW or
//! overlay disk, cloud-init, `--data-disk`) and the host files `vm disk
//! attach` added.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::spec::{DirectIo, FsType};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageRole {
    Layer,
    Cow,
    Cidata,
    Data,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageConfig {
    pub path: PathBuf,
    pub ro: bool,
    pub serial: String,
    pub role: StorageRole,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mount_point: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fstype: Option<FsType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_io: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directio_mode: Option<DirectIo>,
    /// Where the running VMM sees this disk, when not at `path`: a
    /// Firecracker clone's VMM reopens the disk paths its vmstate names (the
    /// source VM's), and its jail shows `path` there (see [`crate::jail`]).
    /// Cleared when the VMM boots afresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm_path: Option<PathBuf>,
    /// A host file `vm disk attach` attached (upstream's `external`): the
    /// user's, never made, grown or removed by the engine; its serial is the
    /// name the user gave it, its VMM device id [`StorageConfig::device_id`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
    /// The hot-plug slot an attached disk is in, where the VMM has slots
    /// (QEMU's PCIe root port `cocoon-hp<slot>`): it is put back there at
    /// launch, where a restore's saved device state expects it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
}

/// The device id prefix of attached disks.
pub const ATTACHED_DISK_PREFIX: &str = "cocoon-disk-";

/// The VMM device id of an attached disk named `name` (upstream's
/// `cocoon-disk-<name>`): attach and detach agree on it, and a second
/// attach of the name collides on it in the VMM too.
pub fn attached_disk_id(name: &str) -> String {
    format!("{ATTACHED_DISK_PREFIX}{name}")
}

impl StorageConfig {
    /// The VMM device id of an attached disk (None: an engine disk).
    pub fn device_id(&self) -> Option<String> {
        self.external.then(|| attached_disk_id(&self.serial))
    }
}
