//! `snapshot pull` of upstream's whole-file layout (what epoch pushes, from
//! cocoon (Go) or from this engine, and what `snapshot push --layout
//! whole` writes): each layer's blob is fetched into `<root_dir>/pulls/
//! <manifest>/`, checked against its digest (so a pull run again fetches
//! only what it lacks), then the stream epoch's pull would feed `snapshot
//! import` is rebuilt from them and imported ([`archive::epoch::import`]):
//! every check an import makes applies, and nothing is visible before the
//! whole snapshot passed them.

use std::collections::BTreeMap;
use std::path::Path;

use futures_util::StreamExt;
use oci_client::{Client, Reference};
use serde::Deserialize;

use crate::context::Ctx;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::oci::RegistryOptions;
use crate::snapshot::archive::epoch::{self, Layer};
use crate::snapshot::chunked::{ArtifactManifest, TITLE};

use super::snapshot_pull::{Naming, Pulled, drop_cache, lock_cache, refused};
use super::snapshot_push::TransferProgress;

/// epoch's `SnapshotConfig`, as much as the import stream needs.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Config {
    #[serde(default)]
    snapshot_id: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    image: String,
    #[serde(default)]
    image_digest: String,
    #[serde(default)]
    image_type: String,
    #[serde(default)]
    image_blob_ids: serde_json::Value,
    #[serde(default)]
    hypervisor: String,
    #[serde(default)]
    cpu: u64,
    #[serde(default)]
    memory: u64,
    #[serde(default)]
    storage: u64,
    #[serde(default)]
    nics: u64,
    #[serde(default)]
    network: String,
    #[serde(default)]
    windows: bool,
    #[serde(default)]
    files: BTreeMap<String, FileMeta>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileMeta {
    #[serde(default)]
    mode: u32,
    #[serde(default)]
    sparse_map: String,
    #[serde(default)]
    sparse_size: u64,
}

/// The artifact, its manifest read and checked, its config blob fetched.
pub(super) struct Remote {
    pub digest: Digest,
    pub artifact: ArtifactManifest,
    pub config: Vec<u8>,
}

pub(super) fn run(
    ctx: &mut Ctx,
    client: &Client,
    reference: &Reference,
    options: &RegistryOptions,
    remote: Remote,
    naming: Naming<'_>,
    progress: &dyn TransferProgress,
) -> Result<Pulled> {
    let config: Config = serde_json::from_slice(&remote.config)
        .map_err(|e| refused(reference, format!("the snapshot config blob: {e}")))?;
    let cache = ctx.layout.snapshot_pull(&remote.digest);
    let layers = layers(reference, &remote.artifact, &config, &cache)?;
    let lock =
        lock_cache(&cache).map_err(|e| Error::io(format!("cannot lock {}", cache.display()), e))?;
    let bytes = layers.iter().map(|l| l.len).sum();
    // The blobs, then the files made of them: both on this filesystem at
    // once, until the import is done. Refused before anything is fetched.
    let missing: u64 = distinct(&remote.artifact)
        .filter(|(digest, size)| {
            std::fs::metadata(cache.join(digest.hex())).map_or(true, |m| m.len() != *size)
        })
        .map(|(_, size)| size)
        .sum();
    let need = missing.saturating_add(bytes);
    if let Err(e) = crate::image::limits::require_space(&cache, "the snapshot's blobs", need) {
        let e = Error::Invalid(format!("cannot pull {}: {e}", reference.whole()));
        return Err(drop_cache(&cache, lock, e));
    }
    progress.begin(&reference.whole(), bytes);
    let parallel = super::snapshot_push::transfers(ctx);
    let fetched = ctx.block_on_parallel(async |_| {
        fetch(
            client,
            reference,
            options,
            &remote.artifact,
            &cache,
            parallel,
            progress,
        )
        .await
    });
    let (fetched_blocks, fetched_bytes) = match fetched {
        Err(e @ Error::Snapshot(_)) => return Err(drop_cache(&cache, lock, e)),
        other => other?,
    };
    crate::failpoint::hit("snapshot.pull.fetched")?;
    let envelope = envelope(&config, naming);
    let mut source_vm = None;
    let snapshot = super::snapshot_import::import_with(ctx, name_of(naming), None, |staging| {
        let mut imported = epoch::import(staging, &envelope, &layers, &mut |_| {})
            .map_err(|e| refused(reference, e))?;
        let snapshot = imported.manifest.get_mut("snapshot");
        if let Some(snapshot) = snapshot.and_then(|s| s.as_object_mut()) {
            source_vm = snapshot
                .get("vm_id")
                .and_then(|v| v.as_str())
                .map(str::to_string);
            if naming == Naming::Anonymous && !imported.legacy {
                snapshot.remove("name");
            }
        }
        Ok(imported)
    });
    let snapshot = drop_cache(&cache, lock, snapshot)?;
    Ok(Pulled {
        snapshot,
        reference: reference.whole(),
        digest: remote.digest,
        blocks: layers.len(),
        bytes,
        fetched_blocks,
        fetched_bytes,
        source_vm,
    })
}

