//! Snapshot archives: one snapshot directory as a tar stream, for
//! `snapshot export` / `snapshot import`.
//!
//! The stream is POSIX (pax) tar: `cocoon.json` first, then every file its
//! `"files"` map lists, sorted by name, nothing else. Files with holes are
//! standard PAX sparse entries, format 1.0 (what `tar --sparse
//! --format=posix` writes), so GNU tar extracts a byte-identical, still sparse
//! copy. The stream is zstd (multi-threaded) by default, gzip or plain on
//! request; import detects which by magic.
//!
//! Import trusts nothing: only regular files with plain names, no duplicates,
//! bounded sizes, every file listed in the manifest with its size and digest
//! checked while it is written, every listed file present. On any error the
//! files written so far are removed. Archives written by cocoon (Go) (first
//! entry `snapshot.json`, sparse files as `COCOON.sparse.*` PAX records) are
//! read too and returned as `legacy` for the engine to convert.
//!
//! The last entry, `cocoon.json.sha256`, is the manifest's own sha256
//! (verified whenever present). Before each file is
//! written, its declared data bytes must fit in the destination's free
//! space, and no more than them are ever written.

mod compress;
pub(crate) mod epoch;
mod error;
mod export;
mod extract;
mod import;
mod layout;
pub(crate) mod listing;
mod names;
mod pax;
mod progress;
mod reader;
mod sparse;
mod writer;

#[cfg(test)]
mod tests;

pub use error::ArchiveError;
pub use export::export;
pub use import::import;

/// A length this module has already bounded (a block, a padding, a size
/// checked against one of its small limits), as a buffer length.
fn small_len(n: u64) -> usize {
    usize::try_from(n).expect("bounded far below the address space")
}

/// How an export is compressed. Import detects it by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// zstd, on every core: snapshots are gigabytes of memory and disk.
    #[default]
    Zstd,
    Gzip,
    None,
}

#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    pub compression: Compression,
}

/// What [`import`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    /// `cocoon.json` (also written into the destination), or for a legacy
    /// archive the `snapshot.json` document (not written; the engine converts
    /// it into a manifest).
    pub manifest: serde_json::Value,
    /// Written by cocoon (Go): no manifest and no checksums to verify.
    pub legacy: bool,
}

/// The last entry of an archive this engine writes: `sha256sum` output for
/// `cocoon.json` (`<hex>  cocoon.json`), so the manifest, which carries every
/// other file's digest, is covered by one too. Written after every file;
/// verified on import whenever present (archives of this engine's previous
/// format have none, and stay importable). Integrity, not authenticity: it
/// carries no key, so whoever rewrites the manifest can rewrite it too; what
/// the manifest says is checked on its own (`snapshot::trust`).
pub const MANIFEST_SUM: &str = "cocoon.json.sha256";

/// The first entry of an archive written by cocoon (Go).
pub const LEGACY_MANIFEST: &str = "snapshot.json";

/// Data bytes one entry may carry: a disk image bigger than this is not a
/// snapshot someone moves as one stream.
pub const MAX_DATA_SIZE: u64 = 1 << 40;
/// Logical size of one file: holes cost nothing, so this only has to stay
/// within what a filesystem can hold (ext4's limit with 4 KiB blocks).
pub const MAX_FILE_SIZE: u64 = 16 << 40;
/// A manifest is a few KiB; anything near this is not one.
pub const MAX_MANIFEST_SIZE: u64 = 16 << 20;
/// One entry's PAX records. Ours are a few hundred bytes, but cocoon (Go)
/// put a file's whole sparse map in one as JSON (~30 bytes per segment), and a
/// memory file it punched at 4 KiB zero blocks has hundreds of thousands.
pub const MAX_PAX_SIZE: u64 = 64 << 20;
/// Data segments of one sparse file: 16 bytes of memory each on import.
pub const MAX_SPARSE_SEGMENTS: usize = 1 << 22;
/// Entries of one archive (legacy archives have no manifest to bound them).
pub const MAX_ENTRIES: usize = 4096;
