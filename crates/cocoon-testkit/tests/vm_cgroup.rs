//! Each VM in its own cgroup, on this host's real hierarchy (v1 here, v2
//! where the host has it), under a parent each test makes and removes:
//! the VMM is inside before its API socket exists, the files hold what the
//! flags asked, stop removes the group and start restores it, a killed
//! VMM's group is gone after one command, bad values are refused.

use std::time::{Duration, Instant};

use cocoon_engine::cgroup::{Controller, Version, shares_of_weight};
use cocoon_testkit::CocoonEnv;
use cocoon_testkit::Reaper;
use cocoon_testkit::cgroup::{TestParent, path_in};
use serde_json::Value;

const FAKE: &str = env!("CARGO_BIN_EXE_fake-vmm");

struct Lab {
    env: CocoonEnv,
    extra_env: Vec<(String, String)>,
}

impl Lab {
    fn new(parent: &TestParent) -> Lab {
        let lab = Lab {
            env: CocoonEnv::new(cocoon_testkit::cocoon_bin()),
            extra_env: vec![parent.env()],
        };
        let layer = cocoon_testkit::guest::boot_layer("6.1", b"initrd").build();
        std::fs::write(lab.env.path().join("layer.tar"), layer).unwrap();
        let tar = lab.env.path().join("layer.tar");
        lab.ok(&["image", "import", "test/guest:1", tar.to_str().unwrap()]);
        lab
    }

