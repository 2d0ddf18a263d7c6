//! Operation intents: a multi-step operation writes one before it touches the
//! world and removes it when done. A row whose owner process is dead marks work
//! a crash left half-done; the reconciler converges it (resume a paused VM, roll
//! back a half-created one, remove a half-written snapshot).

use jiff::Timestamp;
use rusqlite::params;
use serde::Serialize;

use super::{ObjectKind, Result, Store, now};
use crate::process::ProcessIdentity;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Intent {
    pub id: i64,
    /// e.g. `vm.create`, `snapshot.save`.
    pub op: String,
    pub object_kind: String,
    pub object_id: String,
    /// The last step the owner reported reaching.
    pub step: String,
    pub owner: ProcessIdentity,
    pub started_at: Timestamp,
    pub updated_at: Timestamp,
    /// What the reconciler needs to undo or finish the step (paths, device names).
    pub data: serde_json::Value,
}

impl Intent {
    pub fn owner_alive(&self) -> bool {
        self.owner.is_alive()
    }
}

/// The handle of an intent this process owns. Not removed on drop: an early
/// return must roll back and then call [`IntentGuard::finish`]; a crash leaves
/// the row for the reconciler, which is the point.
#[derive(Debug)]
#[must_use = "an intent must be finished once the operation completes or is rolled back"]
pub struct IntentGuard {
    id: i64,
}

impl IntentGuard {
    pub fn id(&self) -> i64 {
        self.id
    }

    /// Records progress: the reconciler resumes or undoes from the last step.
    pub fn step(
        &self,
        store: &mut Store,
        step: &str,
        data: Option<&serde_json::Value>,
    ) -> Result<()> {
        store.write(|tx| {
            match data {
                Some(data) => tx.execute(
                    "UPDATE intents SET step = ?2, data = ?3, updated_at = ?4 WHERE id = ?1",
                    params![self.id, step, data.to_string(), now().to_string()],
                )?,
                None => tx.execute(
                    "UPDATE intents SET step = ?2, updated_at = ?3 WHERE id = ?1",
                    params![self.id, step, now().to_string()],
                )?,
            };
            Ok(())
        })
    }

    /// The operation completed or was fully rolled back.
    pub fn finish(self, store: &mut Store) -> Result<()> {
        store.clear_intent(self.id)
    }

    /// The operation completed with this last change of its VM's record:
    /// the change and the intent's removal are one transaction (one commit
    /// instead of two). On error neither happened, and the guard is still
    /// the caller's to [`finish`](Self::finish) after its roll back.
    pub fn finish_updating_vm<T>(
        &self,
        store: &mut Store,
        vm_id: &str,
        action: &str,
        f: impl FnOnce(&mut crate::model::Vm) -> T,
    ) -> Result<(crate::model::Vm, T)> {
        self.finish_with(store, |tx| super::vms::update_vm_tx(tx, vm_id, action, f))
    }

    /// The operation completed with this last change of its snapshot's
    /// record: the change and the intent's removal are one transaction, as
    /// [`finish_updating_vm`](Self::finish_updating_vm).
    pub fn finish_updating_snapshot<T>(
        &self,
        store: &mut Store,
        id: &str,
        action: &str,
        f: impl FnOnce(&mut crate::model::Snapshot) -> T,
    ) -> Result<(crate::model::Snapshot, T)> {
        self.finish_with(store, |tx| {
            super::snapshots::update_snapshot_tx(tx, id, action, f)
        })
    }

    /// `change` and the intent's removal in one transaction.
    fn finish_with<T>(
        &self,
        store: &mut Store,
        change: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        store.write(|tx| {
            let done = change(tx)?;
            tx.execute("DELETE FROM intents WHERE id = ?1", [self.id])?;
            Ok(done)
        })
    }

    /// The reconciler converged `intent` (claimed through this guard):
    /// clears it and logs a `recovered` event on its object saying what
    /// was done, in one transaction, so `vm status --event` shows repairs.
    pub fn finish_recovered(self, store: &mut Store, intent: &Intent, action: &str) -> Result<()> {
        let kind = ObjectKind::parse(&intent.object_kind).unwrap_or(ObjectKind::Vm);
        let doc = serde_json::json!({
            "op": intent.op,
            "step": intent.step,
            "owner_pid": intent.owner.pid,
            "action": action,
        })
        .to_string();
        store.write(|tx| {
            tx.execute("DELETE FROM intents WHERE id = ?1", [self.id])?;
            super::events::append(tx, kind, &intent.object_id, "recovered", Some(&doc))?;
            Ok(())
        })
    }
}

