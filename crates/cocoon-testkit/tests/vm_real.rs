//! End to end with the real VMMs: an OCI image carrying the test guest kernel
//! is pushed to a local registry, pulled, and booted by `cocoon vm run` on
//! Cloud Hypervisor, Firecracker and QEMU; `vm logs` and an interactive `vm
//! console` see the guest; stop, start and rm leave nothing behind; `vm
//! debug` prints what `vm start` runs.
//!
//! Needs the VMMs (PATH or COCOON_CH_BINARY / COCOON_FC_BINARY /
//! COCOON_QEMU_BINARY), /dev/kvm and Debian's docker-registry; says SKIPPED
//! loudly otherwise.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cocoon_engine::model::VmmProcess;
use cocoon_testkit::Reaper;
use cocoon_testkit::console::ConsoleSession;
use cocoon_testkit::guest::{
    COUNT_PREFIX, HEARTBEAT_PREFIX, READY_MARKER, heartbeats, heartbeats_since, last_drop,
};
use cocoon_testkit::registry::Registry;
use cocoon_testkit::{CocoonEnv, EnvReaper, real_vmm, require_real_vmm, skip};
use serde_json::Value;

fn bin() -> String {
    cocoon_testkit::cocoon_bin()
}

/// The backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vmm {
    Ch,
    Fc,
    Qemu,
}

impl Vmm {
    /// The test names' suffix.
    fn suffix(self) -> &'static str {
        match self {
            Vmm::Ch => "cloud_hypervisor",
            Vmm::Fc => "firecracker",
            Vmm::Qemu => "qemu",
        }
    }

    /// The `vm run` flag that picks it.
    fn flag(self) -> Option<&'static str> {
        match self {
            Vmm::Ch => None,
            Vmm::Fc => Some("--fc"),
            Vmm::Qemu => Some("--qemu"),
        }
    }

    /// The binary, or a loud skip (a failure under COCOON_TEST_REQUIRE).
    fn require(self, test: &str) -> bool {
        match self {
            Vmm::Ch => require_real_vmm(test, "COCOON_CH_BINARY", "cloud-hypervisor"),
            Vmm::Fc => require_real_vmm(test, "COCOON_FC_BINARY", "firecracker"),
            Vmm::Qemu => require_real_vmm(test, "COCOON_QEMU_BINARY", "qemu-system-x86_64"),
        }
        .is_some()
    }
}

use cocoon_testkit::processes_of;

struct Run<'a> {
    env: &'a CocoonEnv,
    ch: PathBuf,
    fc: PathBuf,
}

