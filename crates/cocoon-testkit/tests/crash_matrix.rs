//! The crash-consistency matrix: every operation is killed (SIGKILL) or made
//! to fail at each of its step boundaries (the engine's failpoints), then the
//! next command must leave no orphan VMM, no paused VM, no half-created
//! record, no directory without a record, no pending snapshot, no intent,
//! and the same operation must succeed when run again. Fake VMMs, and the
//! real QEMU (`*_qemu`: the lab's default backend is QEMU, whose test guest
//! boots in well under a second).

#[path = "cloud_image/http.rs"]
#[allow(dead_code)]
mod http;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cocoon_testkit::CocoonEnv;
use cocoon_testkit::registry::layers::LayerBuilder;
use serde_json::Value;

const FAKE: &str = env!("CARGO_BIN_EXE_fake-vmm");

fn bin() -> String {
    cocoon_testkit::cocoon_bin()
}

struct Lab {
    env: CocoonEnv,
    /// The real QEMU instead of the fake VMMs.
    qemu: bool,
    /// The VMs' cgroup parent, made for this case (None: cgroups are not
    /// writable here, and VMs run ungrouped).
    cgroups: Option<cocoon_testkit::cgroup::TestParent>,
    /// cocoon runs inside this test network namespace, with a CNI network
    /// (`vm net` cases).
    net: Option<TestNet>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.net.is_some() {
            // The VMs' own namespaces are outside the test's.
            for vm in self.vms() {
                let id = vm["id"].as_str().unwrap_or_default().to_string();
                let _ = self.cmd().args(["vm", "rm", "--force", &id]).output();
            }
        }
        cocoon_testkit::kill_all_under(&self.env.root_dir());
    }
}

/// A network namespace with a CNI bridge network (Debian's plugins) in it.
struct TestNet {
    ns: String,
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", &self.ns])
            .output();
    }
}

impl TestNet {
    /// The namespace and the network `testnet` under `dir`; None when the
    /// CNI plugins are missing.
    fn new(dir: &Path) -> Option<TestNet> {
        if !Path::new("/usr/lib/cni/bridge").exists() {
            return None;
        }
        let mut b = [0u8; 4];
        getrandom::fill(&mut b).unwrap();
        let tag = u32::from_le_bytes(b);
        let ns = format!("cocoon-cm-{tag:08x}");
        let ok = std::process::Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip netns add {ns}");
        let conf = dir.join("cni");
        std::fs::create_dir_all(&conf).unwrap();
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "testnet",
            "plugins": [
                {"type": "bridge", "bridge": format!("cbm{:06x}", tag & 0xff_ffff), "isGateway": true, "ipMasq": false,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.77.0.0/24"}]], "dataDir": dir.join("ipam")}},
                {"type": "loopback"}
            ]
        });
        std::fs::write(conf.join("10-test.conflist"), conflist.to_string()).unwrap();
        Some(TestNet { ns })
    }
}

impl Lab {
    fn on(qemu: bool) -> Lab {
        let lab = Lab {
            env: CocoonEnv::new(bin()),
            qemu,
            cgroups: cocoon_testkit::cgroup::TestParent::new("crash matrix cgroups"),
            net: None,
        };
        let layer = cocoon_testkit::guest::boot_layer("6.1", b"initrd").build();
        std::fs::write(lab.env.path().join("layer.tar"), layer).unwrap();
        lab.ok(&[
            "image",
            "import",
            "test/guest:1",
            lab.env.path().join("layer.tar").to_str().unwrap(),
        ]);
        lab
    }

    /// [`Lab::on`], with cocoon in a test network namespace
    /// with a CNI network; None (skipped) without the CNI plugins.
    fn on_network(qemu: bool) -> Option<Lab> {
        let mut lab = Lab::on(qemu);
        lab.net = Some(TestNet::new(lab.env.path())?);
        Some(lab)
    }

    fn cmd(&self) -> std::process::Command {
        let mut cmd = self.vmm_cmd();
        // The host's PCI devices, for `vm device` (see `running_with_device`).
        cmd.env("COCOON_TEST_SYSFS_PCI", self.env.path().join("sysfs"));
        if let Some(parent) = &self.cgroups {
            let (key, value) = parent.env();
            cmd.env(key, value);
        }
        let Some(net) = &self.net else {
            return cmd;
        };
        let mut inside = std::process::Command::new("nsenter");
        inside
            .arg(format!("--net=/run/netns/{}", net.ns))
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => inside.env(k, v),
                None => inside.env_remove(k),
            };
        }
        inside.env("COCOON_CNI_CONF_DIR", self.env.path().join("cni"));
        inside
    }

    fn vmm_cmd(&self) -> std::process::Command {
        if !self.qemu {
            return self.env.fake_vmm_cmd(FAKE);
        }
        let mut cmd = self.env.std_cmd();
        cmd.env("COCOON_DEFAULT_HYPERVISOR", "qemu")
            .env("COCOON_TERMINATE_GRACE_PERIOD_SECONDS", "1");
        cmd
    }

    fn ok(&self, args: &[&str]) -> String {
        cocoon_testkit::run_ok(self.cmd(), args)
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
        let state = if vm["hypervisor"] == "qemu" {
            match vmm_api::qmp::Qmp::connect(&socket).await {
                Ok(mut qmp) => qmp.status().await.map(|s| s.vm_state()),
                Err(e) => Err(e),
            }
        } else {
            vmm_api::ch::CloudHypervisor::new(&socket)
                .info()
                .await
                .map(|info| info.state)
        };
        match state {
            Ok(state) => format!("{state:?}"),
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
            assert!(
                cocoon_engine::supervise::find_by_socket(&run_dir.join("vhost-vsock.sock"))
                    .is_empty(),
                "{case}: orphan vhost-device-vsock"
            );
            assert!(
                !run_dir.join("vsock.sock").exists(),
                "{case}: a {} VM left its vsock socket",
                vm["state"]
            );
        }
    }
    for dir in names(&lab.env.root_dir().join("run/vms")) {
        assert!(ids.contains(&dir), "{case}: run dir {dir} without a record");
    }
    // Only a running VM has a cgroup.
    if let Some(parent) = &lab.cgroups {
        for id in parent.vm_groups() {
            let vm = vms.iter().find(|v| v["id"] == id.as_str());
            assert!(
                vm.is_some_and(|v| v["state"] == "running"),
                "{case}: cgroup of VM {id} left ({vm:?})"
            );
        }
    }
    for dir in names(&lab.env.log_dir().join("vms")) {
        assert!(ids.contains(&dir), "{case}: log dir {dir} without a record");
    }
    // Images: every recorded one complete; no work files but resumable
    // partial downloads.
    let dirs = cocoon_engine::image::store::ImageDirs::new(&lab.env.root_dir());
    for image in store.list_images().unwrap() {
        let blobs: Vec<PathBuf> = if image.layers.is_empty() {
            vec![cocoon_engine::image::cloud::blob_path(&dirs, &image.id)]
        } else {
            image.layers.iter().map(|l| dirs.blob(l)).collect()
        };
        for blob in blobs {
            assert!(
                blob.is_file(),
                "{case}: image {} lacks {blob:?}",
                image.name
            );
        }
    }
    for name in names(&dirs.root.join("tmp")) {
        assert!(
            name.starts_with("pull-") && (name.ends_with(".partial") || name.ends_with(".json")),
            "{case}: work file images/tmp/{name} left"
        );
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

fn last_event(lab: &Lab) -> i64 {
    cocoon_engine::store::Store::open(&lab.env.db_path())
        .unwrap()
        .last_event_seq()
        .unwrap()
}

fn kill_all(lab: &Lab) {
    for vm in lab.vms() {
        for p in processes_of(&vm) {
            cocoon_testkit::kill_if_running(&p);
        }
    }
}

struct Op<'a> {
    name: &'static str,
    /// Brings the lab to the state the operation starts from.
    setup: &'a dyn Fn(&Lab),
    args: &'a dyn Fn(&Lab) -> Vec<String>,
    failpoints: &'static [&'static str],
    /// After convergence: make the operation possible again (e.g. start a VM
    /// a failed restore left stopped), then it must succeed.
    again: &'a dyn Fn(&Lab),
}

