//! VM records.

use rusqlite::{OptionalExtension, Transaction, params};

use super::events::append;
use super::resolve::{resolve_id, resolve_ids};
use super::{ObjectKind, Result, Store, StoreError, from_json, is_unique_violation, now, to_json};
use crate::model::{Empty, ListedDoc, Vm, VmListing};

const KIND: ObjectKind = ObjectKind::Vm;

fn load(tx: &Transaction<'_>, id: &str) -> Result<Option<Vm>> {
    let doc: Option<String> = tx
        .query_row("SELECT doc FROM vms WHERE id = ?1", [id], |r| r.get(0))
        .optional()?;
    doc.map(|doc| hydrate(tx, id, &doc)).transpose()
}

/// Fills the derived fields of a stored VM document.
fn hydrate(tx: &Transaction<'_>, id: &str, doc: &str) -> Result<Vm> {
    let mut vm: Vm = from_json(KIND, id, doc)?;
    let mut stmt =
        tx.prepare_cached("SELECT id FROM snapshots WHERE vm_id = ?1 AND pending = 0")?;
    vm.snapshot_ids = stmt
        .query_map([id], |r| r.get::<_, String>(0))?
        .map(|r| r.map(|id| (id, Empty {})))
        .collect::<rusqlite::Result<_>>()?;
    Ok(vm)
}

/// Every VM's sort key and document, in no order: [`oldest_first`] sorts
/// them. An `ORDER BY created_at, id` here had SQLite's sorter copy every
/// whole document (no index has that order) before the first row came out.
const OLDEST_FIRST: &str = "SELECT created_at, id, doc FROM vms";

/// Sorted by (created_at, id) as `ORDER BY created_at, id` sorts the
/// columns' text (byte order, SQLite's BINARY collation).
/// The keys are sorted, not the rows (a full record is large to move).
fn oldest_first<T>(rows: Vec<((String, String), T)>) -> Vec<T> {
    let (keys, rows): (Vec<_>, Vec<_>) = rows.into_iter().unzip();
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_unstable_by(|&a, &b| keys[a].cmp(&keys[b]));
    let mut rows: Vec<Option<T>> = rows.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| rows[i].take()).collect()
}

/// A text column, borrowed from the row (no copy of a whole document).
fn text<'r>(row: &'r rusqlite::Row<'_>, column: usize) -> Result<&'r str> {
    row.get_ref(column)?.as_str().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, e.into())
            .into()
    })
}

fn listed(id: &str, doc: &str) -> Result<VmListing> {
    Ok(from_json::<ListedDoc>(KIND, id, doc)?.into_listing())
}

fn stored_doc(vm: &Vm) -> String {
    // Snapshot IDs live in the snapshot table; storing a copy would let them drift.
    let mut doc = vm.clone();
    doc.snapshot_ids.clear();
    to_json(&doc)
}

fn sync_pins(tx: &Transaction<'_>, vm: &Vm) -> Result<()> {
    tx.execute(
        "DELETE FROM blob_refs WHERE owner_kind = 'vm' AND owner_id = ?1",
        [&vm.id],
    )?;
    let mut stmt = tx.prepare_cached(
        "INSERT INTO blob_refs (owner_kind, owner_id, digest) VALUES ('vm', ?1, ?2)",
    )?;
    for digest in vm.image_blob_ids.keys() {
        stmt.execute(params![vm.id, digest])?;
    }
    Ok(())
}

fn name_owner(tx: &Transaction<'_>, name: &str) -> Result<String> {
    Ok(tx
        .query_row("SELECT id FROM vms WHERE name = ?1", [name], |r| r.get(0))
        .optional()?
        .unwrap_or_default())
}

/// [`Store::insert_vm`] inside a caller's transaction.
pub(super) fn insert_vm_tx(tx: &Transaction<'_>, vm: &Vm) -> Result<()> {
    let doc = stored_doc(vm);
    let inserted = tx.execute(
            "INSERT INTO vms (id, name, state, hypervisor, created_at, doc) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![vm.id, vm.config.name.as_str(), vm.state.as_str(), vm.hypervisor.as_str(), vm.created_at.to_string(), doc],
        );
    match inserted {
        Err(e) if is_unique_violation(&e, "vms.name") => {
            return Err(StoreError::NameTaken {
                kind: KIND,
                name: vm.config.name.to_string(),
                owner: name_owner(tx, &vm.config.name)?,
            });
        }
        Err(e) if is_unique_violation(&e, "vms.id") => {
            return Err(StoreError::IdTaken {
                kind: KIND,
                id: vm.id.clone(),
            });
        }
        other => other?,
    };
    sync_pins(tx, vm)?;
    append(tx, KIND, &vm.id, "created", Some(&doc))?;
    Ok(())
}

/// [`Store::update_vm`] inside a caller's transaction.
pub(super) fn update_vm_tx<T>(
    tx: &Transaction<'_>,
    id: &str,
    action: &str,
    f: impl FnOnce(&mut Vm) -> T,
) -> Result<(Vm, T)> {
    let mut vm = load(tx, id)?.ok_or_else(|| StoreError::NotFound {
        kind: KIND,
        reference: id.to_string(),
    })?;
    let out = f(&mut vm);
    vm.id = id.to_string();
    vm.updated_at = now();
    let doc = stored_doc(&vm);
    let updated = tx.execute(
        "UPDATE vms SET name = ?2, state = ?3, doc = ?4 WHERE id = ?1",
        params![id, vm.config.name.as_str(), vm.state.as_str(), doc],
    );
    match updated {
        Err(e) if is_unique_violation(&e, "vms.name") => {
            return Err(StoreError::NameTaken {
                kind: KIND,
                name: vm.config.name.to_string(),
                owner: name_owner(tx, &vm.config.name)?,
            });
        }
        other => other?,
    };
    sync_pins(tx, &vm)?;
    append(tx, KIND, id, action, Some(&doc))?;
    Ok((vm, out))
}

