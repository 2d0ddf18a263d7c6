//! QEMU's command line: `-M microvm` for a direct boot (kernel, initrd, the
//! guest contract's disks in order on virtio-mmio, the serial port as the
//! console on QEMU's stdin/stdout), QMP on the VM's API socket. A restore
//! runs the same command line with `-incoming defer`: QEMU's migration
//! stream holds device state only, so every host path QEMU opens comes
//! from this command line, built from the engine's own records.

use std::path::Path;

use crate::backend::LaunchOptions;
use crate::config::QemuAccel;
use crate::layout::VmPaths;
use crate::model::{NetworkConfig, StorageConfig, Vm};

/// The seccomp sandbox QEMU runs under: no obsolete syscalls, no privilege
/// changes, no new processes, no scheduler or resource changes.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// Whether the guest runs under KVM: `auto` probes `/dev/kvm` (opens and
/// creates a VM), else TCG; a stock kernel on a PVM host is emulated too,
/// as PVM cannot run it.
pub fn uses_kvm(accel: QemuAccel, container: bool) -> bool {
    match accel {
        QemuAccel::Kvm => true,
        QemuAccel::Tcg => false,
        QemuAccel::Auto => {
            crate::doctor::kvm_usable() && !(container && crate::doctor::kvm_is_pvm())
        }
    }
}

/// The host device vhost-net offloads a NIC's data path to (KVM only).
const VHOST_NET: &str = "/dev/vhost-net";

/// What the host offers QEMU.
#[derive(Debug, Clone, Copy)]
pub(super) struct Host {
    /// The guest runs under KVM (else TCG).
    pub kvm: bool,
    /// `/dev/vhost-net` exists.
    pub vhost_net: bool,
}

impl Host {
    /// This host, with the accelerator already decided.
    pub fn probe(kvm: bool) -> Host {
        Host {
            kvm,
            vhost_net: Path::new(VHOST_NET).exists(),
        }
    }

    /// vhost-net carries a NIC's data path: KVM guests only.
    fn vhost(self) -> bool {
        self.kvm && self.vhost_net
    }
}

/// The arguments after the binary. `restoring`: wait for the incoming
/// state instead of booting; a fresh boot starts paused (`-S`) until the
/// engine's `cont`.
pub fn args(
    vm: &Vm,
    paths: &VmPaths,
    opts: &LaunchOptions,
    kvm: bool,
    restoring: bool,
) -> Vec<String> {
    args_on(vm, paths, opts, Host::probe(kvm), restoring)
}

/// [`args`] on a host described, not probed.
fn args_on(
    vm: &Vm,
    paths: &VmPaths,
    opts: &LaunchOptions,
    host: Host,
    restoring: bool,
) -> Vec<String> {
    let kvm = host.kvm;
    let c = &vm.config;
    let mut args: Vec<String> = Vec::new();
    let mut push = |flag: &str, value: String| {
        args.push(flag.to_string());
        args.push(value);
    };
    let vsock = super::vsock::on(vm, opts);
    // PCIe (for the hot-plug root ports) beside microvm's virtio-mmio.
    let microvm = if vm.config.hotplug_slots > 0 {
        "microvm,pcie=on"
    } else {
        "microvm"
    };
    machine(vm, microvm, kvm, vsock, &mut push);
    // qboot, not microvm's default SeaBIOS: SeaBIOS sets up the virtio-blk
    // rings itself (looking for a boot disk) and leaves them to a guest that
    // may never reset the devices; their stale state then fails the load of
    // a snapshot ("VQ 0 size 0x100 < last_avail_idx ..."). qboot only loads
    // the kernel, and faster.
    push("-bios", "qboot.rom".into());
    // TCG: microvm has neither HPET nor ACPI PM timer, so Linux calibrates
    // the TSC against the PIT alone; when the host is busy (another TCG
    // guest will do) the vCPU thread is preempted mid-calibration, both PIT
    // methods fail ("tsc: Unable to calibrate against PIT"), the TSC is
    // marked unstable and the kernel hangs in calibrate_delay() waiting for
    // a jiffy. Guest time counted from executed instructions makes the PIT
    // and the TSC agree. (KVM guests get kvm-clock instead.)
    if !kvm {
        push("-icount", "shift=auto".into());
    }
    push("-smp", c.cpu.to_string());
    super::vsock::memory(vm, vsock, &mut push);
    control(paths, &mut push);
    devices(vm, opts, host, &mut push);
    super::hotplug::launch_disks(vm, restoring, &mut push);
    super::hotplug_nic::launch_nics(vm, restoring, &mut push);
    if vsock {
        super::vsock::device(paths, "device", &mut push);
    }
    // The contract's MMIO command line has `reboot=k`: a guest reboot ends
    // the VM, as on Firecracker (cocoon-init reboots when its program exits).
    args.push("-no-reboot".into());
    finish(args, vm, restoring)
}

/// The VM's name, the machine type on its accelerator (its RAM the shared
/// memfd when it has vsock), and the CPU model: `-cpu host` aborts where
/// KVM lacks an MSR (PVM); max without the arch-capabilities MSR boots
/// everywhere.
pub(super) fn machine(
    vm: &Vm,
    machine: &str,
    kvm: bool,
    vsock: bool,
    push: &mut impl FnMut(&str, String),
) {
    push("-name", format!("cocoon-{},debug-threads=on", vm.id));
    push(
        "-machine",
        format!(
            "{machine},accel={}{}",
            if kvm { "kvm" } else { "tcg" },
            super::vsock::machine_option(vm, vsock)
        ),
    );
    push(
        "-cpu",
        if kvm { "max,-arch-capabilities" } else { "max" }.into(),
    );
}

