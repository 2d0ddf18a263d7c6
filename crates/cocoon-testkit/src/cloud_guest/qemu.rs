//! Boots the disks the engine prepared for a cloud-image VM (overlay, data
//! disks, cidata) under qemu in software emulation (TCG) with Debian's OVMF,
//! standing in for Cloud Hypervisor and its CLOUDHV.fd, which this machine's
//! KVM (PVM) cannot run. The guest sees what a CH guest sees: UEFI, virtio-pci
//! disks in the engine's order without serials, virtio-net NICs with the
//! engine's MACs, and a 16550 serial port as its console.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use crate::linux_guest::qemu::Outcome;
use crate::linux_guest::qemu::{KillOnDrop, path_arg};

/// The qemu binary: `$COCOON_QEMU_BINARY` if set, else `qemu-system-x86_64` on PATH.
pub fn binary() -> Option<PathBuf> {
    crate::real_vmm("COCOON_QEMU_BINARY", "qemu-system-x86_64")
}

/// OVMF's code and the template of its variable store.
#[derive(Debug, Clone)]
pub struct Ovmf {
    pub code: PathBuf,
    pub vars: PathBuf,
}

impl Ovmf {
    /// `$COCOON_OVMF_CODE` and `$COCOON_OVMF_VARS` if set, else Debian's
    /// `ovmf` package (bookworm: the 4 MiB build, then the 2 MiB one).
    /// Err says what is missing, for a skip notice.
    pub fn find() -> Result<Ovmf, String> {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        if let (Some(code), Some(vars)) = (env("COCOON_OVMF_CODE"), env("COCOON_OVMF_VARS")) {
            return Ok(Ovmf {
                code: code.into(),
                vars: vars.into(),
            });
        }
        let dir = Path::new("/usr/share/OVMF");
        [
            ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"),
            ("OVMF_CODE.fd", "OVMF_VARS.fd"),
        ]
        .iter()
        .map(|(code, vars)| Ovmf {
            code: dir.join(code),
            vars: dir.join(vars),
        })
        .find(|o| o.code.is_file() && o.vars.is_file())
        .ok_or_else(|| {
            format!(
                "no OVMF firmware in {} (apt-get install ovmf)",
                dir.display()
            )
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    pub path: PathBuf,
    /// `qcow2` or `raw`, from the file's magic.
    pub format: &'static str,
    pub read_only: bool,
}

/// What a cloud-image VM boots, read from `cocoon vm inspect`.
#[derive(Debug, Clone)]
pub struct UefiBoot {
    pub firmware: Ovmf,
    /// In attach order.
    pub drives: Vec<Drive>,
    /// One virtio-net NIC per MAC, in order.
    pub macs: Vec<String>,
}

impl UefiBoot {
    pub fn from_inspect(vm: &Value, firmware: Ovmf) -> UefiBoot {
        let drives = vm["storage_configs"]
            .as_array()
            .unwrap_or_else(|| panic!("no storage_configs in {vm}"))
            .iter()
            .map(|d| {
                let path = PathBuf::from(d["path"].as_str().expect("disk path"));
                Drive {
                    format: format_of(&path),
                    read_only: d["ro"].as_bool().expect("ro"),
                    path,
                }
            })
            .collect();
        let macs = vm["network_configs"]
            .as_array()
            .map(|nics| {
                nics.iter()
                    .map(|n| n["mac"].as_str().expect("NIC mac").to_string())
                    .collect()
            })
            .unwrap_or_default();
        UefiBoot {
            firmware,
            drives,
            macs,
        }
    }

    /// qemu's arguments; `vars` is this boot's writable copy of the variable store.
    pub fn qemu_args(&self, vars: &Path, console_log: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |parts: &[&str]| args.extend(parts.iter().map(OsString::from));
        push(&[
            "-accel",
            "tcg",
            "-machine",
            "q35",
            "-m",
            "512",
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ]);
        push(&[
            "-drive",
            &format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                path_arg(&self.firmware.code)
            ),
            "-drive",
            &format!("if=pflash,format=raw,unit=1,file={}", path_arg(vars)),
        ]);
        let console = format!("file,id=console,path={}", path_arg(console_log));
        push(&["-chardev", &console, "-serial", "chardev:console"]);
        for (i, drive) in self.drives.iter().enumerate() {
            let read_only = if drive.read_only { "on" } else { "off" };
            push(&[
                "-drive",
                &format!(
                    "if=none,id=disk{i},format={},readonly={read_only},file={}",
                    drive.format,
                    path_arg(&drive.path)
                ),
            ]);
            // The firmware boots the first disk, as CH's does.
            let boot = if i == 0 { ",bootindex=0" } else { "" };
            push(&["-device", &format!("virtio-blk-pci,drive=disk{i}{boot}")]);
        }
        for (i, mac) in self.macs.iter().enumerate() {
            // A backend that carries nothing out: the guest needs the MAC, not traffic.
            push(&[
                "-netdev",
                &format!("user,id=net{i},restrict=on"),
                // No option ROM: OVMF would otherwise try to network-boot it.
                "-device",
                &format!("virtio-net-pci,netdev=net{i},mac={mac},romfile="),
            ]);
        }
        args
    }

    /// Boots and waits for the guest to power off, killing qemu after
    /// `limit`. The console goes to `console_log`; qemu's own output to
    /// `<console_log>.qemu`, the variable store to `<console_log>.vars`.
    pub fn run(&self, qemu: &Path, console_log: &Path, limit: Duration) -> Outcome {
        let vars = console_log.with_extension("vars");
        std::fs::copy(&self.firmware.vars, &vars)
            .unwrap_or_else(|e| panic!("copy {}: {e}", self.firmware.vars.display()));
        let qemu_log = console_log.with_extension("qemu");
        let output = std::fs::File::create(&qemu_log)
            .unwrap_or_else(|e| panic!("{}: {e}", qemu_log.display()));
        let started = Instant::now();
        let child = Command::new(qemu)
            .args(self.qemu_args(&vars, console_log))
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("dup"))
            .stderr(output)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", qemu.display()));
        let mut guard = KillOnDrop(child);
        let exit_status = guard.wait_until(started, limit);
        let elapsed = started.elapsed();
        drop(guard);
        Outcome {
            exit_status,
            elapsed,
            console: String::from_utf8_lossy(&std::fs::read(console_log).unwrap_or_default())
                .into_owned(),
            qemu_output: std::fs::read_to_string(&qemu_log).unwrap_or_default(),
        }
    }
}

/// `qcow2` if the file starts with qcow2's magic, else `raw`.
fn format_of(path: &Path) -> &'static str {
    let mut magic = [0u8; 4];
    let read = std::fs::File::open(path)
        .and_then(|f| std::io::Read::read_exact(&mut &f, &mut magic))
        .is_ok();
    if read && magic == *b"QFI\xfb" {
        "qcow2"
    } else {
        "raw"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drives_keep_order_and_format_and_nics_their_macs() {
        let dir = tempfile::tempdir().unwrap();
        let overlay = dir.path().join("overlay.qcow2");
        std::fs::write(&overlay, b"QFI\xfb\0\0\0\x03").unwrap();
        let cidata = dir.path().join("ci,data.img");
        std::fs::write(&cidata, [0u8; 8]).unwrap();
        let vm = serde_json::json!({
            "storage_configs": [
                {"path": overlay, "ro": false, "role": "cow"},
                {"path": cidata, "ro": true, "role": "cidata"},
            ],
            "network_configs": [{"mac": "02:00:00:00:00:07"}],
        });
        let boot = UefiBoot::from_inspect(
            &vm,
            Ovmf {
                code: "/c.fd".into(),
                vars: "/v.fd".into(),
            },
        );
        let args: Vec<String> = boot
            .qemu_args(Path::new("/vars"), Path::new("/log"))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let after = |flag: &str| -> Vec<&str> {
            args.windows(2)
                .filter(|w| w[0] == flag)
                .map(|w| w[1].as_str())
                .collect()
        };
        assert_eq!(
            after("-drive"),
            [
                "if=pflash,format=raw,unit=0,readonly=on,file=/c.fd".to_string(),
                "if=pflash,format=raw,unit=1,file=/vars".to_string(),
                format!(
                    "if=none,id=disk0,format=qcow2,readonly=off,file={}",
                    overlay.display()
                ),
                format!(
                    "if=none,id=disk1,format=raw,readonly=on,file={}",
                    path_arg(&cidata)
                ),
            ]
        );
        assert_eq!(
            after("-device"),
            [
                "virtio-blk-pci,drive=disk0,bootindex=0",
                "virtio-blk-pci,drive=disk1",
                "virtio-net-pci,netdev=net0,mac=02:00:00:00:00:07,romfile=",
            ]
        );
    }
}
