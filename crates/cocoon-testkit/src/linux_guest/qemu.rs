//! Boots a VM record under qemu in software emulation (TCG), with exactly the
//! kernel, initrd, command line and disks the engine chose for its backend.
//! This machine's KVM (PVM) cannot run stock Linux kernels under Cloud
//! Hypervisor or Firecracker; qemu stands in with the same guest-visible
//! hardware: virtio-pci disks with serials and a virtio console for CH,
//! virtio-mmio disks without serials and a 16550 on ttyS0 for FC.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The qemu binary: `$COCOON_QEMU_BINARY` if set, else `qemu-system-x86_64` on PATH.
pub fn binary() -> Option<PathBuf> {
    crate::real_vmm("COCOON_QEMU_BINARY", "qemu-system-x86_64")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    CloudHypervisor,
    Firecracker,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub path: PathBuf,
    pub read_only: bool,
    pub serial: String,
    pub role: String,
}

/// What the engine would hand the VMM, read from `cocoon vm inspect`.
#[derive(Debug, Clone)]
pub struct Boot {
    pub backend: Backend,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    /// In attach order.
    pub disks: Vec<Disk>,
}

impl Boot {
    pub fn from_inspect(vm: &Value) -> Boot {
        let backend = match vm["hypervisor"].as_str() {
            Some("cloud-hypervisor") => Backend::CloudHypervisor,
            Some("firecracker") => Backend::Firecracker,
            other => panic!("unknown hypervisor {other:?} in {vm}"),
        };
        let text = |v: &Value| {
            v.as_str()
                .unwrap_or_else(|| panic!("not a string: {v} in {vm}"))
                .to_string()
        };
        let boot = &vm["boot_config"];
        let disks = vm["storage_configs"]
            .as_array()
            .unwrap_or_else(|| panic!("no storage_configs in {vm}"))
            .iter()
            .map(|d| Disk {
                path: PathBuf::from(text(&d["path"])),
                read_only: d["ro"].as_bool().expect("ro"),
                serial: d["serial"].as_str().unwrap_or_default().to_string(),
                role: text(&d["role"]),
            })
            .collect();
        Boot {
            backend,
            kernel: PathBuf::from(text(&boot["kernel_path"])),
            initrd: PathBuf::from(text(&boot["initrd_path"])),
            cmdline: text(&boot["cmdline"]),
            disks,
        }
    }

    /// qemu's arguments; the guest console goes to `console_log`.
    pub fn qemu_args(&self, console_log: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |parts: &[&str]| args.extend(parts.iter().map(OsString::from));
        let machine = match self.backend {
            Backend::CloudHypervisor => "pc",
            // No PCI (the command line says pci=off), virtio-mmio found through
            // ACPI, and never virtio_mmio.device= appended to the command
            // line (qemu does that when ACPI is off): the guest must see
            // exactly the engine's.
            Backend::Firecracker => "microvm,auto-kernel-cmdline=off",
        };
        push(&[
            "-accel", "tcg", "-machine", machine, "-m", "512", "-smp", "1",
        ]);
        if self.backend == Backend::Firecracker {
            // microvm has neither HPET nor ACPI PM timer, so the kernel can
            // calibrate the TSC against the PIT only; under TCG on a busy host
            // that fails about every other boot, and the kernel then hangs
            // before /init (kvm-clock spares real Firecracker guests this).
            // Deriving both clocks from the instruction count makes them agree.
            push(&["-icount", "shift=auto"]);
        }
        push(&[
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ]);
        push(&[
            "-kernel",
            &path_arg(&self.kernel),
            "-initrd",
            &path_arg(&self.initrd),
        ]);
        push(&["-append", &self.cmdline]);
        let console = format!("file,id=console,path={}", path_arg(console_log));
        match self.backend {
            Backend::CloudHypervisor => push(&[
                "-chardev",
                &console,
                "-device",
                "virtio-serial-pci",
                "-device",
                "virtconsole,chardev=console",
            ]),
            Backend::Firecracker => push(&["-chardev", &console, "-serial", "chardev:console"]),
        }
        for (i, disk) in self.disks.iter().enumerate() {
            let read_only = if disk.read_only { "on" } else { "off" };
            push(&[
                "-drive",
                &format!(
                    "if=none,id=disk{i},format=raw,readonly={read_only},file={}",
                    path_arg(&disk.path)
                ),
            ]);
            let device = match self.backend {
                // Option values cannot hold a comma; serials never do.
                Backend::CloudHypervisor => {
                    format!("virtio-blk-pci,drive=disk{i},serial={}", disk.serial)
                }
                // Firecracker has no disk serials: the guest knows disks by order.
                Backend::Firecracker => format!("virtio-blk-device,drive=disk{i}"),
            };
            push(&["-device", &device]);
        }
        args
    }

