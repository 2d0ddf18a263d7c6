//! A lab for networking tests with Debian's real CNI plugins (bridge +
//! host-local + loopback): a private cocoon run inside a network namespace
//! the test creates (so the CNI bridge and its addresses never touch the
//! host's own namespace), which removes everything it made when dropped.
//! The fake VMMs stand in for the VMMs unless a test swaps in others.

use std::path::Path;
use std::process::Command;

use cocoon_engine::net::netns;
use cocoon_testkit::CocoonEnv;
use serde_json::Value;

pub const FAKE: &str = env!("CARGO_BIN_EXE_fake-vmm");

pub fn bin() -> String {
    cocoon_testkit::cocoon_bin()
}

/// A private cocoon, a test namespace holding the CNI bridge, a conflist.
pub struct NetLab {
    pub env: CocoonEnv,
    pub ch: std::path::PathBuf,
    pub fc: std::path::PathBuf,
    /// The test namespace, holding the CNI bridge.
    pub ns: String,
    /// The first three octets of the network's /24; the bridge is `.1`.
    pub subnet: String,
    pub bridge: String,
}

pub fn random_tag() -> u32 {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).unwrap();
    u32::from_le_bytes(b)
}

pub fn sh(argv: &[&str]) -> String {
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl NetLab {
    /// `ipam_extra` is merged into the host-local IPAM block (e.g. a range of one address).
    pub fn new(test: &str, ipam_extra: Value) -> Option<NetLab> {
        if !Path::new("/usr/lib/cni/bridge").exists() {
            cocoon_testkit::skip(test, "containernetworking-plugins is not installed");
            return None;
        }
        let tag = random_tag();
        let ns = format!("cocoon-nt-{:08x}", tag);
        let bridge = format!("cnt{:06x}", tag & 0xff_ffff);
        let subnet = format!("10.{}.{}", 100 + (tag >> 24) % 100, (tag >> 16) & 0xff);
        sh(&["ip", "netns", "add", &ns]);
        let env = CocoonEnv::new(bin());
        let conf = env.path().join("cni");
        std::fs::create_dir_all(&conf).unwrap();
        let mut ipam = serde_json::json!({
            "type": "host-local",
            "ranges": [[{"subnet": format!("{subnet}.0/24")}]],
            "dataDir": env.path().join("ipam"),
        });
        if let (Some(ipam), Some(extra)) = (ipam.as_object_mut(), ipam_extra.as_object()) {
            for (k, v) in extra {
                ipam.insert(k.clone(), v.clone());
            }
        }
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "testnet",
            "plugins": [
                {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false, "ipam": ipam},
                {"type": "loopback"}
            ]
        });
        std::fs::write(conf.join("10-test.conflist"), conflist.to_string()).unwrap();
        let layer = cocoon_testkit::guest::boot_layer("6.1", b"initrd").build();
        std::fs::write(env.path().join("layer.tar"), layer).unwrap();
        let lab = NetLab {
            env,
            ch: FAKE.into(),
            fc: FAKE.into(),
            ns,
            subnet,
            bridge,
        };
        lab.ok(&[
            "image",
            "import",
            "test/guest:1",
            lab.env.path().join("layer.tar").to_str().unwrap(),
        ]);
        Some(lab)
    }

    /// cocoon inside the test namespace (network only: mounts stay shared,
    /// so the VM namespaces it bind-mounts are visible to the test).
    pub fn cmd(&self) -> Command {
        let std = self.env.std_cmd();
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.ns))
            .arg(std.get_program())
            .args(std.get_args());
        for (k, v) in std.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd.env("COCOON_CNI_CONF_DIR", self.env.path().join("cni"))
            .env("COCOON_CH_BINARY", &self.ch)
            .env("COCOON_FC_BINARY", &self.fc)
            .env("COCOON_TERMINATE_GRACE_PERIOD_SECONDS", "1");
        cmd
    }

    pub fn ok(&self, args: &[&str]) -> String {
        cocoon_testkit::run_ok(self.cmd(), args)
    }

    pub fn fail(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert!(!out.status.success(), "cocoon {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn inspect(&self, vm: &str) -> Value {
        serde_json::from_str(&self.ok(&["vm", "inspect", vm])).unwrap()
    }

    /// IPs host-local still holds.
    pub fn leases(&self) -> Vec<String> {
        std::fs::read_dir(self.env.path().join("ipam/testnet"))
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.starts_with("10."))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Links in the test namespace other than lo and the bridge.
    pub fn stray_links(&self) -> Vec<String> {
        sh(&["ip", "-n", &self.ns, "-br", "link"])
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(|n| n.split('@').next().unwrap().to_string())
            .filter(|n| n != "lo" && *n != self.bridge)
            .collect()
    }

    pub fn cocoon_namespaces(&self) -> Vec<String> {
        let ids: Vec<String> = serde_json::from_str::<Value>(&self.ok(&["vm", "ls", "-o", "json"]))
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_string())
            .collect();
        std::fs::read_dir("/run/netns")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| ids.iter().any(|id| n == &format!("cocoon-{id}")))
            .collect()
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        if let Ok(out) = self.cmd().args(["vm", "ls", "-o", "json"]).output()
            && let Ok(Value::Array(vms)) = serde_json::from_slice::<Value>(&out.stdout)
        {
            for vm in vms {
                let id = vm["id"].as_str().unwrap_or_default().to_string();
                let _ = self.cmd().args(["vm", "rm", "--force", &id]).output();
                let _ = netns::delete(&netns::path_for(&id));
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.ns])
            .output();
    }
}
