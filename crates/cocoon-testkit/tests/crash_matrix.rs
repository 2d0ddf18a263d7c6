//! The crash-consistency matrix: every operation is killed (SIGKILL) or made
//! to fail at each of its step boundaries (the engine's failpoints), then the
//! next command must leave no orphan VMM, no paused VM, no half-created
//! record, no directory without a record, no pending snapshot, no intent,
//! and the same operation must succeed when run again. Fake VMMs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cocoon_testkit::CocoonEnv;
use cocoon_testkit::registry::layers::LayerBuilder;
use serde_json::Value;

const FAKE: &str = env!("CARGO_BIN_EXE_fake-vmm");

fn bin() -> String {
    FAKE.replace("fake-vmm", "cocoon")
}

struct Lab {
    env: CocoonEnv,
}

impl Drop for Lab {
    fn drop(&mut self) {
        cocoon_testkit::kill_all_under(&self.env.root_dir());
    }
}

impl Lab {
    fn new() -> Lab {
        let lab = Lab {
            env: CocoonEnv::new(bin()),
        };
        let layer = LayerBuilder::new()
            .file(
                "boot/vmlinuz-6.1",
                &std::fs::read(cocoon_testkit::guest::kernel_path()).unwrap(),
            )
            .file("boot/initrd.img-6.1", b"initrd")
            .build();
        std::fs::write(lab.env.path().join("layer.tar"), layer).unwrap();
        lab.ok(&[
            "image",
            "import",
            "test/guest:1",
            lab.env.path().join("layer.tar").to_str().unwrap(),
        ]);
        lab
    }

    fn cmd(&self) -> std::process::Command {
        let mut cmd = self.env.std_cmd();
        cmd.env("COCOON_CH_BINARY", FAKE)
            .env("COCOON_FC_BINARY", FAKE)
            .env("COCOON_TERMINATE_GRACE_PERIOD_SECONDS", "1");
        cmd
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "cocoon {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn vms(&self) -> Vec<Value> {
        serde_json::from_str::<Value>(&self.ok(&["vm", "ls", "-o", "json"]))
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }
}

use cocoon_testkit::processes_of;

fn vmm_state(vm: &Value) -> String {
    let socket = PathBuf::from(vm["run_dir"].as_str().unwrap()).join("api.sock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        match vmm_api::ch::CloudHypervisor::new(&socket).info().await {
            Ok(info) => format!("{:?}", info.state),
            Err(e) => format!("unreachable: {e}"),
        }
    })
}

fn names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Everything a converged installation satisfies.
fn assert_converged(lab: &Lab, case: &str) {
    // `vm ls` ran the reconciler.
    let vms = lab.vms();
    let mut store = cocoon_engine::store::Store::open(&lab.env.db_path()).unwrap();
    assert_eq!(store.intents().unwrap().len(), 0, "{case}: intents left");
    assert_eq!(
        store.pending_snapshots().unwrap().len(),
        0,
        "{case}: a pending snapshot left"
    );
    let ids: Vec<String> = vms
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    for vm in &vms {
        assert_ne!(vm["state"], "creating", "{case}: half-created record {vm}");
        let run_dir = PathBuf::from(vm["run_dir"].as_str().unwrap());
        let live = cocoon_engine::supervise::find_by_socket(&run_dir.join("api.sock"));
        if vm["state"] == "running" {
            assert!(!live.is_empty(), "{case}: running without a VMM");
            assert_eq!(
                vmm_state(vm),
                "Running",
                "{case}: VM left paused or not booted"
            );
        } else {
            assert!(live.is_empty(), "{case}: a {} VM has a VMM", vm["state"]);
            assert!(
                cocoon_engine::supervise::find_by_socket(&run_dir.join("console.sock")).is_empty(),
                "{case}: orphan console relay"
            );
        }
    }
    for dir in names(&lab.env.root_dir().join("run/vms")) {
        assert!(ids.contains(&dir), "{case}: run dir {dir} without a record");
    }
    for dir in names(&lab.env.log_dir().join("vms")) {
        assert!(ids.contains(&dir), "{case}: log dir {dir} without a record");
    }
    let snapshots: Vec<String> = store
        .list_snapshots(None)
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    for dir in names(&lab.env.root_dir().join("snapshots")) {
        assert!(
            snapshots.contains(&dir),
            "{case}: snapshot dir {dir} without a record"
        );
    }
}

fn kill_all(lab: &Lab) {
    for vm in lab.vms() {
        for p in processes_of(&vm) {
            cocoon_testkit::kill_if_running(&p);
        }
    }
}

