//! `vm resize` through the real `cocoon` binary against the fake VMMs: the
//! API calls each VMM gets (CH `vm.resize`, FC `PATCH /balloon`), what is
//! recorded, and every mistake a user can make, each with its exact error
//! and nothing changed.

use std::path::PathBuf;

use cocoon_testkit::CocoonEnv;
use cocoon_testkit::Reaper;
use serde_json::Value;

const FAKE: &str = env!("CARGO_BIN_EXE_fake-vmm");
const MIB: u64 = 1 << 20;

struct Lab {
    env: CocoonEnv,
}

impl Lab {
    fn new() -> Lab {
        let lab = Lab {
            env: CocoonEnv::new(cocoon_testkit::cocoon_bin()),
        };
        let layer = cocoon_testkit::guest::boot_layer("6.1", b"initrd").build();
        let tar = lab.env.path().join("layer.tar");
        std::fs::write(&tar, layer).unwrap();
        lab.ok(&["image", "import", "test/guest:1", tar.to_str().unwrap()]);
        lab
    }

    fn cmd(&self) -> std::process::Command {
        self.env.fake_vmm_cmd(FAKE)
    }

    fn ok(&self, args: &[&str]) -> String {
        cocoon_testkit::run_ok(self.cmd(), args)
    }

    /// A command that must fail with `code`: its stderr.
    fn fails(&self, code: i32, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stderr).trim().to_string()
    }

    fn inspect(&self, vm: &str) -> Value {
        serde_json::from_str(&self.ok(&["vm", "inspect", vm])).unwrap()
    }

    /// `vm run` with `flags` (2 vCPUs, 1 GiB, no NIC by default).
    fn run(&self, name: &str, flags: &[&str]) -> Value {
        let args = [
            &["vm", "run", "--nics", "0", "--name", name][..],
            flags,
            &["test/guest:1"],
        ]
        .concat();
        self.ok(&args);
        self.inspect(name)
    }
}

fn size(vm: &Value) -> (u64, u64) {
    (
        vm["config"]["cpu"].as_u64().unwrap(),
        vm["config"]["memory"].as_u64().unwrap(),
    )
}

