use std::ffi::OsString;
use std::path::PathBuf;

use super::*;
use crate::model::{
    BootConfig, Hypervisor, ImageType, NetBackend, NetworkConfig, StorageRole, VmConfig,
};

const KVM: Host = Host {
    kvm: true,
    vhost_net: true,
};
const TCG: Host = Host {
    kvm: false,
    vhost_net: true,
};

fn disk(path: &str, ro: bool) -> StorageConfig {
    StorageConfig {
        path: PathBuf::from(path),
        ro,
        serial: String::new(),
        role: if ro {
            StorageRole::Layer
        } else {
            StorageRole::Cow
        },
        mount_point: String::new(),
        fstype: None,
        direct_io: None,
        directio_mode: None,
        vmm_path: None,
        external: false,
        slot: None,
    }
}

fn nic(tap: &str, mac: &str) -> NetworkConfig {
    NetworkConfig {
        tap: tap.into(),
        mac: mac.into(),
        num_queues: 2,
        queue_size: 512,
        backend: NetBackend::Cni,
        slot: None,
        bridge_dev: String::new(),
        netns_path: String::new(),
        network: None,
    }
}

/// A direct-boot VM in `run_dir`: 2 vCPUs, 1 GiB, one layer and a COW disk.
fn vm_in(run_dir: &str) -> Vm {
    let config = VmConfig::new("vm1".parse().unwrap(), "img", ImageType::Oci);
    let mut vm = Vm::new(
        "0123abcd",
        Hypervisor::Qemu,
        config,
        PathBuf::from(run_dir),
        PathBuf::from("/log/vms/0123abcd"),
    );
    vm.storage_configs = vec![
        disk("/img/layer0.erofs", true),
        disk(&format!("{run_dir}/cow.raw"), false),
    ];
    vm.boot_config = Some(BootConfig {
        kernel_path: Some("/img/vmlinux".into()),
        initrd_path: Some("/img/initrd.img".into()),
        cmdline: "console=ttyS0 cocoon.layers=1".into(),
        firmware_path: None,
    });
    vm
}

fn opts() -> LaunchOptions {
    LaunchOptions {
        binary: "qemu-system-x86_64".into(),
        max_cpus: 8,
        max_memory: 0,
        balloon_bytes: None,
        qemu_accel: QemuAccel::Auto,
        qemu_firmware_vars: "/usr/share/OVMF/OVMF_VARS_4M.fd".into(),
        container: false,
        vhost_vsock: None,
    }
}

fn build(vm: &Vm, host: Host, restoring: bool) -> Vec<String> {
    args_on(vm, &VmPaths::of(vm), &opts(), host, restoring)
}

/// The value after each occurrence of `flag`, in order.
fn values<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
    args.windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].as_str())
        .collect()
}

#[test]
fn a_fresh_kvm_boot_is_this_command_line() {
    let vm = vm_in("/run/vms/0123abcd");
    assert_eq!(
        build(&vm, KVM, false),
        [
            "-name",
            "cocoon-0123abcd,debug-threads=on",
            "-machine",
            "microvm,accel=kvm,mem-merge=off",
            "-cpu",
            "max,-arch-capabilities",
            "-bios",
            "qboot.rom",
            "-smp",
            "2",
            "-m",
            "1024M",
            "-sandbox",
            SANDBOX,
            "-display",
            "none",
            "-chardev",
            "socket,id=qmp,server=on,wait=off,path=/run/vms/0123abcd/api.sock",
            "-mon",
            "chardev=qmp,mode=control",
            "-chardev",
            "stdio,id=serial0,signal=off",
            "-serial",
            "chardev:serial0",
            "-kernel",
            "/img/vmlinux",
            "-initrd",
            "/img/initrd.img",
            "-append",
            "console=ttyS0 cocoon.layers=1",
            "-drive",
            "file=/img/layer0.erofs,if=none,id=disk0,format=raw,readonly=on",
            "-device",
            "virtio-blk-device,drive=disk0",
            "-drive",
            "file=/run/vms/0123abcd/cow.raw,if=none,id=disk1,format=raw,readonly=off",
            "-device",
            "virtio-blk-device,drive=disk1",
            "-object",
            "rng-random,id=rng0,filename=/dev/urandom",
            "-device",
            "virtio-rng-device,rng=rng0",
            "-device",
            "virtio-balloon-device,deflate-on-oom=on,free-page-reporting=on",
            "-no-reboot",
            "-nodefaults",
            "-no-user-config",
        ]
    );
}

