//! `snapshot export`: a snapshot as one archive stream (tar with sparse
//! entries, zstd or gzip). A damaged snapshot is refused (sizes; checksums
//! are verified on import).

use std::io::Write;

use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::model::Snapshot;
use crate::snapshot::archive::{self, Compression, ExportOptions};

pub(crate) fn run(
    ctx: &mut Ctx,
    reference: &str,
    out: &mut dyn Write,
    compression: Compression,
    progress: &mut dyn FnMut(u64),
) -> Result<Snapshot> {
    let snapshot = ctx.store().resolve_snapshot(reference)?;
    super::snapshot_check::ensure_sealed(&snapshot)?;
    super::snapshot_check::load_manifest(&snapshot, false)?;
    archive::export(
        &snapshot.data_dir,
        out,
        &ExportOptions { compression },
        progress,
    )
    .map_err(|e| Error::Invalid(format!("cannot export snapshot {}: {e}", snapshot.id)))?;
    Ok(snapshot)
}
