//! The records the engine keeps: VMs, images, snapshots, network leases.
//!
//! JSON field names are cocoon's (`types.VM`, `types.Image`, `types.Snapshot`),
//! so `-o json` consumers keep working after switching.

mod hotplug;
mod listing;
mod network;
mod storage;
mod switches;
pub use hotplug::{FS_PREFIX, FsConfig, PciDevice, fs_device_id, pci_device_id};
pub(crate) use listing::ListedDoc;
pub use listing::VmListing;
pub use network::{IpConfig, NetBackend, NetworkConfig, NetworkLease};
pub use storage::{ATTACHED_DISK_PREFIX, StorageConfig, StorageRole, attached_disk_id};
pub use switches::DeviceSwitches;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::name::{SnapshotName, VmName};
use crate::process::ProcessIdentity;

/// cocoon serialises sets as `{"key": {}}`; this is the `{}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

pub type Set = BTreeMap<String, Empty>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Hypervisor {
    #[serde(rename = "cloud-hypervisor")]
    CloudHypervisor,
    #[serde(rename = "firecracker")]
    Firecracker,
    #[serde(rename = "qemu")]
    Qemu,
}

impl Hypervisor {
    pub const ALL: [Hypervisor; 3] = [Self::CloudHypervisor, Self::Firecracker, Self::Qemu];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CloudHypervisor => "cloud-hypervisor",
            Self::Firecracker => "firecracker",
            Self::Qemu => "qemu",
        }
    }
}

impl FromStr for Hypervisor {
    type Err = String;

    /// The full names, and the short ones of the CLI (`ch`, `fc`).
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cloud-hypervisor" | "ch" => Ok(Self::CloudHypervisor),
            "firecracker" | "fc" => Ok(Self::Firecracker),
            "qemu" => Ok(Self::Qemu),
            other => Err(format!(
                "unknown hypervisor {other:?}: expected cloud-hypervisor (ch), firecracker (fc) or qemu"
            )),
        }
    }
}

impl fmt::Display for Hypervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    Creating,
    Created,
    Running,
    Stopped,
    /// Stopped by `vm hibernate`: its VMM gone, its CPUs and memory free,
    /// its guest kept in a snapshot that `vm start` wakes it from.
    Hibernated,
    Error,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Creating => "creating",
            VmState::Created => "created",
            VmState::Running => "running",
            VmState::Stopped => "stopped",
            VmState::Hibernated => "hibernated",
            VmState::Error => "error",
        }
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for VmState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "creating" => VmState::Creating,
            "created" => VmState::Created,
            "running" => VmState::Running,
            "stopped" => VmState::Stopped,
            "hibernated" => VmState::Hibernated,
            "error" => VmState::Error,
            other => return Err(format!("unknown VM state {other:?}")),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageType {
    Oci,
    Cloudimg,
}

impl ImageType {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageType::Oci => "oci",
            ImageType::Cloudimg => "cloudimg",
        }
    }
}

impl fmt::Display for ImageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `types.VMConfig`: what the user asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    /// Validated when read back, like every name here: a record with a bad
    /// name is an error, never a path or a hostname.
    pub name: VmName,
    pub cpu: u32,
    pub memory: u64,
    pub storage: u64,
    #[serde(default)]
    pub queue_size: u32,
    #[serde(default)]
    pub disk_queue_size: u32,
    pub image: String,
    #[serde(default)]
    pub image_digest: String,
    pub image_type: ImageType,
    #[serde(default)]
    pub network: String,
    #[serde(default)]
    pub no_direct_io: bool,
    #[serde(default)]
    pub windows: bool,
    /// No vsock device (`--no-agent`): the guest agent cannot be reached.
    /// Fixed at creation, inherited by clones: a snapshot's VMM state has
    /// the device or not. A record from before VMs had one reads as true.
    #[serde(default = "absent_no_agent")]
    pub no_agent: bool,
    /// CPU control of the VM's cgroup (`--cpu-weight`, `--cpu-quota-us`,
    /// ...): fixed at creation, carried into snapshots and clones.
    #[serde(flatten, default)]
    pub resources: crate::cgroup::CpuLimits,
    /// Device and memory-backing switches (`--hugepages`, `--no-balloon`,
    /// ...): fixed at creation, carried into snapshots and clones (the
    /// VMM's saved state has those devices and that memory).
    #[serde(flatten, default)]
    pub devices: DeviceSwitches,
    /// Slots for disks `vm disk attach` adds while the VM runs, where the
    /// VMM needs them made at launch (QEMU's PCIe root ports): fixed at
    /// creation by the backend, carried into snapshots and clones (the
    /// VMM's saved state has them). 0 with `--no-hotplug`, and on a record
    /// from before them.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hotplug_slots: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// `no_agent` of a record written before the field existed: its VMM (and