impl Store {
    pub fn begin_intent(
        &mut self,
        op: &str,
        kind: ObjectKind,
        object_id: &str,
        data: &serde_json::Value,
    ) -> Result<IntentGuard> {
        let owner = ProcessIdentity::current();
        self.write(|tx| insert_intent(tx, op, kind, object_id, &owner, data))
    }

    /// [`begin_intent`](Self::begin_intent) and the insertion of the VM
    /// record it is about, in one transaction: both are there, or neither.
    pub fn begin_intent_inserting_vm(
        &mut self,
        op: &str,
        data: &serde_json::Value,
        vm: &crate::model::Vm,
    ) -> Result<IntentGuard> {
        let owner = ProcessIdentity::current();
        self.write(|tx| {
            let guard = insert_intent(tx, op, ObjectKind::Vm, &vm.id, &owner, data)?;
            super::vms::insert_vm_tx(tx, vm)?;
            Ok(guard)
        })
    }

    /// [`begin_intent`](Self::begin_intent) and the insertion of the
    /// pending snapshot record it is about, in one transaction: a crash
    /// leaves both or neither (a pending record without its intent is one
    /// nothing would ever clean up).
    pub fn begin_intent_inserting_snapshot(
        &mut self,
        op: &str,
        kind: ObjectKind,
        object_id: &str,
        data: &serde_json::Value,
        snapshot: &crate::model::Snapshot,
    ) -> Result<IntentGuard> {
        let owner = ProcessIdentity::current();
        self.write(|tx| {
            let guard = insert_intent(tx, op, kind, object_id, &owner, data)?;
            super::snapshots::insert_snapshot_tx(tx, snapshot)?;
            Ok(guard)
        })
    }

    pub fn clear_intent(&mut self, id: i64) -> Result<()> {
        self.write(|tx| {
            tx.execute("DELETE FROM intents WHERE id = ?1", [id])?;
            Ok(())
        })
    }

