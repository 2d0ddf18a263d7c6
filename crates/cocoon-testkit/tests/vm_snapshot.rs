//! Snapshots through the real `cocoon` binary against the fake VMMs: save,
//! clone and restore on both backends, the seed scenario (a VM paused behind
//! the engine's back), Ctrl+C inside the pause window, and damaged snapshots.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cocoon_engine::model::VmmProcess;
use cocoon_testkit::CocoonEnv;
use cocoon_testkit::Reaper;
use serde_json::Value;

const FAKE: &str = env!("CARGO_BIN_EXE_fake-vmm");
const MARK_AT: u64 = 50 << 20;

fn bin() -> String {
    cocoon_testkit::cocoon_bin()
}

struct Lab {
    env: CocoonEnv,
    faults: PathBuf,
}

impl Lab {
    fn new() -> Lab {
        let env = CocoonEnv::new(bin());
        let faults = env.path().join("faults.json");
        std::fs::write(&faults, "[]").unwrap();
        let lab = Lab { env, faults };
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

    fn cmd(&self) -> std::process::Command {
        let mut cmd = self.env.fake_vmm_cmd(FAKE);
        cmd.env("COCOON_FAKE_VMM_FAULTS", &self.faults);
        cmd
    }

    fn ok(&self, args: &[&str]) -> String {
        cocoon_testkit::run_ok(self.cmd(), args)
    }

    fn fail(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert!(!out.status.success(), "cocoon {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    fn vms(&self) -> Vec<Value> {
        self.json(&["vm", "ls", "-o", "json"])
            .as_array()
            .unwrap()
            .clone()
    }

    fn inspect(&self, vm: &str) -> Value {
        serde_json::from_str(&self.ok(&["vm", "inspect", vm])).unwrap()
    }

    fn snapshots(&self) -> Vec<Value> {
        serde_json::from_str::<Value>(&self.ok(&["snapshot", "ls", "-o", "json"]))
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }
}

use cocoon_testkit::processes_of;

fn alive(p: &VmmProcess) -> bool {
    cocoon_engine::supervise::is_running(p)
}

fn cow_of(vm: &Value) -> PathBuf {
    let disks = vm["storage_configs"].as_array().unwrap();
    PathBuf::from(
        disks.iter().find(|d| d["role"] == "cow").unwrap()["path"]
            .as_str()
            .unwrap(),
    )
}

fn write_mark(path: &Path, mark: &[u8; 8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(MARK_AT)).unwrap();
    f.write_all(mark).unwrap();
}

fn read_mark(path: &Path) -> [u8; 8] {
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(MARK_AT)).unwrap();
    let mut b = [0u8; 8];
    f.read_exact(&mut b).unwrap();
    b
}

/// The VMM's own view of its state (vm.info / GET /).
fn vmm_state(vm: &Value) -> String {
    let socket = PathBuf::from(vm["run_dir"].as_str().unwrap()).join("api.sock");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if vm["hypervisor"] == "firecracker" {
            vmm_api::fc::Firecracker::new(&socket)
                .describe_instance()
                .await
                .unwrap()
                .state
        } else {
            format!(
                "{:?}",
                vmm_api::ch::CloudHypervisor::new(&socket)
                    .info()
                    .await
                    .unwrap()
                    .state
            )
        }
    })
}

