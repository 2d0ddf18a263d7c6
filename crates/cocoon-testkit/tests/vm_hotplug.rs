//! `vm disk attach`/`detach` through the real `cocoon` binary against the
//! fake Cloud Hypervisor: what the VMM is asked (`vm.add-disk` with the
//! disk's id, serial, path and switches; `vm.remove-device`), the record
//! and `-o json`, and every user mistake with its exact error and nothing
//! changed (no record, no VMM device, the user's file untouched); `vm fs
//! attach`/`detach` the same way (`vm.add-fs` to a socket of the test's).

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
        Lab::with(&[])
    }

    /// A running VM `m` on the fake CH, created with `flags` too.
    fn with(flags: &[&str]) -> Lab {
        let lab = Lab {
            env: CocoonEnv::new(cocoon_testkit::cocoon_bin()),
            files: tempfile::tempdir().unwrap(),
        };
        let layer = cocoon_testkit::guest::boot_layer("6.1", b"initrd").build();
        let tar = lab.env.path().join("layer.tar");
        std::fs::write(&tar, layer).unwrap();
        lab.ok(&["image", "import", "test/guest:1", tar.to_str().unwrap()]);
        let mut run = vec!["vm", "run", "--nics", "0", "--name", "m"];
        run.extend_from_slice(flags);
        run.push("test/guest:1");
        lab.ok(&run);
        lab
    }

    fn ok(&self, args: &[&str]) -> String {
        cocoon_testkit::run_ok(self.cmd(), args)
    }

    /// The fake VMM's command; the host's PCI devices are the test's fake
    /// sysfs (read by builds with failpoints only).
    fn cmd(&self) -> std::process::Command {
        let mut cmd = self.env.fake_vmm_cmd(FAKE);
        cmd.env("COCOON_TEST_SYSFS_PCI", self.files.path().join("sysfs"));
        cmd
    }

    /// The exit code and stderr of a command that must fail.
    fn fail(&self, args: &[&str]) -> (i32, String) {
        let out = self.cmd().args(args).output().unwrap();
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
        self.vmm_list("disks")
    }

    fn vmm_disks_of(&self, name: &str) -> Vec<Value> {
        self.vmm_list_of(name, "disks")
    }

    /// The devices of one kind (`disks`, `fs`) the fake VMM's configuration has.
    fn vmm_list(&self, kind: &str) -> Vec<Value> {
        self.vmm_list_of("m", kind)
    }

    fn vmm_list_of(&self, name: &str, kind: &str) -> Vec<Value> {
        let vm = self.inspect(name);
        let socket = PathBuf::from(vm["run_dir"].as_str().unwrap()).join("api.sock");
        let info = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(vmm_api::ch::CloudHypervisor::new(&socket).info())
            .unwrap();
        info.config[kind].as_array().cloned().unwrap_or_default()
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

fn vm_ids(lab: &Lab) -> Vec<Value> {
    let vms: Value = serde_json::from_str(&lab.ok(&["vm", "ls", "-o", "json"])).unwrap();
    vms.as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].clone())
        .collect()
}

/// `vm clone --data-disk` (upstream #100): a new, formatted data disk in the
/// clone's directory, recorded after the snapshot's disks and hot-plugged
/// by the restore; a name the snapshot has, and Firecracker, are refused
/// before anything is made.
#[test]
fn clone_data_disk_adds_a_new_disk_to_the_clone() {
    let lab = Lab::new();
    lab.ok(&["snapshot", "save", "--name", "s", "m"]);
    lab.ok(&[
        "vm",
        "clone",
        "--name",
        "c",
        "--data-disk",
        "size=32M,name=extra",
        "s",
    ]);
    let clone = lab.inspect("c");
    let run = PathBuf::from(clone["run_dir"].as_str().unwrap());
    let disks = clone["storage_configs"].as_array().unwrap();
    let extra = disks.iter().find(|d| d["serial"] == "extra").unwrap();
    assert_eq!(extra["role"], "data");
    assert_eq!(extra["external"], Value::Null, "{extra}");
    assert_eq!(extra["fstype"], "ext4");
    let path = run.join("data-extra.raw");
    assert_eq!(extra["path"], path.to_str().unwrap());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 32 << 20);
    assert!(
        lab.vmm_disks_of("c")
            .iter()
            .any(|d| d["path"] == path.to_str().unwrap()),
        "the restored VMM has the new disk"
    );
    // Back after a cold start too (it is one of the clone's disks now).
    lab.ok(&["vm", "stop", "c"]);
    lab.ok(&["vm", "start", "c"]);
    assert!(
        lab.vmm_disks_of("c")
            .iter()
            .any(|d| d["path"] == path.to_str().unwrap())
    );

    // A name the snapshot's disks have: refused, nothing made.
    lab.ok(&["snapshot", "save", "--name", "s2", "c"]);
    let before = vm_ids(&lab);
    let (code, err) = lab.fail(&[
        "vm",
        "clone",
        "--name",
        "d",
        "--data-disk",
        "size=32M,name=extra",
        "s2",
    ]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err.trim_end(),
        "Error: the snapshot already has a disk named extra; give the new data disk another name"
    );
    assert_eq!(vm_ids(&lab), before);

    // Firecracker cannot add a drive to a restored VM: refused, nothing made.
    lab.ok(&[
        "vm",
        "run",
        "--fc",
        "--nics",
        "0",
        "--name",
        "f",
        "test/guest:1",
    ]);
    lab.ok(&["snapshot", "save", "--name", "fs", "f"]);
    let before = vm_ids(&lab);
    let (code, err) = lab.fail(&[
        "vm",
        "clone",
        "--name",
        "g",
        "--data-disk",
        "size=32M,name=extra",
        "fs",
    ]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err.trim_end(),
        "Error: cannot add data disk extra to a clone: Firecracker restores exactly the drives its snapshot has and cannot add one (its API takes drives before boot only); clone without --data-disk, or take the snapshot of a VM created with the disk (`cocoon vm create --data-disk ...`)"
    );
    assert_eq!(vm_ids(&lab), before);
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

