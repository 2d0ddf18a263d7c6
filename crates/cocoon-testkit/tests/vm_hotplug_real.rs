//! `vm disk attach`/`detach` against the real VMMs (Cloud Hypervisor and
//! QEMU) running the test guest: the VMM itself lists the attached disk
//! (CH `vm.info` disks, QEMU `query-block`) and no longer after detach; an
//! attached disk is back after `vm stop`/`vm start`; a clone of a snapshot
//! taken with it attached has its own copy of it, attached the same way.
//! Firecracker refuses with its reason and keeps the VM as it was.
//!
//! `vm fs attach`/`detach` the same way with a real virtiofsd (the VMM lists
//! the share, CH `vm.info` fs, and no longer after detach), five rounds on
//! one VM.
//!
//! Needs the VMMs (PATH or COCOON_CH_BINARY / COCOON_FC_BINARY /
//! COCOON_QEMU_BINARY), virtiofsd for the shares (COCOON_VIRTIOFSD_BINARY,
//! PATH or `target/virtiofsd/bin`, where .ci/run installs it), /dev/kvm and
//! Debian's docker-registry; says SKIPPED loudly otherwise.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cocoon_testkit::Reaper;
use cocoon_testkit::guest::{HEARTBEAT_PREFIX, READY_MARKER};
use cocoon_testkit::registry::Registry;
use cocoon_testkit::{CocoonEnv, EnvReaper, processes_of, real_vmm, require_real_vmm, skip};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vmm {
    Ch,
    Fc,
    Qemu,
}

struct Lab {
    env: CocoonEnv,
    ch: PathBuf,
    fc: PathBuf,
    vmm: Vmm,
    reference: String,
    _registry: Registry,
}

impl Lab {
    /// A fresh installation with the test guest image pulled; None after a
    /// loud skip.
    fn new(test: &str, vmm: Vmm) -> Option<Lab> {
        let found = match vmm {
            Vmm::Ch => require_real_vmm(test, "COCOON_CH_BINARY", "cloud-hypervisor"),
            Vmm::Fc => require_real_vmm(test, "COCOON_FC_BINARY", "firecracker"),
            Vmm::Qemu => require_real_vmm(test, "COCOON_QEMU_BINARY", "qemu-system-x86_64"),
        };
        found?;
        if !Path::new("/dev/kvm").exists() {
            skip(test, "/dev/kvm is missing");
            return None;
        }
        let Some(registry) = Registry::start() else {
            skip(test, "docker-registry is not installed");
            return None;
        };
        let layer = cocoon_testkit::guest::boot_layer("test", b"not used by the test kernel")
            .file("sbin/init", b"#!/bin/sh\n")
            .build();
        registry.push("guest/test:1", &[layer], "amd64");
        let lab = Lab {
            env: CocoonEnv::new(cocoon_testkit::cocoon_bin()),
            ch: real_vmm("COCOON_CH_BINARY", "cloud-hypervisor").unwrap_or_default(),
            fc: real_vmm("COCOON_FC_BINARY", "firecracker").unwrap_or_default(),
            vmm,
            reference: registry.reference("guest/test:1"),
            _registry: registry,
        };
        lab.ok(&["image", "pull", &lab.reference]);
        Some(lab)
    }