/// The engine's hold on QEMU: the sandbox, no display, QMP on the VM's API
/// socket, the serial port on QEMU's stdin/stdout (the console relay's).
pub(super) fn control(paths: &VmPaths, push: &mut impl FnMut(&str, String)) {
    push("-sandbox", SANDBOX.into());
    push("-display", "none".into());
    push(
        "-chardev",
        format!(
            "socket,id=qmp,server=on,wait=off,path={}",
            value(&paths.api_socket())
        ),
    );
    push("-mon", "chardev=qmp,mode=control".into());
    push("-chardev", "stdio,id=serial0,signal=off".into());
    push("-serial", "chardev:serial0".into());
}

/// Waits for the incoming state (`restoring`), or starts paused (`-S`)
/// until the engine's `cont` when hot-plugged devices must be plugged
/// first ([`plugs_first`]), or runs the guest at once; no default devices,
/// no user config.
pub(super) fn finish(mut args: Vec<String>, vm: &Vm, restoring: bool) -> Vec<String> {
    if restoring {
        args.extend(["-incoming", "defer"].map(String::from));
    } else if plugs_first(vm) {
        args.push("-S".into());
    }
    args.extend(["-nodefaults", "-no-user-config"].map(String::from));
    args
}

/// Whether a fresh boot has recorded hot-plugged disks or NICs to plug
/// (on their slots, by QMP) before the guest runs.
pub(super) fn plugs_first(vm: &Vm) -> bool {
    vm.storage_configs
        .iter()
        .any(|d| d.external && d.slot.is_some())
        || vm.network_configs.iter().any(|n| n.slot.is_some())
}

/// The NICs on their TAPs, and rng and balloon, on `transport` (`device`:
/// virtio-mmio, `pci`). PCI NICs carry no option ROM (no network boot).
pub(super) fn nics_rng_balloon(
    vm: &Vm,
    opts: &LaunchOptions,
    host: Host,
    transport: &str,
    push: &mut impl FnMut(&str, String),
) {
    let pci = transport == "pci";
    // NICs `vm net` added are on hot-plug slots (`hotplug_nic`).
    for (i, nic) in vm.network_configs.iter().enumerate() {
        if nic.slot.is_some() {
            continue;
        }
        push("-netdev", netdev(i, nic, host.vhost()));
        push(
            "-device",
            format!(
                "virtio-net-{transport},netdev=net{i},mac={}{}{}",
                nic.mac,
                if pci { ",romfile=" } else { "" },
                multiqueue(nic, pci)
            ),
        );
    }
    push("-object", "rng-random,id=rng0,filename=/dev/urandom".into());
    push("-device", format!("virtio-rng-{transport},rng=rng0"));
    if opts.balloon(vm).is_some() {
        push(
            "-device",
            format!("virtio-balloon-{transport},deflate-on-oom=on,free-page-reporting=on"),
        );
    }
}

/// The guest's kernel and devices: disks in order, NICs, rng, balloon.
fn devices(vm: &Vm, opts: &LaunchOptions, host: Host, push: &mut impl FnMut(&str, String)) {
    let boot = vm.boot_config.clone().unwrap_or_default();
    if let Some(kernel) = &boot.kernel_path {
        push("-kernel", kernel.display().to_string());
    }
    if let Some(initrd) = &boot.initrd_path {
        push("-initrd", initrd.display().to_string());
    }
    if !boot.cmdline.is_empty() {
        push("-append", boot.cmdline.clone());
    }
    super::hotplug::root_ports(vm, push);
    for (i, disk) in vm.storage_configs.iter().enumerate() {
        if disk.external {
            continue;
        }
        push("-drive", drive(i, disk));
        push("-device", format!("virtio-blk-device,drive=disk{i}"));
    }
    nics_rng_balloon(vm, opts, host, "device", push);
}

/// A NIC's TAP: as many queue pairs as the engine made it with (a TAP made
/// multi-queue must be opened so, and one made single-queue must not).
pub(super) fn netdev(i: usize, nic: &NetworkConfig, vhost: bool) -> String {
    let pairs = queue_pairs(nic);
    let queues = if pairs > 1 {
        format!(",queues={pairs}")
    } else {
        String::new()
    };
    format!(
        "tap,id=net{i},ifname={},script=no,downscript=no,vhost={}{queues}",
        nic.tap,
        if vhost { "on" } else { "off" }
    )
}

/// The device side of a multi-queue NIC: `mq=on`, and on PCI one MSI-X
/// vector per queue plus config and control.
pub(super) fn multiqueue(nic: &NetworkConfig, pci: bool) -> String {
    match queue_pairs(nic) {
        0 | 1 => String::new(),
        pairs if pci => format!(",mq=on,vectors={}", 2 * pairs + 2),
        _ => ",mq=on".into(),
    }
}

pub(super) fn queue_pairs(nic: &NetworkConfig) -> u32 {
    nic.num_queues / 2
}

pub(super) fn drive(i: usize, disk: &StorageConfig) -> String {
    let format = if disk.path.extension().is_some_and(|e| e == "qcow2") {
        "qcow2"
    } else {
        "raw"
    };
    format!(
        "file={},if=none,id=disk{i},format={format},readonly={}",
        value(&disk.path),
        if disk.ro { "on" } else { "off" }
    )
}

/// A path inside a QEMU option value: commas doubled.
pub(super) fn value(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

#[cfg(test)]
mod tests;
