//! Hostile snapshot archives and snapshot directories, through the real
//! `cocoon` binary against the fake VMMs. A real snapshot is exported,
//! unpacked, doctored (cocoon.json, config.json, a disk copy) and re-tarred
//! with GNU tar; each import, and each clone of a snapshot doctored in place,
//! must fail with its exact reason, and leave a sentinel tree outside the
//! engine's directories, the other VM's disks, the other snapshot's files
//! and the records in cocoon.db as they were. Also: a restore failing after
//! its first disk swap leaves every old disk, and a clone pins the blobs its
//! own disks use.

mod hostile_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use cocoon_engine::snapshot::manifest::sum_file;
use cocoon_testkit::CocoonEnv;
use cocoon_testkit::Reaper;
use serde_json::{Value, json};

const FAKE: &str = env!("CARGO_BIN_EXE_fake-vmm");

struct Lab {
    env: CocoonEnv,
}

impl Lab {
    fn new() -> Lab {
        let lab = Lab {
            env: CocoonEnv::new(cocoon_testkit::cocoon_bin()),
        };
        let layer = cocoon_testkit::guest::boot_layer("6.1", b"initrd").build();
        let tar = lab.env.path().join("layer.tar");
        std::fs::write(&tar, layer).unwrap();
        lab.ok(&["image", "import", "test/guest:1", tar.to_str().unwrap()]);
        lab
    }

    fn cmd(&self) -> Command {
        self.env.fake_vmm_cmd(FAKE)
    }

    fn ok(&self, args: &[&str]) -> String {
        cocoon_testkit::run_ok(self.cmd(), args)
    }

