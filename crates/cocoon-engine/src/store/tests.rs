use std::path::PathBuf;

use super::*;
use crate::id::generate_id;
use crate::model::*;

pub(crate) fn vm_fixture(id: &str, name: &str) -> Vm {
    let config = VmConfig::new(
        name.parse().unwrap(),
        "ghcr.io/cocoonstack/cocoon/ubuntu:24.04",
        ImageType::Oci,
    );
    let mut vm = Vm::new(
        id,
        Hypervisor::CloudHypervisor,
        config,
        PathBuf::from("/run/x"),
        PathBuf::from("/log/x"),
    );
    vm.state = VmState::Created;
    vm
}

pub(crate) fn snapshot_fixture(id: &str, name: &str, vm_id: Option<&str>) -> Snapshot {
    let vm = vm_fixture(vm_id.unwrap_or("NOVM"), "source");
    let name = crate::name::optional(name.to_string()).unwrap();
    let mut snapshot = Snapshot::of_vm(id, name, &vm, PathBuf::from("/nonexistent"));
    snapshot.vm_id = vm_id.map(str::to_string);
    snapshot.pending = false;
    snapshot
}

fn image_fixture(name: &str, digest: &str) -> Image {
    Image {
        id: crate::digest::Digest::parse(digest).unwrap(),
        name: name.to_string(),
        kind: ImageType::Oci,
        size: 1234,
        created_at: jiff::Timestamp::now(),
        layers: vec![crate::digest::Digest::from_hex(&"1".repeat(64)).unwrap()],
        kernel_layer: None,
        initrd_layer: None,
        own_kernel: true,
        config: None,
    }
}

pub(crate) fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state").join("cocoon.db")).unwrap();
    (dir, store)
}

#[test]
fn opens_in_wal_mode_at_latest_version() {
    let (dir, mut store) = temp_store();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    let mode: String = store
        .read(|tx| Ok(tx.query_row("PRAGMA journal_mode", [], |r| r.get(0))?))
        .unwrap();
    assert_eq!(mode, "wal");
    drop(store);
    // Reopening an up-to-date database changes nothing.
    let store = Store::open(&dir.path().join("state").join("cocoon.db")).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
}

#[test]
fn migrates_from_every_earlier_version() {
    for start in 0..SCHEMA_VERSION {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cocoon.db");
        let old = Store::open_at_version(&path, start).unwrap();
        assert_eq!(old.schema_version().unwrap(), start);
        drop(old);
        let mut store = Store::open(&path).unwrap();
        assert_eq!(
            store.schema_version().unwrap(),
            SCHEMA_VERSION,
            "from v{start}"
        );
        // The migrated schema is fully usable.
        store
            .insert_vm(&vm_fixture(&generate_id(), "after-migration"))
            .unwrap();
        assert_eq!(store.list_vms().unwrap().len(), 1);
    }
}

#[test]
fn migration_keeps_existing_rows() {
    // Rows written at every version survive the later migrations.
    for start in 1..=SCHEMA_VERSION {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cocoon.db");
        let mut old = Store::open_at_version(&path, start).unwrap();
        let vm = vm_fixture("AAAAAAAAAAAAAAAAAAAAAAAAAA", "kept");
        old.insert_vm(&vm).unwrap();
        drop(old);
        let mut store = Store::open(&path).unwrap();
        assert_eq!(store.get_vm(&vm.id).unwrap().unwrap().config.name, "kept");
    }
}

#[test]
fn vms_from_before_vsock_are_recorded_without_an_agent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cocoon.db");
    let mut old = Store::open_at_version(&path, 1).unwrap();
    let before = vm_fixture("AAAAAAAAAAAAAAAAAAAAAAAAAA", "before");
    old.insert_vm(&before).unwrap();
    drop(old);
    // A v1 document has no such field at all.
    Connection::open(&path)
        .unwrap()
        .execute(
            "UPDATE vms SET doc = json_remove(doc, '$.config.no_agent')",
            [],
        )
        .unwrap();
    let mut store = Store::open(&path).unwrap();
    assert!(store.get_vm(&before.id).unwrap().unwrap().config.no_agent);
    let after = vm_fixture("BBBBBBBBBBBBBBBBBBBBBBBBBB", "after");
    assert!(!after.config.no_agent);
    store.insert_vm(&after).unwrap();
    assert!(!store.get_vm(&after.id).unwrap().unwrap().config.no_agent);
}

