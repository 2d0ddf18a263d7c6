//! QEMU's machine for a UEFI guest (a cloud image): `-machine q35` with
//! OVMF as two pflash devices, the firmware's code read-only
//! (`boot_config.firmware_path`, from `qemu_firmware`) and the VM's own
//! variable store (`efivars.fd` in its run directory, a copy of
//! `qemu_firmware_vars` made before its first launch), the disks and NICs
//! on virtio-pci in the engine's order (the firmware boots the first disk),
//! and the ISA serial port, the guest's console, on QEMU's stdin/stdout.
//!
//! A snapshot needs nothing more than the microvm's: pflash is device
//! memory QEMU migrates with the RAM (the `mapped-ram` state file carries
//! the variables), and a loaded VM writes the migrated variables back into
//! its own store once it runs. So a clone starts from a fresh copy of the
//! template, which its first `cont` overwrites with the source's variables.

use std::io::ErrorKind;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::args::{self, Host, drive, value};
use crate::backend::LaunchOptions;
use crate::layout::VmPaths;
use crate::model::Vm;

/// The arguments after the binary; `restoring` as [`super::args::args`].
pub fn args(
    vm: &Vm,
    paths: &VmPaths,
    opts: &LaunchOptions,
    kvm: bool,
    restoring: bool,
) -> Vec<String> {
    let c = &vm.config;
    let firmware = vm
        .boot_config
        .as_ref()
        .and_then(|b| b.firmware_path.clone())
        .unwrap_or_default();
    let mut args: Vec<String> = Vec::new();
    let mut push = |flag: &str, value: String| {
        args.push(flag.to_string());
        args.push(value);
    };
    let vsock = super::vsock::on(vm, opts);
    args::machine(vm, "q35", kvm, vsock, &mut push);
    push("-smp", c.cpu.to_string());
    super::vsock::memory(vm, vsock, &mut push);
    push(
        "-drive",
        format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            value(&firmware)
        ),
    );
    push(
        "-drive",
        format!(
            "if=pflash,format=raw,unit=1,file={}",
            value(&paths.efi_vars())
        ),
    );
    args::control(paths, &mut push);
    devices(vm, opts, Host::probe(kvm), &mut push);
    super::hotplug::launch_disks(vm, restoring, &mut push);
    super::hotplug_nic::launch_nics(vm, restoring, &mut push);
    if vsock {
        super::vsock::device(paths, "pci", &mut push);
    }
    args::finish(args, vm, restoring)
}

/// Disks (the first one boots), NICs without option ROMs (no network boot
/// attempt), rng, balloon: all virtio-pci.
fn devices(vm: &Vm, opts: &LaunchOptions, host: Host, push: &mut impl FnMut(&str, String)) {
    super::hotplug::root_ports(vm, push);
    for (i, disk) in vm.storage_configs.iter().enumerate() {
        if disk.external {
            continue;
        }
        push("-drive", drive(i, disk));
        let mut device = format!("virtio-blk-pci,drive=disk{i}");
        if i == 0 {
            device.push_str(",bootindex=0");
        }
        if !disk.serial.is_empty() {
            device.push_str(&format!(",serial={}", disk.serial.replace(',', ",,")));
        }
        push("-device", device);
    }
    args::nics_rng_balloon(vm, opts, host, "pci", push);
}