/// Fixed arguments.
fn args(list: &'static [&'static str]) -> impl Fn(&Lab) -> Vec<String> {
    move |_| list.iter().map(|a| a.to_string()).collect()
}

fn created(lab: &Lab) {
    lab.ok(&["vm", "create", "--nics", "0", "--name", "m", "test/guest:1"]);
}
/// A VM QEMU can snapshot: no vsock (QEMU cannot migrate vhost-user-vsock).
fn created_saveable(lab: &Lab) {
    let mut args = vec!["vm", "create", "--nics", "0", "--name", "m"];
    if lab.qemu {
        args.push("--no-agent");
    }
    args.push("test/guest:1");
    lab.ok(&args);
}
fn running(lab: &Lab) {
    created(lab);
    lab.ok(&["vm", "start", "m"]);
}
fn running_saveable(lab: &Lab) {
    created_saveable(lab);
    lab.ok(&["vm", "start", "m"]);
}
fn snapshotted(lab: &Lab) {
    running_saveable(lab);
    lab.ok(&["snapshot", "save", "--name", "s", "m"]);
}
fn ensure_running(lab: &Lab) {
    if lab.vms().iter().any(|v| v["config"]["name"] == "m") {
        lab.ok(&["vm", "start", "m"]);
    }
}
fn nothing(_: &Lab) {}

fn matrix(op: &Op<'_>) {
    matrix_on(op, false);
}

/// The matrix on the fake VMMs, or on the real QEMU.
fn matrix_on(op: &Op<'_>, qemu: bool) {
    matrix_in(op, qemu, false);
}

/// The matrix on the fake VMMs, or on the real QEMU; `network`: cocoon in
/// a test network namespace with a CNI network (fake VMMs).
/// Skips `test` (true) when the cocoon under test has no failpoints.
fn skipped_without_failpoints(test: &str) -> bool {
    let version = std::process::Command::new(bin())
        .arg("version")
        .output()
        .unwrap();
    let with = String::from_utf8_lossy(&version.stdout).contains("failpoints");
    if !with {
        cocoon_testkit::skip(
            test,
            "the cocoon binary under test (COCOON_TEST_BIN) was built without failpoints",
        );
    }
    !with
}

