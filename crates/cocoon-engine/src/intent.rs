//! Typed intents: what a multi-step operation records before it changes the
//! world, so that crash recovery (`ops::recover`) knows what to converge.
//!
//! The store keeps an intent as an operation name plus a JSON object; this
//! enum is the only code that writes or reads that pair, and recovery
//! matches it exhaustively: a new operation cannot forget its recovery.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::model::VmState;
use crate::store::{Intent, ObjectKind};

/// One operation in flight, with what recovery needs to undo or finish it.
/// The serde tag is the name stored in the `op` column (stable: rows written
/// by an earlier version are read back the same way).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op")]
pub enum Op {
    #[serde(rename = "vm.create")]
    VmCreate {
        #[serde(default)]
        run_dir: PathBuf,
        #[serde(default)]
        log_dir: PathBuf,
    },
    #[serde(rename = "vm.clone")]
    VmClone {
        #[serde(default)]
        snapshot: String,
        #[serde(default)]
        run_dir: PathBuf,
        #[serde(default)]
        log_dir: PathBuf,
    },
    #[serde(rename = "vm.start")]
    VmStart {},
    #[serde(rename = "vm.stop")]
    VmStop {},
    #[serde(rename = "vm.rm")]
    VmRemove {
        #[serde(default)]
        run_dir: PathBuf,
        #[serde(default)]
        log_dir: PathBuf,
    },
    #[serde(rename = "vm.restore")]
    VmRestore {
        #[serde(default)]
        snapshot: String,
        /// The VM's state before the restore: a VM that had no VMM (stopped,
        /// hibernated) goes back to it when the restore is undone.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<VmState>,
    },
    /// `vm hibernate`: the object is the VM; `snapshot` the one it goes into.
    #[serde(rename = "vm.hibernate")]
    VmHibernate {
        #[serde(default)]
        snapshot: String,
        #[serde(default)]
        data_dir: PathBuf,
        #[serde(default)]
        api_socket: PathBuf,
    },
    /// `vm resize` of a running VM: the record it had and the one asked
    /// for (recovery re-asks the VMM for `to`, which is idempotent).
    #[serde(rename = "vm.resize")]
    VmResize {
        #[serde(default)]
        api_socket: PathBuf,
        #[serde(default)]
        cpu: u32,
        #[serde(default)]
        memory: u64,
    },
    /// `vm disk attach`: the object is the VM; `name` the disk's.
    #[serde(rename = "vm.disk.attach")]
    VmDiskAttach {
        #[serde(default)]
        name: String,
    },
    /// `vm disk detach`: the object is the VM; `name` the disk's.
    #[serde(rename = "vm.disk.detach")]
    VmDiskDetach {
        #[serde(default)]
        name: String,
    },
    /// `vm net --nics N`: the object is the VM; `nics` the count asked
    /// for, `from` the count it had.
    #[serde(rename = "vm.net")]
    VmNet {
        #[serde(default)]
        from: u32,
        #[serde(default)]
        nics: u32,
    },
    /// `vm fs attach`: the object is the VM; `tag` the share's.
    #[serde(rename = "vm.fs.attach")]
    VmFsAttach {
        #[serde(default)]
        tag: String,
    },
    /// `vm fs detach`: the object is the VM; `tag` the share's.
    #[serde(rename = "vm.fs.detach")]
    VmFsDetach {
        #[serde(default)]
        tag: String,
    },
    /// `vm device attach`: the object is the VM; `id` the device's.
    #[serde(rename = "vm.device.attach")]
    VmDeviceAttach {
        #[serde(default)]
        id: String,
    },
    /// `vm device detach`: the object is the VM; `id` the device's.
    #[serde(rename = "vm.device.detach")]
    VmDeviceDetach {
        #[serde(default)]
        id: String,
    },
    #[serde(rename = "snapshot.save")]
    SnapshotSave {
        #[serde(default)]
        vm_id: String,
        #[serde(default)]
        data_dir: PathBuf,
        #[serde(default)]
        api_socket: PathBuf,
    },
    #[serde(rename = "snapshot.import")]
    SnapshotImport {
        #[serde(default)]
        data_dir: PathBuf,
        #[serde(default)]
        staging: PathBuf,
    },
    /// `gc --snapshot` evicting one snapshot: finished by recovery.
    #[serde(rename = "snapshot.evict")]
    SnapshotEvict {
        #[serde(default)]
        data_dir: PathBuf,
    },
    /// An OCI pull names its manifest digest, a cloud-image pull its URL.
    #[serde(rename = "image.pull")]
    ImagePull {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        digest: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
    },
    #[serde(rename = "image.import")]
    ImageImport {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<String>,
    },
}

