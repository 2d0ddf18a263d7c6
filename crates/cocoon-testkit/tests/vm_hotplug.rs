//! `vm disk attach`/`detach` through the real `cocoon` binary against the
//! fake Cloud Hypervisor: what the VMM is asked (`vm.add-disk` with the
//! disk's id, serial, path and switches; `vm.remove-device`), the record
//! and `-o json`, and every user mistake with its exact error and nothing
//! changed (no record, no VMM device, the user's file untouched).

use std::path::{Path, PathBuf};

use cocoon_testkit::CocoonEnv;
use serde_json::{Value, json};

const FAKE: &str = env!("CARGO_BIN_EXE_fake-vmm");

struct Lab {
    env: CocoonEnv,
    files: tempfile::TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        cocoon_testkit::kill_all_under(&self.env.root_dir());
    }
}

impl Lab {
    /// A running VM `m` on the fake CH.
    fn new() -> Lab {
        let lab = Lab {
            env: CocoonEnv::new(cocoon_testkit::cocoon_bin()),
            files: tempfile::tempdir().unwrap(),
        };
        let layer = cocoon_testkit::guest::boot_layer("6.1", b"initrd").build();
        let tar = lab.env.path().join("layer.tar");
        std::fs::write(&tar, layer).unwrap();
        lab.ok(&["image", "import", "test/guest:1", tar.to_str().unwrap()]);
        lab.ok(&["vm", "run", "--nics", "0", "--name", "m", "test/guest:1"]);
        lab
    }

    fn ok(&self, args: &[&str]) -> String {
        cocoon_testkit::run_ok(self.env.fake_vmm_cmd(FAKE), args)
    }

    /// The exit code and stderr of a command that must fail.
    fn fail(&self, args: &[&str]) -> (i32, String) {
        let out = self.env.fake_vmm_cmd(FAKE).args(args).output().unwrap();
        assert!(!out.status.success(), "cocoon {args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code().unwrap_or(-1), err)
    }

    fn inspect(&self, vm: &str) -> Value {
        serde_json::from_str(&self.ok(&["vm", "inspect", vm])).unwrap()
    }

    /// A 16 MiB file of the user's.
    fn file(&self, name: &str) -> String {
        let path = self.files.path().join(name);
        std::fs::File::create(&path)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        path.to_str().unwrap().to_string()
    }

    /// The disks the fake VMM's configuration has.
    fn vmm_disks(&self) -> Vec<Value> {
        let vm = self.inspect("m");
        let socket = PathBuf::from(vm["run_dir"].as_str().unwrap()).join("api.sock");
        let info = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(vmm_api::ch::CloudHypervisor::new(&socket).info())
            .unwrap();
        info.config["disks"].as_array().unwrap().clone()
    }

    /// (the record's disks, the VMM's disks): what "nothing changed" compares.
    fn state(&self) -> (Value, Vec<Value>) {
        (
            self.inspect("m")["storage_configs"].clone(),
            self.vmm_disks(),
        )
    }
}

fn attached(vm: &Value) -> Vec<Value> {
    vm["storage_configs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["external"] == true)
        .cloned()
        .collect()
}

#[test]
fn attach_asks_the_vmm_and_records_the_disk() {
    let lab = Lab::new();
    let path = lab.file("data.raw");
    let out = lab.ok(&[
        "vm",
        "disk",
        "attach",
        "m",
        "--path",
        &path,
        "--name",
        "data",
        "--readonly",
        "--directio",
        "off",
        "-o",
        "json",
    ]);
    let out: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        out,
        json!({"vm": "m", "name": "data", "id": "cocoon-disk-data"})
    );
    let disks = lab.vmm_disks();
    let disk = disks
        .iter()
        .find(|d| d["id"] == "cocoon-disk-data")
        .unwrap();
    assert_eq!(disk["path"], path.as_str());
    assert_eq!(disk["serial"], "data");
    assert_eq!(disk["readonly"], true);
    assert_eq!(disk["direct"], false);
    let vm = lab.inspect("m");
    let recorded = attached(&vm);
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0]["path"], path.as_str());
    assert_eq!(recorded[0]["serial"], "data");
    assert_eq!(recorded[0]["ro"], true);
    assert_eq!(recorded[0]["role"], "data");
    assert_eq!(recorded[0]["fstype"], "none");

    // A read-only attached disk blocks snapshots (a clone must never open a host file).
    let before = lab.state();
    let (code, err) = lab.fail(&["snapshot", "save", "m"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(
            "disk data is attached read-only: a snapshot keeps copies of writable disks only"
        ),
        "{err}"
    );
    assert!(err.contains("cocoon vm disk detach m --name data"), "{err}");
    assert_eq!(lab.state(), before);
    let snapshots = lab.ok(&["snapshot", "ls", "-o", "json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&snapshots).unwrap(),
        json!([])
    );

    let out = lab.ok(&["vm", "disk", "detach", "m", "--name", "data", "-o", "json"]);
    let out: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(out, json!({"vm": "m", "name": "data"}));
    assert!(
        !lab.vmm_disks()
            .iter()
            .any(|d| d["id"] == "cocoon-disk-data")
    );
    assert!(attached(&lab.inspect("m")).is_empty());
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        16 << 20,
        "the file stays"
    );
}

