//! The programs the engine runs: the two VMMs (found, and answering
//! `--version`) and the image tools.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{Check, Status, origin, set_key};
use crate::config::Config;
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
}

impl Vmm {
    fn check_name(self) -> &'static str {
        match self {
            Vmm::CloudHypervisor => "cloud_hypervisor",
            Vmm::Firecracker => "firecracker",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Vmm::CloudHypervisor => "ch_binary",
            Vmm::Firecracker => "fc_binary",
        }
    }

    fn fix(self) -> String {
        let (what, releases, program) = match self {
            Vmm::CloudHypervisor => (
                "Cloud Hypervisor",
                "https://github.com/cloud-hypervisor/cloud-hypervisor/releases",
                "cloud-hypervisor",
            ),
            Vmm::Firecracker => (
                "Firecracker",
                "https://github.com/firecracker-microvm/firecracker/releases",
                "firecracker",
            ),
        };
        format!(
            "install {what} from {releases} as {program} on PATH, or {} to its path",
            set_key(self.key())
        )
    }
}

/// The VMM a VM gets without `--fc`.
pub(super) fn default_vmm(use_firecracker: bool) -> Vmm {
    if use_firecracker {
        Vmm::Firecracker
    } else {
        Vmm::CloudHypervisor
    }
}

/// The status of one VMM. The default one missing fails unless the other can
/// stand in (`--fc`, or `use_firecracker` off); the non-default one missing
/// only takes its own VMs away, unless the default is missing too. So either
/// way one usable VMM is enough, and none fails both.
pub(super) fn vmm_status(usable: bool, other_usable: bool) -> Status {
    match (usable, other_usable) {
        (true, _) => Status::Ok,
        (false, true) => Status::Warn,
        (false, false) => Status::Fail,
    }
}

/// What a missing VMM costs, given the default and whether the other is there.
fn consequence(vmm: Vmm, default: Vmm, other_usable: bool) -> &'static str {
    if !other_usable {
        return "no VMM is available, so no VM can run";
    }
    match (vmm, vmm == default) {
        (Vmm::CloudHypervisor, true) => {
            "VMs run only with --fc (Firecracker), and cloud images cannot run"
        }
        (Vmm::CloudHypervisor, false) => {
            "Firecracker (use_firecracker) runs VMs, but cloud images cannot run"
        }
        (Vmm::Firecracker, false) => "Cloud Hypervisor runs VMs, but --fc cannot be used",
        (Vmm::Firecracker, true) => {
            "use_firecracker is on, so VMs run only with it off (on Cloud Hypervisor)"
        }
    }
}

pub(super) fn vmms(config: &Config) -> [Check; 2] {
    let ch = VmmProbe::probe(&config.ch_binary);
    let fc = VmmProbe::probe(&config.fc_binary);
    [
        vmm_check(config, Vmm::CloudHypervisor, &ch, fc.usable()),
        vmm_check(config, Vmm::Firecracker, &fc, ch.usable()),
    ]
}

fn vmm_check(config: &Config, vmm: Vmm, probe: &VmmProbe, other_usable: bool) -> Check {
    let why = match probe {
        VmmProbe::Found { path, version } => {
            return Check::ok(vmm.check_name(), format!("{} ({version})", path.display()));
        }
        VmmProbe::Unusable(why) => why,
    };
    let detail = format!(
        "{why}{}; {}",
        origin(config, vmm.key()),
        consequence(vmm, default_vmm(config.use_firecracker), other_usable)
    );
    let fix = vmm.fix();
    match vmm_status(false, other_usable) {
        Status::Fail => Check::fail(vmm.check_name(), detail, fix),
        _ => Check::warn(vmm.check_name(), detail, fix),
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
    fn one_usable_vmm_is_enough_and_none_fails_both() {
        assert_eq!(vmm_status(true, true), Status::Ok);
        assert_eq!(vmm_status(true, false), Status::Ok);
        assert_eq!(vmm_status(false, true), Status::Warn);
        assert_eq!(vmm_status(false, false), Status::Fail);
    }

    #[test]
    fn firecracker_is_the_default_only_with_use_firecracker() {
        assert_eq!(default_vmm(false), Vmm::CloudHypervisor);
        assert_eq!(default_vmm(true), Vmm::Firecracker);
    }

    #[test]
    fn consequences_follow_the_default_vmm() {
        let ch = Vmm::CloudHypervisor;
        let fc = Vmm::Firecracker;
        assert_eq!(
            consequence(ch, ch, true),
            "VMs run only with --fc (Firecracker), and cloud images cannot run"
        );
        assert_eq!(
            consequence(ch, fc, true),
            "Firecracker (use_firecracker) runs VMs, but cloud images cannot run"
        );
        assert_eq!(
            consequence(fc, ch, true),
            "Cloud Hypervisor runs VMs, but --fc cannot be used"
        );
        assert_eq!(
            consequence(fc, fc, true),
            "use_firecracker is on, so VMs run only with it off (on Cloud Hypervisor)"
        );
        for (vmm, default) in [(ch, ch), (ch, fc), (fc, ch), (fc, fc)] {
            assert_eq!(
                consequence(vmm, default, false),
                "no VMM is available, so no VM can run"
            );
        }
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
