//! A VM's own domain pieces: its errors, its default name, and how its
//! disks are made (raw disks, a cloud image's qcow2 overlay). The lifecycle
//! operations that use them are in `ops/`; what differs per VMM in `backend/`.

pub mod disk_template;
pub mod disks;
mod naming;
pub mod overlay;

pub use naming::default_vm_name;

use crate::image::vmlinux::VmlinuxError;
use crate::name::VmName;
use crate::supervise::SuperviseError;
use disks::DiskError;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("VM {name} ({id}) is running; stop it first (`cocoon vm stop {name}`) or pass --force")]
    Running { id: String, name: VmName },
    #[error("VM {name} ({id}) is not running; start it with `cocoon vm start {name}`")]
    NotRunning { id: String, name: VmName },
    /// `vm disk attach` of a name (or file) the VM already has.
    #[error(
        "VM {vm} already has {what}; pick another --name or --path, or detach it first (`cocoon vm disk detach {vm} --name {name}`)"
    )]
    DiskTaken {
        vm: VmName,
        what: String,
        name: String,
    },
    #[error(
        "VM {vm} has no attached disk named {name}; `cocoon vm inspect {vm}` lists its disks (attached ones have \"external\": true)"
    )]
    NoAttachedDisk { vm: VmName, name: String },
    /// The VMM cannot hot-plug (the reason says what to do instead).
    #[error("cannot {what} a disk on VM {vm}: {reason}")]
    HotPlugRefused {
        vm: VmName,
        what: &'static str,
        reason: String,
    },
    /// `vm net` that cannot be done on this VM (the reason says what to
    /// do instead); nothing changed.
    #[error("cannot change the NICs of VM {vm}: {reason}")]
    NicsRefused { vm: VmName, reason: String },
    /// `vm net`: the VMM or the network failed on one NIC; the VM keeps
    /// the NICs it has.
    #[error(
        "cannot {what} NIC eth{index} of VM {vm}: {reason}; the VM has {nics} NIC(s) now (`cocoon vm inspect {vm}`)"
    )]
    NicHotPlug {
        vm: VmName,
        what: &'static str,
        index: usize,
        nics: usize,
        reason: String,
    },
    /// `vm fs attach` of a tag the VM already has.
    #[error(
        "VM {vm} already has a virtio-fs share tagged {tag}; pick another --tag, or detach it first (`cocoon vm fs detach {vm} --tag {tag}`)"
    )]
    FsTaken { vm: VmName, tag: String },
    #[error(
        "VM {vm} has no virtio-fs share tagged {tag}; `cocoon vm inspect {vm}` lists its shares (\"filesystems\")"
    )]
    NoAttachedFs { vm: VmName, tag: String },
    /// `vm device attach` of an id or a device the VM already has.
    #[error(
        "VM {vm} already has {what}; pick another --id or --pci, or detach it first (`cocoon vm device detach {vm} --id {id}`)"
    )]
    DeviceTaken {
        vm: VmName,
        what: String,
        id: String,
    },
    #[error(
        "VM {vm} has no PCI device with id {id}; `cocoon vm inspect {vm}` lists them (\"pci_devices\")"
    )]
    NoAttachedDevice { vm: VmName, id: String },
    /// The VMM (or the VM) cannot take or give back a share or a device;
    /// the reason says what to do instead. `what`: "attach a virtio-fs
    /// share to", ...
    #[error("cannot {what} VM {vm}: {reason}")]
    DeviceRefused {
        vm: VmName,
        what: &'static str,
        reason: String,
    },
    /// The VMM refused or failed a share's or a device's hot-plug; nothing
    /// changed.
    #[error("cannot {what} {name} on VM {vm}: {reason}; the VM is as it was")]
    DeviceHotPlug {
        vm: VmName,
        what: &'static str,
        name: String,
        reason: String,
    },
    /// The VMM refused or failed the hot-plug; nothing changed.
    #[error("cannot {what} disk {name} on VM {vm}: {reason}; the VM's disks are as they were")]
    HotPlug {
        vm: VmName,
        what: &'static str,
        name: String,
        reason: String,
    },
    #[error(
        "VM {name} ({id}) is {state} and cannot be restored: only a running, stopped, hibernated or failed VM can (a VM that never ran has nothing to go back to; start it with `cocoon vm start {name}`)"
    )]
    NotRestorable {
        id: String,
        name: VmName,
        state: crate::model::VmState,
    },
    #[error(
        "image {image} is a cloud image, which boots through UEFI on Cloud Hypervisor or QEMU only; create it without --fc (and with use_firecracker off)"
    )]
    CloudImageOnFirecracker { image: String },
    #[error(
        "VM {name}: {vmm} cannot take {flag}: {reason}; create it without {flag}, or on another VMM (--hypervisor)"
    )]
    SwitchRefused {
        name: VmName,
        vmm: &'static str,
        flag: &'static str,
        reason: &'static str,
    },
    #[error(
        "VM {name}: --mergeable and --shared-memory exclude each other (KSM merges only private guest memory, and Cloud Hypervisor refuses both); create it with one of them"
    )]
    MergeableSharedMemory { name: VmName },
    #[error(
        "snapshot {snapshot} was taken without {flag}: a VM restored or cloned from it keeps the snapshot's devices and memory backing; leave out {flag}, or create a new VM with it"
    )]
    SwitchNotInSnapshot {
        snapshot: String,
        flag: &'static str,
    },
    #[error(
        "image {image} is an OCI image, which boots its own kernel; --windows needs a cloud image"
    )]
    WindowsNeedsCloudImage { image: String },
    #[error(
        "image {image} boots through UEFI and needs Cloud Hypervisor's firmware at {}, which is missing: run scripts/fetch-firmware.sh, or take CLOUDHV.fd from Debian's cloudhv-efi-x86-64 package (testing or unstable: `apt-get download cloudhv-efi-x86-64`, then `dpkg-deb -x` it) and copy it there, or set firmware_path (COCOON_FIRMWARE_PATH)",
        path.display()
    )]
    FirmwareMissing {
        image: String,
        path: std::path::PathBuf,
    },
    #[error(
        "image {image} boots through UEFI and needs QEMU's firmware at {}, which is missing: install Debian's ovmf package (apt-get install ovmf), or set qemu_firmware and qemu_firmware_vars (COCOON_QEMU_FIRMWARE, COCOON_QEMU_FIRMWARE_VARS) to an OVMF code file and its variable store template",
        path.display()
    )]
    OvmfMissing {
        image: String,
        path: std::path::PathBuf,
    },
    #[error(
        "image {image} has no {what}; the guest contract needs a kernel and an initrd in the image"
    )]
    MissingBootFile { image: String, what: &'static str },
    #[error("cannot start VM {name} ({id}): {source}")]
    Launch {
        id: String,
        name: VmName,
        #[source]
        source: SuperviseError,
    },
    #[error("VM {name} ({id}) did not boot: {reason}{}", log_tail(.log))]
    Boot {
        id: String,
        name: VmName,
        reason: String,
        log: String,
    },
    #[error("cannot start the console relay of VM {name} ({id}): {source}")]
    Relay {
        id: String,
        name: VmName,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot stop VM {name} ({id}): {source}")]
    Stop {
        id: String,
        name: VmName,
        #[source]
        source: SuperviseError,
    },
    #[error("cannot remove {what} of VM {name} ({id}) at {}: {source}; the record is kept, run `cocoon vm rm` again", path.display())]
    Remove {
        id: String,
        name: VmName,
        what: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("VM {name} ({id}) is {state} and cannot be resized: {hint}")]
    NotResizable {
        id: String,
        name: VmName,
        state: &'static str,
        hint: String,
    },
    #[error("cannot resize VM {name} ({id}) to {target}: {reason}")]
    ResizeRefused {
        id: String,
        name: VmName,
        target: String,
        reason: String,
    },
    #[error(
        "cannot resize VM {name} ({id}) to {target}: its VMM answered: {source}; its record is unchanged ({current})"
    )]
    ResizeFailed {
        id: String,
        name: VmName,
        target: String,
        current: String,
        #[source]
        source: Box<vmm_api::ApiError>,
    },
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(transparent)]
    Vmlinux(#[from] VmlinuxError),
    #[error(transparent)]
    Overlay(#[from] overlay::OverlayError),
    #[error(transparent)]
    Cidata(#[from] crate::guest::cidata::CidataError),
}

fn log_tail(log: &str) -> String {
    if log.trim().is_empty() {
        String::new()
    } else {
        format!("; VMM output:\n{}", log.trim_end())
    }
}
