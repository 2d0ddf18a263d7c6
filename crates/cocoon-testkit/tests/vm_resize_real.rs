//! `vm resize` on the real VMMs, with the running VMM as the witness:
//! Cloud Hypervisor's `vm.info` (vCPUs and memory plugged in, the balloon
//! that holds the guest below its RAM), QEMU's `query-cpus-fast` and
//! `query-memory-size-summary`, Firecracker's `GET /vm/config`. The new size is in `vm inspect`, survives
//! `vm stop`/`vm start` (the VM boots at it) and goes into snapshots and
//! clones; what a VMM cannot do is refused with the reason and changes
//! nothing.
//!
//! Needs the VMMs (COCOON_CH_BINARY, QEMU on PATH or COCOON_QEMU_BINARY)
//! and /dev/kvm; says SKIPPED loudly otherwise.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cocoon_testkit::Reaper;
use cocoon_testkit::guest::READY_MARKER;
use cocoon_testkit::{CocoonEnv, EnvReaper, processes_of, real_vmm, require_real_vmm, skip};
use serde_json::Value;

const MIB: u64 = 1 << 20;

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

    fn ok(&self, args: &[&str]) -> String {
        cocoon_testkit::run_ok(self.cmd(), args)
    }

    /// A command that must fail: its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).trim().to_string()
    }

    fn inspect(&self, vm: &str) -> Value {
        serde_json::from_str(&self.ok(&["vm", "inspect", vm])).unwrap()
    }

    /// `vm run` of the test guest (no NIC) with `flags`, once it is up.
    fn boot(&self, name: &str, flags: &[&str]) -> Value {
        let args = [
            &["vm", "run", "--nics", "0", "--name", name][..],
            flags,
            &["guest/test:1"],
        ]
        .concat();
        self.ok(&args);
        self.wait_ready(name);
        self.inspect(name)
    }

    fn wait_ready(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.ok(&["vm", "logs", name]);
            if log.contains(READY_MARKER) {
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

fn ch_config(vm: &Value) -> Value {
    block_on(vmm_api::ch::CloudHypervisor::new(&api_socket(vm)).info())
        .unwrap()
        .config
}

/// CH's vCPUs and RAM (boot size plus what was plugged in).
fn ch_size(config: &Value) -> (u64, u64) {
    let memory = &config["memory"];
    (
        config["cpus"]["boot_vcpus"].as_u64().unwrap(),
        memory["size"].as_u64().unwrap() + memory["hotplugged_size"].as_u64().unwrap_or(0),
    )
}

fn recorded(vm: &Value) -> (u64, u64) {
    (
        vm["config"]["cpu"].as_u64().unwrap(),
        vm["config"]["memory"].as_u64().unwrap(),
    )
}

#[test]
fn resize_on_cloud_hypervisor() {
    let test = "resize_on_cloud_hypervisor";
    let Some(run) = Run::new(test, ("COCOON_CH_BINARY", "cloud-hypervisor")) else {
        return;
    };
    let _env_reaper = EnvReaper(run.env.root_dir());
    let vm = run.boot("r", &["--cpu", "1", "--memory", "512M"]);
    let _reaper = Reaper(processes_of(&vm));
    let id = vm["id"].as_str().unwrap().to_string();
    assert_eq!(ch_size(&ch_config(&vm)), (1, 512 * MIB));

    // Growth: a vCPU and 512 MiB plugged in.
    run.ok(&["vm", "resize", "--cpu", "2", "--memory", "1G", "r"]);
    let config = ch_config(&vm);
    assert_eq!(ch_size(&config), (2, 1024 * MIB), "{config:#}");
    assert_eq!(recorded(&run.inspect("r")), (2, 1024 * MIB));

    // Below its RAM: the balloon holds the guest at 768 MiB.
    run.ok(&["vm", "resize", "--memory", "768M", "r"]);
    let config = ch_config(&vm);
    assert_eq!(ch_size(&config), (2, 1024 * MIB), "{config:#}");
    assert_eq!(config["balloon"]["size"], 256 * MIB, "{config:#}");
    let inspected = run.inspect("r");
    assert_eq!(recorded(&inspected), (2, 768 * MIB));
    assert_eq!(inspected["vmm_memory"], 1024 * MIB);

    // Past the room it was started with: refused, nothing changed.
    let err = run.fails(&["vm", "resize", "--memory", "64T", "r"]);
    assert!(
        err.starts_with(&format!(
            "Error: cannot resize VM r ({id}) to 2 vCPUs and 67108864 MiB: it was started with room for "
        )) && err.ends_with("MiB of memory; stop and start it to grow further"),
        "{err}"
    );
    assert_eq!(recorded(&run.inspect("r")), (2, 768 * MIB));
    assert_eq!(ch_size(&ch_config(&vm)), (2, 1024 * MIB));

    // Hibernation keeps the VMM's RAM (plugged memory included), and
    // wakes with it.
    run.ok(&["vm", "hibernate", "r"]);
    assert_eq!(recorded(&run.inspect("r")), (2, 1024 * MIB));
    run.ok(&["vm", "start", "r"]);
    let woken = run.inspect("r");
    let _reaper_woken = Reaper(processes_of(&woken));
    assert_eq!(ch_size(&ch_config(&woken)), (2, 1024 * MIB));
    run.ok(&["vm", "resize", "--memory", "768M", "r"]);

    // A snapshot holds the VMM's RAM: its clone runs with 2 vCPUs and 1 GiB.
    run.ok(&["snapshot", "save", "--name", "s", "r"]);
    run.ok(&["vm", "stop", "r"]);
    run.ok(&["vm", "clone", "--name", "c", "s"]);
    let clone = run.inspect("c");
    let _reaper_clone = Reaper(processes_of(&clone));
    assert_eq!(recorded(&clone), (2, 1024 * MIB));
    assert_eq!(ch_size(&ch_config(&clone)), (2, 1024 * MIB));
    run.ok(&["vm", "rm", "--force", "c"]);

    // A stopped VM boots at its recorded size.
    run.ok(&["vm", "start", "r"]);
    let restarted = run.inspect("r");
    let _reaper_restarted = Reaper(processes_of(&restarted));
    let config = ch_config(&restarted);
    assert_eq!(ch_size(&config), (2, 768 * MIB), "{config:#}");
    assert_eq!(config["memory"]["hotplugged_size"].as_u64().unwrap_or(0), 0);
    // vCPUs go down too (CH asks the guest to eject them).
    run.ok(&["vm", "resize", "--cpu", "1", "r"]);
    assert_eq!(ch_size(&ch_config(&restarted)), (1, 768 * MIB));
    assert_eq!(recorded(&run.inspect("r")), (1, 768 * MIB));
    run.ok(&["vm", "rm", "--force", "r"]);
}

fn qmp<T>(vm: &Value, f: impl AsyncFnOnce(&mut vmm_api::qmp::Qmp) -> T) -> T {
    block_on(async {
        let mut qmp = vmm_api::qmp::Qmp::connect(&api_socket(vm)).await.unwrap();
        f(&mut qmp).await
    })
}

#[test]
fn resize_on_qemu() {
    let test = "resize_on_qemu";
    let Some(run) = Run::new(test, ("COCOON_QEMU_BINARY", "qemu-system-x86_64")) else {
        return;
    };
    let _env_reaper = EnvReaper(run.env.root_dir());
    let vm = run.boot(
        "q",
        &["--qemu", "--no-agent", "--cpu", "1", "--memory", "1G"],
    );
    let _reaper = Reaper(processes_of(&vm));
    let id = vm["id"].as_str().unwrap().to_string();

    // vCPUs and growth past its RAM: refused with the reason, nothing changed.
    let err = run.fails(&["vm", "resize", "--cpu", "2", "q"]);
    assert_eq!(
        err,
        format!(
            "Error: cannot resize VM q ({id}) to 2 vCPUs and 1024 MiB: QEMU VMs start without hot-pluggable vCPUs; stop it, resize it, and start it"
        )
    );
    let err = run.fails(&["vm", "resize", "--memory", "2G", "q"]);
    assert_eq!(
        err,
        format!(
            "Error: cannot resize VM q ({id}) to 1 vCPUs and 2048 MiB: QEMU VMs start without memory hot-plug: its balloon can give the guest back up to the 1024 MiB it started with; stop it, resize it, and start it to grow further"
        )
    );
    assert_eq!(recorded(&run.inspect("q")), (1, 1024 * MIB));

    // Below its RAM: the balloon's target is set (QEMU answers once the
    // guest's driver moves; the test guest has none, so the ask is checked
    // through the record and the next boot).
    run.ok(&["vm", "resize", "--memory", "768M", "q"]);
    let inspected = run.inspect("q");
    assert_eq!(recorded(&inspected), (1, 768 * MIB));
    assert_eq!(inspected["vmm_memory"], 1024 * MIB);

    // Stopped: the record changes, and the VM boots at it.
    run.ok(&["vm", "stop", "q"]);
    run.ok(&["vm", "resize", "--cpu", "2", "--memory", "640M", "q"]);
    run.ok(&["vm", "start", "q"]);
    run.wait_ready("q");
    let restarted = run.inspect("q");
    let _reaper_restarted = Reaper(processes_of(&restarted));
    assert_eq!(recorded(&restarted), (2, 640 * MIB));
    let (cpus, memory) = qmp(&restarted, async |q| {
        (
            q.query_cpus_fast().await.unwrap().len(),
            q.query_memory_size_summary().await.unwrap().base_memory,
        )
    });
    assert_eq!((cpus, memory), (2, 640 * MIB));
    run.ok(&["vm", "rm", "--force", "q"]);
}

#[test]
fn resize_on_firecracker() {
    let test = "resize_on_firecracker";
    let Some(run) = Run::new(test, ("COCOON_FC_BINARY", "firecracker")) else {
        return;
    };
    let _env_reaper = EnvReaper(run.env.root_dir());
    let vm = run.boot("f", &["--fc", "--cpu", "1", "--memory", "1G"]);
    let _reaper = Reaper(processes_of(&vm));
    let id = vm["id"].as_str().unwrap().to_string();
    let err = run.fails(&["vm", "resize", "--cpu", "2", "f"]);
    assert_eq!(
        err,
        format!(
            "Error: cannot resize VM f ({id}) to 2 vCPUs and 1024 MiB: Firecracker cannot change a running VM's vCPUs; stop it, resize it, and start it"
        )
    );
    // Below its RAM it is the balloon's, and Firecracker updates a balloon
    // only once the guest's driver activated it: the test guest has none,
    // so the VMM's refusal is passed on and nothing changes.
    let err = run.fails(&["vm", "resize", "--memory", "768M", "f"]);
    assert_eq!(
        err,
        format!(
            "Error: cannot resize VM f ({id}) to 1 vCPUs and 768 MiB: its VMM answered: PATCH /balloon: the VMM refused (HTTP 400): Balloon update error: Balloon: Device not activated yet.; its record is unchanged (1 vCPUs and 1024 MiB)"
        )
    );
    let fc = vmm_api::fc::Firecracker::new(&api_socket(&vm));
    let config = serde_json::to_value(block_on(fc.vm_config()).unwrap()).unwrap();
    assert_eq!(config["balloon"]["amount_mib"], 256, "{config:#}");
    assert_eq!(config["machine-config"]["mem_size_mib"], 1024, "{config:#}");
    assert_eq!(recorded(&run.inspect("f")), (1, 1024 * MIB));
    assert!(run.inspect("f")["vmm_memory"].is_null());
    run.ok(&["vm", "rm", "--force", "f"]);
}
