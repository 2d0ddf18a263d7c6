//! The snapshot store: a snapshot is a flat directory under
//! `<root_dir>/snapshots/<id>` holding the VMM's state files, copies of the
//! VM's writable disks, and `cocoon.json`, the manifest with a sha256 of every
//! other file. The record stays `pending` until every file is in place; the
//! digests may follow later (`seal`).

pub mod archive;
pub mod chunked;
pub mod copy;
pub mod dir;
pub mod manifest;
pub mod rebase;
pub mod seal;
pub mod trust;

use std::path::Path;

pub use manifest::{MANIFEST, Manifest};

use crate::error::{Error, Result};

/// Why a snapshot cannot be saved or used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {id}: {reason}")]
    Invalid { id: String, reason: String },
    #[error("snapshot {id} is damaged: {reason}; it cannot be used")]
    Damaged { id: String, reason: String },
    #[error("snapshot of VM {vm} failed: {reason}")]
    Save {
        vm: crate::name::VmName,
        reason: String,
    },
    #[error("interrupted: the VM was resumed and the half-made snapshot removed")]
    Interrupted,
    /// A clone or restore flag the snapshot cannot take.
    #[error("{0}")]
    Override(String),
    /// The archive's manifest cannot be used (`snapshot import`).
    #[error("the archive's manifest is not usable: {0}")]
    Manifest(String),
}

/// Writes `bytes` to `path` through a synced temporary file and a rename:
/// a crash leaves the old file or the new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let io = |e| Error::io(format!("cannot write {}", path.display()), e);
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
