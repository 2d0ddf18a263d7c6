//! Commands that read and change recorded state, run through the real binary
//! against a database seeded with the engine's own store.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use cocoon_engine::model::*;
use cocoon_engine::process::ProcessIdentity;
use cocoon_engine::store::Store;
use cocoon_testkit::CocoonEnv;
use serde_json::Value;

fn env() -> CocoonEnv {
    CocoonEnv::new(env!("CARGO_BIN_EXE_cocoon"))
}

fn vm(id: &str, name: &str, state: VmState) -> Vm {
    let config = VmConfig::new(
        name.parse().unwrap(),
        "ghcr.io/cocoonstack/cocoon/ubuntu:24.04",
        ImageType::Oci,
    );
    let mut vm = Vm::new(
        id,
        Hypervisor::CloudHypervisor,
        config,
        PathBuf::from("/run/x"),
        PathBuf::from("/log/x"),
    );
    vm.state = state;
    vm
}

fn snapshot(id: &str, name: &str, vm_id: &str, data_dir: PathBuf) -> Snapshot {
    let mut snapshot = Snapshot::of_vm(
        id,
        Some(name.parse().unwrap()),
        &vm(vm_id, "source", VmState::Running),
        data_dir,
    );
    snapshot.description = "before upgrade".into();
    snapshot.pending = false;
    snapshot
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const A: &str = "AABAAAAAAAAAAAAAAAAAAAAAA2";
const B: &str = "AABBBBBBBBBBBBBBBBBBBBBBB3";

#[test]
fn vm_list_and_inspect_reconcile_dead_vmms() {
    let env = env();
    let mut store = Store::open(&env.db_path()).unwrap();
    // A "running" VM whose VMM is a process that already exited.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = ProcessIdentity::of(child.id()).unwrap();
    child.wait().unwrap();
    let mut stale = vm(A, "web", VmState::Running);
    stale.pid = dead.pid;
    stale.vmm = Some(VmmProcess {
        identity: dead,
        api_socket: "/run/x/api.sock".into(),
    });
    store.insert_vm(&stale).unwrap();
    // A running VM whose VMM is alive: a process naming its socket (as its
    // argv[0]). It must exec once only, so that its command line is final
    // when spawn returns: a PATH shim (pyenv's `python3` is a bash script
    // that execs twice more) shows an empty command line during each exec,
    // and the VM then read as stopped once in a few dozen runs.
    let socket = env.path().join("api.sock");
    let mut vmm = std::process::Command::new("/bin/sleep")
        .arg0(&socket)
        .arg("60")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut live = vm(B, "db", VmState::Running);
    live.vmm = Some(VmmProcess {
        identity: ProcessIdentity::of(vmm.id()).unwrap(),
        api_socket: socket.clone(),
    });
    live.network_configs.push(NetworkConfig {
        tap: "tapAABBBBBB-0".into(),
        mac: "02:00:00:00:00:01".into(),
        num_queues: 2,
        queue_size: 512,
        backend: NetBackend::Cni,
        slot: None,
        bridge_dev: String::new(),
        netns_path: String::new(),
        network: Some(IpConfig {
            ip: "10.88.0.5".into(),
            gateway: "10.88.0.1".into(),
            prefix: 16,
        }),
    });
    store.insert_vm(&live).unwrap();

    let out = env.cmd().args(["vm", "ls"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("ID  "), "{text}");
    for column in [
        "NAME",
        "STATE",
        "CPU",
        "MEMORY",
        "STORAGE",
        "THROTTLED",
        "IP",
        "IMAGE",
        "CREATED",
    ] {
        assert!(lines[0].contains(column), "{column} missing: {text}");
    }
    assert!(
        lines[1].starts_with(A) && lines[1].contains("stopped (stale)") && lines[1].contains(" - "),
        "{text}"
    );
    assert!(
        lines[2].starts_with(B) && lines[2].contains("running") && lines[2].contains("10.88.0.5"),
        "{text}"
    );
    assert!(
        lines[2].contains("1GiB") && lines[2].contains("10GiB"),
        "{text}"
    );

    let out = env.cmd().args(["vm", "ls", "-o", "json"]).output().unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["id"], A);
    assert_eq!(
        json[0]["state"], "stopped",
        "JSON is reconciled too (cocoon's was not)"
    );
    assert_eq!(json[0]["stale"], true);
    assert_eq!(json[0]["pid"], 0);
    assert_eq!(json[1]["state"], "running");
    assert_eq!(json[1]["stale"], false);
    assert_eq!(json[1]["config"]["memory"], 1u64 << 30);
    assert_eq!(json[1]["network_configs"][0]["network"]["ip"], "10.88.0.5");
    assert!(json[1]["snapshot_ids"].is_object());

    // inspect by name, by full ID and by a lower-case prefix.
    for reference in ["web", A, "aaba"] {
        let out = env
            .cmd()
            .args(["vm", "inspect", reference])
            .output()
            .unwrap();
        assert!(out.status.success(), "{reference}: {}", stderr(&out));
        let json: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["id"], A, "{reference}");
        assert_eq!(json["stale"], true);
    }
    // A process that is alive but does not serve the recorded socket is not our VMM.
    let mut other = live.clone();
    other.id = "OOOOOOOOOOOOOOOOOOOOOOOOOO".into();
    other.config.name = "impostor".parse().unwrap();
    other.vmm = Some(VmmProcess {
        identity: ProcessIdentity::current(),
        api_socket: socket.clone(),
    });
    store.insert_vm(&other).unwrap();
    let out = env
        .cmd()
        .args(["vm", "inspect", "impostor"])
        .output()
        .unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (json["state"].as_str(), json["stale"].as_bool()),
        (Some("stopped"), Some(true))
    );
    vmm.kill().unwrap();
    vmm.wait().unwrap();

    let out = env.cmd().args(["vm", "inspect", "AA"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim(),
        "Error: no such VM \"AA\": vm not found by ID, name or ID prefix"
    );
    let out = env.cmd().args(["vm", "inspect", "AAB"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim(),
        format!("Error: VM reference \"AAB\" is ambiguous; it matches: {A} (web), {B} (db)")
    );
}

#[test]
fn empty_lists() {
    let env = env();
    for (args, empty) in [
        (&["vm", "ls"][..], "No VMs found.\n"),
        (&["image", "list"], "No images found.\n"),
        (&["snapshot", "ls"], "No snapshots found.\n"),
    ] {
        let out = env.cmd().args(args).output().unwrap();
        assert_eq!(stdout(&out), empty, "{args:?}");
        let out = env.cmd().args(args).args(["-o", "json"]).output().unwrap();
        assert_eq!(
            stdout(&out),
            "[]\n",
            "{args:?} -o json prints an empty array, not prose"
        );
    }
}

#[test]
fn images_list_inspect_and_rm_by_digest() {
    let env = env();
    let mut store = Store::open(&env.db_path()).unwrap();
    let digest = format!("sha256:{}", "0123456789ab".repeat(5) + "0123");
    let l1 = format!("sha256:{}", "1".repeat(64));
    for name in ["ghcr.io/x/ubuntu:24.04", "ghcr.io/x/ubuntu:latest"] {
        let image = Image {
            id: digest.parse().unwrap(),
            name: name.into(),
            kind: ImageType::Oci,
            size: 1_234_000_000,
            created_at: jiff::Timestamp::now(),
            layers: vec![l1.parse().unwrap()],
            kernel_layer: Some(l1.parse().unwrap()),
            initrd_layer: Some(l1.parse().unwrap()),
            own_kernel: true,
            config: None,
        };
        store
            .put_image(&image, &[(l1.clone(), "erofs".into(), 10)])
            .unwrap();
    }
    let out = env.cmd().args(["image", "ls"]).output().unwrap();
    let text = stdout(&out);
    assert!(text.starts_with("TYPE   NAME"), "{text}");
    assert!(
        text.contains("oci    ghcr.io/x/ubuntu:24.04    sha256:0123456789ab   1.234GB"),
        "{text}"
    );

    let out = env
        .cmd()
        .args(["image", "inspect", "ghcr.io/x/ubuntu:24.04"])
        .output()
        .unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["id"], digest);
    assert_eq!(json["type"], "oci");
    assert_eq!(json["size"], 1_234_000_000u64);
    // A digest prefix names two images: inspect wants one.
    let out = env
        .cmd()
        .args(["image", "inspect", "0123456789ab"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("image reference \"0123456789ab\" is ambiguous"),
        "{}",
        stderr(&out)
    );
    // rm by digest prefix removes every name that shares it; blobs stay for gc.
    let out = env
        .cmd()
        .args(["image", "rm", "sha256:0123456789ab"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).is_empty(), "rm reports on stderr only");
    assert!(stderr(&out).contains("deleted: ghcr.io/x/ubuntu:24.04"));
    assert!(stderr(&out).contains("deleted: ghcr.io/x/ubuntu:latest"));
    assert!(store.list_images().unwrap().is_empty());
    assert_eq!(store.unpinned_blobs().unwrap(), vec![l1.clone()]);
    // A missing image fails the whole command before anything is removed.
    let out = env.cmd().args(["image", "rm", "nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim(),
        "Error: no such image \"nope\": not found in any backend (OCI or cloud images); pull or import it"
    );
}

#[test]
fn snapshot_list_inspect_and_rm() {
    let env = env();
    let mut store = Store::open(&env.db_path()).unwrap();
    store.insert_vm(&vm(A, "web", VmState::Created)).unwrap();
    let data = env.root_dir().join("snapshots").join(B);
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("memory-ranges"), b"x").unwrap();
    store
        .insert_snapshot(&snapshot(B, "base", A, data.clone()))
        .unwrap();

    let out = env.cmd().args(["snapshot", "ls"]).output().unwrap();
    let text = stdout(&out);
    assert!(text.starts_with("ID"), "{text}");
    assert!(
        text.contains(B)
            && text.contains("base")
            && text.contains("before upgrade")
            && text.contains("1GiB"),
        "{text}"
    );
    let out = env
        .cmd()
        .args(["snapshot", "ls", "--vm", "web", "-o", "json"])
        .output()
        .unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 1);
    let out = env.cmd().args(["vm", "inspect", "web"]).output().unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["snapshot_ids"].get(B).is_some());

    // restore refuses a snapshot of another VM before doing anything.
    store
        .insert_vm(&vm("CCCCCCCCCCCCCCCCCCCCCCCCCC", "other", VmState::Running))
        .unwrap();
    let out = env
        .cmd()
        .args(["vm", "restore", "other", "base"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!(
            "snapshot {B} was not taken from VM CCCCCCCCCCCCCCCCCCCCCCCCCC (other)"
        )),
        "{}",
        stderr(&out)
    );

    let out = env.cmd().args(["snapshot", "rm", "base"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!data.exists(), "snapshot files removed");
    assert!(store.get_snapshot(B).unwrap().is_none());
    let out = env.cmd().args(["vm", "inspect", "web"]).output().unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["snapshot_ids"],
        serde_json::json!({}),
        "the VM forgets removed snapshots"
    );
}

