//! Upstream CLI details vk-cocoon relies on, through the real binary on
//! seeded state: `vm reconcile-stale-create` outcomes and `vm status`
//! printing once by default.

use std::time::Duration;

use cocoon_engine::model::*;
use cocoon_engine::store::Store;
use cocoon_testkit::CocoonEnv;
use serde_json::Value;

const CREATING: &str = "AACREATINGAAAAAAAAAAAAAAA2";
const CREATED: &str = "AACREATEDAAAAAAAAAAAAAAAA3";

fn seeded() -> CocoonEnv {
    let env = CocoonEnv::new(env!("CARGO_BIN_EXE_cocoon"));
    env.cmd().args(["vm", "ls"]).assert().success();
    let mut store = Store::open(&env.db_path()).unwrap();
    for (id, name, state) in [
        (CREATING, "half", VmState::Creating),
        (CREATED, "made", VmState::Created),
    ] {
        let config = VmConfig::new(name.parse().unwrap(), "test/guest:1", ImageType::Oci);
        let mut vm = Vm::new(
            id,
            Hypervisor::CloudHypervisor,
            config,
            env.path().join("run").join(id),
            env.path().join("log").join(id),
        );
        vm.state = state;
        store.insert_vm(&vm).unwrap();
    }
    env
}

fn reconcile(env: &CocoonEnv, vm: &str) -> Value {
    let out = env
        .cmd()
        .args(["vm", "reconcile-stale-create", vm, "-o", "json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn reconcile_stale_create_answers_each_outcome_and_exits_0() {
    let env = seeded();
    assert_eq!(
        reconcile(&env, "made"),
        serde_json::json!({"id": CREATED, "outcome": "not-creating"})
    );
    assert_eq!(
        reconcile(&env, "nosuch"),
        serde_json::json!({"id": "nosuch", "outcome": "not-found"})
    );
    assert_eq!(
        reconcile(&env, "half"),
        serde_json::json!({"id": CREATING, "outcome": "collected"})
    );
    // The name is free again; the other VM is untouched.
    let out = env.cmd().args(["vm", "ls", "-o", "json"]).output().unwrap();
    let vms: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = vms
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["config"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["made"]);
    assert_eq!(
        reconcile(&env, CREATING),
        serde_json::json!({"id": CREATING, "outcome": "not-found"})
    );
    let text = env
        .cmd()
        .args(["vm", "reconcile-stale-create", "nosuch"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&text.stdout), "nosuch: not-found\n");
}

#[test]
fn status_prints_once_and_exits_by_default() {
    let env = seeded();
    let out = env
        .cmd()
        .args(["vm", "status", "--format", "json", "made"])
        .timeout(Duration::from_secs(30))
        .output()
        .unwrap();
    assert!(out.status.success());
    let vms: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(vms.as_array().unwrap().len(), 1);
    assert_eq!(vms[0]["id"], CREATED);
    assert_eq!(vms[0]["state"], "created");
    // A VM that does not run advertises no runtime sockets.
    assert!(vms[0].get("console_path").is_none());
    assert!(vms[0].get("vsock_socket").is_none());
    let table = env
        .cmd()
        .args(["vm", "status", "made"])
        .timeout(Duration::from_secs(30))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("ID "), "{text}");
    assert!(text.contains("made"), "{text}");
    let both = env
        .cmd()
        .args(["vm", "status", "--watch", "--event"])
        .output()
        .unwrap();
    assert_eq!(both.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&both.stderr)
            .contains("the argument '--watch' cannot be used with '--event'")
    );
}

#[test]
fn logs_tail_prints_the_last_lines() {
    let env = seeded();
    let log = env.path().join("log").join(CREATED);
    std::fs::create_dir_all(&log).unwrap();
    std::fs::write(log.join("vmm.log"), "one\ntwo\nthree\n").unwrap();
    let out = env
        .cmd()
        .args(["vm", "logs", "--vmm", "--tail", "2", "made"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "two\nthree\n");
    let all = env
        .cmd()
        .args(["vm", "logs", "--vmm", "--tail", "0", "made"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&all.stdout), "one\ntwo\nthree\n");
}
