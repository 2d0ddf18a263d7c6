//! The snapshot store: a snapshot is a flat directory under
//! `<root_dir>/snapshots/<id>` holding the VMM's state files, copies of the
//! VM's writable disks, and `cocoon.json`, the manifest with a sha256 of every
//! other file. The record stays `pending` until every file is in place.

pub mod archive;
pub mod copy;
pub mod manifest;
pub mod transfer;
pub mod trust;

pub use manifest::{MANIFEST, Manifest};
