//! The append-only event log: every change to a VM, image, snapshot or network
//! lease, numbered by a sequence that only grows. `vm status --event` tails it
//! from a cursor, so a watcher that was away misses nothing.

use std::fmt;

use jiff::Timestamp;
use rusqlite::{OptionalExtension, Transaction, params};
use serde::Serialize;

use super::{Result, Store, now};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    Vm,
    Image,
    Snapshot,
    Network,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Vm => "vm",
            ObjectKind::Image => "image",
            ObjectKind::Snapshot => "snapshot",
            ObjectKind::Network => "network",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<ObjectKind> {
        Some(match s {
            "vm" => ObjectKind::Vm,
            "image" => ObjectKind::Image,
            "snapshot" => ObjectKind::Snapshot,
            "network" => ObjectKind::Network,
            _ => return None,
        })
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // As users read it in messages: "VM", "image", ...
        f.write_str(match self {
            ObjectKind::Vm => "VM",
            other => other.as_str(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub seq: i64,
    pub at: Timestamp,
    pub object_kind: ObjectKind,
    pub object_id: String,
    /// `created`, `updated`, `deleted`, or a state name for VM state changes.
    pub action: String,
    /// The object after the change (before it, for `deleted`).
    pub doc: Option<serde_json::Value>,
}

/// Appends one event inside the caller's transaction.
pub(crate) fn append(
    tx: &Transaction<'_>,
    kind: ObjectKind,
    id: &str,
    action: &str,
    doc: Option<&str>,
) -> Result<i64> {
    tx.execute(
        "INSERT INTO events (at, object_kind, object_id, action, doc) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![now().to_string(), kind.as_str(), id, action, doc],
    )?;
    Ok(tx.last_insert_rowid())
}

impl Store {
    /// Events with a sequence number above `after`, oldest first, at most `limit`.
    pub fn events_since(&mut self, after: i64, limit: usize) -> Result<Vec<Event>> {
        self.read(|tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT seq, at, object_kind, object_id, action, doc FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after, limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, Option<String>>(5)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, at, kind, object_id, action, doc) = row?;
                out.push(Event {
                    seq,
                    at: at.parse().unwrap_or(Timestamp::UNIX_EPOCH),
                    object_kind: ObjectKind::parse(&kind).unwrap_or(ObjectKind::Vm),
                    object_id,
                    action,
                    doc: doc.and_then(|d| serde_json::from_str(&d).ok()),
                });
            }
            Ok(out)
        })
    }

    /// The newest sequence number, 0 when the log is empty: a cursor for "from now on".
    pub fn last_event_seq(&mut self) -> Result<i64> {
        self.read(|tx| {
            Ok(tx
                .query_row("SELECT MAX(seq) FROM events", [], |r| {
                    r.get::<_, Option<i64>>(0)
                })
                .optional()?
                .flatten()
                .unwrap_or(0))
        })
    }
}
