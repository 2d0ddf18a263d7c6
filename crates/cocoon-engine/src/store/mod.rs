//! The state store: one SQLite database, `<root_dir>/cocoon.db`.
//!
//! WAL mode lets readers run beside a writer; every state change is one
//! `BEGIN IMMEDIATE` transaction (taking the write lock up front, so two
//! processes never deadlock upgrading read locks) that also appends its event.
//! A busy timeout makes concurrent CLI processes wait their turn instead of
//! failing with "database is locked".

mod events;
mod images;
mod intents;
mod networks;
mod resolve;
pub(crate) mod schema;
mod snapshots;
mod vms;

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

pub use events::{Event, ObjectKind};
pub use intents::{GcView, Intent, IntentGuard};
pub use resolve::Candidate;
pub use schema::LATEST as SCHEMA_VERSION;

/// How long a writer waits for another process's transaction before giving up.
/// Transactions here are short (no I/O but SQLite's own), so this is only hit
/// when something is badly wrong.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// SQLite checkpoints the WAL into the database once it passes this many pages.
const WAL_CHECKPOINT_PAGES: i64 = 128;

fn not_found_where(kind: ObjectKind) -> &'static str {
    // vk-cocoon @ a9cb04f matches "vm not found" and "snapshot not found".
    match kind {
        ObjectKind::Image => "not found in any backend (OCI or cloud images); pull or import it",
        ObjectKind::Vm => "vm not found by ID, name or ID prefix",
        ObjectKind::Snapshot => "snapshot not found by ID, name or ID prefix",
        ObjectKind::Network => "not found by ID, name or ID prefix",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot create state directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot sync the state database's log {path}: {source}")]
    Sync {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Worded so vk-cocoon, which matches `no such vm`, `no such snapshot`
    /// and `not found in any backend` in upstream's messages, recognises it.
    #[error("no such {kind} {reference:?}: {}", not_found_where(*.kind))]
    NotFound { kind: ObjectKind, reference: String },
    #[error("{kind} reference {reference:?} is ambiguous; it matches: {}", resolve::list(.candidates))]
    Ambiguous {
        kind: ObjectKind,
        reference: String,
        candidates: Vec<Candidate>,
    },
    #[error(
        "{kind} name {name:?} already exists: it is already in use by {owner} (pick another name or remove it first)"
    )]
    NameTaken {
        kind: ObjectKind,
        name: String,
        owner: String,
    },
    #[error(
        "snapshot {snapshot} holds the guest of hibernated VM {vm_name} ({vm_id}); wake the VM first (`cocoon vm start {vm_name}`), or remove it (`cocoon vm rm {vm_name}`), then remove the snapshot"
    )]
    SnapshotHeld {
        snapshot: String,
        vm_id: String,
        vm_name: String,
    },
    #[error("{kind} {id} already exists")]
    IdTaken { kind: ObjectKind, id: String },
    #[error(
        "state database {path} has schema version {found}, newer than this cocoon supports ({supported}); upgrade cocoon"
    )]
    SchemaTooNew {
        found: u32,
        supported: u32,
        path: PathBuf,
    },
    #[error("corrupt {kind} record {id} in the state database: {reason}")]
    Corrupt {
        kind: ObjectKind,
        id: String,
        reason: String,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        let mut store = Self::open_at_version(path, schema::LATEST)?;
        store.path = path.to_path_buf();
        Ok(store)
    }

    /// Opens and migrates only up to `version`: for migration tests.
    #[doc(hidden)]
    pub fn open_at_version(path: &Path, version: u32) -> Result<Store> {
        if let Some(dir) = path.parent() {
            crate::lock::create_private_dir(dir).map_err(|source| StoreError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Every CLI process is usually the database's only connection, and
        // SQLite checkpoints the WAL into the database and deletes it when
        // the last connection closes: two more fsyncs, an unlink and a new
        // WAL (with a directory fsync) per command. The WAL stays instead;
        // its commits are as durable there, and SQLite checkpoints it when
        // it passes `wal_autocheckpoint` pages, during some later commit.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )?;
        // Processes that find the file new race to switch it to WAL and to
        // create the schema, still under rollback journaling, where SQLite
        // answers a lock upgrade that could deadlock with an immediate
        // SQLITE_BUSY instead of waiting: that first setup is retried.
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        let mut attempt = 0u64;
        loop {
            match Self::prepare(&mut conn, version) {
                Err(StoreError::Sqlite(e))
                    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                        && std::time::Instant::now() < deadline =>
                {
                    attempt += 1;
                    // Staggered by pid, so two racers do not retry in step.
                    let ms = 5 + (u64::from(std::process::id()) + attempt * 7) % 20;
                    std::thread::sleep(Duration::from_millis(ms));
                }
                Err(StoreError::SchemaTooNew {
                    found, supported, ..
                }) => {
                    return Err(StoreError::SchemaTooNew {
                        found,
                        supported,
                        path: path.to_path_buf(),
                    });
                }
                other => break other?,
            }
        }
        Ok(Store {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// WAL mode, durability pragmas and the schema, on a fresh connection.
    fn prepare(conn: &mut Connection, version: u32) -> Result<()> {
        // WAL is a property of the file: set once, cheap to re-assert.
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(mode, "state database is not in WAL mode");
        }
        // FULL: a committed record of a running VM or a stored blob survives power loss.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        // The first connection of every CLI process rebuilds the WAL's
        // index by reading and checksumming every frame (the WAL outlives
        // each process: see `open_at_version`). At SQLite's default of
        // 1,000 pages that was ~1.5 ms of each command's start on the test
        // host (a 3.4 MB WAL); 128 pages keep it near 0.2 ms, for a
        // checkpoint (a few dozen pages and an fsync) every few commands.
        conn.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)?;
        // Reads through a memory map instead of a pread per page: `vm ls`
        // of 1,000 VMs read ~500 pages one system call at a time.
        // (It answers with the size taken, or nothing where mmap is off.)
        let _ =
            conn.pragma_update_and_check(None, "mmap_size", 256i64 << 20, |r| r.get::<_, i64>(0));
        if schema::version(conn)? != version {
            schema::migrate(conn, version)?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn schema_version(&self) -> Result<u32> {
        schema::version(&self.conn)
    }

    /// Commits after this call (until `relaxed(false)`) are not synced to
    /// disk one by one (`synchronous=NORMAL`, WAL mode): for the commits of
    /// runtime state only, which a power loss makes false anyway.
    ///
    /// Why that is durable enough, where it is used (`vm start`): in WAL
    /// mode a NORMAL commit is in the WAL file (the page cache) when it
    /// returns, so a crash of the process (SIGKILL, OOM: the crash matrix)
    /// loses nothing, exactly as with FULL. Only an operating system crash or
    /// power loss can drop the last commits, and then what survives is a
    /// prefix of them (the WAL's frames are checksummed and replayed in
    /// order; every later FULL commit syncs the earlier ones). Those commits
    /// are the start's intent, its `launched` record and its `running`
    /// record: after a power loss no VMM runs, so each prefix is a state
    /// crash recovery already converges (an orphaned start intent: the VMM
    /// is gone, the VM settles stopped; a `running` record with a dead VMM
    /// reads as stopped). The state before the start (the VM's disks and
    /// record) was committed durably by the command that made it.
    pub fn relaxed(&mut self, on: bool) -> Result<()> {
        let level = if on { "NORMAL" } else { "FULL" };
        self.conn.pragma_update(None, "synchronous", level)?;
        Ok(())
    }

    /// Runs `f` with its commits relaxed (see [`Store::relaxed`]) when `on`,
    /// and restores full syncing after it, whatever it returned.
    pub fn relaxed_if<T>(
        &mut self,
        on: bool,
        f: impl FnOnce(&mut Store) -> Result<T>,
    ) -> Result<T> {
        if !on {
            return f(self);
        }
        self.relaxed(true)?;
        let result = f(self);
        self.relaxed(false)?;
        result
    }

    /// Makes every commit so far durable, as a commit under
    /// `synchronous=FULL` would in WAL mode: one sync of the WAL, which
    /// holds every commit not yet checkpointed (a checkpoint syncs the WAL
    /// before and the database after). For relaxed commits whose sync can
    /// wait until a command is about to return (`Engine::run_vm`).
    pub fn sync(&self) -> Result<()> {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&wal);
        let synced = match file {
            Ok(file) => file.sync_data(),
            // No WAL: nothing uncheckpointed (or not in WAL mode, where
            // every commit syncs the database itself).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        };
        synced.map_err(|source| StoreError::Sync {
            path: PathBuf::from(wal),
            source,
        })?;
        Ok(())
    }

    /// Runs `f` in one write transaction; commits if it returns Ok.
    pub fn write<T>(&mut self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = f(&tx)?;
        tx.commit()?;
        Ok(value)
    }

    /// Runs `f` on one consistent read snapshot (a deferred transaction).
    pub fn read<T>(&mut self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Deferred)?;
        let value = f(&tx)?;
        tx.finish()?;
        Ok(value)
    }
}

/// Maps a UNIQUE violation on `column` to `NameTaken`/`IdTaken`, other errors through.
fn is_unique_violation(err: &rusqlite::Error, column: &str) -> bool {
    match err {
        rusqlite::Error::SqliteFailure(e, Some(msg)) => {
            e.code == rusqlite::ErrorCode::ConstraintViolation
                && msg.contains("UNIQUE")
                && msg.ends_with(column)
        }
        _ => false,
    }
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("records serialise to JSON")
}

fn from_json<T: serde::de::DeserializeOwned>(kind: ObjectKind, id: &str, doc: &str) -> Result<T> {
    serde_json::from_str(doc).map_err(|e| StoreError::Corrupt {
        kind,
        id: id.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod listing_tests;
#[cfg(test)]
mod sync_tests;
#[cfg(test)]
mod tests;
