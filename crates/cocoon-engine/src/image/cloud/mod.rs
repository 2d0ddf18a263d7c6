//! Cloud images: one qcow2 v3 disk per image, pulled over http(s) or imported
//! from local files or stdin, stored content-addressed.
//!
//! ```text
//! images/blobs/<hex>.qcow2             the base disk, read-only (0444); <hex> is the
//!                                      sha256 of the image bytes as delivered, once any
//!                                      gzip/xz/zstd/bzip2 wrapping is undone
//! images/locks/<hex>.lock              per-digest flock: one process normalises a digest
//! images/locks/url-<h>.lock            per-URL flock: one process downloads a URL at a time
//! images/tmp/pull-<h>.partial          an interrupted download, resumed by the next pull
//! images/tmp/pull-<h>.json             what the partial is: URL, validator (ETag or
//!                                      Last-Modified), expected size
//! images/tmp/stage-*, convert-*        work files of the running command (removed on exit)
//! ```
//! `<h>` is a hash of the URL. A blob exists only once complete: it is built
//! in `tmp/` and renamed into `blobs/`, and the image record is written last.
//!
//! Decisions, where cocoon (Go) differs:
//! - Interrupted downloads resume with `Range` plus `If-Range`, so a changed
//!   upstream file is never spliced onto an old prefix; a server that ignores
//!   ranges (or has no validator) makes the pull start over. The digest always
//!   covers the whole file: a resumed pull re-reads the kept prefix.
//! - gzip, xz, zstd and bzip2 payloads are decompressed instead of refused
//!   (many cloud images ship as `.img.xz`); the digest is that of the
//!   decompressed bytes, so pulling `x.img.gz` and importing `x.img` share a
//!   blob. HTML/XML pages and zip/7z archives are refused by their magic.
//! - qcow2 v3 is stored byte for byte; qcow2 v2 is upgraded in place with
//!   `qemu-img amend` when the file is a private staging copy (imports), and
//!   with `qemu-img convert` when it is a kept download (which must stay a
//!   true prefix of the URL's file); raw is converted with `qemu-img convert`.
//!   Other formats (vmdk, vhdx, vdi, ...) are refused, not converted: a vmdk
//!   descriptor can name arbitrary host files as extents. For the same reason
//!   a qcow2 with a backing file or an external data file is refused.
//! - A raw image must carry a partition table (MBR or GPT): cloud images boot
//!   through UEFI, and this turns "the URL served some other file" into a
//!   clear error instead of a disk that never boots.

pub mod commit;
pub mod download;
pub mod error;
pub mod import;
pub mod pull;
pub mod qemu;
mod ranges;
pub mod sniff;
pub mod stage;

use std::path::PathBuf;

pub use error::{CloudError, Origin};

use super::store::ImageDirs;
use crate::digest::Digest;

/// cocoon's cap on a cloud image: downloads and decompressed payloads stop here.
pub const MAX_IMAGE_BYTES: u64 = 20 << 30;

/// The stored base disk of a cloud image whose digest is `digest`.
pub fn blob_path(dirs: &ImageDirs, digest: &Digest) -> PathBuf {
    dirs.root
        .join("blobs")
        .join(format!("{}.qcow2", digest.hex()))
}

/// What a pull or import is doing, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<'a> {
    /// Bytes are arriving from `url`; `resumed_from` of them were kept from an
    /// interrupted pull. `total` is the whole file's size when the server says.
    Download {
        url: &'a str,
        resumed_from: u64,
        total: Option<u64>,
    },
    /// A local source is copied into the store.
    Read { source: &'a str, total: Option<u64> },
    /// A downloaded payload is decompressed; progress counts compressed bytes.
    Decompress {
        compression: sniff::Compression,
        total: Option<u64>,
    },
    /// `qemu-img` rewrites the image (no byte progress).
    Convert { action: commit::Action },
}

pub trait CloudProgress {
    fn begin(&self, _step: Step<'_>) {}
    /// Bytes done in the current step.
    fn advance(&self, _done: u64) {}
}

pub struct NoCloudProgress;
impl CloudProgress for NoCloudProgress {}
