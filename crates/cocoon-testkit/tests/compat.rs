//! Upstream compatibility: every command, flag and JSON field listed in
//! docs/compat/upstream-cli.toml (what upstream cocoon's newest CLI and
//! vk-cocoon use, with where each came from) is checked against our clap
//! tree and against the JSON our binary prints, on a VM run by the fake VMM.
//! "have" must be there; "in-progress" and "not-yet" must not (flip the
//! entry when a merge brings one).

use std::io::BufRead;
use std::path::Path;
use std::time::{Duration, Instant};

use clap::CommandFactory;
use cocoon::cli::Cli;
use cocoon_testkit::CocoonEnv;
use serde::Deserialize;
use serde_json::Value;

const FAKE: &str = env!("CARGO_BIN_EXE_fake-vmm");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct List {
    sources: toml::Table,
    command: Vec<Entry>,
    flag: Vec<Entry>,
    json: Vec<Entry>,
    error: Vec<ErrorEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorEntry {
    args: Vec<String>,
    /// `{s}` stands for the ID of the lab's snapshot `s`.
    phrase: String,
    source: String,
    status: Status,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    #[serde(default)]
    path: String,
    #[serde(default)]
    command: String,
    #[serde(default)]
    long: String,
    #[serde(default)]
    short: Option<char>,
    #[serde(default)]
    output: String,
    #[serde(default)]
    field: String,
    source: String,
    status: Status,
    #[serde(default)]
    reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Status {
    Have,
    InProgress,
    NotYet,
}

fn list() -> List {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/compat/upstream-cli.toml");
    let list: List = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for e in list.command.iter().chain(&list.flag).chain(&list.json) {
        let source = e.source.split_whitespace().next().unwrap_or_default();
        assert!(
            list.sources.contains_key(source)
                || e.source.starts_with("cocoon PR #")
                || e.source.starts_with("issue #20"),
            "{e:?}: its source names no [sources] entry"
        );
        assert!(
            e.status == Status::Have || !e.reason.is_empty(),
            "{e:?}: an entry we do not have says why"
        );
    }
    list
}

fn find<'a>(root: &'a clap::Command, path: &str) -> Option<&'a clap::Command> {
    let mut cmd = root;
    for word in path.split_whitespace() {
        cmd = cmd.find_subcommand(word)?;
    }
    Some(cmd)
}

fn has_flag(cmd: &clap::Command, long: &str, short: Option<char>) -> bool {
    cmd.get_arguments().any(|a| {
        let long_ok =
            a.get_long() == Some(long) || a.get_all_aliases().is_some_and(|al| al.contains(&long));
        long_ok && short.is_none_or(|s| a.get_short() == Some(s))
    })
}

#[test]
fn commands_and_flags_match_the_list() {
    let list = list();
    let mut root = Cli::command();
    root.build();
    let mut wrong = Vec::new();
    for e in &list.command {
        let present = find(&root, &e.path).is_some();
        if present != (e.status == Status::Have) {
            wrong.push(format!(
                "command `{}` is {:?} but present={present}",
                e.path, e.status
            ));
        }
    }
    for e in &list.flag {
        let present = find(&root, &e.command).is_some_and(|c| has_flag(c, &e.long, e.short));
        if present != (e.status == Status::Have) {
            wrong.push(format!(
                "flag `{} --{}`{} is {:?} but present={present}",
                e.command,
                e.long,
                e.short.map(|s| format!(" (-{s})")).unwrap_or_default(),
                e.status
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "docs/compat/upstream-cli.toml:\n{}",
        wrong.join("\n")
    );
}

/// The values at `path` in `doc` (`[]` steps into every element).
fn lookup<'a>(doc: &'a Value, path: &str) -> Vec<&'a Value> {
    let mut at = vec![doc];
    for part in path.split('.') {
        let (key, each) = match part.strip_suffix("[]") {
            Some(key) => (key, true),
            None => (part, false),
        };
        at = at
            .into_iter()
            .filter_map(|v| if key.is_empty() { Some(v) } else { v.get(key) })
            .collect();
        if each {
            at = at
                .into_iter()
                .filter_map(Value::as_array)
                .flatten()
                .collect();
        }
    }
    at
}

/// What a NIC looks like in our VM JSON (the lab's VMs have no NIC).
fn nic_sample() -> Value {
    let nic = cocoon_engine::model::NetworkConfig {
        tap: "tap0".into(),
        mac: "02:00:00:00:00:01".into(),
        num_queues: 1,
        queue_size: 256,
        backend: cocoon_engine::model::NetBackend::Cni,
        slot: None,
        bridge_dev: String::new(),
        netns_path: String::new(),
        network: Some(cocoon_engine::model::IpConfig {
            ip: "10.0.0.2".into(),
            gateway: "10.0.0.1".into(),
            prefix: 24,
        }),
    };
    serde_json::json!({ "network_configs": [nic] })
}

struct Lab {
    env: CocoonEnv,
    vmms: Vec<cocoon_engine::model::VmmProcess>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in &self.vmms {
            cocoon_testkit::kill_if_running(p);
        }
    }
}

