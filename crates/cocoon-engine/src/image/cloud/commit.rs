//! From a complete, decompressed payload to `blobs/<hex>.qcow2`: decide what
//! it is, normalise it to qcow2 v3 only when needed, and rename it into place.
//!
//! Everything runs under the digest's lock and re-checks the blob after
//! taking it, so concurrent pulls or imports of the same bytes normalise once
//! and the others find the blob.

use std::fmt;
use std::fs::{File, Permissions};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::error::{CloudError, Origin, io_err};
use super::sniff::{self, Compression, Qcow2Header};
use super::stage::{TempFile, read_head};
use super::{CloudProgress, Step, blob_path, qemu};
use crate::image::store::ImageDirs;

/// What storing a payload took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The digest was already stored: nothing was written.
    Reused,
    /// A qcow2 v3 image, stored byte for byte.
    Kept,
    /// A qcow2 v2 image, upgraded to v3.
    Upgraded,
    /// Rewritten as qcow2 v3 from `from`: raw, or a qcow2 v3 using features
    /// (dirty bit, zstd clusters, extended L2) a plain rewrite drops.
    Converted { from: &'static str },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Reused => f.write_str("already stored"),
            Action::Kept => f.write_str("qcow2 v3, stored as is"),
            Action::Upgraded => f.write_str("upgraded from qcow2 v2 to v3"),
            Action::Converted { from } => write!(f, "converted from {from} to qcow2 v3"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub digest: crate::digest::Digest,
    /// Size of the stored blob in bytes.
    pub size: u64,
    pub action: Action,
}

/// Stores `source` (a complete payload whose image digest is `digest`) as the
/// blob for `digest`. A `private` source is a staging copy this command owns
/// and may be modified; otherwise it is a kept download, which is only ever
/// renamed as a whole (so a crash cannot leave a resumable file that is no
/// longer a prefix of the URL's bytes). The caller removes whatever is left
/// of `source` afterwards.
pub fn store(
    dirs: &ImageDirs,
    source: &Path,
    digest: &crate::digest::Digest,
    private: bool,
    origin: &Origin,
    progress: &dyn CloudProgress,
) -> Result<Stored, CloudError> {
    let _lock = crate::lock::BlobLock::acquire(dirs, digest)
        .map_err(io_err("cannot lock", &dirs.lock(digest)))?;
    let blob = blob_path(dirs, digest);
    let stored = |action| -> Result<Stored, CloudError> {
        Ok(Stored {
            digest: digest.clone(),
            size: std::fs::metadata(&blob)
                .map_err(io_err("cannot stat", &blob))?
                .len(),
            action,
        })
    };
    if blob.is_file() {
        return stored(Action::Reused);
    }
    let head = read_head(source)?;
    let action = plan(source, &head, origin)?;
    let converted;
    let ready = match action {
        Action::Reused | Action::Kept => source,
        Action::Upgraded if private => {
            progress.begin(Step::Convert { action });
            qemu::amend_to_v3(source, origin)?;
            source
        }
        Action::Upgraded | Action::Converted { .. } => {
            progress.begin(Step::Convert { action });
            let from = match action {
                Action::Converted { from } => from,
                _ => "qcow2",
            };
            // The converted copy beside the staged one: room for another of it.
            let need = std::fs::metadata(source)
                .map(|m| crate::image::import::allocated(&m))
                .map_err(io_err("cannot stat", source))?;
            crate::image::limits::require_space(&dirs.root, &format!("converting {origin}"), need)?;
            converted = TempFile::new_in(&dirs.root.join("tmp"), "convert", ".qcow2");
            qemu::convert_to_qcow2_v3(source, from, converted.path(), origin)?;
            converted.path()
        }
    };
    let result = Qcow2Header::parse(&read_head(ready)?);
    if !result.is_some_and(|h| h.version == 3 && h.backing_file.is_none()) {
        return Err(CloudError::QemuImg {
            origin: origin.clone(),
            command: if action == Action::Kept {
                "info"
            } else {
                "convert"
            },
            output: format!("{} is not a standalone qcow2 v3 image", ready.display()),
        });
    }
    std::fs::set_permissions(ready, Permissions::from_mode(0o444))
        .map_err(io_err("cannot set permissions of", ready))?;
    File::open(ready)
        .and_then(|f| f.sync_all())
        .map_err(io_err("cannot sync", ready))?;
    // The commit point: a blob that exists is complete.
    std::fs::rename(ready, &blob).map_err(io_err("cannot store", &blob))?;
    if let Some(parent) = blob.parent() {
        let _ = File::open(parent).and_then(|d| d.sync_all());
    }
    stored(action)
}

/// What to do with a complete payload, judged by its bytes.
fn plan(path: &Path, head: &[u8], origin: &Origin) -> Result<Action, CloudError> {
    if let Some(found) = sniff::foreign(head) {
        return Err(CloudError::NotAnImage {
            origin: origin.clone(),
            found,
        });
    }
    if let Some(compression) = Compression::detect(head) {
        // Callers undo one layer of compression; this is a second one.
        return Err(CloudError::Unsupported {
            origin: origin.clone(),
            format: format!("{compression}-compressed"),
        });
    }
    if head.starts_with(sniff::QCOW2_MAGIC) {
        return qcow2_plan(head, origin);
    }
    if let Some(format) = sniff::other_disk_format(head) {
        return Err(CloudError::Unsupported {
            origin: origin.clone(),
            format: format.to_string(),
        });
    }
    match qemu::probe_format(path, origin)?.as_str() {
        "raw" if sniff::has_partition_table(head) => Ok(Action::Converted { from: "raw" }),
        "raw" => Err(CloudError::NoPartitionTable {
            origin: origin.clone(),
        }),
        other => Err(CloudError::Unsupported {
            origin: origin.clone(),
            format: other.to_string(),
        }),
    }
}

/// What a qcow2 header allows (refusals are visible from the header alone,
/// so imports check it before copying anything).
pub fn qcow2_plan(head: &[u8], origin: &Origin) -> Result<Action, CloudError> {
    let refuse = |problem: String| CloudError::Qcow2 {
        origin: origin.clone(),
        problem,
    };
    let Some(header) = Qcow2Header::parse(head) else {
        return Err(refuse("with a truncated header".into()));
    };
    // A backing file or external data file names a path on the machine that
    // opens the image: storing it would read host files into a VM's disk.
    if let Some(backing) = &header.backing_file {
        return Err(refuse(if backing.is_empty() {
            "with a backing file".into()
        } else {
            format!("with a backing file ({backing})")
        }));
    }
    match header.version {
        2 => Ok(Action::Upgraded),
        3 if header.incompatible & Qcow2Header::EXTERNAL_DATA_FILE != 0 => {
            Err(refuse("with an external data file".into()))
        }
        3 if header.incompatible & Qcow2Header::CORRUPT != 0 => {
            Err(refuse("marked corrupt".into()))
        }
        3 if header.incompatible == 0 => Ok(Action::Kept),
        3 => Ok(Action::Converted { from: "qcow2" }),
        v => Err(refuse(format!("of version {v}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(version: u32, backing: bool, incompatible: u64) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..4].copy_from_slice(sniff::QCOW2_MAGIC);
        h[4..8].copy_from_slice(&version.to_be_bytes());
        if backing {
            h[8..16].copy_from_slice(&300u64.to_be_bytes());
            h[16..20].copy_from_slice(&4u32.to_be_bytes());
            h[300..304].copy_from_slice(b"/etc");
        }
        h[72..80].copy_from_slice(&incompatible.to_be_bytes());
        h
    }

    #[test]
    fn qcow2_plans() {
        let origin = Origin::Local("d.qcow2".into());
        let plan = |h: Vec<u8>| qcow2_plan(&h, &origin).map_err(|e| e.to_string());
        assert_eq!(plan(head(3, false, 0)), Ok(Action::Kept));
        assert_eq!(plan(head(2, false, 0)), Ok(Action::Upgraded));
        assert_eq!(
            plan(head(3, false, Qcow2Header::DIRTY)),
            Ok(Action::Converted { from: "qcow2" })
        );
        assert_eq!(
            plan(head(3, true, 0)),
            Err("d.qcow2 is a qcow2 image with a backing file (/etc); only standalone qcow2 images can be stored".into())
        );
        assert_eq!(
            plan(head(3, false, Qcow2Header::EXTERNAL_DATA_FILE)),
            Err("d.qcow2 is a qcow2 image with an external data file; only standalone qcow2 images can be stored".into())
        );
        assert_eq!(
            plan(head(3, false, Qcow2Header::CORRUPT)),
            Err("d.qcow2 is a qcow2 image marked corrupt; only standalone qcow2 images can be stored".into())
        );
        assert_eq!(
            plan(head(4, false, 0)),
            Err(
                "d.qcow2 is a qcow2 image of version 4; only standalone qcow2 images can be stored"
                    .into()
            )
        );
    }
}
