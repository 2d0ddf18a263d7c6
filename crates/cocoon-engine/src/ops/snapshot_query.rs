//! `snapshot ls`, `snapshot inspect`, `snapshot rm`.

use std::path::Path;

use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::model::Snapshot;

pub(crate) fn list(ctx: &mut Ctx, vm: Option<&str>) -> Result<Vec<Snapshot>> {
    let vm_id = match vm {
        Some(reference) => Some(ctx.store().resolve_vm(reference)?.id),
        None => None,
    };
    Ok(ctx.store().list_snapshots(vm_id.as_deref())?)
}

pub(crate) fn inspect(ctx: &mut Ctx, reference: &str) -> Result<Snapshot> {
    Ok(ctx.store().resolve_snapshot(reference)?)
}

/// Removes snapshots: files first, then the record, so a failure leaves a
/// record to retry with rather than files nothing points at. The source VM
/// stops listing it in the same transaction (cocoon forgot that).
pub(crate) fn remove(ctx: &mut Ctx, references: &[String]) -> Result<Vec<Snapshot>> {
    let snapshots = ctx.store().resolve_snapshots(references)?;
    // Before any is removed: a hibernated VM's guest is in its snapshot.
    for snapshot in &snapshots {
        if let Some(held) = ctx.store().snapshot_held(&snapshot.id)? {
            return Err(held.into());
        }
    }
    let root = ctx.layout.snapshots();
    let mut removed = Vec::with_capacity(snapshots.len());
    for snapshot in snapshots {
        remove_owned_dir(&root, &snapshot.data_dir)?;
        removed.push(ctx.store().delete_snapshot(&snapshot.id)?);
    }
    Ok(removed)
}

/// Removes `dir` only if it lies inside `root`: a record's path never makes
/// cocoon delete something it does not own.
pub(crate) fn remove_owned_dir(root: &Path, dir: &Path) -> Result<()> {
    let inside = dir.starts_with(root)
        && dir != root
        && dir
            .components()
            .all(|c| !matches!(c, std::path::Component::ParentDir));
    if !inside {
        return Err(Error::Invalid(format!(
            "refusing to remove {}: it is outside the snapshot store {}",
            dir.display(),
            root.display()
        )));
    }
    // A sealer at work stops, and none writes into it while it goes.
    let _sealing = crate::snapshot::seal::removal(dir)
        .map_err(|e| Error::io(format!("cannot remove snapshot files {}", dir.display()), e))?;
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(
            format!("cannot remove snapshot files {}", dir.display()),
            e,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_directories_inside_the_store_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("snapshots");
        let victim = dir.path().join("victim");
        std::fs::create_dir_all(&victim).unwrap();
        for outside in [root.clone(), victim.clone(), root.join("../victim")] {
            let err = remove_owned_dir(&root, &outside).unwrap_err().to_string();
            assert!(err.contains("outside the snapshot store"), "{err}");
        }
        assert!(victim.is_dir());
        remove_owned_dir(&root, &root.join("gone")).unwrap();
    }
}
