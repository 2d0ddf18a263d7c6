//! `vm ls`'s partial read of VM records against the full one.

use super::tests::vm_fixture;
use super::*;
use crate::model::*;
use crate::process::ProcessIdentity;

fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("cocoon.db")).unwrap();
    (dir, store)
}

fn expected(vm: &Vm) -> VmListing {
    VmListing {
        id: vm.id.clone(),
        name: vm.config.name.clone(),
        state: vm.state,
        stale: false,
        cpu: vm.config.cpu,
        memory: vm.config.memory,
        storage: vm.config.storage,
        ips: vm.ips(),
        image: vm.config.image.clone(),
        created_at: vm.created_at,
        vmm: vm.vmm.clone(),
        cpu_stat: None,
    }
}

/// Same VMs, same order (created_at, then ID, as the full list), the
/// fields the table shows as the full records have them.
#[test]
fn listings_are_the_full_records_fields_in_the_same_order() {
    let (_dir, mut store) = temp_store();
    let t0: jiff::Timestamp = "2026-01-02T03:04:05.5Z".parse().unwrap();
    // Inserted out of order; two share a creation time (ID breaks the
    // tie); one's time has more fraction digits: the order is the stored
    // text's (`05.500001Z` before `05.5Z`), as `ORDER BY created_at, id`
    // gave before the sort moved out of SQLite.
    let mut vms = vec![
        vm_fixture("BBBBBBBBBBBBBBBBBBBBBBBBBB", "second"),
        vm_fixture("AAAAAAAAAAAAAAAAAAAAAAAAAA", "first"),
        vm_fixture("CCCCCCCCCCCCCCCCCCCCCCCCCC", "third"),
        vm_fixture("DDDDDDDDDDDDDDDDDDDDDDDDDD", "fourth"),
    ];
    vms[0].created_at = t0;
    vms[1].created_at = t0;
    vms[2].created_at = "2026-01-02T03:04:05.500001Z".parse().unwrap();
    vms[3].created_at = "2026-01-02T03:04:06Z".parse().unwrap();
    vms[2].state = VmState::Running;
    vms[2].config.cpu = 3;
    vms[2].config.memory = 3 << 29;
    vms[2].vmm = Some(VmmProcess {
        identity: ProcessIdentity {
            pid: 4242,
            start_time: 7,
        },
        api_socket: "/run/x/api.sock".into(),
    });
    vms[3].network_configs = serde_json::from_str(
        r#"[{"tap":"t0","mac":"02:00:00:00:00:01","num_queues":1,"queue_size":256,
             "backend":"cni","bridge_dev":"","netns_path":"/var/run/netns/x",
             "network":{"ip":"10.0.0.2","gateway":"10.0.0.1","prefix":24}},
            {"tap":"t1","mac":"02:00:00:00:00:02","num_queues":1,"queue_size":256,
             "backend":"cni","bridge_dev":"","netns_path":"/var/run/netns/x"}]"#,
    )
    .unwrap();
    for vm in &vms {
        store.insert_vm(vm).unwrap();
    }
    let full = store.list_vms().unwrap();
    let names: Vec<&str> = full.iter().map(|v| v.config.name.as_str()).collect();
    assert_eq!(names, ["third", "first", "second", "fourth"]);
    let listings = store.list_vm_listings().unwrap();
    assert_eq!(listings, full.iter().map(expected).collect::<Vec<_>>());
    assert_eq!(listings[3].ips, ["10.0.0.2"]);
    assert_eq!(
        store.get_vm_listing(&vms[2].id).unwrap(),
        Some(expected(&vms[2]))
    );
    assert_eq!(store.get_vm_listing("NOSUCHVM").unwrap(), None);
}

/// A record the full read refuses (not JSON, a bad name) is refused by the
/// partial one too, with the same error.
#[test]
fn listings_refuse_what_the_full_read_refuses() {
    for corruption in [
        "'{not json'",
        "json_set(doc, '$.config.name', '../../etc/cron.d/x')",
    ] {
        let (_dir, mut store) = temp_store();
        let vm = vm_fixture("EEEEEEEEEEEEEEEEEEEEEEEEEE", "e");
        store.insert_vm(&vm).unwrap();
        store
            .write(|tx| {
                tx.execute(&format!("UPDATE vms SET doc = {corruption}"), [])?;
                Ok(())
            })
            .unwrap();
        let full = store.list_vms().unwrap_err();
        let errors = [
            store.list_vm_listings().unwrap_err(),
            store.get_vm_listing(&vm.id).unwrap_err(),
        ];
        for err in errors {
            assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
            assert!(
                err.to_string()
                    .starts_with("corrupt VM record EEEEEEEEEEEEEEEEEEEEEEEEEE"),
                "{err}"
            );
        }
        if corruption.contains("name") {
            assert_eq!(
                store.list_vm_listings().unwrap_err().to_string(),
                full.to_string()
            );
        }
    }
}
