//! QEMU's vsock: this host's kernel has no `vhost_vsock`, so the device is
//! `vhost-user-vsock` served by rust-vmm's vhost-device-vsock, one process
//! per VM, started before QEMU. It offers the same hybrid vsock as Cloud
//! Hypervisor and Firecracker on [`VmPaths::vsock_socket`]. vhost-user
//! needs guest memory QEMU can share with that process: a memfd backend.
//!
//! QEMU cannot migrate a vhost-user-vsock device ("non-migratable device",
//! and vhost-device-vsock lacks `VHOST_USER_PROTOCOL_F_LOG_SHMFD`), so a
//! QEMU VM with vsock cannot be snapshotted ([`blocker`]).

use crate::backend::{GUEST_CID, Helper, LaunchOptions};
use crate::layout::VmPaths;
use crate::model::Vm;

use super::args::value;

/// The memory backend's id on QEMU's command line.
pub(super) const MEMORY: &str = "mem";

/// Whether the VM gets its vsock device on this launch: a container
/// image's (its guest agent is cocoon-init's), not `--no-agent`, and
/// vhost-device-vsock is installed. Other QEMU VMs have no agent the engine
/// knows of, and without the device they keep snapshots ([`blocker`]).
pub fn on(vm: &Vm, opts: &LaunchOptions) -> bool {
    !vm.config.no_agent && opts.container && opts.vhost_vsock.is_some()
}

/// vhost-device-vsock for the VM: the vhost-user socket QEMU connects to,
/// and the hybrid vsock socket. Separate flags, so the process is found by
/// its socket on its command line as the VMM is.
pub fn helper(vm: &Vm, paths: &VmPaths, opts: &LaunchOptions) -> Option<Helper> {
    if !on(vm, opts) {
        return None;
    }
    let binary = opts.vhost_vsock.clone()?;
    let socket = paths.vhost_vsock_socket();
    let args = vec![
        "--guest-cid".into(),
        GUEST_CID.to_string(),
        "--socket".into(),
        socket.display().to_string(),
        "--uds-path".into(),
        paths.vsock_socket().display().to_string(),
    ];
    Some(Helper {
        binary,
        args,
        socket,
    })
}

/// `-m` and, with vsock (vhost-user maps guest memory into
/// vhost-device-vsock), `--shared-memory` or `--hugepages`, guest memory in
/// a memfd: shared for the first two, on huge pages (`hugetlb=on`) for the
/// last; the machine then names it (`machine_option`).
pub fn memory(vm: &Vm, vsock: bool, push: &mut impl FnMut(&str, String)) {
    let mib = vm.config.memory >> 20;
    push("-m", format!("{mib}M"));
    if memfd(vm, vsock) {
        let switches = &vm.config.devices;
        let mut object = format!("memory-backend-memfd,id={MEMORY},size={mib}M");
        if vsock || switches.shared_memory {
            object.push_str(",share=on");
        }
        if switches.hugepages {
            object.push_str(",hugetlb=on");
        }
        push("-object", object);
    }
}

/// Whether guest memory is a memfd backend (see [`memory`]).
fn memfd(vm: &Vm, vsock: bool) -> bool {
    vsock || vm.config.devices.shared_memory || vm.config.devices.hugepages
}

/// The `-machine` suffix that makes the memfd the guest's RAM, and KSM's
/// switch: QEMU merges by default, cocoon only with `--mergeable` (as on
/// Cloud Hypervisor).
pub fn machine_option(vm: &Vm, vsock: bool) -> String {
    let merge = if vm.config.devices.mergeable {
        "on"
    } else {
        "off"
    };
    if memfd(vm, vsock) {
        format!(",memory-backend={MEMORY},mem-merge={merge}")
    } else {
        format!(",mem-merge={merge}")
    }
}

/// The device on `transport` (`device`: virtio-mmio, `pci`), connected to
/// vhost-device-vsock's socket.
pub fn device(paths: &VmPaths, transport: &str, push: &mut impl FnMut(&str, String)) {
    push(
        "-chardev",
        format!(
            "socket,id=vsock,path={}",
            value(&paths.vhost_vsock_socket())
        ),
    );
    push(
        "-device",
        format!("vhost-user-vsock-{transport},chardev=vsock"),
    );
}

/// Why a running QEMU VM cannot be snapshotted: its vsock device.
pub fn blocker(vm: &Vm) -> Option<String> {
    (!vm.vsock_socket.is_empty()).then(|| {
        "QEMU cannot save a vhost-user-vsock device (it is not migratable); a QEMU VM that should be snapshotted must be created with --no-agent".to_string()
    })
}
