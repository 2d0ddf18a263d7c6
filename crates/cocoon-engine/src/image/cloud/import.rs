//! `image import NAME FILE...` of a disk image: the sources (recognised by
//! `image::import`) are copied into the store while hashed, then stored as
//! any pulled image is. The caller records the image.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::commit::{self, Stored};
use super::error::{CloudError, Origin, io_err};
use super::sniff::Compression;
use super::{CloudProgress, Step, stage};
use crate::image::limits::{SPACE_STEP, SpaceWatch};
use crate::image::store::ImageDirs;

/// The bytes of one disk image: every part in order, decompressed.
pub struct DiskSource {
    /// How messages name it: the file, `FILE (+N more parts)`, or standard input.
    pub name: String,
    pub reader: Box<dyn Read + Send>,
    /// The compression undone on the way, if any.
    pub compression: Option<Compression>,
    /// Size of the sources as stored (compressed), when they are files.
    pub total: Option<u64>,
    /// What the source files take on disk (allocated blocks, at most their
    /// length: a sparse raw image costs what it holds), when they are files.
    pub on_disk: Option<u64>,
    /// Source bytes read so far, for progress.
    pub consumed: Arc<AtomicU64>,
}

/// Copies the image into `images/tmp/` (hashing it: the digest is that of
/// the decompressed bytes, so a split, gzip'd or piped copy of an image is
/// the same image) and stores it. Free space is checked before the copy
/// (room for what the sources take on disk, or one step of a stream) and
/// as it is written (see `limits::SpaceWatch`).
pub fn store_disk(
    dirs: &ImageDirs,
    mut source: DiskSource,
    progress: &dyn CloudProgress,
) -> Result<Stored, CloudError> {
    dirs.create().map_err(io_err("cannot create", &dirs.root))?;
    let origin = Origin::Local(source.name.clone());
    let compression = source.compression;
    let read_err = |e: std::io::Error| match compression {
        Some(compression) => CloudError::Decompress {
            origin: origin.clone(),
            compression,
            reason: e.to_string(),
        },
        None => CloudError::Read {
            origin: origin.clone(),
            source: e,
        },
    };
    progress.begin(Step::Read {
        source: &source.name,
        total: source.total,
    });
    let mut space = SpaceWatch::new(&dirs.root, &format!("importing {}", source.name));
    space.start(source.on_disk.unwrap_or(SPACE_STEP))?;
    let consumed = source.consumed.clone();
    let staged = stage::stage(
        &dirs.root.join("tmp"),
        &mut source.reader,
        &origin,
        None,
        Some(&mut space),
        &read_err,
        &mut |_| progress.advance(consumed.load(Ordering::Relaxed)),
    )?;
    crate::failpoint::hit_io("image.import.staged").map_err(read_err)?;
    commit::store(
        dirs,
        staged.file.path(),
        &staged.digest,
        true,
        &origin,
        progress,
    )
}
