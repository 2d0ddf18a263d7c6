//! Cloud images on Cloud Hypervisor through the real `cocoon` binary against
//! the fake VMM: qcow2 overlay over the image blob, UEFI firmware, the
//! cloud-init disk on the first boot only, the serial socket console, the
//! power-button stop, clones with a regenerated (or hot-plugged) cidata disk,
//! and the refusals (Firecracker, missing firmware). Every test checks what
//! is left behind.

use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cocoon_engine::model::VmmProcess;
use cocoon_testkit::CocoonEnv;
use cocoon_testkit::Reaper;
use serde_json::Value;

const FAKE: &str = env!("CARGO_BIN_EXE_fake-vmm");

fn bin() -> String {
    cocoon_testkit::cocoon_bin()
}

/// A cocoon installation whose CH is the fake, with a fake firmware file and
/// one imported cloud image (`local/cloud`, a 1 GiB qcow2 made by qemu-img).
struct Lab {
    env: CocoonEnv,
    firmware: PathBuf,
    /// Run cocoon in this network namespace (CNI tests).
    netns: Option<String>,
}

impl Lab {
    fn new(test: &str) -> Option<Lab> {
        if Command::new("qemu-img").arg("--version").output().is_err() {
            cocoon_testkit::skip(
                test,
                "qemu-img is not installed (apt-get install qemu-utils)",
            );
            return None;
        }
        let env = CocoonEnv::new(bin());
        let firmware = env.path().join("CLOUDHV.fd");
        std::fs::write(&firmware, b"fake firmware").unwrap();
        let lab = Lab {
            env,
            firmware,
            netns: None,
        };
        let base = lab.path("base.qcow2");
        let out = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&base)
            .arg("1G")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        lab.ok(&["image", "import", "local/cloud", base.to_str().unwrap()]);
        Some(lab)
    }

    fn cmd(&self) -> Command {
        let std = self.env.std_cmd();
        let mut cmd = match &self.netns {
            None => std,
            Some(ns) => {
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net=/run/netns/{ns}"))
                    .arg(std.get_program())
                    .args(std.get_args());
                for (k, v) in std.get_envs() {
                    match v {
                        Some(v) => cmd.env(k, v),
                        None => cmd.env_remove(k),
                    };
                }
                cmd
            }
        };
        cmd.env("COCOON_CH_BINARY", FAKE)
            .env("COCOON_FC_BINARY", FAKE)
            .env("COCOON_FIRMWARE_PATH", &self.firmware)
            .env("COCOON_TERMINATE_GRACE_PERIOD_SECONDS", "1")
            .env("COCOON_FAKE_VMM_REQUESTS", self.path("requests.log"))
            .env("COCOON_FAKE_VMM_BODIES", self.path("bodies.log"));
        cmd
    }

    fn ok(&self, args: &[&str]) -> String {
        cocoon_testkit::run_ok(self.cmd(), args)
    }

    /// The `Error: ...` line of a failing command.
    fn fail(&self, cmd: &mut Command) -> String {
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{cmd:?} should fail");
        String::from_utf8_lossy(&out.stderr)
            .trim()
            .lines()
            .last()
            .unwrap_or_default()
            .to_string()
    }

    fn inspect(&self, vm: &str) -> Value {
        serde_json::from_str(&self.ok(&["vm", "inspect", vm])).unwrap()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.env.path().join(name)
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    fn blob(&self) -> PathBuf {
        let images: Value = serde_json::from_str(&self.ok(&["image", "ls", "-o", "json"])).unwrap();
        let cloud = images
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == "local/cloud")
            .unwrap();
        let id = cloud["id"].as_str().unwrap();
        let hex = id.strip_prefix("sha256:").unwrap();
        self.env
            .root_dir()
            .join(format!("images/blobs/{hex}.qcow2"))
    }

    /// No VM record and no VM directory left.
    fn assert_no_vms(&self) {
        let list: Value = serde_json::from_str(&self.ok(&["vm", "ls", "-o", "json"])).unwrap();
        assert_eq!(list, serde_json::json!([]));
        let vms = self.env.root_dir().join("run/vms");
        let left: Vec<_> = std::fs::read_dir(&vms)
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "left in {}: {left:?}", vms.display());
    }
}

use cocoon_testkit::processes_of;