#[test]
fn refuses_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cocoon.db");
    let store = Store::open(&path).unwrap();
    store
        .conn
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    drop(store);
    let err = Store::open(&path).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "state database {} has schema version {}, newer than this cocoon supports ({}); upgrade cocoon",
            path.display(),
            SCHEMA_VERSION + 1,
            SCHEMA_VERSION
        )
    );
}

#[test]
fn vm_names_are_unique() {
    let (_dir, mut store) = temp_store();
    let first = vm_fixture(&generate_id(), "web");
    store.insert_vm(&first).unwrap();
    let err = store
        .insert_vm(&vm_fixture(&generate_id(), "web"))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "VM name \"web\" already exists: it is already in use by {} (pick another name or remove it first)",
            first.id
        )
    );
    let err = store
        .insert_vm(&vm_fixture(&first.id, "other"))
        .unwrap_err();
    assert!(matches!(err, StoreError::IdTaken { .. }), "{err}");
    // Renaming onto a taken name fails too, and leaves the record unchanged.
    let second = vm_fixture(&generate_id(), "db");
    store.insert_vm(&second).unwrap();
    let err = store
        .update_vm(&second.id, "renamed", |vm| {
            vm.config.name = "web".parse().unwrap()
        })
        .unwrap_err();
    assert!(matches!(err, StoreError::NameTaken { .. }), "{err}");
    assert_eq!(store.get_vm(&second.id).unwrap().unwrap().config.name, "db");
    // A deleted VM frees its name.
    store.delete_vm(&first.id).unwrap();
    store.insert_vm(&vm_fixture(&generate_id(), "web")).unwrap();
}

#[test]
fn every_change_appends_one_event_in_order() {
    let (_dir, mut store) = temp_store();
    assert_eq!(store.last_event_seq().unwrap(), 0);
    let vm = vm_fixture(&generate_id(), "ev");
    store.insert_vm(&vm).unwrap();
    store
        .update_vm(&vm.id, "running", |v| v.state = VmState::Running)
        .unwrap();
    // A failed change leaves no event behind.
    let _ = store
        .insert_vm(&vm_fixture(&generate_id(), "ev"))
        .unwrap_err();
    store.delete_vm(&vm.id).unwrap();
    let events = store.events_since(0, 100).unwrap();
    let actions: Vec<(i64, &str)> = events.iter().map(|e| (e.seq, e.action.as_str())).collect();
    assert_eq!(
        actions,
        vec![(1, "created"), (2, "running"), (3, "deleted")]
    );
    assert!(
        events
            .iter()
            .all(|e| e.object_id == vm.id && e.object_kind == ObjectKind::Vm)
    );
    assert_eq!(events[1].doc.as_ref().unwrap()["state"], "running");
    assert_eq!(store.events_since(2, 100).unwrap().len(), 1);
    assert_eq!(store.last_event_seq().unwrap(), 3);
}

#[test]
fn resolves_vms_by_id_name_and_prefix() {
    let (_dir, mut store) = temp_store();
    let a = vm_fixture("ABCDEFGHIJKLMNOPQRSTUVWXY2", "alpha");
    let b = vm_fixture("ABCZZZZZZZZZZZZZZZZZZZZZZ3", "beta");
    // A VM whose *name* looks like another VM's ID prefix: exact name wins.
    let c = vm_fixture("QQQQQQQQQQQQQQQQQQQQQQQQQ4", "ABCD");
    for vm in [&a, &b, &c] {
        store.insert_vm(vm).unwrap();
    }
    assert_eq!(store.resolve_vm(&a.id).unwrap().id, a.id);
    assert_eq!(store.resolve_vm("beta").unwrap().id, b.id);
    assert_eq!(store.resolve_vm("ABCD").unwrap().id, c.id);
    assert_eq!(store.resolve_vm("ABCDE").unwrap().id, a.id);
    assert_eq!(
        store.resolve_vm("abcz").unwrap().id,
        b.id,
        "prefixes ignore case"
    );
    let err = store.resolve_vm("ABC").unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "VM reference \"ABC\" is ambiguous; it matches: {} (alpha), {} (beta)",
            a.id, b.id
        )
    );
    match err {
        StoreError::Ambiguous { candidates, .. } => assert_eq!(candidates.len(), 2),
        other => panic!("{other}"),
    }
    for missing in ["AB", "zzz", "", "gamma", "ABC%"] {
        let err = store.resolve_vm(missing).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("no such VM {missing:?}: vm not found by ID, name or ID prefix")
        );
    }
    let many = store
        .resolve_vms(&["alpha".into(), a.id.clone(), "beta".into()])
        .unwrap();
    assert_eq!(
        many.iter().map(|v| v.id.as_str()).collect::<Vec<_>>(),
        vec![a.id.as_str(), b.id.as_str()]
    );
    assert!(store.resolve_vms(&["alpha".into(), "nope".into()]).is_err());
}