#[test]
fn the_machine_and_cpu_follow_the_accelerator() {
    let vm = vm_in("/run/vms/0123abcd");
    let kvm = build(&vm, KVM, false);
    assert_eq!(
        values(&kvm, "-machine"),
        ["microvm,accel=kvm,mem-merge=off"]
    );
    assert_eq!(values(&kvm, "-cpu"), ["max,-arch-capabilities"]);
    let tcg = build(&vm, TCG, false);
    assert_eq!(
        values(&tcg, "-machine"),
        ["microvm,accel=tcg,mem-merge=off"]
    );
    assert_eq!(values(&tcg, "-cpu"), ["max"]);
    // TCG counts guest time in instructions (a stock kernel calibrates its
    // TSC against the PIT on a busy host then); KVM has kvm-clock.
    assert_eq!(values(&tcg, "-icount"), ["shift=auto"]);
    assert!(values(&kvm, "-icount").is_empty());
    // Nothing else differs.
    let rest = |args: &[String]| -> Vec<String> {
        let mut args = args.to_vec();
        for flag in ["-machine", "-cpu", "-icount"] {
            if let Some(i) = args.iter().position(|a| a == flag) {
                args.drain(i..i + 2);
            }
        }
        args
    };
    assert_eq!(rest(&kvm), rest(&tcg));
    assert!(uses_kvm(QemuAccel::Kvm, true));
    assert!(!uses_kvm(QemuAccel::Tcg, false));
}

#[test]
fn disks_come_in_order_with_their_mode_and_format() {
    let mut vm = vm_in("/run/vms/0123abcd");
    vm.storage_configs = vec![
        disk("/img/layer0.erofs", true),
        disk("/img/layer1.erofs", true),
        disk("/run/vms/0123abcd/overlay.qcow2", false),
        disk("/data/disk.qcow2.raw", false),
        disk("/data/qcow2", true),
    ];
    let args = build(&vm, KVM, false);
    assert_eq!(
        values(&args, "-drive"),
        [
            "file=/img/layer0.erofs,if=none,id=disk0,format=raw,readonly=on",
            "file=/img/layer1.erofs,if=none,id=disk1,format=raw,readonly=on",
            "file=/run/vms/0123abcd/overlay.qcow2,if=none,id=disk2,format=qcow2,readonly=off",
            "file=/data/disk.qcow2.raw,if=none,id=disk3,format=raw,readonly=off",
            "file=/data/qcow2,if=none,id=disk4,format=raw,readonly=on",
        ]
    );
    let blk: Vec<&str> = values(&args, "-device")
        .into_iter()
        .filter(|d| d.starts_with("virtio-blk-device"))
        .collect();
    assert_eq!(
        blk,
        (0..5)
            .map(|i| format!("virtio-blk-device,drive=disk{i}"))
            .collect::<Vec<_>>()
    );
    // Each disk's device right after its drive.
    for i in 0..5 {
        let drive = args
            .iter()
            .position(|a| a.contains(&format!(",id=disk{i},")))
            .unwrap();
        assert_eq!(args[drive + 1], "-device");
        assert_eq!(args[drive + 2], format!("virtio-blk-device,drive=disk{i}"));
    }
}

