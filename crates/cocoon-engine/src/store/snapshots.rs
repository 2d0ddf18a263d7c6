//! Snapshot records. A snapshot is inserted `pending` before its files are
//! written and flipped to ready only once they are complete, so a crash in
//! between leaves a record the reconciler can recognise and remove.

use rusqlite::{OptionalExtension, Transaction, params};

use super::events::append;
use super::resolve::{resolve_id, resolve_ids};
use super::{ObjectKind, Result, Store, StoreError, from_json, is_unique_violation, to_json};
use crate::model::Snapshot;

const KIND: ObjectKind = ObjectKind::Snapshot;

fn load(tx: &Transaction<'_>, id: &str) -> Result<Option<Snapshot>> {
    let doc: Option<String> = tx
        .query_row("SELECT doc FROM snapshots WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?;
    doc.map(|doc| from_json(KIND, id, &doc)).transpose()
}

fn not_found(reference: &str) -> StoreError {
    StoreError::NotFound {
        kind: KIND,
        reference: reference.to_string(),
    }
}

/// [`Store::insert_snapshot`] inside a caller's transaction.
pub(super) fn insert_snapshot_tx(tx: &Transaction<'_>, snapshot: &Snapshot) -> Result<()> {
    let doc = write_row(tx, snapshot, true)?;
    append(tx, KIND, &snapshot.id, "created", Some(&doc))?;
    Ok(())
}

/// [`Store::update_snapshot`] inside a caller's transaction.
pub(super) fn update_snapshot_tx<T>(
    tx: &Transaction<'_>,
    id: &str,
    action: &str,
    f: impl FnOnce(&mut Snapshot) -> T,
) -> Result<(Snapshot, T)> {
    let mut snapshot = load(tx, id)?.ok_or_else(|| not_found(id))?;
    let out = f(&mut snapshot);
    snapshot.id = id.to_string();
    let doc = write_row(tx, &snapshot, false)?;
    append(tx, KIND, id, action, Some(&doc))?;
    Ok((snapshot, out))
}

fn write_row(tx: &Transaction<'_>, snapshot: &Snapshot, insert: bool) -> Result<String> {
    let doc = to_json(snapshot);
    let name = snapshot.name.as_deref();
    let sql = if insert {
        "INSERT INTO snapshots (id, name, vm_id, pending, created_at, doc) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
    } else {
        "UPDATE snapshots SET name = ?2, vm_id = ?3, pending = ?4, created_at = ?5, doc = ?6 WHERE id = ?1"
    };
    let result = tx.execute(
        sql,
        params![
            snapshot.id,
            name,
            snapshot.vm_id,
            snapshot.pending,
            snapshot.created_at.to_string(),
            doc
        ],
    );
    match result {
        Err(e) if is_unique_violation(&e, "snapshots.name") => {
            let owner = tx
                .query_row("SELECT id FROM snapshots WHERE name = ?1", [name], |r| {
                    r.get(0)
                })
                .optional()?
                .unwrap_or_default();
            Err(StoreError::NameTaken {
                kind: KIND,
                name: name.unwrap_or_default().to_string(),
                owner,
            })
        }
        Err(e) if is_unique_violation(&e, "snapshots.id") => Err(StoreError::IdTaken {
            kind: KIND,
            id: snapshot.id.clone(),
        }),
        other => {
            other?;
            tx.execute(
                "DELETE FROM blob_refs WHERE owner_kind = 'snapshot' AND owner_id = ?1",
                [&snapshot.id],
            )?;
            let mut pin = tx.prepare_cached(
                "INSERT OR IGNORE INTO blob_refs (owner_kind, owner_id, digest) VALUES ('snapshot', ?1, ?2)",
            )?;
            for digest in snapshot.image_blob_ids.keys() {
                pin.execute(params![snapshot.id, digest])?;
            }
            Ok(doc)
        }
    }
}

impl Store {
    pub fn insert_snapshot(&mut self, snapshot: &Snapshot) -> Result<()> {
        self.write(|tx| insert_snapshot_tx(tx, snapshot))
    }

    pub fn update_snapshot<T>(
        &mut self,
        id: &str,
        action: &str,
        f: impl FnOnce(&mut Snapshot) -> T,
    ) -> Result<(Snapshot, T)> {
        self.write(|tx| update_snapshot_tx(tx, id, action, f))
    }

    /// Refused while a hibernated VM needs the snapshot: its guest is there.
    pub fn delete_snapshot(&mut self, id: &str) -> Result<Snapshot> {
        self.write(|tx| {
            let snapshot = load(tx, id)?.ok_or_else(|| not_found(id))?;
            if let Some(e) = held(tx, id)? {
                return Err(e);
            }
            tx.execute("DELETE FROM snapshots WHERE id = ?1", [id])?;
            tx.execute(
                "DELETE FROM blob_refs WHERE owner_kind = 'snapshot' AND owner_id = ?1",
                [id],
            )?;
            append(tx, KIND, id, "deleted", Some(&to_json(&snapshot)))?;
            Ok(snapshot)
        })
    }

    /// The refusal to remove snapshot `id`, if a hibernated VM needs it.
    pub fn snapshot_held(&mut self, id: &str) -> Result<Option<StoreError>> {
        self.read(|tx| held(tx, id))
    }

    pub fn get_snapshot(&mut self, id: &str) -> Result<Option<Snapshot>> {
        self.read(|tx| load(tx, id))
    }

    /// Complete snapshots, oldest first; `vm_id` filters by source VM.
    /// Pending ones are hidden: they are not usable yet, or left by a crash.
    pub fn list_snapshots(&mut self, vm_id: Option<&str>) -> Result<Vec<Snapshot>> {
        self.read(|tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT id, doc FROM snapshots WHERE pending = 0 AND (?1 IS NULL OR vm_id = ?1) ORDER BY created_at, id",
            )?;
            let rows = stmt
                .query_map([vm_id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.iter().map(|(id, doc)| from_json(KIND, id, doc)).collect()
        })
    }

    /// Pending snapshots: in flight, or left behind by a crash.
    pub fn pending_snapshots(&mut self) -> Result<Vec<Snapshot>> {
        self.read(|tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT id, doc FROM snapshots WHERE pending = 1 ORDER BY created_at",
            )?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.iter()
                .map(|(id, doc)| from_json(KIND, id, doc))
                .collect()
        })
    }

    pub fn resolve_snapshot(&mut self, reference: &str) -> Result<Snapshot> {
        self.read(|tx| {
            let id = resolve_id(tx, "snapshots", KIND, reference)?;
            load(tx, &id)?.ok_or_else(|| not_found(reference))
        })
    }

    pub fn resolve_snapshots(&mut self, references: &[String]) -> Result<Vec<Snapshot>> {
        self.read(|tx| {
            resolve_ids(tx, "snapshots", KIND, references)?
                .iter()
                .map(|id| load(tx, id)?.ok_or_else(|| not_found(id)))
                .collect()
        })
    }
}

/// The VM whose hibernation snapshot `id` is, as the refusal to remove it.
fn held(tx: &Transaction<'_>, id: &str) -> Result<Option<StoreError>> {
    let vm: Option<(String, String)> = tx
        .query_row(
            "SELECT id, name FROM vms WHERE json_extract(doc, '$.hibernation_snapshot') = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(vm.map(|(vm_id, vm_name)| StoreError::SnapshotHeld {
        snapshot: id.to_string(),
        vm_id,
        vm_name,
    }))
}