/// A listening Unix socket of the test's, standing for virtiofsd's.
fn virtiofsd_socket(lab: &Lab, name: &str) -> (std::os::unix::net::UnixListener, String) {
    let path = lab.files.path().join(name);
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    (listener, path.to_str().unwrap().to_string())
}

/// (the record's shares, the VMM's shares).
fn fs_state(lab: &Lab) -> (Value, Vec<Value>) {
    (lab.inspect("m")["filesystems"].clone(), lab.vmm_list("fs"))
}

#[test]
fn fs_attach_asks_the_vmm_records_the_share_and_blocks_snapshots() {
    let lab = Lab::with(&["--shared-memory"]);
    let (_server, socket) = virtiofsd_socket(&lab, "vfs.sock");
    let out = lab.ok(&[
        "vm", "fs", "attach", "m", "--socket", &socket, "--tag", "share", "-o", "json",
    ]);
    let out: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        out,
        json!({"vm": "m", "tag": "share", "id": "cocoon-fs-share"})
    );
    let fs = lab.vmm_list("fs");
    assert_eq!(fs.len(), 1, "{fs:?}");
    assert_eq!(
        fs[0],
        json!({"id": "cocoon-fs-share", "tag": "share", "socket": socket, "num_queues": 1, "queue_size": 1024})
    );
    assert_eq!(
        lab.inspect("m")["filesystems"],
        json!([{"tag": "share", "socket": socket, "num_queues": 1, "queue_size": 1024}])
    );

    // No snapshot nor hibernation while it is there.
    let before = fs_state(&lab);
    for args in [&["snapshot", "save", "m"][..], &["vm", "hibernate", "m"]] {
        let (code, err) = lab.fail(args);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains("virtio-fs share share is attached: virtiofsd cannot hand its state over")
                && err.contains("cocoon vm fs detach m --tag share"),
            "{err}"
        );
        assert_eq!(fs_state(&lab), before);
    }
    let snapshots = lab.ok(&["snapshot", "ls", "-o", "json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&snapshots).unwrap(),
        json!([])
    );

    let out = lab.ok(&["vm", "fs", "detach", "m", "--tag", "share", "-o", "json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!({"vm": "m", "tag": "share"})
    );
    assert_eq!(fs_state(&lab), (Value::Null, vec![]));
    lab.ok(&["snapshot", "save", "--name", "s", "m"]);

    // Recorded: back after a stop and a start while virtiofsd is there.
    lab.ok(&[
        "vm",
        "fs",
        "attach",
        "m",
        "--socket",
        &socket,
        "--tag",
        "Two_2",
        "--num-queues",
        "2",
        "--queue-size",
        "256",
    ]);
    let fs = lab.vmm_list("fs");
    assert_eq!(
        (fs[0]["num_queues"].clone(), fs[0]["queue_size"].clone()),
        (json!(2), json!(256))
    );
    lab.ok(&["vm", "stop", "m"]);
    let recorded = json!([{"tag": "Two_2", "socket": socket, "num_queues": 2, "queue_size": 256}]);
    assert_eq!(lab.inspect("m")["filesystems"], recorded);
    lab.ok(&["vm", "start", "m"]);
    assert_eq!(fs_state(&lab), (recorded, fs));
    // Gone (virtiofsd exits with the VMM it served): the VM starts without it.
    lab.ok(&["vm", "stop", "m"]);
    drop(_server);
    std::fs::remove_file(&socket).unwrap();
    let out = lab.cmd().args(["vm", "start", "m"]).output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("VM m: virtio-fs share Two_2 is not attached again (attach it with `cocoon vm fs attach`)"),
        "{err}"
    );
    assert_eq!(fs_state(&lab), (Value::Null, vec![]));
    assert_eq!(lab.inspect("m")["state"], "running");
}

