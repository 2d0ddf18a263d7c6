//! Networking with Debian's real CNI plugins (bridge + host-local + loopback):
//! every test runs cocoon inside a network namespace it creates (so the CNI
//! bridge and its addresses never touch the host's own namespace), and
//! removes everything it made. The fake VMMs stand in for the VMMs.

#[path = "vm_network/netlab.rs"]
#[allow(dead_code)]
mod netlab;

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cocoon_engine::net::{netns, tap};
use netlab::{NetLab, sh};
use serde_json::Value;

/// An ARP request for `target` from (`mac`, `ip`), behind a zeroed virtio-net header.
fn arp_request(mac: &[u8], ip: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut frame = vec![0u8; 10]; // struct virtio_net_hdr
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(mac);
    frame.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(mac);
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&target);
    frame
}

fn ipv4(text: &str) -> [u8; 4] {
    text.parse::<std::net::Ipv4Addr>().unwrap().octets()
}

/// A packet written into the VM's TAP leaves through the CNI veth to the
/// bridge, and the bridge's answer comes back into the TAP: the redirects
/// work both ways.
#[test]
fn cni_nics_are_wired_and_redirect_traffic() {
    let Some(lab) = NetLab::new("cni_nics_are_wired_and_redirect_traffic", Value::Null) else {
        return;
    };
    let id = lab
        .ok(&[
            "vm",
            "create",
            "--nics",
            "2",
            "--cpu",
            "1",
            "--name",
            "web",
            "test/guest:1",
        ])
        .trim()
        .to_string();
    let vm = lab.inspect("web");
    assert_eq!(vm["config"]["network"], "testnet");
    let nics = vm["network_configs"].as_array().unwrap();
    assert_eq!(nics.len(), 2);
    let ns_path = netns::path_for(&id);
    assert!(netns::exists(&ns_path));
    for (i, nic) in nics.iter().enumerate() {
        assert_eq!(nic["tap"], format!("tap{}-{i}", &id[..8]));
        assert_eq!(nic["backend"], "cni");
        assert_eq!(nic["network"]["gateway"], format!("{}.1", lab.subnet));
        assert_eq!(nic["network"]["prefix"], 24);
        // The guest MAC is the veth's.
        let link = sh(&[
            "ip",
            "-n",
            &format!("cocoon-{id}"),
            "-br",
            "link",
            "show",
            &format!("eth{i}"),
        ]);
        assert!(link.contains(nic["mac"].as_str().unwrap()), "{link}");
        // Addresses moved to the guest.
        let addrs = sh(&[
            "ip",
            "-n",
            &format!("cocoon-{id}"),
            "-4",
            "addr",
            "show",
            &format!("eth{i}"),
        ]);
        assert!(!addrs.contains("inet "), "{addrs}");
        let filters = sh(&[
            "ip",
            "netns",
            "exec",
            &format!("cocoon-{id}"),
            "tc",
            "filter",
            "show",
            "dev",
            &format!("eth{i}"),
            "ingress",
        ]);
        assert!(
            filters.contains(&format!("Egress Redirect to device tap{}-{i}", &id[..8])),
            "{filters}"
        );
        assert!(filters.contains("protocol all"), "{filters}");
    }
    let cmdline = vm["boot_config"]["cmdline"].as_str().unwrap();
    let ip0 = nics[0]["network"]["ip"].as_str().unwrap();
    assert!(
        cmdline.contains(&format!(
            "ip={ip0}::{}.1:255.255.255.0:web:eth0:off",
            lab.subnet
        )),
        "{cmdline}"
    );
    assert_eq!(lab.leases().len(), 2);

    // Traffic: ARP for the gateway through tap0.
    let mac = cocoon_engine::net::wire::parse_mac(nics[0]["mac"].as_str().unwrap()).unwrap();
    let gateway = ipv4(&format!("{}.1", lab.subnet));
    let tap_name = nics[0]["tap"].as_str().unwrap().to_string();
    let reply = netns::run_in(&ns_path, || {
        let mut queue = tap::open_queue(&tap_name, tap::flags(false)).unwrap();
        let request = arp_request(&mac, ipv4(ip0), gateway);
        // SAFETY: setting O_NONBLOCK on a fd we own.
        unsafe {
            use std::os::fd::AsRawFd;
            libc::fcntl(queue.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 2048];
        let mut next_send = Instant::now();
        while Instant::now() < deadline {
            // Like any ARP client, ask again: a bridge port just created may
            // drop the first frames.
            if Instant::now() >= next_send {
                queue.write_all(&request).unwrap();
                next_send = Instant::now() + Duration::from_millis(250);
            }
            match queue.read(&mut buf) {
                Ok(n) if n >= 10 + 42 => {
                    let frame = &buf[10..n];
                    // ARP reply (op 2) from the gateway's IP to us.
                    if frame[12..14] == [0x08, 0x06]
                        && frame[20..22] == [0, 2]
                        && frame[28..32] == gateway
                    {
                        return Some(frame.to_vec());
                    }
                }
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        None
    })
    .unwrap();
    let reply = reply.expect("the bridge's ARP reply came back through the TAP");
    assert_eq!(&reply[0..6], mac.as_slice(), "addressed to the guest MAC");

    // rm releases everything.
    lab.ok(&["vm", "rm", "web"]);
    assert!(!ns_path.exists());
    assert_eq!(lab.leases(), Vec::<String>::new());
    assert_eq!(lab.stray_links(), Vec::<String>::new());
}

/// NIC 2 of 2 fails (the range has one address): NIC 1 is released, the
/// namespace removed, no record kept.
#[test]
fn a_failing_nic_rolls_back_the_others() {
    let Some(lab) = NetLab::new(
        "a_failing_nic_rolls_back_the_others",
        serde_json::json!({"ranges": [[{"subnet": "10.250.7.0/24", "rangeStart": "10.250.7.10", "rangeEnd": "10.250.7.10"}]]}),
    ) else {
        return;
    };
    let err = lab.fail(&[
        "vm",
        "create",
        "--nics",
        "2",
        "--name",
        "two",
        "test/guest:1",
    ]);
    assert!(
        err.contains("CNI plugin bridge failed on ADD for eth1"),
        "{err}"
    );
    assert!(err.contains("no IP addresses available"), "{err}");
    let list: Value = serde_json::from_str(&lab.ok(&["vm", "ls", "-o", "json"])).unwrap();
    assert_eq!(list, serde_json::json!([]));
    assert_eq!(lab.leases(), Vec::<String>::new());
    assert_eq!(lab.stray_links(), Vec::<String>::new());
    // The half-created VM left its ID in the event log; its namespace is gone.
    let mut store = cocoon_engine::store::Store::open(&lab.env.db_path()).unwrap();
    let ids: Vec<String> = store
        .events_since(0, 100)
        .unwrap()
        .into_iter()
        .filter(|e| e.object_kind == cocoon_engine::store::ObjectKind::Vm)
        .map(|e| e.object_id)
        .collect();
    assert!(!ids.is_empty(), "the create was recorded, then rolled back");
    for id in &ids {
        assert!(
            !netns::path_for(id).exists(),
            "namespace of {id} left behind"
        );
    }
    // The lone address is free again: one NIC fits.
    lab.ok(&[
        "vm",
        "create",
        "--nics",
        "1",
        "--name",
        "one",
        "test/guest:1",
    ]);
    assert_eq!(lab.leases(), vec!["10.250.7.10".to_string()]);
}

fn netns_inode(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

/// A host reboot destroys the namespace; `vm start` rebuilds it with the same
/// IP and MAC and runs the VMM inside it. A stop quiesces the NIC.
#[test]
fn start_rebuilds_a_lost_namespace() {
    let Some(lab) = NetLab::new("start_rebuilds_a_lost_namespace", Value::Null) else {
        return;
    };
    let id = lab
        .ok(&[
            "vm",
            "create",
            "--nics",
            "1",
            "--name",
            "db",
            "test/guest:1",
        ])
        .trim()
        .to_string();
    let before = lab.inspect("db");
    lab.ok(&["vm", "start", "db"]);
    let running = lab.inspect("db");
    let pid = running["pid"].as_u64().unwrap();
    let ns_path = netns::path_for(&id);
    assert_eq!(
        std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .unwrap()
            .ino(),
        netns_inode(&ns_path),
        "the VMM runs in the VM's namespace"
    );
    lab.ok(&["vm", "stop", "db"]);
    let tap = before["network_configs"][0]["tap"].as_str().unwrap();
    let ns_name = format!("cocoon-{id}");
    let filters = sh(&[
        "ip", "netns", "exec", &ns_name, "tc", "filter", "show", "dev", tap, "ingress",
    ]);
    assert!(
        filters.trim().is_empty(),
        "stopped VM's TAP has no redirect: {filters}"
    );
    assert!(
        !sh(&["ip", "-n", &ns_name, "link", "show", tap]).contains(",UP"),
        "TAP down"
    );

    // "Reboot": the namespace and everything in it vanish; the IPAM lease stays.
    sh(&["ip", "netns", "delete", &ns_name]);
    assert!(!netns::exists(&ns_path));
    lab.ok(&["vm", "start", "db"]);
    assert!(netns::exists(&ns_path));
    let after = lab.inspect("db");
    assert_eq!(
        after["network_configs"], before["network_configs"],
        "same IP, MAC, TAP"
    );
    let mac = before["network_configs"][0]["mac"].as_str().unwrap();
    assert!(sh(&["ip", "-n", &ns_name, "-br", "link", "show", "eth0"]).contains(mac));
    let pid = after["pid"].as_u64().unwrap();
    assert_eq!(
        std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .unwrap()
            .ino(),
        netns_inode(&ns_path)
    );
    let filters = sh(&[
        "ip", "netns", "exec", &ns_name, "tc", "filter", "show", "dev", tap, "ingress",
    ]);
    assert!(
        filters.contains("Egress Redirect to device eth0"),
        "{filters}"
    );
    assert_eq!(
        lab.leases().len(),
        1,
        "the old lease was released and taken again"
    );
    lab.ok(&["vm", "rm", "--force", "db"]);
    assert!(!ns_path.exists());
    assert_eq!(lab.leases(), Vec::<String>::new());
}

/// `--bridge DEV`: a TAP on an existing bridge, no CNI, no namespace.
#[test]
fn bridge_mode_puts_a_tap_on_the_bridge() {
    let Some(lab) = NetLab::new("bridge_mode_puts_a_tap_on_the_bridge", Value::Null) else {
        return;
    };
    let br = format!("brt{}", &lab.bridge[3..]);
    sh(&["ip", "-n", &lab.ns, "link", "add", &br, "type", "bridge"]);
    let err = lab.fail(&[
        "vm",
        "create",
        "--nics",
        "1",
        "--bridge",
        "nosuchbr0",
        "--name",
        "b",
        "test/guest:1",
    ]);
    assert!(err.contains("bridge nosuchbr0: no such bridge"), "{err}");
    let id = lab
        .ok(&[
            "vm",
            "create",
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
    let vm = lab.inspect("b");
    let nic = &vm["network_configs"][0];
    assert_eq!(nic["backend"], "bridge");
    assert_eq!(nic["bridge_dev"], br.as_str());
    let mac = nic["mac"].as_str().unwrap();
    let first = u8::from_str_radix(&mac[..2], 16).unwrap();
    assert_eq!(first & 0x03, 0x02, "locally administered unicast: {mac}");
    let tap = format!("bt{}-0", &id[..8]);
    let link = sh(&["ip", "-n", &lab.ns, "-d", "link", "show", &tap]);
    assert!(link.contains(&format!("master {br}")), "{link}");
    assert!(!netns::path_for(&id).exists());
    assert!(
        !vm["boot_config"]["cmdline"]
            .as_str()
            .unwrap()
            .contains("ip=")
    );
    lab.ok(&["vm", "rm", "b"]);
    let gone = Command::new("ip")
        .args(["-n", &lab.ns, "link", "show", &tap])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "TAP removed");
}

/// With the real VMMs: `vm run --nics 1` on Cloud Hypervisor and Firecracker
/// runs the VMM inside the VM's namespace with its TAP open.
#[test]
fn real_vmms_open_the_tap_inside_the_namespace() {
    let test = "real_vmms_open_the_tap_inside_the_namespace";
    let Some(ch) = cocoon_testkit::require_real_vmm(test, "COCOON_CH_BINARY", "cloud-hypervisor")
    else {
        return;
    };
    let Some(fc) = cocoon_testkit::require_real_vmm(test, "COCOON_FC_BINARY", "firecracker") else {
        return;
    };
    let Some(mut lab) = NetLab::new(test, Value::Null) else {
        return;
    };
    lab.ch = ch;
    lab.fc = fc;
    for (name, flag) in [("on-ch", None), ("on-fc", Some("--fc"))] {
        let mut args = vec![
            "vm", "run", "--nics", "1", "--memory", "512M", "--name", name,
        ];
        args.extend(flag);
        args.push("test/guest:1");
        let id = lab.ok(&args).trim().to_string();
        let vm = lab.inspect(name);
        let pid = vm["pid"].as_u64().unwrap();
        let ns_path = netns::path_for(&id);
        assert_eq!(
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .unwrap()
                .ino(),
            netns_inode(&ns_path),
            "{name}: the VMM runs in the VM's namespace"
        );
        let tap = vm["network_configs"][0]["tap"].as_str().unwrap();
        let link = sh(&["ip", "-n", &format!("cocoon-{id}"), "link", "show", tap]);
        assert!(
            link.contains("LOWER_UP"),
            "{name}: the VMM holds the TAP open: {link}"
        );
        lab.ok(&["vm", "rm", "--force", name]);
        assert!(!ns_path.exists());
    }
    assert_eq!(lab.leases(), Vec::<String>::new());
}

/// A VM whose record a crash lost leaves its namespace and IPAM lease: `gc`
/// releases both (and only what this installation marked as its own).
#[test]
fn gc_releases_the_network_of_a_vanished_vm() {
    let Some(lab) = NetLab::new("gc_releases_the_network_of_a_vanished_vm", Value::Null) else {
        return;
    };
    let id = lab
        .ok(&[
            "vm",
            "create",
            "--nics",
            "1",
            "--name",
            "gone",
            "test/guest:1",
        ])
        .trim()
        .to_string();
    assert_eq!(lab.leases().len(), 1);
    let mut store = cocoon_engine::store::Store::open(&lab.env.db_path()).unwrap();
    store.delete_vm(&id).unwrap();
    drop(store);
    // A namespace this installation never made is not touched.
    let foreign = netns::path_for("FOREIGNFOREIGNFOREIGNFOREI");
    netns::create(&foreign).unwrap();
    let report: Value = serde_json::from_str(&lab.ok(&["gc", "-o", "json"])).unwrap();
    let foreign_kept = netns::exists(&foreign);
    let _ = netns::delete(&foreign);
    let ns = netns::path_for(&id);
    assert!(
        report["removed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["kind"] == "netns" && i["path"] == ns.display().to_string()),
        "{report}"
    );
    assert!(!ns.exists());
    assert!(foreign_kept, "gc removed a namespace it did not make");
    assert_eq!(
        lab.leases(),
        Vec::<String>::new(),
        "the IPAM lease was released"
    );
    assert_eq!(lab.stray_links(), Vec::<String>::new());
}