#[test]
fn snapshot_ids_follow_the_snapshot_table() {
    let (_dir, mut store) = temp_store();
    let vm = vm_fixture(&generate_id(), "src");
    store.insert_vm(&vm).unwrap();
    let ready = snapshot_fixture(&generate_id(), "s1", Some(&vm.id));
    let mut pending = snapshot_fixture(&generate_id(), "s2", Some(&vm.id));
    pending.pending = true;
    store.insert_snapshot(&ready).unwrap();
    store.insert_snapshot(&pending).unwrap();
    let ids = store.get_vm(&vm.id).unwrap().unwrap().snapshot_ids;
    assert_eq!(ids.keys().collect::<Vec<_>>(), vec![&ready.id]);
    assert_eq!(
        store.list_snapshots(None).unwrap().len(),
        1,
        "pending snapshots are hidden"
    );
    assert_eq!(store.pending_snapshots().unwrap().len(), 1);
    store
        .update_snapshot(&pending.id, "ready", |s| s.pending = false)
        .unwrap();
    assert_eq!(store.list_snapshots(Some(&vm.id)).unwrap().len(), 2);
    store.delete_snapshot(&ready.id).unwrap();
    let ids = store.get_vm(&vm.id).unwrap().unwrap().snapshot_ids;
    assert_eq!(ids.keys().collect::<Vec<_>>(), vec![&pending.id]);
    // Snapshots outlive their VM.
    store.delete_vm(&vm.id).unwrap();
    assert_eq!(
        store.get_snapshot(&pending.id).unwrap().unwrap().vm_id,
        None
    );
    // Names are unique, but many snapshots may have none.
    let err = store
        .insert_snapshot(&snapshot_fixture(&generate_id(), "s2", None))
        .unwrap_err();
    assert!(matches!(err, StoreError::NameTaken { .. }), "{err}");
    store
        .insert_snapshot(&snapshot_fixture(&generate_id(), "", None))
        .unwrap();
    store
        .insert_snapshot(&snapshot_fixture(&generate_id(), "", None))
        .unwrap();
}