/// every snapshot of it) has no vsock device.
fn absent_no_agent() -> bool {
    true
}

impl VmConfig {
    /// A configuration with cocoon's defaults: 2 CPUs, 1 GiB memory, 10 GiB storage.
    pub fn new(name: VmName, image: &str, image_type: ImageType) -> VmConfig {
        VmConfig {
            name,
            cpu: 2,
            memory: 1 << 30,
            storage: 10 << 30,
            queue_size: 0,
            disk_queue_size: 0,
            image: image.to_string(),
            image_digest: String::new(),
            image_type,
            network: String::new(),
            no_direct_io: false,
            windows: false,
            no_agent: false,
            resources: crate::cgroup::CpuLimits::default(),
            devices: DeviceSwitches::default(),
            hotplug_slots: 0,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cmdline: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_path: Option<PathBuf>,
}

/// The VMM process of a running VM: identity that survives pid reuse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmProcess {
    #[serde(flatten)]
    pub identity: ProcessIdentity,
    pub api_socket: PathBuf,
}

/// One VM record, as stored and as `vm inspect` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    pub id: String,
    pub hypervisor: Hypervisor,
    pub state: VmState,
    pub config: VmConfig,
    /// The VMM's pid while running, 0 otherwise (cocoon's field).
    #[serde(default)]
    pub pid: u32,
    #[serde(default)]
    pub socket_path: String,
    /// The hybrid vsock socket of the running VMM (`CONNECT <port>\n`
    /// reaches a guest port); empty when it has no vsock device.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub vsock_socket: String,
    #[serde(default)]
    pub network_configs: Vec<NetworkConfig>,
    #[serde(default)]
    pub storage_configs: Vec<StorageConfig>,
    #[serde(default)]
    pub first_booted: bool,
    /// Derived from the snapshot table on every read, never stale.
    #[serde(default)]
    pub snapshot_ids: Set,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_config: Option<BootConfig>,
    #[serde(default)]
    pub image_blob_ids: Set,
    pub run_dir: PathBuf,
    pub log_dir: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm: Option<VmmProcess>,
    /// The process that drains the guest console while the VMM runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_relay: Option<ProcessIdentity>,
    /// The vsock device's own process while the VMM runs (QEMU's
    /// vhost-device-vsock), known like the VMM by its socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_helper: Option<VmmProcess>,
    /// The snapshot `vm hibernate` put the guest in, while it is needed:
    /// set before that snapshot is complete, cleared once the VM runs from
    /// it (or from another one). `snapshot rm` refuses to remove it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hibernation_snapshot: Option<String>,
    /// The running VMM's RAM while `vm resize` holds the guest below it with
    /// the balloon (`config.memory`: the guest's, and the next boot's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm_memory: Option<u64>,
    /// The network of a VM whose NICs `vm net --nics 0` all removed: its
    /// first NIC as it was (its namespace, where the VMM still runs, its
    /// backend, bridge and queue size), so a later `vm net` grows from it,
    /// a launch runs the VMM there and `vm rm` releases it. None while the
    /// VM has NICs, and for one made without any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_home: Option<NetworkConfig>,
    /// The virtio-fs shares `vm fs attach` added (plugged again at `vm
    /// start`, see [`FsConfig`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filesystems: Vec<FsConfig>,
    /// The host PCI devices `vm device attach` passed through (plugged
    /// again at `vm start`, as shares are).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pci_devices: Vec<PciDevice>,
}

