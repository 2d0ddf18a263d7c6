//! What `vm fs attach` and `vm device attach` added to a running VM:
//! recorded (a snapshot refuses while one is there, QEMU keeps its slot
//! taken) and plugged again at `vm start` where it can be (`ops::vm_replug`;
//! upstream keeps them for the VMM's lifetime only).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A virtio-fs share (vhost-user-fs) of a running VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsConfig {
    /// The guest's mount tag and the detach key.
    pub tag: String,
    /// The virtiofsd socket.
    pub socket: PathBuf,
    pub num_queues: u32,
    pub queue_size: u32,
    /// The hot-plug slot it is in, where the VMM has slots (QEMU's PCIe
    /// root port `cocoon-hp<slot>`, shared with attached disks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
}

/// The device id prefix of attached shares.
pub const FS_PREFIX: &str = "cocoon-fs-";

/// The VMM device id of the share tagged `tag` (upstream's
/// `cocoon-fs-<tag>`).
pub fn fs_device_id(tag: &str) -> String {
    format!("{FS_PREFIX}{tag}")
}

impl FsConfig {
    pub fn device_id(&self) -> String {
        fs_device_id(&self.tag)
    }
}

/// A host PCI device `vm device attach` passed through (VFIO) to a running
/// VM: recorded as a share is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciDevice {
    /// The VMM device id: the user's `--id`, or `cocoon-pci-<bdf>`.
    pub id: String,
    /// `0000:01:00.0`.
    pub bdf: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
}

/// The device id of a device attached without `--id`: the address with
/// `-` for `:` (QEMU's ids take no `:`); never a user's (those cannot start
/// with `cocoon-`).
pub fn pci_device_id(bdf: &str) -> String {
    format!("cocoon-pci-{}", bdf.replace(':', "-"))
}
