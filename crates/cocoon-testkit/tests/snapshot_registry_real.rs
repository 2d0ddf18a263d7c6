//! `snapshot push` / `snapshot pull` with the real VMMs between two
//! installations on this machine (separate root, run and log directories)
//! and a local `docker-registry`: host A runs the test guest, saves and
//! pushes; host B pulls and clones; the clone's heartbeat goes on from the
//! snapshot's count. A later snapshot of the same VM is pushed again and
//! sends only the blocks that changed (the figures are printed).
//!
//! Needs the VMMs (COCOON_CH_BINARY / COCOON_FC_BINARY, or PATH),
//! /dev/kvm and docker-registry; says SKIPPED loudly otherwise.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cocoon_testkit::guest::{heartbeats, heartbeats_since};
use cocoon_testkit::registry::Registry;
use cocoon_testkit::{CocoonEnv, EnvReaper, real_vmm, require_real_vmm, skip};
use serde_json::Value;

struct Host {
    env: CocoonEnv,
    ch: PathBuf,
    fc: PathBuf,
}

impl Host {
    fn new() -> Host {
        let host = Host {
            env: CocoonEnv::new(cocoon_testkit::cocoon_bin()),
            ch: real_vmm("COCOON_CH_BINARY", "cloud-hypervisor").unwrap_or_default(),
            fc: real_vmm("COCOON_FC_BINARY", "firecracker").unwrap_or_default(),
        };
        let layer = cocoon_testkit::guest::boot_layer("test", b"unused").build();
        let tar = host.env.path().join("layer.tar");
        std::fs::write(&tar, layer).unwrap();
        host.ok(&["image", "import", "guest/test:1", tar.to_str().unwrap()]);
        host
    }

    fn ok(&self, args: &[&str]) -> String {
        let mut cmd = self.env.std_cmd();
        for (var, path) in [
            ("COCOON_CH_BINARY", &self.ch),
            ("COCOON_FC_BINARY", &self.fc),
        ] {
            if !path.as_os_str().is_empty() {
                cmd.env(var, path);
            }
        }
        cocoon_testkit::run_ok(cmd, args)
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    fn log(&self, vm: &str) -> String {
        self.ok(&["vm", "logs", vm])
    }

    fn last_beat(&self, vm: &str) -> u64 {
        *heartbeats(&self.log(vm)).last().expect("a heartbeat")
    }

    fn wait_beat(&self, vm: &str, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while heartbeats(&self.log(vm)).last().is_none_or(|b| *b < n) {
            assert!(Instant::now() < deadline, "{vm}: no heartbeat {n}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn beats_since(&self, vm: &str, more: usize) -> Vec<u64> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let beats = heartbeats_since(&self.log(vm), 0);
            if beats.len() > more {
                return beats;
            }
            assert!(Instant::now() < deadline, "{vm}: beats {beats:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn across_hosts(test: &str, flags: &[&str], var: &str, program: &str) {
    if require_real_vmm(test, var, program).is_none() {
        return;
    }
    if !Path::new("/dev/kvm").exists() {
        return skip(test, "/dev/kvm is missing");
    }
    let Some(registry) = Registry::start() else {
        return skip(
            test,
            "docker-registry is not installed (apt-get install docker-registry)",
        );
    };
    let (a, b) = (Host::new(), Host::new());
    let _reapers = (EnvReaper(a.env.root_dir()), EnvReaper(b.env.root_dir()));
    let mut run = vec![
        "vm", "run", "--nics", "0", "--memory", "512M", "--cpu", "1", "--name", "src",
    ];
    run.extend_from_slice(flags);
    run.push("guest/test:1");
    a.ok(&run);
    a.wait_beat("src", 3);
    let lo = a.last_beat("src");
    a.ok(&["snapshot", "save", "--name", "s", "src"]);
    let hi = a.last_beat("src") + 1;
    let reference = registry.reference("snaps/src:v1");
    let first = a.json(&["snapshot", "push", "-o", "json", "s", &reference]);
    assert_eq!(first["sent_blocks"], first["blocks"], "{test}: {first}");

    let pulled = b.json(&["snapshot", "pull", "-o", "json", &reference]);
    assert_eq!(
        pulled["fetched_blocks"], first["blocks"],
        "{test}: {pulled}"
    );
    b.ok(&["vm", "clone", "--name", "c", "s"]);
    let beats = b.beats_since("c", 3);
    assert!(
        (lo..=hi).contains(&beats[0]) && beats.windows(2).all(|w| w[1] == w[0] + 1),
        "{test}: the clone on host B counts {beats:?}; the snapshot was taken at {lo}..={hi}"
    );

    // A later snapshot of the same VM: only what changed is sent.
    a.wait_beat("src", hi + 3);
    let lo2 = a.last_beat("src");
    a.ok(&["snapshot", "save", "--name", "s2", "src"]);
    let hi2 = a.last_beat("src") + 1;
    let second = a.json(&[
        "snapshot",
        "push",
        "-o",
        "json",
        "s2",
        &registry.reference("snaps/src:v2"),
    ]);
    let (sent, total) = (
        second["sent_bytes"].as_u64().unwrap(),
        second["bytes"].as_u64().unwrap(),
    );
    assert!(sent < total, "{test}: {second}");
    eprintln!(
        "{test}: first push {} blocks / {} bytes; second push sent {} of {} blocks, {sent} of {total} bytes; clone on B counts {beats:?} (snapshot at {lo}..={hi})",
        first["blocks"], first["bytes"], second["sent_blocks"], second["blocks"]
    );

    // The same snapshot in upstream's layout (epoch's), pulled and cloned.
    let whole_ref = registry.reference("snaps/src:whole");
    let whole = a.json(&[
        "snapshot", "push", "-o", "json", "--layout", "whole", "s2", &whole_ref,
    ]);
    assert_eq!(whole["layout"], "whole", "{test}: {whole}");
    b.ok(&["snapshot", "pull", "--name", "w", &whole_ref]);
    b.ok(&["vm", "clone", "--name", "cw", "w"]);
    let beats = b.beats_since("cw", 3);
    assert!(
        (lo2..=hi2).contains(&beats[0]) && beats.windows(2).all(|w| w[1] == w[0] + 1),
        "{test}: the whole-layout clone counts {beats:?}; the snapshot was taken at {lo2}..={hi2}"
    );
    eprintln!(
        "{test}: whole layout: {} files, {} bytes sent",
        whole["blocks"], whole["sent_bytes"]
    );
    b.ok(&["vm", "rm", "--force", "c", "cw"]);
    a.ok(&["vm", "rm", "--force", "src"]);
}

#[test]
fn a_snapshot_moves_between_hosts_on_cloud_hypervisor() {
    across_hosts(
        "a_snapshot_moves_between_hosts_on_cloud_hypervisor",
        &[],
        "COCOON_CH_BINARY",
        "cloud-hypervisor",
    );
}

#[test]
fn a_snapshot_moves_between_hosts_on_firecracker() {
    across_hosts(
        "a_snapshot_moves_between_hosts_on_firecracker",
        &["--fc"],
        "COCOON_FC_BINARY",
        "firecracker",
    );
}

#[test]
fn a_snapshot_moves_between_hosts_on_qemu() {
    across_hosts(
        "a_snapshot_moves_between_hosts_on_qemu",
        &["--qemu", "--no-agent"],
        "COCOON_QEMU_BINARY",
        "qemu-system-x86_64",
    );
}