fn round_trip(fc: bool) {
    let lab = Lab::new();
    let mut create = vec![
        "vm",
        "create",
        "--nics",
        "0",
        "--name",
        "src",
        "--data-disk",
        "size=32M,name=db",
    ];
    if fc {
        create.push("--fc");
    }
    create.push("test/guest:1");
    lab.ok(&create);
    lab.ok(&["vm", "start", "src"]);
    let src = lab.inspect("src");
    let mut reaper = Reaper(processes_of(&src));
    let src_cow = cow_of(&src);
    write_mark(&src_cow, b"BEFORE!!");

    let saved: Value =
        serde_json::from_str(&lab.ok(&["snapshot", "save", "--name", "s1", "-o", "json", "src"]))
            .unwrap();
    assert_eq!(saved["name"], "s1");
    assert!(saved["pause_ms"].as_f64().unwrap() > 0.0);
    assert!(saved["total_ms"].as_f64().unwrap() >= saved["pause_ms"].as_f64().unwrap());
    let dir = PathBuf::from(saved["data_dir"].as_str().unwrap());
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("cocoon.json")).unwrap()).unwrap();
    let mut files: Vec<&str> = manifest["files"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    files.sort();
    let expected: &[&str] = if fc {
        &["cow.raw", "data-db.raw", "mem", "vmstate"]
    } else {
        &[
            "config.json",
            "cow.raw",
            "data-db.raw",
            "memory-ranges",
            "state.json",
        ]
    };
    assert_eq!(files, expected);
    assert_eq!(read_mark(&dir.join("cow.raw")), *b"BEFORE!!");
    assert_eq!(lab.inspect("src")["state"], "running");
    assert_eq!(vmm_state(&lab.inspect("src")), "Running");
    assert_eq!(
        lab.inspect("src")["snapshot_ids"],
        serde_json::json!({saved["id"].as_str().unwrap(): {}})
    );

    // The source moves on.
    write_mark(&src_cow, b"AFTER!!!");

    // Clone: a new VM from the snapshot's state and disks.
    let clone_id = lab
        .ok(&["vm", "clone", "--name", "c1", "s1"])
        .trim()
        .to_string();
    let clone = lab.inspect("c1");
    reaper.0.extend(processes_of(&clone));
    assert_eq!(clone["state"], "running");
    assert_eq!(clone["id"], clone_id.as_str());
    let clone_cow = cow_of(&clone);
    assert!(clone_cow.starts_with(clone["run_dir"].as_str().unwrap()));
    assert_eq!(read_mark(&clone_cow), *b"BEFORE!!");
    assert_eq!(read_mark(&src_cow), *b"AFTER!!!", "the source is untouched");
    assert_eq!(vmm_state(&clone), "Running");
    if fc {
        // FC reopened the source's paths, which in its mount namespace are the clone's copies.
        let pid = clone["pid"].as_u64().unwrap();
        let seen =
            PathBuf::from(format!("/proc/{pid}/root")).join(src_cow.strip_prefix("/").unwrap());
        assert_eq!(
            read_mark(&seen),
            *b"BEFORE!!",
            "FC's view of the source path is the clone's disk"
        );
    }
    // Logs of the restored guest reach the clone's log.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !lab
        .ok(&["vm", "logs", "c1"])
        .contains("FAKE-GUEST RESTORED")
    {
        assert!(
            Instant::now() < deadline,
            "no restored guest output in the clone's log"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Other resources than the snapshot's are refused, before anything is made.
    let ids = |lab: &Lab| -> Vec<Value> {
        let vms: Value = serde_json::from_str(&lab.ok(&["vm", "ls", "-o", "json"])).unwrap();
        vms.as_array()
            .unwrap()
            .iter()
            .map(|v| v["id"].clone())
            .collect()
    };
    let before = ids(&lab);
    let err = lab.fail(&["vm", "clone", "--memory", "512M", "s1"]);
    assert!(
        err.starts_with(
            "Error: --memory 512.0 MiB differs from the snapshot's 1.0 GiB memory: a clone or restore takes the snapshot's vCPUs, memory and storage"
        ),
        "{err}"
    );
    assert_eq!(ids(&lab), before);

    // Restore in place: the source's disk goes back to the snapshot.
    let before_pid = lab.inspect("src")["pid"].clone();
    lab.ok(&["vm", "restore", "src", "s1"]);
    let restored = lab.inspect("src");
    reaper.0.extend(processes_of(&restored));
    assert_eq!(restored["state"], "running");
    assert_ne!(restored["pid"], before_pid);
    assert_eq!(read_mark(&src_cow), *b"BEFORE!!");
    assert_eq!(vmm_state(&restored), "Running");

    // A clone's snapshot cannot be restored into the source.
    lab.ok(&["snapshot", "save", "--name", "s2", "c1"]);
    let err = lab.fail(&["vm", "restore", "src", "s2"]);
    assert!(err.contains("was not taken from VM"), "{err}");

    lab.ok(&["vm", "rm", "--force", "src", "c1"]);
    assert!(reaper.0.iter().all(|p| !alive(p)));
    // Snapshots outlive their VM.
    assert_eq!(lab.snapshots().len(), 2);
    lab.ok(&["snapshot", "rm", "s1", "s2"]);
    assert!(!dir.exists());
}

#[test]
fn ch_snapshot_round_trip() {
    round_trip(false);
}

#[test]
fn fc_snapshot_round_trip() {
    round_trip(true);
}

/// The seed scenario: a VM left paused (a killed command, an operator's
/// curl) must not wedge `snapshot save`, and ends running.
#[test]
fn save_of_a_vm_paused_behind_our_back_succeeds_and_resumes_it() {
    let lab = Lab::new();
    lab.ok(&["vm", "create", "--nics", "0", "--name", "p", "test/guest:1"]);
    lab.ok(&["vm", "start", "p"]);
    let vm = lab.inspect("p");
    let _reaper = Reaper(processes_of(&vm));
    let socket = PathBuf::from(vm["run_dir"].as_str().unwrap()).join("api.sock");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(vmm_api::ch::CloudHypervisor::new(&socket).pause())
        .unwrap();
    assert_eq!(vmm_state(&vm), "Paused");
    lab.ok(&["snapshot", "save", "--name", "after-pause", "p"]);
    assert_eq!(vmm_state(&vm), "Running");
    assert_eq!(lab.snapshots().len(), 1);
    lab.ok(&["vm", "rm", "--force", "p"]);
}

/// A VMM that fails the snapshot: the VM is resumed and nothing is kept.
#[test]
fn failed_capture_resumes_and_keeps_nothing() {
    let lab = Lab::new();
    lab.ok(&["vm", "create", "--nics", "0", "--name", "f", "test/guest:1"]);
    lab.ok(&["vm", "start", "f"]);
    let vm = lab.inspect("f");
    let _reaper = Reaper(processes_of(&vm));
    std::fs::write(
        &lab.faults,
        r#"[{"method":"PUT","path":"/api/v1/vm.snapshot","action":"error","status":500,"body":"[\"The VM could not be snapshotted\",\"disk full\"]"}]"#,
    )
    .unwrap();
    let err = lab.fail(&["snapshot", "save", "f"]);
    assert!(
        err.contains("disk full") && err.contains("the VM was resumed"),
        "{err}"
    );
    assert_eq!(vmm_state(&vm), "Running");
    assert_eq!(lab.snapshots().len(), 0);
    assert_eq!(
        std::fs::read_dir(lab.env.root_dir().join("snapshots"))
            .unwrap()
            .count(),
        0
    );
    lab.ok(&["vm", "rm", "--force", "f"]);
}

/// Ctrl+C while the VM is paused: the VM is resumed first, then the command
/// stops and removes the half-made snapshot.
#[test]
fn ctrl_c_during_save_still_resumes() {
    let lab = Lab::new();
    lab.ok(&["vm", "create", "--nics", "0", "--name", "i", "test/guest:1"]);
    lab.ok(&["vm", "start", "i"]);
    let vm = lab.inspect("i");
    let _reaper = Reaper(processes_of(&vm));
    std::fs::write(
        &lab.faults,
        r#"[{"method":"PUT","path":"/api/v1/vm.snapshot","action":"delay","ms":1500}]"#,
    )
    .unwrap();
    let child = lab
        .cmd()
        .args(["snapshot", "save", "i"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Into the pause window.
    let deadline = Instant::now() + Duration::from_secs(5);
    while vmm_state(&vm) != "Paused" {
        assert!(Instant::now() < deadline, "the save never paused the VM");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("interrupted"), "{err}");
    assert_eq!(vmm_state(&vm), "Running");
    assert_eq!(lab.snapshots().len(), 0);
    lab.ok(&["vm", "rm", "--force", "i"]);
}

/// A damaged snapshot is refused before the running VM is touched.
#[test]
fn restore_refuses_a_damaged_snapshot_and_leaves_the_vm_running() {
    let lab = Lab::new();
    lab.ok(&["vm", "create", "--nics", "0", "--name", "d", "test/guest:1"]);
    lab.ok(&["vm", "start", "d"]);
    let vm = lab.inspect("d");
    let _reaper = Reaper(processes_of(&vm));
    let saved: Value =
        serde_json::from_str(&lab.ok(&["snapshot", "save", "-o", "json", "d"])).unwrap();
    let dir = PathBuf::from(saved["data_dir"].as_str().unwrap());
    // A change the sealer sees is what its digests describe.
    cocoon_testkit::wait_sealed(&dir);
    let original = read_mark(&dir.join("cow.raw"));
    write_mark(&dir.join("cow.raw"), b"TAMPERED");
    let err = lab.fail(&["vm", "restore", "d", saved["id"].as_str().unwrap()]);
    assert!(err.contains("cow.raw does not match its checksum"), "{err}");
    let after = lab.inspect("d");
    assert_eq!(after["pid"], vm["pid"], "the VM was not touched");
    assert_eq!(vmm_state(&after), "Running");
    write_mark(&dir.join("cow.raw"), &original);
    std::fs::remove_file(dir.join("state.json")).unwrap();
    let err = lab.fail(&["vm", "restore", "d", saved["id"].as_str().unwrap()]);
    assert!(err.contains("state.json"), "{err}");
    assert_eq!(lab.inspect("d")["pid"], vm["pid"]);
    lab.ok(&["vm", "rm", "--force", "d"]);
}

/// `vm clone --pull`: the snapshot's image is gone from this host and its
/// tag has moved on in the registry; the clone fails naming `--pull`, and
/// with it fetches exactly the image the snapshot was taken from, by digest.
#[test]
fn clone_pull_fetches_the_snapshots_image_by_digest() {
    let test = "clone_pull_fetches_the_snapshots_image_by_digest";
    let Some(registry) = cocoon_testkit::registry::Registry::start() else {
        return cocoon_testkit::skip(test, "docker-registry is not installed");
    };
    let lab = Lab::new();
    let image = |tag: &[u8]| vec![cocoon_testkit::guest::boot_layer("6.1", tag).build()];
    registry.push("vm/base:1", &image(b"first"), "amd64");
    let reference = registry.reference("vm/base:1");
    lab.ok(&["image", "pull", &reference]);
    let digest = lab.json(&["image", "inspect", &reference])["id"]
        .as_str()
        .unwrap()
        .to_string();
    lab.ok(&["vm", "run", "--nics", "0", "--name", "m", &reference]);
    lab.ok(&["snapshot", "save", "--name", "s", "m"]);
    lab.ok(&["vm", "rm", "--force", "m"]);

    // The tag moves on, and the image leaves this host.
    registry.push("vm/base:1", &image(b"second"), "amd64");
    lab.ok(&["image", "rm", &reference]);
    let images = lab.env.root_dir().join("images");
    for dir in ["blobs", "boot"] {
        std::fs::remove_dir_all(images.join(dir)).unwrap();
        std::fs::create_dir(images.join(dir)).unwrap();
    }
    let err = lab.fail(&["vm", "clone", "--name", "c", "s"]);
    assert!(err.contains("or clone with --pull"), "{err}");
    assert!(
        !lab.vms().iter().any(|v| v["config"]["name"] == "c"),
        "a failed clone leaves no VM"
    );

    // Flags the clone cannot take are refused before anything is fetched.
    let err = lab.fail(&[
        "vm",
        "clone",
        "--pull",
        "--restore-mode",
        "mmap",
        "--name",
        "c",
        "s",
    ]);
    assert!(err.contains("--restore-mode mmap needs"), "{err}");
    let listed = lab.json(&["image", "ls", "-o", "json"]);
    assert!(
        !listed.to_string().contains("vm/base"),
        "nothing was pulled: {listed}"
    );

    lab.ok(&["vm", "clone", "--pull", "--name", "c", "s"]);
    let clone = lab.inspect("c");
    assert_eq!(clone["state"], "running");
    let pinned = format!("{}@{digest}", reference.rsplit_once(':').unwrap().0);
    let pulled = lab.json(&["image", "inspect", &pinned]);
    assert_eq!(
        pulled["id"],
        digest.as_str(),
        "the snapshot's image, not the tag's"
    );
    for layer in pulled["layers"].as_array().unwrap() {
        let hex = layer.as_str().unwrap().trim_start_matches("sha256:");
        assert!(images.join("blobs").join(format!("{hex}.erofs")).is_file());
    }
    // Present now: a second --pull fetches nothing and clones.
    lab.ok(&["vm", "clone", "--pull", "--name", "c2", "s"]);
    assert_eq!(lab.inspect("c2")["state"], "running");
    lab.ok(&["vm", "rm", "--force", "c", "c2"]);
}

/// `--restore-mode` (cocoon's later flag; `--on-demand` is its older form):
/// each mode reaches the VMM where the backend has it, and is refused with
/// its reason, before anything is made or touched, where it has not.
#[test]
fn restore_modes_are_checked_against_the_backend() {
    let lab = Lab::new();
    let bodies = lab.env.path().join("bodies.log");
    let clone = |args: &[&str]| {
        let out = lab
            .cmd()
            .env("COCOON_FAKE_VMM_BODIES", &bodies)
            .args(["vm", "clone"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    lab.ok(&["vm", "run", "--nics", "0", "--name", "ch", "test/guest:1"]);
    lab.ok(&["snapshot", "save", "--name", "s-ch", "ch"]);
    lab.ok(&[
        "vm",
        "run",
        "--nics",
        "0",
        "--fc",
        "--name",
        "fc",
        "test/guest:1",
    ]);
    lab.ok(&["snapshot", "save", "--name", "s-fc", "fc"]);
    let vms_before = lab.vms().len();

    let (code, err) = clone(&["--restore-mode", "mmap", "--name", "x", "s-ch"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(
            "--restore-mode mmap needs a Cloud Hypervisor with copy-on-write memory restore"
        ),
        "{err}"
    );
    for mode in ["copy", "ondemand"] {
        let (code, err) = clone(&["--restore-mode", mode, "--name", "x", "s-fc"]);
        assert_eq!(code, Some(1), "{mode}");
        assert!(
            err.contains("Firecracker restores memory by mapping the snapshot file"),
            "{mode}: {err}"
        );
    }
    assert_eq!(lab.vms().len(), vms_before, "a refused mode makes no VM");
    let (code, err) = clone(&["--restore-mode", "copy", "--on-demand", "s-ch"]);
    assert_eq!(code, Some(2), "conflicting flags are a usage error: {err}");

    // Where the backend has the mode, it reaches the VMM.
    let restores = || -> Vec<String> {
        std::fs::read_to_string(&bodies)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("vm.restore"))
            .map(String::from)
            .collect()
    };
    for (args, on_demand) in [
        (
            &["--restore-mode", "ondemand", "--name", "od", "s-ch"][..],
            true,
        ),
        (&["--on-demand", "--name", "od2", "s-ch"][..], true),
        (
            &["--restore-mode", "copy", "--name", "cp", "s-ch"][..],
            false,
        ),
    ] {
        let (code, err) = clone(args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        let last = restores().pop().expect("a vm.restore call");
        assert_eq!(
            last.contains(r#""memory_restore_mode":"OnDemand""#),
            on_demand,
            "{args:?}: {last}"
        );
    }
    let (code, err) = clone(&["--restore-mode", "mmap", "--name", "fm", "s-fc"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(lab.inspect("fm")["state"], "running");

    // `vm restore` checks before touching the running VM.
    let pid = lab.inspect("fc")["pid"].clone();
    let err = lab.fail(&["vm", "restore", "--restore-mode", "ondemand", "fc", "s-fc"]);
    assert!(
        err.contains("Firecracker restores memory by mapping"),
        "{err}"
    );
    assert_eq!(lab.inspect("fc")["pid"], pid, "the VM was not touched");
    lab.ok(&["vm", "rm", "--force", "ch", "fc", "od", "od2", "cp", "fm"]);
}

/// `snapshot export -o FILE` writes a private file (it holds guest memory),
/// never through a link planted beside the target (the old `FILE.partial`
/// was created with a plain create, which follows one), and a failed export
/// leaves nothing behind.
#[test]
fn export_is_private_never_follows_a_planted_link_and_leaves_nothing_on_failure() {
    use std::os::unix::fs::PermissionsExt;
    let lab = Lab::new();
    lab.ok(&["vm", "run", "--nics", "0", "--name", "e", "test/guest:1"]);
    let _reaper = Reaper(processes_of(&lab.inspect("e")));
    lab.ok(&["snapshot", "save", "--name", "s", "e"]);

    let out = lab.env.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let sentinel = lab.env.path().join("sentinel");
    std::fs::write(&sentinel, b"host file").unwrap();
    std::fs::set_permissions(&sentinel, std::fs::Permissions::from_mode(0o644)).unwrap();
    // Where the previous exporter wrote its partial file.
    std::os::unix::fs::symlink(&sentinel, out.join("s.tar.partial")).unwrap();
    let target = out.join("s.tar.zst");
    lab.ok(&["snapshot", "export", "-o", target.to_str().unwrap(), "s"]);
    assert_eq!(
        std::fs::metadata(&target).unwrap().permissions().mode() & 0o777,
        0o600,
        "the archive holds guest memory"
    );
    assert_eq!(std::fs::read(&sentinel).unwrap(), b"host file");
    assert_eq!(
        std::fs::read_link(out.join("s.tar.partial")).unwrap(),
        sentinel
    );
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["s.tar.partial", "s.tar.zst"]);
    // The archive is whole: it imports.
    lab.ok(&[
        "snapshot",
        "import",
        "--name",
        "back",
        target.to_str().unwrap(),
    ]);

    // A failed export (the target is a directory) leaves no temporary file.
    let err = lab.fail(&["snapshot", "export", "-o", out.to_str().unwrap(), "s"]);
    assert!(
        err.starts_with(&format!("Error: cannot write {}", out.display())),
        "{err}"
    );
    let mut after: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    after.sort();
    assert_eq!(after, ["s.tar.partial", "s.tar.zst"]);
    assert_eq!(std::fs::read(&sentinel).unwrap(), b"host file");
    lab.ok(&["vm", "rm", "--force", "e"]);
}
