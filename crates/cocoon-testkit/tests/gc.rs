//! `cocoon gc` against leaks a crash can leave: a VMM whose record is gone,
//! directories without records, blobs nothing pins, stale temp files, a
//! network namespace of a vanished VM. Referenced things always stay.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use cocoon_engine::model::VmmProcess;
use cocoon_testkit::CocoonEnv;
use serde_json::Value;

const FAKE: &str = env!("CARGO_BIN_EXE_fake-vmm");

fn bin() -> String {
    cocoon_testkit::cocoon_bin()
}

fn run(env: &CocoonEnv, args: &[&str]) -> String {
    let out = env
        .std_cmd()
        .env("COCOON_CH_BINARY", FAKE)
        .env("COCOON_TERMINATE_GRACE_PERIOD_SECONDS", "1")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cocoon {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn age(path: &Path, by: Duration) {
    let when = SystemTime::now() - by;
    let f = std::fs::File::open(path).unwrap();
    f.set_modified(when).unwrap();
}

fn import(env: &CocoonEnv, name: &str, marker: &str) {
    let layer = cocoon_testkit::guest::boot_layer("6.1", b"initrd")
        .file("etc/marker", marker.as_bytes())
        .build();
    let tar = env.path().join(format!("{marker}.tar"));
    std::fs::write(&tar, layer).unwrap();
    run(env, &["image", "import", name, tar.to_str().unwrap()]);
}

#[test]
fn gc_removes_what_nothing_references_and_keeps_the_rest() {
    let env = CocoonEnv::new(bin());
    struct Guard(PathBuf);
    impl Drop for Guard {
        fn drop(&mut self) {
            cocoon_testkit::kill_all_under(&self.0);
        }
    }
    let _guard = Guard(env.root_dir());
    import(&env, "keep/image:1", "kept");
    import(&env, "drop/image:1", "dropped");
    import(&env, "pinned/image:1", "pinned");
    // A VM pins its image's blobs even after the image is removed from the index.
    run(
        &env,
        &[
            "vm",
            "create",
            "--nics",
            "0",
            "--name",
            "user",
            "pinned/image:1",
        ],
    );
    run(&env, &["image", "rm", "pinned/image:1", "drop/image:1"]);
    let blobs = env.root_dir().join("images/blobs");
    for dir in [blobs.clone(), env.root_dir().join("images/boot")] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            age(&entry.unwrap().path(), Duration::from_secs(3600));
        }
    }
    let images: Value = serde_json::from_str(&run(&env, &["image", "ls", "-o", "json"])).unwrap();
    let kept_layer = images[0]["layers"][0]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let user: Value = serde_json::from_str(&run(&env, &["vm", "inspect", "user"])).unwrap();
    let pinned_blob = PathBuf::from(user["storage_configs"][0]["path"].as_str().unwrap());

    // A VM whose record a crash lost, with its VMM still running.
    run(
        &env,
        &[
            "vm",
            "create",
            "--nics",
            "0",
            "--name",
            "lost",
            "keep/image:1",
        ],
    );
    run(&env, &["vm", "start", "lost"]);
    let lost: Value = serde_json::from_str(&run(&env, &["vm", "inspect", "lost"])).unwrap();
    let lost_vmm: VmmProcess = serde_json::from_value(lost["vmm"].clone()).unwrap();
    let lost_run = PathBuf::from(lost["run_dir"].as_str().unwrap());
    let lost_log = PathBuf::from(lost["log_dir"].as_str().unwrap());
    let mut store = cocoon_engine::store::Store::open(&env.db_path()).unwrap();
    store.delete_vm(lost["id"].as_str().unwrap()).unwrap();
    drop(store);

    // Stale and fresh temp files, a snapshot directory without a record.
    let tmp = env.root_dir().join("images/tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(tmp.join("stale-work"), b"x").unwrap();
    age(&tmp.join("stale-work"), Duration::from_secs(2 * 3600));
    std::fs::write(tmp.join("fresh-work"), b"x").unwrap();
    let orphan_snapshot = env.root_dir().join("snapshots/AAAAAAAAAAAAAAAAAAAAAAAAAA");
    std::fs::create_dir_all(&orphan_snapshot).unwrap();
    std::fs::write(orphan_snapshot.join("mem"), vec![1u8; 4096]).unwrap();

    // A dry run lists and changes nothing.
    let dry: Value = serde_json::from_str(&run(&env, &["gc", "--dry-run", "-o", "json"])).unwrap();
    assert_eq!(dry["dry_run"], true);
    let kinds: Vec<&str> = dry["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["kind"].as_str().unwrap())
        .collect();
    for kind in [
        "blob",
        "boot",
        "temp",
        "run_dir",
        "log_dir",
        "snapshot_dir",
        "vmm",
    ] {
        assert!(kinds.contains(&kind), "dry run lists a {kind}: {dry}");
    }
    assert!(cocoon_engine::supervise::is_running(&lost_vmm));
    assert!(lost_run.exists() && orphan_snapshot.exists());

    let report: Value = serde_json::from_str(&run(&env, &["gc", "-o", "json"])).unwrap();
    assert_eq!(report["dry_run"], false);
    assert!(report["bytes_freed"].as_u64().unwrap() > 0, "{report}");
    assert!(
        !cocoon_engine::supervise::is_running(&lost_vmm),
        "the orphan VMM was stopped"
    );
    assert!(!lost_run.exists() && !lost_log.exists());
    assert!(!orphan_snapshot.exists());
    assert!(!tmp.join("stale-work").exists());
    assert!(
        tmp.join("fresh-work").exists(),
        "young temp files may belong to a running pull"
    );
    // Kept: the indexed image's blob, the blob a VM pins.
    assert!(blobs.join(format!("{kept_layer}.erofs")).exists());
    assert!(pinned_blob.exists());
    let left: Vec<_> = std::fs::read_dir(&blobs).unwrap().collect();
    assert_eq!(left.len(), 2, "only the dropped image's blob went");
    // The VM still starts from what was kept.
    run(&env, &["vm", "start", "user"]);
    run(&env, &["vm", "rm", "--force", "user"]);
    // Nothing left to do.
    let again: Value = serde_json::from_str(&run(&env, &["gc", "-o", "json"])).unwrap();
    let kinds: Vec<&str> = again["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["kind"].as_str().unwrap())
        .collect();
    assert!(
        !kinds.contains(&"run_dir") && !kinds.contains(&"vmm"),
        "{again}"
    );
}

/// A directory's mtime set back (its contents are written first: adding
/// them would move it forward again).
fn age_tree(path: &Path, by: Duration) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            age_tree(&entry.unwrap().path(), by);
        }
    }
    age(path, by);
}

