//! The hibernate and wake flows of vk-cocoon (upstream's Kubernetes
//! provider), replayed against our CLI from `vk_replay/hibernate_wake.toml`:
//! every command line it runs, in its order, between two installations
//! (the node that hibernates, the node that wakes), with the fake VMMs; the
//! JSON fields it reads must be there and the words it matches in errors
//! must be said. Then the same flow with our `snapshot push` / `snapshot
//! pull` through a real registry in place of epoch's export/import stream.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use cocoon_testkit::CocoonEnv;
use cocoon_testkit::registry::Registry;
use serde::Deserialize;
use serde_json::Value;

const FAKE: &str = env!("CARGO_BIN_EXE_fake-vmm");
const VM: &str = "vk1";

#[derive(Deserialize)]
struct Replay {
    source: String,
    step: Vec<Step>,
}

#[derive(Deserialize)]
struct Step {
    flow: String,
    host: String,
    argv: Vec<String>,
    source: String,
    #[serde(default)]
    json: Vec<String>,
    #[serde(default)]
    capture_id: bool,
    fails_with: Option<String>,
    #[serde(default)]
    stdout_to_next: bool,
    #[serde(default)]
    stdin_from_previous: bool,
}

struct Host(CocoonEnv);

impl Host {
    fn new() -> Host {
        let host = Host(CocoonEnv::new(cocoon_testkit::cocoon_bin()));
        let layer = cocoon_testkit::guest::boot_layer("6.1", b"initrd").build();
        let tar = host.0.path().join("layer.tar");
        std::fs::write(&tar, layer).unwrap();
        let out = host
            .cmd()
            .args(["image", "import", "test/guest:1", tar.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success());
        host
    }

    fn cmd(&self) -> Command {
        self.0.fake_vmm_cmd(FAKE)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        cocoon_testkit::kill_all_under(&self.0.root_dir());
    }
}

fn load() -> Replay {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vk_replay/hibernate_wake.toml");
    toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn field<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(doc, |v, k| v.get(k))
}

/// Runs every step; `transfer` replaces the export → import stream when given
/// (our push and pull through a registry).
/// Moves the snapshot from host A to host B under the given import name.
type Transfer<'a> = &'a dyn Fn(&Host, &Host, &str);

fn replay(transfer: Option<Transfer<'_>>) {
    let replay = load();
    let (a, b) = (Host::new(), Host::new());
    let mut vmid = String::new();
    let mut previous: Vec<u8> = Vec::new();
    for step in &replay.step {
        let host = if step.host == "a" { &a } else { &b };
        let argv: Vec<String> = step
            .argv
            .iter()
            .map(|arg| {
                arg.replace("{vm}", VM)
                    .replace("{vmid}", &vmid)
                    .replace("{image}", "test/guest:1")
                    .replace("{import}", &format!("{VM}-hibernate-import"))
            })
            .collect();
        let what = format!(
            "{} ({} {}): cocoon {argv:?}",
            step.flow, replay.source, step.source
        );
        if let Some(transfer) = transfer {
            // Our registry path instead of epoch's stream.
            if step.stdout_to_next {
                continue;
            }
            if step.stdin_from_previous {
                transfer(&a, &b, &argv[3]);
                continue;
            }
        }
        let mut child = host
            .cmd()
            .args(&argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        if step.stdin_from_previous {
            stdin.write_all(&previous).unwrap();
        }
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        match &step.fails_with {
            Some(words) => {
                assert!(!out.status.success(), "{what}: succeeded");
                assert!(stderr.contains(words.as_str()), "{what}: {stderr}");
                continue;
            }
            None => assert!(out.status.success(), "{what}: {stderr}"),
        }
        if step.stdout_to_next {
            previous = out.stdout;
            continue;
        }
        if !step.json.is_empty() {
            let doc: Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("{what}: not JSON ({e})"));
            for path in &step.json {
                assert!(field(&doc, path).is_some(), "{what}: no {path} in {doc}");
            }
            if step.capture_id {
                vmid = doc["id"].as_str().unwrap().to_string();
            }
        }
    }
    let vms: Value = serde_json::from_slice(
        &b.cmd()
            .args(["vm", "ls", "-o", "json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(vms[0]["config"]["name"], VM, "{vms}");
    assert_eq!(vms[0]["state"], "running", "{vms}");
}

#[test]
fn vk_cocoon_hibernate_and_wake_replay_against_our_cli() {
    replay(None);
}

#[test]
fn the_same_flow_with_our_registry_push_and_pull() {
    let Some(registry) = Registry::start() else {
        return cocoon_testkit::skip(
            "the_same_flow_with_our_registry_push_and_pull",
            "docker-registry is not installed",
        );
    };
    let reference = registry.reference(&format!("vk/{VM}:hibernate"));
    replay(Some(&|a: &Host, b: &Host, import: &str| {
        for (host, args) in [
            (a, vec!["snapshot", "push", VM, &reference]),
            (b, vec!["snapshot", "pull", "--name", import, &reference]),
        ] {
            let out = host.cmd().args(&args).output().unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }));
}
