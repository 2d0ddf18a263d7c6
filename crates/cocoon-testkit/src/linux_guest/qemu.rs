//! Boots a VM record under qemu in software emulation (TCG), with exactly the
//! kernel, initrd, command line and disks the engine chose for its backend.
//! This machine's KVM (PVM) cannot run stock Linux kernels under Cloud
//! Hypervisor or Firecracker; qemu stands in with the same guest-visible
//! hardware: virtio-pci disks with serials and a virtio console for CH,
//! virtio-mmio disks without serials and a 16550 on ttyS0 for FC. NICs are
//! virtio-net on the engine's TAPs with the engine's MACs, and qemu runs in
//! the VM's network namespace, where the engine made those TAPs.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
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

/// A NIC as the engine recorded it for the VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub tap: String,
    pub mac: String,
    /// Queues as the VMM sees them (a pair per vCPU on CH): more than two
    /// means the engine made a multi-queue TAP.
    pub num_queues: u32,
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
    pub nics: Vec<Nic>,
    /// The namespace the engine runs the VMM in (CNI NICs), if any.
    pub netns: Option<PathBuf>,
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
        let nic_configs = vm["network_configs"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let nics = nic_configs
            .iter()
            .map(|n| Nic {
                tap: text(&n["tap"]),
                mac: text(&n["mac"]),
                num_queues: n["num_queues"]
                    .as_u64()
                    .and_then(|q| u32::try_from(q).ok())
                    .unwrap_or_else(|| panic!("no num_queues in {n}")),
            })
            .collect();
        let netns = nic_configs
            .iter()
            .filter_map(|n| n["netns_path"].as_str())
            .find(|p| !p.is_empty())
            .map(PathBuf::from);
        Boot {
            backend,
            kernel: PathBuf::from(text(&boot["kernel_path"])),
            initrd: PathBuf::from(text(&boot["initrd_path"])),
            cmdline: text(&boot["cmdline"]),
            disks,
            nics,
            netns,
        }
    }

    /// qemu's arguments; the guest console goes to `console_log`.
    pub fn qemu_args(&self, console_log: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |parts: &[&str]| args.extend(parts.iter().map(OsString::from));
        self.machine_args(&mut push);
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
        self.disk_args(&mut push);
        self.nic_args(&mut push);
        args
    }

    /// The machine: accelerator, board, memory, CPUs, clocks, no defaults.
    fn machine_args(&self, push: &mut impl FnMut(&[&str])) {
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
    }

    fn disk_args(&self, push: &mut impl FnMut(&[&str])) {
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
    }

    fn nic_args(&self, push: &mut impl FnMut(&[&str])) {
        for (i, nic) in self.nics.iter().enumerate() {
            // The engine created the TAP with a virtio-net header, as every
            // VMM opens it; qemu must open it with the same multi-queue flag.
            let pairs = (nic.num_queues / 2).max(1);
            let mut netdev = format!(
                "tap,id=net{i},ifname={},script=no,downscript=no,vnet_hdr=on",
                nic.tap
            );
            let mut device = match self.backend {
                Backend::CloudHypervisor => format!("virtio-net-pci,netdev=net{i},mac={}", nic.mac),
                Backend::Firecracker => format!("virtio-net-device,netdev=net{i},mac={}", nic.mac),
            };
            if nic.num_queues > 2 {
                netdev.push_str(&format!(",queues={pairs}"));
                // A vector per queue, one for config changes, one for control.
                device.push_str(&format!(",mq=on,vectors={}", 2 * pairs + 2));
            }
            push(&["-netdev", &netdev, "-device", &device]);
        }
    }

    /// Starts qemu (inside the VM's namespace if it has one) and returns at
    /// once; the guest console goes to `console_log`, qemu's own output to
    /// `<console_log>.qemu` (a pipe nobody drains could stall it).
    pub fn spawn(&self, qemu: &Path, console_log: &Path) -> Running {
        let started = Instant::now();
        let qemu_log = console_log.with_extension("qemu");
        let output = std::fs::File::create(&qemu_log)
            .unwrap_or_else(|e| panic!("{}: {e}", qemu_log.display()));
        let mut command = match &self.netns {
            // nsenter execs qemu (no fork without --pid): the child is qemu.
            Some(netns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", netns.display())).arg(qemu);
                c
            }
            None => Command::new(qemu),
        };
        let child = command
            .args(self.qemu_args(console_log))
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("dup"))
            .stderr(output)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", qemu.display()));
        Running {
            child: KillOnDrop(child),
            started,
            console_log: console_log.to_path_buf(),
            qemu_log,
        }
    }

    /// Boots and waits for the guest to power off, killing qemu after `limit`.
    pub fn run(&self, qemu: &Path, console_log: &Path, limit: Duration) -> Outcome {
        self.spawn(qemu, console_log).finish(limit)
    }
}

