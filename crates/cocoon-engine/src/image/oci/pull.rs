//! The layer side of a pull: every layer not yet in the store fetched in
//! parallel, each under its own lock, streamed from the socket through the
//! size and digest checks and the decompressor into the unpacker (no blob on
//! disk), then committed as an EROFS disk once the digest is verified.

use std::io;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use oci_client::{Client, Reference};

use super::error::io_err;
use super::registry::authenticate;
use super::stream::{self, ChannelReader, Fetch};
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
    let permits = Arc::new(Semaphore::new(pool_size.max(1)));
    let builds = Arc::new(Semaphore::new(pool_size.max(1)));
    let total = layers.len();
    let mut tasks = tokio::task::JoinSet::new();
    for (index, descriptor) in layers.into_iter().enumerate() {
        let (client, permits, builds, dirs, reference, limits) = (
            client.clone(),
            permits.clone(),
            builds.clone(),
            dirs.clone(),
            reference.clone(),
            options.limits.clone(),
        );
        tasks.spawn(async move {
            // A closed semaphore means another layer failed: do not start this one.
            let Ok(fetch) = permits.acquire_owned().await else {
                return Err(PullError::Cancelled {
                    reference: reference.whole(),
                });
            };
            let turn = Turn { fetch, builds };
            let layer =
                ensure_layer(&client, &reference, &descriptor, &dirs, &limits, turn).await?;
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

/// A layer's turn: its fetch permit, given back once its blob is unpacked,
/// and the semaphore its EROFS build then waits on, so that one layer's
/// build runs while the next one downloads.
struct Turn {
    fetch: OwnedSemaphorePermit,
    builds: Arc<Semaphore>,
}

/// Makes `blobs/<hex>.erofs` exist for this layer, fetching it only if needed.
async fn ensure_layer(
    client: &Client,
    reference: &Reference,
    layer: &LayerDescriptor,
    dirs: &ImageDirs,
    limits: &PullLimits,
    turn: Turn,
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
    let result = fetch_and_convert(client, reference, layer, size, dirs, limits, turn).await;
    let _ = std::fs::remove_dir_all(&work);
    drop(lock);
    result
}

/// Download → digest → decompress → unpack into `work/tree`, all at once,
/// then the EROFS build and the commit, only once the whole blob arrived
/// with its size and digest verified.
async fn fetch_and_convert(
    client: &Client,
    reference: &Reference,
    layer: &LayerDescriptor,
    size: u64,
    dirs: &ImageDirs,
    limits: &PullLimits,
    turn: Turn,
) -> Result<PulledLayer, PullError> {
    let digest = layer.digest.clone();
    let work = dirs.work(&digest);
    let tree = work.join("tree");
    std::fs::create_dir(&tree).map_err(io_err("cannot create", &tree))?;
    let (sender, receiver) = tokio::sync::mpsc::channel(stream::CHUNKS_IN_FLIGHT);
    let unpacking = {
        let (dirs, digest, tree) = (dirs.clone(), digest.clone(), tree.clone());
        let (name, max) = (reference.whole(), limits.max_layer_bytes);
        tokio::task::spawn_blocking(move || {
            let source = ChannelReader::new(receiver);
            unpack_stream(source, &tree, &dirs, &digest, &name, max)
        })
    };
    let fetched = stream::download(client, reference, layer, size, limits, sender).await;
    let unpacked = unpacking.await.expect("unpack task");
    // A failed download explains whatever the unpacker then made of its
    // stream; an unpacker that failed on its own abandoned the download.
    let unpacked = match (fetched, unpacked) {
        (Ok(()), Ok(unpacked)) => unpacked,
        (Err(Fetch::Failed(e)), _) | (_, Err(e)) => return Err(e),
        // The unpacker reads its stream to the end, which comes only after
        // the whole download: a layer unpacked from a download cut short is
        // never committed, whatever made that happen.
        (Err(Fetch::Abandoned), Ok(_)) => {
            return Err(PullError::Layer {
                reference: reference.whole(),
                digest,
                source: layer::LayerError::Corrupt(io::Error::other(
                    "the unpacker finished before the download did",
                )),
            });
        }
    };
    drop(turn.fetch);
    // Never closed: a failed layer stops new fetches, not builds under way.
    let _build = turn.builds.acquire().await;
    let size = {
        let (dirs, digest) = (dirs.clone(), digest.clone());
        tokio::task::spawn_blocking(move || {
            commit::commit_layer(&dirs, &digest, &work, &tree, &unpacked).map(|s| (s, unpacked))
        })
        .await
        .expect("commit task")
    };
    let (size, unpacked) = size.map_err(|source| PullError::Commit {
        reference: reference.whole(),
        digest: digest.clone(),
        source,
    })?;
    tracing::debug!(layer = digest.hex(), size, "layer converted");
    Ok(PulledLayer {
        digest,
        erofs_size: size,
        has_kernel: unpacked.kernel.is_some(),
        has_initrd: unpacked.initrd.is_some(),
        fetched: true,
    })
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

/// The blocking half: the downloaded stream decompressed (bounded by
/// `max_layer_bytes` and free space) and unpacked into `tree`, then read to
/// its verified end.
fn unpack_stream(
    mut source: ChannelReader,
    tree: &Path,
    dirs: &ImageDirs,
    digest: &Digest,
    reference: &str,
    max_layer_bytes: u64,
) -> Result<layer::Unpacked, PullError> {
    let corrupt = |source| PullError::Layer {
        reference: reference.to_string(),
        digest: digest.clone(),
        source: layer::LayerError::Corrupt(source),
    };
    let reader = layer::decompressed(&mut source).map_err(corrupt)?;
    let reader = Bounded::new(
        reader,
        max_layer_bytes,
        &dirs.root,
        &format!("layer {digest}"),
    );
    let failure = reader.failure();
    let unpacked =
        layer::unpack(reader, tree).map_err(|source| match limits::take_failure(&failure) {
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
    source.drain().map_err(corrupt)?;
    Ok(unpacked)
}
