//! The device and memory switches on the real VMMs: the test guest boots
//! with `--no-balloon --no-watchdog` (plus `--mergeable`, and `--shared-memory` in a VM of its own,
//! on Cloud Hypervisor and QEMU, `--pci` on Firecracker), and the running
//! VMM itself is the witness: CH's `vm.info`, FC's `GET /vm/config`,
//! QEMU's `query-balloon`, and the kernel's view of the VMM's memory
//! (`/proc/<pid>/smaps`: `mg` marks memory KSM may merge, `sh` shared
//! memory). A Cloud Hypervisor clone keeps its snapshot's switches.
//!
//! Needs the VMMs (COCOON_CH_BINARY / COCOON_FC_BINARY, QEMU on PATH or
//! COCOON_QEMU_BINARY) and /dev/kvm; says SKIPPED loudly otherwise.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cocoon_testkit::Reaper;
use cocoon_testkit::guest::READY_MARKER;
use cocoon_testkit::{CocoonEnv, EnvReaper, processes_of, real_vmm, require_real_vmm, skip};
use serde_json::Value;

struct Run {
    env: CocoonEnv,
    vars: Vec<(&'static str, PathBuf)>,
}

impl Run {
    /// A cocoon root with every VMM found, and the test guest imported;
    /// None (after a loud skip) without `binary` or /dev/kvm.
    fn new(test: &str, binary: (&str, &str)) -> Option<Run> {
        require_real_vmm(test, binary.0, binary.1)?;
        if !Path::new("/dev/kvm").exists() {
            skip(test, "/dev/kvm is missing");
            return None;
        }
        let mut vars = Vec::new();
        for (var, name) in [
            ("COCOON_CH_BINARY", "cloud-hypervisor"),
            ("COCOON_FC_BINARY", "firecracker"),
            ("COCOON_QEMU_BINARY", "qemu-system-x86_64"),
        ] {
            if let Some(path) = real_vmm(var, name) {
                vars.push((var, path));
            }
        }
        let run = Run {
            env: CocoonEnv::new(cocoon_testkit::cocoon_bin()),
            vars,
        };
        let layer = cocoon_testkit::guest::boot_layer("test", b"unused").build();
        let tar = run.env.path().join("layer.tar");
        std::fs::write(&tar, layer).unwrap();
        run.ok(&["image", "import", "guest/test:1", tar.to_str().unwrap()]);
        Some(run)
    }

    fn cmd(&self) -> std::process::Command {
        let mut cmd = self.env.std_cmd();
        for (var, path) in &self.vars {
            cmd.env(var, path);
        }
        cmd
    }

    /// Runs cocoon; says how long each command took (a slow one shows
    /// in the test's output).
    fn ok(&self, args: &[&str]) -> String {
        let started = Instant::now();
        let out = cocoon_testkit::run_ok(self.cmd(), args);
        eprintln!("cocoon {args:?}: {:?}", started.elapsed());
        out
    }

    fn inspect(&self, vm: &str) -> Value {
        serde_json::from_str(&self.ok(&["vm", "inspect", vm])).unwrap()
    }

    /// `vm run` of the test guest (1 vCPU, 512 MiB, no NIC) with `flags`,
    /// once it is up.
    fn boot(&self, name: &str, flags: &[&str]) -> Value {
        let args = [
            &[
                "vm", "run", "--nics", "0", "--memory", "512M", "--cpu", "1", "--name", name,
            ][..],
            flags,
            &["guest/test:1"],
        ]
        .concat();
        self.ok(&args);
        self.wait_ready(name);
        self.inspect(name)
    }