#[test]
fn fs_user_mistakes_are_refused_with_their_reason_and_change_nothing() {
    // Without --shared-memory, nothing can be attached.
    let plain = Lab::new();
    let (_server, socket) = virtiofsd_socket(&plain, "vfs.sock");
    let (code, err) = plain.fail(&["vm", "fs", "attach", "m", "--socket", &socket, "--tag", "t"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(
            "cannot attach a virtio-fs share to VM m: VM m was created without --shared-memory"
        ),
        "{err}"
    );
    assert_eq!(plain.vmm_list("fs"), Vec::<Value>::new());
    drop(plain);

    let lab = Lab::with(&["--shared-memory"]);
    let (_server, socket) = virtiofsd_socket(&lab, "vfs.sock");
    lab.ok(&[
        "vm", "fs", "attach", "m", "--socket", &socket, "--tag", "share",
    ]);
    let before = fs_state(&lab);
    let file = lab.file("plain.raw");
    let link = lab.files.path().join("link.sock");
    std::os::unix::fs::symlink(&socket, &link).unwrap();
    let own = lab.env.root_dir().join("own.sock");
    let _own = std::os::unix::net::UnixListener::bind(&own).unwrap();
    let (_gone, gone) = virtiofsd_socket(&lab, "gone.sock");
    std::fs::remove_file(&gone).unwrap();
    let attach = |socket: &str, tag: &str| -> Vec<String> {
        ["vm", "fs", "attach", "m", "--socket", socket, "--tag", tag]
            .map(str::to_string)
            .to_vec()
    };
    let with = |mut args: Vec<String>, more: &[&str]| {
        args.extend(more.iter().map(|s| s.to_string()));
        args
    };
    let cases: Vec<(Vec<String>, i32, String)> = vec![
        (
            attach(&socket, "share"),
            1,
            "VM m already has a virtio-fs share tagged share; pick another --tag, or detach it first (`cocoon vm fs detach m --tag share`)".into(),
        ),
        (attach("rel.sock", "x"), 2, "invalid --socket rel.sock: must be an absolute path".into()),
        (attach(&gone, "x"), 2, format!("invalid --socket {gone}: No such file or directory")),
        (attach(&file, "x"), 2, format!("invalid --socket {file}: is not a Unix socket; start virtiofsd")),
        (
            attach(link.to_str().unwrap(), "x"),
            2,
            "is a symbolic link; give the path of the socket itself".into(),
        ),
        (attach(own.to_str().unwrap(), "x"), 2, "is inside cocoon's own directory".into()),
        (
            attach(&socket, "_bad"),
            2,
            "invalid tag \"_bad\": must match [A-Za-z0-9][A-Za-z0-9_-]{0,35}".into(),
        ),
        (attach(&socket, &"a".repeat(37)), 2, "invalid tag".into()),
        (
            with(attach(&socket, "x"), &["--queue-size", "1000"]),
            2,
            "invalid --queue-size 1000: must be a power of two up to 32768".into(),
        ),
        (with(attach(&socket, "x"), &["--num-queues=-1"]), 2, "invalid value '-1' for '--num-queues".into()),
        (
            ["vm", "fs", "detach", "m", "--tag", "nope"].map(str::to_string).to_vec(),
            1,
            "VM m has no virtio-fs share tagged nope".into(),
        ),
        (attach(&socket, "x")[..6].to_vec(), 2, "--tag <TAG>".into()),
    ];
    for (args, code, message) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (got, err) = lab.fail(&args);
        assert!(err.contains(&message), "{args:?}: {err}");
        assert_eq!(got, code, "{args:?}: {err}");
        assert_eq!(fs_state(&lab), before, "{args:?} changed something");
    }

    // A share the VMM refuses (here: nobody listens any more) is not recorded.
    let (dead_server, dead) = virtiofsd_socket(&lab, "dead.sock");
    drop(dead_server);
    let (code, err) = lab.fail(&[
        "vm", "fs", "attach", "m", "--socket", &dead, "--tag", "dead",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot attach virtio-fs share dead on VM m: vm.add-fs: the VMM refused")
            && err.contains("the VM is as it was"),
        "{err}"
    );
    assert_eq!(fs_state(&lab), before);

    lab.ok(&["vm", "stop", "m"]);
    let (code, err) = lab.fail(&["vm", "fs", "attach", "m", "--socket", &socket, "--tag", "x"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("is not running; start it with `cocoon vm start m`"),
        "{err}"
    );
    let (_, err) = lab.fail(&["vm", "fs", "detach", "m", "--tag", "share"]);
    assert!(err.contains("is not running"), "{err}");
    assert_eq!(
        lab.inspect("m")["filesystems"],
        before.0,
        "kept for the next start"
    );
}

/// A fake `/sys/bus/pci/devices`: 01:00.0 bound to vfio-pci (with an IOMMU
/// group, which the fake CH opens), 02:00.0 to nvme, 03:00.0 to nothing.
/// False (after a loud skip) when the binary under test cannot read it.
fn fake_sysfs(lab: &Lab) -> bool {
    if !lab.ok(&["version"]).contains("failpoints") {
        cocoon_testkit::skip(
            "vm device",
            "the cocoon binary under test was built without failpoints (its sysfs seam)",
        );
        return false;
    }
    let root = lab.files.path().join("sysfs");
    for (bdf, driver) in [
        ("0000:01:00.0", Some("vfio-pci")),
        ("0000:02:00.0", Some("nvme")),
        ("0000:03:00.0", None),
    ] {
        let dir = root.join(bdf);
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(driver) = driver {
            std::os::unix::fs::symlink(
                format!("../../../bus/pci/drivers/{driver}"),
                dir.join("driver"),
            )
            .unwrap();
        }
        std::os::unix::fs::symlink("../../../kernel/iommu_groups/7", dir.join("iommu_group"))
            .unwrap();
    }
    true
}

fn device_state(lab: &Lab) -> (Value, Vec<Value>) {
    (
        lab.inspect("m")["pci_devices"].clone(),
        lab.vmm_list("devices"),
    )
}

#[test]
fn device_attach_asks_the_vmm_records_the_device_and_blocks_snapshots() {
    let lab = Lab::new();
    if !fake_sysfs(&lab) {
        return;
    }
    let sysfs = lab.files.path().join("sysfs/0000:01:00.0");
    let out = lab.ok(&[
        "vm",
        "device",
        "attach",
        "m",
        "--pci",
        "0000:01:00.0",
        "--id",
        "gpu0",
        "-o",
        "json",
    ]);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!({"vm": "m", "pci": "0000:01:00.0", "id": "gpu0"})
    );
    assert_eq!(
        lab.vmm_list("devices"),
        [json!({"id": "gpu0", "path": sysfs.to_str().unwrap()})]
    );
    assert_eq!(
        lab.inspect("m")["pci_devices"],
        json!([{"id": "gpu0", "bdf": "0000:01:00.0"}])
    );
    let before = device_state(&lab);
    for args in [&["snapshot", "save", "m"][..], &["vm", "hibernate", "m"]] {
        let (code, err) = lab.fail(args);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains("PCI device gpu0 (0000:01:00.0) is passed through: a VMM cannot save a host device's state")
                && err.contains("cocoon vm device detach m --id gpu0"),
            "{err}"
        );
        assert_eq!(device_state(&lab), before);
    }
    let out = lab.ok(&["vm", "device", "detach", "m", "--id", "gpu0", "-o", "json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!({"vm": "m", "id": "gpu0"})
    );
    assert_eq!(device_state(&lab), (Value::Null, vec![]));

    // lspci's short form, no --id: the id is made of the address.
    let out = lab.ok(&[
        "vm", "device", "attach", "m", "--pci", "01:00.0", "-o", "json",
    ]);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!({"vm": "m", "pci": "0000:01:00.0", "id": "cocoon-pci-0000-01-00.0"})
    );
    // Recorded: back after a stop and a start while it is bound to vfio-pci.
    lab.ok(&["vm", "stop", "m"]);
    let recorded = json!([{"id": "cocoon-pci-0000-01-00.0", "bdf": "0000:01:00.0"}]);
    assert_eq!(lab.inspect("m")["pci_devices"], recorded);
    lab.ok(&["vm", "start", "m"]);
    assert_eq!(lab.inspect("m")["pci_devices"], recorded);
    assert_eq!(lab.vmm_list("devices")[0]["id"], "cocoon-pci-0000-01-00.0");
    // Bound to another driver meanwhile: the VM starts without it.
    lab.ok(&["vm", "stop", "m"]);
    let driver = sysfs.join("driver");
    std::fs::remove_file(&driver).unwrap();
    std::os::unix::fs::symlink("../../../bus/pci/drivers/nvme", &driver).unwrap();
    let out = lab.cmd().args(["vm", "start", "m"]).output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("VM m: PCI device cocoon-pci-0000-01-00.0 is not attached again")
            && err.contains("bound to driver nvme"),
        "{err}"
    );
    assert_eq!(device_state(&lab), (Value::Null, vec![]));
}