#[test]
fn images_resolve_by_name_digest_and_prefix() {
    let (_dir, mut store) = temp_store();
    let digest = format!("sha256:{}", "ab12".repeat(16));
    let other = format!("sha256:{}", "cd34".repeat(16));
    store
        .put_image(
            &image_fixture("ubuntu:24.04", &digest),
            &[("sha256:l1".into(), "erofs".into(), 10)],
        )
        .unwrap();
    store
        .put_image(
            &image_fixture("ubuntu:latest", &digest),
            &[("sha256:l1".into(), "erofs".into(), 10)],
        )
        .unwrap();
    store
        .put_image(
            &image_fixture("alpine", &other),
            &[("sha256:l2".into(), "erofs".into(), 10)],
        )
        .unwrap();
    assert_eq!(store.resolve_images("alpine", &[]).unwrap()[0].id, other);
    assert_eq!(
        store
            .resolve_images("docker.io/library/alpine:latest", &["alpine".into()])
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.resolve_images(&digest, &[]).unwrap().len(), 2);
    assert_eq!(
        store.resolve_images(&"ab12".repeat(3), &[]).unwrap().len(),
        2
    );
    assert_eq!(
        store
            .resolve_images(&format!("sha256:{}", "CD34".repeat(3)), &[])
            .unwrap()[0]
            .name,
        "alpine"
    );
    let err = store.resolve_images("ab12ab12ab1", &[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no such image \"ab12ab12ab1\": not found in any backend (OCI or cloud images); pull or import it",
        "11 hex chars is too short"
    );
    // Replacing an entry keeps one row and moves its pins.
    store
        .put_image(
            &image_fixture("alpine", &digest),
            &[("sha256:l1".into(), "erofs".into(), 10)],
        )
        .unwrap();
    assert_eq!(store.list_images().unwrap().len(), 3);
    assert_eq!(
        store.unpinned_blobs().unwrap(),
        vec!["sha256:l2".to_string()]
    );
    let removed = store.remove_images(&["ubuntu:24.04".into()]).unwrap();
    assert_eq!(removed[0].name, "ubuntu:24.04");
    assert!(store.remove_images(&["ubuntu:24.04".into()]).is_err());
    assert_eq!(store.list_images().unwrap().len(), 2);
}

#[test]
fn vm_pins_keep_blobs_alive() {
    let (_dir, mut store) = temp_store();
    store
        .put_image(
            &image_fixture("a", &format!("sha256:{}", "00".repeat(32))),
            &[("sha256:l1".into(), "erofs".into(), 1)],
        )
        .unwrap();
    let mut vm = vm_fixture(&generate_id(), "pinner");
    vm.image_blob_ids.insert("sha256:l1".into(), Empty {});
    store.insert_vm(&vm).unwrap();
    store.remove_images(&["a".into()]).unwrap();
    assert!(
        store.unpinned_blobs().unwrap().is_empty(),
        "the VM still pins the layer"
    );
    store.delete_vm(&vm.id).unwrap();
    assert_eq!(
        store.unpinned_blobs().unwrap(),
        vec!["sha256:l1".to_string()]
    );
}

#[test]
fn network_leases_per_interface() {
    let (_dir, mut store) = temp_store();
    let lease = |if_name: &str, ip: &str| NetworkLease {
        id: generate_id(),
        vm_id: "VM1".into(),
        if_name: if_name.into(),
        network_name: "cocoon".into(),
        network: IpConfig {
            ip: ip.into(),
            gateway: "10.88.0.1".into(),
            prefix: 16,
        },
        cni_result: None,
    };
    store.put_lease(&lease("eth1", "10.88.0.6")).unwrap();
    store.put_lease(&lease("eth0", "10.88.0.5")).unwrap();
    store.put_lease(&lease("eth0", "10.88.0.7")).unwrap();
    let leases = store.leases("VM1").unwrap();
    assert_eq!(
        leases
            .iter()
            .map(|l| (l.if_name.as_str(), l.network.ip.as_str()))
            .collect::<Vec<_>>(),
        vec![("eth0", "10.88.0.7"), ("eth1", "10.88.0.6")]
    );
    assert_eq!(store.delete_leases("VM1").unwrap(), 2);
    assert!(store.leases("VM1").unwrap().is_empty());
}

#[test]
fn intents_record_progress_and_orphans() {
    let (_dir, mut store) = temp_store();
    let guard = store
        .begin_intent(
            "vm.create",
            ObjectKind::Vm,
            "VM1",
            &serde_json::json!({"run_dir": "/run/x"}),
        )
        .unwrap();
    guard.step(&mut store, "disks", None).unwrap();
    let intents = store.intents().unwrap();
    assert_eq!(intents.len(), 1);
    assert_eq!(intents[0].op, "vm.create");
    assert_eq!(intents[0].step, "disks");
    assert_eq!(intents[0].data["run_dir"], "/run/x");
    assert!(intents[0].owner_alive());
    assert!(
        store.orphaned_intents().unwrap().is_empty(),
        "our own intent is not orphaned"
    );

    // An intent whose owner exited is orphaned, even if its pid is reused later.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = crate::process::ProcessIdentity::of(child.id()).unwrap();
    child.wait().unwrap();
    let stale = store
        .begin_intent(
            "snapshot.save",
            ObjectKind::Vm,
            "VM2",
            &serde_json::json!({}),
        )
        .unwrap();
    store
        .write(|tx| {
            tx.execute(
                "UPDATE intents SET owner_pid = ?2, owner_start_time = ?3 WHERE id = ?1",
                rusqlite::params![stale.id(), dead.pid, dead.start_time as i64],
            )?;
            Ok(())
        })
        .unwrap();
    let orphans = store.orphaned_intents().unwrap();
    assert_eq!(
        orphans
            .iter()
            .map(|i| i.object_id.as_str())
            .collect::<Vec<_>>(),
        vec!["VM2"]
    );
    guard.finish(&mut store).unwrap();
    store.clear_intent(orphans[0].id).unwrap();
    assert!(store.intents().unwrap().is_empty());
}

#[test]
fn corrupt_documents_are_reported_not_panicked() {
    let (_dir, mut store) = temp_store();
    let vm = vm_fixture("CCCCCCCCCCCCCCCCCCCCCCCCCC", "c");
    store.insert_vm(&vm).unwrap();
    store
        .write(|tx| {
            tx.execute("UPDATE vms SET doc = '{not json' WHERE id = ?1", [&vm.id])?;
            Ok(())
        })
        .unwrap();
    let err = store.list_vms().unwrap_err();
    assert!(
        err.to_string()
            .starts_with("corrupt VM record CCCCCCCCCCCCCCCCCCCCCCCCCC in the state database:"),
        "{err}"
    );
}

/// A record whose name was rewritten behind the engine's back (name column
/// and document) is refused on every read path, with the name rule.
#[test]
fn records_with_bad_names_are_refused_when_read() {
    let (_dir, mut store) = temp_store();
    let vm = vm_fixture("DDDDDDDDDDDDDDDDDDDDDDDDDD", "v");
    let snapshot = snapshot_fixture("EEEEEEEEEEEEEEEEEEEEEEEEEE", "s", None);
    store.insert_vm(&vm).unwrap();
    store.insert_snapshot(&snapshot).unwrap();
    let bad = "../../etc/cron.d/x";
    store
        .write(|tx| {
            tx.execute(
                "UPDATE vms SET name = ?2, doc = json_set(doc, '$.config.name', ?2) WHERE id = ?1",
                [vm.id.as_str(), bad],
            )?;
            tx.execute(
                "UPDATE snapshots SET name = ?2, doc = json_set(doc, '$.name', ?2) WHERE id = ?1",
                [snapshot.id.as_str(), bad],
            )?;
            Ok(())
        })
        .unwrap();
    let rule = "must start with a letter or digit and contain only letters, digits, '.', '_' or '-' (at most 63 characters)";
    let vm_refusal = format!(
        "corrupt VM record {} in the state database: invalid VM name {bad:?}: {rule}",
        vm.id
    );
    let errors = [
        store.get_vm(&vm.id).unwrap_err(),
        store.list_vms().unwrap_err(),
        store.resolve_vm(&vm.id).unwrap_err(),
        store.resolve_vm(bad).unwrap_err(),
        store.update_vm(&vm.id, "x", |_| ()).unwrap_err(),
    ];
    for err in errors {
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().starts_with(&vm_refusal), "{err}");
    }
    let snapshot_refusal = format!(
        "corrupt snapshot record {} in the state database: invalid snapshot name {bad:?}: {rule}",
        snapshot.id
    );
    let errors = [
        store.get_snapshot(&snapshot.id).unwrap_err(),
        store.list_snapshots(None).unwrap_err(),
        store.resolve_snapshot(&snapshot.id).unwrap_err(),
        store.delete_snapshot(&snapshot.id).unwrap_err(),
    ];
    for err in errors {
        assert!(err.to_string().starts_with(&snapshot_refusal), "{err}");
    }
    // Refused deletes (and the update above) changed nothing.
    assert!(store.delete_vm(&vm.id).is_err());
    for table in ["vms", "snapshots"] {
        let sql = format!("SELECT COUNT(*) FROM {table} WHERE name = ?1");
        let n: u32 = store
            .read(|tx| Ok(tx.query_row(&sql, [bad], |r| r.get(0))?))
            .unwrap();
        assert_eq!(n, 1, "{table}");
    }
}

/// Many connections opening a database file none of them has seen before,
/// all at once: each must come up (WAL, schema) without "database is
/// locked", which SQLite answers at once to a lock upgrade that could
/// deadlock while the new file is still in rollback mode.
#[test]
fn racing_first_opens_of_a_new_database_all_succeed() {
    for round in 0..30 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cocoon.db");
        let barrier = std::sync::Barrier::new(12);
        std::thread::scope(|s| {
            for _ in 0..12 {
                s.spawn(|| {
                    barrier.wait();
                    let mut store =
                        Store::open(&path).unwrap_or_else(|e| panic!("round {round}: {e}"));
                    store.list_vms().unwrap();
                });
            }
        });
    }
}
