//! The layer side of a pull: every layer not yet in the store fetched in
//! parallel, each under its own lock, streamed to disk with its size and
//! digest checked, then unpacked and committed as an EROFS disk.

use std::io;
use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt;
use oci_client::{Client, Reference};

use super::error::{http_error, io_err};
use super::registry::{authenticate, within};
use super::{LayerDescriptor, PullError, PullLimits, PullProgress, PulledLayer, RegistryOptions};
use crate::digest::Digest;
use crate::image::commit;
use crate::image::layer;
use crate::image::limits::{self, Bounded};
use crate::image::store::ImageDirs;
use crate::lock::BlobLock;

/// Fetches and converts every layer not already in the store.
pub async fn pull_layers(
    reference: &Reference,
    layers: Vec<LayerDescriptor>,
    dirs: &ImageDirs,
    options: &RegistryOptions,
    pool_size: usize,
    progress: &dyn PullProgress,
) -> Result<Vec<PulledLayer>, PullError> {
    dirs.create().map_err(io_err("cannot create", &dirs.root))?;
    let client = Arc::new(options.client(reference));
    let auth = options.auth(reference.resolve_registry())?;
    // The token exchange happens once, before the parallel blob fetches.
    authenticate(&client, reference, &auth, &options.limits).await?;
    let permits = Arc::new(tokio::sync::Semaphore::new(pool_size.max(1)));
    let total = layers.len();
    let mut tasks = tokio::task::JoinSet::new();
    for (index, descriptor) in layers.into_iter().enumerate() {
        let (client, permits, dirs, reference, limits) = (
            client.clone(),
            permits.clone(),
            dirs.clone(),
            reference.clone(),
            options.limits.clone(),
        );
        tasks.spawn(async move {
            // A closed semaphore means another layer failed: do not start this one.
            let Ok(_permit) = permits.acquire_owned().await else {
                return Err(PullError::Cancelled {
                    reference: reference.whole(),
                });
            };
            let layer = ensure_layer(&client, &reference, &descriptor, &dirs, &limits).await?;
            Ok::<_, PullError>((index, layer))
        });
    }
    let mut done: Vec<Option<PulledLayer>> = vec![None; total];
    let mut finished = 0;
    let mut first_error = None;
    // Every task runs to its end even after one fails: aborting one mid-way
    // would leave its work directory behind. Completed layers stay cached.
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("layer task does not panic") {
            Ok((index, layer)) => {
                finished += 1;
                progress.layer_done(finished, total, &layer);
                done[index] = Some(layer);
            }
            Err(e) => {
                permits.close();
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(done
        .into_iter()
        .map(|l| l.expect("every layer finished"))
        .collect())
}

/// Makes `blobs/<hex>.erofs` exist for this layer, fetching it only if needed.
async fn ensure_layer(
    client: &Client,
    reference: &Reference,
    layer: &LayerDescriptor,
    dirs: &ImageDirs,
    limits: &PullLimits,
) -> Result<PulledLayer, PullError> {
    let digest = layer.digest.clone();
    // One converter per layer across processes; waiters then find it cached.
    // A stored layer is looked for under the lock too, never before it: gc
    // removes unpinned layers under the same lock once it has seen no pull
    // in flight, so a layer found here stays until this pull records it.
    let lock = {
        let (dirs, digest) = (dirs.clone(), digest.clone());
        tokio::task::spawn_blocking(move || BlobLock::acquire(&dirs, &digest))
    }
    .await
    .expect("lock task")
    .map_err(io_err("cannot lock", &dirs.lock(&digest)))?;
    if let Some(layer) = cached(dirs, &digest) {
        return Ok(layer);
    }
    let work = dirs.work(&digest);
    // Only a dead process can have left this behind: we hold the layer lock.
    match std::fs::remove_dir_all(&work) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(PullError::Io {
                what: "cannot clean",
                path: work,
                source: e,
            });
        }
    }
    let size = u64::try_from(layer.descriptor.size).map_err(|_| PullError::BadManifest {
        reference: reference.whole(),
        reason: format!(
            "layer {digest} has a negative size ({})",
            layer.descriptor.size
        ),
    })?;
    limits::require_space(&dirs.root, &format!("layer {digest}"), size).map_err(|source| {
        PullError::Limit {
            reference: reference.whole(),
            source,
        }
    })?;
    std::fs::create_dir_all(&work).map_err(io_err("cannot create", &work))?;
    if let Err(e) = fetch_blob(client, reference, layer, size, &work.join("blob"), limits).await {
        let _ = std::fs::remove_dir_all(&work);
        return Err(e);
    }
    let result = {
        let (dirs, digest, reference, max) = (
            dirs.clone(),
            digest.clone(),
            reference.whole(),
            limits.max_layer_bytes,
        );
        tokio::task::spawn_blocking(move || convert(&dirs, &digest, &reference, max))
            .await
            .expect("convert task")
    };
    let _ = std::fs::remove_dir_all(&work);
    drop(lock);
    let mut layer = result?;
    layer.fetched = true;
    Ok(layer)
}