impl Lab {
    fn json(&self, args: &[&str]) -> Value {
        let out = cocoon_testkit::run_ok(self.env.fake_vmm_cmd(FAKE), args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("cocoon {args:?}: {e}: {out}"))
    }

    /// The first line `vm status --event -o json` prints.
    fn first_event(&self) -> Value {
        let mut child = self
            .env
            .fake_vmm_cmd(FAKE)
            .args(["vm", "status", "--event", "--format", "json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30));
        let _ = child.kill();
        let _ = child.wait();
        serde_json::from_str(&line.expect("an event within 30 s")).unwrap()
    }
}

#[test]
fn json_fields_match_the_list() {
    let list = list();
    let env = CocoonEnv::new(cocoon_testkit::cocoon_bin());
    let layer = cocoon_testkit::guest::boot_layer("6.1", b"initrd").build();
    std::fs::write(env.path().join("layer.tar"), layer).unwrap();
    let mut lab = Lab { env, vmms: vec![] };
    let tar = lab.env.path().join("layer.tar");
    lab.json(&["image", "ls", "-o", "json"]);
    cocoon_testkit::run_ok(
        lab.env.fake_vmm_cmd(FAKE),
        &["image", "import", "test/guest:1", tar.to_str().unwrap()],
    );
    let created = lab.json(&[
        "vm",
        "run",
        "--output",
        "json",
        "--nics",
        "0",
        "--name",
        "c",
        "test/guest:1",
    ]);
    lab.vmms = cocoon_testkit::processes_of(&created);
    lab.json(&["snapshot", "save", "--name", "s", "-o", "json", "c"]);
    let started = Instant::now();
    let outputs: Vec<(&str, Value)> = vec![
        (
            "vm inspect",
            lab.json(&["vm", "inspect", "-o", "json", "c"]),
        ),
        ("vm ls", lab.json(&["vm", "ls", "-o", "json"])),
        ("vm status --event", lab.first_event()),
        (
            "snapshot inspect",
            lab.json(&["snapshot", "inspect", "-o", "json", "s"]),
        ),
        (
            "snapshot ls",
            lab.json(&["snapshot", "ls", "--format", "json"]),
        ),
        (
            "image inspect",
            lab.json(&["image", "inspect", "--output", "json", "test/guest:1"]),
        ),
        ("image ls", lab.json(&["image", "ls", "-o", "json"])),
    ];
    assert!(started.elapsed() < Duration::from_secs(120));
    let nics = nic_sample();
    let mut wrong = Vec::new();
    for e in &list.json {
        let (_, doc) = outputs
            .iter()
            .find(|(name, _)| *name == e.output)
            .unwrap_or_else(|| panic!("{e:?}: no such output"));
        let mut present = !lookup(doc, &e.field).is_empty();
        if !present && e.field.starts_with("network_configs[]") {
            present =
                !lookup(doc, "network_configs").is_empty() && !lookup(&nics, &e.field).is_empty();
        }
        if present != (e.status == Status::Have) {
            wrong.push(format!(
                "`{}` field `{}` is {:?} but present={present}",
                e.output, e.field, e.status
            ));
        }
    }
    let snapshot_id = outputs[3].1["id"].as_str().unwrap().to_lowercase();
    for e in &list.error {
        assert_eq!(e.status, Status::Have, "{e:?}");
        let source = e.source.split_whitespace().next().unwrap();
        assert!(list.sources.contains_key(source), "{e:?}");
        let out = lab.env.fake_vmm_cmd(FAKE).args(&e.args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
        let phrase = e.phrase.replace("{s}", &snapshot_id);
        if out.status.success() || !stderr.contains(&phrase) {
            wrong.push(format!(
                "cocoon {:?} says {stderr:?}, not {phrase:?}",
                e.args
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "docs/compat/upstream-cli.toml:\n{}",
        wrong.join("\n")
    );
}