/// A command's own work areas in `images/tmp/` (`import-<pid>-<id>/` of a
/// tar-layer import, `stage-<pid>-<id>.img` of a cloud-image copy,
/// `convert-<pid>-<id>.qcow2` of its conversion) are named for the process
/// that writes them: gc keeps them while that pid lives, however old, and
/// removes them once it is gone.
#[test]
fn gc_keeps_work_areas_of_a_live_process_and_removes_a_dead_ones() {
    let env = CocoonEnv::new(bin());
    let tmp = env.root_dir().join("images/tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    struct Child(std::process::Child);
    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let live = Child(
        std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap(),
    );
    let live_pid = live.0.id();
    let mut dead = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    let dead_pid = dead.id();
    dead.kill().unwrap();
    dead.wait().unwrap();
    assert!(!Path::new("/proc").join(dead_pid.to_string()).exists());

    let names = |pid: u32| {
        [
            format!("import-{pid}-01J0000000000000000000IMPT"),
            format!("stage-{pid}-01J0000000000000000000STGE.img"),
            format!("convert-{pid}-01J0000000000000000000CNVT.qcow2"),
        ]
    };
    for pid in [live_pid, dead_pid] {
        let [import, stage, convert] = names(pid);
        std::fs::create_dir_all(tmp.join(&import).join("rootfs/etc")).unwrap();
        std::fs::write(tmp.join(&import).join("rootfs/etc/marker"), b"x").unwrap();
        std::fs::write(tmp.join(&stage), vec![1u8; 4096]).unwrap();
        std::fs::write(tmp.join(&convert), vec![2u8; 4096]).unwrap();
        for name in [import, stage, convert] {
            // Past gc's one-hour grace for work files.
            age_tree(&tmp.join(name), Duration::from_secs(2 * 3600));
        }
    }

    let report: Value = serde_json::from_str(&run(&env, &["gc", "-o", "json"])).unwrap();
    let mut removed: Vec<(String, String)> = report["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["kind"].as_str().unwrap().to_string(),
                i["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    removed.sort();
    let mut expected: Vec<(String, String)> = names(dead_pid)
        .iter()
        .map(|n| ("temp".to_string(), tmp.join(n).display().to_string()))
        .collect();
    expected.sort();
    assert_eq!(removed, expected, "{report}");
    for name in names(live_pid) {
        assert!(
            tmp.join(&name).exists(),
            "{name} of a live process was kept"
        );
    }
    assert_eq!(
        std::fs::read(tmp.join(&names(live_pid)[0]).join("rootfs/etc/marker")).unwrap(),
        b"x"
    );
    for name in names(dead_pid) {
        assert!(
            !tmp.join(&name).exists(),
            "{name} of a dead process was removed"
        );
    }

    // Once the owner is gone, its work areas go too.
    drop(live);
    let report: Value = serde_json::from_str(&run(&env, &["gc", "-o", "json"])).unwrap();
    let removed: usize = report["removed"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] == "temp")
        .count();
    assert_eq!(removed, 3, "{report}");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
}

/// `gc --snapshot` evicts the least recently *used* snapshot: a clone or an
/// export makes an older snapshot recent, and the eviction also releases
/// the blobs only it pinned in the same run.
#[test]
fn gc_snapshot_evicts_by_last_use_not_age() {
    let env = CocoonEnv::new(bin());
    struct Guard(PathBuf);
    impl Drop for Guard {
        fn drop(&mut self) {
            cocoon_testkit::kill_all_under(&self.0);
        }
    }
    let _guard = Guard(env.root_dir());
    import(&env, "snap/image:1", "snapped");
    run(
        &env,
        &["vm", "run", "--nics", "0", "--name", "src", "snap/image:1"],
    );
    run(&env, &["snapshot", "save", "--name", "old", "src"]);
    std::thread::sleep(Duration::from_millis(1100));
    run(&env, &["snapshot", "save", "--name", "new", "src"]);
    let inspect = |name: &str| -> Value {
        serde_json::from_str(&run(&env, &["snapshot", "inspect", name])).unwrap()
    };
    assert!(inspect("old").get("last_accessed_at").is_none());
    std::thread::sleep(Duration::from_millis(1100));
    let tar = env.path().join("old.tar");
    run(
        &env,
        &["snapshot", "export", "-o", tar.to_str().unwrap(), "old"],
    );
    assert!(inspect("old")["last_accessed_at"].is_string());
    let report: Value = serde_json::from_str(&run(
        &env,
        &["gc", "--snapshot", "--snapshot-keep", "1", "-o", "json"],
    ))
    .unwrap();
    let evicted: Vec<&str> = report["snapshots"]["evicted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(evicted, ["new"]);
    let names: Value = serde_json::from_str(&run(&env, &["snapshot", "ls", "-o", "json"])).unwrap();
    assert_eq!(names.as_array().unwrap().len(), 1);
    assert_eq!(names[0]["name"], "old");
    // A clone from it is a use too.
    run(&env, &["vm", "clone", "--name", "c", "old"]);
    let old = inspect("old");
    let used = old["last_accessed_at"].as_str().unwrap();
    assert!(used > old["created_at"].as_str().unwrap());
    run(&env, &["vm", "rm", "--force", "src", "c"]);
}
