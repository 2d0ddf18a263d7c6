//! The programs the engine runs: the VMMs (found, and answering
//! `--version`), QEMU's accelerator, and the image tools.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{Check, Status, origin, set_key};
use crate::config::{Config, QemuAccel};
use crate::process::find_program;

/// A VMM that hangs on `--version` must not hang the doctor.
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

/// The first non-empty line `program --version` prints (Firecracker puts its
/// version first, then log lines), with stdin from /dev/null and a deadline.
fn version_of(path: &Path, timeout: Duration) -> Result<String, String> {
    let mut child = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {} --version: {e}", path.display()))?;
    let mut stdout = child.stdout.take().expect("piped");
    // Read on a thread: a child that never closes its output must not block us
    // past the deadline (the thread is abandoned then, and ends with the pipe).
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = (&mut stdout).take(64 * 1024).read_to_end(&mut out);
        let _ = tx.send(out);
    });
    let deadline = Instant::now() + timeout;
    let output = rx.recv_timeout(timeout);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let (Ok(output), Some(status)) = (output, status) else {
        return Err(format!(
            "{} --version did not finish within {}s",
            path.display(),
            timeout.as_secs_f32()
        ));
    };
    if !status.success() {
        return Err(format!("{} --version failed ({status})", path.display()));
    }
    Ok(String::from_utf8_lossy(&output)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("unknown version")
        .to_string())
}

/// What probing one VMM found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum VmmProbe {
    Found {
        path: PathBuf,
        version: String,
    },
    /// Not there, or there but not working; the text says which.
    Unusable(String),
}

impl VmmProbe {
    fn probe(program: &str) -> VmmProbe {
        match find_program(program) {
            Err(why) => VmmProbe::Unusable(why),
            Ok(path) => match version_of(&path, VERSION_TIMEOUT) {
                Ok(version) => VmmProbe::Found { path, version },
                Err(why) => VmmProbe::Unusable(why),
            },
        }
    }

    fn usable(&self) -> bool {
        matches!(self, VmmProbe::Found { .. })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Vmm {
    CloudHypervisor,
    Firecracker,
    Qemu,
}

impl Vmm {
    const ALL: [Vmm; 3] = [Vmm::CloudHypervisor, Vmm::Firecracker, Vmm::Qemu];

    fn check_name(self) -> &'static str {
        match self {
            Vmm::CloudHypervisor => "cloud_hypervisor",
            Vmm::Firecracker => "firecracker",
            Vmm::Qemu => "qemu",
        }
    }

    /// The backend's name (`Hypervisor`'s, as `--hypervisor` takes it).
    fn backend_name(self) -> &'static str {
        match self {
            Vmm::CloudHypervisor => "cloud-hypervisor",
            Vmm::Firecracker => "firecracker",
            Vmm::Qemu => "qemu",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Vmm::CloudHypervisor => "Cloud Hypervisor",
            Vmm::Firecracker => "Firecracker",
            Vmm::Qemu => "QEMU",
        }
    }

    /// The `vm create` flag that picks it.
    fn flag(self) -> &'static str {
        match self {
            Vmm::CloudHypervisor => "--hypervisor ch",
            Vmm::Firecracker => "--fc",
            Vmm::Qemu => "--qemu",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Vmm::CloudHypervisor => "ch_binary",
            Vmm::Firecracker => "fc_binary",
            Vmm::Qemu => "qemu_binary",
        }
    }

    fn binary(self, config: &Config) -> &str {
        match self {
            Vmm::CloudHypervisor => &config.ch_binary,
            Vmm::Firecracker => &config.fc_binary,
            Vmm::Qemu => &config.qemu_binary,
        }
    }

    fn fix(self) -> String {
        let (what, source, program) = match self {
            Vmm::CloudHypervisor => (
                "Cloud Hypervisor",
                "from https://github.com/cloud-hypervisor/cloud-hypervisor/releases",
                "cloud-hypervisor",
            ),
            Vmm::Firecracker => (
                "Firecracker",
                "from https://github.com/firecracker-microvm/firecracker/releases",
                "firecracker",
            ),
            Vmm::Qemu => (
                "QEMU",
                "(apt-get install qemu-system-x86)",
                "qemu-system-x86_64",
            ),
        };
        format!(
            "install {what} {source} as {program} on PATH, or {} to its path",
            set_key(self.key())
        )
    }
}

