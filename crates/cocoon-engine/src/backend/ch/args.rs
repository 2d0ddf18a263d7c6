//! Cloud Hypervisor: the launch command line (docs/reference/cocoon-v0.3.8.md §4.3). CH boots the
//! VM given on its command line; no API call is needed to start it.

use crate::backend::LaunchOptions;
use crate::layout::{VmPaths, display};
use crate::model::{StorageConfig, Vm};

/// The arguments of a restore: everything else comes from the snapshot's
/// (patched) config.json.
pub fn restore_args(paths: &VmPaths) -> Vec<String> {
    vec!["--api-socket".to_string(), display(&paths.api_socket())]
}

/// The arguments after the binary, in cocoon's fixed order.
pub fn args(vm: &Vm, opts: &LaunchOptions) -> Vec<String> {
    let paths = VmPaths::of(vm);
    let c = &vm.config;
    let mut args = vec!["--api-socket".to_string(), display(&paths.api_socket())];
    let mut cpus = format!("boot={},max={}", c.cpu, opts.max_cpus.max(c.cpu));
    if c.windows {
        cpus.push_str(",kvm_hyperv=on");
    }
    args.extend(["--cpus".into(), cpus]);
    args.extend(["--memory".into(), memory_arg(c, opts.max_memory)]);
    if !vm.storage_configs.is_empty() {
        args.push("--disk".into());
        args.extend(vm.storage_configs.iter().map(|d| disk_arg(vm, d)));
    }
    let boot = vm.boot_config.clone().unwrap_or_default();
    let direct_boot = boot.kernel_path.is_some();
    if let Some(kernel) = &boot.kernel_path {
        args.extend(["--kernel".into(), display(kernel)]);
    }
    if let Some(firmware) = &boot.firmware_path {
        args.extend(["--firmware".into(), display(firmware)]);
    }
    if let Some(initrd) = &boot.initrd_path {
        args.extend(["--initramfs".into(), display(initrd)]);
    }
    if !boot.cmdline.is_empty() {
        args.extend(["--cmdline".into(), boot.cmdline.clone()]);
    }
    if !vm.network_configs.is_empty() {
        args.push("--net".into());
        for n in &vm.network_configs {
            args.push(format!(
                "tap={},mac={},num_queues={},queue_size={},offload_tso=on,offload_ufo=on,offload_csum=on",
                n.tap,
                n.mac,
                n.num_queues.max(2),
                if n.queue_size == 0 { 512 } else { n.queue_size }
            ));
        }
    }
    args.extend(["--rng".into(), "src=/dev/urandom".into()]);
    if !c.no_agent {
        args.extend(["--vsock".into(), vsock_arg(&paths)]);
    }
    if !c.devices.no_watchdog {
        args.push("--watchdog".into());
    }
    if let Some(balloon) = opts.balloon(vm) {
        args.extend([
            "--balloon".into(),
            format!("size={balloon},deflate_on_oom=on,free_page_reporting=on"),
        ]);
    }
    if direct_boot {
        // Both ports go to the console relay: the guest talks on hvc0 (a PTY
        // CH allocates), and the serial port, which cocoon switched off, keeps
        // what a guest prints there (early boot, test kernels). The serial is
        // CH's stdin/stdout, a terminal the engine made: CH's own serial PTY
        // mode holds output back until it notices a reader, polling every
        // 500 ms, which cost up to a second of boot time.
        args.extend([
            "--serial".into(),
            "tty".into(),
            "--console".into(),
            "pty".into(),
        ]);
    } else {
        args.extend([
            "--serial".into(),
            format!("socket={}", display(&paths.serial_socket())),
            "--console".into(),
            "off".into(),
        ]);
    }
    args
}

/// `--memory`: the size, the memory switches, and the room `vm resize`
/// may plug memory into (ACPI hot-plug, CH's default method).
fn memory_arg(c: &crate::model::VmConfig, max_memory: u64) -> String {
    let mut memory = format!("size={}", c.memory);
    for (on, option) in [
        (c.devices.mergeable, ",mergeable=on"),
        (c.devices.shared_memory, ",shared=on"),
        (c.devices.hugepages, ",hugepages=on"),
    ] {
        if on {
            memory.push_str(option);
        }
    }
    let room = crate::backend::launch::hotplug_room(c.memory, max_memory);
    if room > 0 {
        memory.push_str(&format!(",hotplug_method=acpi,hotplug_size={room}"));
    }
    memory
}

