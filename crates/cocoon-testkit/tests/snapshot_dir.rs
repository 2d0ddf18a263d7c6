//! Snapshots by directory (`snapshot export --to-dir`, `vm clone
//! --from-dir`, `vm restore --from-dir [--force]`) with the fake VMMs: the
//! round trip, and every hostile directory refused with its exact message,
//! nothing recorded, nothing left behind (the real VMMs:
//! snapshot_lifecycle_real.rs).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use cocoon_engine::snapshot::manifest::sum_file;
use cocoon_testkit::CocoonEnv;
use serde_json::Value;

const FAKE: &str = env!("CARGO_BIN_EXE_fake-vmm");

struct Lab {
    env: CocoonEnv,
}

impl Drop for Lab {
    fn drop(&mut self) {
        cocoon_testkit::kill_all_under(&self.env.root_dir());
    }
}

impl Lab {
    /// A VM `src` (no NICs) with a snapshot `s`, exported to `<env>/d`.
    fn new() -> (Lab, PathBuf) {
        let lab = Lab {
            env: CocoonEnv::new(cocoon_testkit::cocoon_bin()),
        };
        let layer = cocoon_testkit::guest::boot_layer("6.1", b"initrd").build();
        let tar = lab.env.path().join("layer.tar");
        std::fs::write(&tar, layer).unwrap();
        lab.ok(&["image", "import", "test/guest:1", tar.to_str().unwrap()]);
        lab.ok(&["vm", "run", "--nics", "0", "--name", "src", "test/guest:1"]);
        lab.ok(&["snapshot", "save", "--name", "s", "src"]);
        let dir = lab.env.path().join("d");
        lab.ok(&["snapshot", "export", "--to-dir", dir.to_str().unwrap(), "s"]);
        (lab, dir)
    }

    fn cmd(&self) -> Command {
        self.env.fake_vmm_cmd(FAKE)
    }

    fn ok(&self, args: &[&str]) -> String {
        cocoon_testkit::run_ok(self.cmd(), args)
    }

    /// Fails with exit code 1; returns stderr.
    fn fail(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "cocoon {args:?} should fail: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    /// The names of VMs and snapshots, and what is under the snapshot store.
    fn world(&self) -> (Vec<String>, Vec<String>, Vec<String>) {
        let names = |list: Value, field: &str| -> Vec<String> {
            let mut v: Vec<String> = list
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.pointer(field).unwrap().to_string())
                .collect();
            v.sort();
            v
        };
        let mut dirs: Vec<String> = std::fs::read_dir(self.env.root_dir().join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        dirs.sort();
        (
            names(self.json(&["vm", "ls", "-o", "json"]), "/config/name"),
            names(self.json(&["snapshot", "ls", "-o", "json"]), "/id"),
            dirs,
        )
    }
}

fn file_of(dir: &Path, role: &str) -> PathBuf {
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("cocoon.json")).unwrap()).unwrap();
    let disk = manifest["storage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["role"] == role)
        .unwrap()
        .clone();
    let name = Path::new(disk["path"].as_str().unwrap())
        .file_name()
        .unwrap()
        .to_owned();
    dir.join(name)
}

/// Rewrites the manifest's entry for `file` to its current size and sum.
fn relist(dir: &Path, file: &Path) {
    let path = dir.join("cocoon.json");
    let mut manifest: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let name = file.file_name().unwrap().to_str().unwrap();
    let sum = sum_file(file).unwrap();
    manifest["files"][name] = serde_json::json!({"size": sum.size, "sha256": sum.sha256});
    std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
}