impl Run<'_> {
    /// cocoon with the VMMs found. One that is not installed (a QEMU test on
    /// a host without CH or FC) stays unset: the engine refuses an empty
    /// path in every command, whether a VM needs that VMM or not.
    fn cmd(&self) -> std::process::Command {
        let mut cmd = self.env.std_cmd();
        for (var, path) in [
            ("COCOON_CH_BINARY", &self.ch),
            ("COCOON_FC_BINARY", &self.fc),
        ] {
            if !path.as_os_str().is_empty() {
                cmd.env(var, path);
            }
        }
        cmd
    }

    fn ok(&self, args: &[&str]) -> String {
        cocoon_testkit::run_ok(self.cmd(), args)
    }

    fn inspect(&self, vm: &str) -> Value {
        serde_json::from_str(&self.ok(&["vm", "inspect", vm])).unwrap()
    }

    fn wait_log(&self, vm: &str, what: &str, occurrences: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.ok(&["vm", "logs", vm]);
            if log.matches(what).count() >= occurrences {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "no {what:?} x{occurrences} in the log of {vm}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Run<'_> {
    /// `cocoon vm console VM` on a fresh PTY, as a user's terminal would run it.
    fn console(&self, vm: &str) -> ConsoleSession {
        ConsoleSession::open(self.cmd(), vm)
    }
}

fn boot_on(vmm: Vmm) {
    let test = &format!("vm_run_{}", vmm.suffix());
    if !vmm.require(test) {
        return;
    }
    let ch = real_vmm("COCOON_CH_BINARY", "cloud-hypervisor").unwrap_or_default();
    let fcb = real_vmm("COCOON_FC_BINARY", "firecracker").unwrap_or_default();
    if !Path::new("/dev/kvm").exists() {
        return skip(test, "/dev/kvm is missing");
    }
    let Some(registry) = Registry::start() else {
        return skip(test, "docker-registry is not installed");
    };
    let layer = cocoon_testkit::guest::boot_layer("test", b"not used by the test kernel")
        .file("sbin/init", b"#!/bin/sh\n")
        .build();
    registry.push("guest/test:1", &[layer], "amd64");
    let reference = registry.reference("guest/test:1");
    let env = CocoonEnv::new(bin());
    let _env_reaper = EnvReaper(env.root_dir());
    let run = Run {
        env: &env,
        ch: ch.clone(),
        fc: fcb.clone(),
    };
    run.ok(&["image", "pull", &reference]);

    let mut args = vec![
        "vm", "run", "--nics", "0", "--memory", "512M", "--cpu", "1", "--name", "g",
    ];
    args.extend(vmm.flag());
    args.push(&reference);
    run.ok(&args);
    let vm = run.inspect("g");
    let procs = processes_of(&vm);
    let _reaper = Reaper(procs.clone());
    assert_eq!(vm["state"], "running");
    assert_eq!(procs.len(), 2, "VMM and relay");
    let log = run.wait_log("g", READY_MARKER, 1);
    run.wait_log("g", &format!("{HEARTBEAT_PREFIX}2"), 1);
    assert!(!log.is_empty());

    // The console replays the boot (attached after it) and carries input.
    let mut console = run.console("g");
    console.expect("Connected to g");
    console.expect(READY_MARKER);
    console.send(b"?");
    console.expect(COUNT_PREFIX);
    // A second attach shares the session and does not hang.
    let mut second = run.console("g");
    second.expect(READY_MARKER);
    second.detach("g");
    console.detach("g");

    run.ok(&["vm", "stop", "g"]);
    let vm = run.inspect("g");
    assert_eq!(vm["state"], "stopped");
    assert!(!procs.iter().any(cocoon_engine::supervise::is_running));
    if vmm == Vmm::Fc {
        refused_config_file(&run, &vm);
    }

    run.ok(&["vm", "start", "g"]);
    let procs2 = processes_of(&run.inspect("g"));
    let _reaper2 = Reaper(procs2.clone());
    run.wait_log("g", READY_MARKER, 2);

    let run_dir = PathBuf::from(vm["run_dir"].as_str().unwrap());
    let log_dir = PathBuf::from(vm["log_dir"].as_str().unwrap());
    run.ok(&["vm", "rm", "--force", "g"]);
    assert!(!procs2.iter().any(cocoon_engine::supervise::is_running));
    assert!(cocoon_engine::supervise::find_by_socket(&run_dir.join("api.sock")).is_empty());
    assert!(!run_dir.exists() && !log_dir.exists());
}

/// Firecracker builds a fresh VM from its config file as it starts: one it
/// refuses (here the VM's disk is gone) fails the start with Firecracker's
/// own reason, marks the VM error and leaves no process and no socket (FC
/// leaves its socket behind when it exits); with the disk back it starts.
/// FC binds its socket before the build, so the start reports either that
/// the VM did not boot or that FC exited before its socket was ready, each
/// with FC's output.
fn refused_config_file(run: &Run<'_>, vm: &Value) {
    let cow = cow_of(vm);
    let aside = cow.with_extension("aside");
    std::fs::rename(&cow, &aside).unwrap();
    let out = run.cmd().args(["vm", "start", "g"]).output().unwrap();
    std::fs::rename(&aside, &cow).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("VM g (") && err.contains("No such file or directory"),
        "{err}"
    );
    assert!(err.contains(&cow.display().to_string()), "{err}");
    let failed = run.inspect("g");
    assert_eq!(failed["state"], "error");
    let run_dir = PathBuf::from(failed["run_dir"].as_str().unwrap());
    assert!(cocoon_engine::supervise::find_by_socket(&run_dir.join("api.sock")).is_empty());
    assert!(!run_dir.join("api.sock").exists());
}

