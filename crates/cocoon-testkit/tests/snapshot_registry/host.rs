//! The two installations and the registry of the snapshot_registry tests.

// Test sizes: a few MiB, far below any address space.
#![allow(clippy::cast_possible_truncation)]

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::Command;

use cocoon_engine::snapshot::manifest::sum_file;
use cocoon_testkit::registry::Registry;
use cocoon_testkit::{CocoonEnv, skip};
use serde_json::Value;

pub(crate) const FAKE: &str = env!("CARGO_BIN_EXE_fake-vmm");
pub(crate) const BLOCK: u64 = 4 << 20;

pub(crate) struct Host {
    pub(crate) env: CocoonEnv,
}

impl Drop for Host {
    fn drop(&mut self) {
        cocoon_testkit::kill_all_under(&self.env.root_dir());
    }
}

impl Host {
    /// An installation with the test image imported.
    pub(crate) fn new() -> Host {
        let host = Host {
            env: CocoonEnv::new(cocoon_testkit::cocoon_bin()),
        };
        let layer = cocoon_testkit::guest::boot_layer("6.1", b"initrd").build();
        let tar = host.env.path().join("layer.tar");
        std::fs::write(&tar, layer).unwrap();
        host.ok(&["image", "import", "test/guest:1", tar.to_str().unwrap()]);
        host
    }

    pub(crate) fn cmd(&self) -> Command {
        self.env.fake_vmm_cmd(FAKE)
    }

    pub(crate) fn ok(&self, args: &[&str]) -> String {
        cocoon_testkit::run_ok(self.cmd(), args)
    }

    pub(crate) fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    /// `snapshot push -o json SNAPSHOT REF`.
    pub(crate) fn push(&self, snapshot: &str, reference: &str) -> Value {
        self.json(&["snapshot", "push", "-o", "json", snapshot, reference])
    }

    /// Fails with exit code 1; returns stderr.
    pub(crate) fn fail(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "cocoon {args:?} should fail: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Runs with a failpoint that kills the process there.
    pub(crate) fn killed_at(&self, failpoint: &str, args: &[&str]) {
        let out = self
            .cmd()
            .env("COCOON_FAILPOINTS", format!("{failpoint}=kill"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&out.status),
            Some(9),
            "cocoon {args:?} was to be killed at {failpoint}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub(crate) fn snapshot_names(&self) -> Vec<String> {
        let list = self.json(&["snapshot", "ls", "-o", "json"]);
        let mut names: Vec<String> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap_or_default().to_string())
            .collect();
        names.sort();
        names
    }

    /// What is left under the snapshot store and the pull cache.
    pub(crate) fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        for dir in ["snapshots", "pulls"] {
            if let Ok(entries) = std::fs::read_dir(self.env.root_dir().join(dir)) {
                for e in entries {
                    left.push(format!(
                        "{dir}/{}",
                        e.unwrap().file_name().to_string_lossy()
                    ));
                }
            }
        }
        left.sort();
        left
    }

    pub(crate) fn data_dir(&self, snapshot: &str) -> PathBuf {
        let s = self.json(&["snapshot", "inspect", snapshot]);
        PathBuf::from(s["data_dir"].as_str().unwrap())
    }

    /// The VM's root disk (its writable COW file).
    pub(crate) fn cow(&self, vm: &str) -> PathBuf {
        let v = self.json(&["vm", "inspect", vm]);
        let disks = v["storage_configs"].as_array().unwrap();
        let cow = disks.iter().find(|d| d["role"] == "cow").unwrap();
        PathBuf::from(cow["path"].as_str().unwrap())
    }
}

pub(crate) fn registry(test: &str) -> Option<Registry> {
    let registry = Registry::start();
    if registry.is_none() {
        skip(
            test,
            "docker-registry is not installed (apt-get install docker-registry)",
        );
    }
    registry
}

pub(crate) fn failpoints(test: &str) -> bool {
    let version = Command::new(cocoon_testkit::cocoon_bin())
        .arg("version")
        .output()
        .unwrap();
    let on = String::from_utf8_lossy(&version.stdout).contains("failpoints");
    if !on {
        skip(
            test,
            "the cocoon binary under test was built without failpoints",
        );
    }
    on
}

/// Blob uploads the registry completed since its log was `from` bytes long.
pub(crate) fn blob_puts(registry: &Registry, from: usize) -> usize {
    registry.log()[from..]
        .lines()
        .filter(|l| {
            l.contains("\"PUT /v2/") && l.contains("/blobs/uploads/") && l.contains("\" 201")
        })
        .count()
}

/// Host A: a VM `src` with 8 MiB of data written into its root disk, and
/// its snapshot `s`.
pub(crate) fn source_with_snapshot() -> Host {
    let a = Host::new();
    a.ok(&["vm", "run", "--nics", "0", "--name", "src", "test/guest:1"]);
    let cow = std::fs::OpenOptions::new()
        .write(true)
        .open(a.cow("src"))
        .unwrap();
    cow.write_all_at(&vec![0xa5; 2 * BLOCK as usize], 32 * BLOCK)
        .unwrap();
    a.ok(&["snapshot", "save", "--name", "s", "src"]);
    a
}

pub(crate) fn sums(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "cocoon.json")
        .map(|n| {
            let sum = sum_file(&dir.join(&n)).unwrap();
            (n, sum.sha256)
        })
        .collect();
    v.sort();
    v
}
