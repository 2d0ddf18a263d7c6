//! Container images as VMs (issue #18), through the CLI on QEMU: an image
//! without a kernel boots Debian's cloud kernel (installed with `cocoon
//! kernel install --deb`) and cocoon-init, which runs the image's
//! entrypoint with its environment, directory and user; the status reaches
//! `vm inspect` and `vm run --rm`'s exit code; `vm exec` reaches the guest
//! agent over vsock; a clone takes its own identity. Where KVM is PVM (as on
//! the project's CI machines), which runs no stock kernel, QEMU emulates
//! (`qemu_accel = auto` picks TCG, as a user's QEMU would) and the Cloud
//! Hypervisor and Firecracker cases skip loudly: .ci/run allows exactly that
//! skip (`kvm_pvm`) there, and nowhere else.

#[path = "vm_network/netlab.rs"]
#[allow(dead_code)]
mod netlab;

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use cocoon_testkit::registry::Registry;
use cocoon_testkit::registry::layers::LayerBuilder;
use cocoon_testkit::{CocoonEnv, EnvReaper, container, require_real_vmm, skip};
use serde_json::{Value, json};

/// A TCG boot on two shared cores takes seconds; a stuck one must not take minutes.
const STOP_LIMIT: Duration = Duration::from_secs(90);

fn bin() -> String {
    cocoon_testkit::cocoon_bin()
}

/// The backends a container VM runs on: config key, binary variable, name.
#[derive(Clone, Copy)]
enum Vmm {
    Qemu,
    CloudHypervisor,
    Firecracker,
}

impl Vmm {
    fn binary(self, test: &str) -> Option<PathBuf> {
        let (env, name) = match self {
            Vmm::Qemu => ("COCOON_QEMU_BINARY", "qemu-system-x86_64"),
            Vmm::CloudHypervisor => ("COCOON_CH_BINARY", "cloud-hypervisor"),
            Vmm::Firecracker => ("COCOON_FC_BINARY", "firecracker"),
        };
        let binary = require_real_vmm(test, env, name)?;
        // Only QEMU can emulate the CPU for a stock kernel where KVM is PVM.
        if !matches!(self, Vmm::Qemu) && std::path::Path::new("/sys/module/kvm_pvm").exists() {
            skip(
                test,
                "this host's KVM is PVM (kvm_pvm), which boots no stock kernel on Cloud Hypervisor or Firecracker",
            );
            return None;
        }
        Some(binary)
    }

    fn config(self, binary: &std::path::Path) -> String {
        let (key, name) = match self {
            Vmm::Qemu => ("qemu_binary", "qemu"),
            Vmm::CloudHypervisor => ("ch_binary", "cloud-hypervisor"),
            Vmm::Firecracker => ("fc_binary", "firecracker"),
        };
        format!(
            "{key} = {:?}\ndefault_hypervisor = {name:?}\n",
            binary.display()
        )
    }
}

/// An installation with the VMM, cocoon-init and the default kernel; None
/// (a loud skip, a failure under COCOON_TEST_REQUIRE=1) without them.
fn installation(test: &str, vmm: Vmm) -> Option<(CocoonEnv, EnvReaper)> {
    let (binary, deb, init) = parts(test, vmm)?;
    let env = CocoonEnv::new(bin());
    let reaper = EnvReaper(env.root_dir());
    let config = format!(
        "{}init_binary = {:?}\n",
        vmm.config(&binary),
        init.display()
    );
    std::fs::write(env.config_path(), config).unwrap();
    ok(&env, &["kernel", "install", "--deb", deb.to_str().unwrap()]);
    Some((env, reaper))
}

/// The VMM, the kernel package and cocoon-init, or a loud skip.
fn parts(test: &str, vmm: Vmm) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let binary = vmm.binary(test)?;
    match container::kernel_deb().and_then(|deb| Ok((deb, container::init_binary()?))) {
        Ok((deb, init)) => Some((binary, deb, init)),
        Err(why) => {
            skip(test, &format!("{why}: run scripts/fetch-test-assets.sh"));
            None
        }
    }
}

fn run(env: &CocoonEnv, args: &[&str]) -> Output {
    env.std_cmd().args(args).output().unwrap()
}