/// The VMM a new VM gets without a flag, and why when it is not the
/// built-in default: `default_hypervisor`, else `use_firecracker`.
pub(super) fn default_vmm(config: &Config) -> (Vmm, Option<String>) {
    let name = crate::backend::configured(config).as_str();
    let vmm = Vmm::ALL
        .into_iter()
        .find(|v| v.backend_name() == name)
        .unwrap_or(Vmm::CloudHypervisor);
    let why = if config.default_hypervisor.is_some() {
        Some(format!("default_hypervisor is {name}"))
    } else if config.use_firecracker {
        Some("use_firecracker is on".to_string())
    } else if vmm != Vmm::CloudHypervisor {
        Some("the first VMM installed".to_string())
    } else {
        None
    };
    (vmm, why)
}

/// The status of one VMM. A missing VMM only takes its own VMs away while
/// another one works (the default one's VMs then need a flag); with none
/// usable every VMM fails. So one usable VMM is enough, and none fails all.
pub(super) fn vmm_status(usable: bool, others_usable: bool) -> Status {
    match (usable, others_usable) {
        (true, _) => Status::Ok,
        (false, true) => Status::Warn,
        (false, false) => Status::Fail,
    }
}

/// What a missing `vmm` costs, given the default (and why it is) and the
/// other VMMs that work.
fn consequence(vmm: Vmm, default: &(Vmm, Option<String>), usable: &[Vmm]) -> String {
    if usable.is_empty() {
        return "no VMM is available, so no VM can run".into();
    }
    // Only Cloud Hypervisor boots UEFI firmware.
    let cloud = if vmm == Vmm::CloudHypervisor {
        ", and cloud images cannot run"
    } else {
        ""
    };
    let (default, why) = (default.0, default.1.as_deref());
    if vmm == default {
        let with: Vec<String> = usable
            .iter()
            .map(|v| format!("{} ({})", v.flag(), v.title()))
            .collect();
        let so = why.map_or(String::new(), |why| format!("{why}, so "));
        format!("{so}VMs run only with {}{cloud}", with.join(" or "))
    } else if usable.contains(&default) {
        let why = why.map_or(String::new(), |why| format!(" ({why})"));
        format!(
            "{}{why} runs VMs, but {} cannot be used{cloud}",
            default.title(),
            vmm.flag()
        )
    } else {
        format!("{} cannot be used{cloud}", vmm.flag())
    }
}

/// The VMMs' items, and whether QEMU can run VMs without KVM (found, and
/// `qemu_accel` is not `kvm`): then a missing KVM is not the end.
pub(super) fn vmms(config: &Config, kvm: bool) -> (Vec<Check>, bool) {
    let probes = Vmm::ALL.map(|vmm| (vmm, VmmProbe::probe(vmm.binary(config))));
    let default = default_vmm(config);
    let mut checks: Vec<Check> = probes
        .iter()
        .map(|(vmm, probe)| {
            let usable: Vec<Vmm> = probes
                .iter()
                .filter(|(other, p)| other != vmm && p.usable())
                .map(|(other, _)| *other)
                .collect();
            vmm_check(config, *vmm, probe, &default, &usable)
        })
        .collect();
    checks.push(accel_check(config, kvm));
    let qemu = probes.iter().any(|(v, p)| *v == Vmm::Qemu && p.usable());
    (checks, qemu && config.qemu_accel != QemuAccel::Kvm)
}

fn vmm_check(
    config: &Config,
    vmm: Vmm,
    probe: &VmmProbe,
    default: &(Vmm, Option<String>),
    usable: &[Vmm],
) -> Check {
    let why = match probe {
        VmmProbe::Found { path, version } => {
            return Check::ok(vmm.check_name(), format!("{} ({version})", path.display()));
        }
        VmmProbe::Unusable(why) => why,
    };
    let detail = format!(
        "{why}{}; {}",
        origin(config, vmm.key()),
        consequence(vmm, default, usable)
    );
    let fix = vmm.fix();
    match vmm_status(false, !usable.is_empty()) {
        Status::Fail => Check::fail(vmm.check_name(), detail, fix),
        _ => Check::warn(vmm.check_name(), detail, fix),
    }
}

const ACCEL: &str = "qemu_accel";

/// How QEMU will run guests: KVM, or TCG (emulated). `kvm` without a
/// usable /dev/kvm fails: Cloud Hypervisor and Firecracker need KVM too,
/// so nothing can run VMs then.
fn accel_check(config: &Config, kvm: bool) -> Check {
    let fix_kvm = "make /dev/kvm usable (see the kvm item)";
    match (config.qemu_accel, kvm) {
        (QemuAccel::Auto | QemuAccel::Kvm, true) => Check::ok(ACCEL, "KVM"),
        (QemuAccel::Tcg, _) => Check::ok(
            ACCEL,
            format!(
                "TCG{}: QEMU emulates the CPU, VMs are slow",
                origin(config, ACCEL)
            ),
        ),
        (QemuAccel::Auto, false) => Check::warn(
            ACCEL,
            "no usable /dev/kvm: QEMU will emulate (TCG), VMs will be slow",
            format!(
                "{fix_kvm}, or {} to tcg to choose emulation",
                set_key(ACCEL)
            ),
        ),
        (QemuAccel::Kvm, false) => Check::fail(
            ACCEL,
            format!(
                "qemu_accel is kvm{} but /dev/kvm is not usable, so QEMU cannot run VMs",
                origin(config, ACCEL)
            ),
            format!(
                "{fix_kvm}, or {} to auto or tcg to let QEMU emulate",
                set_key(ACCEL)
            ),
        ),
    }
}