fn matrix_in(op: &Op<'_>, qemu: bool, network: bool) {
    let name = format!("{}{}", op.name, if qemu { " on QEMU" } else { "" });
    if qemu
        && cocoon_testkit::require_real_vmm(&name, "COCOON_QEMU_BINARY", "qemu-system-x86_64")
            .is_none()
    {
        return;
    }
    if skipped_without_failpoints(op.name) {
        return;
    }
    let mut cases = 0;
    for failpoint in op.failpoints {
        for action in ["kill", "error"] {
            let case = format!("{name} at {failpoint} ({action})");
            let lab = if network {
                let Some(lab) = Lab::on_network(qemu) else {
                    return cocoon_testkit::skip(
                        op.name,
                        "containernetworking-plugins is not installed",
                    );
                };
                lab
            } else {
                Lab::on(qemu)
            };
            (op.setup)(&lab);
            let out = lab
                .cmd()
                .args((op.args)(&lab))
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
            let before = last_event(&lab);
            assert_converged(&lab, &case);
            // gc writes no intent (it removes only what nothing references,
            // so a kill leaves less garbage, not a half-done state).
            // Nor do push and pull: a push changes nothing here, and a
            // pull keeps the blocks it fetched for its next run (gc removes
            // them if there is none); its snapshot is recorded under the
            // import's intent, covered by `snapshot import`.
            // Nor does export: its seal replaces the manifest by one rename.
            if action == "kill"
                && !["gc", "snapshot push", "snapshot pull", "snapshot export"].contains(&op.name)
            {
                // What the reconciler did is in the event log.
                let mut store = cocoon_engine::store::Store::open(&lab.env.db_path()).unwrap();
                let recovered: Vec<_> = store
                    .events_since(before, 1000)
                    .unwrap()
                    .into_iter()
                    .filter(|e| e.action == "recovered")
                    .collect();
                assert!(!recovered.is_empty(), "{case}: no `recovered` event");
                let doc = recovered[0].doc.as_ref().unwrap();
                assert!(
                    doc["op"].is_string() && doc["action"].is_string(),
                    "{case}: {doc}"
                );
            }
            (op.again)(&lab);
            if op.name != "vm rm" || lab.vms().iter().any(|v| v["config"]["name"] == "m") {
                let out = lab.cmd().args((op.args)(&lab)).output().unwrap();
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
    eprintln!("{name}: {cases} crash cases converged");
}

fn create_on(qemu: bool) {
    matrix_on(
        &Op {
            name: "vm create",
            setup: &nothing,
            args: &args(&["vm", "create", "--nics", "0", "--name", "m", "test/guest:1"]),
            failpoints: &[
                "vm.create.recorded",
                "vm.create.network",
                "disk.template.written",
                "vm.create.disks",
            ],
            again: &nothing,
        },
        qemu,
    );
}

#[test]
fn create() {
    create_on(false);
}

#[test]
fn create_qemu() {
    create_on(true);
}

fn start_on(qemu: bool) {
    matrix_on(
        &Op {
            name: "vm start",
            setup: &created,
            args: &args(&["vm", "start", "m"]),
            failpoints: &[
                "vm.cgroup.prepared",
                "vm.launch.recorded",
                "vm.launch.booted",
            ],
            again: &nothing,
        },
        qemu,
    );
}

#[test]
fn start() {
    start_on(false);
}

#[test]
fn start_qemu() {
    start_on(true);
}

fn stop_on(qemu: bool) {
    matrix_on(
        &Op {
            name: "vm stop",
            setup: &running,
            args: &args(&["vm", "stop", "m"]),
            failpoints: &["vm.stop.stopped"],
            again: &ensure_running,
        },
        qemu,
    );
}

#[test]
fn stop() {
    stop_on(false);
}

#[test]
fn stop_qemu() {
    stop_on(true);
}

fn rm_on(qemu: bool) {
    matrix_on(
        &Op {
            name: "vm rm",
            setup: &running,
            args: &args(&["vm", "rm", "--force", "m"]),
            failpoints: &["vm.stop.stopped", "vm.rm.dirs"],
            again: &nothing,
        },
        qemu,
    );
}

#[test]
fn rm() {
    rm_on(false);
}

#[test]
fn rm_qemu() {
    rm_on(true);
}

fn snapshot_save_on(qemu: bool) {
    matrix_on(
        &Op {
            name: "snapshot save",
            setup: &running_saveable,
            args: &args(&["snapshot", "save", "m"]),
            failpoints: &["snapshot.save.paused", "snapshot.save.captured"],
            again: &nothing,
        },
        qemu,
    );
}

#[test]
fn snapshot_save() {
    snapshot_save_on(false);
}

#[test]
fn snapshot_save_qemu() {
    snapshot_save_on(true);
}

fn clone_on(qemu: bool) {
    matrix_on(
        &Op {
            name: "vm clone",
            setup: &snapshotted,
            args: &args(&["vm", "clone", "--name", "c", "s"]),
            failpoints: &[
                "vm.clone.files",
                "vm.cgroup.prepared",
                "vm.launch.recorded",
                "vm.launch.booted",
            ],
            again: &nothing,
        },
        qemu,
    );
}

#[test]
fn clone() {
    clone_on(false);
}

#[test]
fn clone_qemu() {
    clone_on(true);
}

fn restore_on(qemu: bool) {
    matrix_on(
        &Op {
            name: "vm restore",
            setup: &snapshotted,
            args: &args(&["vm", "restore", "m", "s"]),
            failpoints: &[
                "vm.restore.killed",
                "vm.restore.swapped",
                "vm.cgroup.prepared",
                "vm.launch.recorded",
                "vm.launch.booted",
            ],
            again: &ensure_running,
        },
        qemu,
    );
}

#[test]
fn restore() {
    restore_on(false);
}

fn snapshotted_then_stopped(lab: &Lab) {
    snapshotted(lab);
    lab.ok(&["vm", "stop", "m"]);
}

/// A restore of a stopped VM (upstream #87): undone, the VM is stopped
/// again with its old disks, and the restore can run again as it is.
fn restore_stopped_on(qemu: bool) {
    matrix_on(
        &Op {
            name: "vm restore of a stopped VM",
            setup: &snapshotted_then_stopped,
            args: &args(&["vm", "restore", "m", "s"]),
            failpoints: &[
                "vm.restore.killed",
                "vm.restore.swapped",
                "vm.launch.recorded",
                "vm.launch.booted",
            ],
            again: &still("stopped"),
        },
        qemu,
    );
}

/// After convergence the VM `m` is in `state` (and the operation is run again as it is).
fn still(state: &'static str) -> impl Fn(&Lab) {
    move |lab| {
        let vm = lab
            .vms()
            .into_iter()
            .find(|v| v["config"]["name"] == "m")
            .expect("the VM m is kept");
        assert_eq!(vm["state"], state, "after convergence: {vm}");
    }
}

/// `vm hibernate`: undone (the guest runs on, no snapshot) before its
/// snapshot is complete, finished (hibernated) after; a hibernated VM is
/// woken so that it can be hibernated again.
fn hibernate_on(qemu: bool) {
    matrix_on(
        &Op {
            name: "vm hibernate",
            setup: &running_saveable,
            args: &args(&["vm", "hibernate", "m"]),
            failpoints: &[
                "snapshot.save.paused",
                "vm.hibernate.paused",
                "vm.hibernate.captured",
            ],
            again: &|lab| {
                let vm = lab.vms().into_iter().find(|v| v["config"]["name"] == "m");
                let state = vm.expect("the VM m is kept")["state"].clone();
                assert!(state == "running" || state == "hibernated", "{state}");
                if state == "hibernated" {
                    lab.ok(&["vm", "start", "m"]);
                }
            },
        },
        qemu,
    );
}

#[test]
fn hibernate() {
    hibernate_on(false);
}

#[test]
fn hibernate_qemu() {
    hibernate_on(true);
}

/// The size `vm inspect` records and the one the fake CH's `vm.info` has
/// agree: (vCPUs, bytes of RAM).
fn sizes_agree(lab: &Lab) -> (u64, u64) {
    let vm = lab.vms().into_iter().find(|v| v["config"]["name"] == "m");
    let vm = vm.expect("the VM m is kept");
    let socket = PathBuf::from(vm["run_dir"].as_str().unwrap()).join("api.sock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let info = rt
        .block_on(vmm_api::ch::CloudHypervisor::new(&socket).info())
        .unwrap();
    let memory = &info.config["memory"];
    let vmm = (
        info.config["cpus"]["boot_vcpus"].as_u64().unwrap(),
        memory["size"].as_u64().unwrap() + memory["hotplugged_size"].as_u64().unwrap_or(0),
    );
    let recorded = (
        vm["config"]["cpu"].as_u64().unwrap(),
        vm["config"]["memory"].as_u64().unwrap(),
    );
    assert_eq!(recorded, vmm, "the record and the VMM disagree: {vm}");
    recorded
}

/// `vm resize` of a running VM: converged, the record and the VMM have
/// one size, the old or the asked one, and the resize runs again.
#[test]
fn resize() {
    matrix(&Op {
        name: "vm resize",
        setup: &running,
        args: &args(&["vm", "resize", "--cpu", "1", "--memory", "1536M", "m"]),
        failpoints: &["vm.resize.begin", "vm.resize.applied"],
        again: &|lab| {
            let size = sizes_agree(lab);
            assert!(size == (1, 1536 << 20) || size == (2, 1 << 30), "{size:?}");
        },
    });
}

fn hibernated(lab: &Lab) {
    running_saveable(lab);
    lab.ok(&["vm", "hibernate", "--name", "h", "m"]);
}

/// `vm start` of a hibernated VM (a restore from its snapshot): undone,
/// the VM is hibernated again and can be woken as it is.
fn wake_on(qemu: bool) {
    matrix_on(
        &Op {
            name: "vm start of a hibernated VM",
            setup: &hibernated,
            args: &args(&["vm", "start", "m"]),
            failpoints: &[
                "vm.restore.killed",
                "vm.restore.swapped",
                "vm.launch.recorded",
                "vm.launch.booted",
            ],
            again: &still("hibernated"),
        },
        qemu,
    );
}

#[test]
fn wake() {
    wake_on(false);
}

#[test]
fn wake_qemu() {
    wake_on(true);
}

#[test]
fn restore_stopped() {
    restore_stopped_on(false);
}

#[test]
fn restore_stopped_qemu() {
    restore_stopped_on(true);
}

#[test]
fn restore_qemu() {
    restore_on(true);
}

#[test]
fn gc() {
    matrix(&Op {
        name: "gc",
        setup: &snapshotted,
        args: &args(&["gc"]),
        failpoints: &["gc.read"],
        again: &nothing,
    });
}

#[test]
fn gc_snapshot_eviction() {
    matrix(&Op {
        name: "gc --snapshot",
        setup: &snapshotted,
        args: &args(&["gc", "--snapshot"]),
        failpoints: &["snapshot.evict.marked", "snapshot.evict.removed"],
        again: &nothing,
    });
}

/// A layer with boot files that the lab's image does not have.
fn other_layer(lab: &Lab) {
    let layer = cocoon_testkit::guest::boot_layer("6.2", b"another initrd")
        .file("etc/other", b"other")
        .build();
    std::fs::write(lab.env.path().join("other.tar"), layer).unwrap();
}

fn in_lab(lab: &Lab, file: &str) -> String {
    lab.env.path().join(file).to_str().unwrap().to_string()
}

#[test]
fn image_import() {
    matrix(&Op {
        name: "image import",
        setup: &other_layer,
        args: &|lab| {
            let file = in_lab(lab, "other.tar");
            ["image", "import", "test/other:1", &file]
                .map(String::from)
                .to_vec()
        },
        failpoints: &[
            "image.import.unpacked",
            "image.import.layer",
            "image.import.recorded",
        ],
        again: &nothing,
    });
}

/// `docker save` of one layer with boot files: an image archive.
fn saved_archive(lab: &Lab) {
    use sha2::Digest as _;
    let layer = cocoon_testkit::guest::boot_layer("6.3", b"a saved initrd").build();
    let hex: String = sha2::Sha256::digest(&layer)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let diff_id = format!("sha256:{hex}");
    let config = serde_json::json!({"rootfs": {"type": "layers", "diff_ids": [diff_id]}});
    let manifest = serde_json::json!([{"Config": "config.json", "Layers": ["l/layer.tar"]}]);
    let archive = LayerBuilder::new()
        .file("manifest.json", manifest.to_string().as_bytes())
        .file("config.json", config.to_string().as_bytes())
        .file("l/layer.tar", &layer)
        .build();
    std::fs::write(lab.env.path().join("saved.tar"), archive).unwrap();
}

#[test]
fn image_import_archive() {
    matrix(&Op {
        name: "image import (docker save)",
        setup: &saved_archive,
        args: &|lab| {
            let file = in_lab(lab, "saved.tar");
            ["image", "import", "test/saved:1", &file]
                .map(String::from)
                .to_vec()
        },
        failpoints: &[
            "image.import.staged",
            "image.import.unpacked",
            "image.import.layer",
            "image.import.recorded",
        ],
        again: &nothing,
    });
}

#[test]
fn cloud_image_import() {
    matrix(&Op {
        name: "image import (qcow2)",
        setup: &|lab| {
            let status = std::process::Command::new("qemu-img")
                .args([
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    &in_lab(lab, "disk.qcow2"),
                    "16M",
                ])
                .status()
                .unwrap();
            assert!(status.success());
        },
        args: &|lab| {
            let file = in_lab(lab, "disk.qcow2");
            ["image", "import", "test/disk:1", &file]
                .map(String::from)
                .to_vec()
        },
        failpoints: &[
            "image.import.staged",
            "image.import.stored",
            "image.import.recorded",
        ],
        again: &nothing,
    });
}

/// `snapshot export` of a snapshot whose sealer died before writing: the
/// export seals it first; killed or failed there, the snapshot stays
/// unsealed and usable, and the next export seals it.
#[test]
fn snapshot_export_of_an_unsealed_snapshot() {
    matrix(&Op {
        name: "snapshot export",
        setup: &|lab| {
            running_saveable(lab);
            let mut cmd = lab.cmd();
            cmd.env("COCOON_FAILPOINTS", "snapshot.seal.summed=kill");
            cocoon_testkit::run_ok(cmd, &["snapshot", "save", "--name", "s", "m"]);
        },
        args: &|lab| {
            let file = in_lab(lab, "s.tar.zst");
            let _ = std::fs::remove_file(&file);
            ["snapshot", "export", "-o", &file, "s"]
                .map(String::from)
                .to_vec()
        },
        failpoints: &["snapshot.seal.summed"],
        again: &nothing,
    });
}

#[test]
fn snapshot_import() {
    matrix(&Op {
        name: "snapshot import",
        setup: &|lab| {
            snapshotted(lab);
            lab.ok(&["snapshot", "export", "-o", &in_lab(lab, "s.tar.zst"), "s"]);
        },
        args: &|lab| {
            let file = in_lab(lab, "s.tar.zst");
            ["snapshot", "import", "--name", "imported", &file]
                .map(String::from)
                .to_vec()
        },
        failpoints: &["snapshot.import.staged", "snapshot.import.renamed"],
        again: &nothing,
    });
}

#[test]
fn image_pull() {
    let Some(registry) = cocoon_testkit::registry::Registry::start() else {
        return cocoon_testkit::skip("image_pull", "docker-registry is not installed");
    };
    let layer = cocoon_testkit::guest::boot_layer("6.3", b"pulled initrd").build();
    registry.push(
        "vm/crash:1",
        &[layer, LayerBuilder::new().file("etc/top", b"top").build()],
        "amd64",
    );
    let reference = registry.reference("vm/crash:1");
    matrix(&Op {
        name: "image pull",
        setup: &nothing,
        args: &|_| ["image", "pull", &reference].map(String::from).to_vec(),
        failpoints: &["image.pull.layers", "image.pull.recorded"],
        again: &nothing,
    });
}

#[test]
fn snapshot_push_and_pull() {
    let Some(registry) = cocoon_testkit::registry::Registry::start() else {
        return cocoon_testkit::skip("snapshot_push_and_pull", "docker-registry is not installed");
    };
    let reference = registry.reference("snaps/crash:1");
    matrix(&Op {
        name: "snapshot push",
        setup: &snapshotted,
        args: &|_| {
            ["snapshot", "push", "s", &reference]
                .map(String::from)
                .to_vec()
        },
        failpoints: &["snapshot.push.blocks"],
        again: &nothing,
    });
    let pushed = |lab: &Lab| {
        snapshotted(lab);
        lab.ok(&["snapshot", "push", "s", &reference]);
    };
    matrix(&Op {
        name: "snapshot pull",
        setup: &pushed,
        args: &|_| {
            ["snapshot", "pull", "--name", "p", &reference]
                .map(String::from)
                .to_vec()
        },
        failpoints: &["snapshot.pull.fetched"],
        again: &nothing,
    });
}

#[test]
fn cloud_image_pull() {
    let disk = tempfile::tempdir().unwrap();
    let path = disk.path().join("disk.qcow2");
    let status = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", path.to_str().unwrap(), "16M"])
        .status()
        .unwrap();
    assert!(status.success());
    let server = http::Server::start();
    server.put(
        "/disk.qcow2",
        http::Resource::file(std::fs::read(&path).unwrap(), "\"v1\""),
    );
    let url = server.url("/disk.qcow2");
    matrix(&Op {
        name: "image pull (http)",
        setup: &nothing,
        args: &|_| ["image", "pull", &url].map(String::from).to_vec(),
        failpoints: &["image.pull.fetched", "image.pull.recorded"],
        again: &nothing,
    });
}

/// A raw disk file of the user's, outside the installation's directories.
fn user_disk(lab: &Lab) -> String {
    let path = lab.env.path().join("user.raw");
    if !path.exists() {
        std::fs::File::create(&path)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
    }
    path.to_str().unwrap().to_string()
}

fn attach_args(lab: &Lab) -> Vec<String> {
    let path = user_disk(lab);
    ["vm", "disk", "attach", "m", "--path", &path, "--name", "u"]
        .map(String::from)
        .to_vec()
}

/// The attached disks of `m` the record has, and those its VMM has.
fn attached_disks(lab: &Lab) -> (Vec<String>, Vec<String>) {
    let vm = lab
        .vms()
        .into_iter()
        .find(|v| v["config"]["name"] == "m")
        .expect("the VM m is kept");
    let recorded = vm["storage_configs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["external"] == true)
        .map(|d| format!("cocoon-disk-{}", d["serial"].as_str().unwrap()))
        .collect();
    let socket = PathBuf::from(vm["run_dir"].as_str().unwrap()).join("api.sock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let in_vmm = rt.block_on(async {
        if vm["hypervisor"] == "qemu" {
            let mut qmp = vmm_api::qmp::Qmp::connect(&socket).await.unwrap();
            let blocks = qmp.query_block().await.unwrap();
            blocks
                .into_iter()
                .filter_map(|b| Some(b.qdev?.split('/').nth(3)?.to_string()))
                .collect::<Vec<_>>()
        } else {
            let info = vmm_api::ch::CloudHypervisor::new(&socket)
                .info()
                .await
                .unwrap();
            info.config["disks"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|d| d["id"].as_str().map(str::to_string))
                .collect()
        }
    });
    let in_vmm = in_vmm
        .into_iter()
        .filter(|id| id.starts_with("cocoon-disk-"))
        .collect();
    (recorded, in_vmm)
}

/// After convergence the record and the VMM agree on the attached disks.
fn disks_agree(lab: &Lab) -> Vec<String> {
    let (recorded, in_vmm) = attached_disks(lab);
    assert_eq!(recorded, in_vmm, "the record and the VMM disagree");
    recorded
}

/// `vm disk attach`: rolled back (the VMM loses the disk the record does
/// not have), then attached when run again.
fn disk_attach_on(qemu: bool) {
    matrix_on(
        &Op {
            name: "vm disk attach",
            setup: &running,
            args: &attach_args,
            failpoints: &["vm.disk.attach.plugged"],
            again: &|lab| assert_eq!(disks_agree(lab), Vec::<String>::new()),
        },
        qemu,
    );
}

#[test]
fn disk_attach() {
    disk_attach_on(false);
}

#[test]
fn disk_attach_qemu() {
    disk_attach_on(true);
}

/// `vm disk detach`: finished (the record forgets the disk the VMM no
/// longer has); attached again to be detached again.
fn disk_detach_on(qemu: bool) {
    matrix_on(
        &Op {
            name: "vm disk detach",
            setup: &|lab| {
                running(lab);
                lab.ok(&attach_args(lab)
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>());
            },
            args: &args(&["vm", "disk", "detach", "m", "--name", "u"]),
            failpoints: &["vm.disk.detach.unplugged"],
            again: &|lab| {
                assert_eq!(disks_agree(lab), Vec::<String>::new());
                lab.ok(&attach_args(lab)
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>());
            },
        },
        qemu,
    );
}

#[test]
fn disk_detach() {
    disk_detach_on(false);
}

#[test]
fn disk_detach_qemu() {
    disk_detach_on(true);
}

/// `m` running with one NIC on the CNI network.
fn running_with_a_nic(lab: &Lab) {
    lab.ok(&["vm", "run", "--nics", "1", "--name", "m", "test/guest:1"]);
}

/// The record's NICs of `m` and its VMM's agree, and it has a lease and
/// the links of each in its namespace and no more: returns the count.
fn nics_agree(lab: &Lab) -> usize {
    let vm = lab
        .vms()
        .into_iter()
        .find(|v| v["config"]["name"] == "m")
        .expect("the VM m is kept");
    let id = vm["id"].as_str().unwrap().to_string();
    let pair = |n: &Value| {
        (
            n["tap"].as_str().unwrap().to_string(),
            n["mac"].as_str().unwrap().to_string(),
        )
    };
    let recorded: Vec<(String, String)> = vm["network_configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(pair)
        .collect();
    let socket = PathBuf::from(vm["run_dir"].as_str().unwrap()).join("api.sock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if vm["hypervisor"] == "qemu" {
        // The NICs `vm net` plugged (`cocoon-net-<mac>` devices).
        let list = rt.block_on(async {
            let mut qmp = vmm_api::qmp::Qmp::connect(&socket).await.unwrap();
            qmp.execute(&vmm_api::qmp::QomList {
                path: "/machine/peripheral".into(),
            })
            .await
            .unwrap()
        });
        let mut in_vmm: Vec<String> = list
            .into_iter()
            .filter_map(|p| p.name.strip_prefix("cocoon-net-").map(str::to_string))
            .collect();
        in_vmm.sort();
        let mut plugged: Vec<String> = vm["network_configs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["slot"].is_u64())
            .map(|n| n["mac"].as_str().unwrap().replace(':', "").to_lowercase())
            .collect();
        plugged.sort();
        assert_eq!(plugged, in_vmm, "the record and QEMU disagree");
    } else {
        let info = rt
            .block_on(vmm_api::ch::CloudHypervisor::new(&socket).info())
            .unwrap();
        let in_vmm: Vec<(String, String)> = info.config["net"]
            .as_array()
            .unwrap()
            .iter()
            .map(pair)
            .collect();
        assert_eq!(recorded, in_vmm, "the record and the VMM disagree");
    }
    let n = recorded.len();
    let mut store = cocoon_engine::store::Store::open(&lab.env.db_path()).unwrap();
    let leases: Vec<String> = store
        .leases(&id)
        .unwrap()
        .into_iter()
        .map(|l| l.if_name)
        .collect();
    assert_eq!(
        leases,
        (0..n).map(|i| format!("eth{i}")).collect::<Vec<_>>(),
        "recorded leases"
    );
    let ipam = names(&lab.env.path().join("ipam/testnet"))
        .into_iter()
        .filter(|f| f.starts_with("10."))
        .count();
    assert_eq!(ipam, n, "IPAM leases");
    let out = std::process::Command::new("ip")
        .args(["-n", &format!("cocoon-{id}"), "-br", "link"])
        .output()
        .unwrap();
    let mut links: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|l| l.split('@').next().unwrap().to_string())
        .filter(|l| l != "lo")
        .collect();
    links.sort();
    let mut want: Vec<String> = (0..n)
        .flat_map(|i| [format!("eth{i}"), format!("tap{}-{i}", &id[..8])])
        .collect();
    want.sort();
    assert_eq!(links, want, "the VM's links");
    n
}

/// `vm net` growing 1 -> 3: rolled back to the NICs recorded (a NIC made
/// or plugged but not recorded is taken out and released), then grown.
fn vm_net_grow_on(qemu: bool) {
    matrix_in(
        &Op {
            name: "vm net (grow)",
            setup: &running_with_a_nic,
            args: &args(&["vm", "net", "m", "--nics", "3"]),
            failpoints: &["vm.net.add.plumbed", "vm.net.add.plugged"],
            again: &|lab| assert_eq!(nics_agree(lab), 1),
        },
        qemu,
        true,
    );
}

#[test]
fn vm_net_grow() {
    vm_net_grow_on(false);
}

#[test]
fn vm_net_grow_qemu() {
    vm_net_grow_on(true);
}

/// `vm net` shrinking 3 -> 1: a kill is finished by recovery (a NIC out
/// of the VMM is released and forgotten: 1 NIC); an error stops after the
/// NIC it was on, which is gone from everywhere (2 NICs). Then grown back
/// to be shrunk again.
fn vm_net_shrink_on(qemu: bool) {
    matrix_in(
        &Op {
            name: "vm net (shrink)",
            setup: &|lab| {
                running_with_a_nic(lab);
                lab.ok(&["vm", "net", "m", "--nics", "3"]);
            },
            args: &args(&["vm", "net", "m", "--nics", "1"]),
            failpoints: &["vm.net.remove.unplugged", "vm.net.remove.released"],
            again: &|lab| {
                let nics = nics_agree(lab);
                assert!(nics == 1 || nics == 2, "{nics} NICs");
                lab.ok(&["vm", "net", "m", "--nics", "3"]);
            },
        },
        qemu,
        true,
    );
}

#[test]
fn vm_net_shrink() {
    vm_net_shrink_on(false);
}

#[test]
fn vm_net_shrink_qemu() {
    vm_net_shrink_on(true);
}

/// `vm net --nics 0` (vk-cocoon's hibernate) from 2 NICs: as the shrink;
/// the VM keeps its namespace and grows back from it.
#[test]
fn vm_net_to_none() {
    matrix_in(
        &Op {
            name: "vm net (to none)",
            setup: &|lab| {
                running_with_a_nic(lab);
                lab.ok(&["vm", "net", "m", "--nics", "2"]);
            },
            args: &args(&["vm", "net", "m", "--nics", "0"]),
            failpoints: &["vm.net.remove.unplugged", "vm.net.remove.released"],
            again: &|lab| {
                let nics = nics_agree(lab);
                assert!(nics <= 1, "{nics} NICs");
                lab.ok(&["vm", "net", "m", "--nics", "2"]);
                assert_eq!(nics_agree(lab), 2);
            },
        },
        false,
        true,
    );
}

/// A running VM `m` with shared memory and a share's server: on the fake
/// CH a listening socket standing for virtiofsd's (the fake connects to
/// it; it lives as long as the test process), on QEMU a real virtiofsd.
fn running_shared(lab: &Lab) {
    lab.ok(&[
        "vm",
        "create",
        "--nics",
        "0",
        "--shared-memory",
        "--name",
        "m",
        "test/guest:1",
    ]);
    lab.ok(&["vm", "start", "m"]);
    serve_share(lab);
}

/// The virtiofsd processes of the QEMU cases, killed by [`stop_daemons`].
static DAEMONS: std::sync::Mutex<Vec<std::process::Child>> = std::sync::Mutex::new(Vec::new());

/// virtiofsd: COCOON_VIRTIOFSD_BINARY, or where .ci/run installs it.
fn virtiofsd() -> Option<PathBuf> {
    let installed =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/virtiofsd/bin/virtiofsd");
    if std::env::var_os("COCOON_VIRTIOFSD_BINARY").is_none() && installed.is_file() {
        return Some(installed);
    }
    cocoon_testkit::require_real_vmm("vm fs on QEMU", "COCOON_VIRTIOFSD_BINARY", "virtiofsd")
}

/// (Again) a server at the share's socket. virtiofsd serves one VMM
/// connection and exits when it closes: a detach or a recovery that took
/// the share out needs a new one.
fn serve_share(lab: &Lab) {
    let socket = PathBuf::from(vfs_socket(lab));
    if !lab.qemu {
        if !socket.exists() {
            std::mem::forget(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        }
        return;
    }
    let _ = std::fs::remove_file(&socket);
    let shared = lab.env.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let child = std::process::Command::new(virtiofsd().expect("virtiofsd"))
        .arg("--socket-path")
        .arg(&socket)
        .arg("--shared-dir")
        .arg(&shared)
        .args(["--sandbox", "none"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    DAEMONS.lock().unwrap().push(child);
    // Not probed by connecting: that would be its one connection.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "virtiofsd made no socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop_daemons() {
    for mut child in DAEMONS.lock().unwrap().drain(..) {
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn vfs_socket(lab: &Lab) -> String {
    lab.env
        .path()
        .join("vfs.sock")
        .to_str()
        .unwrap()
        .to_string()
}

fn fs_attach_args(lab: &Lab) -> Vec<String> {
    let socket = vfs_socket(lab);
    ["vm", "fs", "attach", "m", "--socket", &socket, "--tag", "t"]
        .map(String::from)
        .to_vec()
}

/// The shares of `m` the record has and those its (fake CH) VMM has:
/// after convergence they agree.
fn shares_agree(lab: &Lab) -> Vec<String> {
    let vm = lab
        .vms()
        .into_iter()
        .find(|v| v["config"]["name"] == "m")
        .expect("the VM m is kept");
    let recorded: Vec<String> = vm["filesystems"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| format!("cocoon-fs-{}", f["tag"].as_str().unwrap()))
        .collect();
    let socket = PathBuf::from(vm["run_dir"].as_str().unwrap()).join("api.sock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if vm["hypervisor"] == "qemu" {
        let in_vmm: Vec<String> = rt.block_on(async {
            let mut qmp = vmm_api::qmp::Qmp::connect(&socket).await.unwrap();
            let path = "/machine/peripheral".to_string();
            let devices = qmp.execute(&vmm_api::qmp::QomList { path }).await.unwrap();
            devices
                .into_iter()
                .filter(|d| d.kind == "child<vhost-user-fs-pci>")
                .map(|d| d.name)
                .collect()
        });
        assert_eq!(recorded, in_vmm, "the record and the VMM disagree");
        return recorded;
    }
    let info = rt
        .block_on(vmm_api::ch::CloudHypervisor::new(&socket).info())
        .unwrap();
    let in_vmm: Vec<String> = info.config["fs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(recorded, in_vmm, "the record and the VMM disagree");
    recorded
}

/// `vm fs attach`: rolled back (the VMM loses the share the record does not
/// have), then attached when run again.
fn fs_attach_on(qemu: bool) {
    if qemu && virtiofsd().is_none() {
        return;
    }
    matrix_on(
        &Op {
            name: "vm fs attach",
            setup: &running_shared,
            args: &fs_attach_args,
            failpoints: &["vm.fs.attach.plugged"],
            again: &|lab| {
                assert_eq!(shares_agree(lab), Vec::<String>::new());
                serve_share(lab);
            },
        },
        qemu,
    );
    stop_daemons();
}

#[test]
fn fs_attach() {
    fs_attach_on(false);
}

#[test]
fn fs_attach_qemu() {
    fs_attach_on(true);
}

/// `vm fs detach`: finished (the record forgets the share the VMM no
/// longer has); attached again to be detached again.
fn fs_detach_on(qemu: bool) {
    if qemu && virtiofsd().is_none() {
        return;
    }
    let attach = |lab: &Lab| {
        lab.ok(&fs_attach_args(lab)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>());
    };
    matrix_on(
        &Op {
            name: "vm fs detach",
            setup: &|lab| {
                running_shared(lab);
                attach(lab);
            },
            args: &args(&["vm", "fs", "detach", "m", "--tag", "t"]),
            failpoints: &["vm.fs.detach.unplugged"],
            again: &|lab| {
                assert_eq!(shares_agree(lab), Vec::<String>::new());
                serve_share(lab);
                attach(lab);
            },
        },
        qemu,
    );
    stop_daemons();
}

#[test]
fn fs_detach() {
    fs_detach_on(false);
}

#[test]
fn fs_detach_qemu() {
    fs_detach_on(true);
}

/// `vm start` plugs a recorded share into the new VMM under the attach's
/// intent: killed there, recovery takes it out (the record and the VMM
/// agree); failed there, the VM runs without it, with a warning. Not in
/// `matrix`: a start does not fail for a share.
#[test]
fn start_replugging_a_share() {
    let version = std::process::Command::new(bin())
        .arg("version")
        .output()
        .unwrap();
    if !String::from_utf8_lossy(&version.stdout).contains("failpoints") {
        return cocoon_testkit::skip("start replugging a share", "built without failpoints");
    }
    for action in ["kill", "error"] {
        let case = format!("vm start at vm.fs.attach.plugged ({action})");
        let lab = Lab::on(false);
        running_shared(&lab);
        lab.ok(&fs_attach_args(&lab)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>());
        lab.ok(&["vm", "stop", "m"]);
        let out = lab
            .cmd()
            .args(["vm", "start", "m"])
            .env(
                "COCOON_FAILPOINTS",
                format!("vm.fs.attach.plugged={action}"),
            )
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        use std::os::unix::process::ExitStatusExt;
        if action == "kill" {
            assert_eq!(out.status.signal(), Some(9), "{case}: {err}");
        } else {
            assert!(out.status.success(), "{case}: {err}");
            assert!(
                err.contains("virtio-fs share t is not attached again"),
                "{case}: {err}"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_converged(&lab, &case);
        assert_eq!(shares_agree(&lab), Vec::<String>::new(), "{case}");
        lab.ok(&fs_attach_args(&lab)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>());
        assert_eq!(shares_agree(&lab), ["cocoon-fs-t"], "{case}");
        kill_all(&lab);
    }
}

/// A running VM `m` and a fake sysfs whose 0000:01:00.0 is bound to
/// vfio-pci (with an IOMMU group, which the fake CH opens).
fn running_with_device(lab: &Lab) {
    running(lab);
    let dir = lab.env.path().join("sysfs/0000:01:00.0");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink("../../../bus/pci/drivers/vfio-pci", dir.join("driver")).unwrap();
    std::os::unix::fs::symlink("../../../kernel/iommu_groups/7", dir.join("iommu_group")).unwrap();
}

/// The passed-through devices of `m` the record has and those its (fake
/// CH) VMM has: after convergence they agree.
fn devices_agree(lab: &Lab) -> Vec<String> {
    let vm = lab
        .vms()
        .into_iter()
        .find(|v| v["config"]["name"] == "m")
        .expect("the VM m is kept");
    let recorded: Vec<String> = vm["pci_devices"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    let socket = PathBuf::from(vm["run_dir"].as_str().unwrap()).join("api.sock");
    let info = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(vmm_api::ch::CloudHypervisor::new(&socket).info())
        .unwrap();
    let in_vmm: Vec<String> = info.config["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(recorded, in_vmm, "the record and the VMM disagree");
    recorded
}

const DEVICE_ATTACH: &[&str] = &[
    "vm",
    "device",
    "attach",
    "m",
    "--pci",
    "0000:01:00.0",
    "--id",
    "d",
];

/// `vm device attach`: rolled back, then attached when run again.
#[test]
fn device_attach() {
    matrix(&Op {
        name: "vm device attach",
        setup: &running_with_device,
        args: &args(DEVICE_ATTACH),
        failpoints: &["vm.device.attach.plugged"],
        again: &|lab| assert_eq!(devices_agree(lab), Vec::<String>::new()),
    });
}

/// `vm device detach`: finished; attached again to be detached again.
#[test]
fn device_detach() {
    matrix(&Op {
        name: "vm device detach",
        setup: &|lab| {
            running_with_device(lab);
            lab.ok(DEVICE_ATTACH);
        },
        args: &args(&["vm", "device", "detach", "m", "--id", "d"]),
        failpoints: &["vm.device.detach.unplugged"],
        again: &|lab| {
            assert_eq!(devices_agree(lab), Vec::<String>::new());
            lab.ok(DEVICE_ATTACH);
        },
    });
}

/// Every failpoint the engine has is in this matrix, and the engine's list
/// is exactly the failpoints its code hits.
#[test]
fn every_failpoint_is_in_the_matrix() {
    let all: std::collections::BTreeSet<&str> =
        cocoon_engine::failpoint::ALL.iter().copied().collect();
    let mut in_code = std::collections::BTreeSet::new();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cocoon-engine/src");
    let mut stack = vec![src];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for part in text.split("failpoint::hit").skip(1) {
                    let part = part.strip_prefix("_io").unwrap_or(part);
                    if let Some(name) = part.strip_prefix("(\"") {
                        in_code.insert(name.split('"').next().unwrap().to_string());
                    }
                }
            }
        }
    }
    let in_code: std::collections::BTreeSet<&str> = in_code.iter().map(|s| s.as_str()).collect();
    assert_eq!(
        in_code, all,
        "failpoint::ALL differs from the failpoints in the code"
    );
    let this = include_str!("crash_matrix.rs");
    let mut tested = std::collections::BTreeSet::new();
    // Built at run time so this line does not match itself.
    let marker = format!("failpoints: &{}", '[');
    for part in this.split(marker.as_str()).skip(1) {
        let list = part.split(']').next().unwrap();
        for name in list.split('"').skip(1).step_by(2) {
            tested.insert(name);
        }
    }
    assert_eq!(tested, all, "failpoints missing from the matrix");
}

/// A `vm rm` killed right after its commit: the record is gone, the run
/// directory holds only the lock file, the intent is left. Crash recovery
/// takes the VM's lock to converge the intent (which makes the run
/// directory again if it was gone) and finds no record: the directory must
/// go with the intent, leaving nothing of the VM. (The failpoint stops the
/// removal just before its commit; the test makes the commit itself.)
#[test]
fn recovering_a_removed_vm_leaves_no_run_directory() {
    let lab = Lab::on(false);
    if skipped_without_failpoints("removed VM") {
        return;
    }
    created(&lab);
    let id = lab.vms()[0]["id"].as_str().unwrap().to_string();
    let out = lab
        .cmd()
        .args(["vm", "rm", "m"])
        .env("COCOON_FAILPOINTS", "vm.rm.dirs=kill")
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9), "did not reach the failpoint");
    let run_dir = lab.env.root_dir().join("run/vms").join(&id);
    assert_eq!(names(&run_dir), ["lock"], "what the removal had left");
    let mut store = cocoon_engine::store::Store::open(&lab.env.db_path()).unwrap();
    store.delete_vm(&id).unwrap();
    assert_eq!(store.intents().unwrap().len(), 1, "the removal's intent");
    drop(store);

    assert!(lab.vms().is_empty());
    assert!(!run_dir.exists(), "recovery left {}", run_dir.display());
    assert_converged(&lab, "a removed VM");
}