#[test]
fn snapshot_rm_never_deletes_outside_the_store() {
    let env = env();
    let mut store = Store::open(&env.db_path()).unwrap();
    let outside = env.path().join("precious");
    std::fs::create_dir_all(&outside).unwrap();
    store
        .insert_snapshot(&snapshot(B, "evil", A, outside.clone()))
        .unwrap();
    let out = env.cmd().args(["snapshot", "rm", "evil"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("refusing to remove"),
        "{}",
        stderr(&out)
    );
    assert!(outside.exists());
    assert!(
        store.get_snapshot(B).unwrap().is_some(),
        "the record stays for a retry"
    );
}

#[test]
fn a_typo_in_a_batch_is_reported_and_changes_nothing() {
    let env = env();
    let mut store = Store::open(&env.db_path()).unwrap();
    store.insert_vm(&vm(A, "web", VmState::Created)).unwrap();
    let before = store.last_event_seq().unwrap();
    // References are resolved before anything runs: a typo is reported as such.
    let out = env
        .cmd()
        .args(["vm", "start", "web", "wbe"])
        .output()
        .unwrap();
    assert_eq!(
        stderr(&out).trim(),
        "Error: no such VM \"wbe\": vm not found by ID, name or ID prefix"
    );
    assert_eq!(store.last_event_seq().unwrap(), before, "nothing changed");
}

#[test]
fn status_streams_events_as_json() {
    let env = env();
    let mut store = Store::open(&env.db_path()).unwrap();
    store.insert_vm(&vm(A, "web", VmState::Created)).unwrap();
    // `vm status` runs until killed: the guard kills it even if an assertion fails.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = KillOnDrop(
        env.std_cmd()
            .args(["vm", "status", "--event", "-o", "json", "-n", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let mut next = || -> Value {
        let line = lines.next().expect("status ended").unwrap();
        serde_json::from_str(&line).unwrap()
    };
    let first = next();
    assert_eq!(
        (first["event"].as_str(), first["vm"]["id"].as_str()),
        (Some("ADDED"), Some(A))
    );
    store.insert_vm(&vm(B, "db", VmState::Created)).unwrap();
    let added = next();
    assert_eq!(
        (
            added["event"].as_str(),
            added["vm"]["config"]["name"].as_str()
        ),
        (Some("ADDED"), Some("db"))
    );
    store
        .update_vm(B, "running", |v| v.state = VmState::Stopped)
        .unwrap();
    let modified = next();
    assert_eq!(
        (modified["event"].as_str(), modified["vm"]["state"].as_str()),
        (Some("MODIFIED"), Some("stopped"))
    );
    let started = Instant::now();
    store.delete_vm(A).unwrap();
    let deleted = next();
    assert_eq!(
        (deleted["event"].as_str(), deleted["vm"]["id"].as_str()),
        (Some("DELETED"), Some(A))
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "changes are seen promptly"
    );
    drop(child);
}

#[test]
fn completions_and_man_pages() {
    let env = env();
    for (shell, marker) in [
        ("bash", "_cocoon()"),
        ("zsh", "#compdef cocoon"),
        ("fish", "complete -c cocoon"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let out = env.cmd().args(["completion", shell]).output().unwrap();
        assert!(out.status.success());
        let script = stdout(&out);
        assert!(script.contains(marker), "{shell}");
        assert!(
            script.contains("snapshot") && script.contains("data-disk"),
            "{shell} covers the tree"
        );
    }
    let dir = env.path().join("man");
    env.cmd().arg("man-pages").arg(&dir).assert().success();
    for page in [
        "cocoon.1",
        "cocoon-vm.1",
        "cocoon-vm-run.1",
        "cocoon-snapshot-export.1",
        "cocoon-image-pull.1",
    ] {
        let text =
            std::fs::read_to_string(dir.join(page)).unwrap_or_else(|_| panic!("{page} missing"));
        assert!(text.starts_with(".ie"), "{page} is roff");
    }
    let run = std::fs::read_to_string(dir.join("cocoon-vm-run.1")).unwrap();
    assert!(run.contains("data\\-disk"));
}

#[test]
fn version_prints_build_facts() {
    let env = env();
    let out = env.cmd().arg("version").output().unwrap();
    let text = stdout(&out);
    for field in [
        "Version: 0.",
        "Git hash: ",
        "Built: ",
        "Rust version: rustc ",
        "OS/Arch: linux/",
    ] {
        assert!(text.contains(field), "{field}: {text}");
    }
}