    fn fail_with(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let out = self
            .cmd()
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(!out.status.success(), "cocoon {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn fail(&self, args: &[&str]) -> String {
        self.fail_with(args, &[])
    }

    /// Exports snapshot `snapshot` uncompressed to `<env>/<snapshot>.tar` and
    /// unpacks it with GNU tar into a new `<env>/<into>`, which it returns.
    fn export_unpacked(&self, snapshot: &str, into: &str) -> PathBuf {
        let archive = self.env.path().join(format!("{snapshot}.tar"));
        self.ok(&[
            "snapshot",
            "export",
            "--compression",
            "none",
            "-o",
            archive.to_str().unwrap(),
            snapshot,
        ]);
        let dir = self.env.path().join(into);
        std::fs::create_dir(&dir).unwrap();
        run(Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(&dir));
        dir
    }

    /// [`retar`]s `dir` as `<env>/<file>` and imports that as snapshot
    /// `name`; returns the archive.
    fn import_retarred(&self, dir: &Path, file: &str, name: &str) -> PathBuf {
        let archive = self.env.path().join(file);
        retar(dir, &archive);
        self.ok(&[
            "snapshot",
            "import",
            "--name",
            name,
            archive.to_str().unwrap(),
        ]);
        archive
    }

    fn inspect(&self, vm: &str) -> Value {
        serde_json::from_str(&self.ok(&["vm", "inspect", vm])).unwrap()
    }

    /// What cocoon.db records (VMs and snapshots), for before/after.
    fn records(&self) -> (Value, Value) {
        let strip = |mut v: Value| {
            // Liveness is read on the fly; the record is what matters.
            if let Some(list) = v.as_array_mut() {
                list.sort_by_key(|x| x["id"].as_str().unwrap_or_default().to_string());
            }
            v
        };
        (
            strip(serde_json::from_str(&self.ok(&["vm", "ls", "-o", "json"])).unwrap()),
            strip(serde_json::from_str(&self.ok(&["snapshot", "ls", "-o", "json"])).unwrap()),
        )
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sums (hole-aware) of every file under `dir`.
fn sums(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            out.insert(path.clone(), sum_file(&path).unwrap().sha256);
        }
    }
    out
}

fn disk_sums(vm: &Value) -> BTreeMap<PathBuf, String> {
    vm["storage_configs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["ro"] == false)
        .map(|d| {
            let p = PathBuf::from(d["path"].as_str().unwrap());
            let s = sum_file(&p).unwrap().sha256;
            (p, s)
        })
        .collect()
}

/// Everything a hostile command must leave alone.
struct World {
    outside: BTreeMap<PathBuf, hostile_support::Seen>,
    disks: BTreeMap<PathBuf, String>,
    snapshot: BTreeMap<PathBuf, String>,
    records: (Value, Value),
    db_ok: bool,
}

fn world(lab: &Lab, outside: &Path, snapshot_dir: &Path) -> World {
    let db = rusqlite_free_integrity(&lab.env.db_path());
    World {
        outside: hostile_support::snapshot(outside, &[]),
        disks: disk_sums(&lab.inspect("src")),
        snapshot: sums(snapshot_dir),
        records: lab.records(),
        db_ok: db,
    }
}

/// cocoon.db opens and reads through the engine's store.
fn rusqlite_free_integrity(db: &Path) -> bool {
    let mut store = cocoon_engine::store::Store::open(db).unwrap();
    store.list_vms().is_ok() && store.list_snapshots(None).is_ok()
}

fn assert_world(lab: &Lab, outside: &Path, snapshot_dir: &Path, before: &World, case: &str) {
    let after = world(lab, outside, snapshot_dir);
    hostile_support::assert_unchanged(&before.outside, &after.outside);
    assert_eq!(before.disks, after.disks, "{case}: the other VM's disks");
    assert_eq!(
        before.snapshot, after.snapshot,
        "{case}: the other snapshot's files"
    );
    assert_eq!(
        before.records, after.records,
        "{case}: the records in cocoon.db"
    );
    assert!(after.db_ok && before.db_ok, "{case}: cocoon.db");
}

/// Rewrites `dir/cocoon.json` by `f`, re-summing `changed` files and the
/// trailer so that only the doctored content is wrong.
fn doctor(dir: &Path, changed: &[&str], f: impl FnOnce(&mut Value)) {
    let path = dir.join("cocoon.json");
    let mut manifest: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    f(&mut manifest);
    for name in changed {
        let sum = sum_file(&dir.join(name)).unwrap();
        manifest["files"][*name] = json!({"size": sum.size, "sha256": sum.sha256});
    }
    let bytes = serde_json::to_vec_pretty(&manifest).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let trailer = dir.join("cocoon.json.sha256");
    if trailer.exists() {
        use sha2::Digest;
        let hex: String = sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        std::fs::write(&trailer, format!("{hex}  cocoon.json\n")).unwrap();
    }
}

fn edit_json(path: &Path, f: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_vec(&v).unwrap()).unwrap();
}

/// GNU tar, in the archive's order: upstream's envelope, manifest, files
/// by name, trailer.
fn retar(dir: &Path, out: &Path) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !["snapshot.json", "cocoon.json", "cocoon.json.sha256"].contains(&n.as_str()))
        .collect();
    names.sort();
    let mut cmd = Command::new("tar");
    cmd.args(["--format=posix", "--sparse", "--sparse-version=1.0", "-cf"])
        .arg(out)
        .arg("-C")
        .arg(dir);
    if dir.join("snapshot.json").exists() {
        cmd.arg("snapshot.json");
    }
    cmd.arg("cocoon.json").args(&names);
    if dir.join("cocoon.json.sha256").exists() {
        cmd.arg("cocoon.json.sha256");
    }
    run(&mut cmd);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    run(Command::new("cp")
        .arg("-a")
        .arg("--sparse=always")
        .arg(format!("{}/.", from.display()))
        .arg(to));
}

/// A qcow2 v3 header naming `backing` as its backing file.
fn qcow2_with_backing(backing: &str) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..4].copy_from_slice(b"QFI\xfb");
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    h[8..16].copy_from_slice(&512u64.to_be_bytes());
    h[16..20].copy_from_slice(&u32::try_from(backing.len()).unwrap().to_be_bytes());
    h[20..24].copy_from_slice(&16u32.to_be_bytes());
    h[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
    h[100..104].copy_from_slice(&104u32.to_be_bytes());
    h.extend_from_slice(backing.as_bytes());
    h
}