impl Vm {
    /// The NIC a new NIC of this VM is modelled on: its first, or the one
    /// it had before `vm net --nics 0`.
    pub fn nic_template(&self) -> Option<&NetworkConfig> {
        self.network_configs.first().or(self.net_home.as_ref())
    }

    /// The running VMM's configuration: its RAM, not the balloon's target.
    pub fn vmm_config(&self) -> VmConfig {
        let mut config = self.config.clone();
        config.memory = self.vmm_memory.unwrap_or(config.memory);
        config
    }

    /// A new record in state `creating`: reserved, nothing built yet.
    pub fn new(
        id: &str,
        hypervisor: Hypervisor,
        config: VmConfig,
        run_dir: PathBuf,
        log_dir: PathBuf,
    ) -> Vm {
        let now = Timestamp::now();
        Vm {
            id: id.to_string(),
            hypervisor,
            state: VmState::Creating,
            config,
            pid: 0,
            socket_path: String::new(),
            vsock_socket: String::new(),
            network_configs: Vec::new(),
            storage_configs: Vec::new(),
            first_booted: false,
            snapshot_ids: Set::new(),
            created_at: now,
            updated_at: now,
            started_at: None,
            stopped_at: None,
            boot_config: None,
            image_blob_ids: Set::new(),
            run_dir,
            log_dir,
            vmm: None,
            console_relay: None,
            vsock_helper: None,
            hibernation_snapshot: None,
            vmm_memory: None,
            net_home: None,
            filesystems: Vec::new(),
            pci_devices: Vec::new(),
        }
    }

    /// A record whose state says `running` but whose VMM is gone (host reboot,
    /// `kill -9`, crash). Never shown as running.
    pub fn is_stale(&self) -> bool {
        self.state == VmState::Running
            && !self.vmm.as_ref().is_some_and(crate::supervise::is_running)
    }

    /// The snapshots this VM cannot do without (its hibernation or restore
    /// source): `gc --snapshot` never evicts them. Every field of the record
    /// that names a snapshot the VM depends on belongs here.
    pub fn snapshots_needed(&self) -> Vec<String> {
        self.hibernation_snapshot.iter().cloned().collect()
    }

    pub fn ips(&self) -> Vec<String> {
        self.network_configs
            .iter()
            .filter_map(|n| n.network.as_ref().map(|ip| ip.ip.clone()))
            .collect()
    }
}

/// A VM as the CLI shows it: state reconciled with reality on every read.
#[derive(Debug, Clone, Serialize)]
pub struct VmView {
    #[serde(flatten)]
    pub vm: Vm,
    /// True when the record said running but the VMM is dead; `state` then says stopped.
    pub stale: bool,
    /// A container image's main process status (0-255, 128 + signal), as
    /// cocoon-init reported it on the console when the VM powered off;
    /// `vm inspect` of a VM that is not running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u8>,
    /// Where a running VM's console is (upstream #202): the console relay's
    /// socket, which `vm console` attaches to. Empty (and absent from the
    /// JSON) unless the VM runs.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub console_path: String,
    /// The CPU figures of the VM's cgroup while it runs (`cpu.stat`):
    /// usage, periods, throttled periods and time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_stat: Option<crate::cgroup::CpuStat>,
}