#[test]
fn vm_run_cloud_hypervisor() {
    boot_on(Vmm::Ch);
}

#[test]
fn vm_run_firecracker() {
    boot_on(Vmm::Fc);
}

#[test]
fn vm_run_qemu() {
    boot_on(Vmm::Qemu);
}

fn cow_of(vm: &Value) -> PathBuf {
    let disks = vm["storage_configs"].as_array().unwrap();
    PathBuf::from(
        disks.iter().find(|d| d["role"] == "cow").unwrap()["path"]
            .as_str()
            .unwrap(),
    )
}

fn mark(path: &Path, text: Option<&[u8; 8]>) -> [u8; 8] {
    use std::io::Seek;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    f.seek(std::io::SeekFrom::Start(64 << 20)).unwrap();
    if let Some(text) = text {
        f.write_all(text).unwrap();
        return *text;
    }
    let mut b = [0u8; 8];
    f.read_exact(&mut b).unwrap();
    b
}

/// A fresh installation for a real-VMM snapshot test, with the VMM
/// binaries; None, after a loud skip, without the cocoon binary, the
/// backend's VMM or /dev/kvm.
fn real_env(test: &str, vmm: Vmm) -> Option<(CocoonEnv, PathBuf, PathBuf)> {
    if !vmm.require(test) {
        return None;
    }
    if !Path::new("/dev/kvm").exists() {
        skip(test, "/dev/kvm is missing");
        return None;
    }
    let ch = real_vmm("COCOON_CH_BINARY", "cloud-hypervisor").unwrap_or_default();
    let fcb = real_vmm("COCOON_FC_BINARY", "firecracker").unwrap_or_default();
    Some((CocoonEnv::new(bin()), ch, fcb))
}

impl Run<'_> {
    /// Imports the test guest as `guest/test:1`.
    fn import_guest(&self) {
        let layer = cocoon_testkit::guest::boot_layer("test", b"unused").build();
        let tar = self.env.path().join("layer.tar");
        std::fs::write(&tar, layer).unwrap();
        self.ok(&["image", "import", "guest/test:1", tar.to_str().unwrap()]);
    }

    /// Imports the test guest and runs it as `src`: 1 vCPU, 512 MiB, no NICs.
    fn run_src(&self, vmm: Vmm) {
        self.import_guest();
        let mut args = vec![
            "vm", "run", "--nics", "0", "--memory", "512M", "--cpu", "1", "--name", "src",
        ];
        args.extend(vmm.flag());
        // QEMU cannot save a vhost-user-vsock device (vsock_real.rs).
        if vmm == Vmm::Qemu {
            args.push("--no-agent");
        }
        args.push("guest/test:1");
        self.ok(&args);
    }
}