struct Case {
    name: &'static str,
    /// Doctors an unpacked snapshot directory.
    doctor: Box<dyn Fn(&Path)>,
    error: String,
}

#[test]
fn doctored_snapshots_are_refused_on_import_and_clone_and_touch_nothing() {
    if Command::new("tar").arg("--version").output().is_err() {
        return cocoon_testkit::skip("doctored snapshots", "GNU tar is not installed");
    }
    let lab = Lab::new();
    let outside = lab.env.path().join("outside");
    let host = hostile_support::plant(&outside);
    lab.ok(&["vm", "run", "--nics", "0", "--name", "src", "test/guest:1"]);
    let src = lab.inspect("src");
    let _reaper = Reaper(cocoon_testkit::processes_of(&src));
    let saved: Value =
        serde_json::from_str(&lab.ok(&["snapshot", "save", "--name", "s", "-o", "json", "src"]))
            .unwrap();
    let snap_dir = PathBuf::from(saved["data_dir"].as_str().unwrap());
    let clean = lab.export_unpacked("s", "clean");
    assert!(clean.join("cocoon.json.sha256").exists(), "the trailer");
    // The untouched archive, re-tarred by GNU tar, imports: the harness is sound.
    let good = lab.import_retarred(&clean, "good.tar", "good");

    let other_cow = PathBuf::from(
        src["storage_configs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["role"] == "cow")
            .unwrap()["path"]
            .as_str()
            .unwrap(),
    );
    let db = lab.env.db_path();
    let set_layer = |path: PathBuf| {
        Box::new(move |dir: &Path| {
            let path = path.clone();
            doctor(dir, &[], |m| {
                let layer = m["storage"]
                    .as_array_mut()
                    .unwrap()
                    .iter_mut()
                    .find(|d| d["role"] == "layer")
                    .unwrap();
                layer["path"] = json!(path);
            })
        }) as Box<dyn Fn(&Path)>
    };
    let config = |f: fn(&mut Value)| {
        Box::new(move |dir: &Path| {
            edit_json(&dir.join("config.json"), f);
            doctor(dir, &["config.json"], |_| {});
        }) as Box<dyn Fn(&Path)>
    };
    let host_file = host.join("key").display().to_string();
    let cases = vec![
        Case {
            name: "a disk path at another VM's COW disk",
            doctor: set_layer(other_cow.clone()),
            error: format!(
                "disk 0 ({}) is read-only but not an image layer of this engine",
                other_cow.display()
            ),
        },
        Case {
            name: "a disk path at cocoon.db",
            doctor: set_layer(db.clone()),
            error: format!(
                "disk 0 ({}) is read-only but not an image layer of this engine",
                db.display()
            ),
        },
        Case {
            name: "backing_files in config.json",
            doctor: config(|c| c["disks"][0]["backing_files"] = json!(true)),
            error: "config.json: disk 0 has \"backing_files\" but is not a cloud image overlay; the engine does not pass it through".into(),
        },
        Case {
            name: "pmem in config.json",
            doctor: config(|c| c["pmem"] = json!([{"file": "/etc/shadow", "discard_writes": false}])),
            error: "config.json: \"pmem\" is set; the engine does not pass it through".into(),
        },
        Case {
            name: "fs in config.json",
            doctor: config(|c| c["fs"] = json!([{"tag": "x", "socket": "/run/x.sock", "num_queues": 1, "queue_size": 8}])),
            error: "config.json: \"fs\" is set; the engine does not pass it through".into(),
        },
        Case {
            name: "a memory zone file",
            doctor: config(|c| {
                c["memory"]["zones"] = json!([{"id": "z0", "size": 1 << 28, "file": "/etc/shadow"}])
            }),
            error: "config.json: memory zone 0 has a backing \"file\"; the engine does not pass it through".into(),
        },
        Case {
            name: "an unknown field naming a path",
            doctor: config(|c| c["future_device"] = json!({"path": "/etc/shadow"})),
            error: "config.json: \"future_device.path\" names a path (\"/etc/shadow\"); the engine does not pass paths through".into(),
        },
        Case {
            name: "a qcow2 overlay with a backing file",
            doctor: {
                let backing = host_file.clone();
                Box::new(move |dir: &Path| {
                    std::fs::write(dir.join("cow.raw"), qcow2_with_backing(&backing)).unwrap();
                    doctor(dir, &["cow.raw"], |_| {});
                })
            },
            error: format!(
                "is a qcow2 image with backing file {host_file:?}; only a cloud image overlay backed by its own image's blob is accepted"
            ),
        },
        Case {
            name: "a snapshot name with a path",
            doctor: Box::new(|dir: &Path| doctor(dir, &[], |m| m["snapshot"]["name"] = json!("../../etc/cron.d/x"))),
            error: "invalid snapshot name \"../../etc/cron.d/x\": must start with a letter or digit and contain only letters, digits, '.', '_' or '-' (at most 63 characters)".into(),
        },
        Case {
            name: "a firmware that is not the engine's",
            doctor: Box::new(|dir: &Path| doctor(dir, &[], |m| m["boot"]["firmware_path"] = json!("/etc/shadow"))),
            error: "its firmware /etc/shadow is not this engine's firmware".into(),
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        // Import of a doctored archive.
        let dir = lab.env.path().join(format!("case{i}"));
        copy_dir(&clean, &dir);
        (case.doctor)(&dir);
        let evil = lab.env.path().join(format!("case{i}.tar"));
        retar(&dir, &evil);
        let before = world(&lab, &outside, &snap_dir);
        let err = lab.fail(&["snapshot", "import", evil.to_str().unwrap()]);
        assert!(
            err.starts_with("Error: the archive's manifest is not usable: ")
                && err.contains(&case.error),
            "{}: {err}",
            case.name
        );
        assert_world(&lab, &outside, &snap_dir, &before, case.name);
        assert_no_stray_import(&lab);

        // Clone of a snapshot doctored in place (as if it had come in before
        // these checks): refused the same way.
        let name = format!("inplace{i}");
        let id = lab
            .ok(&[
                "snapshot",
                "import",
                "--name",
                &name,
                good.to_str().unwrap(),
            ])
            .trim()
            .to_string();
        let inplace = lab.env.root_dir().join("snapshots").join(&id);
        assert!(inplace.is_dir(), "{}", inplace.display());
        (case.doctor)(&inplace);
        let before = world(&lab, &outside, &snap_dir);
        let err = lab.fail(&["vm", "clone", "--name", &format!("c{i}"), &name]);
        // "snapshot ID: <reason>" from the checks, or "snapshot ID is
        // damaged: bad cocoon.json: <reason>" for a manifest not even read
        // (a refused name).
        assert!(
            err.starts_with(&format!("Error: snapshot {id}")) && err.contains(&case.error),
            "{} (clone): {err}",
            case.name
        );
        assert_world(&lab, &outside, &snap_dir, &before, case.name);
        lab.ok(&["snapshot", "rm", &name]);
    }

    // `--name` replaces an archive's refused name, which is then not read.
    let i = cases
        .iter()
        .position(|c| c.name == "a snapshot name with a path")
        .unwrap();
    let evil = lab.env.path().join(format!("case{i}.tar"));
    let id = lab.ok(&[
        "snapshot",
        "import",
        "--name",
        "renamed",
        evil.to_str().unwrap(),
    ]);
    let renamed: Value =
        serde_json::from_str(&lab.ok(&["snapshot", "inspect", "renamed"])).unwrap();
    assert_eq!(renamed["id"], id.trim());
    assert_eq!(renamed["name"], "renamed");
    lab.ok(&["snapshot", "rm", "renamed"]);

    // cocoon.json changed after export, its trailer kept: refused.
    let dir = lab.env.path().join("changed");
    copy_dir(&clean, &dir);
    edit_json(&dir.join("cocoon.json"), |m| {
        m["snapshot"]["description"] = json!("changed")
    });
    let evil = lab.env.path().join("changed.tar");
    retar(&dir, &evil);
    let before = world(&lab, &outside, &snap_dir);
    let err = lab.fail(&["snapshot", "import", evil.to_str().unwrap()]);
    assert!(
        err.contains("manifest cocoon.json: its sha256 ")
            && err.contains(
                "in cocoon.json.sha256; the manifest was changed or corrupted after export"
            ),
        "{err}"
    );
    assert_world(&lab, &outside, &snap_dir, &before, "changed manifest");
    assert_no_stray_import(&lab);
    // Without the trailer (this engine's previous format) it imports.
    std::fs::remove_file(dir.join("cocoon.json.sha256")).unwrap();
    retar(&dir, &evil);
    lab.ok(&[
        "snapshot",
        "import",
        "--name",
        "old-format",
        evil.to_str().unwrap(),
    ]);

    lab.ok(&["vm", "rm", "--force", "src"]);
}

/// No half-made import is left in the snapshot store.
fn assert_no_stray_import(lab: &Lab) {
    let root = lab.env.root_dir().join("snapshots");
    for entry in std::fs::read_dir(&root).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with(".import-"), "{name} left behind");
    }
}

