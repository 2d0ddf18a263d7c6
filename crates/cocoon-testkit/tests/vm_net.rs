//! `vm net VM --nics N` through the real `cocoon` binary with Debian's CNI
//! plugins (inside a network namespace the test makes) and the fake Cloud
//! Hypervisor: a grow makes each NIC as create does (CNI ADD of `eth<i>`,
//! TAP, lease) and asks the VMM (`vm.add-net` with its TAP and MAC); a
//! shrink takes the highest NICs out (`vm.remove-device`), releases them
//! (no lease, interface or TAP left) and forgets them; the NICs survive
//! `vm stop`/`vm start` and go into a snapshot's clones; `-o json` is
//! upstream's; every user mistake has its exact error and changes nothing.

#[path = "vm_network/netlab.rs"]
#[allow(dead_code)]
mod netlab;

use std::path::PathBuf;

use netlab::{NetLab, sh};
use serde_json::Value;

/// The NICs (tap, mac) the fake VMM of `vm` has.
fn vmm_nics(lab: &NetLab, vm: &str) -> Vec<(String, String)> {
    let vm = lab.inspect(vm);
    let socket = PathBuf::from(vm["run_dir"].as_str().unwrap()).join("api.sock");
    let info = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(vmm_api::ch::CloudHypervisor::new(&socket).info())
        .unwrap();
    info.config["net"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["tap"].as_str().unwrap().to_string(),
                n["mac"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The record's NICs (tap, mac).
fn recorded(lab: &NetLab, vm: &str) -> Vec<(String, String)> {
    lab.inspect(vm)["network_configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["tap"].as_str().unwrap().to_string(),
                n["mac"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The links in the VM's namespace other than lo.
fn vm_links(id: &str) -> Vec<String> {
    let mut links: Vec<String> = sh(&["ip", "-n", &format!("cocoon-{id}"), "-br", "link"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|n| n.split('@').next().unwrap().to_string())
        .filter(|n| n != "lo")
        .collect();
    links.sort();
    links
}

fn expected_links(id: &str, nics: usize) -> Vec<String> {
    let mut links: Vec<String> = (0..nics)
        .flat_map(|i| [format!("eth{i}"), format!("tap{}-{i}", &id[..8])])
        .collect();
    links.sort();
    links
}

/// VMM, record, leases and the VM's namespace all have `nics` NICs.
fn agree(lab: &NetLab, vm: &str, id: &str, nics: usize) {
    let record = recorded(lab, vm);
    assert_eq!(record.len(), nics, "record");
    assert_eq!(vmm_nics(lab, vm), record, "the VMM and the record");
    assert_eq!(lab.leases().len(), nics, "IPAM leases");
    assert_eq!(vm_links(id), expected_links(id, nics), "links");
    let mut store = cocoon_engine::store::Store::open(&lab.env.db_path()).unwrap();
    let leases: Vec<String> = store
        .leases(id)
        .unwrap()
        .into_iter()
        .map(|l| l.if_name)
        .collect();
    let want: Vec<String> = (0..nics).map(|i| format!("eth{i}")).collect();
    assert_eq!(leases, want, "recorded leases");
}

#[test]
fn grow_and_shrink_through_cni_and_the_vmm() {
    let Some(lab) = NetLab::new("grow_and_shrink_through_cni_and_the_vmm", Value::Null) else {
        return;
    };
    let id = lab
        .ok(&["vm", "run", "--nics", "1", "--name", "web", "test/guest:1"])
        .trim()
        .to_string();
    agree(&lab, "web", &id, 1);
    let first = recorded(&lab, "web");

    let out: Value =
        serde_json::from_str(&lab.ok(&["vm", "net", "web", "--nics", "3", "-o", "json"])).unwrap();
    assert_eq!(out["before"], 1);
    assert_eq!(out["after"], 3);
    assert!(out.get("removed").is_none(), "{out}");
    let added = out["added"].as_array().unwrap();
    assert_eq!(added.len(), 2);
    agree(&lab, "web", &id, 3);
    let record = recorded(&lab, "web");
    assert_eq!(record[0], first[0], "the first NIC is untouched");
    for (i, nic) in added.iter().enumerate() {
        assert_eq!(nic["index"], i + 1);
        assert_eq!(nic["tap"], record[i + 1].0.as_str());
        assert_eq!(nic["mac"], record[i + 1].1.as_str());
    }
    // The next boot's kernel command line configures the new NICs.
    let vm = lab.inspect("web");
    let cmdline = vm["boot_config"]["cmdline"].as_str().unwrap();
    let ip2 = vm["network_configs"][2]["network"]["ip"].as_str().unwrap();
    assert!(cmdline.contains(&format!("ip={ip2}:")), "{cmdline}");
    assert!(cmdline.contains(":eth2:"), "{cmdline}");

    // Back after stop/start.
    lab.ok(&["vm", "stop", "web"]);
    lab.ok(&["vm", "start", "web"]);
    agree(&lab, "web", &id, 3);
    assert_eq!(recorded(&lab, "web"), record);

    // The same count changes nothing.
    let out: Value =
        serde_json::from_str(&lab.ok(&["vm", "net", "web", "--nics", "3", "-o", "json"])).unwrap();
    assert_eq!(out, serde_json::json!({"before": 3, "after": 3}));
    agree(&lab, "web", &id, 3);

    // Shrink: from the highest index down.
    let out: Value =
        serde_json::from_str(&lab.ok(&["vm", "net", "web", "--nics", "1", "-o", "json"])).unwrap();
    assert_eq!(out["before"], 3);
    assert_eq!(out["after"], 1);
    let removed: Vec<u64> = out["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["index"].as_u64().unwrap())
        .collect();
    assert_eq!(removed, vec![2, 1]);
    assert_eq!(out["removed"][0]["mac"], record[2].1.as_str());
    agree(&lab, "web", &id, 1);
    assert_eq!(recorded(&lab, "web"), first);
    let cmdline = lab.inspect("web")["boot_config"]["cmdline"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!cmdline.contains(":eth1:"), "{cmdline}");

    // Text output: upstream's line.
    let out = lab
        .cmd()
        .args(["vm", "net", "web", "--nics", "2"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "resized web: before=1 after=2 added=1 removed=0"
    );
    agree(&lab, "web", &id, 2);

    lab.ok(&["vm", "rm", "--force", "web"]);
    assert_eq!(lab.leases(), Vec::<String>::new());
    assert_eq!(lab.stray_links(), Vec::<String>::new());
}

/// A snapshot of a VM grown to 2 NICs is cloned with 2 NICs.
#[test]
fn a_clone_gets_the_grown_nic_count() {
    let Some(lab) = NetLab::new("a_clone_gets_the_grown_nic_count", Value::Null) else {
        return;
    };
    lab.ok(&["vm", "run", "--nics", "1", "--name", "src", "test/guest:1"]);
    lab.ok(&["vm", "net", "src", "--nics", "2"]);
    lab.ok(&["snapshot", "save", "--name", "s2", "src"]);
    let clone = lab
        .ok(&["vm", "clone", "--name", "copy", "s2"])
        .trim()
        .to_string();
    let clone = clone.lines().next().unwrap_or_default().to_string();
    let nics = recorded(&lab, "copy");
    assert_eq!(nics.len(), 2, "{clone}");
    assert_eq!(vmm_nics(&lab, "copy"), nics);
    let id = lab.inspect("copy")["id"].as_str().unwrap().to_string();
    assert_eq!(vm_links(&id), expected_links(&id, 2));
    assert_eq!(lab.leases().len(), 4);
}

/// vk-cocoon's hibernate: `vm net --nics 0` drops every NIC (none in the
/// VMM, no lease, no link; the VM keeps its namespace, where its VMM
/// runs), a snapshot then has none and its clone takes `--nics 1`; the VM
/// itself grows back to 1 NIC, also after a stop and a start; `vm rm`
/// releases the namespace.
#[test]
fn down_to_zero_nics_and_back() {
    let Some(lab) = NetLab::new("down_to_zero_nics_and_back", Value::Null) else {
        return;
    };
    let id = lab
        .ok(&["vm", "run", "--nics", "1", "--name", "web", "test/guest:1"])
        .trim()
        .to_string();
    let ns = cocoon_engine::net::netns::path_for(&id);
    let out: Value =
        serde_json::from_str(&lab.ok(&["vm", "net", "web", "--nics", "0", "-o", "json"])).unwrap();
    assert_eq!(
        (out["before"].as_u64(), out["after"].as_u64()),
        (Some(1), Some(0))
    );
    agree(&lab, "web", &id, 0);
    assert!(ns.exists(), "the VM keeps its namespace");
    let vm = lab.inspect("web");
    assert!(
        !vm["boot_config"]["cmdline"]
            .as_str()
            .unwrap()
            .contains("ip=")
    );

    // Its snapshot has no NIC; a clone asks for one.
    lab.ok(&["snapshot", "save", "--name", "bare", "web"]);
    lab.ok(&["vm", "clone", "--nics", "1", "--name", "woken", "bare"]);
    let woken = lab.inspect("woken");
    assert_eq!(recorded(&lab, "woken").len(), 1);
    assert_eq!(vmm_nics(&lab, "woken"), recorded(&lab, "woken"));
    lab.ok(&["vm", "rm", "--force", "woken"]);
    assert!(!cocoon_engine::net::netns::path_for(woken["id"].as_str().unwrap()).exists());

    lab.ok(&["vm", "net", "web", "--nics", "1"]);
    agree(&lab, "web", &id, 1);
    lab.ok(&["vm", "net", "web", "--nics", "0"]);
    lab.ok(&["vm", "stop", "web"]);
    lab.ok(&["vm", "start", "web"]);
    let pid = lab.inspect("web")["pid"].as_u64().unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .unwrap()
            .ino(),
        std::fs::metadata(&ns).unwrap().ino(),
        "the restarted VMM runs in the VM's namespace"
    );
    lab.ok(&["vm", "net", "web", "--nics", "2"]);
    agree(&lab, "web", &id, 2);
    lab.ok(&["vm", "net", "web", "--nics", "0"]);
    lab.ok(&["vm", "rm", "--force", "web"]);
    assert!(!ns.exists());
    assert_eq!(lab.leases(), Vec::<String>::new());
    assert_eq!(lab.stray_links(), Vec::<String>::new());
}

/// Every user mistake: its exact error, exit code 1, nothing changed.
#[test]
fn user_mistakes_are_refused_and_change_nothing() {
    let Some(lab) = NetLab::new("user_mistakes_are_refused_and_change_nothing", Value::Null) else {
        return;
    };
    let id = lab
        .ok(&["vm", "run", "--nics", "1", "--name", "web", "test/guest:1"])
        .trim()
        .to_string();
    lab.ok(&["vm", "run", "--nics", "0", "--name", "bare", "test/guest:1"]);
    lab.ok(&[
        "vm",
        "run",
        "--fc",
        "--nics",
        "1",
        "--name",
        "onfc",
        "test/guest:1",
    ]);
    lab.ok(&[
        "vm",
        "create",
        "--nics",
        "1",
        "--name",
        "idle",
        "test/guest:1",
    ]);
    let before = (recorded(&lab, "web"), lab.leases(), vm_links(&id));
    let cases: &[(&[&str], &str)] = &[
        (
            &["vm", "net", "nosuch", "--nics", "2"],
            "no such VM \"nosuch\": vm not found by ID, name or ID prefix",
        ),
        (
            &["vm", "net", "web", "--nics", "17"],
            "cannot change the NICs of VM web: --nics 17 is more than 16, the most NICs `vm net` gives a VM (its PCI bus is shared with its disks and other devices)",
        ),
        (
            &["vm", "net", "bare", "--nics", "1"],
            "cannot change the NICs of VM bare: it was made without a network (--nics 0), so its VMM runs outside any VM network namespace and a new NIC could not reach it; snapshot it and clone it with the NICs it needs (`cocoon vm clone --nics N`)",
        ),
        (
            &["vm", "net", "onfc", "--nics", "2"],
            "cannot change the NICs of VM onfc: backend does not support net resize: Firecracker cannot add a NIC to or remove one from a running VM (its API takes network interfaces before boot only); create or clone the VM with the NICs it needs (`--nics N`), or run it on Cloud Hypervisor (`--hypervisor`); VM onfc is unchanged",
        ),
        (
            &["vm", "net", "idle", "--nics", "2"],
            "is not running; start it with `cocoon vm start idle`",
        ),
    ];
    for (args, want) in cases {
        let out = lab.cmd().args(*args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // Usage errors: no --nics, a negative count.
    for args in [
        &["vm", "net", "web"][..],
        &["vm", "net", "web", "--nics", "-1"],
    ] {
        let out = lab.cmd().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    assert_eq!((recorded(&lab, "web"), lab.leases(), vm_links(&id)), before);
    assert_eq!(vmm_nics(&lab, "web"), before.0);
    assert_eq!(recorded(&lab, "onfc").len(), 1);
    assert_eq!(recorded(&lab, "idle").len(), 1);
    assert_eq!(recorded(&lab, "bare").len(), 0);
}

/// A CNI ADD that fails (the range is out of addresses) on the second new
/// NIC: the error names it and the count the VM has; the NIC made before
/// it stays (as upstream), and nothing of the failed one is left (VMM,
/// lease, link).
#[test]
fn a_failing_cni_add_keeps_the_nics_made_before_it() {
    let Some(lab) = NetLab::new(
        "a_failing_cni_add_keeps_the_nics_made_before_it",
        serde_json::json!({"ranges": [[{"subnet": "10.250.9.0/24", "rangeStart": "10.250.9.10", "rangeEnd": "10.250.9.11"}]]}),
    ) else {
        return;
    };
    let id = lab
        .ok(&["vm", "run", "--nics", "1", "--name", "web", "test/guest:1"])
        .trim()
        .to_string();
    let err = lab.fail(&["vm", "net", "web", "--nics", "3"]);
    assert!(
        err.contains("cannot add NIC eth2 of VM web: CNI plugin bridge failed on ADD for eth2"),
        "{err}"
    );
    assert!(err.contains("the VM has 2 NIC(s) now"), "{err}");
    // The NIC that could be made stays: the VM has 2.
    assert_eq!(recorded(&lab, "web").len(), 2);
    assert_eq!(vmm_nics(&lab, "web"), recorded(&lab, "web"));
    assert_eq!(lab.leases().len(), 2);
    assert_eq!(vm_links(&id), expected_links(&id, 2));
}

/// Bridge mode (`--bridge`): a new NIC is a TAP on the VM's bridge, a
/// removed one's TAP is deleted; down to none and back.
#[test]
fn bridge_mode_nics_are_taps_on_the_bridge() {
    let Some(lab) = NetLab::new("bridge_mode_nics_are_taps_on_the_bridge", Value::Null) else {
        return;
    };
    let br = format!("brn{}", &lab.bridge[3..]);
    sh(&["ip", "-n", &lab.ns, "link", "add", &br, "type", "bridge"]);
    let id = lab
        .ok(&[
            "vm",
            "run",
            "--nics",
            "1",
            "--bridge",
            &br,
            "--name",
            "b",
            "test/guest:1",
        ])
        .trim()
        .to_string();
    let tap = |i: usize| format!("bt{}-{i}", &id[..8]);
    let on_bridge = |name: &str| {
        std::process::Command::new("ip")
            .args(["-n", &lab.ns, "-d", "link", "show", name])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("master {br}")))
            .unwrap_or(false)
    };
    lab.ok(&["vm", "net", "b", "--nics", "3"]);
    let record = recorded(&lab, "b");
    assert_eq!(record.len(), 3);
    assert_eq!(vmm_nics(&lab, "b"), record);
    for (i, (name, _)) in record.iter().enumerate() {
        assert_eq!(*name, tap(i));
        assert!(on_bridge(&tap(i)), "{} on {br}", tap(i));
    }
    lab.ok(&["vm", "net", "b", "--nics", "0"]);
    assert_eq!(vmm_nics(&lab, "b"), vec![]);
    assert!((0..3).all(|i| !on_bridge(&tap(i))), "TAPs deleted");
    lab.ok(&["vm", "net", "b", "--nics", "1"]);
    assert_eq!(recorded(&lab, "b").len(), 1);
    assert!(on_bridge(&tap(0)));
    assert_eq!(lab.leases(), Vec::<String>::new(), "no CNI in bridge mode");
    lab.ok(&["vm", "rm", "--force", "b"]);
    assert!(!on_bridge(&tap(0)));
}
