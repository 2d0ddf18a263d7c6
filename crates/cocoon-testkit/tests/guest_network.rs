//! A real Linux guest on the engine's network wiring. Two VMs are created and
//! started (fake VMMs, which do not open the TAP) on a CNI network in a test
//! namespace; then the Linux test image boots under qemu (TCG; this
//! machine's PVM KVM runs no stock kernel under CH or FC) inside each VM's
//! namespace, on the TAP the engine created, with the engine's MAC and the
//! engine's kernel command line, `ip=` included. The guest configures its
//! NIC from `ip=`; the host side of the bridge must reach it, and the two
//! guests (one with the Cloud Hypervisor command line and a multi-queue TAP,
//! one with Firecracker's and a single-queue TAP) must reach each other.

#[path = "vm_network/netlab.rs"]
#[allow(dead_code)]
mod netlab;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cocoon_engine::net::netns;
use cocoon_testkit::linux_guest::{self, qemu};
use netlab::{NetLab, sh};
use serde_json::Value;

/// TCG on two shared cores, two guests at once: a boot takes seconds, a
/// stuck one must not take minutes.
const BOOT_LIMIT: Duration = Duration::from_secs(120);
/// The guest retries a peer for about a minute (rootfs-init.sh).
const PEER_PING_LIMIT: Duration = Duration::from_secs(100);
/// How long a guest stays up before powering off; the test kills it sooner.
const HOLD_SECONDS: u32 = 600;

/// One ICMP echo from the host side of the bridge (the test namespace,
/// where the bridge holds the gateway address); true if answered.
fn host_ping(lab: &NetLab, busybox: &Path, ip: &str) -> bool {
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.ns))
        .arg(busybox)
        .args(["ping", "-c", "1", "-W", "1", ip])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Pings until answered or `limit` passes (a bridge port may drop the first
/// frames while it learns the guest's MAC).
fn host_ping_within(lab: &NetLab, busybox: &Path, ip: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if host_ping(lab, busybox, ip) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
    }
}

/// One VM as the engine set it up, and the qemu booting it.
struct Guest {
    name: &'static str,
    id: String,
    ip: String,
    boot: qemu::Boot,
    qemu: Option<qemu::Running>,
}

impl Guest {
    fn console(&self) -> String {
        self.qemu.as_ref().map(|q| q.console()).unwrap_or_default()
    }

    /// Everything a failure message needs.
    fn context(&self) -> String {
        let qemu_output = self
            .qemu
            .as_ref()
            .map(|q| q.qemu_output())
            .unwrap_or_default();
        format!(
            "{} ({}, {}):\ncmdline: {}\nqemu output: {qemu_output}\nconsole:\n{}",
            self.name,
            self.id,
            self.ip,
            self.boot.cmdline,
            self.console()
        )
    }

    fn wait_for(&mut self, needle: &str, limit: Duration) {
        let found = self
            .qemu
            .as_mut()
            .expect("qemu started")
            .wait_for(needle, limit);
        assert!(found, "no {needle:?} within {limit:?}\n{}", self.context());
    }

    /// The values of the `key=value` lines the guest printed.
    fn reported(&self, key: &str) -> Vec<String> {
        self.console()
            .lines()
            .filter_map(|l| {
                Some(
                    l.trim_end()
                        .strip_prefix(key)?
                        .strip_prefix('=')?
                        .to_string(),
                )
            })
            .collect()
    }
}

/// Creates and starts a VM with one NIC; the engine's wiring is then live
/// (TAP up, redirects in place) and nothing holds the TAP open.
fn start_vm(lab: &NetLab, name: &'static str, flags: &[&str]) -> Guest {
    let mut create = vec!["vm", "create", "--nics", "1", "--name", name];
    create.extend_from_slice(flags);
    create.push("test/linux:1");
    let id = lab.ok(&create).trim().to_string();
    lab.ok(&["vm", "start", name]);
    let vm = lab.inspect(name);
    assert_eq!(vm["state"], "running", "{vm:#}");
    let nic = &vm["network_configs"][0];
    assert_eq!(nic["backend"], "cni", "{vm:#}");
    let ip = nic["network"]["ip"]
        .as_str()
        .expect("an address")
        .to_string();
    let boot = qemu::Boot::from_inspect(&vm);
    assert_eq!(boot.netns, Some(netns::path_for(&id)), "{vm:#}");
    assert_eq!(boot.nics.len(), 1, "{vm:#}");
    assert_eq!(boot.nics[0].tap, format!("tap{}-0", &id[..8]));
    assert_eq!(boot.nics[0].mac, nic["mac"].as_str().unwrap());
    let gateway = format!("{}.1", lab.subnet);
    assert!(
        boot.cmdline
            .contains(&format!("ip={ip}::{gateway}:255.255.255.0:{name}:eth0:off")),
        "{}",
        boot.cmdline
    );
    Guest {
        name,
        id,
        ip,
        boot,
        qemu: None,
    }
}

/// The `ip=` argument's DNS servers, which the guest must write to resolv.conf.
fn dns_of(cmdline: &str) -> Vec<String> {
    let ip = cmdline
        .split(' ')
        .find_map(|a| a.strip_prefix("ip="))
        .expect("an ip= argument");
    ip.split(':').skip(7).map(str::to_string).collect()
}

