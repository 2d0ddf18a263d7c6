//! The snapshot lifecycle with the real VMMs (Cloud Hypervisor, Firecracker
//! and QEMU), the test guest's heartbeat as the witness: `vm restore` of a
//! stopped VM (upstream #87), `vm hibernate` → `vm start` (the count goes on
//! from where it was, nothing repeated or skipped), `vm restore` of a
//! hibernated VM, `snapshot export --to-dir` → `vm clone --from-dir`, and
//! the refusals a user can run into, each with its exact message and
//! nothing lost.
//!
//! Needs the VMMs (PATH or COCOON_CH_BINARY / COCOON_FC_BINARY /
//! COCOON_QEMU_BINARY) and /dev/kvm; says SKIPPED loudly otherwise.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cocoon_testkit::guest::{HEARTBEAT_PREFIX, heartbeats, heartbeats_since, last_drop};
use cocoon_testkit::{CocoonEnv, EnvReaper, processes_of, real_vmm, require_real_vmm, skip};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vmm {
    Ch,
    Fc,
    Qemu,
}

impl Vmm {
    fn suffix(self) -> &'static str {
        match self {
            Vmm::Ch => "cloud_hypervisor",
            Vmm::Fc => "firecracker",
            Vmm::Qemu => "qemu",
        }
    }

    fn require(self, test: &str) -> bool {
        match self {
            Vmm::Ch => require_real_vmm(test, "COCOON_CH_BINARY", "cloud-hypervisor"),
            Vmm::Fc => require_real_vmm(test, "COCOON_FC_BINARY", "firecracker"),
            Vmm::Qemu => require_real_vmm(test, "COCOON_QEMU_BINARY", "qemu-system-x86_64"),
        }
        .is_some()
    }

    /// `vm run` flags: the backend, and no vsock on QEMU (it cannot save a
    /// vhost-user-vsock device).
    fn flags(self) -> &'static [&'static str] {
        match self {
            Vmm::Ch => &[],
            Vmm::Fc => &["--fc"],
            Vmm::Qemu => &["--qemu", "--no-agent"],
        }
    }
}

struct Lab {
    env: CocoonEnv,
    ch: PathBuf,
    fc: PathBuf,
}

impl Lab {
    fn new(test: &str, vmm: Vmm) -> Option<Lab> {
        if !vmm.require(test) {
            return None;
        }
        if !Path::new("/dev/kvm").exists() {
            skip(test, "/dev/kvm is missing");
            return None;
        }
        Some(Lab {
            env: CocoonEnv::new(cocoon_testkit::cocoon_bin()),
            ch: real_vmm("COCOON_CH_BINARY", "cloud-hypervisor").unwrap_or_default(),
            fc: real_vmm("COCOON_FC_BINARY", "firecracker").unwrap_or_default(),
        })
    }

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

    /// The command's stderr; it must fail with exit code 1.
    fn refused(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "cocoon {args:?} should have been refused; it printed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn inspect(&self, vm: &str) -> Value {
        serde_json::from_str(&self.ok(&["vm", "inspect", vm])).unwrap()
    }

    fn log(&self, vm: &str) -> String {
        self.ok(&["vm", "logs", vm])
    }