/// The steps an operation reports, where recovery's choice depends on them.
pub mod step {
    /// `snapshot save`, `vm hibernate`: the VMM state and disk copies are
    /// written (and, for hibernate, the snapshot complete: roll forward).
    pub const CAPTURED: &str = "captured";
    /// `vm restore`: staged disks are being swapped in (roll back to the old).
    pub const SWAPPING: &str = "swapping";
    /// `vm restore`: the VM runs on the new disks (roll forward).
    pub const COMMITTING: &str = "committing";
}

impl Op {
    /// The name stored in the `op` column.
    pub fn name(&self) -> &'static str {
        match self {
            Op::VmCreate { .. } => "vm.create",
            Op::VmClone { .. } => "vm.clone",
            Op::VmStart {} => "vm.start",
            Op::VmStop {} => "vm.stop",
            Op::VmRemove { .. } => "vm.rm",
            Op::VmRestore { .. } => "vm.restore",
            Op::VmHibernate { .. } => "vm.hibernate",
            Op::VmResize { .. } => "vm.resize",
            Op::VmDiskAttach { .. } => "vm.disk.attach",
            Op::VmDiskDetach { .. } => "vm.disk.detach",
            Op::VmNet { .. } => "vm.net",
            Op::VmFsAttach { .. } => "vm.fs.attach",
            Op::VmFsDetach { .. } => "vm.fs.detach",
            Op::VmDeviceAttach { .. } => "vm.device.attach",
            Op::VmDeviceDetach { .. } => "vm.device.detach",
            Op::SnapshotSave { .. } => "snapshot.save",
            Op::SnapshotImport { .. } => "snapshot.import",
            Op::SnapshotEvict { .. } => "snapshot.evict",
            Op::ImagePull { .. } => "image.pull",
            Op::ImageImport { .. } => "image.import",
        }
    }

    /// The kind of object the intent's `object_id` names.
    pub fn kind(&self) -> ObjectKind {
        match self {
            Op::VmCreate { .. }
            | Op::VmClone { .. }
            | Op::VmStart {}
            | Op::VmStop {}
            | Op::VmRemove { .. }
            | Op::VmRestore { .. }
            | Op::VmHibernate { .. }
            | Op::VmResize { .. }
            | Op::VmDiskAttach { .. }
            | Op::VmDiskDetach { .. }
            | Op::VmNet { .. }
            | Op::VmFsAttach { .. }
            | Op::VmFsDetach { .. }
            | Op::VmDeviceAttach { .. }
            | Op::VmDeviceDetach { .. } => ObjectKind::Vm,
            Op::SnapshotSave { .. } | Op::SnapshotImport { .. } | Op::SnapshotEvict { .. } => {
                ObjectKind::Snapshot
            }
            Op::ImagePull { .. } | Op::ImageImport { .. } => ObjectKind::Image,
        }
    }

    /// The JSON object stored beside the name.
    pub fn data(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).expect("intents serialise");
        if let Some(object) = value.as_object_mut() {
            object.remove("op");
        }
        value
    }

    /// The operation a stored intent records; None for a name this version
    /// does not know (recovery then drops the row).
    pub fn of(intent: &Intent) -> Option<Op> {
        let mut value = match &intent.data {
            serde_json::Value::Object(_) => intent.data.clone(),
            _ => serde_json::json!({}),
        };
        value["op"] = serde_json::Value::String(intent.op.clone());
        serde_json::from_value(value).ok()
    }

    /// Whether an image is being stored (gc keeps unpinned blobs then).
    pub fn stores_image(name: &str) -> bool {
        name == "image.pull" || name == "image.import"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(op: &Op) -> Intent {
        Intent {
            id: 1,
            op: op.name().to_string(),
            object_kind: op.kind().as_str().to_string(),
            object_id: "X".into(),
            step: "begin".into(),
            owner: crate::process::ProcessIdentity::current(),
            started_at: jiff::Timestamp::UNIX_EPOCH,
            updated_at: jiff::Timestamp::UNIX_EPOCH,
            data: op.data(),
        }
    }

    #[test]
    fn every_op_reads_back_as_written() {
        let ops = [
            Op::VmCreate {
                run_dir: "/r/vms/X".into(),
                log_dir: "/l/vms/X".into(),
            },
            Op::VmClone {
                snapshot: "S".into(),
                run_dir: "/r".into(),
                log_dir: "/l".into(),
            },
            Op::VmStart {},
            Op::VmStop {},
            Op::VmRemove {
                run_dir: "/r".into(),
                log_dir: "/l".into(),
            },
            Op::VmRestore {
                snapshot: "S".into(),
                origin: None,
            },
            Op::VmRestore {
                snapshot: "S".into(),
                origin: Some(VmState::Stopped),
            },
            Op::SnapshotSave {
                vm_id: "V".into(),
                data_dir: "/s".into(),
                api_socket: "/a.sock".into(),
            },
            Op::VmHibernate {
                snapshot: "S".into(),
                data_dir: "/s".into(),
                api_socket: "/a.sock".into(),
            },
            Op::VmResize {
                api_socket: "/a.sock".into(),
                cpu: 4,
                memory: 2 << 30,
            },
            Op::SnapshotImport {
                data_dir: "/s".into(),
                staging: "/s/.import-S".into(),
            },
            Op::VmDiskAttach { name: "a".into() },
            Op::VmDiskDetach { name: "a".into() },
            Op::VmNet { from: 1, nics: 3 },
            Op::VmFsAttach { tag: "a".into() },
            Op::VmFsDetach { tag: "a".into() },
            Op::VmDeviceAttach { id: "a".into() },
            Op::VmDeviceDetach { id: "a".into() },
            Op::ImagePull {
                digest: Some(format!("sha256:{}", "a".repeat(64))),
                url: None,
            },
            Op::ImagePull {
                digest: None,
                url: Some("https://example.test/x.img".into()),
            },
            Op::ImageImport { source: None },
        ];
        for op in ops {
            assert_eq!(Op::of(&stored(&op)), Some(op.clone()), "{}", op.name());
        }
    }

    #[test]
    fn rows_of_earlier_versions_read_back() {
        // The JSON the untyped code wrote, byte for byte.
        let mut intent = stored(&Op::VmStop {});
        intent.op = "snapshot.save".into();
        intent.data =
            serde_json::json!({"vm_id": "V", "data_dir": "/s/X", "api_socket": "/r/api.sock"});
        assert_eq!(
            Op::of(&intent),
            Some(Op::SnapshotSave {
                vm_id: "V".into(),
                data_dir: "/s/X".into(),
                api_socket: "/r/api.sock".into()
            })
        );
        intent.op = "image.pull".into();
        intent.data = serde_json::json!({"digest": "sha256:ab"});
        assert_eq!(
            Op::ImagePull {
                digest: Some("sha256:ab".into()),
                url: None
            }
            .data(),
            intent.data
        );
        intent.op = "vm.teleport".into();
        assert_eq!(Op::of(&intent), None);
    }
}