    fn cmd(&self) -> std::process::Command {
        let mut cmd = self.env.fake_vmm_cmd(FAKE);
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
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
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The first CPU the test parent's hierarchy may use.
fn first_cpu(parent: &TestParent) -> Option<u32> {
    let root = parent.host.hierarchy(Controller::Cpuset)?.root.clone();
    let file = match parent.host.version {
        Version::V2 => "cpuset.cpus.effective",
        Version::V1 => "cpuset.cpus",
    };
    let text = std::fs::read_to_string(root.join(file)).ok()?;
    let list: cocoon_engine::cgroup::CpuList = text.trim().parse().ok()?;
    list.cpus().first().copied()
}

fn expect_files(parent: &TestParent, id: &str, cpu: Option<u32>) {
    let group = parent.group(id);
    let read = |c, f| group.read(c, f).unwrap_or_else(|| panic!("{f} missing"));
    match parent.host.version {
        Version::V1 => {
            assert_eq!(read(Controller::Cpu, "cpu.cfs_quota_us"), "10000");
            assert_eq!(read(Controller::Cpu, "cpu.cfs_period_us"), "100000");
            assert_eq!(read(Controller::Cpu, "cpu.cfs_burst_us"), "2000");
            assert_eq!(
                read(Controller::Cpu, "cpu.shares"),
                shares_of_weight(200).to_string()
            );
        }
        Version::V2 => {
            assert_eq!(read(Controller::Cpu, "cpu.max"), "10000 100000");
            assert_eq!(read(Controller::Cpu, "cpu.max.burst"), "2000");
            assert_eq!(read(Controller::Cpu, "cpu.weight"), "200");
        }
    }
    if let Some(cpu) = cpu {
        assert_eq!(read(Controller::Cpuset, "cpuset.cpus"), cpu.to_string());
    }
}

#[test]
fn a_vm_runs_in_its_own_group_from_its_start_to_its_stop() {
    let Some(parent) = TestParent::new("cgroup lifecycle") else {
        return;
    };
    let lab = Lab::new(&parent);
    let cpu = first_cpu(&parent);
    let cpu_text = cpu.map(|c| c.to_string());
    let mut args = vec![
        "vm",
        "create",
        "--nics",
        "0",
        "--name",
        "web",
        "--cpu-weight",
        "200",
        "--cpu-quota-us",
        "10000",
        "--cpu-period-us",
        "100000",
        "--cpu-burst-us",
        "2000",
    ];
    if let Some(cpu) = &cpu_text {
        args.extend(["--cpuset-cpus", cpu]);
    }
    args.push("test/guest:1");
    let id = lab.ok(&args).trim().to_string();
    let vm = lab.inspect("web");
    assert_eq!(vm["config"]["cpu_quota_us"], 10000);
    assert_eq!(vm["config"]["cpu_weight"], 200);
    assert!(parent.vm_groups().is_empty(), "no group before a start");

    lab.ok(&["vm", "start", "web"]);
    let vm = lab.inspect("web");
    let _reaper = Reaper(cocoon_testkit::processes_of(&vm));
    let scope = format!("/{}/vm-{id}.scope", parent.name.display());
    let controller = match parent.host.version {
        Version::V1 => "cpu",
        Version::V2 => "",
    };
    let vmm_pid = u32::try_from(vm["vmm"]["pid"].as_u64().unwrap()).unwrap();
    let relay_pid = u32::try_from(vm["console_relay"]["pid"].as_u64().unwrap()).unwrap();
    // In by the time `vm start` returned, every thread of it.
    for task in std::fs::read_dir(format!("/proc/{vmm_pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let groups = std::fs::read_to_string(task.join("cgroup")).unwrap();
        assert_eq!(
            path_in(&groups, controller),
            Some(scope.clone()),
            "{}: {groups}",
            task.display()
        );
    }
    expect_files(&parent, &id, cpu);
    let pids = parent.group(&id).pids();
    assert!(
        pids.contains(&vmm_pid) && pids.contains(&relay_pid),
        "{pids:?}"
    );
    assert!(vm["cpu_stat"]["nr_periods"].is_u64(), "{vm}");
    let ls = lab.ok(&["vm", "ls"]);
    assert!(ls.lines().next().unwrap().contains("THROTTLED"), "{ls}");

    // Stop removes the group; start makes it again with the same settings.
    lab.ok(&["vm", "stop", "web"]);
    assert!(!parent.group(&id).exists(), "the group outlived the stop");
    lab.ok(&["vm", "start", "web"]);
    let vm = lab.inspect("web");
    let _reaper2 = Reaper(cocoon_testkit::processes_of(&vm));
    expect_files(&parent, &id, cpu);

    // kill -9 of the VMM: once its relay has followed it, one command
    // leaves no empty VM group behind.
    let relay = cocoon_testkit::processes_of(&vm)[1].clone();
    let vmm_pid = i32::try_from(vm["vmm"]["pid"].as_i64().unwrap()).unwrap();
    // SAFETY: a plain kill(2) of the VMM this test started.
    unsafe { libc::kill(vmm_pid, libc::SIGKILL) };
    wait_for("the relay to exit", Duration::from_secs(10), || {
        !cocoon_engine::supervise::is_running(&relay)
    });
    wait_for("the group to empty", Duration::from_secs(5), || {
        parent.group(&id).pids().is_empty()
    });
    lab.ok(&["vm", "ls"]);
    assert!(parent.vm_groups().is_empty(), "{:?}", parent.vm_groups());
    lab.ok(&["vm", "rm", "web"]);
}

#[test]
fn cgroup_cpus_fences_every_vm_to_its_cpus() {
    let Some(parent) = TestParent::new("cgroup_cpus") else {
        return;
    };
    let Some(cpu) = first_cpu(&parent) else {
        eprintln!("SKIPPED cgroup_cpus: no cpuset controller");
        return;
    };
    let mut lab = Lab::new(&parent);
    lab.extra_env
        .push(("COCOON_CGROUP_CPUS".into(), cpu.to_string()));
    let id = lab
        .ok(&[
            "vm",
            "create",
            "--nics",
            "0",
            "--name",
            "fenced",
            "test/guest:1",
        ])
        .trim()
        .to_string();
    lab.ok(&["vm", "start", "fenced"]);
    let vm = lab.inspect("fenced");
    let _reaper = Reaper(cocoon_testkit::processes_of(&vm));
    let fence = parent.dir(Controller::Cpuset).unwrap();
    let fenced = std::fs::read_to_string(fence.join("cpuset.cpus")).unwrap();
    assert_eq!(fenced.trim(), cpu.to_string());
    let own = parent.group(&id).read(Controller::Cpuset, "cpuset.cpus");
    assert_eq!(own.as_deref(), Some(cpu.to_string().as_str()));
    // A VM asking for CPUs outside the fence is refused before it exists.
    let err = lab.fail(&[
        "vm",
        "run",
        "--nics",
        "0",
        "--name",
        "outside",
        "--cpuset-cpus",
        "4095",
        "test/guest:1",
    ]);
    assert!(err.contains("--cpuset-cpus 4095 is not within"), "{err}");
    lab.ok(&["vm", "rm", "--force", "fenced"]);
    assert!(parent.vm_groups().is_empty());
}

#[test]
fn values_the_kernel_would_refuse_are_refused_by_name_and_nothing_is_made() {
    let Some(parent) = TestParent::new("cgroup values") else {
        return;
    };
    let lab = Lab::new(&parent);
    let cases: &[(&[&str], &str)] = &[
        (
            &["--cpu-weight", "0"],
            "--cpu-weight \"0\" is out of range: allowed 1..=10000",
        ),
        (&["--cpu-weight", "10001"], "--cpu-weight \"10001\""),
        (
            &["--cpu-quota-us", "999"],
            "--cpu-quota-us \"999\" is out of range: allowed at least 1000 µs",
        ),
        (&["--cpu-period-us", "999"], "--cpu-period-us \"999\""),
        (&["--cpu-period-us", "1000001"], "1000..=1000000 µs"),
        (
            &["--cpu-quota-us", "5000", "--cpu-burst-us", "6000"],
            "--cpu-burst-us \"6000\"",
        ),
        (
            &["--cpu-burst-us", "6000"],
            "--cpu-burst-us needs --cpu-quota-us",
        ),
        (&["--cpuset-cpus", "3-1"], "is not a CPU list"),
    ];
    for (flags, expected) in cases {
        let mut args = vec!["vm", "create", "--nics", "0", "--name", "bad"];
        args.extend_from_slice(flags);
        args.push("test/guest:1");
        let err = lab.fail(&args);
        assert!(err.contains(expected), "{flags:?}: {err}");
    }
    assert!(lab.ok(&["vm", "ls"]).contains("No VMs found."));
}

/// The cgroup's `cpu.cfs_quota_us` (v1) or `cpu.max` (v2) quota.
fn quota_of(parent: &TestParent, id: &str) -> String {
    let group = parent.group(id);
    match parent.host.version {
        Version::V1 => group.read(Controller::Cpu, "cpu.cfs_quota_us").unwrap(),
        Version::V2 => {
            let max = group.read(Controller::Cpu, "cpu.max").unwrap();
            max.split_whitespace().next().unwrap().to_string()
        }
    }
}

#[test]
fn snapshots_carry_the_settings_into_clones_and_restores_take_new_ones() {
    let Some(parent) = TestParent::new("cgroup clone") else {
        return;
    };
    let lab = Lab::new(&parent);
    lab.ok(&[
        "vm",
        "run",
        "--nics",
        "0",
        "--name",
        "src",
        "--cpu-quota-us",
        "20000",
        "--cpu-weight",
        "50",
        "test/guest:1",
    ]);
    let _reaper = Reaper(cocoon_testkit::processes_of(&lab.inspect("src")));
    lab.ok(&["snapshot", "save", "--name", "s", "src"]);

    // A clone inherits the snapshot's settings...
    lab.ok(&["vm", "clone", "--name", "c1", "s"]);
    let c1 = lab.inspect("c1");
    let _reaper1 = Reaper(cocoon_testkit::processes_of(&c1));
    assert_eq!(c1["config"]["cpu_quota_us"], 20000);
    assert_eq!(c1["config"]["cpu_weight"], 50);
    assert_eq!(quota_of(&parent, c1["id"].as_str().unwrap()), "20000");
    // ...unless it is given its own, which replace them.
    lab.ok(&[
        "vm",
        "clone",
        "--name",
        "c2",
        "--cpu-quota-us",
        "30000",
        "s",
    ]);
    let c2 = lab.inspect("c2");
    let _reaper2 = Reaper(cocoon_testkit::processes_of(&c2));
    assert_eq!(c2["config"]["cpu_quota_us"], 30000);
    assert!(c2["config"]["cpu_weight"].is_null(), "{c2}");
    assert_eq!(quota_of(&parent, c2["id"].as_str().unwrap()), "30000");
    let err = lab.fail(&["vm", "clone", "--name", "c3", "--cpu-weight", "0", "s"]);
    assert!(err.contains("--cpu-weight \"0\""), "{err}");
    assert!(lab.inspect("c1")["state"] == "running");

    // A restore keeps the VM's settings unless given new ones.
    lab.ok(&["vm", "restore", "--cpu-quota-us", "40000", "src", "s"]);
    let src = lab.inspect("src");
    let _reaper3 = Reaper(cocoon_testkit::processes_of(&src));
    assert_eq!(src["config"]["cpu_quota_us"], 40000);
    assert_eq!(quota_of(&parent, src["id"].as_str().unwrap()), "40000");
    for vm in ["src", "c1", "c2"] {
        lab.ok(&["vm", "rm", "--force", vm]);
    }
    assert!(parent.vm_groups().is_empty(), "{:?}", parent.vm_groups());
}

/// A VM that asks for no quota is capped at its vCPU count (upstream's
/// default: one host CPU per vCPU, over the period asked or the kernel's);
/// its record still says it asked for none, and an asked quota stands.
#[test]
fn a_vm_without_a_quota_is_capped_at_its_vcpus() {
    let Some(parent) = TestParent::new("cgroup cap") else {
        return;
    };
    let lab = Lab::new(&parent);
    let run = |name: &str, extra: &[&str]| {
        let args = [
            &["vm", "run", "--nics", "0", "--name", name][..],
            extra,
            &["test/guest:1"],
        ]
        .concat();
        lab.ok(&args);
        lab.inspect(name)
    };
    let two = run("two", &["--cpu", "2"]);
    let _reaper = Reaper(cocoon_testkit::processes_of(&two));
    assert!(two["config"]["cpu_quota_us"].is_null(), "{two}");
    assert_eq!(quota_of(&parent, two["id"].as_str().unwrap()), "200000");
    let short = run("short", &["--cpu", "1", "--cpu-period-us", "50000"]);
    let _reaper2 = Reaper(cocoon_testkit::processes_of(&short));
    assert_eq!(quota_of(&parent, short["id"].as_str().unwrap()), "50000");
    let asked = run("asked", &["--cpu", "1", "--cpu-quota-us", "300000"]);
    let _reaper3 = Reaper(cocoon_testkit::processes_of(&asked));
    assert_eq!(quota_of(&parent, asked["id"].as_str().unwrap()), "300000");
    for vm in ["two", "short", "asked"] {
        lab.ok(&["vm", "rm", "--force", vm]);
    }
    assert!(parent.vm_groups().is_empty(), "{:?}", parent.vm_groups());
}

/// A clone's snapshot memory loads without the default cap (its group's
/// quota is open while the VMM restores), and the cap is there once the
/// clone runs (upstream #186/#187: written before the guest resumes).
#[test]
fn a_restore_loads_memory_uncapped_and_resumes_capped() {
    let Some(parent) = TestParent::new("cgroup restore cap") else {
        return;
    };
    let mut lab = Lab::new(&parent);
    lab.ok(&[
        "vm",
        "run",
        "--nics",
        "0",
        "--cpu",
        "2",
        "--name",
        "src",
        "test/guest:1",
    ]);
    let src = lab.inspect("src");
    let _reaper = Reaper(cocoon_testkit::processes_of(&src));
    let src_id = src["id"].as_str().unwrap().to_string();
    lab.ok(&["snapshot", "save", "--name", "s", "src"]);
    // The restore call takes a while: long enough to look at the group.
    let faults = lab.env.path().join("faults.json");
    std::fs::write(
        &faults,
        r#"[{"method": "PUT", "path": "/api/v1/vm.restore", "action": "delay", "ms": 1500}]"#,
    )
    .unwrap();
    lab.extra_env.push((
        "COCOON_FAKE_VMM_FAULTS".into(),
        faults.display().to_string(),
    ));
    let mut clone = lab.cmd();
    clone.args(["vm", "clone", "--name", "c", "s"]);
    let mut child = clone.spawn().unwrap();
    let mut during = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while during.is_none() && Instant::now() < deadline {
        if let Some(id) = parent.vm_groups().into_iter().find(|g| *g != src_id)
            && parent.group(&id).exists()
            && !parent.group(&id).pids().is_empty()
        {
            during = Some(quota_of(&parent, &id));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(child.wait().unwrap().success(), "the clone failed");
    let c = lab.inspect("c");
    let _reaper2 = Reaper(cocoon_testkit::processes_of(&c));
    let open = match parent.host.version {
        Version::V1 => "-1",
        Version::V2 => "max",
    };
    assert_eq!(during.as_deref(), Some(open), "while the memory loads");
    assert_eq!(quota_of(&parent, c["id"].as_str().unwrap()), "200000");
    for vm in ["src", "c"] {
        lab.ok(&["vm", "rm", "--force", vm]);
    }
}
