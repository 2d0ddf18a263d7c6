//! What a backend needs to know about the host and the launch, beyond the VM record.

use std::path::PathBuf;

use crate::model::{Vm, VmConfig};

/// Host facts and overrides that shape a launch. `vm debug` fills the same
/// struct (with its own flags), so both print and run one code path.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    pub binary: PathBuf,
    /// vCPU hotplug ceiling (CH `max=`): the host's CPUs.
    pub max_cpus: u32,
    /// Memory hot-plug ceiling (CH `hotplug_size` up to it): the host's RAM.
    pub max_memory: u64,
    /// Balloon size override in bytes; None = a quarter of memory.
    pub balloon_bytes: Option<u64>,
    /// QEMU: KVM, TCG, or KVM when it works (`qemu_accel`).
    pub qemu_accel: crate::config::QemuAccel,
    /// QEMU: the UEFI variable store template a VM's own copy starts from
    /// (`qemu_firmware_vars`).
    pub qemu_firmware_vars: PathBuf,
    /// The VM boots a container image: the default kernel (a stock kernel,
    /// see [`crate::doctor::kvm_is_pvm`]: QEMU's `auto` then emulates on
    /// PVM) and cocoon-init, whose guest agent is the only one a QEMU VM's
    /// vsock device is for.
    pub container: bool,
    /// QEMU: the vhost-device-vsock binary its vsock device runs on (None:
    /// not installed, so QEMU VMs start without vsock).
    pub vhost_vsock: Option<PathBuf>,
}

impl LaunchOptions {
    pub fn for_host(binary: PathBuf) -> LaunchOptions {
        LaunchOptions {
            binary,
            max_cpus: crate::spec::host_cpus(),
            max_memory: crate::spec::host_memory(),
            balloon_bytes: None,
            qemu_accel: crate::config::QemuAccel::Auto,
            qemu_firmware_vars: crate::config::Config::default().qemu_firmware_vars,
            container: false,
            vhost_vsock: None,
        }
    }

    /// The options a launch under `config` gets: its binaries and QEMU's settings.
    pub fn configured(binary: PathBuf, config: &crate::config::Config) -> LaunchOptions {
        let mut opts = LaunchOptions::for_host(binary);
        opts.qemu_accel = config.qemu_accel;
        opts.qemu_firmware_vars = config.qemu_firmware_vars.clone();
        opts.vhost_vsock = crate::process::find_helper_program(&config.vhost_vsock_binary).ok();
        opts
    }

    /// The balloon cocoon gives a VM: a quarter of memory from 256 MiB up,
    /// none for Windows (the virtio-win deflate storm, docs/reference/cocoon-v0.3.8.md §4.12).
    pub fn balloon(&self, vm: &Vm) -> Option<u64> {
        balloon(&vm.config).map(|default| self.balloon_bytes.unwrap_or(default))
    }
}

/// The balloon a VM gets by default: a quarter of memory from 256 MiB up,
/// none for Windows (the virtio-win deflate storm, docs/reference/cocoon-v0.3.8.md §4.12)
/// nor with `--no-balloon`.
pub fn balloon(config: &VmConfig) -> Option<u64> {
    if config.windows || config.devices.no_balloon || config.memory < 256 << 20 {
        return None;
    }
    Some(config.memory / 4)
}

/// The memory a VM may grow to while it runs, past its `memory`: up to
/// `max_memory` (the host's RAM), in the 128 MiB blocks ACPI memory
/// hot-plug adds. Reserving it costs the host nothing (guest address space
/// only); RAM is allocated when `vm resize` plugs it. 0: no room.
pub fn hotplug_room(memory: u64, max_memory: u64) -> u64 {
    const BLOCK: u64 = 128 << 20;
    max_memory.saturating_sub(memory) / BLOCK * BLOCK
}

/// The guest CID of every VM's vsock device. Hybrid vsock needs no
/// host-unique CID: each VM has its own device, reached through its own
/// unix socket, and the host side is never an `AF_VSOCK` socket.
pub const GUEST_CID: u32 = 3;

/// A process the VMM needs running before its launch, listening on
/// `socket` (QEMU's vhost-device-vsock); known by that socket afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Helper {
    pub binary: PathBuf,
    pub args: Vec<String>,
    pub socket: PathBuf,
}

/// Whether the host reserved any huge pages (`cocoon doctor`'s hint for
/// `--hugepages`; a VM uses them only when asked, as upstream since #158).
pub fn host_has_hugepages() -> bool {
    std::fs::read_to_string("/proc/sys/vm/nr_hugepages")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 0)
}