    /// Boots and waits for the guest to power off, killing qemu after `limit`.
    /// qemu's own output goes to `<console_log>.qemu`: a pipe nobody drains
    /// could stall it.
    pub fn run(&self, qemu: &Path, console_log: &Path, limit: Duration) -> Outcome {
        let started = Instant::now();
        let qemu_log = console_log.with_extension("qemu");
        let output = std::fs::File::create(&qemu_log)
            .unwrap_or_else(|e| panic!("{}: {e}", qemu_log.display()));
        let child = Command::new(qemu)
            .args(self.qemu_args(console_log))
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("dup"))
            .stderr(output)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", qemu.display()));
        let mut guard = KillOnDrop(child);
        let exit_status = loop {
            if let Some(status) = guard.0.try_wait().expect("wait for qemu") {
                break Some(status);
            }
            if started.elapsed() > limit {
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let elapsed = started.elapsed();
        drop(guard);
        Outcome {
            exit_status,
            elapsed,
            console: std::fs::read_to_string(console_log).unwrap_or_default(),
            qemu_output: std::fs::read_to_string(&qemu_log).unwrap_or_default(),
        }
    }
}

/// qemu option values escape a comma by doubling it.
fn path_arg(path: &Path) -> String {
    path.to_str().expect("UTF-8 path").replace(',', ",,")
}

#[derive(Debug)]
pub struct Outcome {
    /// None if qemu was still running at the limit (and was killed). qemu
    /// exits 0 when the guest powers off.
    pub exit_status: Option<std::process::ExitStatus>,
    pub elapsed: Duration,
    pub console: String,
    pub qemu_output: String,
}

/// A test that fails mid-boot must not leave qemu spinning a core.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // No-op once reaped: std never signals a pid it has waited for.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot(backend: Backend) -> Boot {
        let disk = |path: &str, read_only, serial: &str, role: &str| Disk {
            path: PathBuf::from(path),
            read_only,
            serial: serial.into(),
            role: role.into(),
        };
        Boot {
            backend,
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: "console=hvc0 rw".into(),
            disks: vec![
                disk("/l0,x.erofs", true, "cocoon-layer0", "layer"),
                disk("/cow.raw", false, "cocoon-cow", "cow"),
            ],
        }
    }

    fn args(boot: &Boot) -> Vec<String> {
        boot.qemu_args(Path::new("/log"))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    fn after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn ch_disks_keep_order_serials_and_read_only_flags() {
        let args = args(&boot(Backend::CloudHypervisor));
        assert_eq!(after(&args, "-append"), ["console=hvc0 rw"]);
        assert_eq!(
            after(&args, "-drive"),
            [
                "if=none,id=disk0,format=raw,readonly=on,file=/l0,,x.erofs",
                "if=none,id=disk1,format=raw,readonly=off,file=/cow.raw",
            ]
        );
        let devices = after(&args, "-device");
        assert_eq!(
            devices[devices.len() - 2..],
            [
                "virtio-blk-pci,drive=disk0,serial=cocoon-layer0",
                "virtio-blk-pci,drive=disk1,serial=cocoon-cow",
            ]
        );
        assert!(devices.contains(&"virtconsole,chardev=console"));
    }

    #[test]
    fn fc_disks_are_mmio_without_serials_on_a_pci_less_machine() {
        let args = args(&boot(Backend::Firecracker));
        assert_eq!(
            after(&args, "-machine"),
            ["microvm,auto-kernel-cmdline=off"]
        );
        assert_eq!(
            after(&args, "-device"),
            [
                "virtio-blk-device,drive=disk0",
                "virtio-blk-device,drive=disk1"
            ]
        );
        assert_eq!(after(&args, "-serial"), ["chardev:console"]);
        assert_eq!(after(&args, "-icount"), ["shift=auto"]);
    }
}
