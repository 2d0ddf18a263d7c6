//! `vm clone --pull`: when the snapshot's base image is not in the store
//! (an imported snapshot, or an image removed since), fetch exactly the one
//! it was taken from: an OCI image by `repo@<manifest digest>` (the tag may
//! point elsewhere by now), a cloud image from its URL, refused if the URL
//! now serves other content.

use crate::context::Ctx;
use crate::error::Result;
use crate::image::cloud::CloudProgress;
use crate::image::oci::{self, PullProgress};
use crate::model::ImageType;
use crate::snapshot::SnapshotError;

use super::snapshot_check::{self, load_manifest};
use super::vm_clone::{self, CloneRequest};

/// Returns what was pulled, or None when everything was already here.
pub(crate) fn run(
    ctx: &mut Ctx,
    reference: &str,
    request: &CloneRequest,
    oci_progress: &dyn PullProgress,
    cloud_progress: &dyn CloudProgress,
) -> Result<Option<String>> {
    let snapshot = ctx.store().resolve_snapshot(reference)?;
    let manifest = load_manifest(&snapshot, false)?;
    snapshot_check::check(ctx, &snapshot, &manifest)?;
    // A clone these flags cannot make is refused before any download.
    vm_clone::request_fits(&snapshot, &manifest, request)?;
    if snapshot_check::missing_image_file(ctx, &manifest)?.is_none() {
        // Nothing a pull brings back is missing (a missing firmware is
        // reported by the clone itself).
        return Ok(None);
    }
    let invalid = |reason: String| SnapshotError::Invalid {
        id: snapshot.id.clone(),
        reason,
    };
    let source = &manifest.source;
    if source.image_digest.is_empty() {
        return Err(invalid(format!(
            "it records no image digest (an older snapshot), so --pull cannot know which {} to fetch; pull the image yourself",
            source.image
        ))
        .into());
    }
    let pulled = if source.image_type == ImageType::Cloudimg {
        let outcome = super::image_pull::cloud(ctx, &source.image, false, cloud_progress)?;
        if outcome.image.id != source.image_digest {
            return Err(invalid(format!(
                "{} now serves {}, not the snapshot's image {}; nothing was cloned",
                source.image, outcome.image.id, source.image_digest
            ))
            .into());
        }
        source.image.clone()
    } else {
        let parsed = oci::parse_reference(&source.image)?;
        let pinned = format!(
            "{}/{}@{}",
            parsed.registry(),
            parsed.repository(),
            source.image_digest
        );
        super::image_pull::oci(ctx, &pinned, oci_progress).map_err(|e| {
            invalid(format!(
                "cannot pull its image {pinned}: {e} (an image that was imported rather than pulled cannot be fetched: import it again)"
            ))
        })?;
        pinned
    };
    // The pull must have brought back every file the snapshot names.
    snapshot_check::check_base_files(ctx, &manifest)?;
    Ok(Some(pulled))
}
