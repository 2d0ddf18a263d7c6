//! Snapshots by directory: `snapshot export --to-dir`, and `vm clone
//! --from-dir` / `vm restore --from-dir` (upstream cocoon's names).
//!
//! A directory to read is imported first, exactly as `snapshot import`
//! verifies an archive (into the engine's own files, reflinked where the
//! filesystem can), then used, then dropped: the clone or restore never
//! reads a file someone else can still change. Each step is one of the
//! crash-safe operations; a crash between them leaves at most the imported
//! snapshot, listed and removable, never a half-made one.

use std::path::Path;

use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::model::{Snapshot, Vm};
use crate::snapshot::dir;

use super::vm_clone::CloneRequest;
use super::vm_restore::RestoreRequest;

pub(crate) fn export(ctx: &mut Ctx, reference: &str, dest: &Path) -> Result<Snapshot> {
    let snapshot = ctx.store().resolve_snapshot(reference)?;
    super::snapshot_check::ensure_sealed(&snapshot)?;
    super::snapshot_check::load_manifest(&snapshot, false)?;
    dir::export(&snapshot.data_dir, dest).map_err(|e| {
        Error::Invalid(format!(
            "cannot export snapshot {} to {}: {e}",
            snapshot.id,
            dest.display()
        ))
    })?;
    Ok(snapshot)
}

pub(crate) fn clone(ctx: &mut Ctx, dir: &Path, request: CloneRequest) -> Result<Vm> {
    let (snapshot, _) = super::snapshot_import::run_from_dir(ctx, dir)?;
    let cloned = super::vm_clone::run(ctx, &snapshot.id, request);
    drop_import(ctx, &snapshot);
    cloned
}

/// `force` restores a directory taken from another VM (upstream's
/// `--force`: the snapshot-belongs-to-VM check is skipped; the shape checks
/// still apply).
pub(crate) fn restore(
    ctx: &mut Ctx,
    vm_ref: &str,
    dir: &Path,
    force: bool,
    request: RestoreRequest,
) -> Result<Vm> {
    let vm = ctx.store().resolve_vm(vm_ref)?;
    let (snapshot, source) = super::snapshot_import::run_from_dir(ctx, dir)?;
    if !force && source.as_deref() != Some(vm.id.as_str()) {
        drop_import(ctx, &snapshot);
        return Err(Error::Invalid(format!(
            "snapshot directory {} was taken from VM {}, not from VM {} ({}); pass --force to restore it anyway, or use `cocoon vm clone --from-dir` to start a new VM from it",
            dir.display(),
            source.as_deref().unwrap_or("(none recorded)"),
            vm.config.name,
            vm.id
        )));
    }
    let request = RestoreRequest {
        any_source: true,
        ..request
    };
    let restored = super::vm_restore::run(ctx, &vm.id, &snapshot.id, request);
    drop_import(ctx, &snapshot);
    restored
}

fn drop_import(ctx: &mut Ctx, snapshot: &Snapshot) {
    if let Err(e) = super::snapshot_query::remove(ctx, std::slice::from_ref(&snapshot.id)) {
        tracing::warn!(
            "the snapshot imported from the directory ({}) is kept: {e}; remove it with `cocoon snapshot rm {}`",
            snapshot.id,
            snapshot.id
        );
    }
}