#[test]
fn a_writable_attached_disk_goes_into_snapshots_and_clones() {
    let lab = Lab::new();
    let path = lab.file("scratch.raw");
    lab.ok(&[
        "vm", "disk", "attach", "m", "--path", &path, "--name", "scratch",
    ]);
    lab.ok(&["snapshot", "save", "--name", "s", "m"]);
    lab.ok(&["vm", "clone", "--name", "c", "s"]);
    let clone = lab.inspect("c");
    let disks = attached(&clone);
    assert_eq!(disks.len(), 1, "{clone:#}");
    let copy = disks[0]["path"].as_str().unwrap();
    assert_eq!(
        Path::new(copy),
        Path::new(clone["run_dir"].as_str().unwrap()).join("scratch.raw"),
        "the clone's own copy"
    );
    assert_eq!(disks[0]["serial"], "scratch");
}

#[test]
fn user_mistakes_are_refused_with_their_reason_and_change_nothing() {
    let lab = Lab::new();
    let path = lab.file("data.raw");
    lab.ok(&[
        "vm", "disk", "attach", "m", "--path", &path, "--name", "data",
    ]);
    let before = lab.state();
    let other = lab.file("other.raw");
    std::os::unix::fs::symlink(&other, lab.files.path().join("link.raw")).unwrap();
    let link = lab.files.path().join("link.raw");
    let own = lab.env.root_dir().join("own.raw");
    std::fs::write(&own, b"").unwrap();
    let dir = lab.files.path().to_str().unwrap().to_string();
    let cases: Vec<(Vec<&str>, i32, String)> = vec![
        (
            vec!["vm", "disk", "attach", "nope", "--path", &other, "--name", "x"],
            1,
            "no such VM \"nope\": vm not found by ID, name or ID prefix".into(),
        ),
        (
            vec!["vm", "disk", "attach", "m", "--path", &other, "--name", "data"],
            1,
            "VM m already has a disk named data; pick another --name or --path, or detach it first (`cocoon vm disk detach m --name data`)".into(),
        ),
        (
            vec!["vm", "disk", "attach", "m", "--path", &path, "--name", "again"],
            1,
            format!("VM m already has {path} as disk \"data\""),
        ),
        (
            vec!["vm", "disk", "attach", "m", "--path", "rel.raw", "--name", "x"],
            2,
            "invalid --path rel.raw: must be an absolute path".into(),
        ),
        (
            vec!["vm", "disk", "attach", "m", "--path", "/nonexistent/x.raw", "--name", "x"],
            2,
            "invalid --path /nonexistent/x.raw: No such file or directory".into(),
        ),
        (
            vec!["vm", "disk", "attach", "m", "--path", &dir, "--name", "x"],
            2,
            format!("invalid --path {dir}: is neither a regular file nor a block device"),
        ),
        (
            vec!["vm", "disk", "attach", "m", "--path", link.to_str().unwrap(), "--name", "x"],
            2,
            "is a symbolic link; give the path of the file itself".into(),
        ),
        (
            vec!["vm", "disk", "attach", "m", "--path", own.to_str().unwrap(), "--name", "x"],
            2,
            "is inside cocoon's own directory".into(),
        ),
        (
            vec!["vm", "disk", "attach", "m", "--path", &other, "--name", "Bad!"],
            2,
            "invalid disk name \"Bad!\": must match [a-z][a-z0-9_-]{0,19}".into(),
        ),
        (
            vec!["vm", "disk", "attach", "m", "--path", &other, "--name", "cocoon-x"],
            2,
            "must not start with \"cocoon-\"".into(),
        ),
        (
            vec!["vm", "disk", "detach", "m", "--name", "nope"],
            1,
            "VM m has no attached disk named nope".into(),
        ),
        (
            vec!["vm", "disk", "attach", "m", "--path", &other, "--name", "x", "--directio", "maybe"],
            2,
            "invalid value 'maybe' for '--directio".into(),
        ),
    ];
    for (args, code, message) in cases {
        let (got, err) = lab.fail(&args);
        assert!(err.contains(&message), "{args:?}: {err}");
        assert_eq!(got, code, "{args:?}: {err}");
        assert_eq!(lab.state(), before, "{args:?} changed something");
    }
    assert!(Path::new(&other).is_file() && own.is_file());

    // A stopped VM: nothing to plug into.
    lab.ok(&["vm", "stop", "m"]);
    let recorded = lab.inspect("m")["storage_configs"].clone();
    let (code, err) = lab.fail(&["vm", "disk", "attach", "m", "--path", &other, "--name", "x"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("VM m (") && err.contains("is not running; start it with `cocoon vm start m`"),
        "{err}"
    );
    let (_, err) = lab.fail(&["vm", "disk", "detach", "m", "--name", "data"]);
    assert!(err.contains("is not running"), "{err}");
    assert_eq!(lab.inspect("m")["storage_configs"], recorded);
}