    /// Every intent, oldest first.
    pub fn intents(&mut self) -> Result<Vec<Intent>> {
        self.read(|tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT id, op, object_kind, object_id, step, owner_pid, owner_start_time, started_at, updated_at, data
                 FROM intents ORDER BY id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(Intent {
                    id: r.get(0)?,
                    op: r.get(1)?,
                    object_kind: r.get(2)?,
                    object_id: r.get(3)?,
                    step: r.get(4)?,
                    owner: ProcessIdentity {
                        pid: r.get(5)?,
                        start_time: r.get::<_, i64>(6)? as u64,
                    },
                    started_at: r.get::<_, String>(7)?.parse().unwrap_or(Timestamp::UNIX_EPOCH),
                    updated_at: r.get::<_, String>(8)?.parse().unwrap_or(Timestamp::UNIX_EPOCH),
                    data: serde_json::from_str(&r.get::<_, String>(9)?).unwrap_or(serde_json::Value::Null),
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// Takes over an orphaned intent: only one process wins (the row still
    /// names the dead owner), and if the winner dies too, the row is orphaned
    /// again for the next one.
    pub fn claim_intent(&mut self, intent: &Intent) -> Result<Option<IntentGuard>> {
        let me = ProcessIdentity::current();
        self.write(|tx| {
            let changed = tx.execute(
                "UPDATE intents SET owner_pid = ?2, owner_start_time = ?3, updated_at = ?4
                 WHERE id = ?1 AND owner_pid = ?5 AND owner_start_time = ?6",
                params![
                    intent.id,
                    me.pid,
                    me.start_time as i64,
                    now().to_string(),
                    intent.owner.pid,
                    intent.owner.start_time as i64
                ],
            )?;
            Ok((changed == 1).then_some(IntentGuard { id: intent.id }))
        })
    }

    /// Intents whose owner died before finishing: the reconciler's work list.
    pub fn orphaned_intents(&mut self) -> Result<Vec<Intent>> {
        Ok(self
            .intents()?
            .into_iter()
            .filter(|i| !i.owner_alive())
            .collect())
    }
}

fn insert_intent(
    tx: &rusqlite::Transaction<'_>,
    op: &str,
    kind: ObjectKind,
    object_id: &str,
    owner: &ProcessIdentity,
    data: &serde_json::Value,
) -> Result<IntentGuard> {
    let at = now().to_string();
    tx.execute(
        "INSERT INTO intents (op, object_kind, object_id, step, owner_pid, owner_start_time, started_at, updated_at, data)
         VALUES (?1, ?2, ?3, 'begin', ?4, ?5, ?6, ?6, ?7)",
        params![op, kind.as_str(), object_id, owner.pid, owner.start_time as i64, at, data.to_string()],
    )?;
    Ok(IntentGuard {
        id: tx.last_insert_rowid(),
    })
}

/// One consistent read of what gc compares the files on disk with.
#[derive(Debug, Default)]
pub struct GcView {
    pub vm_ids: std::collections::HashSet<String>,
    pub snapshot_ids: std::collections::HashSet<String>,
    /// Digests pinned by any image, VM or snapshot.
    pub pinned: std::collections::HashSet<String>,
    /// Objects an operation is working on (an intent names them).
    pub busy: std::collections::HashSet<String>,
}

impl Store {
    /// Everything recorded, in one read transaction.
    pub fn gc_view(&mut self) -> Result<GcView> {
        self.read(|tx| {
            let strings = |sql: &str| -> Result<std::collections::HashSet<String>> {
                let mut stmt = tx.prepare(sql)?;
                Ok(stmt
                    .query_map([], |r| r.get::<_, String>(0))?
                    .collect::<rusqlite::Result<_>>()?)
            };
            Ok(GcView {
                vm_ids: strings("SELECT id FROM vms")?,
                snapshot_ids: strings("SELECT id FROM snapshots")?,
                pinned: strings("SELECT DISTINCT digest FROM blob_refs")?,
                busy: strings("SELECT object_id FROM intents")?,
            })
        })
    }

    /// Whether a layer blob (by hex digest) is pinned, or may be about to
    /// be: an image pull or import is in flight. A fresh query, for gc to
    /// make under the blob's lock.
    pub fn blob_wanted(&mut self, hex: &str) -> Result<bool> {
        let digest = format!("sha256:{hex}");
        self.read(|tx| {
            Ok(tx.query_row(
                "SELECT EXISTS(SELECT 1 FROM blob_refs WHERE digest = ?1 OR digest = ?2)
                     OR EXISTS(SELECT 1 FROM intents WHERE op IN ('image.pull', 'image.import'))",
                [digest.as_str(), hex],
                |r| r.get::<_, bool>(0),
            )?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::generate_id;
    use crate::model::VmState;
    use crate::store::StoreError;
    use crate::store::tests::vm_fixture;

    #[test]
    fn an_intent_and_its_record_come_and_go_together() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("cocoon.db")).unwrap();
        let data = serde_json::json!({});
        let vm = vm_fixture(&generate_id(), "web");
        let intent = store
            .begin_intent_inserting_vm("vm.create", &data, &vm)
            .unwrap();
        assert_eq!(store.intents().unwrap().len(), 1);
        assert!(store.get_vm(&vm.id).unwrap().is_some());
        // A taken name: neither the intent nor a record.
        let other = vm_fixture(&generate_id(), "web");
        let err = store
            .begin_intent_inserting_vm("vm.create", &data, &other)
            .unwrap_err();
        assert!(matches!(err, StoreError::NameTaken { .. }), "{err}");
        assert_eq!(store.intents().unwrap().len(), 1);
        assert!(store.get_vm(&other.id).unwrap().is_none());
        // The last change and the intent's end are one commit.
        let (done, ()) = intent
            .finish_updating_vm(&mut store, &vm.id, "created", |v| {
                v.state = VmState::Created;
            })
            .unwrap();
        assert_eq!(done.state, VmState::Created);
        assert!(store.intents().unwrap().is_empty());
        // A failed change leaves the intent for its owner to finish.
        let intent = store
            .begin_intent("vm.start", ObjectKind::Vm, "nope", &data)
            .unwrap();
        assert!(
            intent
                .finish_updating_vm(&mut store, "nope", "started", |_| ())
                .is_err()
        );
        assert_eq!(store.intents().unwrap().len(), 1);
        intent.finish(&mut store).unwrap();
        assert!(store.intents().unwrap().is_empty());
    }
}