#[test]
fn export_to_dir_then_clone_and_restore_from_it() {
    let (lab, dir) = Lab::new();
    // Plain files, the snapshot's own, the manifest among them; no archive.
    let snap = lab.json(&["snapshot", "inspect", "s"]);
    let data = PathBuf::from(snap["data_dir"].as_str().unwrap());
    let mut ours: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut theirs: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs);
    for name in &theirs {
        let (a, b) = (data.join(name), dir.join(name));
        assert!(std::fs::symlink_metadata(&b).unwrap().is_file());
        assert_eq!(
            std::fs::read(&a).unwrap(),
            std::fs::read(&b).unwrap(),
            "{name}"
        );
    }
    // Sparse copies keep the holes (a reflink shares them).
    let cow = file_of(&dir, "cow");
    let meta = std::fs::metadata(&cow).unwrap();
    assert!(
        meta.blocks() * 512 < meta.len(),
        "the cow copy is not sparse"
    );

    // An export never merges into an unrelated tree.
    let err = lab.fail(&["snapshot", "export", "--to-dir", dir.to_str().unwrap(), "s"]);
    assert!(
        err.contains(&format!(
            "{} is not empty; export into a new or empty directory",
            dir.display()
        )),
        "{err}"
    );

    let before = lab.world();
    lab.ok(&[
        "vm",
        "clone",
        "--name",
        "c",
        "--from-dir",
        dir.to_str().unwrap(),
    ]);
    let c = lab.json(&["vm", "inspect", "c"]);
    assert_eq!(c["state"], "running");
    // The imported copy is dropped once used.
    assert_eq!(lab.world().1, before.1, "snapshots after the clone");
    assert_eq!(lab.world().2, before.2, "snapshot store after the clone");

    lab.ok(&["vm", "restore", "--from-dir", dir.to_str().unwrap(), "src"]);
    assert_eq!(lab.json(&["vm", "inspect", "src"])["state"], "running");
    // A directory taken from another VM needs --force.
    let err = lab.fail(&["vm", "restore", "--from-dir", dir.to_str().unwrap(), "c"]);
    let src_id = lab.json(&["vm", "inspect", "src"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let c_id = c["id"].as_str().unwrap();
    assert!(
        err.contains(&format!(
            "snapshot directory {} was taken from VM {src_id}, not from VM c ({c_id}); pass --force to restore it anyway, or use `cocoon vm clone --from-dir` to start a new VM from it",
            dir.display()
        )),
        "{err}"
    );
    lab.ok(&[
        "vm",
        "restore",
        "--force",
        "--from-dir",
        dir.to_str().unwrap(),
        "c",
    ]);
    assert_eq!(lab.world().1, before.1, "snapshots after the restores");
    // --force alone is a usage error (as upstream: only with --from-dir).
    let err = lab.fail(&["vm", "restore", "--force", "c", "s"]);
    assert!(
        err.contains("--force only applies with --from-dir"),
        "{err}"
    );
}

/// Each hostile directory: refused with its reason, nothing recorded, no
/// VM made, nothing left in the snapshot store.
#[test]
fn hostile_directories_are_refused() {
    type Spoil = fn(&Path) -> String;
    let cases: [(&str, Spoil); 7] = [
        ("a symlinked file", |d| {
            let cow = file_of(d, "cow");
            let name = cow.file_name().unwrap().to_str().unwrap().to_string();
            let outside = d.with_file_name("elsewhere");
            std::fs::rename(&cow, &outside).unwrap();
            std::os::unix::fs::symlink(&outside, &cow).unwrap();
            format!("{name}: cannot open it as a regular file (links are not followed)")
        }),
        ("an unlisted file", |d| {
            std::fs::write(d.join("extra"), b"x").unwrap();
            "\"extra\" is not a file its cocoon.json lists".into()
        }),
        ("a subdirectory", |d| {
            std::fs::create_dir(d.join("sub")).unwrap();
            "\"sub\" is not a file its cocoon.json lists".into()
        }),
        ("a changed byte", |d| {
            let cow = file_of(d, "cow");
            let f = std::fs::OpenOptions::new().write(true).open(&cow).unwrap();
            std::os::unix::fs::FileExt::write_at(&f, b"X", 4096).unwrap();
            format!(
                "{} does not match its checksum in cocoon.json",
                cow.file_name().unwrap().to_str().unwrap()
            )
        }),
        ("a size that is not the manifest's", |d| {
            let cow = file_of(d, "cow");
            let f = std::fs::OpenOptions::new().write(true).open(&cow).unwrap();
            let len = f.metadata().unwrap().len();
            f.set_len(len + 4096).unwrap();
            format!(
                "{} is {} bytes, its cocoon.json says {len}",
                cow.file_name().unwrap().to_str().unwrap(),
                len + 4096
            )
        }),
        (
            "a cow of the wrong size, listed as such (upstream #230)",
            |d| {
                let cow = file_of(d, "cow");
                let f = std::fs::OpenOptions::new().write(true).open(&cow).unwrap();
                let len = f.metadata().unwrap().len();
                f.set_len(len / 2).unwrap();
                relist(d, &cow);
                format!(
                    "its copy {:?} is {} bytes, but the snapshot's root disk is {len} bytes",
                    cow.file_name().unwrap().to_str().unwrap(),
                    len / 2
                )
            },
        ),
        ("no manifest", |d| {
            std::fs::remove_file(d.join("cocoon.json")).unwrap();
            "no readable cocoon.json".into()
        }),
    ];
    for (case, spoil) in cases {
        let (lab, dir) = Lab::new();
        let want = spoil(&dir);
        let before = lab.world();
        for args in [
            vec![
                "vm",
                "clone",
                "--name",
                "c",
                "--from-dir",
                dir.to_str().unwrap(),
            ],
            vec!["vm", "restore", "--from-dir", dir.to_str().unwrap(), "src"],
        ] {
            let err = lab.fail(&args);
            assert!(
                err.contains(&format!("cannot use snapshot directory {}", dir.display()))
                    || want.contains("root disk"),
                "{case}: {err}"
            );
            assert!(err.contains(&want), "{case}: {args:?}: {err}");
            assert_eq!(lab.world(), before, "{case}: {args:?} left something");
            assert_eq!(lab.json(&["vm", "inspect", "src"])["state"], "running");
        }
    }
    // The directory itself a link.
    let (lab, dir) = Lab::new();
    let link = lab.env.path().join("link");
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    let err = lab.fail(&["vm", "clone", "--from-dir", link.to_str().unwrap()]);
    assert!(
        err.contains("cannot open it as a directory (links are not followed)"),
        "{err}"
    );
}
