//! `vm net VM --nics N` against the real Cloud Hypervisor running the test
//! guest, with Debian's CNI plugins inside a network namespace the test
//! makes: grown 1 -> 3 and shrunk 3 -> 1, the NICs CH itself has (`vm.info`
//! `config.net`: TAP and MAC) are the record's (also down to none and
//! back, vk-cocoon's hibernate), each with its lease and
//! its links in the VM's namespace, and the guest keeps running; the grown
//! NICs are back after `vm stop`/`vm start`. Firecracker refuses with its
//! reason and keeps the VM as it was.
//!
//! Needs the VMMs (PATH or COCOON_CH_BINARY / COCOON_FC_BINARY), /dev/kvm
//! and the CNI plugins; says SKIPPED loudly otherwise.

#[path = "vm_network/netlab.rs"]
#[allow(dead_code)]
mod netlab;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cocoon_testkit::guest::{READY_MARKER, last_heartbeat};
use cocoon_testkit::{require_real_vmm, skip};
use netlab::{NetLab, sh};
use serde_json::Value;

/// A lab whose `cloud-hypervisor` (and `firecracker`) are the real ones.
fn lab(test: &str) -> Option<NetLab> {
    require_real_vmm(test, "COCOON_QEMU_BINARY", "qemu-system-x86_64")?;
    let ch = require_real_vmm(test, "COCOON_CH_BINARY", "cloud-hypervisor")?;
    let fc = require_real_vmm(test, "COCOON_FC_BINARY", "firecracker")?;
    if !Path::new("/dev/kvm").exists() {
        skip(test, "/dev/kvm is missing");
        return None;
    }
    let mut lab = NetLab::new(test, Value::Null)?;
    lab.ch = ch;
    lab.fc = fc;
    Some(lab)
}

/// Waits until the guest shows a heartbeat after `after` (and, from 0,
/// its ready line); returns the last heartbeat.
fn alive(lab: &NetLab, name: &str, after: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = lab.ok(&["vm", "logs", name]);
        // A clone resumes past its ready line.
        if let Some(beat) = last_heartbeat(&log).filter(|b| *b > after)
            && (after > 0 || log.contains(READY_MARKER))
        {
            return beat;
        }
        assert!(
            Instant::now() < deadline,
            "{name} shows no heartbeat after {after}:\n{log}\n{}",
            lab.ok(&["vm", "logs", "--vmm", name])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The NICs (TAP, MAC) the VMM of `name` has, by `vm.info`.
fn ch_nics(lab: &NetLab, name: &str) -> Vec<(String, String)> {
    let vm = lab.inspect(name);
    let socket = PathBuf::from(vm["run_dir"].as_str().unwrap()).join("api.sock");
    let info = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(vmm_api::ch::CloudHypervisor::new(&socket).info())
        .unwrap();
    pairs(&info.config["net"])
}

fn pairs(nics: &Value) -> Vec<(String, String)> {
    nics.as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["tap"].as_str().unwrap().to_string(),
                n["mac"].as_str().unwrap().to_lowercase(),
            )
        })
        .collect()
}

