//! `cocoon doctor` through the real binary: the items a test controls (VMMs,
//! CNI directories, state directories) come out exactly as documented, and
//! the exit code follows `can_run_vm`. What this machine happens to have (KVM,
//! CNI plugins, image tools) is only checked for being reported.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cocoon_testkit::CocoonEnv;
use serde_json::{Value, json};

/// Every item, in report order: part of the JSON interface.
const ITEMS: &[&str] = &[
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

const CH_FIX: &str = "install Cloud Hypervisor from https://github.com/cloud-hypervisor/cloud-hypervisor/releases as cloud-hypervisor on PATH, or set ch_binary in the config file (or COCOON_CH_BINARY) to its path";
const FC_FIX: &str = "install Firecracker from https://github.com/firecracker-microvm/firecracker/releases as firecracker on PATH, or set fc_binary in the config file (or COCOON_FC_BINARY) to its path";
const QEMU_FIX: &str = "install QEMU (apt-get install qemu-system-x86) as qemu-system-x86_64 on PATH, or set qemu_binary in the config file (or COCOON_QEMU_BINARY) to its path";
const NO_CNI: &str = "VMs run only with --nics 0 (or --bridge)";
const ROOT_ELSEWHERE: &str = "set root_dir (--root-dir or COCOON_ROOT_DIR) to another directory";

fn env() -> CocoonEnv {
    CocoonEnv::new(env!("CARGO_BIN_EXE_cocoon"))
}

/// `cocoon doctor` in `env` with no VMM unless a test names one.
fn doctor(env: &CocoonEnv) -> assert_cmd::Command {
    let mut cmd = env.cmd();
    cmd.arg("doctor")
        .env("COCOON_CH_BINARY", "/nonexistent/cloud-hypervisor")
        .env("COCOON_FC_BINARY", "/nonexistent/firecracker")
        .env("COCOON_QEMU_BINARY", "/nonexistent/qemu-system-x86_64");
    cmd
}

/// Runs `cmd -o json`: the report, after checking the exit code and stderr
/// agree with it.
fn run_json(mut cmd: assert_cmd::Command) -> Value {
    let out = cmd.args(["-o", "json"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor -o json is not JSON ({e}); stderr: {stderr}"));
    let failed: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "fail")
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(report["can_run_vm"], json!(failed.is_empty()), "{report:#}");
    if failed.is_empty() {
        assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
        assert_eq!(stderr, "");
    } else {
        assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
        // One summary line, no generic error on top of it.
        assert_eq!(
            stderr,
            format!(
                "Error: this host cannot run a VM: {} failed\n",
                failed.join(", ")
            )
        );
    }
    report
}

fn item<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no item {name} in {report:#}"))
}

fn check(status: &str, name: &str, detail: &str, fix: Option<&str>) -> Value {
    json!({"name": name, "status": status, "detail": detail, "fix": fix})
}

/// Whether this host's /dev/kvm works, as the report says: its `kvm` item
/// is ok exactly then (without KVM it fails, or warns while QEMU emulates).
fn kvm_usable(report: &Value) -> bool {
    item(report, "kvm")["status"] == "ok"
}

#[test]
fn missing_vmms_all_fail_with_the_fix() {
    let env = env();
    let report = run_json(doctor(&env));
    assert_eq!(report["can_run_vm"], false);
    assert_eq!(
        item(&report, "cloud_hypervisor"),
        &check(
            "fail",
            "cloud_hypervisor",
            "/nonexistent/cloud-hypervisor does not exist (ch_binary from environment variable COCOON_CH_BINARY); no VMM is available, so no VM can run",
            Some(CH_FIX)
        )
    );
    assert_eq!(
        item(&report, "firecracker"),
        &check(
            "fail",
            "firecracker",
            "/nonexistent/firecracker does not exist (fc_binary from environment variable COCOON_FC_BINARY); no VMM is available, so no VM can run",
            Some(FC_FIX)
        )
    );
    assert_eq!(
        item(&report, "qemu"),
        &check(
            "fail",
            "qemu",
            "/nonexistent/qemu-system-x86_64 does not exist (qemu_binary from environment variable COCOON_QEMU_BINARY); no VMM is available, so no VM can run",
            Some(QEMU_FIX)
        )
    );

    // The table: one line per item, the fix indented below, a verdict last.
    let out = doctor(&env).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let table = String::from_utf8(out.stdout).unwrap();
    let indent = " ".repeat(24);
    assert!(
        table.contains(&format!(
            "\nFAIL  cloud_hypervisor  /nonexistent/cloud-hypervisor does not exist (ch_binary from environment variable COCOON_CH_BINARY); no VMM is available, so no VM can run\n{indent}fix: {CH_FIX}\nFAIL  firecracker       /nonexistent/firecracker does not exist (fc_binary from environment variable COCOON_FC_BINARY); no VMM is available, so no VM can run\n{indent}fix: {FC_FIX}\nFAIL  qemu              /nonexistent/qemu-system-x86_64 does not exist (qemu_binary from environment variable COCOON_QEMU_BINARY); no VMM is available, so no VM can run\n{indent}fix: {QEMU_FIX}\n"
        )),
        "{table}"
    );
    assert!(table.ends_with(" FAIL items above are fixed.\n"), "{table}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("Error: this host cannot run a VM: "));
}

fn write_script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_present_vmm_reports_its_version() {
    let env = env();
    let ch = env.path().join("cloud-hypervisor");
    write_script(&ch, "echo \"cloud-hypervisor v53.0\"");
    let mut cmd = doctor(&env);
    cmd.env("COCOON_CH_BINARY", &ch);
    let report = run_json(cmd);
    assert_eq!(
        item(&report, "cloud_hypervisor"),
        &check(
            "ok",
            "cloud_hypervisor",
            &format!("{} (cloud-hypervisor v53.0)", ch.display()),
            None
        )
    );
    assert_eq!(
        item(&report, "firecracker"),
        &check(
            "warn",
            "firecracker",
            "/nonexistent/firecracker does not exist (fc_binary from environment variable COCOON_FC_BINARY); Cloud Hypervisor runs VMs, but --fc cannot be used",
            Some(FC_FIX)
        )
    );

    // With Firecracker the default, the same host runs VMs only with it off.
    let mut cmd = doctor(&env);
    cmd.env("COCOON_CH_BINARY", &ch)
        .env("COCOON_USE_FIRECRACKER", "true");
    let report = run_json(cmd);
    assert_eq!(item(&report, "cloud_hypervisor")["status"], "ok");
    assert_eq!(
        item(&report, "firecracker"),
        &check(
            "warn",
            "firecracker",
            "/nonexistent/firecracker does not exist (fc_binary from environment variable COCOON_FC_BINARY); use_firecracker is on, so VMs run only with --hypervisor ch (Cloud Hypervisor)",
            Some(FC_FIX)
        )
    );
    assert_eq!(
        item(&report, "qemu"),
        &check(
            "warn",
            "qemu",
            "/nonexistent/qemu-system-x86_64 does not exist (qemu_binary from environment variable COCOON_QEMU_BINARY); --qemu cannot be used",
            Some(QEMU_FIX)
        )
    );
}

/// `doctor` with a QEMU that answers `--version`, and `vars` set.
fn with_qemu(env: &CocoonEnv, vars: &[(&str, &str)]) -> (PathBuf, Value) {
    let qemu = env.path().join("qemu-system-x86_64");
    write_script(
        &qemu,
        "echo 'QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)'; echo 'Copyright (c) 2003-2025'",
    );
    let mut cmd = doctor(env);
    cmd.env("COCOON_QEMU_BINARY", &qemu);
    for (key, value) in vars {
        cmd.env(key, value);
    }
    (qemu, run_json(cmd))
}

#[test]
fn qemu_alone_runs_vms_by_default() {
    let env = env();
    let (qemu, report) = with_qemu(&env, &[]);
    assert_eq!(
        item(&report, "qemu"),
        &check(
            "ok",
            "qemu",
            &format!(
                "{} (QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2))",
                qemu.display()
            ),
            None
        )
    );
    assert_eq!(
        item(&report, "cloud_hypervisor"),
        &check(
            "warn",
            "cloud_hypervisor",
            "/nonexistent/cloud-hypervisor does not exist (ch_binary from environment variable COCOON_CH_BINARY); QEMU (the first VMM installed) runs VMs, but --hypervisor ch cannot be used, and cloud images cannot run",
            Some(CH_FIX)
        )
    );
    assert_eq!(
        item(&report, "firecracker"),
        &check(
            "warn",
            "firecracker",
            "/nonexistent/firecracker does not exist (fc_binary from environment variable COCOON_FC_BINARY); QEMU (the first VMM installed) runs VMs, but --fc cannot be used",
            Some(FC_FIX)
        )
    );

    // With QEMU the default (default_hypervisor), Cloud Hypervisor only takes its own VMs away.
    let (_, report) = with_qemu(&env, &[("COCOON_DEFAULT_HYPERVISOR", "qemu")]);
    assert_eq!(
        item(&report, "cloud_hypervisor")["detail"],
        "/nonexistent/cloud-hypervisor does not exist (ch_binary from environment variable COCOON_CH_BINARY); QEMU (default_hypervisor is qemu) runs VMs, but --hypervisor ch cannot be used, and cloud images cannot run"
    );
    assert_eq!(
        item(&report, "firecracker")["detail"],
        "/nonexistent/firecracker does not exist (fc_binary from environment variable COCOON_FC_BINARY); QEMU (default_hypervisor is qemu) runs VMs, but --fc cannot be used"
    );
}

#[test]
fn the_qemu_accelerator_follows_qemu_accel_and_kvm() {
    let env = env();
    let (_, report) = with_qemu(&env, &[]);
    let kvm = kvm_usable(&report);
    let expected = if kvm {
        check("ok", "qemu_accel", "KVM", None)
    } else {
        check(
            "warn",
            "qemu_accel",
            "no usable /dev/kvm: QEMU will emulate (TCG), VMs will be slow",
            Some(
                "make /dev/kvm usable (see the kvm item), or set qemu_accel in the config file (or COCOON_QEMU_ACCEL) to tcg to choose emulation",
            ),
        )
    };
    assert_eq!(item(&report, "qemu_accel"), &expected);
    if !kvm {
        // QEMU stands in for the missing KVM.
        assert_eq!(item(&report, "kvm")["status"], "warn");
        assert!(
            item(&report, "kvm")["detail"]
                .as_str()
                .unwrap()
                .ends_with("; VMs run only with --qemu (QEMU), emulated and slow"),
            "{report:#}"
        );
    }

    let (_, report) = with_qemu(&env, &[("COCOON_QEMU_ACCEL", "tcg")]);
    assert_eq!(
        item(&report, "qemu_accel"),
        &check(
            "ok",
            "qemu_accel",
            "TCG (qemu_accel from environment variable COCOON_QEMU_ACCEL): QEMU emulates the CPU, VMs are slow",
            None
        )
    );

    let (_, report) = with_qemu(&env, &[("COCOON_QEMU_ACCEL", "kvm")]);
    let expected = if kvm {
        check("ok", "qemu_accel", "KVM", None)
    } else {
        check(
            "fail",
            "qemu_accel",
            "qemu_accel is kvm (qemu_accel from environment variable COCOON_QEMU_ACCEL) but /dev/kvm is not usable, so QEMU cannot run VMs",
            Some(
                "make /dev/kvm usable (see the kvm item), or set qemu_accel in the config file (or COCOON_QEMU_ACCEL) to auto or tcg to let QEMU emulate",
            ),
        )
    };
    assert_eq!(item(&report, "qemu_accel"), &expected);
}

#[test]
fn missing_cni_directories_warn() {
    let env = env();
    let conf = env.path().join("no-conf");
    let bin = env.path().join("no-bin");
    let mut cmd = doctor(&env);
    cmd.arg("--cni-conf-dir")
        .arg(&conf)
        .arg("--cni-bin-dir")
        .arg(&bin);
    let report = run_json(cmd);
    assert_eq!(
        item(&report, "cni_networks"),
        &check(
            "warn",
            "cni_networks",
            &format!("{} does not exist; {NO_CNI}", conf.display()),
            Some(&format!(
                "write a network list to {}/10-cocoon.conflist, for example {}, or set cni_conf_dir (--cni-conf-dir or COCOON_CNI_CONF_DIR) to a directory with one",
                conf.display(),
                r#"{"cniVersion":"1.0.0","name":"cocoon","plugins":[{"type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":true,"ipam":{"type":"host-local","subnet":"10.88.0.0/16","routes":[{"dst":"0.0.0.0/0"}]}}]}"#
            ))
        )
    );
    // Debian's /usr/lib/cni is searched after cni_bin_dir whatever it is, so
    // what this host has there decides the outcome: expect exactly that.
    let debian = Path::new("/usr/lib/cni");
    let plugins = ["bridge", "host-local", "loopback"];
    let missing: Vec<&str> = plugins
        .into_iter()
        .filter(|p| !debian.join(p).is_file())
        .collect();
    let expected = if missing.is_empty() {
        let found: Vec<String> = plugins
            .iter()
            .map(|p| debian.join(p).display().to_string())
            .collect();
        check("ok", "cni_plugins", &found.join(", "), None)
    } else {
        check(
            "warn",
            "cni_plugins",
            &format!(
                "{} not found in {}, /usr/lib/cni; {NO_CNI}",
                missing.join(", "),
                bin.display()
            ),
            Some(
                "apt-get install containernetworking-plugins (it installs them in /usr/lib/cni), or set cni_bin_dir (--cni-bin-dir or COCOON_CNI_BIN_DIR) to the directory holding them",
            ),
        )
    };
    assert_eq!(item(&report, "cni_plugins"), &expected);
    assert!(!conf.exists() && !bin.exists(), "doctor creates nothing");
}

/// `doctor` with `root` as root_dir (run_dir follows it).
fn with_root(env: &CocoonEnv, root: &Path) -> Value {
    let mut cmd = doctor(env);
    cmd.arg("--root-dir").arg(root);
    run_json(cmd)
}

#[test]
fn a_file_in_the_root_dir_path_fails() {
    let env = env();
    let file = env.path().join("file");
    std::fs::write(&file, "").unwrap();
    let root = file.join("root");
    let report = with_root(&env, &root);
    assert_eq!(
        item(&report, "root_dir"),
        &check(
            "fail",
            "root_dir",
            &format!(
                "{} is not a directory, so {} cannot be created",
                file.display(),
                root.display()
            ),
            Some(&format!("remove {}, or {ROOT_ELSEWHERE}", file.display()))
        )
    );
    assert_eq!(
        item(&report, "run_dir")["detail"],
        format!(
            "{} is not a directory, so {} cannot be created",
            file.display(),
            root.join("run").display()
        )
    );
    assert_eq!(report["can_run_vm"], false);
}

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

#[test]
fn a_root_dir_owned_by_another_user_fails() {
    if euid() != 0 {
        cocoon_testkit::skip(
            "a_root_dir_owned_by_another_user_fails",
            "root (to chown a directory to another user)",
        );
        return;
    }
    let env = env();
    let root: PathBuf = env.path().join("planted");
    std::fs::create_dir(&root).unwrap();
    std::os::unix::fs::chown(&root, Some(65534), Some(65534)).unwrap();
    let report = with_root(&env, &root);
    assert_eq!(
        item(&report, "root_dir"),
        &check(
            "fail",
            "root_dir",
            &format!(
                "{} is owned by uid 65534, not by this user (uid 0)",
                root.display()
            ),
            Some(&format!(
                "if {} is really cocoon's, `chown 0 {}`; otherwise {ROOT_ELSEWHERE}",
                root.display(),
                root.display()
            ))
        )
    );
    assert_eq!(report["can_run_vm"], false);
    assert_eq!(
        std::fs::read_dir(&root).unwrap().count(),
        0,
        "nothing left behind"
    );
}

#[test]
fn a_root_dir_others_can_write_fails() {
    let env = env();
    // World- or group-writable, sticky or not: a directory others could
    // have planted names in.
    for (mode, fails) in [(0o777, true), (0o770, true), (0o1777, true), (0o750, false)] {
        let root = env.path().join(format!("open-{mode:o}"));
        std::fs::create_dir(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(mode)).unwrap();
        let report = with_root(&env, &root);
        if !fails {
            assert_eq!(item(&report, "root_dir")["status"], "ok", "mode {mode:o}");
            continue;
        }
        assert_eq!(
            item(&report, "root_dir"),
            &check(
                "fail",
                "root_dir",
                &format!(
                    "{} is writable by other users (mode {mode:04o}), so anyone could plant files in it",
                    root.display()
                ),
                Some(&format!(
                    "`chmod go-w {}` if it is cocoon's own directory; otherwise {ROOT_ELSEWHERE}",
                    root.display()
                ))
            ),
            "mode {mode:o}"
        );
        assert_eq!(report["can_run_vm"], false);
    }
}

#[test]
fn json_has_every_item_and_a_usable_root_is_ok() {
    let env = env();
    let report = run_json(doctor(&env));
    let names: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ITEMS);
    for c in report["checks"].as_array().unwrap() {
        let keys: Vec<&String> = c.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 4, "{c}");
        assert!(
            ["ok", "warn", "fail"].contains(&c["status"].as_str().unwrap()),
            "{c}"
        );
        assert!(c["detail"].as_str().is_some_and(|d| !d.is_empty()), "{c}");
        assert_eq!(c["fix"].is_null(), c["status"] == "ok", "{c}");
    }
    // The test environment's directories do not exist yet: cocoon would make them.
    assert_eq!(
        item(&report, "root_dir"),
        &check(
            "ok",
            "root_dir",
            &format!(
                "{} does not exist yet; cocoon creates it in {}",
                env.root_dir().display(),
                env.path().display()
            ),
            None
        )
    );
    assert_eq!(
        item(&report, "log_dir")["status"],
        "ok",
        "{}",
        item(&report, "log_dir")
    );
    assert!(!env.root_dir().exists(), "doctor creates nothing");
    let firmware = env.root_dir().join("firmware/CLOUDHV.fd");
    assert_eq!(
        item(&report, "firmware"),
        &check(
            "warn",
            "firmware",
            &format!(
                "{} does not exist; cloud images cannot boot (OCI images are unaffected)",
                firmware.display()
            ),
            Some(&format!(
                "run `scripts/fetch-firmware.sh {}` from the cocoon checkout, or set firmware_path in the config file (or COCOON_FIRMWARE_PATH) to an existing CLOUDHV.fd",
                firmware.display()
            ))
        )
    );
}