fn ok(env: &CocoonEnv, args: &[&str]) -> String {
    let out = run(env, args);
    assert!(
        out.status.success(),
        "cocoon {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn inspect(env: &CocoonEnv, vm: &str) -> Value {
    serde_json::from_str(&ok(env, &["vm", "inspect", vm])).unwrap()
}

/// Waits for the VM to power off by itself; its inspect then.
fn wait_stopped(env: &CocoonEnv, vm: &str) -> Value {
    let deadline = Instant::now() + STOP_LIMIT;
    loop {
        let view = inspect(env, vm);
        if view["state"] != "running" {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "{vm} still runs:\n{}",
            ok(env, &["vm", "logs", vm])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The image the tests push: busybox, and an entrypoint script that reports
/// what it was given and exits with its first argument.
fn push_image(registry: &Registry) -> String {
    let entry = b"#!/bin/sh\n\
        echo \"ARGS=$#:$*\"\n\
        echo \"GREETING=$GREETING\"\n\
        echo \"PWD=$(pwd)\"\n\
        echo \"IDS=$(id -u):$(id -g):$(id -G)\"\n\
        echo \"HOST=$(hostname)\"\n\
        exit \"$1\"\n";
    let layers = [
        container::busybox_layer().unwrap(),
        LayerBuilder::new()
            .dir("usr/")
            .dir("usr/local/")
            .dir("usr/local/bin/")
            .file_mode("usr/local/bin/entry", 0o755, entry)
            .build(),
    ];
    let run = json!({
        "Entrypoint": ["/usr/local/bin/entry"],
        "Cmd": ["42", "second arg"],
        "Env": ["PATH=/usr/local/bin:/bin", "GREETING=hello  world"],
        "WorkingDir": "/work/dir",
        "User": "app",
    });
    registry.push_with_config("apps/entry:1", &layers, "amd64", run);
    registry.reference("apps/entry:1")
}

/// The entrypoint runs with exactly the image's arguments, environment,
/// directory and user (its groups from /etc/group), and its status is the
/// VM's `exit_code`; `vm run --rm` replaces `Cmd`, applies `-e`, exits with
/// the guest's status and leaves no VM.
#[test]
fn the_entrypoint_runs_as_the_image_says_and_its_status_is_the_vms() {
    entrypoint_case(
        "the_entrypoint_runs_as_the_image_says_and_its_status_is_the_vms",
        Vmm::Qemu,
    );
}

#[test]
fn the_entrypoint_runs_on_cloud_hypervisor() {
    entrypoint_case(
        "the_entrypoint_runs_on_cloud_hypervisor",
        Vmm::CloudHypervisor,
    );
}

#[test]
fn the_entrypoint_runs_on_firecracker() {
    entrypoint_case("the_entrypoint_runs_on_firecracker", Vmm::Firecracker);
}

fn entrypoint_case(test: &str, vmm: Vmm) {
    let Some((env, _reaper)) = installation(test, vmm) else {
        return;
    };
    let Some(registry) = Registry::start() else {
        return skip(test, "docker-registry is not installed");
    };
    let image = push_image(&registry);
    ok(&env, &["image", "pull", &image]);
    let shown: Value = serde_json::from_str(&ok(&env, &["image", "inspect", &image])).unwrap();
    assert_eq!(shown["own_kernel"], false, "{shown:#}");
    assert_eq!(shown["config"]["user"], "app", "{shown:#}");

    let flags = ["--nics", "0", "--cpu", "1", "--memory", "512M"];
    let mut create = vec!["vm", "create", "--name", "job"];
    create.extend(flags);
    create.push(&image);
    ok(&env, &create);
    ok(&env, &["vm", "start", "job"]);
    let view = wait_stopped(&env, "job");
    assert_no_helper(&view);
    let log = ok(&env, &["vm", "logs", "job"]);
    assert_eq!(view["exit_code"], 42, "{view:#}\n{log}");
    for line in [
        "ARGS=2:42 second arg",
        "GREETING=hello  world",
        "PWD=/work/dir",
        "IDS=1000:1000:1000 50",
        "HOST=job",
    ] {
        assert!(log.contains(line), "{line:?} missing:\n{log}");
    }

    let mut run_rm = vec!["vm", "run", "--rm", "--name", "once", "-e", "GREETING=hi"];
    run_rm.extend(flags);
    run_rm.extend([image.as_str(), "--", "7", "x"]);
    let out = run(&env, &run_rm);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ARGS=2:7 x"), "{stdout}");
    assert!(
        stdout.contains("GREETING=hi\n") || stdout.contains("GREETING=hi\r"),
        "{stdout}"
    );
    let vms: Value = serde_json::from_str(&ok(&env, &["vm", "ls", "-o", "json"])).unwrap();
    let names: Vec<&str> = vms
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["config"]["name"].as_str())
        .collect();
    assert_eq!(names, ["job"], "--rm removed its VM only");
}

/// A command run with `vm exec` through the guest agent: stdout and stderr
/// apart, the status as cocoon's, stdin streamed byte-exact, a PTY with the
/// window size; a VM without an agent says so within 5 s.
#[test]
fn vm_exec_reaches_the_guest_agent() {
    let test = "vm_exec_reaches_the_guest_agent";
    let Some((env, _reaper)) = installation(test, Vmm::Qemu) else {
        return;
    };
    let layer = env.path().join("busybox.tar");
    std::fs::write(&layer, container::busybox_layer().unwrap()).unwrap();
    ok(
        &env,
        &["image", "import", "local/busybox", layer.to_str().unwrap()],
    );
    let flags = ["--nics", "0", "--cpu", "1", "--memory", "512M"];
    for (name, extra) in [("agent", None), ("silent", Some("--no-agent"))] {
        let mut args = vec!["vm", "run", "--name", name];
        args.extend(flags);
        args.extend(extra);
        args.extend(["local/busybox", "--", "sleep", "600"]);
        ok(&env, &args);
    }
    let exec = wait_for_agent(&env, "agent");
    assert_eq!(String::from_utf8_lossy(&exec.stdout), "agent\n");

    let out = run(
        &env,
        &[
            "vm",
            "exec",
            "agent",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 5",
        ],
    );
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");

    // stdin streamed: 10 MiB of noise comes back with the same digest.
    let noise: Vec<u8> = (0..10u32 << 20)
        .map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[1])
        .collect();
    let digest = {
        use sha2::Digest;
        sha2::Sha256::digest(&noise)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let sum = piped(
        &env,
        &["vm", "exec", "-i", "agent", "--", "sha256sum"],
        &noise,
    );
    assert!(sum.starts_with(&digest), "{sum} vs {digest}");

    // -t without a local terminal still gives the command a PTY.
    let tty = ok(&env, &["vm", "exec", "-t", "agent", "--", "tty"]);
    assert!(tty.trim().starts_with("/dev/pts/"), "{tty:?}");

    let started = Instant::now();
    let out = run(&env, &["vm", "exec", "silent", "--", "true"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no guest agent"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    ok(&env, &["vm", "stop", "agent"]);
    let stopped = inspect(&env, "agent");
    assert_no_helper(&stopped);
    let dir = PathBuf::from(stopped["run_dir"].as_str().unwrap());
    assert!(
        !dir.join("vsock.sock").exists(),
        "vm stop left the vsock socket"
    );
}

/// A CNI lab (a bridge in a namespace the test makes) with QEMU,
/// cocoon-init, the default kernel and `local/busybox`; None after a loud
/// skip without them.
fn network_lab(test: &str) -> Option<(netlab::NetLab, EnvReaper)> {
    let (binary, deb, init) = parts(test, Vmm::Qemu)?;
    let lab = netlab::NetLab::new(test, Value::Null)?;
    let reaper = EnvReaper(lab.env.root_dir());
    let config = format!(
        "{}init_binary = {:?}\n",
        Vmm::Qemu.config(&binary),
        init.display()
    );
    std::fs::write(lab.env.config_path(), config).unwrap();
    lab.ok(&["kernel", "install", "--deb", deb.to_str().unwrap()]);
    let layer = lab.env.path().join("busybox.tar");
    std::fs::write(&layer, container::busybox_layer().unwrap()).unwrap();
    lab.ok(&["image", "import", "local/busybox", layer.to_str().unwrap()]);
    Some((lab, reaper))
}

/// cocoon-init applies the engine's `ip=`: a container VM on a CNI bridge
/// (in a namespace the test creates) has its lease address, its route and
/// its name, and pings the bridge; `vm run --rm` then leaves no lease,
/// link or namespace.
#[test]
fn a_container_vm_takes_its_lease_and_reaches_its_gateway() {
    let test = "a_container_vm_takes_its_lease_and_reaches_its_gateway";
    let Some((lab, _reaper)) = network_lab(test) else {
        return;
    };
    let gateway = format!("{}.1", lab.subnet);
    let script = format!(
        "ip -4 -o addr show dev eth0; ip route; echo NAME=$(hostname); ping -c 1 -W 10 {gateway}"
    );
    let out = lab
        .cmd()
        .args(["vm", "run", "--rm", "--qemu", "--nics", "1", "--cpu", "1"])
        .args(["--memory", "512M", "--name", "net", "local/busybox", "--"])
        .args(["sh", "-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("inet {}.", lab.subnet)),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("default via {gateway} dev eth0")),
        "{stdout}"
    );
    assert!(stdout.contains("NAME=net"), "{stdout}");
    assert!(stdout.contains("1 packets received"), "{stdout}");
    assert!(lab.leases().is_empty(), "{:?}", lab.leases());
    assert!(lab.cocoon_namespaces().is_empty());
}

/// The guest side of a clone's identity on a real guest: the agent takes a
/// new hostname, machine-id and NIC address from the engine, as `vm clone`
/// hands them to a clone, and the VM then talks from its new address. (QEMU
/// cannot snapshot a VM with vsock here, so the engine hands them to a
/// running VM; the clone cases below do it end to end where the host can.)
#[test]
fn the_agent_takes_a_new_identity_from_the_engine() {
    let test = "the_agent_takes_a_new_identity_from_the_engine";
    let Some((lab, _reaper)) = network_lab(test) else {
        return;
    };
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
        "ident",
        "local/busybox",
        "--",
        "sleep",
        "600",
    ]);
    let exec = |script: &str| -> String {
        let deadline = Instant::now() + STOP_LIMIT;
        loop {
            let out = lab
                .cmd()
                .args(["vm", "exec", "ident", "--", "sh", "-c", script])
                .output()
                .unwrap();
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            assert!(
                Instant::now() < deadline,
                "vm exec {script:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let vm = lab.inspect("ident");
    let nic = &vm["network_configs"][0];
    let old_ip = nic["network"]["ip"].as_str().unwrap().to_string();
    let prefix = nic["network"]["prefix"].as_u64().unwrap();
    let gateway = format!("{}.1", lab.subnet);
    let new_ip = [77, 78]
        .map(|n| format!("{}.{n}", lab.subnet))
        .into_iter()
        .find(|ip| *ip != old_ip)
        .unwrap();
    assert!(exec("hostname").contains("ident"));

    let request = cocoon_engine::agent::IdentityRequest {
        hostname: "renamed".into(),
        machine_id: "0123456789abcdef0123456789abcdef".into(),
        nics: vec![cocoon_engine::agent::Nic {
            name: "eth0".into(),
            mac: nic["mac"].as_str().unwrap().into(),
            address: Some(format!("{new_ip}/{prefix}")),
            gateway: Some(gateway.clone()),
            dns: vec![],
        }],
    };
    engine_of(&lab.env)
        .set_vm_identity("ident", &request)
        .unwrap();

    assert_eq!(exec("hostname"), "renamed\n");
    assert_eq!(
        exec("cat /etc/machine-id"),
        "0123456789abcdef0123456789abcdef\n"
    );
    let addresses = exec("ip -4 -o addr show dev eth0; ip route");
    assert!(
        addresses.contains(&format!("inet {new_ip}/{prefix}")),
        "{addresses}"
    );
    assert!(
        !addresses.contains(&format!("inet {old_ip}/")),
        "{addresses}"
    );
    assert!(
        addresses.contains(&format!("default via {gateway} dev eth0")),
        "{addresses}"
    );
    // The gateway answers the new address (the host has no ping of its own).
    let ping = exec(&format!("ping -c 1 -W 10 {gateway}"));
    assert!(ping.contains("1 packets received"), "{ping}");
    lab.ok(&["vm", "rm", "--force", "ident"]);
}

/// The engine, in-process, on a test installation's directories and config.
fn engine_of(env: &CocoonEnv) -> cocoon_engine::Engine {
    let vars = [
        ("COCOON_ROOT_DIR", env.root_dir()),
        ("COCOON_LOG_DIR", env.log_dir()),
        ("COCOON_CNI_CONF_DIR", env.path().join("cni")),
    ];
    let lookup = |key: &str| {
        vars.iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.display().to_string())
    };
    let config = cocoon_engine::config::Config::load(cocoon_engine::config::LoadOptions {
        config_path: Some(env.config_path()),
        env: &lookup,
        flags: vec![],
        default_path: "/nonexistent/config.toml".into(),
    })
    .unwrap();
    cocoon_engine::Engine::open(config).unwrap()
}

/// A clone of a running container VM answers `vm exec` with its own
/// hostname and machine-id, with no manual step: the engine hands the
/// clone's identity to its agent. (QEMU cannot snapshot a VM with vsock.)
#[test]
fn a_clone_takes_its_own_identity_on_cloud_hypervisor() {
    clone_case(
        "a_clone_takes_its_own_identity_on_cloud_hypervisor",
        Vmm::CloudHypervisor,
    );
}

#[test]
fn a_clone_takes_its_own_identity_on_firecracker() {
    clone_case(
        "a_clone_takes_its_own_identity_on_firecracker",
        Vmm::Firecracker,
    );
}

fn clone_case(test: &str, vmm: Vmm) {
    let Some((env, _reaper)) = installation(test, vmm) else {
        return;
    };
    let layer = env.path().join("busybox.tar");
    std::fs::write(&layer, container::busybox_layer().unwrap()).unwrap();
    // An empty machine-id, as distribution images ship it: cocoon-init
    // gives each boot a fresh one, the agent each clone.
    let id_layer = env.path().join("machine-id.tar");
    let id_tar = LayerBuilder::new()
        .dir("etc/")
        .file("etc/machine-id", b"")
        .build();
    std::fs::write(&id_layer, id_tar).unwrap();
    ok(
        &env,
        &[
            "image",
            "import",
            "local/busybox",
            layer.to_str().unwrap(),
            id_layer.to_str().unwrap(),
        ],
    );
    ok(
        &env,
        &[
            "vm",
            "run",
            "--name",
            "src",
            "--nics",
            "0",
            "--cpu",
            "1",
            "--memory",
            "512M",
            "local/busybox",
            "--",
            "sleep",
            "600",
        ],
    );
    wait_for_agent(&env, "src");
    let source_id = ok(&env, &["vm", "exec", "src", "--", "cat", "/etc/machine-id"]);
    ok(&env, &["snapshot", "save", "--name", "base", "src"]);
    let cloned = run(&env, &["vm", "clone", "--name", "copy", "base"]);
    let stderr = String::from_utf8_lossy(&cloned.stderr);
    assert!(cloned.status.success(), "{stderr}");
    assert!(stderr.contains("copy took its own identity"), "{stderr}");
    assert_eq!(
        ok(&env, &["vm", "exec", "copy", "--", "hostname"]),
        "copy\n"
    );
    let clone_id = ok(
        &env,
        &["vm", "exec", "copy", "--", "cat", "/etc/machine-id"],
    );
    assert_eq!(clone_id.trim().len(), 32, "{clone_id:?}");
    assert_ne!(clone_id, source_id);
    assert_eq!(ok(&env, &["vm", "exec", "src", "--", "hostname"]), "src\n");
}

/// No vhost-device-vsock (QEMU's vsock helper) outlives its VM.
fn assert_no_helper(vm: &Value) {
    let dir = PathBuf::from(vm["run_dir"].as_str().expect("run_dir"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cocoon_engine::supervise::find_by_socket(&dir.join("vhost-vsock.sock")).is_empty() {
        assert!(
            Instant::now() < deadline,
            "a vhost-device-vsock outlived its VM: {vm:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `vm exec VM -- hostname` once the agent listens (it starts with the
/// guest, seconds after the VMM under TCG).
fn wait_for_agent(env: &CocoonEnv, vm: &str) -> Output {
    let deadline = Instant::now() + STOP_LIMIT;
    loop {
        let out = run(env, &["vm", "exec", vm, "--", "hostname"]);
        if out.status.success() {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "{vm}: no agent: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            ok(env, &["vm", "logs", vm])
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Runs cocoon with `input` on its stdin; its stdout.
fn piped(env: &CocoonEnv, args: &[&str], input: &[u8]) -> String {
    let mut child = env
        .std_cmd()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