/// CH, the record, the leases and the VM's namespace have `nics` NICs.
fn agree(lab: &NetLab, name: &str, nics: usize) {
    let vm = lab.inspect(name);
    let id = vm["id"].as_str().unwrap();
    let record = pairs(&vm["network_configs"]);
    assert_eq!(record.len(), nics, "{vm:#}");
    assert_eq!(ch_nics(lab, name), record, "CH and the record");
    assert_eq!(lab.leases().len(), nics, "IPAM leases");
    let mut links: Vec<String> = sh(&["ip", "-n", &format!("cocoon-{id}"), "-br", "link"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|n| n.split('@').next().unwrap().to_string())
        .filter(|n| n != "lo")
        .collect();
    links.sort();
    let mut want: Vec<String> = (0..nics)
        .flat_map(|i| [format!("eth{i}"), format!("tap{}-{i}", &id[..8])])
        .collect();
    want.sort();
    assert_eq!(links, want, "the VM's links");
}

#[test]
fn nics_grow_and_shrink_on_cloud_hypervisor() {
    let test = "nics_grow_and_shrink_on_cloud_hypervisor";
    let Some(lab) = lab(test) else {
        return;
    };
    let _reaper = cocoon_testkit::EnvReaper(lab.env.root_dir());
    lab.ok(&[
        "vm",
        "run",
        "--nics",
        "1",
        "--cpu",
        "1",
        "--memory",
        "512M",
        "--name",
        "n",
        "test/guest:1",
    ]);
    let beat = alive(&lab, "n", 0);
    agree(&lab, "n", 1);

    let out: Value =
        serde_json::from_str(&lab.ok(&["vm", "net", "n", "--nics", "3", "-o", "json"])).unwrap();
    assert_eq!(
        (out["before"].as_u64(), out["after"].as_u64()),
        (Some(1), Some(3))
    );
    assert_eq!(out["added"].as_array().unwrap().len(), 2);
    agree(&lab, "n", 3);
    // CH holds each new TAP open (its carrier is up).
    let vm = lab.inspect("n");
    let ns = format!("cocoon-{}", vm["id"].as_str().unwrap());
    for nic in vm["network_configs"].as_array().unwrap() {
        let link = sh(&[
            "ip",
            "-n",
            &ns,
            "link",
            "show",
            nic["tap"].as_str().unwrap(),
        ]);
        assert!(link.contains("LOWER_UP"), "CH opened the TAP: {link}");
    }
    let beat = alive(&lab, "n", beat);

    let out: Value =
        serde_json::from_str(&lab.ok(&["vm", "net", "n", "--nics", "1", "-o", "json"])).unwrap();
    assert_eq!(
        (out["before"].as_u64(), out["after"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(out["removed"].as_array().unwrap().len(), 2);
    agree(&lab, "n", 1);
    let beat = alive(&lab, "n", beat);

    // vk-cocoon's hibernate drops every NIC, and its rollback adds one.
    lab.ok(&["vm", "net", "n", "--nics", "0"]);
    agree(&lab, "n", 0);
    lab.ok(&["vm", "net", "n", "--nics", "1"]);
    agree(&lab, "n", 1);
    alive(&lab, "n", beat);

    // Grown again, the NICs are back after a stop and a start.
    lab.ok(&["vm", "net", "n", "--nics", "2"]);
    agree(&lab, "n", 2);
    let record = pairs(&lab.inspect("n")["network_configs"]);
    lab.ok(&["vm", "stop", "n"]);
    lab.ok(&["vm", "start", "n"]);
    alive(&lab, "n", 0);
    agree(&lab, "n", 2);
    assert_eq!(ch_nics(&lab, "n"), record);
    // Hibernated and woken: the same NICs.
    let beat = alive(&lab, "n", 0);
    lab.ok(&["vm", "hibernate", "n"]);
    lab.ok(&["vm", "start", "n"]);
    alive(&lab, "n", beat);
    agree(&lab, "n", 2);
    assert_eq!(ch_nics(&lab, "n"), record);

    lab.ok(&["vm", "rm", "--force", "n"]);
    assert_eq!(lab.leases(), Vec::<String>::new());
    assert_eq!(lab.stray_links(), Vec::<String>::new());
}

#[test]
fn nics_are_refused_on_firecracker() {
    let test = "nics_are_refused_on_firecracker";
    let Some(lab) = lab(test) else {
        return;
    };
    let _reaper = cocoon_testkit::EnvReaper(lab.env.root_dir());
    lab.ok(&[
        "vm",
        "run",
        "--fc",
        "--nics",
        "1",
        "--cpu",
        "1",
        "--memory",
        "512M",
        "--name",
        "f",
        "test/guest:1",
    ]);
    let beat = alive(&lab, "f", 0);
    let before = lab.inspect("f")["network_configs"].clone();
    let err = lab.fail(&["vm", "net", "f", "--nics", "2"]);
    assert!(
        err.contains("cannot change the NICs of VM f: backend does not support net resize: Firecracker cannot add a NIC to or remove one from a running VM (its API takes network interfaces before boot only)"),
        "{err}"
    );
    assert_eq!(lab.inspect("f")["network_configs"], before);
    assert_eq!(lab.leases().len(), 1);
    alive(&lab, "f", beat);
    lab.ok(&["vm", "rm", "--force", "f"]);
}

/// The MACs of the NICs `vm net` plugged into QEMU (`qom-list` of
/// `/machine/peripheral`: `cocoon-net-<mac>`).
fn qemu_nics(lab: &NetLab, name: &str) -> Vec<String> {
    let vm = lab.inspect(name);
    let socket = PathBuf::from(vm["run_dir"].as_str().unwrap()).join("api.sock");
    let list = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let mut qmp = vmm_api::qmp::Qmp::connect(&socket).await.unwrap();
            qmp.execute(&vmm_api::qmp::QomList {
                path: "/machine/peripheral".into(),
            })
            .await
            .unwrap()
        });
    let mut macs: Vec<String> = list
        .into_iter()
        .filter_map(|p| p.name.strip_prefix("cocoon-net-").map(str::to_string))
        .collect();
    macs.sort();
    macs
}

/// The record's hot-plugged NICs, as [`qemu_nics`] names them.
fn recorded_hot(vm: &Value) -> Vec<String> {
    let mut macs: Vec<String> = vm["network_configs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["slot"].is_u64())
        .map(|n| n["mac"].as_str().unwrap().replace(':', "").to_lowercase())
        .collect();
    macs.sort();
    macs
}

/// QEMU: grown 1 -> 3 (two `virtio-net-pci` on hot-plug slots, QEMU holding
/// their TAPs), back after stop/start, shrunk to 1; the NIC it was made
/// with cannot go (virtio-mmio has no hot-plug): refused, nothing changed.
#[test]
fn nics_grow_and_shrink_on_qemu() {
    let test = "nics_grow_and_shrink_on_qemu";
    let Some(lab) = lab(test) else {
        return;
    };
    let _reaper = cocoon_testkit::EnvReaper(lab.env.root_dir());
    lab.ok(&[
        "vm",
        "run",
        "--qemu",
        "--nics",
        "1",
        "--cpu",
        "1",
        "--memory",
        "512M",
        "--name",
        "q",
        "test/guest:1",
    ]);
    let beat = alive(&lab, "q", 0);
    let out: Value =
        serde_json::from_str(&lab.ok(&["vm", "net", "q", "--nics", "3", "-o", "json"])).unwrap();
    assert_eq!(
        (out["before"].as_u64(), out["after"].as_u64()),
        (Some(1), Some(3))
    );
    let vm = lab.inspect("q");
    let slots: Vec<u64> = vm["network_configs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["slot"].as_u64())
        .collect();
    assert_eq!(slots, vec![0, 1], "{vm:#}");
    assert_eq!(qemu_nics(&lab, "q"), recorded_hot(&vm));
    assert_eq!(lab.leases().len(), 3);
    let ns = format!("cocoon-{}", vm["id"].as_str().unwrap());
    for nic in vm["network_configs"].as_array().unwrap() {
        let link = sh(&[
            "ip",
            "-n",
            &ns,
            "link",
            "show",
            nic["tap"].as_str().unwrap(),
        ]);
        assert!(link.contains("LOWER_UP"), "QEMU opened the TAP: {link}");
    }
    let beat = alive(&lab, "q", beat);

    lab.ok(&["vm", "stop", "q"]);
    lab.ok(&["vm", "start", "q"]);
    alive(&lab, "q", 0);
    let vm = lab.inspect("q");
    assert_eq!(qemu_nics(&lab, "q"), recorded_hot(&vm));
    assert_eq!(recorded_hot(&vm).len(), 2);
    let _ = beat;
    // Hibernated and woken: the plugged NICs come back on their slots.
    let beat = alive(&lab, "q", 0);
    lab.ok(&["vm", "hibernate", "q"]);
    lab.ok(&["vm", "start", "q"]);
    alive(&lab, "q", beat);
    assert_eq!(qemu_nics(&lab, "q"), recorded_hot(&lab.inspect("q")));

    let out: Value =
        serde_json::from_str(&lab.ok(&["vm", "net", "q", "--nics", "1", "-o", "json"])).unwrap();
    assert_eq!(
        (out["before"].as_u64(), out["after"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(qemu_nics(&lab, "q"), Vec::<String>::new());
    assert_eq!(lab.leases().len(), 1);

    // A snapshot with a plugged NIC: its clone has it on the same slot
    // (QEMU's saved state expects it there) and runs on.
    lab.ok(&["vm", "net", "q", "--nics", "2"]);
    lab.ok(&["snapshot", "save", "--name", "q2", "q"]);
    lab.ok(&["vm", "clone", "--name", "qc", "q2"]);
    let clone = lab.inspect("qc");
    assert_eq!(clone["network_configs"][1]["slot"], 0, "{clone:#}");
    assert_eq!(qemu_nics(&lab, "qc"), recorded_hot(&clone));
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        if let Some(beat) = last_heartbeat(&lab.ok(&["vm", "logs", "qc"])) {
            break beat;
        }
        assert!(Instant::now() < deadline, "the clone shows no heartbeat");
        std::thread::sleep(Duration::from_millis(100));
    };
    alive(&lab, "qc", first);
    lab.ok(&["vm", "rm", "--force", "qc"]);
    lab.ok(&["vm", "net", "q", "--nics", "1"]);

    // The NIC count back to the snapshot's but on another slot (a disk
    // took slot 0 meanwhile): `vm restore` is refused, nothing changed.
    let files = tempfile::tempdir().unwrap();
    let disk = files.path().join("d.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    lab.ok(&[
        "vm",
        "disk",
        "attach",
        "q",
        "--path",
        disk.to_str().unwrap(),
        "--name",
        "d",
    ]);
    lab.ok(&["vm", "net", "q", "--nics", "2"]);
    lab.ok(&["vm", "disk", "detach", "q", "--name", "d"]);
    let before = lab.inspect("q")["network_configs"].clone();
    assert_eq!(before[1]["slot"], 1, "{before:#}");
    let err = lab.fail(&["vm", "restore", "q", "q2"]);
    assert!(
        err.contains("the snapshot's hot-plugged NICs are on other slots than the VM's"),
        "{err}"
    );
    assert_eq!(lab.inspect("q")["network_configs"], before);
    assert_eq!(lab.inspect("q")["state"], "running");
    lab.ok(&["vm", "net", "q", "--nics", "1"]);

    let err = lab.fail(&["vm", "net", "q", "--nics", "0"]);
    assert!(
        err.contains("cannot change the NICs of VM q: NIC eth0 was made with QEMU VM q on a bus without hot-plug"),
        "{err}"
    );
    assert_eq!(
        lab.inspect("q")["network_configs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(lab.leases().len(), 1);
    lab.ok(&["vm", "rm", "--force", "q"]);
    assert_eq!(lab.leases(), Vec::<String>::new());
    assert_eq!(lab.stray_links(), Vec::<String>::new());
}