impl VmView {
    pub fn reconcile(mut vm: Vm) -> VmView {
        let stale = vm.is_stale();
        if stale {
            vm.state = VmState::Stopped;
            vm.pid = 0;
        }
        // The runtime sockets describe a running VMM only (upstream #202):
        // a stopped VM's record must not advertise paths nobody listens on.
        let console_path = if vm.state == VmState::Running {
            crate::layout::VmPaths::of(&vm)
                .console_socket()
                .display()
                .to_string()
        } else {
            vm.socket_path.clear();
            vm.vsock_socket.clear();
            String::new()
        };
        VmView {
            vm,
            stale,
            exit_code: None,
            console_path,
            cpu_stat: None,
        }
    }

    /// `stopped (stale)` as cocoon's tables show it.
    pub fn state_label(&self) -> String {
        if self.stale {
            format!("{} (stale)", self.vm.state)
        } else {
            self.vm.state.to_string()
        }
    }
}

/// `types.Image` plus what the engine needs to boot it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The manifest digest (OCI) or content checksum (cloud image).
    /// Validated when read back, like every digest here: a record with a bad
    /// digest is an error, never a path.
    pub id: Digest,
    /// The normalised reference or import name users refer to it by.
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ImageType,
    pub size: u64,
    pub created_at: Timestamp,
    /// Layer digests in order (OCI); empty for cloud images.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_layer: Option<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_layer: Option<Digest>,
    /// False for a container image without a kernel: it boots the default
    /// kernel (`cocoon kernel`) with cocoon-init as its init.
    #[serde(default = "own_kernel_default")]
    pub own_kernel: bool,
    /// How to run a container image (its OCI config); absent when the
    /// image has none (cloud images, layer imports, older records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<crate::image::config::ImageConfig>,
}

/// Records written before kernel-less images existed all brought a kernel.
fn own_kernel_default() -> bool {
    true
}

/// `types.Snapshot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: String,
    /// None when unnamed; cocoon writes the key even then, as `""`.
    #[serde(default, with = "crate::name::or_empty")]
    pub name: Option<SnapshotName>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub hypervisor: Hypervisor,
    /// The VM it was taken from, if that VM still exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_id: Option<String>,
    pub cpu: u32,
    pub memory: u64,
    pub storage: u64,
    #[serde(default)]
    pub queue_size: u32,
    #[serde(default)]
    pub disk_queue_size: u32,
    pub image: String,
    #[serde(default)]
    pub image_digest: String,
    pub image_type: ImageType,
    #[serde(default)]
    pub network: String,
    #[serde(default)]
    pub no_direct_io: bool,
    #[serde(default)]
    pub windows: bool,
    #[serde(default)]
    pub nics: u32,
    #[serde(default)]
    pub image_blob_ids: Set,
    pub created_at: Timestamp,
    /// True until every file is in place and verified.
    #[serde(default)]
    pub pending: bool,
    pub data_dir: PathBuf,
    /// When a clone, restore or export last used it (upstream's
    /// `last_accessed_at`, #53): `gc --snapshot` evicts the least recently used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_accessed_at: Option<Timestamp>,
}

impl Snapshot {
    /// A pending snapshot record of `vm`: its configuration and blob pins, no
    /// files yet. It becomes usable when `pending` is cleared.
    pub fn of_vm(id: &str, name: Option<SnapshotName>, vm: &Vm, data_dir: PathBuf) -> Snapshot {
        let c = &vm.vmm_config();
        Snapshot {
            id: id.to_string(),
            name,
            description: String::new(),
            hypervisor: vm.hypervisor,
            vm_id: Some(vm.id.clone()),
            cpu: c.cpu,
            memory: c.memory,
            storage: c.storage,
            queue_size: c.queue_size,
            disk_queue_size: c.disk_queue_size,
            image: c.image.clone(),
            image_digest: c.image_digest.clone(),
            image_type: c.image_type,
            network: c.network.clone(),
            no_direct_io: c.no_direct_io,
            windows: c.windows,
            nics: u32::try_from(vm.network_configs.len()).expect("NICs are made from a u32 count"),
            image_blob_ids: vm.image_blob_ids.clone(),
            created_at: Timestamp::now(),
            pending: true,
            data_dir,
            last_accessed_at: None,
        }
    }
}
