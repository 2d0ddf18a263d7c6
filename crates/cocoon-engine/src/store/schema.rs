//! Versioned schema migrations, tracked in `PRAGMA user_version`.
//!
//! Migration N takes a database at version N-1 to version N. They are only ever
//! appended: a released migration is never edited, so every database a user has
//! can be brought forward (the tests replay every starting version).

use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;

/// Index i holds the migration to version i + 1.
pub(crate) const MIGRATIONS: &[&str] = &[
    // v1: the initial schema.
    r#"
    CREATE TABLE vms (
        id          TEXT PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        state       TEXT NOT NULL,
        hypervisor  TEXT NOT NULL,
        created_at  TEXT NOT NULL,
        doc         TEXT NOT NULL
    ) STRICT;

    CREATE TABLE images (
        name        TEXT PRIMARY KEY,
        kind        TEXT NOT NULL CHECK (kind IN ('oci', 'cloudimg')),
        digest      TEXT NOT NULL,
        size        INTEGER NOT NULL,
        created_at  TEXT NOT NULL,
        doc         TEXT NOT NULL
    ) STRICT;
    CREATE INDEX images_digest ON images (digest);

    -- Content-addressed files in the image and snapshot stores.
    CREATE TABLE blobs (
        digest      TEXT PRIMARY KEY,
        kind        TEXT NOT NULL,
        size        INTEGER NOT NULL,
        created_at  TEXT NOT NULL
    ) STRICT;

    -- Who keeps a blob alive: an image, a VM or a snapshot. GC deletes blobs no row names.
    CREATE TABLE blob_refs (
        owner_kind  TEXT NOT NULL CHECK (owner_kind IN ('image', 'vm', 'snapshot')),
        owner_id    TEXT NOT NULL,
        digest      TEXT NOT NULL,
        PRIMARY KEY (owner_kind, owner_id, digest)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX blob_refs_digest ON blob_refs (digest);

    CREATE TABLE snapshots (
        id          TEXT PRIMARY KEY,
        name        TEXT UNIQUE,
        vm_id       TEXT,
        pending     INTEGER NOT NULL DEFAULT 1,
        created_at  TEXT NOT NULL,
        doc         TEXT NOT NULL
    ) STRICT;
    CREATE INDEX snapshots_vm ON snapshots (vm_id);

    CREATE TABLE networks (
        id          TEXT PRIMARY KEY,
        vm_id       TEXT NOT NULL,
        if_name     TEXT NOT NULL,
        doc         TEXT NOT NULL,
        UNIQUE (vm_id, if_name)
    ) STRICT;

    -- A multi-step operation in flight; a row whose owner is dead is work for the reconciler.
    CREATE TABLE intents (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        op               TEXT NOT NULL,
        object_kind      TEXT NOT NULL,
        object_id        TEXT NOT NULL,
        step             TEXT NOT NULL,
        owner_pid        INTEGER NOT NULL,
        owner_start_time INTEGER NOT NULL,
        started_at       TEXT NOT NULL,
        updated_at       TEXT NOT NULL,
        data             TEXT NOT NULL DEFAULT '{}'
    ) STRICT;
    CREATE INDEX intents_object ON intents (object_kind, object_id);

    -- Append-only; AUTOINCREMENT so a sequence number is never reused, even after deletes.
    CREATE TABLE events (
        seq          INTEGER PRIMARY KEY AUTOINCREMENT,
        at           TEXT NOT NULL,
        object_kind  TEXT NOT NULL,
        object_id    TEXT NOT NULL,
        action       TEXT NOT NULL,
        doc          TEXT
    ) STRICT;
    "#,
    // v2: VMs get a vsock device unless `--no-agent`. Those made before
    // had none, nor have their VMMs or snapshots: recorded explicitly.
    r#"
    UPDATE vms SET doc = json_set(doc, '$.config.no_agent', json('true'))
        WHERE json_type(doc, '$.config.no_agent') IS NULL;
    "#,
];

#[allow(clippy::cast_possible_truncation)] // A handful of migrations: it fits.
pub const LATEST: u32 = MIGRATIONS.len() as u32;

pub(crate) fn version(conn: &Connection) -> Result<u32, StoreError> {
    Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
}

/// Brings the database to `target`, each step in its own transaction so a
/// crash mid-migration leaves the previous version intact.
pub(crate) fn migrate(conn: &mut Connection, target: u32) -> Result<(), StoreError> {
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
        let current = version(&tx)?;
        if current > LATEST {
            return Err(StoreError::SchemaTooNew {
                found: current,
                supported: LATEST,
                path: Default::default(),
            });
        }
        if current >= target {
            return Ok(());
        }
        tx.execute_batch(MIGRATIONS[current as usize])?;
        tx.pragma_update(None, "user_version", current + 1)?;
        tx.commit()?;
    }
}
