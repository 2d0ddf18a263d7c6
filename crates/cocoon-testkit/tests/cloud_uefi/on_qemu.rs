//! The engine's own QEMU backend boots the cloud image: `vm run --qemu`
//! (TCG: this host's KVM cannot run firmware) launches `q35` with OVMF
//! (`qemu_firmware`, a per-VM copy of `qemu_firmware_vars`), the overlay and
//! the cidata disk; the guest reports the cidata identity on the console.
//! A snapshot of the running guest is cloned, and the clone runs on with the
//! source's UEFI variables; `vm stop` presses the power button (the guest,
//! named `*-waits`, waits for it), and `vm rm` leaves nothing behind.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cocoon_testkit::cloud_guest;
use serde_json::Value;

use super::{BOOT_LIMIT, Lab, Tools, assert_identity, nic_of, prerequisites, test_image};

/// What the guest prints once it waits for the power button.
const WAITING: &str = "cocoon-cloud: waiting for the power button";
const PRESSED: &str = "cocoon-cloud: power button pressed";

/// The lab's command with the engine's QEMU pointed at the real binary and OVMF.
fn qemu_cmd(lab: &Lab, tools: &Tools) -> Command {
    let mut cmd = lab.cmd();
    cmd.env("COCOON_QEMU_BINARY", &tools.qemu)
        .env("COCOON_QEMU_ACCEL", "tcg")
        .env("COCOON_QEMU_FIRMWARE", &tools.ovmf.code)
        .env("COCOON_QEMU_FIRMWARE_VARS", &tools.ovmf.vars);
    cmd
}

fn ok(lab: &Lab, tools: &Tools, args: &[&str]) -> String {
    cocoon_testkit::run_ok(qemu_cmd(lab, tools), args)
}

/// `vm logs` once it shows `what`, within `limit`.
fn wait_log(lab: &Lab, tools: &Tools, vm: &str, what: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let log = ok(lab, tools, &["vm", "logs", vm]);
        assert!(
            !log.contains(cloud_guest::PANIC_MARKER),
            "the guest gave up:\n{log}"
        );
        if log.contains(what) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no {what:?} in the log of {vm} within {limit:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `vm stop` presses the power button: the guest says so and powers off;
/// `vm rm` then leaves no process and no directory.
fn stop_and_remove(lab: &Lab, tools: &Tools, vm: &Value) {
    let name = vm["config"]["name"].as_str().unwrap();
    let procs = cocoon_testkit::processes_of(&lab.inspect(name));
    assert_eq!(procs.len(), 2, "VMM and relay of {name}");
    ok(lab, tools, &["vm", "stop", name]);
    let stopped = lab.inspect(name);
    assert_eq!(stopped["state"], "stopped", "{stopped}");
    assert!(!procs.iter().any(cocoon_engine::supervise::is_running));
    let log = ok(lab, tools, &["vm", "logs", name]);
    assert!(
        log.contains(PRESSED),
        "the guest never saw the power button:\n{log}"
    );
    let run_dir = PathBuf::from(vm["run_dir"].as_str().unwrap());
    let log_dir = PathBuf::from(vm["log_dir"].as_str().unwrap());
    ok(lab, tools, &["vm", "rm", name]);
    assert!(cocoon_engine::supervise::find_by_socket(&run_dir.join("api.sock")).is_empty());
    assert!(!run_dir.exists() && !log_dir.exists(), "{name} left files");
}

fn run_dir_of(vm: &Value) -> PathBuf {
    PathBuf::from(vm["run_dir"].as_str().unwrap())
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn vm_run_qemu_boots_the_cloud_image_under_ovmf() {
    let test = "vm_run_qemu_boots_the_cloud_image_under_ovmf";
    let Some((inputs, Some(tools))) = prerequisites(test, true) else {
        return;
    };
    let image = test_image(&inputs);
    let lab = Lab::new().with_network();
    ok(
        &lab,
        &tools,
        &["image", "import", "local/uefi", image.to_str().unwrap()],
    );
    let started = Instant::now();
    let id = ok(
        &lab,
        &tools,
        &[
            "vm",
            "run",
            "--qemu",
            "--nics",
            "1",
            "--cpu",
            "1",
            "--memory",
            "512M",
            "--name",
            "src-waits",
            "local/uefi",
        ],
    )
    .trim()
    .to_string();
    let vm = lab.inspect("src-waits");
    assert_eq!(vm["hypervisor"], "qemu", "{vm}");
    assert_eq!(
        vm["boot_config"]["firmware_path"].as_str(),
        tools.ovmf.code.to_str(),
        "{vm}"
    );
    let log = wait_log(&lab, &tools, "src-waits", WAITING, BOOT_LIMIT);
    eprintln!(
        "vm run --qemu to the guest's report: {:.1}s (TCG, OVMF, systemd-boot)",
        started.elapsed().as_secs_f64()
    );
    // OVMF started the overlay's boot loader, which started the kernel.
    for step in ["BdsDxe: starting Boot", "EFI stub: Loaded initrd"] {
        assert!(log.contains(step), "no {step:?}:\n{log}");
    }
    let (mac, address) = nic_of(&vm);
    let reports = cloud_guest::reports(&log);
    assert_identity(&reports, &id, "src-waits", &mac, &address);
    // The VM's own variable store: the template's size, written by OVMF.
    let vars = run_dir_of(&vm).join("efivars.fd");
    let template = read(&tools.ovmf.vars);
    assert_eq!(read(&vars).len(), template.len());
    assert_ne!(read(&vars), template, "OVMF wrote no variable");

    // A snapshot of the running guest, and a clone of it: the clone's
    // variable store is the source's (carried in the migration stream).
    ok(
        &lab,
        &tools,
        &["snapshot", "save", "--name", "waiting", "src-waits"],
    );
    ok(
        &lab,
        &tools,
        &["vm", "clone", "--name", "clone-waits", "waiting"],
    );
    let clone = lab.inspect("clone-waits");
    assert_eq!(clone["state"], "running", "{clone}");
    assert_eq!(read(&run_dir_of(&clone).join("efivars.fd")), read(&vars));

    stop_and_remove(&lab, &tools, &clone);
    stop_and_remove(&lab, &tools, &vm);
    ok(&lab, &tools, &["snapshot", "rm", "waiting"]);
    let left: Vec<_> = std::fs::read_dir(lab.env.root_dir().join("run/vms"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in run/vms: {left:?}");
}