impl Store {
    /// Inserts a new VM; the name must be free and the ID new.
    pub fn insert_vm(&mut self, vm: &Vm) -> Result<()> {
        self.write(|tx| insert_vm_tx(tx, vm))
    }

    /// Read-modify-write of one VM in a single transaction: no update is ever lost
    /// to a concurrent writer. `action` names the change in the event log.
    pub fn update_vm<T>(
        &mut self,
        id: &str,
        action: &str,
        f: impl FnOnce(&mut Vm) -> T,
    ) -> Result<(Vm, T)> {
        self.write(|tx| update_vm_tx(tx, id, action, f))
    }

    /// Deletes a VM record and its blob pins and leases; returns what was deleted.
    pub fn delete_vm(&mut self, id: &str) -> Result<Vm> {
        self.write(|tx| {
            let vm = load(tx, id)?.ok_or_else(|| StoreError::NotFound {
                kind: KIND,
                reference: id.to_string(),
            })?;
            tx.execute("DELETE FROM vms WHERE id = ?1", [id])?;
            tx.execute("DELETE FROM blob_refs WHERE owner_kind = 'vm' AND owner_id = ?1", [id])?;
            tx.execute("DELETE FROM networks WHERE vm_id = ?1", [id])?;
            // Snapshots outlive their VM; they just stop pointing at it.
            tx.execute("UPDATE snapshots SET vm_id = NULL, doc = json_remove(doc, '$.vm_id') WHERE vm_id = ?1", [id])?;
            append(tx, KIND, id, "deleted", Some(&stored_doc(&vm)))?;
            Ok(vm)
        })
    }

    pub fn get_vm(&mut self, id: &str) -> Result<Option<Vm>> {
        self.read(|tx| load(tx, id))
    }

    /// All VMs, oldest first.
    pub fn list_vms(&mut self) -> Result<Vec<Vm>> {
        self.read(|tx| {
            // Two queries for the whole list, not one per VM.
            let mut snapshots: std::collections::HashMap<String, crate::model::Set> =
                Default::default();
            let mut stmt = tx.prepare_cached(
                "SELECT vm_id, id FROM snapshots WHERE pending = 0 AND vm_id IS NOT NULL",
            )?;
            for row in
                stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
            {
                let (vm_id, id) = row?;
                snapshots.entry(vm_id).or_default().insert(id, Empty {});
            }
            let mut stmt = tx.prepare_cached(OLDEST_FIRST)?;
            let mut rows = stmt.query([])?;
            let mut vms = Vec::new();
            while let Some(row) = rows.next()? {
                let key = (text(row, 0)?.to_string(), text(row, 1)?.to_string());
                let mut vm: Vm = from_json(KIND, &key.1, text(row, 2)?)?;
                vm.snapshot_ids = snapshots.remove(&key.1).unwrap_or_default();
                vms.push((key, vm));
            }
            Ok(oldest_first(vms))
        })
    }

    /// What `vm ls` shows of every VM, oldest first: the few fields of each
    /// record it needs, without building the rest of the document.
    pub fn list_vm_listings(&mut self) -> Result<Vec<VmListing>> {
        self.read(|tx| {
            let mut stmt = tx.prepare_cached(OLDEST_FIRST)?;
            let mut rows = stmt.query([])?;
            let mut listings = Vec::new();
            while let Some(row) = rows.next()? {
                let key = (text(row, 0)?.to_string(), text(row, 1)?.to_string());
                let listing = listed(&key.1, text(row, 2)?)?;
                listings.push((key, listing));
            }
            Ok(oldest_first(listings))
        })
    }

    /// [`Store::list_vm_listings`] of one VM by ID.
    pub fn get_vm_listing(&mut self, id: &str) -> Result<Option<VmListing>> {
        self.read(|tx| {
            let mut stmt = tx.prepare_cached("SELECT doc FROM vms WHERE id = ?1")?;
            let mut rows = stmt.query([id])?;
            match rows.next()? {
                Some(row) => Ok(Some(listed(id, text(row, 0)?)?)),
                None => Ok(None),
            }
        })
    }

    /// Resolves a VM reference (ID, name, or unique ID prefix of 3+ characters).
    pub fn resolve_vm(&mut self, reference: &str) -> Result<Vm> {
        self.read(|tx| {
            let id = resolve_id(tx, "vms", KIND, reference)?;
            load(tx, &id)?.ok_or_else(|| StoreError::NotFound {
                kind: KIND,
                reference: reference.to_string(),
            })
        })
    }

    /// Resolves several references; all must resolve. Duplicates collapse.
    pub fn resolve_vms(&mut self, references: &[String]) -> Result<Vec<Vm>> {
        self.read(|tx| {
            resolve_ids(tx, "vms", KIND, references)?
                .iter()
                .map(|id| {
                    load(tx, id)?.ok_or_else(|| StoreError::NotFound {
                        kind: KIND,
                        reference: id.clone(),
                    })
                })
                .collect()
        })
    }
}