#[test]
fn device_user_mistakes_are_refused_with_their_reason_and_change_nothing() {
    let lab = Lab::new();
    if !fake_sysfs(&lab) {
        return;
    }
    lab.ok(&[
        "vm",
        "device",
        "attach",
        "m",
        "--pci",
        "/sys/bus/pci/devices/0000:01:00.0",
        "--id",
        "gpu0",
    ]);
    let before = device_state(&lab);
    let attach = |pci: &'static str, id: &'static str| {
        vec!["vm", "device", "attach", "m", "--pci", pci, "--id", id]
    };
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            attach("0000:01:00.0", "other"),
            1,
            "VM m already has PCI device 0000:01:00.0 as id gpu0; pick another --id or --pci, or detach it first (`cocoon vm device detach m --id gpu0`)",
        ),
        (
            attach("0000:02:00.0", "gpu0"),
            1,
            "VM m already has PCI device 0000:01:00.0 as id gpu0",
        ),
        (
            attach("0000:09:00.0", "x"),
            2,
            "cannot pass through PCI device 0000:09:00.0: no such PCI device (",
        ),
        (
            attach("0000:02:00.0", "x"),
            2,
            "cannot pass through PCI device 0000:02:00.0: it is bound to driver nvme, not vfio-pci; unbind it and bind it to vfio-pci first",
        ),
        (
            attach("0000:03:00.0", "x"),
            2,
            "cannot pass through PCI device 0000:03:00.0: it is bound to no driver; bind it to vfio-pci first",
        ),
        (
            attach("1:0.0", "x"),
            2,
            "invalid --pci \"1:0.0\": expect a PCI address (01:00.0 or 0000:01:00.0",
        ),
        (
            attach("/sys/class/net/eth0", "x"),
            2,
            "invalid --pci \"/sys/class/net/eth0\"",
        ),
        (attach("0000:01:00.8", "x"), 2, "invalid --pci"),
        (
            attach("0000:02:00.0", "cocoon-x"),
            2,
            "invalid --id \"cocoon-x\": must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63} and not start with \"cocoon-\"",
        ),
        (attach("0000:02:00.0", "a/b"), 2, "invalid --id \"a/b\""),
        (
            vec!["vm", "device", "detach", "m", "--id", "nope"],
            1,
            "VM m has no PCI device with id nope",
        ),
        (vec!["vm", "device", "attach", "m"], 2, "--pci <PCI>"),
    ];
    for (args, code, message) in cases {
        let (got, err) = lab.fail(&args);
        assert!(err.contains(message), "{args:?}: {err}");
        assert_eq!(got, code, "{args:?}: {err}");
        assert_eq!(device_state(&lab), before, "{args:?} changed something");
    }
    lab.ok(&["vm", "stop", "m"]);
    let (code, err) = lab.fail(&attach("0000:01:00.0", "gpu0"));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("is not running; start it with `cocoon vm start m`"),
        "{err}"
    );
}

#[test]
fn firecracker_refuses_shares_and_devices_with_the_reason() {
    let lab = Lab::with(&["--fc"]);
    let (_server, socket) = virtiofsd_socket(&lab, "vfs.sock");
    let before = lab.inspect("m");
    let (code, err) = lab.fail(&["vm", "fs", "attach", "m", "--socket", &socket, "--tag", "t"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot attach a virtio-fs share to VM m: Firecracker has no virtio-fs (vhost-user-fs) device"),
        "{err}"
    );
    let (code, err) = lab.fail(&["vm", "device", "attach", "m", "--pci", "0000:01:00.0"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot pass a PCI device through to VM m: Firecracker cannot pass a host PCI device through (it has no VFIO)"),
        "{err}"
    );
    let after = lab.inspect("m");
    assert_eq!(before["filesystems"], after["filesystems"]);
    assert_eq!(before["pci_devices"], after["pci_devices"]);
    assert_eq!(after["state"], "running");
}