fn alive(p: &VmmProcess) -> bool {
    cocoon_engine::supervise::is_running(p)
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The VMM's argv, from /proc.
fn vmm_args(vm: &Value) -> Vec<String> {
    let pid = vm["pid"].as_u64().unwrap();
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The values after `--disk`.
fn disk_args(args: &[String]) -> Vec<String> {
    args.iter()
        .skip_while(|a| *a != "--disk")
        .skip(1)
        .take_while(|a| !a.starts_with("--"))
        .cloned()
        .collect()
}

fn qemu_info(path: &Path) -> Value {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-U", "-f", "qcow2"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The files of a cidata disk, read back with a FAT reader, and its label.
fn cidata_files(path: &Path) -> (String, Vec<(String, String)>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(bytes.len(), 1 << 20);
    let fs = fatfs::FileSystem::new(Cursor::new(bytes), fatfs::FsOptions::new()).unwrap();
    let mut files = Vec::new();
    for entry in fs.root_dir().iter() {
        let entry = entry.unwrap();
        let mut text = String::new();
        entry.to_file().read_to_string(&mut text).unwrap();
        files.push((entry.file_name(), text));
    }
    (fs.volume_label(), files)
}

fn file<'a>(files: &'a [(String, String)], name: &str) -> &'a str {
    &files.iter().find(|(n, _)| n == name).unwrap().1
}

#[test]
fn cloud_image_lifecycle_on_cloud_hypervisor() {
    let Some(lab) = Lab::new("cloud_image_lifecycle_on_cloud_hypervisor") else {
        return;
    };
    let blob = lab.blob();
    let id = lab
        .ok(&[
            "vm",
            "create",
            "--nics",
            "0",
            "--name",
            "ci",
            "--storage",
            "12G",
            "--data-disk",
            "size=64M,name=db",
            "local/cloud",
        ])
        .trim()
        .to_string();
    let vm = lab.inspect("ci");
    assert_eq!(vm["state"], "created");
    assert_eq!(vm["config"]["image_type"], "cloudimg");
    let run_dir = PathBuf::from(vm["run_dir"].as_str().unwrap());
    let overlay = run_dir.join("overlay.qcow2");
    let cidata = run_dir.join("cidata.img");

    // Disks: overlay (cow, writable, no serial), data, cidata (read-only, no serial).
    let disks = vm["storage_configs"].as_array().unwrap();
    assert_eq!(disks.len(), 3, "{disks:?}");
    assert_eq!(disks[0]["role"], "cow");
    assert_eq!(disks[0]["path"], overlay.display().to_string());
    assert_eq!(disks[0]["ro"], false);
    assert_eq!(disks[0]["serial"], "");
    assert_eq!(disks[1]["role"], "data");
    assert_eq!(disks[1]["serial"], "db");
    assert_eq!(disks[2]["role"], "cidata");
    assert_eq!(disks[2]["path"], cidata.display().to_string());
    assert_eq!(disks[2]["ro"], true);
    assert_eq!(disks[2]["serial"], "");
    // UEFI: firmware, no kernel, no command line.
    assert_eq!(
        vm["boot_config"],
        serde_json::json!({"firmware_path": lab.firmware.display().to_string()})
    );
    assert_eq!(
        vm["image_blob_ids"],
        serde_json::json!({ vm["config"]["image_digest"].as_str().unwrap(): {} })
    );

    // The overlay is a qcow2 backed by the image blob, grown to --storage.
    let info = qemu_info(&overlay);
    assert_eq!(info["backing-filename"], blob.display().to_string());
    assert_eq!(info["backing-filename-format"], "qcow2");
    assert_eq!(info["virtual-size"], 12u64 << 30);
    assert_eq!(
        qemu_info(&blob)["virtual-size"],
        1u64 << 30,
        "the blob is untouched"
    );

    // The cidata disk: meta-data with this VM's identity, the default login, the mount.
    let (label, files) = cidata_files(&cidata);
    assert_eq!(label, "cidata");
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["meta-data", "user-data"],
        "no NICs, no network-config"
    );
    assert_eq!(
        file(&files, "meta-data"),
        format!("instance-id: {id}\nlocal-hostname: ci\n")
    );
    assert_eq!(
        file(&files, "user-data"),
        "#cloud-config
chpasswd:
  expire: false
  list:
    - 'root:cocoon'
ssh_pwauth: true
disable_root: false
mounts:
  - ['/dev/disk/by-id/virtio-db', '/mnt/db', 'ext4', 'defaults,nofail', '0', '2']
"
    );

    // vm debug prints the overlay commands and the UEFI launch.
    let script = lab.ok(&[
        "vm",
        "debug",
        "--nics",
        "0",
        "--name",
        "dbg",
        "--storage",
        "12G",
        "local/cloud",
    ]);
    assert!(
        script.contains(&format!(
            "qemu-img create -f qcow2 -F qcow2 -b {} ",
            blob.display()
        )),
        "{script}"
    );
    assert!(script.contains("qemu-img resize -f qcow2 "), "{script}");
    assert!(script.contains(" 12884901888\n"), "{script}");
    assert!(
        script.contains(&format!("--firmware {}", lab.firmware.display())),
        "{script}"
    );
    assert!(!script.contains("--kernel"), "{script}");
    assert!(!script.contains("--cmdline"), "{script}");
    assert!(
        script.contains("cidata.img,readonly=on,image_type=raw"),
        "{script}"
    );
    // On QEMU (q35 + OVMF): the script makes the VM's variable store from
    // the configured template before the launch that names it.
    let (code, vars) = (lab.path("CODE.fd"), lab.path("VARS.fd"));
    std::fs::write(&code, b"code").unwrap();
    std::fs::write(&vars, b"vars").unwrap();
    let mut cmd = lab.cmd();
    cmd.env("COCOON_QEMU_FIRMWARE", &code)
        .env("COCOON_QEMU_FIRMWARE_VARS", &vars);
    let script = cocoon_testkit::run_ok(
        cmd,
        &[
            "vm",
            "debug",
            "--qemu",
            "--nics",
            "0",
            "--name",
            "dbgq",
            "local/cloud",
        ],
    );
    let install = script
        .lines()
        .find(|l| l.starts_with("install -D -m 600 "))
        .unwrap_or_else(|| panic!("no variable store copy:\n{script}"));
    let store = install
        .strip_prefix(&format!("install -D -m 600 {} ", vars.display()))
        .unwrap_or_else(|| panic!("{install}"));
    assert!(store.ends_with("/efivars.fd"), "{install}");
    let launch = script.find("# Launch VM").unwrap();
    assert!(script.find(install).unwrap() < launch, "{script}");
    assert!(
        script[launch..].contains(&format!("if=pflash,format=raw,unit=1,file={store}")),
        "{script}"
    );
    assert_eq!(
        lab.inspect("ci")["config"]["name"],
        "ci",
        "debug made no VM"
    );

    // First boot: firmware, overlay and cidata disks, serial on a socket.
    lab.ok(&["vm", "start", "ci"]);
    let vm = lab.inspect("ci");
    let procs = processes_of(&vm);
    let _reaper = Reaper(procs.clone());
    assert_eq!(vm["state"], "running");
    assert_eq!(vm["first_booted"], true);
    assert_eq!(procs.len(), 2, "VMM and console relay: {vm}");
    let args = vmm_args(&vm);
    let joined = args.join(" ");
    assert!(
        joined.contains(&format!("--firmware {}", lab.firmware.display())),
        "{joined}"
    );
    assert!(
        !joined.contains("--kernel") && !joined.contains("--cmdline"),
        "{joined}"
    );
    assert!(
        joined.contains(&format!(
            "--serial socket={} --console off",
            run_dir.join("serial.sock").display()
        )),
        "{joined}"
    );
    let disks = disk_args(&args);
    assert_eq!(disks.len(), 3, "{disks:?}");
    assert!(
        disks[0].starts_with(&format!("path={},", overlay.display()))
            && disks[0].contains(",image_type=qcow2,backing_files=on,"),
        "{disks:?}"
    );
    assert!(
        disks[2].starts_with(&format!(
            "path={},readonly=on,image_type=raw,",
            cidata.display()
        )),
        "{disks:?}"
    );
    assert!(!disks[2].contains("serial="), "{disks:?}");
    assert!(joined.contains("--balloon "), "{joined}");

    // The relay reads the guest's serial socket.
    wait_for("the boot line in vm logs", Duration::from_secs(5), || {
        lab.ok(&["vm", "logs", "ci"])
            .contains("FAKE-GUEST BOOTED on serial")
    });

    // Stop presses the power button; the guest powers off at once.
    let started = Instant::now();
    lab.ok(&["vm", "stop", "ci"]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no escalation: {:?}",
        started.elapsed()
    );
    let requests = lab.log("requests.log");
    assert!(
        requests.contains("PUT /api/v1/vm.power-button"),
        "{requests}"
    );
    assert!(!requests.contains("vm.shutdown"), "{requests}");
    wait_for("VMM and relay to exit", Duration::from_secs(5), || {
        !procs.iter().any(alive)
    });
    assert_eq!(lab.inspect("ci")["state"], "stopped");
    for socket in ["api.sock", "console.sock", "serial.sock"] {
        assert!(!run_dir.join(socket).exists(), "{socket} left behind");
    }

    // Second boot: cloud-init has run; the cidata disk is gone for good.
    lab.ok(&["vm", "start", "ci"]);
    let vm = lab.inspect("ci");
    let procs = processes_of(&vm);
    let _reaper2 = Reaper(procs.clone());
    let disks = disk_args(&vmm_args(&vm));
    assert_eq!(disks.len(), 2, "overlay and data only: {disks:?}");
    assert!(disks.iter().all(|d| !d.contains("cidata")), "{disks:?}");
    let roles: Vec<&str> = vm["storage_configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["cow", "data"]);
    assert!(!cidata.exists());

    lab.ok(&["vm", "rm", "--force", "ci"]);
    wait_for("VMM and relay to exit", Duration::from_secs(5), || {
        !procs.iter().any(alive)
    });
    assert!(!run_dir.exists());
    lab.assert_no_vms();
    assert!(blob.is_file(), "the image blob stays");
}

#[test]
fn windows_gets_hyperv_and_neither_cidata_nor_balloon() {
    let Some(lab) = Lab::new("windows_gets_hyperv_and_neither_cidata_nor_balloon") else {
        return;
    };
    lab.ok(&[
        "vm",
        "create",
        "--windows",
        "--nics",
        "0",
        "--name",
        "win",
        "local/cloud",
    ]);
    let vm = lab.inspect("win");
    let run_dir = PathBuf::from(vm["run_dir"].as_str().unwrap());
    let roles: Vec<&str> = vm["storage_configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["cow"]);
    assert!(!run_dir.join("cidata.img").exists());
    lab.ok(&["vm", "start", "win"]);
    let vm = lab.inspect("win");
    let _reaper = Reaper(processes_of(&vm));
    let joined = vmm_args(&vm).join(" ");
    assert!(joined.contains(",kvm_hyperv=on"), "{joined}");
    assert!(!joined.contains("--balloon"), "{joined}");
    assert!(joined.contains("--firmware "), "{joined}");
    lab.ok(&["vm", "rm", "--force", "win"]);
    lab.assert_no_vms();
}

/// `vm debug` prints the very command line `vm start` runs for a cloud
/// image (firmware, overlay, cidata disk, serial socket): the same argv
/// once the planned VM's id and name are those of the real one.
#[test]
fn debug_prints_the_cloud_image_launch_that_start_runs() {
    let Some(lab) = Lab::new("debug_prints_the_cloud_image_launch_that_start_runs") else {
        return;
    };
    let flags = [
        "--nics",
        "0",
        "--cpu",
        "2",
        "--memory",
        "1G",
        "--storage",
        "12G",
    ];
    let mut create = vec!["vm", "create", "--name", "real"];
    create.extend(flags);
    create.push("local/cloud");
    lab.ok(&create);
    lab.ok(&["vm", "start", "real"]);
    let vm = lab.inspect("real");
    let _reaper = Reaper(processes_of(&vm));
    let started = vmm_args(&vm);

    // debug's --max-cpu defaults to cocoon's 8; a start uses the host's count.
    let host_cpus = cocoon_engine::spec::host_cpus().to_string();
    let mut debug = vec![
        "vm",
        "debug",
        "--ch",
        FAKE,
        "--max-cpu",
        &host_cpus,
        "--name",
        "planned",
    ];
    debug.extend(flags);
    debug.push("local/cloud");
    let script = lab.ok(&debug);
    let launch = script
        .lines()
        .find(|l| l.starts_with(FAKE))
        .unwrap_or_else(|| panic!("no launch line in:\n{script}"));
    // Split on spaces only where nothing needed shell quoting.
    assert!(
        !launch.contains(['\'', '"', '\\']),
        "quoted launch line: {launch}"
    );
    let planned_id = launch
        .split("/vms/")
        .nth(1)
        .map(|rest| &rest[..26])
        .expect("a run directory in the launch line");
    let id = vm["id"].as_str().unwrap();
    let expected: Vec<String> = launch
        .replace(planned_id, id)
        .replace("planned", "real")
        .split(' ')
        .map(String::from)
        .collect();
    assert_eq!(started, expected, "debug:\n{script}");
    assert!(started.iter().any(|a| a == "--firmware"));
    lab.ok(&["vm", "rm", "--force", "real"]);
}

#[test]
fn refusals_name_the_problem_and_leave_nothing() {
    let Some(lab) = Lab::new("refusals_name_the_problem_and_leave_nothing") else {
        return;
    };
    let err = lab.fail(
        lab.cmd()
            .args(["vm", "create", "--fc", "--nics", "0", "local/cloud"]),
    );
    assert_eq!(
        err,
        "Error: image local/cloud is a cloud image, which boots through UEFI on Cloud Hypervisor or QEMU only; create it without --fc (and with use_firecracker off)"
    );
    lab.assert_no_vms();

    // --windows needs a cloud image.
    let layer = cocoon_testkit::guest::boot_layer("6.1", b"initrd").build();
    std::fs::write(lab.path("layer.tar"), layer).unwrap();
    lab.ok(&[
        "image",
        "import",
        "test/guest:1",
        lab.path("layer.tar").to_str().unwrap(),
    ]);
    let err =
        lab.fail(
            lab.cmd()
                .args(["vm", "create", "--windows", "--nics", "0", "test/guest:1"]),
        );
    assert_eq!(
        err,
        "Error: image test/guest:1 is an OCI image, which boots its own kernel; --windows needs a cloud image"
    );
    lab.assert_no_vms();

    let missing = lab.path("no/CLOUDHV.fd");
    let err = lab.fail(lab.cmd().env("COCOON_FIRMWARE_PATH", &missing).args([
        "vm",
        "create",
        "--nics",
        "0",
        "local/cloud",
    ]));
    assert_eq!(
        err,
        format!(
            "Error: image local/cloud boots through UEFI and needs Cloud Hypervisor's firmware at {}, which is missing: run scripts/fetch-firmware.sh, or take CLOUDHV.fd from Debian's cloudhv-efi-x86-64 package (testing or unstable: `apt-get download cloudhv-efi-x86-64`, then `dpkg-deb -x` it) and copy it there, or set firmware_path (COCOON_FIRMWARE_PATH)",
            missing.display()
        )
    );
    lab.assert_no_vms();

    // The image blob vanished: create fails and rolls back.
    let blob = lab.blob();
    std::fs::rename(&blob, lab.path("moved.qcow2")).unwrap();
    let err = lab.fail(lab.cmd().args([
        "vm",
        "create",
        "--nics",
        "0",
        "--name",
        "nob",
        "local/cloud",
    ]));
    assert_eq!(
        err,
        format!(
            "Error: image local/cloud is missing {}; pull or import the image again",
            blob.display()
        )
    );
    lab.assert_no_vms();
}

/// A clone gets a cidata disk with its own identity: in place of the
/// snapshot's (taken on the first boot), or hot-plugged before the resume
/// (taken after it).
#[test]
fn clones_get_their_own_cidata() {
    let Some(lab) = Lab::new("clones_get_their_own_cidata") else {
        return;
    };
    lab.ok(&[
        "vm",
        "create",
        "--nics",
        "0",
        "--name",
        "src",
        "local/cloud",
    ]);
    lab.ok(&["vm", "start", "src"]);
    let src = lab.inspect("src");
    let _reaper = Reaper(processes_of(&src));
    lab.ok(&["snapshot", "save", "--name", "first", "src"]);

    // Taken on the first boot: the snapshot's cidata disk is replaced.
    let c1_id = lab
        .ok(&["vm", "clone", "--name", "c1", "first"])
        .trim()
        .to_string();
    let c1 = lab.inspect("c1");
    let _reaper1 = Reaper(processes_of(&c1));
    let c1_run = PathBuf::from(c1["run_dir"].as_str().unwrap());
    assert_eq!(c1["state"], "running");
    assert_eq!(c1["first_booted"], true);
    let disks = c1["storage_configs"].as_array().unwrap();
    assert_eq!(disks.len(), 2, "{disks:?}");
    assert_eq!(
        disks[0]["path"],
        c1_run.join("overlay.qcow2").display().to_string()
    );
    assert_eq!(disks[1]["role"], "cidata");
    assert_eq!(
        disks[1]["path"],
        c1_run.join("cidata.img").display().to_string()
    );
    let (_, files) = cidata_files(&c1_run.join("cidata.img"));
    assert_eq!(
        file(&files, "meta-data"),
        format!("instance-id: {c1_id}\nlocal-hostname: c1\n")
    );
    assert_eq!(
        file(&files, "user-data"),
        "#cloud-config\n",
        "no credentials on clone"
    );
    assert!(
        !lab.log("bodies.log").contains("vm.add-disk"),
        "{}",
        lab.log("bodies.log")
    );
    assert_eq!(
        qemu_info(&c1_run.join("overlay.qcow2"))["backing-filename"],
        lab.blob().display().to_string()
    );
    wait_for("the clone's console", Duration::from_secs(5), || {
        lab.ok(&["vm", "logs", "c1"])
            .contains("FAKE-GUEST RESTORED on serial")
    });

    // After a restart the source has no cidata disk; its snapshot neither.
    lab.ok(&["vm", "stop", "src"]);
    lab.ok(&["vm", "start", "src"]);
    let _reaper2 = Reaper(processes_of(&lab.inspect("src")));
    lab.ok(&["snapshot", "save", "--name", "later", "src"]);
    let c2_id = lab
        .ok(&["vm", "clone", "--name", "c2", "later"])
        .trim()
        .to_string();
    let c2 = lab.inspect("c2");
    let _reaper3 = Reaper(processes_of(&c2));
    let c2_run = PathBuf::from(c2["run_dir"].as_str().unwrap());
    let disks = c2["storage_configs"].as_array().unwrap();
    assert_eq!(disks.len(), 2, "{disks:?}");
    assert_eq!(disks[1]["role"], "cidata");
    let cidata = c2_run.join("cidata.img");
    let (_, files) = cidata_files(&cidata);
    assert_eq!(
        file(&files, "meta-data"),
        format!("instance-id: {c2_id}\nlocal-hostname: c2\n")
    );
    let bodies = lab.log("bodies.log");
    let add: Vec<&str> = bodies
        .lines()
        .filter(|l| l.starts_with("PUT /api/v1/vm.add-disk "))
        .collect();
    assert_eq!(add.len(), 1, "{bodies}");
    let body: Value =
        serde_json::from_str(add[0].trim_start_matches("PUT /api/v1/vm.add-disk ")).unwrap();
    assert_eq!(body["path"], cidata.display().to_string());
    assert_eq!(body["readonly"], true);
    assert_eq!(body["image_type"], "Raw");
    // The hot-plug came before the resume.
    let order: Vec<&str> = bodies
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap())
        .skip_while(|p| *p != "/api/v1/vm.add-disk")
        .collect();
    assert!(order.contains(&"/api/v1/vm.resume"), "{bodies}");
    // The overlay keeps the snapshot's virtual size.
    assert_eq!(
        qemu_info(&c2_run.join("overlay.qcow2"))["virtual-size"],
        lab.inspect("src")["config"]["storage"]
    );

    // A clone's next cold boot is not a first boot: no cidata disk.
    lab.ok(&["vm", "stop", "--force", "c2"]);
    lab.ok(&["vm", "start", "c2"]);
    let c2 = lab.inspect("c2");
    let _reaper4 = Reaper(processes_of(&c2));
    let disks = disk_args(&vmm_args(&c2));
    assert_eq!(disks.len(), 1, "{disks:?}");

    // Restoring the first-boot snapshot into the source, which has dropped
    // its cidata disk since: the VMM state expects the disk, so it is back.
    lab.ok(&["vm", "restore", "src", "first"]);
    let src = lab.inspect("src");
    let _reaper5 = Reaper(processes_of(&src));
    let src_run = PathBuf::from(src["run_dir"].as_str().unwrap());
    let roles: Vec<&str> = src["storage_configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["cow", "cidata"]);
    let (_, files) = cidata_files(&src_run.join("cidata.img"));
    assert_eq!(
        file(&files, "meta-data"),
        format!(
            "instance-id: {}\nlocal-hostname: src\n",
            src["id"].as_str().unwrap()
        )
    );
    wait_for("the restored console", Duration::from_secs(5), || {
        lab.ok(&["vm", "logs", "src"])
            .contains("FAKE-GUEST RESTORED on serial")
    });

    for vm in ["c1", "c2", "src"] {
        lab.ok(&["vm", "rm", "--force", vm]);
    }
    lab.assert_no_vms();
}

/// Deletes the test's network namespace, pass or fail.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// NICs from Debian's real CNI plugins (bridge + host-local) reach the
/// cidata disk: one netplan entry and one networkd unit per NIC, matched by
/// the MAC and carrying the address and gateway CNI leased.
#[test]
fn cni_nics_reach_the_cidata_disk() {
    let test = "cni_nics_reach_the_cidata_disk";
    if !Path::new("/usr/lib/cni/bridge").exists() {
        cocoon_testkit::skip(test, "containernetworking-plugins is not installed");
        return;
    }
    let Some(mut lab) = Lab::new(test) else {
        return;
    };
    let mut tag = [0u8; 4];
    getrandom::fill(&mut tag).unwrap();
    let tag = u32::from_le_bytes(tag);
    let ns = format!("cocoon-ct-{tag:08x}");
    let ok = Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .unwrap();
    assert!(ok.success());
    let _netns = Netns(ns.clone());
    lab.netns = Some(ns);
    let subnet = format!("10.{}.{}", 100 + (tag >> 24) % 100, (tag >> 16) & 0xff);
    let conf = lab.path("cni");
    std::fs::create_dir_all(&conf).unwrap();
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "testnet",
        "plugins": [
            {"type": "bridge", "bridge": format!("cct{:06x}", tag & 0xff_ffff), "isGateway": true,
             "ipMasq": false, "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("{subnet}.0/24")}]],
             "dataDir": lab.path("ipam")}},
            {"type": "loopback"}
        ]
    });
    std::fs::write(conf.join("10-test.conflist"), conflist.to_string()).unwrap();

    lab.ok(&[
        "vm",
        "create",
        "--nics",
        "2",
        "--name",
        "net",
        "local/cloud",
    ]);
    let vm = lab.inspect("net");
    let nics = vm["network_configs"].as_array().unwrap();
    assert_eq!(nics.len(), 2);
    let nic = |i: usize| {
        let n = &nics[i];
        (
            n["mac"].as_str().unwrap().to_string(),
            n["network"]["ip"].as_str().unwrap().to_string(),
            n["network"]["prefix"].as_u64().unwrap(),
            n["network"]["gateway"].as_str().unwrap().to_string(),
        )
    };
    let (mac0, ip0, prefix0, gw0) = nic(0);
    let (mac1, ip1, prefix1, gw1) = nic(1);
    assert!(ip0.starts_with(&format!("{subnet}.")), "{ip0}");
    assert_eq!(gw0, format!("{subnet}.1"));
    let run_dir = PathBuf::from(vm["run_dir"].as_str().unwrap());
    let (_, files) = cidata_files(&run_dir.join("cidata.img"));
    let entry = |i: usize, mac: &str, ip: &str, prefix: u64, gw: &str| {
        format!(
            "  id{i}:\n    match:\n      macaddress: \"{mac}\"\n    addresses:\n      - {ip}/{prefix}\n    routes:\n      - to: default\n        via: {gw}\n    nameservers:\n      addresses:\n        - 8.8.8.8\n        - 1.1.1.1\n"
        )
    };
    assert_eq!(
        file(&files, "network-config"),
        format!(
            "version: 2\nethernets:\n{}{}",
            entry(0, &mac0, &ip0, prefix0, &gw0),
            entry(1, &mac1, &ip1, prefix1, &gw1)
        )
    );
    let user_data = file(&files, "user-data");
    for (i, mac, ip, prefix, online) in [
        (0, &mac0, &ip0, prefix0, "yes"),
        (1, &mac1, &ip1, prefix1, "no"),
    ] {
        let unit = format!(
            "  - path: /etc/systemd/network/15-cocoon-id{i}.network\n    owner: root:root\n    permissions: '0644'\n    content: |\n      [Match]\n      MACAddress={mac}\n\n      [Network]\n      Address={ip}/{prefix}\n      Gateway={subnet}.1\n      DNS=8.8.8.8\n      DNS=1.1.1.1\n      RequiredForOnline={online}\n"
        );
        assert!(user_data.contains(&unit), "{user_data}\nwants\n{unit}");
    }
    lab.ok(&["vm", "rm", "net"]);
    lab.assert_no_vms();
}