    fn cmd(&self) -> std::process::Command {
        let mut cmd = self.env.std_cmd();
        for (var, path) in [
            ("COCOON_CH_BINARY", &self.ch),
            ("COCOON_FC_BINARY", &self.fc),
        ] {
            if !path.as_os_str().is_empty() {
                cmd.env(var, path);
            }
        }
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

    fn inspect(&self, vm: &str) -> Value {
        serde_json::from_str(&self.ok(&["vm", "inspect", vm])).unwrap()
    }

    /// `vm run` of the test guest, booted.
    fn run(&self, name: &str) -> Reaper {
        self.run_with(name, &[])
    }

    /// `vm run` of the test guest with `flags`, booted.
    fn run_with(&self, name: &str, flags: &[&str]) -> Reaper {
        let mut args = vec!["vm", "run", "--nics", "0", "--memory", "512M", "--cpu", "1"];
        args.extend(["--name", name]);
        match self.vmm {
            Vmm::Ch => {}
            Vmm::Fc => args.push("--fc"),
            Vmm::Qemu => args.push("--qemu"),
        }
        args.extend(flags);
        args.push(&self.reference);
        self.ok(&args);
        self.booted(name)
    }

    /// Waits for the guest's ready line; the VM's processes to reap.
    fn booted(&self, name: &str) -> Reaper {
        self.running(name, READY_MARKER)
    }

    /// Waits for `line` in the guest's output (a clone resumes past its
    /// ready line: it shows heartbeats); the VM's processes to reap.
    fn running(&self, name: &str, line: &str) -> Reaper {
        let reaper = Reaper(processes_of(&self.inspect(name)));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.ok(&["vm", "logs", name]).contains(line) {
            assert!(
                Instant::now() < deadline,
                "{name} did not boot: {:#}\n{}\n{}",
                self.inspect(name),
                self.ok(&["vm", "logs", name]),
                self.ok(&["vm", "logs", "--vmm", name])
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        reaper
    }

    /// The attached disks the VM's VMM itself has: (device id, host file).
    fn vmm_disks(&self, name: &str) -> Vec<(String, String)> {
        let vm = self.inspect(name);
        let socket = PathBuf::from(vm["run_dir"].as_str().unwrap()).join("api.sock");
        let mut disks = match self.vmm {
            Vmm::Qemu => block_on(qemu_disks(&socket)),
            _ => block_on(vmm_api::ch::CloudHypervisor::new(&socket).info())
                .unwrap()
                .config["disks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| {
                    let text = |k: &str| d[k].as_str().unwrap_or_default().to_string();
                    (text("id"), text("path"))
                })
                .collect(),
        };
        disks.retain(|(id, _)| id.starts_with("cocoon-disk-"));
        disks
    }
}

async fn qemu_disks(socket: &Path) -> Vec<(String, String)> {
    let mut qmp = vmm_api::qmp::Qmp::connect(socket).await.unwrap();
    qmp.query_block()
        .await
        .unwrap()
        .into_iter()
        .filter_map(|b| {
            let id = b
                .qdev?
                .strip_prefix("/machine/peripheral/")?
                .split('/')
                .next()?
                .to_string();
            Some((id, b.inserted?.file))
        })
        .collect()
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A 16 MiB raw disk file of the test's own.
fn disk_file(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(16 << 20).unwrap();
    path.to_str().unwrap().to_string()
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

fn attach_detach_on(vmm: Vmm, test: &str) {
    let Some(lab) = Lab::new(test, vmm) else {
        return;
    };
    let _env_reaper = EnvReaper(lab.env.root_dir());
    let files = tempfile::tempdir().unwrap();
    let path = disk_file(files.path(), "scratch.raw");
    let _vm = lab.run("g");

    let out = lab.ok(&[
        "vm", "disk", "attach", "g", "--path", &path, "--name", "scratch", "-o", "json",
    ]);
    let out: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        out,
        serde_json::json!({"vm": "g", "name": "scratch", "id": "cocoon-disk-scratch"})
    );
    assert_eq!(
        lab.vmm_disks("g"),
        [("cocoon-disk-scratch".to_string(), path.clone())]
    );
    let vm = lab.inspect("g");
    let disks = attached(&vm);
    assert_eq!(disks.len(), 1, "{vm:#}");
    assert_eq!(disks[0]["path"], path.as_str());
    assert_eq!(disks[0]["serial"], "scratch");

    // A second disk by the same name is refused, and the first stays.
    let other = disk_file(files.path(), "other.raw");
    let err = lab.fail(&[
        "vm", "disk", "attach", "g", "--path", &other, "--name", "scratch",
    ]);
    assert!(
        err.contains("VM g already has a disk named scratch"),
        "{err}"
    );
    assert_eq!(lab.vmm_disks("g").len(), 1);

    lab.ok(&["vm", "disk", "detach", "g", "--name", "scratch"]);
    assert!(lab.vmm_disks("g").is_empty());
    assert!(attached(&lab.inspect("g")).is_empty());
    assert!(Path::new(&path).is_file(), "the user's file stays");

    // Attached again (by another name: the test guest never ejects a
    // device Cloud Hypervisor removed, which keeps its id taken until the
    // VM restarts), it is back after a stop and a start.
    let path = disk_file(files.path(), "again.raw");
    lab.ok(&[
        "vm", "disk", "attach", "g", "--path", &path, "--name", "again",
    ]);
    lab.ok(&["vm", "stop", "g"]);
    lab.ok(&["vm", "start", "g"]);
    let _restarted = lab.booted("g");
    assert_eq!(
        lab.vmm_disks("g"),
        [("cocoon-disk-again".to_string(), path.clone())]
    );

    // A clone of a snapshot with it attached has its own copy, attached.
    std::fs::write(&path, b"from the source").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    lab.ok(&["snapshot", "save", "--name", "s", "g"]);
    lab.ok(&["vm", "clone", "--name", "c", "s"]);
    let _clone = lab.running("c", HEARTBEAT_PREFIX);
    let clone_disks = lab.vmm_disks("c");
    assert_eq!(clone_disks.len(), 1, "{clone_disks:?}");
    assert_eq!(clone_disks[0].0, "cocoon-disk-again");
    let copy = &clone_disks[0].1;
    assert_ne!(copy, &path, "the clone has its own copy");
    assert!(copy.starts_with(lab.inspect("c")["run_dir"].as_str().unwrap()));
    assert!(std::fs::read(copy).unwrap().starts_with(b"from the source"));
    lab.ok(&["vm", "disk", "detach", "c", "--name", "again"]);
    assert!(lab.vmm_disks("c").is_empty());
    assert_eq!(lab.vmm_disks("g").len(), 1, "the source keeps its disk");

    // `vm clone --data-disk`: CH's restore plugs a new disk into the clone
    // (the guest runs on); QEMU restores exactly its snapshot's devices.
    let args = [
        "vm",
        "clone",
        "--name",
        "d",
        "--data-disk",
        "size=32M,name=extra",
        "s",
    ];
    if matches!(lab.vmm, Vmm::Qemu) {
        let err = lab.fail(&args);
        assert!(
            err.contains("cannot add data disk extra to a clone: QEMU restores exactly the devices its snapshot has"),
            "{err}"
        );
    } else {
        lab.ok(&args);
        let _d = lab.running("d", HEARTBEAT_PREFIX);
        let run = PathBuf::from(lab.inspect("d")["run_dir"].as_str().unwrap());
        let socket = run.join("api.sock");
        let info = block_on(vmm_api::ch::CloudHypervisor::new(&socket).info()).unwrap();
        let new = run.join("data-extra.raw");
        assert!(
            info.config["disks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["path"] == new.to_str().unwrap() && d["serial"] == "extra"),
            "{:#}",
            info.config["disks"]
        );
        lab.ok(&["vm", "rm", "--force", "d"]);
    }
    lab.ok(&["vm", "rm", "--force", "c", "g"]);
    assert!(Path::new(&path).is_file(), "vm rm leaves the user's file");
}

#[test]
fn disk_attach_detach_cloud_hypervisor() {
    attach_detach_on(Vmm::Ch, "disk_attach_detach_cloud_hypervisor");
}

#[test]
fn disk_attach_detach_qemu() {
    attach_detach_on(Vmm::Qemu, "disk_attach_detach_qemu");
}

#[test]
fn disk_attach_is_refused_on_firecracker() {
    let test = "disk_attach_is_refused_on_firecracker";
    let Some(lab) = Lab::new(test, Vmm::Fc) else {
        return;
    };
    let _env_reaper = EnvReaper(lab.env.root_dir());
    let files = tempfile::tempdir().unwrap();
    let path = disk_file(files.path(), "scratch.raw");
    let _vm = lab.run("g");
    let before = lab.inspect("g");
    let err = lab.fail(&[
        "vm", "disk", "attach", "g", "--path", &path, "--name", "scratch",
    ]);
    assert!(
        err.contains("cannot attach a disk on VM g: Firecracker cannot add a disk to or remove one from a running VM"),
        "{err}"
    );
    assert!(err.contains("--data-disk"), "{err}");
    let after = lab.inspect("g");
    assert_eq!(before["storage_configs"], after["storage_configs"]);
    assert_eq!(after["state"], "running");
    lab.ok(&["vm", "rm", "--force", "g"]);
}

/// A QEMU VM made with `--no-hotplug` runs on a machine without PCIe and
/// without root ports; attaching a disk to it is refused by name, and the
/// VM runs on with its disks as they were.
#[test]
fn disk_attach_is_refused_on_qemu_without_hotplug() {
    let test = "disk_attach_is_refused_on_qemu_without_hotplug";
    let Some(lab) = Lab::new(test, Vmm::Qemu) else {
        return;
    };
    let _env_reaper = EnvReaper(lab.env.root_dir());
    let files = tempfile::tempdir().unwrap();
    let path = disk_file(files.path(), "scratch.raw");
    let _vm = lab.run_with("g", &["--no-hotplug"]);
    let before = lab.inspect("g");
    let pid = before["vmm"]["pid"].as_u64().unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(!cmdline.contains("pcie"), "{cmdline}");
    assert_eq!(before["config"]["no_hotplug"], true, "{before:#}");
    assert!(before["config"]["hotplug_slots"].is_null(), "{before:#}");
    let err = lab.fail(&[
        "vm", "disk", "attach", "g", "--path", &path, "--name", "scratch",
    ]);
    assert!(
        err.contains("VM g was created with --no-hotplug (no PCIe root ports), so nothing can be plugged into it; create it without --no-hotplug to attach disks, NICs or shares"),
        "{err}"
    );
    let after = lab.inspect("g");
    assert_eq!(before["storage_configs"], after["storage_configs"]);
    assert_eq!(after["state"], "running");
    lab.ok(&["vm", "rm", "--force", "g"]);
}

/// virtiofsd: COCOON_VIRTIOFSD_BINARY, PATH, or where .ci/run installs it
/// (`target/virtiofsd/bin` of this workspace); None after a loud skip.
fn virtiofsd(test: &str) -> Option<PathBuf> {
    let installed =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/virtiofsd/bin/virtiofsd");
    if std::env::var_os("COCOON_VIRTIOFSD_BINARY").is_none() && installed.is_file() {
        return Some(installed);
    }
    require_real_vmm(test, "COCOON_VIRTIOFSD_BINARY", "virtiofsd")
}

/// A running virtiofsd sharing `dir` at `socket`, killed when dropped.
struct Virtiofsd(std::process::Child);

impl Virtiofsd {
    fn start(binary: &Path, socket: &Path, dir: &Path) -> Virtiofsd {
        let child = std::process::Command::new(binary)
            .arg("--socket-path")
            .arg(socket)
            .arg("--shared-dir")
            .arg(dir)
            // The test runs it unprivileged or in a container: no namespaces.
            .args(["--sandbox", "none"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        // Not probed by connecting: virtiofsd serves its first connection
        // only, and exits when it closes.
        while !socket.exists() {
            assert!(Instant::now() < deadline, "virtiofsd made no socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        Virtiofsd(child)
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Lab {
    /// The shares the VM's VMM itself has: (device id, tag, socket).
    fn vmm_shares(&self, name: &str) -> Vec<(String, String, String)> {
        let vm = self.inspect(name);
        let socket = PathBuf::from(vm["run_dir"].as_str().unwrap()).join("api.sock");
        if self.vmm == Vmm::Qemu {
            return block_on(qemu_shares(&socket));
        }
        let info = block_on(vmm_api::ch::CloudHypervisor::new(&socket).info()).unwrap();
        info.config["fs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| {
                let text = |k: &str| f[k].as_str().unwrap_or_default().to_string();
                (text("id"), text("tag"), text("socket"))
            })
            .collect()
    }
}

/// QEMU's `vhost-user-fs-pci` devices: id, tag (the device's property) and
/// the socket of the chardev of the same id.
async fn qemu_shares(socket: &Path) -> Vec<(String, String, String)> {
    use vmm_api::qmp::{QomGet, QomList, QueryChardev};
    let mut qmp = vmm_api::qmp::Qmp::connect(socket).await.unwrap();
    let devices = qmp
        .execute(&QomList {
            path: "/machine/peripheral".into(),
        })
        .await
        .unwrap();
    let chardevs = qmp.execute(&QueryChardev).await.unwrap();
    let mut shares = Vec::new();
    for device in devices
        .iter()
        .filter(|d| d.kind == "child<vhost-user-fs-pci>")
    {
        let tag = qmp
            .execute(&QomGet {
                path: format!("/machine/peripheral/{}/virtio-backend", device.name),
                property: "tag".into(),
            })
            .await
            .unwrap();
        let chardev = chardevs.iter().find(|c| c.label == device.name).unwrap();
        let path = chardev.filename.rsplit("unix:").next().unwrap_or_default();
        let path = path.split(',').next().unwrap_or_default().to_string();
        shares.push((
            device.name.clone(),
            tag.as_str().unwrap_or_default().to_string(),
            path,
        ));
    }
    shares
}

fn fs_attach_detach_on(vmm: Vmm, test: &str) {
    let Some(binary) = virtiofsd(test) else {
        return;
    };
    let Some(lab) = Lab::new(test, vmm) else {
        return;
    };
    let _env_reaper = EnvReaper(lab.env.root_dir());
    let files = tempfile::tempdir().unwrap();
    let shared = files.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let args = [
        "vm",
        "run",
        "--nics",
        "0",
        "--memory",
        "512M",
        "--cpu",
        "1",
        "--shared-memory",
    ];
    let mut args = args.to_vec();
    if vmm == Vmm::Qemu {
        args.push("--qemu");
    }
    args.extend(["--name", "g", &lab.reference]);
    lab.ok(&args);
    let _vm = lab.booted("g");
    for round in 0..5 {
        // virtiofsd serves one VMM connection: one per round.
        let socket = files.path().join(format!("vfs{round}.sock"));
        let _daemon = Virtiofsd::start(&binary, &socket, &shared);
        let socket = socket.to_str().unwrap();
        let tag = format!("share{round}");
        let out = lab.ok(&[
            "vm", "fs", "attach", "g", "--socket", socket, "--tag", &tag, "-o", "json",
        ]);
        let out: Value = serde_json::from_str(&out).unwrap();
        let id = format!("cocoon-fs-{tag}");
        assert_eq!(out, serde_json::json!({"vm": "g", "tag": tag, "id": id}));
        assert_eq!(
            lab.vmm_shares("g"),
            [(id.clone(), tag.clone(), socket.to_string())]
        );
        assert_eq!(lab.inspect("g")["filesystems"][0]["tag"], tag.as_str());
        let err = lab.fail(&["snapshot", "save", "g"]);
        assert!(
            err.contains("virtiofsd cannot hand its state over"),
            "{err}"
        );
        lab.ok(&["vm", "fs", "detach", "g", "--tag", &tag]);
        assert!(lab.vmm_shares("g").is_empty(), "round {round}");
        assert_eq!(lab.inspect("g")["filesystems"], Value::Null);
    }
    // Recorded: plugged again at `vm start` into a virtiofsd serving the
    // same socket (the first one exits with the VMM it served).
    let socket = files.path().join("again.sock");
    let daemon = Virtiofsd::start(&binary, &socket, &shared);
    let path = socket.to_str().unwrap().to_string();
    lab.ok(&[
        "vm", "fs", "attach", "g", "--socket", &path, "--tag", "again",
    ]);
    lab.ok(&["vm", "stop", "g"]);
    drop(daemon);
    let _ = std::fs::remove_file(&socket);
    let daemon = Virtiofsd::start(&binary, &socket, &shared);
    lab.ok(&["vm", "start", "g"]);
    let _restarted = lab.booted("g");
    let again = (
        "cocoon-fs-again".to_string(),
        "again".to_string(),
        path.clone(),
    );
    assert_eq!(lab.vmm_shares("g"), [again]);
    // No virtiofsd at the next start: the VM starts without the share.
    lab.ok(&["vm", "stop", "g"]);
    drop(daemon);
    let _ = std::fs::remove_file(&socket);
    lab.ok(&["vm", "start", "g"]);
    let _restarted = lab.booted("g");
    assert!(lab.vmm_shares("g").is_empty());
    assert_eq!(lab.inspect("g")["filesystems"], Value::Null);
    assert_eq!(lab.inspect("g")["state"], "running");
    lab.ok(&["vm", "rm", "--force", "g"]);
    if vmm == Vmm::Qemu {
        private_memory_is_refused_on_qemu(&lab, &binary, files.path());
    }
}

/// QEMU itself says whether guest memory is shared (`qom-get`): without
/// `--shared-memory` (and without the vsock device, whose back-end needs it
/// shared too) the share is refused with the reason, nothing changed.
fn private_memory_is_refused_on_qemu(lab: &Lab, binary: &Path, dir: &Path) {
    let args = [
        "vm", "run", "--nics", "0", "--memory", "512M", "--cpu", "1", "--qemu",
    ];
    let mut args = args.to_vec();
    args.extend(["--no-agent", "--name", "p", &lab.reference]);
    lab.ok(&args);
    let _vm = lab.booted("p");
    let socket = dir.join("private.sock");
    let _daemon = Virtiofsd::start(binary, &socket, dir);
    let err = lab.fail(&[
        "vm",
        "fs",
        "attach",
        "p",
        "--socket",
        socket.to_str().unwrap(),
        "--tag",
        "t",
    ]);
    assert!(
        err.contains("cannot attach virtio-fs share t on VM p: its guest memory is not shared"),
        "{err}"
    );
    assert!(lab.vmm_shares("p").is_empty());
    assert_eq!(lab.inspect("p")["filesystems"], Value::Null);
    lab.ok(&["vm", "rm", "--force", "p"]);
}

#[test]
fn fs_attach_detach_cloud_hypervisor() {
    fs_attach_detach_on(Vmm::Ch, "fs_attach_detach_cloud_hypervisor");
}

#[test]
fn fs_attach_detach_qemu() {
    fs_attach_detach_on(Vmm::Qemu, "fs_attach_detach_qemu");
}