/// Save, clone twice, restore, export → import → clone, and the seed
/// scenario, on a real VMM with the test guest's heartbeat as the witness.
fn snapshots_on(vmm: Vmm) {
    let test = &format!("snapshots_on_{}", vmm.suffix());
    let Some((env, ch, fcb)) = real_env(test, vmm) else {
        return;
    };
    let _env_reaper = EnvReaper(env.root_dir());
    let run = Run {
        env: &env,
        ch,
        fc: fcb,
    };
    run.run_src(vmm);
    let mut procs = processes_of(&run.inspect("src"));
    let _reaper = Reaper(vec![]);
    run.wait_log("src", &format!("{HEARTBEAT_PREFIX}3"), 1);
    let src = run.inspect("src");
    mark(&cow_of(&src), Some(b"BEFORE!!"));

    // The guest's own count just before the pause and just after the save
    // (asked over the console: `?` → `count=<n>`) bound the snapshot's.
    let mut console = run.console("src");
    console.expect("Connected to src");
    let lo = console.count();
    // The seed scenario: paused behind the engine's back, then saved.
    let socket = PathBuf::from(src["run_dir"].as_str().unwrap()).join("api.sock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    match vmm {
        Vmm::Fc => rt.block_on(vmm_api::fc::Firecracker::new(&socket).pause()),
        Vmm::Ch => rt.block_on(vmm_api::ch::CloudHypervisor::new(&socket).pause()),
        Vmm::Qemu => {
            rt.block_on(async { vmm_api::qmp::Qmp::connect(&socket).await?.pause().await })
        }
    }
    .unwrap();
    let saved: Value =
        serde_json::from_str(&run.ok(&["snapshot", "save", "--name", "s", "-o", "json", "src"]))
            .unwrap();
    eprintln!(
        "{test}: pause window {:.1} ms, save {:.1} ms",
        saved["pause_ms"].as_f64().unwrap(),
        saved["total_ms"].as_f64().unwrap()
    );
    // The source runs on after the save (it was resumed although it had been paused).
    let hi = console.count();
    console.detach("src");
    assert!(lo <= hi, "count {lo} before the save, {hi} after");
    eprintln!("{test}: the snapshot's count is in {lo}..={hi}");
    mark(&cow_of(&src), Some(b"AFTER!!!"));
    let later = hi + 2;
    run.wait_log("src", &format!("{HEARTBEAT_PREFIX}{later}\n"), 1);

    // Two clones continue from the snapshot's count, independently. On CH
    // the second restores its memory on demand (userfaultfd).
    let mut clones = Vec::new();
    for name in ["c1", "c2"] {
        if name == "c2" && vmm == Vmm::Ch {
            run.ok(&["vm", "clone", "--on-demand", "--name", name, "s"]);
        } else {
            run.ok(&["vm", "clone", "--name", name, "s"]);
        }
        let vm = run.inspect(name);
        procs.extend(processes_of(&vm));
        assert_eq!(
            mark(&cow_of(&vm), None),
            *b"BEFORE!!",
            "{name}: the snapshot's disk"
        );
        clones.push(name);
    }
    for name in &clones {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let beats = heartbeats(&run.ok(&["vm", "logs", name]));
            if beats.len() >= 2 {
                assert!(
                    beats[0] >= lo && beats[0] <= hi + 1,
                    "{name} resumed at {} (snapshot at {lo}..={hi}): {beats:?}",
                    beats[0]
                );
                break;
            }
            assert!(Instant::now() < deadline, "{name}: no heartbeats");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let _reaper = Reaper(procs.clone());

    // Restore: the counter and the disk go back to the snapshot's.
    let before_restore = run.ok(&["vm", "logs", "src"]).len();
    run.ok(&["vm", "restore", "src", "s"]);
    procs.extend(processes_of(&run.inspect("src")));
    let _reaper2 = Reaper(procs.clone());
    assert_eq!(mark(&cow_of(&run.inspect("src")), None), *b"BEFORE!!");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        // The restored guest's count drops back to the snapshot's: find the
        // last place the sequence goes down (the old VM printed up to the kill).
        let log = run.ok(&["vm", "logs", "src"]);
        // From the first whole line after what was there before the restore
        // (that offset itself when it is a line start: the log is append-only
        // across the restore, and usually ended with a whole line), preceded
        // by the last beat before it, so a drop right at the restore shows.
        let beats = heartbeats_since(&log, before_restore);
        if let Some(k) = last_drop(&beats) {
            assert!(
                beats[k] >= lo && beats[k] <= hi + 1,
                "restored guest counts from {}, snapshot at {lo}..={hi}: {beats:?}",
                beats[k]
            );
            // ...and goes on from there, one by one.
            if beats.len() >= k + 2 {
                assert!(
                    beats[k..].windows(2).all(|w| w[1] == w[0] + 1),
                    "the restored guest's count skips or repeats: {beats:?}"
                );
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the count never went back after the restore: {beats:?} in the log since the restore:\n{}",
            &log[before_restore.min(log.len())..]
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Export → import → clone.
    let archive = env.path().join("s.tar.zst");
    run.ok(&["snapshot", "export", "-o", archive.to_str().unwrap(), "s"]);
    run.ok(&[
        "snapshot",
        "import",
        "--name",
        "s-imported",
        archive.to_str().unwrap(),
    ]);
    run.ok(&["vm", "clone", "--name", "c3", "s-imported"]);
    procs.extend(processes_of(&run.inspect("c3")));
    let _reaper3 = Reaper(procs.clone());
    run.wait_log("c3", HEARTBEAT_PREFIX, 2);
    assert_eq!(mark(&cow_of(&run.inspect("c3")), None), *b"BEFORE!!");

    run.ok(&["vm", "rm", "--force", "src", "c1", "c2", "c3"]);
    assert!(!procs.iter().any(cocoon_engine::supervise::is_running));
}

#[test]
fn snapshots_on_cloud_hypervisor() {
    snapshots_on(Vmm::Ch);
}

#[test]
fn snapshots_on_firecracker() {
    snapshots_on(Vmm::Fc);
}

#[test]
fn snapshots_on_qemu() {
    snapshots_on(Vmm::Qemu);
}

/// The VMM's own view of the VM's state.
fn vmm_state(vmm: Vmm, socket: &Path) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if vmm == Vmm::Qemu {
        let info = rt
            .block_on(async { vmm_api::qmp::Qmp::connect(socket).await?.status().await })
            .unwrap();
        format!("{:?}", info.vm_state())
    } else if vmm == Vmm::Fc {
        let info = rt
            .block_on(vmm_api::fc::Firecracker::new(socket).describe_instance())
            .unwrap();
        format!("{:?}", info.state).trim_matches('"').to_string()
    } else {
        let info = rt
            .block_on(vmm_api::ch::CloudHypervisor::new(socket).info())
            .unwrap();
        format!("{:?}", info.state)
    }
}

/// `kill -9` of the CLI inside the pause window of `snapshot save` leaves the
/// VM paused; the next command (`vm ls`) finds it running again and drops
/// the half-made snapshot, and the next save succeeds.
fn killed_save_on(vmm: Vmm) {
    let test = &format!("killed_save_on_{}", vmm.suffix());
    let Some((env, ch, fcb)) = real_env(test, vmm) else {
        return;
    };
    let version = std::process::Command::new(bin())
        .arg("version")
        .output()
        .unwrap();
    if !String::from_utf8_lossy(&version.stdout).contains("failpoints") {
        return skip(
            test,
            "the cocoon binary under test (COCOON_TEST_BIN) was built without failpoints",
        );
    }
    let _env_reaper = EnvReaper(env.root_dir());
    let run = Run {
        env: &env,
        ch,
        fc: fcb,
    };
    run.run_src(vmm);
    let _reaper = Reaper(processes_of(&run.inspect("src")));
    run.wait_log("src", &format!("{HEARTBEAT_PREFIX}2"), 1);
    let src = run.inspect("src");
    let socket = PathBuf::from(src["run_dir"].as_str().unwrap()).join("api.sock");

    let out = run
        .cmd()
        .args(["snapshot", "save", "--name", "s", "src"])
        .env("COCOON_FAILPOINTS", "snapshot.save.paused=kill")
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{test}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(vmm_state(vmm, &socket), "Paused", "{test}: left paused");
    // Paused, the guest does not count. (The console log is read directly:
    // any cocoon command would run the reconciler and resume the VM.)
    let log = PathBuf::from(src["log_dir"].as_str().unwrap()).join("console.log");
    let beats = || heartbeats(&std::fs::read_to_string(&log).unwrap()).len();
    std::thread::sleep(Duration::from_millis(300));
    let frozen = beats();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(beats(), frozen, "{test}: the guest counted while paused");
    // `vm ls` runs the reconciler (it is the first command after the kill).
    let listed: Value = serde_json::from_str(&run.ok(&["vm", "ls", "-o", "json"])).unwrap();
    assert_eq!(listed[0]["state"], "running");
    assert_eq!(vmm_state(vmm, &socket), "Running", "{test}: resumed");
    run.wait_log("src", HEARTBEAT_PREFIX, frozen + 2);
    let snapshots: Value =
        serde_json::from_str(&run.ok(&["snapshot", "ls", "-o", "json"])).unwrap();
    assert_eq!(
        snapshots,
        serde_json::json!([]),
        "{test}: half-made snapshot left"
    );
    run.ok(&["snapshot", "save", "--name", "s", "src"]);
    assert_eq!(vmm_state(vmm, &socket), "Running");
    run.ok(&["vm", "rm", "--force", "src"]);
}

#[test]
fn killed_save_on_cloud_hypervisor() {
    killed_save_on(Vmm::Ch);
}

#[test]
fn killed_save_on_firecracker() {
    killed_save_on(Vmm::Fc);
}

#[test]
fn killed_save_on_qemu() {
    killed_save_on(Vmm::Qemu);
}

/// `vm debug --qemu` prints the exact command line `vm start` runs, as the
/// started VMM's `/proc/<pid>/cmdline` shows it. A debug plan gets a fresh
/// VM id, and everything per VM in QEMU's argv derives from the id alone
/// (`-name cocoon-<id>`, the API socket and the COW disk in the run
/// directory `run/vms/<id>`); the image's kernel, initrd and layers, the
/// name, sizes, accelerator and devices come from the same flags and
/// configuration. So the plan's id, read from its `-name`, is replaced by
/// the started VM's in every argument (26 random characters: they match
/// nothing else), and then the two argvs must be equal element by element,
/// argv[0] (the binary as spawned) included.
#[test]
fn vm_debug_is_what_start_runs_on_qemu() {
    let test = "vm_debug_is_what_start_runs_on_qemu";
    let Some((env, ch, fcb)) = real_env(test, Vmm::Qemu) else {
        return;
    };
    let qemu = real_vmm("COCOON_QEMU_BINARY", "qemu-system-x86_64").unwrap();
    let _env_reaper = EnvReaper(env.root_dir());
    let run = Run {
        env: &env,
        ch,
        fc: fcb,
    };
    // Both commands get the same QEMU binary, by its full path.
    let ok = |args: &[&str]| {
        let mut cmd = run.cmd();
        cmd.env("COCOON_QEMU_BINARY", &qemu);
        cocoon_testkit::run_ok(cmd, args)
    };
    run.import_guest();
    let flags = [
        "--qemu", "--nics", "0", "--memory", "512M", "--cpu", "1", "--name", "src",
    ];
    let script = ok(&[&["vm", "debug"][..], &flags, &["guest/test:1"]].concat());
    ok(&[&["vm", "create"][..], &flags, &["guest/test:1"]].concat());
    ok(&["vm", "start", "src"]);
    let vm = run.inspect("src");
    let _reaper = Reaper(processes_of(&vm));
    let vmm: VmmProcess = serde_json::from_value(vm["vmm"].clone()).unwrap();
    let raw = std::fs::read(format!("/proc/{}/cmdline", vmm.identity.pid)).unwrap();
    let mut started: Vec<String> = String::from_utf8(raw)
        .unwrap()
        .split('\0')
        .map(str::to_string)
        .collect();
    assert_eq!(started.pop().as_deref(), Some(""), "NUL-terminated");
    // It is the VM's VMM, and a working command line: the guest came up.
    assert!(cocoon_engine::supervise::is_running(&vmm));
    run.wait_log("src", READY_MARKER, 1);

    let printed = cocoon_testkit::debug_launch_argv(&script);
    let id = vm["id"].as_str().unwrap();
    let planned = printed
        .iter()
        .position(|a| a == "-name")
        .and_then(|i| printed.get(i + 1))
        .and_then(|v| v.strip_prefix("cocoon-"))
        .and_then(|v| v.strip_suffix(",debug-threads=on"))
        .unwrap_or_else(|| panic!("no -name cocoon-<id> in {printed:?}"))
        .to_string();
    assert_eq!((planned.len(), id.len()), (26, 26));
    assert_ne!(planned, id, "a debug plan has its own id");
    let printed: Vec<String> = printed.iter().map(|a| a.replace(&planned, id)).collect();
    assert_eq!(printed[0], qemu.display().to_string());
    for (i, (p, s)) in printed.iter().zip(&started).enumerate() {
        assert_eq!(
            p, s,
            "argument {i}\nprinted: {printed:?}\nstarted: {started:?}"
        );
    }
    assert_eq!(
        printed.len(),
        started.len(),
        "printed: {printed:?}\nstarted: {started:?}"
    );
    run.ok(&["vm", "rm", "--force", "src"]);
}
