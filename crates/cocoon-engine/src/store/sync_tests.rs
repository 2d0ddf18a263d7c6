//! `Store::relaxed` commits and `Store::sync`.

use super::tests::{temp_store, vm_fixture};
use super::*;
use crate::id::generate_id;

/// `sync` makes relaxed commits durable through the WAL file, which it
/// opens by path: a link put in its place is refused, not followed.
#[test]
fn sync_flushes_the_wal_and_never_follows_a_link() {
    let (dir, mut store) = temp_store();
    store.relaxed(true).unwrap();
    store
        .insert_vm(&vm_fixture(&generate_id(), "relaxed"))
        .unwrap();
    store.relaxed(false).unwrap();
    let wal = dir.path().join("state").join("cocoon.db-wal");
    assert!(
        wal.metadata().unwrap().len() > 0,
        "the commit is in the WAL"
    );
    store.sync().unwrap();

    let elsewhere = dir.path().join("elsewhere");
    std::fs::write(&elsewhere, b"not the WAL").unwrap();
    let kept = dir.path().join("wal-kept");
    std::fs::rename(&wal, &kept).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &wal).unwrap();
    let err = store.sync().unwrap_err();
    assert!(
        matches!(err, StoreError::Sync { ref path, .. } if path == &wal),
        "{err}"
    );
    assert!(
        err.to_string().starts_with(&format!(
            "cannot sync the state database's log {}: ",
            wal.display()
        )),
        "{err}"
    );
    assert_eq!(std::fs::read(&elsewhere).unwrap(), b"not the WAL");
    std::fs::remove_file(&wal).unwrap();
    std::fs::rename(&kept, &wal).unwrap();
}