/// `--vsock`: the VM's hybrid vsock on its own socket.
pub fn vsock_arg(paths: &VmPaths) -> String {
    format!(
        "cid={},socket={}",
        crate::backend::GUEST_CID,
        display(&paths.vsock_socket())
    )
}

/// `--disk` value of one disk. No `queue_affinity`: cocoon pinned queue i of
/// every VM to host CPU i, piling all VMs onto the first CPUs.
pub fn disk_arg(vm: &Vm, disk: &StorageConfig) -> String {
    let c = &vm.config;
    let mut parts = vec![format!("path={}", display(&disk.path))];
    let qcow2 = disk.path.extension().is_some_and(|e| e == "qcow2");
    if disk.ro {
        parts.push("readonly=on".into());
    }
    if disk.direct_io.unwrap_or(!disk.ro && !c.no_direct_io) {
        parts.push("direct=on".into());
    }
    if qcow2 {
        parts.push("image_type=qcow2".into());
        if !disk.ro {
            parts.push("backing_files=on".into());
        }
    } else {
        if !disk.ro {
            parts.push("sparse=on".into());
        }
        parts.push("image_type=raw".into());
    }
    parts.push(format!("num_queues={}", c.cpu));
    parts.push(format!(
        "queue_size={}",
        if c.disk_queue_size == 0 {
            512
        } else {
            c.disk_queue_size
        }
    ));
    if !disk.serial.is_empty() {
        parts.push(format!("serial={}", disk.serial));
    }
    if let Some(id) = disk.device_id() {
        parts.push(format!("id={id}"));
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Hypervisor, ImageType, VmConfig};

    fn vm() -> Vm {
        let config = VmConfig::new("v".parse().unwrap(), "img", ImageType::Oci);
        Vm::new(
            "ID",
            Hypervisor::CloudHypervisor,
            config,
            "/run/vms/ID".into(),
            "/log/vms/ID".into(),
        )
    }

    fn value_of<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
        args.windows(2)
            .find(|w| w[0] == flag)
            .map(|w| w[1].as_str())
    }

    #[test]
    fn every_vm_gets_its_own_hybrid_vsock_unless_no_agent() {
        let opts = LaunchOptions::for_host("ch".into());
        let mut vm = vm();
        assert_eq!(
            value_of(&args(&vm, &opts), "--vsock"),
            Some("cid=3,socket=/run/vms/ID/vsock.sock")
        );
        vm.config.no_agent = true;
        assert_eq!(value_of(&args(&vm, &opts), "--vsock"), None);
    }

    #[test]
    fn the_switches_shape_memory_and_devices() {
        let mut opts = LaunchOptions::for_host("ch".into());
        opts.max_memory = 0;
        let mut vm = vm();
        let plain = args(&vm, &opts);
        assert_eq!(value_of(&plain, "--memory"), Some("size=1073741824"));
        assert!(plain.iter().any(|a| a == "--watchdog"));
        assert!(value_of(&plain, "--balloon").is_some());
        vm.config.devices.mergeable = true;
        vm.config.devices.shared_memory = true;
        vm.config.devices.hugepages = true;
        vm.config.devices.no_balloon = true;
        vm.config.devices.no_watchdog = true;
        let switched = args(&vm, &opts);
        assert_eq!(
            value_of(&switched, "--memory"),
            Some("size=1073741824,mergeable=on,shared=on,hugepages=on")
        );
        assert!(!switched.iter().any(|a| a == "--watchdog"));
        assert_eq!(value_of(&switched, "--balloon"), None);
    }

    #[test]
    fn memory_has_room_to_grow_up_to_the_hosts_ram() {
        let mut opts = LaunchOptions::for_host("ch".into());
        opts.max_memory = (4 << 30) + (100 << 20);
        assert_eq!(
            value_of(&args(&vm(), &opts), "--memory"),
            Some("size=1073741824,hotplug_method=acpi,hotplug_size=3221225472")
        );
        opts.max_memory = 1 << 30;
        assert_eq!(
            value_of(&args(&vm(), &opts), "--memory"),
            Some("size=1073741824")
        );
    }
}
