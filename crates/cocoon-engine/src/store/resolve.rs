//! Reference resolution shared by VMs and snapshots: exact ID, then exact name,
//! then a unique ID prefix of at least 3 characters (case-insensitive, since
//! IDs are upper-case base32 and people type lower case).

use rusqlite::{Transaction, params};
use serde::Serialize;

use super::{ObjectKind, Result, StoreError};
use crate::id::is_id_prefix;

pub const MIN_PREFIX: usize = 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candidate {
    pub id: String,
    pub name: String,
}

pub(crate) fn list(candidates: &[Candidate]) -> String {
    candidates
        .iter()
        .map(|c| {
            if c.name.is_empty() {
                c.id.clone()
            } else {
                format!("{} ({})", c.id, c.name)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Resolves `reference` in `table` (which has `id` and `name` columns) to one ID.
pub(crate) fn resolve_id(
    tx: &Transaction<'_>,
    table: &str,
    kind: ObjectKind,
    reference: &str,
) -> Result<String> {
    let not_found = || StoreError::NotFound {
        kind,
        reference: reference.to_string(),
    };
    if reference.is_empty() {
        return Err(not_found());
    }
    let mut by_id = tx.prepare_cached(&format!("SELECT id FROM {table} WHERE id = ?1"))?;
    if let Some(id) = by_id
        .query_map([reference], |r| r.get::<_, String>(0))?
        .next()
    {
        return Ok(id?);
    }
    let mut by_name = tx.prepare_cached(&format!("SELECT id FROM {table} WHERE name = ?1"))?;
    if let Some(id) = by_name
        .query_map([reference], |r| r.get::<_, String>(0))?
        .next()
    {
        return Ok(id?);
    }
    if reference.len() < MIN_PREFIX || !is_id_prefix(reference) {
        return Err(not_found());
    }
    // IDs are [A-Z2-7] only, so the prefix has no LIKE wildcards; range scan on the key.
    let prefix = reference.to_ascii_uppercase();
    let mut by_prefix = tx.prepare_cached(&format!(
        "SELECT id, COALESCE(name, '') FROM {table} WHERE id >= ?1 AND id < ?1 || '~' ORDER BY id LIMIT 11"
    ))?;
    let candidates = by_prefix
        .query_map(params![prefix], |r| {
            Ok(Candidate {
                id: r.get(0)?,
                name: r.get(1)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    match candidates.len() {
        0 => Err(not_found()),
        1 => Ok(candidates.into_iter().next().expect("one").id),
        _ => Err(StoreError::Ambiguous {
            kind,
            reference: reference.to_string(),
            candidates,
        }),
    }
}

/// Resolves several references, dropping duplicates but keeping first-seen order.
pub(crate) fn resolve_ids(
    tx: &Transaction<'_>,
    table: &str,
    kind: ObjectKind,
    references: &[String],
) -> Result<Vec<String>> {
    let mut ids: Vec<String> = Vec::with_capacity(references.len());
    for reference in references {
        let id = resolve_id(tx, table, kind, reference)?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}