/// Each layer as an entry of the import stream: its title, its blob in
/// `cache`, its mode and sparse map from the config blob.
fn layers(
    reference: &Reference,
    artifact: &ArtifactManifest,
    config: &Config,
    cache: &Path,
) -> Result<Vec<Layer>> {
    artifact
        .layers
        .iter()
        .map(|layer| {
            let title = layer.annotations.get(TITLE).ok_or_else(|| {
                refused(reference, format!("layer {} has no title", layer.digest))
            })?;
            let meta = config.files.get(title);
            Ok(Layer {
                name: title.clone(),
                blob: cache.join(layer.digest.hex()),
                len: layer.size,
                mode: meta.map_or(0, |m| m.mode),
                sparse: meta
                    .filter(|m| !m.sparse_map.is_empty())
                    .map(|m| (m.sparse_map.clone(), m.sparse_size)),
            })
        })
        .collect()
}

fn name_of(naming: Naming<'_>) -> Option<&crate::name::SnapshotName> {
    match naming {
        Naming::Named(name) => name,
        Naming::Anonymous => None,
    }
}

/// `snapshot.json` as epoch's pull writes it from the config blob
/// (`snapshot/pull.go`, `writeImportTar`): what a cocoon (Go) snapshot is
/// imported by (this engine's own carry `cocoon.json`, which rules).
fn envelope(config: &Config, naming: Naming<'_>) -> serde_json::Value {
    let mut inner = serde_json::json!({
        "id": config.snapshot_id,
        "description": config.description,
        "image": config.image,
        "image_digest": config.image_digest,
        "image_type": config.image_type,
        "hypervisor": config.hypervisor,
        "cpu": config.cpu,
        "memory": config.memory,
        "storage": config.storage,
        "nics": config.nics,
        "network": config.network,
        "windows": config.windows,
    });
    if !config.image_blob_ids.is_null() {
        inner["image_blob_ids"] = config.image_blob_ids.clone();
    }
    if let Some(name) = name_of(naming) {
        inner["name"] = name.as_str().into();
    }
    serde_json::json!({"version": 1, "config": inner})
}

/// Fetches every layer blob not yet in `cache`, `parallel` at once; one an
/// earlier run left is checked against its digest again (the cache is a
/// directory on disk, not proof). Returns the blobs and bytes fetched.
async fn fetch(
    client: &Client,
    reference: &Reference,
    options: &RegistryOptions,
    artifact: &ArtifactManifest,
    cache: &Path,
    parallel: usize,
    progress: &dyn TransferProgress,
) -> Result<(usize, u64)> {
    let work = futures_util::stream::iter(distinct(artifact)).map(|(digest, size)| async move {
        let path = cache.join(digest.hex());
        let have = std::fs::metadata(&path).is_ok_and(|m| m.len() == size)
            && still_whole(&path, digest).await;
        if !have {
            super::blob_fetch::fetch(client, reference, options, digest, size, &path)
                .await
                .map_err(|e| e.into_error(|reason| refused(reference, reason)))?;
        }
        progress.advance(size);
        Ok::<_, Error>((!have).then_some(size))
    });
    let mut work = std::pin::pin!(work.buffer_unordered(parallel));
    let (mut blobs, mut bytes) = (0, 0);
    while let Some(done) = work.next().await {
        if let Some(len) = done? {
            blobs += 1;
            bytes += len;
        }
    }
    Ok((blobs, bytes))
}

/// Each blob once: two files with the same bytes are one blob.
fn distinct(artifact: &ArtifactManifest) -> impl Iterator<Item = (&Digest, u64)> {
    let blobs: BTreeMap<&Digest, u64> = artifact
        .layers
        .iter()
        .map(|layer| (&layer.digest, layer.size))
        .collect();
    blobs.into_iter()
}

/// Whether a blob left by an earlier run still has its digest.
async fn still_whole(path: &Path, digest: &Digest) -> bool {
    let (path, digest) = (path.to_path_buf(), digest.clone());
    tokio::task::spawn_blocking(move || {
        use sha2::Digest as _;
        use std::io::Read;
        let mut hasher = sha2::Sha256::new();
        let Ok(mut file) = std::fs::File::open(&path) else {
            return false;
        };
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match file.read(&mut buf) {
                Ok(0) => return Digest::of(hasher) == digest,
                Ok(n) => hasher.update(&buf[..n]),
                Err(_) => return false,
            }
        }
    })
    .await
    .unwrap_or(false)
}