/// A qemu that [`Boot::spawn`] started; killed when dropped.
pub struct Running {
    child: KillOnDrop,
    started: Instant,
    console_log: PathBuf,
    qemu_log: PathBuf,
}

impl Running {
    /// The guest console so far.
    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.console_log).unwrap_or_default()
    }

    /// qemu's own output so far (why it could not start, for instance).
    pub fn qemu_output(&self) -> String {
        std::fs::read_to_string(&self.qemu_log).unwrap_or_default()
    }

    /// Whether qemu is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.0.try_wait().expect("wait for qemu").is_none()
    }

    /// Waits up to `limit` (from now) for the console to contain `needle`;
    /// false if it did not, or qemu ended first.
    pub fn wait_for(&mut self, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.console().contains(needle) {
                return true;
            }
            if !self.is_running() || Instant::now() > deadline {
                // One last look: qemu may have written it just before exiting.
                return self.console().contains(needle);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the guest to power off, killing qemu `limit` after it started.
    pub fn finish(mut self, limit: Duration) -> Outcome {
        let exit_status = self.child.wait_until(self.started, limit);
        self.outcome(exit_status)
    }

    /// Kills qemu now (the guest is not asked to shut down).
    pub fn kill(mut self) -> Outcome {
        let exit_status = self.child.0.try_wait().expect("wait for qemu");
        self.outcome(exit_status)
    }

    /// Kills qemu if still running and collects what it left.
    fn outcome(self, exit_status: Option<ExitStatus>) -> Outcome {
        let elapsed = self.started.elapsed();
        let Running {
            child,
            console_log,
            qemu_log,
            ..
        } = self;
        drop(child);
        Outcome {
            exit_status,
            elapsed,
            console: std::fs::read_to_string(&console_log).unwrap_or_default(),
            qemu_output: std::fs::read_to_string(&qemu_log).unwrap_or_default(),
        }
    }
}

/// qemu option values escape a comma by doubling it.
pub(crate) fn path_arg(path: &Path) -> String {
    path.to_str().expect("UTF-8 path").replace(',', ",,")
}

#[derive(Debug)]
pub struct Outcome {
    /// None if qemu was still running at the limit (and was killed). qemu
    /// exits 0 when the guest powers off.
    pub exit_status: Option<ExitStatus>,
    pub elapsed: Duration,
    /// The guest console (firmware output included, on a UEFI boot).
    pub console: String,
    pub qemu_output: String,
}

/// A test that fails mid-boot must not leave qemu spinning a core.
pub(crate) struct KillOnDrop(pub(crate) Child);

impl KillOnDrop {
    /// Polls qemu until it exits (its status) or `limit` after `started`
    /// passes (`None`).
    pub(crate) fn wait_until(&mut self, started: Instant, limit: Duration) -> Option<ExitStatus> {
        loop {
            if let Some(status) = self.0.try_wait().expect("wait for qemu") {
                return Some(status);
            }
            if started.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

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
            nics: vec![],
            netns: None,
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

    #[test]
    fn nics_use_the_engine_taps_macs_and_queue_flags() {
        let nic = |tap: &str, mac: &str, num_queues| Nic {
            tap: tap.into(),
            mac: mac.into(),
            num_queues,
        };
        let mut ch = boot(Backend::CloudHypervisor);
        ch.nics = vec![
            nic("tapabcdefgh-0", "02:00:00:00:00:01", 4),
            nic("tapabcdefgh-1", "02:00:00:00:00:02", 2),
        ];
        let ch_args = args(&ch);
        assert_eq!(
            after(&ch_args, "-netdev"),
            [
                "tap,id=net0,ifname=tapabcdefgh-0,script=no,downscript=no,vnet_hdr=on,queues=2",
                "tap,id=net1,ifname=tapabcdefgh-1,script=no,downscript=no,vnet_hdr=on",
            ]
        );
        let devices = after(&ch_args, "-device");
        assert_eq!(
            devices[devices.len() - 2..],
            [
                "virtio-net-pci,netdev=net0,mac=02:00:00:00:00:01,mq=on,vectors=6",
                "virtio-net-pci,netdev=net1,mac=02:00:00:00:00:02",
            ]
        );
        let mut fc = boot(Backend::Firecracker);
        fc.nics = vec![nic("tapabcdefgh-0", "02:00:00:00:00:01", 2)];
        let args = args(&fc);
        assert_eq!(
            after(&args, "-device").last(),
            Some(&"virtio-net-device,netdev=net0,mac=02:00:00:00:00:01")
        );
    }
}