#[test]
fn linux_guests_reach_the_host_and_each_other_over_the_engine_wiring() {
    let test = "linux_guests_reach_the_host_and_each_other_over_the_engine_wiring";
    let Some(qemu_bin) = qemu::binary() else {
        return cocoon_testkit::skip(
            test,
            "qemu-system-x86_64 not found (apt-get install qemu-system-x86)",
        );
    };
    let assets = match linux_guest::Assets::find() {
        Ok(assets) => assets,
        Err(why) => {
            return cocoon_testkit::skip(test, &format!("{why}: run scripts/fetch-test-assets.sh"));
        }
    };
    let busybox: PathBuf = assets.busybox.clone();
    let Some(lab) = NetLab::new(test, Value::Null) else {
        return;
    };
    let layers = linux_guest::layer_tars(&assets);
    let mut import = vec!["image", "import", "test/linux:1"];
    import.extend(layers.iter().map(|p| p.to_str().unwrap()));
    lab.ok(&import);

    // Two vCPUs: a queue pair each, so the engine makes a multi-queue TAP.
    let mut guests = [
        start_vm(&lab, "guest-ch", &["--cpu", "2"]),
        start_vm(&lab, "guest-fc", &["--fc"]),
    ];
    assert_eq!(guests[0].boot.backend, qemu::Backend::CloudHypervisor);
    assert_eq!(guests[0].boot.nics[0].num_queues, 4);
    assert_eq!(guests[1].boot.backend, qemu::Backend::Firecracker);
    assert_eq!(guests[1].boot.nics[0].num_queues, 2);
    // The CNI bridge plugin made the bridge, with the gateway address, on the first ADD.
    let gateway = format!("{}.1", lab.subnet);
    let bridge = sh(&["ip", "-n", &lab.ns, "-4", "addr", "show", &lab.bridge]);
    assert!(
        bridge.contains(&format!("inet {gateway}/24")),
        "the host side of the bridge: {bridge}"
    );

    // Nothing answers yet: the wiring alone does not make a guest.
    for guest in &guests {
        assert!(
            !host_ping(&lab, &busybox, &guest.ip),
            "{} answers before it boots",
            guest.name
        );
    }

    // Boot both at once; each pings the other. The engine's command line is
    // kept whole; the test's arguments go after it.
    let ips: Vec<String> = guests.iter().map(|g| g.ip.clone()).collect();
    let started = Instant::now();
    for (i, guest) in guests.iter_mut().enumerate() {
        let peer = &ips[1 - i];
        let mut boot = guest.boot.clone();
        boot.cmdline.push_str(&format!(
            " cocoon.test.ping={peer} cocoon.test.hold={HOLD_SECONDS}"
        ));
        let console_log = lab.env.path().join(format!("{}.console", guest.name));
        guest.qemu = Some(boot.spawn(&qemu_bin, &console_log));
    }
    for guest in &mut guests {
        guest.wait_for(linux_guest::NET_MARKER, BOOT_LIMIT);
    }
    let network_up = started.elapsed();

    for guest in &guests {
        let context = guest.context();
        assert!(
            !guest.console().contains(linux_guest::PANIC_MARKER),
            "{context}"
        );
        let cmdline = guest.reported("cmdline");
        assert!(
            cmdline
                .first()
                .is_some_and(|c| c.starts_with(&format!("{} cocoon.test.", guest.boot.cmdline))),
            "the guest saw the engine's command line: {cmdline:?}\n{context}"
        );
        assert_eq!(
            guest.reported("inet"),
            [format!("eth0 {}/24", guest.ip)],
            "{context}"
        );
        let routes = guest.reported("route");
        let defaults: Vec<&String> = routes.iter().filter(|r| r.starts_with("default")).collect();
        assert!(
            defaults.len() == 1
                && defaults[0].starts_with(&format!("default via {gateway} dev eth0")),
            "{routes:?}\n{context}"
        );
        let dns = dns_of(&guest.boot.cmdline);
        assert!(!dns.is_empty(), "{}", guest.boot.cmdline);
        let nameservers: Vec<String> = dns.iter().map(|d| format!("nameserver {d}")).collect();
        assert_eq!(guest.reported("resolv"), nameservers, "{context}");
        assert_eq!(guest.reported("hostname"), [guest.name], "{context}");

        assert!(
            host_ping_within(&lab, &busybox, &guest.ip, Duration::from_secs(15)),
            "the host side of the bridge gets no reply from {}\n{context}",
            guest.ip
        );
    }

    for (i, guest) in guests.iter_mut().enumerate() {
        let peer = &ips[1 - i];
        guest.wait_for(&format!("ping:{peer}="), PEER_PING_LIMIT);
        assert_eq!(
            guest.reported(&format!("ping:{peer}")),
            ["ok"],
            "{} cannot reach its peer\n{}",
            guest.name,
            guest.context()
        );
    }
    eprintln!(
        "{test}: both guests had their network after {:.1} s, all pings done after {:.1} s",
        network_up.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );

    // Teardown through the engine; then nothing of the test may remain.
    for guest in &mut guests {
        guest.qemu.take().expect("qemu").kill();
        lab.ok(&["vm", "rm", "--force", guest.name]);
        assert!(!netns::path_for(&guest.id).exists(), "{}", guest.name);
    }
    assert_eq!(lab.leases(), Vec::<String>::new());
    assert_eq!(lab.stray_links(), Vec::<String>::new());
    let lab_ns = lab.ns.clone();
    let bridge_name = lab.bridge.clone();
    drop(lab);
    let namespaces = sh(&["ip", "netns", "list"]);
    assert!(!namespaces.contains(&lab_ns), "{namespaces}");
    for guest in &guests {
        assert!(
            !namespaces.contains(&format!("cocoon-{}", guest.id)),
            "{namespaces}"
        );
    }
    let links = sh(&["ip", "-br", "link"]);
    assert!(!links.contains(&bridge_name), "{links}");
}