    /// Waits (20 s at most) for a heartbeat of at least `n`; returns the log.
    fn wait_beat(&self, vm: &str, n: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.log(vm);
            if heartbeats(&log).last().is_some_and(|b| *b >= n) {
                return log;
            }
            assert!(Instant::now() < deadline, "{vm}: no heartbeat {n}:\n{log}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn last_beat(&self, vm: &str) -> u64 {
        *heartbeats(&self.log(vm)).last().expect("a heartbeat")
    }

    /// The beats since `before` (the log's length before an operation),
    /// once `more` of them follow the operation.
    fn beats_since(&self, vm: &str, before: usize, more: usize) -> Vec<u64> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let beats = heartbeats_since(&self.log(vm), before);
            if beats.len() > more {
                return beats;
            }
            assert!(
                Instant::now() < deadline,
                "{vm}: fewer than {more} beats since the operation: {beats:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn snapshot_names(&self) -> Vec<String> {
        let list: Value =
            serde_json::from_str(&self.ok(&["snapshot", "ls", "-o", "json"])).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

fn cow_of(vm: &Value) -> PathBuf {
    let disks = vm["storage_configs"].as_array().unwrap();
    let cow = disks.iter().find(|d| d["role"] == "cow").unwrap();
    PathBuf::from(cow["path"].as_str().unwrap())
}

/// Writes `text` at 64 MiB into the disk (a place the guest never touches),
/// or reads what is there.
fn mark(path: &Path, text: Option<&[u8; 8]>) -> [u8; 8] {
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

fn no_vmm_runs(vm: &Value) -> bool {
    !processes_of(vm)
        .iter()
        .any(cocoon_engine::supervise::is_running)
        && cocoon_engine::supervise::find_by_socket(
            &PathBuf::from(vm["run_dir"].as_str().unwrap()).join("api.sock"),
        )
        .is_empty()
}

/// Restore of a stopped VM: running again from the snapshot's count and disk.
fn restore_stopped(lab: &Lab, test: &str) {
    let src = lab.inspect("src");
    mark(&cow_of(&src), Some(b"BEFORE!!"));
    let lo = lab.last_beat("src");
    lab.ok(&["snapshot", "save", "--name", "s", "src"]);
    let hi = lab.last_beat("src") + 1;
    mark(&cow_of(&src), Some(b"AFTER!!!"));
    lab.wait_beat("src", hi + 2);
    lab.ok(&["vm", "stop", "src"]);
    assert_eq!(lab.inspect("src")["state"], "stopped");
    let before = lab.log("src").len();
    lab.ok(&["vm", "restore", "src", "s"]);
    let vm = lab.inspect("src");
    assert_eq!(vm["state"], "running", "{test}: {vm:#}");
    assert_eq!(mark(&cow_of(&vm), None), *b"BEFORE!!", "{test}: the disk");
    let beats = lab.beats_since("src", before, 3);
    let k = last_drop(&beats).unwrap_or(0);
    let from = beats[k];
    assert!(
        (lo..=hi).contains(&from),
        "{test}: restored from {from}, the snapshot's count was {lo}..={hi}: {beats:?}"
    );
    assert!(
        beats[k..].windows(2).all(|w| w[1] == w[0] + 1),
        "{test}: the count after the restore skips or repeats: {beats:?}"
    );
    eprintln!("{test}: stopped VM restored from {from} (snapshot at {lo}..={hi})");
}

/// A snapshot whose sealer died before writing (`snapshot save` returned
/// before the checksums): `vm restore` seals it first, then restores the
/// running VM from it, the count going on from the snapshot's.
fn restore_unsealed(lab: &Lab, test: &str) {
    let lo = lab.last_beat("src");
    let mut save = lab.cmd();
    save.env("COCOON_FAILPOINTS", "snapshot.seal.summed=kill");
    let out = cocoon_testkit::run_ok(
        save,
        &["snapshot", "save", "--name", "u", "-o", "json", "src"],
    );
    let hi = lab.last_beat("src") + 1;
    let dir = PathBuf::from(
        serde_json::from_str::<Value>(&out).unwrap()["data_dir"]
            .as_str()
            .unwrap(),
    );
    let read = || -> Value {
        serde_json::from_slice(&std::fs::read(dir.join("cocoon.json")).unwrap()).unwrap()
    };
    assert!(
        !cocoon_testkit::is_sealed(&read()),
        "{test}: sealed by a dead sealer"
    );
    lab.wait_beat("src", hi + 2);
    let before = lab.log("src").len();
    lab.ok(&["vm", "restore", "src", "u"]);
    let sealed = read();
    for (name, entry) in sealed["files"].as_object().unwrap() {
        let sum = cocoon_engine::snapshot::manifest::sum_file(&dir.join(name)).unwrap();
        assert_eq!(entry["sha256"], sum.sha256.as_str(), "{test}: {name}");
    }
    let beats = lab.beats_since("src", before, 3);
    let from = beats[last_drop(&beats).unwrap_or(0)];
    assert!(
        (lo..=hi).contains(&from),
        "{test}: restored from {from}, the snapshot's count was {lo}..={hi}: {beats:?}"
    );
    lab.ok(&["snapshot", "rm", "u"]);
}

/// Hibernate → start: no VMM while hibernated, the snapshot held, and the
/// count goes on from the last beat before the hibernation.
fn hibernate_and_wake(lab: &Lab, test: &str) {
    let beat = lab.last_beat("src");
    lab.wait_beat("src", beat + 2);
    let running = lab.inspect("src");
    let out = lab.ok(&["vm", "hibernate", "--name", "h", "-o", "json", "src"]);
    let done: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(done["vm"]["state"], "hibernated", "{test}: {done:#}");
    assert_eq!(done["snapshot"]["name"], "h");
    let vm = lab.inspect("src");
    assert_eq!(vm["state"], "hibernated");
    assert_eq!(vm["hibernation_snapshot"], done["snapshot"]["id"]);
    assert!(
        no_vmm_runs(&running) && no_vmm_runs(&vm),
        "{test}: a VMM runs"
    );
    let listed: Value = serde_json::from_str(&lab.ok(&["vm", "ls", "-o", "json"])).unwrap();
    assert_eq!(listed[0]["state"], "hibernated");
    let table = lab.ok(&["vm", "ls"]);
    assert!(table.contains("hibernated"), "{test}: vm ls:\n{table}");
    let log = lab.log("src");
    let last = *heartbeats(&log).last().unwrap();
    // The snapshot is held; a second hibernate is refused; nothing lost.
    let err = lab.refused(&["snapshot", "rm", "h"]);
    let id = vm["id"].as_str().unwrap();
    let snap = done["snapshot"]["id"].as_str().unwrap();
    assert!(
        err.contains(&format!(
            "snapshot {snap} holds the guest of hibernated VM src ({id}); wake the VM first (`cocoon vm start src`), or remove it (`cocoon vm rm src`), then remove the snapshot"
        )),
        "{test}: {err}"
    );
    let err = lab.refused(&["vm", "hibernate", "src"]);
    assert!(
        err.contains(&format!(
            "VM src ({id}) is not running; start it with `cocoon vm start src`"
        )),
        "{test}: {err}"
    );
    assert!(lab.snapshot_names().contains(&"h".to_string()));
    assert!(PathBuf::from(done["snapshot"]["data_dir"].as_str().unwrap()).is_dir());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(lab.log("src"), log, "{test}: the hibernated guest ran");

    lab.ok(&["vm", "start", "src"]);
    let vm = lab.inspect("src");
    assert_eq!(vm["state"], "running", "{test}: {vm:#}");
    assert!(vm.get("hibernation_snapshot").is_none(), "{vm:#}");
    let beats = lab.beats_since("src", log.len(), 3);
    assert_eq!(beats[0], last, "{test}: {beats:?}");
    assert!(
        beats.windows(2).all(|w| w[1] == w[0] + 1),
        "{test}: the woken guest's count skips or repeats after {last}: {beats:?}"
    );
    eprintln!("{test}: hibernated at {last}, woke counting {beats:?}");
}

/// A hibernated VM restored from another snapshot; its hibernation snapshot
/// is then an ordinary one, removable.
fn restore_hibernated(lab: &Lab, test: &str) {
    let out = lab.ok(&["vm", "hibernate", "-o", "json", "src"]);
    let done: Value = serde_json::from_str(&out).unwrap();
    let before = lab.log("src").len();
    lab.ok(&["vm", "restore", "src", "s"]);
    assert_eq!(lab.inspect("src")["state"], "running");
    let beats = lab.beats_since("src", before, 3);
    assert!(last_drop(&beats).is_some(), "{test}: not from s: {beats:?}");
    lab.ok(&["snapshot", "rm", done["snapshot"]["id"].as_str().unwrap()]);
}

/// `snapshot export --to-dir` → `vm clone --from-dir`: the clone counts
/// on from the snapshot's count; the imported copy is dropped.
fn clone_from_dir(lab: &Lab, test: &str) {
    let dir = lab.env.path().join("exported");
    lab.ok(&["snapshot", "export", "--to-dir", dir.to_str().unwrap(), "s"]);
    assert!(dir.join("cocoon.json").is_file());
    let snapshots = lab.snapshot_names();
    lab.ok(&[
        "vm",
        "clone",
        "--name",
        "c",
        "--from-dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(lab.inspect("c")["state"], "running");
    let beats = lab.beats_since("c", 0, 3);
    assert!(
        beats.windows(2).all(|w| w[1] == w[0] + 1) && beats[0] >= 3,
        "{test}: the clone from the directory counts {beats:?}"
    );
    assert_eq!(
        lab.snapshot_names(),
        snapshots,
        "{test}: the import is kept"
    );
    eprintln!("{test}: cloned from the directory, counting {beats:?}");
    lab.ok(&["vm", "rm", "--force", "c"]);
}

fn lifecycle_on(vmm: Vmm) {
    let test = &format!("snapshot_lifecycle_on_{}", vmm.suffix());
    let Some(lab) = Lab::new(test, vmm) else {
        return;
    };
    let _reaper = EnvReaper(lab.env.root_dir());
    let layer = cocoon_testkit::guest::boot_layer("test", b"unused").build();
    let tar = lab.env.path().join("layer.tar");
    std::fs::write(&tar, layer).unwrap();
    lab.ok(&["image", "import", "guest/test:1", tar.to_str().unwrap()]);
    let mut args = vec![
        "vm", "run", "--nics", "0", "--memory", "512M", "--cpu", "1", "--name", "src",
    ];
    args.extend(vmm.flags());
    args.push("guest/test:1");
    lab.ok(&args);
    lab.wait_beat("src", 3);
    assert!(lab.log("src").contains(HEARTBEAT_PREFIX));

    restore_stopped(&lab, test);
    restore_unsealed(&lab, test);
    hibernate_and_wake(&lab, test);
    restore_hibernated(&lab, test);
    clone_from_dir(&lab, test);
    lab.ok(&["vm", "rm", "--force", "src"]);
}

#[test]
fn snapshot_lifecycle_on_cloud_hypervisor() {
    lifecycle_on(Vmm::Ch);
}

#[test]
fn snapshot_lifecycle_on_firecracker() {
    lifecycle_on(Vmm::Fc);
}

#[test]
fn snapshot_lifecycle_on_qemu() {
    lifecycle_on(Vmm::Qemu);
}