fn socket(vm: &Value) -> PathBuf {
    PathBuf::from(vm["vmm"]["api_socket"].as_str().unwrap())
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn cloud_hypervisor_gets_vm_resize_and_the_record_follows() {
    let lab = Lab::new();
    let vm = lab.run("m", &[]);
    let _reaper = Reaper(cocoon_testkit::processes_of(&vm));
    let out = lab.ok(&[
        "vm", "resize", "--cpu", "1", "--memory", "1536M", "-o", "json", "m",
    ]);
    let printed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(size(&printed), (1, 1536 * MIB));
    assert_eq!(size(&lab.inspect("m")), (1, 1536 * MIB));
    let config = block_on(vmm_api::ch::CloudHypervisor::new(&socket(&vm)).info())
        .unwrap()
        .config;
    assert_eq!(config["cpus"]["boot_vcpus"], 1, "{config:#}");
    assert_eq!(config["memory"]["size"], 1024 * MIB, "{config:#}");
    assert_eq!(config["memory"]["hotplugged_size"], 512 * MIB, "{config:#}");
    // A snapshot takes the new size.
    lab.ok(&["snapshot", "save", "--name", "s", "m"]);
    let snapshot: Value = serde_json::from_str(&lab.ok(&["snapshot", "inspect", "s"])).unwrap();
    assert_eq!(snapshot["cpu"], 1, "{snapshot}");
    assert_eq!(snapshot["memory"], 1536 * MIB, "{snapshot}");
    lab.ok(&["vm", "rm", "--force", "m"]);
}

#[test]
fn a_stopped_vm_gets_its_record_changed_and_boots_at_it() {
    let lab = Lab::new();
    lab.ok(&["vm", "create", "--nics", "0", "--name", "m", "test/guest:1"]);
    lab.ok(&["vm", "resize", "--cpu", "1", "--memory", "768M", "m"]);
    assert_eq!(size(&lab.inspect("m")), (1, 768 * MIB));
    lab.ok(&["vm", "start", "m"]);
    let vm = lab.inspect("m");
    let _reaper = Reaper(cocoon_testkit::processes_of(&vm));
    let config = block_on(vmm_api::ch::CloudHypervisor::new(&socket(&vm)).info())
        .unwrap()
        .config;
    assert_eq!(config["cpus"]["boot_vcpus"], 1, "{config:#}");
    assert_eq!(config["memory"]["size"], 768 * MIB, "{config:#}");
    lab.ok(&["vm", "rm", "--force", "m"]);
}

#[test]
fn firecracker_shrinks_with_its_balloon_and_refuses_vcpus() {
    let lab = Lab::new();
    let vm = lab.run("f", &["--fc"]);
    let _reaper = Reaper(cocoon_testkit::processes_of(&vm));
    let id = vm["id"].as_str().unwrap();
    let err = lab.fails(1, &["vm", "resize", "--cpu", "1", "f"]);
    assert_eq!(
        err,
        format!(
            "Error: cannot resize VM f ({id}) to 1 vCPUs and 1024 MiB: Firecracker cannot change a running VM's vCPUs; stop it, resize it, and start it"
        )
    );
    let err = lab.fails(1, &["vm", "resize", "--memory", "2G", "f"]);
    assert_eq!(
        err,
        format!(
            "Error: cannot resize VM f ({id}) to 2 vCPUs and 2048 MiB: Firecracker VMs start without memory hot-plug: its balloon can give the guest back up to the 1024 MiB it started with; stop it, resize it, and start it to grow further"
        )
    );
    assert_eq!(size(&lab.inspect("f")), (2, 1024 * MIB));
    lab.ok(&["vm", "resize", "--memory", "768M", "f"]);
    let fc = vmm_api::fc::Firecracker::new(&socket(&vm));
    let config = serde_json::to_value(block_on(fc.vm_config()).unwrap()).unwrap();
    assert_eq!(config["balloon"]["amount_mib"], 256, "{config:#}");
    let inspected = lab.inspect("f");
    assert_eq!(size(&inspected), (2, 768 * MIB));
    assert_eq!(inspected["vmm_memory"], 1024 * MIB);
    // Back to all of its RAM: the default balloon, a quarter.
    lab.ok(&["vm", "resize", "--memory", "1G", "f"]);
    let config = serde_json::to_value(block_on(fc.vm_config()).unwrap()).unwrap();
    assert_eq!(config["balloon"]["amount_mib"], 256, "{config:#}");
    assert!(lab.inspect("f")["vmm_memory"].is_null());
    lab.ok(&["vm", "rm", "--force", "f"]);
}

#[test]
fn mistakes_are_refused_with_the_reason_and_change_nothing() {
    let lab = Lab::new();
    let vm = lab.run("m", &["--no-balloon"]);
    let _reaper = Reaper(cocoon_testkit::processes_of(&vm));
    let id = vm["id"].as_str().unwrap().to_string();
    let host = cocoon_engine::spec::host_cpus();
    for (args, code, expected) in [
        (
            vec!["vm", "resize", "m"],
            2,
            "error: the following required arguments were not provided:\n  --cpu <CPU>\n\nUsage: cocoon vm resize --cpu <CPU> <VM>\n\nFor more information, try '--help'.".to_string(),
        ),
        (
            vec!["vm", "resize", "--cpu", "0", "m"],
            2,
            "error: invalid value '0' for '--cpu <CPU>': --cpu must be at least 1\n\nFor more information, try '--help'.".to_string(),
        ),
        (
            vec!["vm", "resize", "--memory", "100M", "m"],
            2,
            "error: invalid value '100M' for '--memory <MEMORY>': --memory 100MiB is below the minimum of 512MiB\n\nFor more information, try '--help'.".to_string(),
        ),
        (
            vec!["vm", "resize", "--cpu", &(host + 1).to_string(), "m"],
            2,
            format!("error: invalid value '{}' for '--cpu <CPU>': --cpu {} exceeds the {host} CPUs of this host\n\nFor more information, try '--help'.", host + 1, host + 1),
        ),
        (
            vec!["vm", "resize", "--cpu", "1", "nope"],
            1,
            "Error: no such VM \"nope\": vm not found by ID, name or ID prefix".to_string(),
        ),
        (
            vec!["vm", "resize", "--memory", "768M", "m"],
            1,
            format!("Error: cannot resize VM m ({id}) to 2 vCPUs and 768 MiB: it runs with 1024 MiB and no balloon device (--no-balloon, Windows, or under 256 MiB), so its memory cannot shrink while it runs; stop it, resize it, and start it"),
        ),
    ] {
        let args: Vec<&str> = args.iter().map(|a| &**a).collect();
        assert_eq!(lab.fails(code, &args), expected, "{args:?}");
        assert_eq!(size(&lab.inspect("m")), (2, 1024 * MIB), "{args:?}");
    }
    // A hibernated VM sleeps in a snapshot of its size.
    lab.ok(&["vm", "hibernate", "m"]);
    let err = lab.fails(1, &["vm", "resize", "--cpu", "1", "m"]);
    assert_eq!(
        err,
        format!(
            "Error: VM m ({id}) is hibernated and cannot be resized: its guest sleeps in a snapshot of 2 vCPUs and 1024 MiB; wake it with `cocoon vm start m` and resize it then"
        )
    );
    assert_eq!(size(&lab.inspect("m")), (2, 1024 * MIB));
    assert_eq!(lab.inspect("m")["state"], "hibernated");
}
