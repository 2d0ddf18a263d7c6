//! The last step of every layer, pulled or imported: tree → EROFS, boot files
//! set aside, then the rename into `blobs/` that makes the layer exist.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::erofs;
use super::layer::Unpacked;
use super::store::ImageDirs;

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Erofs(#[from] erofs::ErofsError),
    /// A kernel or initrd that is not a regular file of the tree.
    #[error(transparent)]
    BootFile(#[from] super::layer::LayerError),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl Fn(io::Error) -> CommitError {
    let path = path.to_path_buf();
    move |source| CommitError::Io {
        what,
        path: path.clone(),
        source,
    }
}

fn sync(path: &Path) -> Result<(), CommitError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_err("cannot sync", path))
}

/// Builds the layer's EROFS image from `tree` (unpacked in `work`), stores its
/// boot files, and commits it under `digest`. Returns the image size.
pub fn commit_layer(
    dirs: &ImageDirs,
    digest: &crate::digest::Digest,
    work: &Path,
    tree: &Path,
    unpacked: &Unpacked,
) -> Result<u64, CommitError> {
    let image = work.join("layer.erofs");
    erofs::build(tree, &image, &erofs::layer_uuid(digest))?;
    sync(&image)?;
    let boot = dirs.boot_dir(digest);
    let _ = std::fs::remove_dir_all(&boot);
    for (found, name) in [
        (&unpacked.kernel, "vmlinuz"),
        (&unpacked.initrd, "initrd.img"),
    ] {
        if let Some(rel) = found {
            std::fs::create_dir_all(&boot).map_err(io_err("cannot create", &boot))?;
            let staged = work.join(name);
            // Through the tree's descriptor, never a link: a regular file, bounded.
            let (source, _) = super::layer::open_boot_file(tree, rel)?;
            let mut out = File::create(&staged).map_err(io_err("cannot create", &staged))?;
            io::copy(
                &mut source.take(super::layer::MAX_BOOT_FILE_BYTES),
                &mut out,
            )
            .map_err(io_err("cannot copy", &tree.join(rel)))?;
            sync(&staged)?;
            std::fs::rename(&staged, boot.join(name))
                .map_err(io_err("cannot store", &boot.join(name)))?;
        }
    }
    // The commit point: a blob that exists is complete, boot files included.
    let blob = dirs.blob(digest);
    std::fs::rename(&image, &blob).map_err(io_err("cannot store", &blob))?;
    if let Some(parent) = blob.parent() {
        let _ = File::open(parent).and_then(|d| d.sync_all());
    }
    Ok(std::fs::metadata(&blob)
        .map_err(io_err("cannot stat", &blob))?
        .len())
}