/// The external tools image and disk preparation run, and the Debian package
/// of each. Each is needed by some VM the engine creates, so missing fails.
const IMAGE_TOOLS: &[(&str, &str, &str)] = &[
    ("mkfs_erofs", "mkfs.erofs", "erofs-utils"),
    ("mkfs_ext4", "mkfs.ext4", "e2fsprogs"),
    ("qemu_img", "qemu-img", "qemu-utils"),
];

pub(super) fn image_tools() -> Vec<Check> {
    IMAGE_TOOLS
        .iter()
        .map(|&(name, program, package)| match find_program(program) {
            Ok(path) => Check::ok(name, path.display().to_string()),
            Err(why) => Check::fail(name, why, format!("apt-get install {package}")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn one_usable_vmm_is_enough_and_none_fails_all() {
        assert_eq!(vmm_status(true, true), Status::Ok);
        assert_eq!(vmm_status(true, false), Status::Ok);
        assert_eq!(vmm_status(false, true), Status::Warn);
        assert_eq!(vmm_status(false, false), Status::Fail);
    }

    #[test]
    fn each_vmm_names_its_backend() {
        for vmm in Vmm::ALL {
            let backend = crate::backend::named(vmm.backend_name()).unwrap();
            assert_eq!(backend.title(), vmm.title());
            assert_eq!(
                backend.binary(&Config::default()).to_str(),
                Some(vmm.binary(&Config::default()))
            );
        }
    }

    #[test]
    fn the_default_vmm_follows_default_hypervisor_then_use_firecracker() {
        let mut config = Config::default();
        config.ch_binary = "/bin/true".into();
        assert_eq!(default_vmm(&config), (Vmm::CloudHypervisor, None));
        config.ch_binary = "/nonexistent/ch".into();
        config.fc_binary = "/nonexistent/fc".into();
        config.qemu_binary = "/bin/true".into();
        assert_eq!(
            default_vmm(&config),
            (Vmm::Qemu, Some("the first VMM installed".into()))
        );
        config.use_firecracker = true;
        assert_eq!(
            default_vmm(&config),
            (Vmm::Firecracker, Some("use_firecracker is on".into()))
        );
        config.default_hypervisor = Some("qemu".parse().unwrap());
        assert_eq!(
            default_vmm(&config),
            (Vmm::Qemu, Some("default_hypervisor is qemu".into()))
        );
        config.default_hypervisor = Some("ch".parse().unwrap());
        assert_eq!(
            default_vmm(&config),
            (
                Vmm::CloudHypervisor,
                Some("default_hypervisor is cloud-hypervisor".into())
            )
        );
    }

    #[test]
    fn consequences_follow_the_default_vmm() {
        let (ch, fc, qemu) = (Vmm::CloudHypervisor, Vmm::Firecracker, Vmm::Qemu);
        let builtin = (ch, None);
        let use_fc = (fc, Some("use_firecracker is on".to_string()));
        let to_qemu = (qemu, Some("default_hypervisor is qemu".to_string()));
        // The default one missing: the others' flags.
        assert_eq!(
            consequence(ch, &builtin, &[fc]),
            "VMs run only with --fc (Firecracker), and cloud images cannot run"
        );
        assert_eq!(
            consequence(ch, &builtin, &[fc, qemu]),
            "VMs run only with --fc (Firecracker) or --qemu (QEMU), and cloud images cannot run"
        );
        assert_eq!(
            consequence(fc, &use_fc, &[ch]),
            "use_firecracker is on, so VMs run only with --hypervisor ch (Cloud Hypervisor)"
        );
        assert_eq!(
            consequence(qemu, &to_qemu, &[fc]),
            "default_hypervisor is qemu, so VMs run only with --fc (Firecracker)"
        );
        // Another one missing while the default works: its own VMs only.
        assert_eq!(
            consequence(fc, &builtin, &[ch, qemu]),
            "Cloud Hypervisor runs VMs, but --fc cannot be used"
        );
        assert_eq!(
            consequence(qemu, &builtin, &[ch]),
            "Cloud Hypervisor runs VMs, but --qemu cannot be used"
        );
        assert_eq!(
            consequence(ch, &use_fc, &[fc]),
            "Firecracker (use_firecracker is on) runs VMs, but --hypervisor ch cannot be used, and cloud images cannot run"
        );
        // Another one missing while the default is missing too.
        assert_eq!(consequence(fc, &builtin, &[qemu]), "--fc cannot be used");
        for vmm in Vmm::ALL {
            for default in [&builtin, &use_fc, &to_qemu] {
                assert_eq!(
                    consequence(vmm, default, &[]),
                    "no VMM is available, so no VM can run"
                );
            }
        }
    }

    #[test]
    fn qemu_accel_outcomes() {
        let with = |accel: &str| {
            let mut config = Config::default();
            config.qemu_accel = accel.parse().unwrap();
            config
        };
        assert_eq!(
            accel_check(&with("auto"), true),
            Check::ok("qemu_accel", "KVM")
        );
        assert_eq!(
            accel_check(&with("kvm"), true),
            Check::ok("qemu_accel", "KVM")
        );
        for kvm in [true, false] {
            assert_eq!(
                accel_check(&with("tcg"), kvm),
                Check::ok("qemu_accel", "TCG: QEMU emulates the CPU, VMs are slow")
            );
        }
        assert_eq!(
            accel_check(&with("auto"), false),
            Check::warn(
                "qemu_accel",
                "no usable /dev/kvm: QEMU will emulate (TCG), VMs will be slow",
                "make /dev/kvm usable (see the kvm item), or set qemu_accel in the config file (or COCOON_QEMU_ACCEL) to tcg to choose emulation"
            )
        );
        assert_eq!(
            accel_check(&with("kvm"), false),
            Check::fail(
                "qemu_accel",
                "qemu_accel is kvm but /dev/kvm is not usable, so QEMU cannot run VMs",
                "make /dev/kvm usable (see the kvm item), or set qemu_accel in the config file (or COCOON_QEMU_ACCEL) to auto or tcg to let QEMU emulate"
            )
        );
    }

    #[test]
    fn qemu_emulates_only_when_found_and_not_forced_to_kvm() {
        let dir = tempfile::tempdir().unwrap();
        let qemu = script(dir.path(), "qemu", "echo 'QEMU emulator version 10.0.2'");
        let mut config = Config::default();
        config.ch_binary = "/nonexistent/ch".into();
        config.fc_binary = "/nonexistent/fc".into();
        config.qemu_binary = qemu.display().to_string();
        let (checks, emulates) = vmms(&config, false);
        assert!(emulates);
        let names: Vec<&str> = checks.iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            ["cloud_hypervisor", "firecracker", "qemu", "qemu_accel"]
        );
        assert_eq!(
            checks[2],
            Check::ok(
                "qemu",
                format!("{} (QEMU emulator version 10.0.2)", qemu.display())
            )
        );
        assert_eq!(checks[0].status, Status::Warn);
        assert_eq!(checks[1].status, Status::Warn);
        config.qemu_accel = QemuAccel::Kvm;
        assert!(!vmms(&config, false).1);
        config.qemu_accel = QemuAccel::Tcg;
        config.qemu_binary = "/nonexistent/qemu".into();
        let (checks, emulates) = vmms(&config, false);
        assert!(!emulates);
        assert!(
            checks[..3].iter().all(|c| c.status == Status::Fail),
            "{checks:?}"
        );
    }

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn vmm_versions_from_the_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let fc = script(
            dir.path(),
            "fc",
            "echo 'Firecracker v1.16.1'; echo; echo 'log line'",
        );
        assert_eq!(
            VmmProbe::probe(fc.to_str().unwrap()),
            VmmProbe::Found {
                path: fc.clone(),
                version: "Firecracker v1.16.1".into()
            }
        );
        let broken = script(dir.path(), "broken", "exit 3");
        assert_eq!(
            VmmProbe::probe(broken.to_str().unwrap()),
            VmmProbe::Unusable(format!(
                "{} --version failed (exit status: 3)",
                broken.display()
            ))
        );
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "").unwrap();
        assert_eq!(
            VmmProbe::probe(plain.to_str().unwrap()),
            VmmProbe::Unusable(format!("{} is not executable", plain.display()))
        );
        assert_eq!(
            VmmProbe::probe("/nonexistent/ch"),
            VmmProbe::Unusable("/nonexistent/ch does not exist".into())
        );
        assert_eq!(
            find_program("no-such-program-cocoon"),
            Err("no-such-program-cocoon not found on PATH".into())
        );
    }

    #[test]
    fn a_hanging_vmm_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let hang = script(dir.path(), "hang", "exec sleep 60");
        let started = Instant::now();
        assert_eq!(
            version_of(&hang, Duration::from_millis(500)),
            Err(format!(
                "{} --version did not finish within 0.5s",
                hang.display()
            ))
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