struct Op {
    name: &'static str,
    /// Brings the lab to the state the operation starts from.
    setup: fn(&Lab),
    args: &'static [&'static str],
    failpoints: &'static [&'static str],
    /// After convergence: make the operation possible again (e.g. start a VM
    /// a failed restore left stopped), then it must succeed.
    again: fn(&Lab),
}

fn created(lab: &Lab) {
    lab.ok(&["vm", "create", "--nics", "0", "--name", "m", "test/guest:1"]);
}
fn running(lab: &Lab) {
    created(lab);
    lab.ok(&["vm", "start", "m"]);
}
fn snapshotted(lab: &Lab) {
    running(lab);
    lab.ok(&["snapshot", "save", "--name", "s", "m"]);
}
fn ensure_running(lab: &Lab) {
    if lab.vms().iter().any(|v| v["config"]["name"] == "m") {
        lab.ok(&["vm", "start", "m"]);
    }
}

fn matrix(op: &Op) {
    if !Path::new(&bin()).exists() {
        return cocoon_testkit::skip(
            op.name,
            "the cocoon binary is not built (build the workspace)",
        );
    }
    let version = std::process::Command::new(bin())
        .arg("version")
        .output()
        .unwrap();
    if !String::from_utf8_lossy(&version.stdout).contains("failpoints") {
        return cocoon_testkit::skip(
            op.name,
            "the cocoon binary was built without failpoints (build it with the tests: cargo nextest run --workspace)",
        );
    }
    let mut cases = 0;
    for failpoint in op.failpoints {
        for action in ["kill", "error"] {
            let case = format!("{} at {failpoint} ({action})", op.name);
            let lab = Lab::new();
            (op.setup)(&lab);
            let out = lab
                .cmd()
                .args(op.args)
                .env("COCOON_FAILPOINTS", format!("{failpoint}={action}"))
                .output()
                .unwrap();
            use std::os::unix::process::ExitStatusExt;
            match action {
                "kill" => assert_eq!(
                    out.status.signal(),
                    Some(9),
                    "{case}: did not reach the failpoint: {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
                _ => {
                    assert_eq!(out.status.code(), Some(1), "{case}");
                    assert!(
                        String::from_utf8_lossy(&out.stderr).contains("failpoint"),
                        "{case}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
            // A moment for a killed CLI's children to notice.
            std::thread::sleep(Duration::from_millis(50));
            assert_converged(&lab, &case);
            (op.again)(&lab);
            if op.name != "vm rm" || lab.vms().iter().any(|v| v["config"]["name"] == "m") {
                let out = lab.cmd().args(op.args).output().unwrap();
                assert!(
                    out.status.success(),
                    "{case}: the next run failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            assert_converged(&lab, &format!("{case}, run again"));
            kill_all(&lab);
            cases += 1;
        }
    }
    eprintln!("{}: {cases} crash cases converged", op.name);
}

#[test]
fn create() {
    matrix(&Op {
        name: "vm create",
        setup: |_| {},
        args: &["vm", "create", "--nics", "0", "--name", "m", "test/guest:1"],
        failpoints: &["vm.create.recorded", "vm.create.network", "vm.create.disks"],
        again: |_| {},
    });
}

#[test]
fn start() {
    matrix(&Op {
        name: "vm start",
        setup: created,
        args: &["vm", "start", "m"],
        failpoints: &["vm.launch.recorded", "vm.launch.booted"],
        again: |_| {},
    });
}

#[test]
fn stop() {
    matrix(&Op {
        name: "vm stop",
        setup: running,
        args: &["vm", "stop", "m"],
        failpoints: &["vm.stop.stopped"],
        again: ensure_running,
    });
}

#[test]
fn rm() {
    matrix(&Op {
        name: "vm rm",
        setup: running,
        args: &["vm", "rm", "--force", "m"],
        failpoints: &["vm.stop.stopped", "vm.rm.dirs"],
        again: |_| {},
    });
}

#[test]
fn snapshot_save() {
    matrix(&Op {
        name: "snapshot save",
        setup: running,
        args: &["snapshot", "save", "m"],
        failpoints: &["snapshot.save.paused", "snapshot.save.captured"],
        again: |_| {},
    });
}

#[test]
fn clone() {
    matrix(&Op {
        name: "vm clone",
        setup: snapshotted,
        args: &["vm", "clone", "--name", "c", "s"],
        failpoints: &["vm.clone.files", "vm.launch.recorded", "vm.launch.booted"],
        again: |_| {},
    });
}

#[test]
fn restore() {
    matrix(&Op {
        name: "vm restore",
        setup: snapshotted,
        args: &["vm", "restore", "m", "s"],
        failpoints: &[
            "vm.restore.killed",
            "vm.launch.recorded",
            "vm.launch.booted",
        ],
        again: ensure_running,
    });
}
