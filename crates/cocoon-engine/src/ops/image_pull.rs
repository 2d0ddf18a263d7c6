//! `image pull`: an OCI image from a registry, or a cloud image from an
//! http(s) URL. An unchanged tag whose layers are all present costs one
//! manifest request; a recorded URL whose blob is present, none.

use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::image::cloud::{self, CloudProgress};
use crate::image::oci::{self, PullProgress, RegistryOptions};
use crate::image::store::ImageDirs;
use crate::intent::Op;
use crate::model::{Image, ImageType};

use super::image_record;

/// What `pull_image` did.
#[derive(Debug, Clone)]
pub struct PullOutcome {
    pub image: Image,
    /// Layers downloaded and converted by this pull (the rest were in the store).
    pub fetched_layers: usize,
    /// The tag still names the recorded image and every layer is present: nothing was done.
    pub up_to_date: bool,
}

/// What `pull_cloud_image` did.
#[derive(Debug, Clone)]
pub struct CloudPullOutcome {
    pub image: Image,
    /// The URL was recorded and its blob present: no request was made.
    pub up_to_date: bool,
    /// What was downloaded and how it was stored (None when up to date).
    pub fetched: Option<cloud::pull::Fetched>,
}

/// What an `image pull` reference names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// An http(s) URL: a cloud image.
    Url,
    /// Anything else: an OCI reference.
    Registry,
}

impl Source {
    pub fn of(reference: &str) -> Source {
        if reference.starts_with("http://") || reference.starts_with("https://") {
            Source::Url
        } else {
            Source::Registry
        }
    }
}

/// Pulls an OCI image: resolves the manifest (or index, for this platform),
/// fetches and converts the layers the store lacks, and records the image.
pub(crate) fn oci(
    ctx: &mut Ctx,
    reference: &str,
    progress: &dyn PullProgress,
) -> Result<PullOutcome> {
    let parsed = oci::parse_reference(reference)?;
    let name = parsed.whole();
    let options = RegistryOptions::from_config(ctx.config());
    let oci::Resolved {
        digest,
        layers,
        config,
        cloud_disk,
    } = ctx.block_on_parallel(async |_| Ok(oci::resolve(&parsed, &options).await?))?;
    if cloud_disk {
        return cloud_artifact(ctx, &parsed, &options, layers, progress);
    }
    if let Some(image) = up_to_date(ctx, &name, &digest)? {
        return Ok(PullOutcome {
            image,
            fetched_layers: 0,
            up_to_date: true,
        });
    }
    progress.manifest(&name, layers.len());
    let op = Op::ImagePull {
        digest: Some(digest.to_string()),
        url: None,
    };
    ctx.with_intent(&op, &name, |ctx, _| {
        let dirs = ctx.images();
        let pool = ctx.config().pool_size;
        // Converted layers are complete and content-addressed: on error they
        // stay for the next pull, or for gc. Nothing else was written.
        let pulled = ctx.block_on_parallel(async |_| {
            Ok(oci::pull_layers(&parsed, layers, &dirs, &options, pool, progress).await?)
        })?;
        oci::require_boot_files(&name, &pulled)?;
        crate::failpoint::hit("image.pull.layers")?;
        let fetched_layers = pulled.iter().filter(|l| l.fetched).count();
        let image = image_record::layers(ctx, &name, digest, &pulled, Some(config))?;
        crate::failpoint::hit("image.pull.recorded")?;
        Ok(PullOutcome {
            image,
            fetched_layers,
            up_to_date: false,
        })
    })
}