#[test]
fn commas_in_paths_are_doubled_inside_option_values() {
    let mut vm = vm_in("/tmp/a,b/vms/0123abcd");
    vm.storage_configs.push(disk("/data/x,,y,z.qcow2", false));
    let args = build(&vm, KVM, false);
    assert_eq!(
        values(&args, "-drive"),
        [
            "file=/img/layer0.erofs,if=none,id=disk0,format=raw,readonly=on",
            "file=/tmp/a,,b/vms/0123abcd/cow.raw,if=none,id=disk1,format=raw,readonly=off",
            "file=/data/x,,,,y,,z.qcow2,if=none,id=disk2,format=qcow2,readonly=off",
        ]
    );
    assert_eq!(
        values(&args, "-chardev")[0],
        "socket,id=qmp,server=on,wait=off,path=/tmp/a,,b/vms/0123abcd/api.sock"
    );
}

#[test]
fn a_restore_waits_for_its_state_and_a_boot_runs_at_once() {
    let vm = vm_in("/run/vms/0123abcd");
    let fresh = build(&vm, KVM, false);
    let restore = build(&vm, KVM, true);
    // Nothing to plug first: no `-S`, the guest runs as QEMU starts.
    assert!(!fresh.iter().any(|a| a == "-S" || a == "-incoming"));
    assert_eq!(values(&restore, "-incoming"), ["defer"]);
    assert!(!restore.iter().any(|a| a == "-S"));
    // The same machine otherwise: the stream carries device state only.
    let at = fresh.iter().position(|a| a == "-nodefaults").unwrap();
    let mut expected = fresh.clone();
    expected.splice(at..at, ["-incoming".to_string(), "defer".to_string()]);
    assert_eq!(restore, expected);
}

