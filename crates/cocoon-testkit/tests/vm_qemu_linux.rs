//! Real Linux guests through the engine on QEMU (issue #17): the interactive
//! Linux test image (Debian's cloud kernel, the busybox initramfs of the
//! guest contract, a shell on the console) runs with `cocoon vm run --qemu`
//! under TCG (`qemu_accel = "tcg"`: this machine's PVM KVM runs no stock
//! kernel), with exactly the engine's QEMU command line, disks, kernel
//! command line and TAPs. Typed commands come back on `vm console`; two VMs
//! on a CNI bridge (in a test namespace, see vm_network/netlab.rs) get their
//! addresses from the engine and ping each other through its TAPs.

#[path = "vm_network/netlab.rs"]
#[allow(dead_code)]
mod netlab;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cocoon_engine::guest::cmdline::vd_name;
use cocoon_engine::model::VmmProcess;
use cocoon_engine::net::netns;
use cocoon_testkit::console::ConsoleSession;
use cocoon_testkit::linux_guest::{self, Assets};
use cocoon_testkit::{CocoonEnv, EnvReaper, processes_of, require_real_vmm, skip};
use netlab::{NetLab, sh};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A TCG boot on two shared cores takes seconds; a stuck one must not take
/// minutes.
const BOOT_LIMIT: Duration = Duration::from_secs(60);
/// A shell command's answer.
const ANSWER_LIMIT: Duration = Duration::from_secs(30);

/// qemu and the test assets, or a loud skip (a failure under
/// COCOON_TEST_REQUIRE=1).
fn prerequisites(test: &str) -> Option<(PathBuf, Assets)> {
    let qemu = require_real_vmm(test, "COCOON_QEMU_BINARY", "qemu-system-x86_64")?;
    match Assets::find() {
        Ok(assets) => Some((qemu, assets)),
        Err(why) => {
            skip(test, &format!("{why}: run scripts/fetch-test-assets.sh"));
            None
        }
    }
}

/// The installation's config: this qemu, always TCG.
fn configure(env: &CocoonEnv, qemu: &Path) {
    let config = format!("qemu_binary = {:?}\nqemu_accel = \"tcg\"\n", qemu.display());
    std::fs::write(env.config_path(), config).unwrap();
}

/// Imports the interactive Linux test image as `test/linux:1`.
fn import(ok: impl Fn(&[&str]) -> String, assets: &Assets) {
    let layers = linux_guest::interactive_layer_tars(assets);
    let mut import = vec!["image", "import", "test/linux:1"];
    import.extend(layers.iter().map(|p| p.to_str().unwrap()));
    ok(&import);
}