/// A cocoonstack cloud-image artifact: its disk layers fetched (each
/// verified, under its blob lock, into the image store's `tmp/`, where gc
/// finds what a killed pull left), then imported in title order as the
/// parts of one disk, exactly as `image import NAME PART...` would.
fn cloud_artifact(
    ctx: &mut Ctx,
    reference: &oci_client::Reference,
    options: &RegistryOptions,
    layers: Vec<oci::LayerDescriptor>,
    progress: &dyn PullProgress,
) -> Result<PullOutcome> {
    let name = reference.whole();
    let dirs = ctx.images();
    dirs.create()
        .map_err(|e| Error::io(format!("cannot create {}", dirs.root.display()), e))?;
    progress.manifest(&name, layers.len());
    let mut locks = Vec::new();
    let mut files = Vec::new();
    for layer in &layers {
        locks.push(
            crate::lock::BlobLock::acquire(&dirs, &layer.digest)
                .map_err(|e| Error::io(format!("cannot lock {}", layer.digest), e))?,
        );
        files.push(dirs.work(&layer.digest).with_extension("disk"));
    }
    let client = options.client(reference);
    let refused = |reason: String| -> Error {
        oci::PullError::BadManifest {
            reference: name.clone(),
            reason,
        }
        .into()
    };
    let fetched = ctx.block_on_parallel(async |_| {
        for (layer, path) in layers.iter().zip(&files) {
            let size = layer
                .size()
                .ok_or_else(|| refused(format!("layer {} has a negative size", layer.digest)))?;
            super::blob_fetch::fetch(&client, reference, options, &layer.digest, size, path)
                .await
                .map_err(|e| e.into_error(refused))?;
        }
        Ok(())
    });
    let image = fetched
        .and_then(|()| super::image_import::run(ctx, &name, &files, &cloud::NoCloudProgress));
    for path in &files {
        let _ = std::fs::remove_file(path);
    }
    drop(locks);
    Ok(PullOutcome {
        image: image?,
        fetched_layers: files.len(),
        up_to_date: false,
    })
}

/// The recorded image `name` if it is `digest` and every layer is present.
fn up_to_date(ctx: &mut Ctx, name: &str, digest: &crate::digest::Digest) -> Result<Option<Image>> {
    let dirs = ctx.images();
    Ok(ctx.store().list_images()?.into_iter().find(|i| {
        i.name == name && i.id == *digest && i.layers.iter().all(|l| dirs.blob(l).is_file())
    }))
}

/// Pulls a cloud image from an http(s) URL. A URL already recorded with
/// its blob present is up to date without a request, unless `force`,
/// which downloads again (dropping any kept partial download); content
/// already stored is never converted twice. An interrupted download is
/// kept and resumed by the next pull where the server allows.
pub(crate) fn cloud(
    ctx: &mut Ctx,
    url: &str,
    force: bool,
    progress: &dyn CloudProgress,
) -> Result<CloudPullOutcome> {
    cloud::download::parse_url(url)?;
    let dirs = ctx.images();
    let up_to_date = |image| CloudPullOutcome {
        image,
        up_to_date: true,
        fetched: None,
    };
    if !force && let Some(image) = stored_cloud_image(ctx, url, &dirs)? {
        return Ok(up_to_date(image));
    }
    let _lock = cloud::pull::lock_url(&dirs, url, || {
        tracing::info!("waiting for another pull of {url} to finish")
    })?;
    // The pull we waited for may have stored it.
    let existing = stored_cloud_image(ctx, url, &dirs)?;
    if !force && let Some(image) = existing {
        return Ok(up_to_date(image));
    }
    let op = Op::ImagePull {
        digest: None,
        url: Some(url.to_string()),
    };
    ctx.with_intent(&op, url, |ctx, _| {
        let fetched = cloud::pull::fetch(&dirs, url, force, ctx.config().pull_conns, progress)?;
        crate::failpoint::hit("image.pull.fetched")?;
        let image = match existing {
            // Same content under the same URL: the record stands as is.
            Some(image) if image.id == fetched.stored.digest => image,
            _ => image_record::cloud(ctx, url, &fetched.stored)?,
        };
        crate::failpoint::hit("image.pull.recorded")?;
        Ok(CloudPullOutcome {
            image,
            up_to_date: false,
            fetched: Some(fetched),
        })
    })
}

/// The cloud image recorded under `name`, if its blob is present.
fn stored_cloud_image(ctx: &mut Ctx, name: &str, dirs: &ImageDirs) -> Result<Option<Image>> {
    Ok(ctx.store().list_images()?.into_iter().find(|i| {
        i.name == name && i.kind == ImageType::Cloudimg && cloud::blob_path(dirs, &i.id).is_file()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_cloud_images_and_the_rest_registry_references() {
        assert_eq!(Source::of("https://example.test/a.img"), Source::Url);
        assert_eq!(Source::of("http://127.0.0.1:8080/a.qcow2"), Source::Url);
        assert_eq!(Source::of("ubuntu:24.04"), Source::Registry);
        assert_eq!(Source::of("ghcr.io/a/b@sha256:00"), Source::Registry);
        // A registry host named like a scheme is still a registry.
        assert_eq!(Source::of("https-mirror.test/a"), Source::Registry);
    }
}