#[test]
fn nics_use_vhost_only_under_kvm_with_vhost_net() {
    let mut vm = vm_in("/run/vms/0123abcd");
    vm.network_configs = vec![
        nic("tap0abcd", "02:00:00:00:00:01"),
        nic("tap1abcd", "02:00:00:00:00:02"),
    ];
    let netdevs = |host| {
        values(&build(&vm, host, false), "-netdev")
            .into_iter()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let with = |vhost: &str| {
        vec![
            format!("tap,id=net0,ifname=tap0abcd,script=no,downscript=no,vhost={vhost}"),
            format!("tap,id=net1,ifname=tap1abcd,script=no,downscript=no,vhost={vhost}"),
        ]
    };
    assert_eq!(netdevs(KVM), with("on"));
    assert_eq!(netdevs(TCG), with("off"));
    let no_device = Host {
        kvm: true,
        vhost_net: false,
    };
    assert_eq!(netdevs(no_device), with("off"));
    let nets: Vec<String> = values(&build(&vm, KVM, false), "-device")
        .into_iter()
        .filter(|d| d.starts_with("virtio-net-device"))
        .map(str::to_string)
        .collect();
    assert_eq!(
        nets,
        [
            "virtio-net-device,netdev=net0,mac=02:00:00:00:00:01",
            "virtio-net-device,netdev=net1,mac=02:00:00:00:00:02",
        ]
    );
}

#[test]
fn no_balloon_below_256_mib() {
    let mut vm = vm_in("/run/vms/0123abcd");
    vm.config.memory = 128 << 20;
    let args = build(&vm, KVM, false);
    assert_eq!(values(&args, "-m"), ["128M"]);
    assert!(!args.iter().any(|a| a.starts_with("virtio-balloon-device")));
}

/// The QMP chardev ends with `path=<api.sock>`: the rule by which
/// `supervise::is_running` and `find_by_socket` recognise the VMM in
/// `/proc/<pid>/cmdline`, commas in the path included.
#[test]
fn the_vmm_is_found_by_its_api_socket() {
    for run_dir in ["/run/vms/0123abcd", "/tmp/a,b/vms/0123abcd"] {
        let vm = vm_in(run_dir);
        let paths = VmPaths::of(&vm);
        let mut cmdline = vec![OsString::from("qemu-system-x86_64")];
        cmdline.extend(build(&vm, KVM, false).into_iter().map(OsString::from));
        assert!(
            crate::supervise::names_socket(&cmdline, &paths.api_socket()),
            "{run_dir}"
        );
        let other = VmPaths::run_only(Path::new(&format!("{run_dir}0")));
        assert!(
            !crate::supervise::names_socket(&cmdline, &other.api_socket()),
            "{run_dir}"
        );
    }
}

/// A NIC the engine made with more than one queue pair is opened with as
/// many (its TAP is multi-queue) and offered to the guest as multi-queue;
/// a single pair stays a plain TAP.
#[test]
fn multi_queue_nics_open_every_queue_pair() {
    let mut four = nic("tap0", "02:00:00:00:00:01");
    four.num_queues = 4;
    assert_eq!(
        netdev(0, &four, true),
        "tap,id=net0,ifname=tap0,script=no,downscript=no,vhost=on,queues=2"
    );
    assert_eq!(multiqueue(&four, false), ",mq=on");
    assert_eq!(multiqueue(&four, true), ",mq=on,vectors=6");
    let two = nic("tap1", "02:00:00:00:00:02");
    assert_eq!(
        netdev(1, &two, false),
        "tap,id=net1,ifname=tap1,script=no,downscript=no,vhost=off"
    );
    assert_eq!(multiqueue(&two, false), "");
    assert_eq!(multiqueue(&two, true), "");
}

#[test]
fn vsock_shares_guest_memory_with_vhost_device_vsock() {
    let vm = vm_in("/run/vms/0123abcd");
    let mut opts = opts();
    opts.vhost_vsock = Some("/usr/local/bin/vhost-device-vsock".into());
    opts.container = true;
    let paths = VmPaths::of(&vm);
    let args = args_on(&vm, &paths, &opts, KVM, false);
    assert_eq!(
        values(&args, "-machine"),
        ["microvm,accel=kvm,memory-backend=mem,mem-merge=off"]
    );
    assert_eq!(values(&args, "-m"), ["1024M"]);
    assert_eq!(
        values(&args, "-object"),
        [
            "memory-backend-memfd,id=mem,size=1024M,share=on",
            "rng-random,id=rng0,filename=/dev/urandom"
        ]
    );
    assert!(
        values(&args, "-chardev")
            .contains(&"socket,id=vsock,path=/run/vms/0123abcd/vhost-vsock.sock")
    );
    assert!(values(&args, "-device").contains(&"vhost-user-vsock-device,chardev=vsock"));
    let helper = super::super::vsock::helper(&vm, &paths, &opts).unwrap();
    assert_eq!(
        helper.binary,
        PathBuf::from("/usr/local/bin/vhost-device-vsock")
    );
    assert_eq!(
        helper.args,
        [
            "--guest-cid",
            "3",
            "--socket",
            "/run/vms/0123abcd/vhost-vsock.sock",
            "--uds-path",
            "/run/vms/0123abcd/vsock.sock"
        ]
    );
    // The helper is found by its socket, as the VMM is by its API socket.
    let argv: Vec<OsString> = std::iter::once(helper.binary.clone().into_os_string())
        .chain(helper.args.iter().map(Into::into))
        .collect();
    assert!(crate::supervise::names_socket(
        &argv,
        &paths.vhost_vsock_socket()
    ));
}

#[test]
fn no_vsock_without_the_helper_a_container_or_with_no_agent() {
    let mut vm = vm_in("/run/vms/0123abcd");
    let paths = VmPaths::of(&vm);
    let mut container = opts();
    container.container = true;
    let without = args_on(&vm, &paths, &container, KVM, false);
    assert!(super::super::vsock::helper(&vm, &paths, &container).is_none());
    let mut opts = opts();
    opts.vhost_vsock = Some("/usr/local/bin/vhost-device-vsock".into());
    // Not a container image: no agent to reach, and the VM keeps snapshots.
    let vm_image = args_on(&vm, &paths, &opts, KVM, false);
    assert!(super::super::vsock::helper(&vm, &paths, &opts).is_none());
    opts.container = true;
    vm.config.no_agent = true;
    let no_agent = args_on(&vm, &paths, &opts, KVM, false);
    assert!(super::super::vsock::helper(&vm, &paths, &opts).is_none());
    for args in [without, vm_image, no_agent] {
        assert_eq!(
            values(&args, "-machine"),
            ["microvm,accel=kvm,mem-merge=off"]
        );
        assert!(
            !args
                .iter()
                .any(|a| a.contains("vsock") || a.contains("memfd"))
        );
    }
}

#[test]
fn switches_put_memory_on_a_memfd_and_set_ksm() {
    let mut vm = vm_in("/run/vms/0123abcd");
    vm.config.devices.hugepages = true;
    let args = build(&vm, KVM, false);
    assert_eq!(
        values(&args, "-machine"),
        ["microvm,accel=kvm,memory-backend=mem,mem-merge=off"]
    );
    assert_eq!(
        values(&args, "-object")[0],
        "memory-backend-memfd,id=mem,size=1024M,hugetlb=on"
    );
    vm.config.devices.hugepages = false;
    vm.config.devices.shared_memory = true;
    vm.config.devices.mergeable = true;
    vm.config.devices.no_balloon = true;
    let args = build(&vm, KVM, false);
    assert_eq!(
        values(&args, "-machine"),
        ["microvm,accel=kvm,memory-backend=mem,mem-merge=on"]
    );
    assert_eq!(
        values(&args, "-object")[0],
        "memory-backend-memfd,id=mem,size=1024M,share=on"
    );
    assert!(!args.iter().any(|a| a.starts_with("virtio-balloon")));
    // A restore relaunches on the same memory.
    assert_eq!(
        values(&build(&vm, KVM, true), "-object")[0],
        "memory-backend-memfd,id=mem,size=1024M,share=on"
    );
}

#[test]
fn hot_plug_slots_are_root_ports_and_attached_disks_come_back_on_theirs() {
    let mut vm = vm_in("/run/vms/0123abcd");
    // A VM from before the slots launches as it did.
    let old = build(&vm, KVM, false);
    assert!(values(&old, "-machine")[0].starts_with("microvm,"));
    assert!(!values(&old, "-machine")[0].contains("pcie=on"));
    assert!(
        !values(&old, "-device")
            .iter()
            .any(|d| d.starts_with("pcie-root-port"))
    );

    vm.config.hotplug_slots = 2;
    let mut attached = disk("/srv/user,1.raw", false);
    attached.serial = "data".into();
    attached.role = StorageRole::Data;
    attached.external = true;
    attached.slot = Some(1);
    vm.storage_configs.push(attached);
    let fresh = build(&vm, KVM, false);
    assert_eq!(
        values(&fresh, "-machine")[0],
        "microvm,pcie=on,accel=kvm,mem-merge=off"
    );
    let devices = values(&fresh, "-device");
    assert!(devices.contains(&"pcie-root-port,id=cocoon-hp0,chassis=1"));
    assert!(devices.contains(&"pcie-root-port,id=cocoon-hp1,chassis=2"));
    // A fresh boot plugs it over QMP before the guest runs, not here: it
    // starts paused (`-S`) until then.
    assert_eq!(fresh.iter().filter(|a| *a == "-S").count(), 1);
    assert!(!old.iter().any(|a| a == "-S"));
    assert_eq!(values(&fresh, "-drive").len(), 2);
    assert!(values(&fresh, "-blockdev").is_empty());
    assert!(!devices.iter().any(|d| d.contains("cocoon-disk-data")));
    // A restore has it on its slot, where the saved device state expects it.
    let restore = build(&vm, KVM, true);
    assert_eq!(
        values(&restore, "-blockdev"),
        ["driver=file,node-name=cocoon-disk-data,filename=/srv/user,,1.raw,read-only=off"]
    );
    assert!(values(&restore, "-device").contains(
        &"virtio-blk-pci,drive=cocoon-disk-data,id=cocoon-disk-data,serial=data,bus=cocoon-hp1"
    ));
    assert_eq!(values(&restore, "-drive").len(), 2);
}