/// The VM's variable store: copied from `template` (mode 0600) unless it
/// is there already; it then keeps what the guest and firmware wrote.
pub fn ensure_vars(paths: &VmPaths, template: &Path) -> std::io::Result<()> {
    let vars = paths.efi_vars();
    let context = |e: std::io::Error| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot copy the UEFI variable store template {} to {}: {e}",
                template.display(),
                vars.display()
            ),
        )
    };
    let mut from = std::fs::File::open(template).map_err(context)?;
    let mut to = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&vars)
    {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(context(e)),
    };
    let copied = std::io::copy(&mut from, &mut to).and_then(|_| to.sync_all());
    if let Err(e) = copied {
        // A partial store would be taken for the VM's own next time.
        let _ = std::fs::remove_file(&vars);
        return Err(context(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::QemuAccel;
    use crate::model::{
        BootConfig, ImageType, NetBackend, NetworkConfig, StorageConfig, StorageRole, VmConfig,
    };

    fn vm(run_dir: &Path) -> Vm {
        let config = VmConfig::new("uefi".parse().unwrap(), "local/cloud", ImageType::Cloudimg);
        let mut vm = Vm::new(
            "vmid",
            crate::model::Hypervisor::Qemu,
            config,
            run_dir.to_path_buf(),
            run_dir.join("log"),
        );
        let disk = |path: &str, ro: bool, role| StorageConfig {
            vmm_path: None,
            external: false,
            slot: None,
            path: run_dir.join(path),
            ro,
            serial: String::new(),
            role,
            mount_point: String::new(),
            fstype: None,
            direct_io: None,
            directio_mode: None,
        };
        vm.storage_configs = vec![
            disk("overlay.qcow2", false, StorageRole::Cow),
            disk("cidata.img", true, StorageRole::Cidata),
        ];
        vm.network_configs = vec![NetworkConfig {
            tap: "tap0".into(),
            mac: "02:00:00:00:00:07".into(),
            num_queues: 2,
            queue_size: 0,
            backend: NetBackend::Cni,
            slot: None,
            bridge_dev: String::new(),
            netns_path: String::new(),
            network: None,
        }];
        vm.boot_config = Some(BootConfig {
            firmware_path: Some("/fw/OVMF,CODE.fd".into()),
            ..BootConfig::default()
        });
        vm
    }

    #[test]
    fn a_uefi_guest_gets_q35_pflash_and_pci_devices() {
        let run = Path::new("/run/vms/vmid");
        let vm = vm(run);
        let mut opts = LaunchOptions::for_host("qemu".into());
        opts.qemu_accel = QemuAccel::Tcg;
        let args = args(&vm, &VmPaths::of(&vm), &opts, false, false);
        let after = |flag: &str| -> Vec<&str> {
            args.windows(2)
                .filter(|w| w[0] == flag)
                .map(|w| w[1].as_str())
                .collect()
        };
        assert_eq!(after("-machine"), ["q35,accel=tcg,mem-merge=off"]);
        assert_eq!(
            after("-drive"),
            [
                "if=pflash,format=raw,unit=0,readonly=on,file=/fw/OVMF,,CODE.fd",
                "if=pflash,format=raw,unit=1,file=/run/vms/vmid/efivars.fd",
                "file=/run/vms/vmid/overlay.qcow2,if=none,id=disk0,format=qcow2,readonly=off",
                "file=/run/vms/vmid/cidata.img,if=none,id=disk1,format=raw,readonly=on",
            ]
        );
        assert_eq!(
            after("-device"),
            [
                "virtio-blk-pci,drive=disk0,bootindex=0",
                "virtio-blk-pci,drive=disk1",
                "virtio-net-pci,netdev=net0,mac=02:00:00:00:00:07,romfile=",
                "virtio-rng-pci,rng=rng0",
                "virtio-balloon-pci,deflate-on-oom=on,free-page-reporting=on",
            ]
        );
        assert_eq!(
            after("-netdev"),
            ["tap,id=net0,ifname=tap0,script=no,downscript=no,vhost=off"]
        );
        assert_eq!(after("-serial"), ["chardev:serial0"]);
        assert!(!args.iter().any(|a| a == "-kernel" || a == "-bios"));
        assert!(!args.iter().any(|a| a == "-S"), "nothing to plug first");
        assert_eq!(args[args.len() - 2..], ["-nodefaults", "-no-user-config"]);
        let restoring = super::args(&vm, &VmPaths::of(&vm), &opts, false, true);
        assert!(!restoring.iter().any(|a| a == "-S"));
        assert!(restoring.windows(2).any(|w| w == ["-incoming", "defer"]));
    }

    #[test]
    fn the_variable_store_is_copied_once_and_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let template = dir.path().join("VARS.fd");
        std::fs::write(&template, b"template").unwrap();
        let paths = VmPaths::run_only(dir.path());
        ensure_vars(&paths, &template).unwrap();
        assert_eq!(std::fs::read(paths.efi_vars()).unwrap(), b"template");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(paths.efi_vars()).unwrap().permissions();
        assert_eq!(mode.mode() & 0o777, 0o600);
        std::fs::write(paths.efi_vars(), b"written by the guest").unwrap();
        ensure_vars(&paths, &template).unwrap();
        assert_eq!(
            std::fs::read(paths.efi_vars()).unwrap(),
            b"written by the guest"
        );
        let missing = dir.path().join("none.fd");
        std::fs::remove_file(paths.efi_vars()).unwrap();
        let e = ensure_vars(&paths, &missing).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "cannot copy the UEFI variable store template {} to {}: No such file or directory (os error 2)",
                missing.display(),
                paths.efi_vars().display()
            )
        );
        assert!(!paths.efi_vars().exists());
    }
}