/// `vm logs VM` once it holds the shell marker (the guest's reports before
/// it), within [`BOOT_LIMIT`]; fails early on an initramfs panic.
fn wait_for_shell(ok: impl Fn(&[&str]) -> String, vm: &str) -> String {
    let deadline = Instant::now() + BOOT_LIMIT;
    loop {
        let log = ok(&["vm", "logs", vm]);
        assert!(
            !log.contains(linux_guest::PANIC_MARKER),
            "{vm}: the initramfs gave up:\n{log}"
        );
        if log.contains(linux_guest::SHELL_MARKER) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "{vm}: no {:?} within {BOOT_LIMIT:?}; console:\n{log}",
            linux_guest::SHELL_MARKER
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The value of the guest's `key=value` report line.
fn reported<'a>(log: &'a str, key: &str) -> Option<&'a str> {
    log.lines()
        .map(|l| l.trim_end_matches('\r'))
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// The guest came up on the engine's disks and command line: the overlay of
/// the layers (the top one first, the deleted file gone), as QEMU passed it.
fn assert_booted_from_the_engine(vm: &Value, log: &str) {
    let cmdline = vm["boot_config"]["cmdline"].as_str().unwrap();
    assert_eq!(reported(log, "cmdline"), Some(cmdline), "{log}");
    assert_eq!(reported(log, "doomed"), Some("absent"), "{log}");
    assert_eq!(
        reported(log, "top-layer"),
        Some(linux_guest::TOP_LAYER),
        "{log}"
    );
    assert_eq!(
        reported(log, "added-by-upper"),
        Some(linux_guest::ADDED_CONTENT),
        "{log}"
    );
}

/// The VMM is QEMU under TCG, as configured, counting guest time in
/// instructions (a stock kernel calibrates its TSC on a busy host then).
fn assert_qemu_tcg(vm: &Value) {
    assert_eq!(vm["hypervisor"], "qemu", "{vm:#}");
    let pid = vm["pid"].as_u64().expect("a running VMM");
    let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let argv: Vec<String> = argv
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert!(
        argv.iter()
            .any(|a| a == "microvm,pcie=on,accel=tcg,mem-merge=off"),
        "not TCG: {argv:?}"
    );
    assert!(
        argv.windows(2).any(|w| w == ["-icount", "shift=auto"]),
        "{argv:?}"
    );
}

/// Opens `vm console VM` and waits until the guest's shell answers (a line
/// typed before `vm console` has set up its terminal is lost: asked again
/// every 5 s).
fn shell_console(cmd: Command, vm: &str) -> ConsoleSession {
    let mut console = ConsoleSession::open(cmd, vm);
    console.expect(&format!("Connected to {vm}"));
    // The answer is not in the typed line, which the terminal echoes.
    console.ask(
        b"echo COCOON-$((6 * 7))-ANSWER\n",
        "COCOON-42-ANSWER",
        Duration::from_secs(5),
        ANSWER_LIMIT,
    );
    console
}

/// Runs `command` in the guest's shell: what it printed (the typed line
/// first, as the terminal echoes it) and its exit status. `tag` marks the
/// end of its output; split by `""` in the typed line, it is only whole in
/// what the guest prints.
fn shell(console: &mut ConsoleSession, command: &str, tag: &str) -> (String, i32) {
    let start = console.seen().len();
    let line = format!("{command}; echo \"{tag}\"\"-rc=$?\"; echo \"{tag}\"\"-done\"\n");
    console.send(line.as_bytes());
    console.expect_within(&format!("{tag}-done"), ANSWER_LIMIT);
    let output = console.seen()[start..].to_string();
    let rc = output
        .lines()
        .find_map(|l| l.trim_end().strip_prefix(&format!("{tag}-rc=")))
        .and_then(|rc| rc.parse().ok())
        .unwrap_or_else(|| panic!("no exit status of {command:?} in:\n{output}"));
    (output, rc)
}

/// The guest's `/dev/vdX` is the engine's X-th disk (the contract's "disks
/// in order" on virtio-mmio, where QEMU places the devices itself): each
/// layer by content, the COW disk by size, and no other disk.
fn assert_disks_in_order(console: &mut ConsoleSession, vm: &Value) {
    let disks = vm["storage_configs"].as_array().unwrap();
    let names: Vec<String> = (0..disks.len()).map(vd_name).collect();
    let (out, rc) = shell(console, "ls /sys/block", "disks");
    assert_eq!(rc, 0, "{out}");
    let listed: Vec<&str> = out
        .lines()
        .skip(1)
        .flat_map(str::split_whitespace)
        .filter(|n| n.starts_with("vd"))
        .collect();
    assert_eq!(listed, names, "{out}");
    for (disk, name) in disks.iter().zip(&names) {
        let path = Path::new(disk["path"].as_str().unwrap());
        if disk["role"] == "layer" {
            let (out, rc) = shell(console, &format!("busybox sha256sum /dev/{name}"), name);
            assert_eq!(rc, 0, "{out}");
            let digest: String = Sha256::digest(std::fs::read(path).unwrap())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert!(
                out.contains(&format!("{digest}  /dev/{name}")),
                "/dev/{name} is not {}:\n{out}",
                path.display()
            );
        } else {
            assert_eq!(disk["role"], "cow", "{vm:#}");
            let (out, rc) = shell(console, &format!("cat /sys/block/{name}/size"), name);
            assert_eq!(rc, 0, "{out}");
            let sectors = std::fs::metadata(path).unwrap().len() / 512;
            assert!(
                out.lines().any(|l| l.trim() == sectors.to_string()),
                "/dev/{name} is not the COW disk ({sectors} sectors):\n{out}"
            );
        }
    }
}

/// `vm disk attach` of a running Linux guest (issue #20): the guest finds a
/// new `/dev/vdX` whose serial is the disk's name (PCIe hot-plug on a root
/// port); after `vm disk detach` it is gone from the guest.
fn assert_hot_plugged_disk_seen(
    console: &mut ConsoleSession,
    ok: impl Fn(&[&str]) -> String,
    env: &CocoonEnv,
) {
    let file = env.path().join("extra.raw");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(24 << 20)
        .unwrap();
    ok(&[
        "vm",
        "disk",
        "attach",
        "linux",
        "--path",
        file.to_str().unwrap(),
        "--name",
        "extra",
    ]);
    let find = "for d in /sys/block/vd*; do [ \"$(cat $d/serial 2>/dev/null)\" = extra ] && echo found-$(basename $d)-$(cat $d/size); done";
    let deadline = Instant::now() + ANSWER_LIMIT;
    let mut tries = 0;
    let seen = loop {
        // Each try its own end tag: an earlier one is in the output already.
        tries += 1;
        let (out, _) = shell(console, find, &format!("hotplug{tries}"));
        if let Some(line) = out.lines().find(|l| l.trim_start().starts_with("found-vd")) {
            break line.trim().to_string();
        }
        if Instant::now() >= deadline {
            let (diag, _) = shell(
                console,
                "ls /sys/bus/pci/devices; ls /sys/block; dmesg | grep -i -E 'osc|pciehp|PNP0A08|acpi' | tail -30; cat /proc/cmdline",
                "diag",
            );
            panic!("the guest has no disk with serial extra:\n{out}\n{diag}");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        seen.ends_with(&format!("-{}", (24u64 << 20) / 512)),
        "the disk with serial extra is not 24 MiB: {seen}"
    );
    ok(&["vm", "disk", "detach", "linux", "--name", "extra"]);
    // `vm disk detach` returned once QEMU said DEVICE_DELETED: the guest
    // let the disk go.
    let (out, _) = shell(console, find, "unplugged");
    assert!(
        out.lines().any(|l| l.trim() == "unplugged-done") && !out.contains("found-vd"),
        "still in the guest:\n{out}"
    );
}

/// `cocoon vm run --qemu` boots the Linux test image under TCG; the guest
/// comes up on the engine's disks and command line, answers on `vm
/// console`, and `vm rm --force` leaves nothing running.
#[test]
fn linux_runs_on_qemu_tcg_and_answers_its_console() {
    let test = "linux_runs_on_qemu_tcg_and_answers_its_console";
    let Some((qemu, assets)) = prerequisites(test) else {
        return;
    };
    let env = CocoonEnv::new(cocoon_testkit::cocoon_bin());
    let _reaper = EnvReaper(env.root_dir());
    configure(&env, &qemu);
    let ok = |args: &[&str]| cocoon_testkit::run_ok(env.std_cmd(), args);
    import(ok, &assets);

    let started = Instant::now();
    ok(&[
        "vm",
        "run",
        "--qemu",
        "--nics",
        "0",
        "--cpu",
        "1",
        "--memory",
        "512M",
        "--name",
        "linux",
        "test/linux:1",
    ]);
    let vm: Value = serde_json::from_str(&ok(&["vm", "inspect", "linux"])).unwrap();
    assert_eq!(vm["state"], "running", "{vm:#}");
    assert_qemu_tcg(&vm);
    let procs: Vec<VmmProcess> = processes_of(&vm);
    assert_eq!(procs.len(), 2, "VMM and console relay: {vm:#}");
    let log = wait_for_shell(ok, "linux");
    let booted = started.elapsed();
    assert!(log.contains(linux_guest::READY_MARKER), "{log}");
    assert_booted_from_the_engine(&vm, &log);

    let mut console = shell_console(env.std_cmd(), "linux");
    let (out, rc) = shell(&mut console, "cat /etc/layer", "layer");
    assert_eq!(rc, 0, "{out}");
    assert!(
        out.lines().any(|l| l.trim() == linux_guest::TOP_LAYER),
        "{out}"
    );
    assert_disks_in_order(&mut console, &vm);
    assert_hot_plugged_disk_seen(&mut console, ok, &env);
    console.detach("linux");
    eprintln!(
        "{test}: shell up {:.1} s after `vm run`",
        booted.as_secs_f64()
    );

    let run_dir = PathBuf::from(vm["run_dir"].as_str().unwrap());
    ok(&["vm", "rm", "--force", "linux"]);
    assert!(!procs.iter().any(cocoon_engine::supervise::is_running));
    assert!(cocoon_engine::supervise::find_by_socket(&run_dir.join("api.sock")).is_empty());
    assert!(!run_dir.exists());
    let list: Value = serde_json::from_str(&ok(&["vm", "ls", "-o", "json"])).unwrap();
    assert_eq!(list, serde_json::json!([]));
}

/// The VM's TAP as QEMU holds it: up, with a carrier, in the VM's namespace,
/// QEMU running there too.
fn assert_on_its_tap(vm: &Value) {
    let id = vm["id"].as_str().unwrap();
    let ns = netns::path_for(id);
    let inode = |p: &str| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let pid = vm["pid"].as_u64().unwrap();
    assert_eq!(
        inode(&format!("/proc/{pid}/ns/net")),
        inode(ns.to_str().unwrap()),
        "QEMU runs in the VM's namespace"
    );
    let tap = vm["network_configs"][0]["tap"].as_str().unwrap();
    let link = sh(&["ip", "-n", &format!("cocoon-{id}"), "link", "show", tap]);
    assert!(link.contains("LOWER_UP"), "QEMU holds {tap} open: {link}");
}

/// Two VMs on the lab's CNI bridge, `--nics 1`: each guest configures the
/// address the engine got from host-local (its `ip=`) on the NIC with the
/// engine's MAC, and each pings the other through the engine's TAPs. `vm rm
/// --force` then leaves no process, namespace, TAP, veth or lease. `right`
/// has 2 vCPUs, so its NIC has two queue pairs (a multi-queue TAP, `mq=on`),
/// and its guest uses both.
#[test]
fn linux_vms_on_a_cni_bridge_ping_each_other_on_qemu() {
    let test = "linux_vms_on_a_cni_bridge_ping_each_other_on_qemu";
    let Some((qemu, assets)) = prerequisites(test) else {
        return;
    };
    let Some(lab) = NetLab::new(test, Value::Null) else {
        return;
    };
    let _reaper = EnvReaper(lab.env.root_dir());
    configure(&lab.env, &qemu);
    let ok = |args: &[&str]| lab.ok(args);
    import(ok, &assets);

    let names = ["left", "right"];
    let cpus = ["1", "2"];
    let started = Instant::now();
    for (name, cpu) in names.iter().zip(cpus) {
        ok(&[
            "vm",
            "run",
            "--qemu",
            "--nics",
            "1",
            "--cpu",
            cpu,
            "--memory",
            "512M",
            "--name",
            name,
            "test/linux:1",
        ]);
    }
    let vms: Vec<Value> = names.iter().map(|n| lab.inspect(n)).collect();
    let mut procs: Vec<VmmProcess> = Vec::new();
    let gateway = format!("{}.1", lab.subnet);
    for (name, vm) in names.iter().zip(&vms) {
        assert_qemu_tcg(vm);
        assert_on_its_tap(vm);
        procs.extend(processes_of(vm));
        let nic = &vm["network_configs"][0];
        assert_eq!(nic["backend"], "cni", "{vm:#}");
        let ip = nic["network"]["ip"].as_str().unwrap();
        let cmdline = vm["boot_config"]["cmdline"].as_str().unwrap();
        assert!(
            cmdline.contains(&format!("ip={ip}::{gateway}:255.255.255.0:{name}:eth0:off")),
            "{cmdline}"
        );
    }
    for (name, vm) in names.iter().zip(&vms) {
        let log = wait_for_shell(ok, name);
        assert_booted_from_the_engine(vm, &log);
    }
    let booted = started.elapsed();

    let ips: Vec<&str> = vms
        .iter()
        .map(|vm| vm["network_configs"][0]["network"]["ip"].as_str().unwrap())
        .collect();
    for (i, (name, vm)) in names.iter().zip(&vms).enumerate() {
        let mut console = shell_console(lab.cmd(), name);
        let mac = vm["network_configs"][0]["mac"].as_str().unwrap();
        let (out, rc) = shell(
            &mut console,
            "cat /sys/class/net/eth0/address; ip -4 -o addr show dev eth0; ls /sys/class/net/eth0/queues",
            "eth0",
        );
        assert_eq!(rc, 0, "{out}");
        let pairs = vm["network_configs"][0]["num_queues"].as_u64().unwrap() / 2;
        assert_eq!(pairs, if *name == "right" { 2 } else { 1 }, "{vm:#}");
        assert_eq!(
            out.contains("rx-1"),
            pairs == 2,
            "{name}: the guest's queues with {pairs} pair(s):\n{out}"
        );
        assert!(
            out.lines().any(|l| l.trim() == mac),
            "{name}: {mac}?\n{out}"
        );
        assert!(
            out.contains(&format!("inet {}/24", ips[i])),
            "{name}: {}?\n{out}",
            ips[i]
        );
        let peer = ips[1 - i];
        let (out, rc) = shell(&mut console, &format!("ping -c 3 -W 5 {peer}"), "ping");
        assert_eq!(rc, 0, "{name} cannot reach {peer}:\n{out}");
        assert!(
            out.contains("3 packets transmitted, 3 packets received, 0% packet loss"),
            "{name} → {peer}:\n{out}"
        );
        console.detach(name);
    }
    eprintln!(
        "{test}: both shells up {:.1} s after the first `vm run`, pings done after {:.1} s",
        booted.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );

    ok(&["vm", "rm", "--force", "left", "right"]);
    assert!(!procs.iter().any(cocoon_engine::supervise::is_running));
    for vm in &vms {
        let id = vm["id"].as_str().unwrap();
        assert!(!netns::path_for(id).exists(), "namespace of {id} left");
    }
    assert_eq!(lab.leases(), Vec::<String>::new());
    assert_eq!(lab.stray_links(), Vec::<String>::new());
    let host_links = sh(&["ip", "-br", "link"]);
    for vm in &vms {
        let tap = vm["network_configs"][0]["tap"].as_str().unwrap();
        assert!(!host_links.contains(tap), "{tap} left: {host_links}");
    }
}