/// Streams one blob to `path`: exactly `size` bytes (the descriptor's), each
/// read waiting at most the read timeout, the digest verified at the end.
async fn fetch_blob(
    client: &Client,
    reference: &Reference,
    layer: &LayerDescriptor,
    size: u64,
    path: &Path,
    limits: &PullLimits,
) -> Result<(), PullError> {
    use tokio::io::AsyncWriteExt;
    let digest = &layer.digest;
    let what = format!("downloading layer {digest}");
    let seconds = limits.read_timeout.as_secs();
    let wrong_size = |got: u64, more: bool| PullError::BlobSize {
        reference: reference.whole(),
        digest: digest.clone(),
        expected: size,
        got,
        more,
    };
    let download = |source| PullError::Download {
        reference: reference.whole(),
        digest: digest.clone(),
        source,
    };
    let mut stream = within(
        reference,
        limits,
        &what,
        client.pull_blob_stream(reference, &layer.descriptor),
    )
    .await?
    .map_err(|e| match e {
        oci_client::errors::OciDistributionError::RequestError(e) => {
            http_error(reference, &what, seconds, &e)
        }
        other => download(other),
    })?;
    if let Some(announced) = stream.content_length
        && announced != size
    {
        return Err(wrong_size(announced, announced > size));
    }
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(io_err("cannot create", path))?;
    let mut got = 0u64;
    // The stream verifies the digest when it ends; a mismatch is an error here.
    while let Some(chunk) = within(reference, limits, &what, stream.next()).await? {
        let chunk = chunk.map_err(|e| {
            let timed_out = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<reqwest::Error>())
                .is_some_and(reqwest::Error::is_timeout);
            if timed_out {
                PullError::Stalled {
                    reference: reference.whole(),
                    what: what.clone(),
                    seconds,
                }
            } else if got != size {
                // Cut short (or a digest that cannot match): the size says more.
                wrong_size(got, false)
            } else {
                download(e.into())
            }
        })?;
        got += chunk.len() as u64;
        if got > size {
            return Err(wrong_size(got, true));
        }
        file.write_all(&chunk)
            .await
            .map_err(io_err("cannot write", path))?;
    }
    if got != size {
        return Err(wrong_size(got, false));
    }
    file.flush().await.map_err(io_err("cannot write", path))?;
    Ok(())
}

fn cached(dirs: &ImageDirs, digest: &Digest) -> Option<PulledLayer> {
    let meta = std::fs::metadata(dirs.blob(digest)).ok()?;
    Some(PulledLayer {
        digest: digest.clone(),
        erofs_size: meta.len(),
        has_kernel: dirs.kernel(digest).is_file(),
        has_initrd: dirs.initrd(digest).is_file(),
        fetched: false,
    })
}

/// blob → tree → EROFS, boot files set aside, committed by the final rename.
fn convert(
    dirs: &ImageDirs,
    digest: &Digest,
    reference: &str,
    max_layer_bytes: u64,
) -> Result<PulledLayer, PullError> {
    let work = dirs.work(digest);
    let tree = work.join("tree");
    std::fs::create_dir(&tree).map_err(io_err("cannot create", &tree))?;
    let reader = layer::open_decompressed(&work.join("blob"))
        .map_err(io_err("cannot read", &work.join("blob")))?;
    let reader = Bounded::new(
        reader,
        max_layer_bytes,
        &dirs.root,
        &format!("layer {digest}"),
    );
    let failure = reader.failure();
    let unpacked =
        layer::unpack(reader, &tree).map_err(|source| match limits::take_failure(&failure) {
            Some(source) => PullError::Limit {
                reference: reference.to_string(),
                source,
            },
            None => PullError::Layer {
                reference: reference.to_string(),
                digest: digest.clone(),
                source,
            },
        })?;
    let size = commit::commit_layer(dirs, digest, &work, &tree, &unpacked).map_err(|source| {
        PullError::Commit {
            reference: reference.to_string(),
            digest: digest.clone(),
            source,
        }
    })?;
    tracing::debug!(layer = digest.hex(), size, "layer converted");
    Ok(PulledLayer {
        digest: digest.clone(),
        erofs_size: size,
        has_kernel: unpacked.kernel.is_some(),
        has_initrd: unpacked.initrd.is_some(),
        fetched: true,
    })
}