    fn wait_ready(&self, name: &str) {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(30);
        loop {
            let log = cocoon_testkit::run_ok(self.cmd(), &["vm", "logs", name]);
            if log.contains(READY_MARKER) {
                eprintln!("{name} up after {:?}", started.elapsed());
                return;
            }
            assert!(Instant::now() < deadline, "{name} never came up:\n{log}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn api_socket(vm: &Value) -> PathBuf {
    PathBuf::from(vm["vmm"]["api_socket"].as_str().unwrap())
}

fn vmm_pid(vm: &Value) -> u64 {
    vm["vmm"]["pid"].as_u64().unwrap()
}

/// The VMM's mappings of at least `bytes` and the `VmFlags` of each.
fn big_mappings(vm: &Value, bytes: u64) -> Vec<Vec<String>> {
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", vmm_pid(vm))).unwrap();
    let mut found = Vec::new();
    let mut size = 0;
    for line in smaps.lines() {
        if let Some(kb) = line.strip_prefix("Size:") {
            size = kb
                .trim()
                .trim_end_matches(" kB")
                .trim()
                .parse::<u64>()
                .unwrap()
                << 10;
        } else if let Some(flags) = line.strip_prefix("VmFlags:")
            && size >= bytes
        {
            found.push(flags.split_whitespace().map(String::from).collect());
        }
    }
    found
}

/// Whether the VMM's guest memory (a mapping of 512 MiB at least) carries `flag`.
fn guest_memory_has(vm: &Value, flag: &str) -> bool {
    let maps = big_mappings(vm, 512 << 20);
    assert!(!maps.is_empty(), "no guest memory mapping in the VMM");
    maps.iter().any(|flags| flags.iter().any(|f| f == flag))
}

fn ch_config(vm: &Value) -> Value {
    block_on(vmm_api::ch::CloudHypervisor::new(&api_socket(vm)).info())
        .unwrap()
        .config
}

#[test]
fn switches_on_cloud_hypervisor() {
    let test = "switches_on_cloud_hypervisor";
    let Some(run) = Run::new(test, ("COCOON_CH_BINARY", "cloud-hypervisor")) else {
        return;
    };
    let _env_reaper = EnvReaper(run.env.root_dir());
    let vm = run.boot("sw", &["--no-balloon", "--no-watchdog", "--mergeable"]);
    let _reaper = Reaper(processes_of(&vm));
    let config = ch_config(&vm);
    assert!(config["balloon"].is_null(), "{config:#}");
    assert_eq!(config["watchdog"], false, "{config:#}");
    assert_eq!(config["memory"]["mergeable"], true, "{config:#}");
    assert_eq!(config["memory"]["shared"], false, "{config:#}");
    assert_eq!(config["memory"]["hugepages"], false, "{config:#}");
    assert!(guest_memory_has(&vm, "mg"), "KSM may merge guest memory");

    let shared = run.boot("shared", &["--shared-memory"]);
    let config = ch_config(&shared);
    assert_eq!(config["memory"]["shared"], true, "{config:#}");
    assert_eq!(config["memory"]["mergeable"], false, "{config:#}");
    assert!(guest_memory_has(&shared, "sh"), "guest memory is shared");
    assert!(!guest_memory_has(&shared, "mg"));
    run.ok(&["vm", "rm", "--force", "shared"]);

    // Without switches: balloon and watchdog, private memory KSM leaves alone.
    let plain = run.boot("plain", &[]);
    let _reaper_plain = Reaper(processes_of(&plain));
    let config = ch_config(&plain);
    assert_eq!(config["balloon"]["size"], 128 << 20, "{config:#}");
    assert_eq!(config["watchdog"], true, "{config:#}");
    assert_eq!(config["memory"]["mergeable"], false, "{config:#}");
    assert_eq!(config["memory"]["shared"], false, "{config:#}");
    assert!(!guest_memory_has(&plain, "mg"));
    assert!(!guest_memory_has(&plain, "sh"));
    // The test guest's heartbeat spins its vCPU: only the VMs still
    // needed run on.
    run.ok(&["vm", "rm", "--force", "plain"]);

    // A clone runs with its snapshot's switches.
    run.ok(&["snapshot", "save", "--name", "s", "sw"]);
    run.ok(&["vm", "rm", "--force", "sw"]);
    run.ok(&["vm", "clone", "--name", "c", "s"]);
    let clone = run.inspect("c");
    let _reaper_clone = Reaper(processes_of(&clone));
    let config = ch_config(&clone);
    assert!(config["balloon"].is_null(), "{config:#}");
    assert_eq!(config["watchdog"], false, "{config:#}");
    assert_eq!(config["memory"]["mergeable"], true, "{config:#}");
    assert!(
        guest_memory_has(&clone, "mg"),
        "the clone's memory is mergeable"
    );
    run.ok(&["vm", "rm", "--force", "c"]);
}

#[test]
fn switches_on_firecracker() {
    let test = "switches_on_firecracker";
    let Some(run) = Run::new(test, ("COCOON_FC_BINARY", "firecracker")) else {
        return;
    };
    let _env_reaper = EnvReaper(run.env.root_dir());
    // The guest finds its disks on virtio-pci: it boots, so it saw them.
    let vm = run.boot("sw", &["--fc", "--pci", "--no-balloon", "--no-watchdog"]);
    let _reaper = Reaper(processes_of(&vm));
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", vmm_pid(&vm))).unwrap();
    assert!(
        cmdline.split(|b| *b == 0).any(|w| w == b"--enable-pci"),
        "{}",
        String::from_utf8_lossy(&cmdline)
    );
    let fc = vmm_api::fc::Firecracker::new(&api_socket(&vm));
    let config = serde_json::to_value(block_on(fc.vm_config()).unwrap()).unwrap();
    assert!(config["balloon"].is_null(), "{config:#}");
    assert!(
        !config["boot-source"]["boot_args"]
            .as_str()
            .unwrap()
            .contains("pci=off"),
        "{config:#}"
    );
    assert_eq!(config["machine-config"]["huge_pages"], "None", "{config:#}");
    run.ok(&["vm", "rm", "--force", "sw"]);

    let plain = run.boot("plain", &["--fc"]);
    let _reaper_plain = Reaper(processes_of(&plain));
    let fc = vmm_api::fc::Firecracker::new(&api_socket(&plain));
    let config = serde_json::to_value(block_on(fc.vm_config()).unwrap()).unwrap();
    assert_eq!(config["balloon"]["amount_mib"], 128, "{config:#}");
    run.ok(&["vm", "rm", "--force", "plain"]);
}

#[test]
fn switches_on_qemu() {
    let test = "switches_on_qemu";
    let Some(run) = Run::new(test, ("COCOON_QEMU_BINARY", "qemu-system-x86_64")) else {
        return;
    };
    let _env_reaper = EnvReaper(run.env.root_dir());
    let vm = run.boot(
        "sw",
        &[
            "--qemu",
            "--no-agent",
            "--no-balloon",
            "--no-watchdog",
            "--mergeable",
        ],
    );
    let _reaper = Reaper(processes_of(&vm));
    let balloon = block_on(async {
        let mut qmp = vmm_api::qmp::Qmp::connect(&api_socket(&vm)).await.unwrap();
        qmp.query_balloon().await
    });
    assert!(balloon.is_err(), "no balloon device: {balloon:?}");
    assert!(guest_memory_has(&vm, "mg"), "KSM may merge guest memory");
    // The test guest's heartbeat spins its vCPU: one VM at a time.
    run.ok(&["vm", "rm", "--force", "sw"]);

    let shared = run.boot("shared", &["--qemu", "--no-agent", "--shared-memory"]);
    assert!(guest_memory_has(&shared, "sh"), "guest memory is shared");
    assert!(!guest_memory_has(&shared, "mg"));
    run.ok(&["vm", "rm", "--force", "shared"]);

    let plain = run.boot("plain", &["--qemu", "--no-agent"]);
    let _reaper_plain = Reaper(processes_of(&plain));
    let balloon = block_on(async {
        let mut qmp = vmm_api::qmp::Qmp::connect(&api_socket(&plain))
            .await
            .unwrap();
        qmp.query_balloon().await
    });
    assert!(balloon.is_ok(), "{balloon:?}");
    assert!(
        !guest_memory_has(&plain, "mg"),
        "QEMU merges only with --mergeable"
    );
    run.ok(&["vm", "rm", "--force", "plain"]);
}
