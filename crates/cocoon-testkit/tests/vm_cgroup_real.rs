//! CPU control of real VMMs on this host's real cgroup hierarchy: the test
//! guest's heartbeat loop spins its one vCPU, so a quota of 10 ms per
//! 100 ms throttles it, which the group's `cpu.stat` and `vm ls`'s
//! THROTTLED column show. The VMM is in its group from its start, and a
//! killed VMM leaves no group after one command.
//!
//! Needs the VMMs (COCOON_CH_BINARY / COCOON_FC_BINARY, QEMU on PATH),
//! /dev/kvm and a writable cgroup hierarchy; says SKIPPED loudly otherwise.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cocoon_engine::cgroup::{Controller, Version};
use cocoon_testkit::Reaper;
use cocoon_testkit::cgroup::{TestParent, path_in};
use cocoon_testkit::guest::{HEARTBEAT_PREFIX, READY_MARKER};
use cocoon_testkit::{CocoonEnv, EnvReaper, processes_of, real_vmm, require_real_vmm, skip};
use serde_json::Value;

struct Run {
    env: CocoonEnv,
    vars: Vec<(String, PathBuf)>,
}

impl Run {
    fn cmd(&self) -> std::process::Command {
        let mut cmd = self.env.std_cmd();
        for (var, value) in &self.vars {
            cmd.env(var, value);
        }
        cmd
    }

    fn ok(&self, args: &[&str]) -> String {
        cocoon_testkit::run_ok(self.cmd(), args)
    }

    fn inspect(&self, vm: &str) -> Value {
        serde_json::from_str(&self.ok(&["vm", "inspect", vm])).unwrap()
    }

    fn wait(&self, what: &str, timeout: Duration, mut check: impl FnMut(&Run) -> bool) {
        let deadline = Instant::now() + timeout;
        while !check(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn throttled_on(flag: Option<&str>, binary: (&str, &str), test: &str) {
    let Some(vmm) = require_real_vmm(test, binary.0, binary.1) else {
        return;
    };
    if !Path::new("/dev/kvm").exists() {
        return skip(test, "/dev/kvm is missing");
    }
    let Some(parent) = TestParent::new(test) else {
        return;
    };
    let env = CocoonEnv::new(cocoon_testkit::cocoon_bin());
    let _env_reaper = EnvReaper(env.root_dir());
    let mut vars = vec![
        (binary.0.to_string(), vmm),
        (parent.env().0, PathBuf::from(parent.env().1)),
    ];
    for (var, name) in [
        ("COCOON_CH_BINARY", "cloud-hypervisor"),
        ("COCOON_FC_BINARY", "firecracker"),
    ] {
        if var != binary.0
            && let Some(path) = real_vmm(var, name)
        {
            vars.push((var.to_string(), path));
        }
    }
    let run = Run { env, vars };
    let layer = cocoon_testkit::guest::boot_layer("test", b"unused").build();
    let tar = run.env.path().join("layer.tar");
    std::fs::write(&tar, layer).unwrap();
    run.ok(&["image", "import", "guest/test:1", tar.to_str().unwrap()]);

    let mut args = vec![
        "vm",
        "run",
        "--nics",
        "0",
        "--memory",
        "512M",
        "--cpu",
        "1",
        "--name",
        "t",
        "--cpu-quota-us",
        "10000",
        "--cpu-period-us",
        "100000",
    ];
    args.extend(flag);
    args.push("guest/test:1");
    run.ok(&args);
    let vm = run.inspect("t");
    let procs = processes_of(&vm);
    let _reaper = Reaper(procs.clone());
    let id = vm["id"].as_str().unwrap().to_string();
    let group = parent.group(&id);
    let vmm_pid = procs[0].identity.pid;
    let scope = format!("/{}/vm-{id}.scope", parent.name.display());
    let controller = if parent.host.version == Version::V1 {
        "cpu"
    } else {
        ""
    };
    let own = std::fs::read_to_string(format!("/proc/{vmm_pid}/cgroup")).unwrap();
    assert_eq!(path_in(&own, controller), Some(scope), "{own}");
    let (quota, period) = match parent.host.version {
        Version::V1 => (
            group.read(Controller::Cpu, "cpu.cfs_quota_us"),
            group.read(Controller::Cpu, "cpu.cfs_period_us"),
        ),
        Version::V2 => (
            group.read(Controller::Cpu, "cpu.max"),
            Some("100000".into()),
        ),
    };
    assert!(
        quota.as_deref().is_some_and(|q| q.starts_with("10000")),
        "{quota:?}"
    );
    assert_eq!(period.as_deref(), Some("100000"));

    // The guest boots and beats under its quota, and is throttled.
    run.wait("the guest to beat", Duration::from_secs(30), |r| {
        let log = r.ok(&["vm", "logs", "t"]);
        log.contains(READY_MARKER) && log.contains(&format!("{HEARTBEAT_PREFIX}2"))
    });
    run.wait("throttled periods", Duration::from_secs(30), |r| {
        r.inspect("t")["cpu_stat"]["nr_throttled"]
            .as_u64()
            .unwrap_or(0)
            >= 5
    });
    let stat = group.stat().unwrap();
    assert!(
        stat.nr_throttled >= 5 && stat.throttled_usec > 0,
        "{stat:?}"
    );
    let ls = run.ok(&["vm", "ls"]);
    let header = ls.lines().next().unwrap();
    let column = header.find("THROTTLED").unwrap();
    let row = ls.lines().find(|l| l.starts_with(&id)).unwrap();
    let cell = row[column..].split_whitespace().next().unwrap();
    let (count, time) = cell.split_once('/').unwrap_or_else(|| panic!("{ls}"));
    assert!(count.parse::<u64>().unwrap() >= 5, "{ls}");
    assert!(time.ends_with('s'), "{ls}");
    eprintln!("{test}: {stat:?}\n{ls}");

    // kill -9 of the VMM: after its relay follows, one command clears the group.
    let relay = procs[1].clone();
    // SAFETY: a plain kill(2) of the VMM this test started.
    unsafe { libc::kill(i32::try_from(vmm_pid).unwrap(), libc::SIGKILL) };
    run.wait("the relay to exit", Duration::from_secs(10), |_| {
        !cocoon_engine::supervise::is_running(&relay)
    });
    run.wait("the group to empty", Duration::from_secs(5), |_| {
        group.pids().is_empty()
    });
    run.ok(&["vm", "ls"]);
    assert!(parent.vm_groups().is_empty(), "{:?}", parent.vm_groups());
    run.ok(&["vm", "rm", "--force", "t"]);
}

#[test]
fn a_quota_throttles_the_guest_on_cloud_hypervisor() {
    throttled_on(
        None,
        ("COCOON_CH_BINARY", "cloud-hypervisor"),
        "a_quota_throttles_the_guest_on_cloud_hypervisor",
    );
}

#[test]
fn a_quota_throttles_the_guest_on_firecracker() {
    throttled_on(
        Some("--fc"),
        ("COCOON_FC_BINARY", "firecracker"),
        "a_quota_throttles_the_guest_on_firecracker",
    );
}

#[test]
fn a_quota_throttles_the_guest_on_qemu() {
    throttled_on(
        Some("--qemu"),
        ("COCOON_QEMU_BINARY", "qemu-system-x86_64"),
        "a_quota_throttles_the_guest_on_qemu",
    );
}
