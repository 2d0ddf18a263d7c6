//! `cocoon doctor`: checks this host and says, per item, what is missing and
//! how to fix it. cocoon kept this in a shell script (`doctor/check.sh`); here
//! it is a library call so the answer is typed and the CLI only renders it.
//!
//! It reads the configuration and probes the host, nothing else: no state
//! database and no crash recovery, so it still answers when `root_dir` is
//! broken, which is one of the things it exists to diagnose. It changes
//! nothing either (it never creates the state directories).

mod cgroups;
mod container;
mod kernel;
mod network;
mod programs;
mod storage;
mod vsock;

use serde::Serialize;

use crate::config::Config;

/// How one item came out. Only `Fail` stops a VM from running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// One checked item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable identifier, for scripts (`kvm`, `cloud_hypervisor`, `root_dir`, ...).
    pub name: &'static str,
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do about it; `None` exactly when the status is ok.
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DoctorReport {
    pub checks: Vec<Check>,
    /// True iff no item failed.
    pub can_run_vm: bool,
}

impl DoctorReport {
    pub fn new(checks: Vec<Check>) -> DoctorReport {
        let can_run_vm = checks.iter().all(|c| c.status != Status::Fail);
        DoctorReport { checks, can_run_vm }
    }

    pub fn failed(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.status == Status::Fail)
    }

    pub fn warnings(&self) -> usize {
        self.checks
            .iter()
            .filter(|c| c.status == Status::Warn)
            .count()
    }
}

/// The names of every item, in report order.
pub const CHECK_NAMES: &[&str] = &[
    "kvm",
    "cloud_hypervisor",
    "firecracker",
    "qemu",
    "qemu_accel",
    "vhost_vsock",
    "mkfs_erofs",
    "mkfs_ext4",
    "qemu_img",
    "cni_plugins",
    "cni_networks",
    "kernel_erofs",
    "kernel_overlay",
    "tun",
    "netns",
    "cgroups",
    "firmware",
    "default_kernel",
    "cocoon_init",
    "root_dir",
    "run_dir",
    "log_dir",
    "disk_space",
];

/// Whether `/dev/kvm` opens and creates a VM (QEMU's `qemu_accel = auto`).
pub fn kvm_usable() -> bool {
    kernel::probe_kvm() == kernel::KvmProbe::Usable
}

/// Whether `/dev/kvm` is PVM (module `kvm_pvm`: KVM without hardware
/// virtualisation, as in some clouds' nested setups). It runs only guest
/// kernels built for PVM, such as PVH test kernels, not stock distribution
/// kernels like the default kernel container images boot.
pub fn kvm_is_pvm() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

/// Checks the host against `config`. Never fails: whatever goes wrong while
/// probing is itself the finding.
pub fn run(config: &Config) -> DoctorReport {
    let kvm = kernel::probe_kvm();
    let usable = kvm == kernel::KvmProbe::Usable;
    let (vmms, qemu_emulates) = programs::vmms(config, usable);
    let mut checks = vec![kernel::kvm_check(kvm, qemu_emulates)];
    checks.extend(vmms);
    checks.push(vsock::check(config));
    checks.extend(programs::image_tools());
    checks.extend(network::cni(config));
    checks.extend(kernel::filesystems());
    checks.push(kernel::tun());
    checks.push(kernel::netns());
    checks.push(cgroups::check(config));
    checks.push(storage::firmware(config));
    checks.push(container::default_kernel(config));
    checks.push(container::cocoon_init(config));
    checks.extend(storage::state_dirs(config));
    checks.push(storage::disk_space(config));
    DoctorReport::new(checks)
}

/// "set `key` (`--flag` or `ENV`)": how a user changes a config key.
fn set_key(name: &str) -> String {
    match crate::config::key(name) {
        Some(key) => match key.flag {
            Some(flag) => format!("set {name} ({flag} or {})", key.env),
            None => format!("set {name} in the config file (or {})", key.env),
        },
        None => format!("set {name}"),
    }
}

/// " (ch_binary from environment variable COCOON_CH_BINARY)", or nothing for a
/// default: says where a path that is not where the user thinks came from.
fn origin(config: &Config, key: &str) -> String {
    match config.source_of(key) {
        crate::config::Source::Default => String::new(),
        source => format!(" ({key} from {source})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_stop_vms() {
        let report = DoctorReport::new(vec![
            Check::ok("kvm", "fine"),
            Check::warn("tun", "missing", "modprobe tun"),
        ]);
        assert!(report.can_run_vm);
        assert_eq!(report.warnings(), 1);
        let report = DoctorReport::new(vec![
            Check::ok("kvm", "fine"),
            Check::fail("root_dir", "broken", "fix it"),
        ]);
        assert!(!report.can_run_vm);
        assert_eq!(
            report.failed().map(|c| c.name).collect::<Vec<_>>(),
            ["root_dir"]
        );
    }

    #[test]
    fn report_serialises_snake_case_with_lowercase_statuses() {
        let report = DoctorReport::new(vec![Check::warn("tun", "missing", "modprobe tun")]);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "checks": [{"name": "tun", "status": "warn", "detail": "missing", "fix": "modprobe tun"}],
                "can_run_vm": true,
            })
        );
    }

    #[test]
    fn every_item_is_reported_once_in_order() {
        let dir = std::env::temp_dir().join(format!("cocoon-doctor-unit-{}", std::process::id()));
        let mut config = Config::default();
        config.root_dir = dir.join("root");
        config.run_dir = dir.join("root/run");
        config.log_dir = dir.join("log");
        config.cni_conf_dir = dir.join("cni");
        config.cni_bin_dir = dir.join("bin");
        config.firmware_path = dir.join("CLOUDHV.fd");
        config.ch_binary = "/nonexistent/ch".into();
        config.fc_binary = "/nonexistent/fc".into();
        config.qemu_binary = "/nonexistent/qemu".into();
        let report = run(&config);
        let names: Vec<&str> = report.checks.iter().map(|c| c.name).collect();
        assert_eq!(names, CHECK_NAMES);
        for check in &report.checks {
            assert_eq!(check.fix.is_none(), check.status == Status::Ok, "{check:?}");
        }
        assert!(!report.can_run_vm, "no VMM at all");
        assert!(!dir.exists(), "doctor creates nothing");
    }

    #[test]
    fn key_hints_name_flag_or_env() {
        assert_eq!(
            set_key("root_dir"),
            "set root_dir (--root-dir or COCOON_ROOT_DIR)"
        );
        assert_eq!(
            set_key("ch_binary"),
            "set ch_binary in the config file (or COCOON_CH_BINARY)"
        );
    }
}
