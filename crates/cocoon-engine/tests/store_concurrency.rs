//! Eight processes write the same database at once: no update may be lost and
//! none may fail with "database is locked".
//!
//! The workers are this test binary re-executed with `COCOON_HAMMER_DB` set, so
//! each is a real separate process with its own SQLite connection.

use std::path::PathBuf;
use std::process::Command;

use cocoon_engine::id::generate_id;
use cocoon_engine::model::*;
use cocoon_engine::store::Store;

const WORKERS: usize = 8;
const ROUNDS: usize = 40;
const SHARED: &str = "SHAREDSHAREDSHAREDSHAREDSH";

fn vm(id: &str, name: &str) -> Vm {
    let config = VmConfig::new(name.parse().unwrap(), "img", ImageType::Oci);
    Vm::new(
        id,
        Hypervisor::Firecracker,
        config,
        PathBuf::from("/run"),
        PathBuf::from("/log"),
    )
}

/// The worker body; a no-op unless launched by `eight_processes_write_concurrently`.
#[test]
fn hammer_worker() {
    let Ok(db) = std::env::var("COCOON_HAMMER_DB") else {
        return;
    };
    let worker: usize = std::env::var("COCOON_HAMMER_WORKER")
        .unwrap()
        .parse()
        .unwrap();
    for round in 0..ROUNDS {
        // Each open is what a short-lived CLI process does.
        let mut store = Store::open(&PathBuf::from(&db)).expect("open");
        store
            .insert_vm(&vm(&generate_id(), &format!("w{worker}-r{round}")))
            .expect("insert");
        // Read-modify-write of one shared record: a lost update drops a key.
        store
            .update_vm(SHARED, "updated", |v| {
                v.image_blob_ids
                    .insert(format!("w{worker}-r{round}"), Empty {});
            })
            .expect("update");
        // A name every worker races for: exactly one may win each round.
        let _ = store.insert_vm(&vm(&generate_id(), &format!("contended-{round}")));
    }
}

#[test]
fn eight_processes_write_concurrently() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cocoon.db");
    Store::open(&db)
        .unwrap()
        .insert_vm(&vm(SHARED, "shared"))
        .unwrap();

    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..WORKERS)
        .map(|worker| {
            Command::new(&exe)
                .args([
                    "hammer_worker",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("COCOON_HAMMER_DB", &db)
                .env("COCOON_HAMMER_WORKER", worker.to_string())
                .output_spawn()
        })
        .collect();
    for (worker, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "worker {worker} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let mut store = Store::open(&db).unwrap();
    let vms = store.list_vms().unwrap();
    let shared = vms.iter().find(|v| v.id == SHARED).unwrap();
    assert_eq!(
        shared.image_blob_ids.len(),
        WORKERS * ROUNDS,
        "an update was lost"
    );
    for worker in 0..WORKERS {
        for round in 0..ROUNDS {
            let name = format!("w{worker}-r{round}");
            assert!(vms.iter().any(|v| v.config.name == name), "{name} missing");
            assert!(shared.image_blob_ids.contains_key(&name));
        }
    }
    for round in 0..ROUNDS {
        let winners = vms
            .iter()
            .filter(|v| v.config.name == format!("contended-{round}"))
            .count();
        assert_eq!(
            winners, 1,
            "round {round}: name uniqueness under contention"
        );
    }
    assert_eq!(vms.len(), 1 + WORKERS * ROUNDS + ROUNDS);
    // The event log has one entry per successful change, numbered without gaps.
    let events = store.events_since(0, 100_000).unwrap();
    assert_eq!(events.len(), 1 + WORKERS * ROUNDS * 2 + ROUNDS);
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event.seq, i as i64 + 1);
    }
}

trait SpawnPiped {
    fn output_spawn(&mut self) -> std::process::Child;
}

impl SpawnPiped for Command {
    fn output_spawn(&mut self) -> std::process::Child {
        self.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }
}