/// A few compressed bytes declaring hundreds of gigabytes: refused before a
/// byte is written, for want of space.
#[test]
fn declared_sizes_over_free_space_are_refused_before_writing() {
    let lab = Lab::new();
    let outside = lab.env.path().join("outside");
    hostile_support::plant(&outside);
    let before = hostile_support::snapshot(&outside, &[]);
    let huge: u64 = 900 << 30;
    let manifest = json!({
        "version": 1,
        "files": {"cow.raw": {"size": huge, "sha256": "0".repeat(64)}},
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_path("cocoon.json").unwrap();
    h.set_size(manifest.len() as u64);
    h.set_mode(0o600);
    h.set_cksum();
    b.append(&h, &manifest[..]).unwrap();
    let size = huge.to_string();
    b.append_pax_extensions([("size", size.as_bytes())])
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_path("cow.raw").unwrap();
    h.set_size(0);
    h.set_mode(0o600);
    h.set_cksum();
    b.append(&h, std::io::empty()).unwrap();
    let archive = lab.env.path().join("bomb.tar");
    std::fs::write(&archive, b.into_inner().unwrap()).unwrap();
    let err = lab.fail(&["snapshot", "import", archive.to_str().unwrap()]);
    assert!(
        err.contains(&format!(
            "archive entry \"cow.raw\" declares {huge} bytes of data, more than the "
        )),
        "{err}"
    );
    assert_no_stray_import(&lab);
    hostile_support::assert_unchanged(&before, &hostile_support::snapshot(&outside, &[]));
}

/// A restore failing after its first disk swap (an error, or the CLI
/// killed there) leaves every old disk: none replaced, nothing staged left.
#[test]
fn restore_failing_after_the_first_swap_leaves_every_old_disk() {
    let lab = Lab::new();
    lab.ok(&[
        "vm",
        "run",
        "--nics",
        "0",
        "--name",
        "r",
        "--data-disk",
        "size=32M,name=db",
        "test/guest:1",
    ]);
    let mut reaper = Reaper(cocoon_testkit::processes_of(&lab.inspect("r")));
    lab.ok(&["snapshot", "save", "--name", "s", "r"]);
    let vm = lab.inspect("r");
    let disks: Vec<PathBuf> = disk_sums(&vm).into_keys().collect();
    assert_eq!(disks.len(), 2, "cow and data disk");
    for disk in &disks {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
        f.write_all_at(b"AFTER-THE-SNAPSHOT", 1 << 20).unwrap();
    }
    for action in ["error", "kill"] {
        let before = disk_sums(&lab.inspect("r"));
        let out = lab
            .cmd()
            .args(["vm", "restore", "r", "s"])
            .env("COCOON_FAILPOINTS", format!("vm.restore.swapped={action}"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        if action == "error" {
            assert!(
                String::from_utf8_lossy(&out.stderr)
                    .contains("failpoint vm.restore.swapped triggered"),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // The next command converges a killed one.
        let now = lab.inspect("r");
        assert_eq!(now["state"], "error", "{action}");
        assert_eq!(disk_sums(&now), before, "{action}: old disks, all of them");
        let run_dir = PathBuf::from(now["run_dir"].as_str().unwrap());
        for entry in std::fs::read_dir(&run_dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.contains(".restore-"), "{action}: {name} left behind");
        }
        lab.ok(&["vm", "start", "r"]);
        reaper
            .0
            .extend(cocoon_testkit::processes_of(&lab.inspect("r")));
    }
    // And a restore that runs through replaces them all.
    let before = disk_sums(&lab.inspect("r"));
    lab.ok(&["vm", "restore", "r", "s"]);
    let after = lab.inspect("r");
    reaper.0.extend(cocoon_testkit::processes_of(&after));
    let sums = disk_sums(&after);
    assert!(
        sums.iter().all(|(p, s)| before[p] != *s),
        "every disk restored"
    );
    lab.ok(&["vm", "rm", "--force", "r"]);
}

/// A clone of an imported snapshot (whose archive lists no blobs) pins the
/// layers its own disks use: after `image rm` and `gc` (blobs aged past the
/// grace period), they are still there and the clone starts again.
#[test]
fn a_clone_pins_its_own_disks_blobs_through_image_rm_and_gc() {
    if Command::new("tar").arg("--version").output().is_err() {
        return cocoon_testkit::skip("clone pins", "GNU tar is not installed");
    }
    let lab = Lab::new();
    lab.ok(&["vm", "run", "--nics", "0", "--name", "src", "test/guest:1"]);
    let mut reaper = Reaper(cocoon_testkit::processes_of(&lab.inspect("src")));
    lab.ok(&["snapshot", "save", "--name", "s", "src"]);
    let dir = lab.export_unpacked("s", "unpacked");
    doctor(&dir, &[], |m| m["snapshot"]["image_blob_ids"] = json!({}));
    lab.import_retarred(&dir, "noblobs.tar", "imp");
    lab.ok(&["vm", "clone", "--name", "c", "imp"]);
    let clone = lab.inspect("c");
    reaper.0.extend(cocoon_testkit::processes_of(&clone));
    let layers: Vec<PathBuf> = clone["storage_configs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["role"] == "layer")
        .map(|d| PathBuf::from(d["path"].as_str().unwrap()))
        .collect();
    assert!(!layers.is_empty());
    assert!(
        !clone["image_blob_ids"].as_object().unwrap().is_empty(),
        "the clone pins its layers: {}",
        clone["image_blob_ids"]
    );
    // Nothing else keeps them.
    lab.ok(&["vm", "rm", "--force", "src"]);
    lab.ok(&["snapshot", "rm", "s", "imp"]);
    lab.ok(&["image", "rm", "test/guest:1"]);
    // Past gc's grace period for blobs and boot files.
    for sub in ["images/blobs", "images/boot"] {
        for entry in std::fs::read_dir(lab.env.root_dir().join(sub)).unwrap() {
            run(Command::new("touch")
                .args(["-h", "-d", "2 hours ago"])
                .arg(entry.unwrap().path()));
        }
    }
    lab.ok(&["gc"]);
    for layer in &layers {
        assert!(layer.is_file(), "{} was collected", layer.display());
    }
    lab.ok(&["vm", "stop", "c"]);
    lab.ok(&["vm", "start", "c"]);
    reaper
        .0
        .extend(cocoon_testkit::processes_of(&lab.inspect("c")));
    assert_eq!(lab.inspect("c")["state"], "running");
    lab.ok(&["vm", "rm", "--force", "c"]);
}
