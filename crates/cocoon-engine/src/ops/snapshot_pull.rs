//! `snapshot pull REF`: a chunked snapshot artifact (`snapshot push`) from
//! an OCI registry into the snapshot store (upstream's whole-file layout:
//! `snapshot_pull_whole`).
//!
//! Nothing from the registry is trusted: the manifest, `cocoon.json` and the
//! chunk index are read bounded and checked against their digests, the
//! index against `cocoon.json` ([`chunked::check`]), and every block against
//! its digest as it arrives and again as it is written into place. Blocks
//! land in `<root_dir>/pulls/<manifest>/`, each renamed into place once
//! whole and verified, so a pull killed half-way and run again fetches only
//! the blocks it lacks. The snapshot is then assembled and verified in
//! `snapshot import`'s hidden staging directory and recorded as an import
//! is; nothing is visible before every block is in place.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use oci_client::{Client, Reference};

use crate::context::Ctx;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::oci::{self, ManifestFetcher, RegistryOptions};
use crate::lock::create_private_dir;
use crate::model::Snapshot;
use crate::name::SnapshotName;
use crate::snapshot::chunked::{self, ArtifactManifest, ChunkIndex, Fetch};
use crate::snapshot::manifest::{HASH_BLOCK, Manifest};
use crate::snapshot::{SnapshotError, archive};

use super::snapshot_push::TransferProgress;

/// What a pull did.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub snapshot: Snapshot,
    pub reference: String,
    pub digest: Digest,
    /// Distinct blocks of the snapshot and their bytes.
    pub blocks: usize,
    pub bytes: u64,
    /// Blocks (and bytes) fetched by this run: the rest were on disk from a
    /// pull that was interrupted.
    pub fetched_blocks: usize,
    pub fetched_bytes: u64,
    /// The VM the snapshot was taken from, as its `cocoon.json` says (on
    /// the host that took it): `vm restore --pull` checks it.
    pub source_vm: Option<String>,
}

/// The artifact, read and checked.
struct Remote {
    digest: Digest,
    cocoon_json: serde_json::Value,
    index: ChunkIndex,
    fetch: Fetch,
}

pub(super) fn refused(reference: &Reference, reason: impl std::fmt::Display) -> Error {
    SnapshotError::Manifest(format!("{}: {reason}", reference.whole())).into()
}

/// How the pulled snapshot is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming<'a> {
    /// `--name`, else the name it had.
    Named(Option<&'a SnapshotName>),
    /// No name (`vm clone --pull REF`: used once, then removed).
    Anonymous,
}

pub(crate) fn run(
    ctx: &mut Ctx,
    reference: &str,
    naming: Naming<'_>,
    progress: &dyn TransferProgress,
) -> Result<Pulled> {
    let name = match naming {
        Naming::Named(name) => name,
        Naming::Anonymous => None,
    };
    let parsed = oci::parse_reference(reference)?;
    let options = RegistryOptions::from_config(ctx.config());
    let parallel = super::snapshot_push::transfers(ctx);
    let client = options.client(&parsed);
    let remote =
        match ctx.block_on_parallel(async |_| read_artifact(&client, &parsed, &options).await)? {
            Artifact::Chunked(remote) => remote,
            Artifact::Whole(remote) => {
                return super::snapshot_pull_whole::run(
                    ctx, &client, &parsed, &options, remote, naming, progress,
                );
            }
        };
    let cache = ctx.layout.snapshot_pull(&remote.digest);
    let lock =
        lock_cache(&cache).map_err(|e| Error::io(format!("cannot lock {}", cache.display()), e))?;
    let bytes = remote.fetch.blocks.values().sum();
    progress.begin(&parsed.whole(), bytes);
    let fetched = ctx.block_on_parallel(async |_| {
        let fetch = &remote.fetch;
        fetch_blocks(
            &client, &parsed, &options, fetch, &cache, parallel, progress,
        )
        .await
    });
    // A transfer that failed keeps its blocks for the next run; a refused
    // block means the artifact is bad: what came with it goes too.
    let (fresh, fetched_bytes) = match fetched {
        Err(e @ Error::Snapshot(_)) => return Err(drop_cache(&cache, lock, e)),
        other => other?,
    };
    crate::failpoint::hit("snapshot.pull.fetched")?;
    let snapshot = super::snapshot_import::import_with(ctx, name, None, |staging| {
        assemble(&remote.index, &cache, &fresh, staging).map_err(|e| refused(&parsed, e))?;
        let mut manifest = remote.cocoon_json.clone();
        if naming == Naming::Anonymous
            && let Some(snapshot) = manifest.get_mut("snapshot").and_then(|s| s.as_object_mut())
        {
            snapshot.remove("name");
        }
        Ok(archive::Imported {
            manifest,
            legacy: false,
        })
    });
    let snapshot = drop_cache(&cache, lock, snapshot)?;
    Ok(Pulled {
        snapshot,
        reference: parsed.whole(),
        digest: remote.digest,
        blocks: remote.fetch.blocks.len(),
        bytes,
        fetched_blocks: fresh.len(),
        fetched_bytes,
        source_vm: remote.cocoon_json["snapshot"]["vm_id"]
            .as_str()
            .map(str::to_string),
    })
}

/// Makes `cache` and takes its lock: one pull of an artifact at a time; a
/// second waits, then finds the blocks. A pull that finished removed the
/// directory (lock file included) before letting go: the waiter then holds
/// a lock on a file no longer there, and starts over with a new one.
pub(super) fn lock_cache(cache: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::MetadataExt;
    let path = cache.join(".lock");
    loop {
        create_private_dir(cache)?;
        let file = crate::image::store::open_lock_file(&path)?;
        file.lock()?;
        let (held, now) = (file.metadata()?, std::fs::metadata(&path));
        if now.is_ok_and(|now| now.ino() == held.ino() && now.dev() == held.dev()) {
            return Ok(file);
        }
    }
}

/// Removes the block cache (then its lock), passing `result` through.
pub(super) fn drop_cache<T>(cache: &Path, lock: File, result: T) -> T {
    if let Err(e) = std::fs::remove_dir_all(cache) {
        tracing::warn!("cannot remove {}: {e}", cache.display());
    }
    drop(lock);
    result
}

/// A snapshot artifact in one layout or the other.
enum Artifact {
    Chunked(Remote),
    Whole(super::snapshot_pull_whole::Remote),
}

/// The manifest, then (chunked) `cocoon.json` and the index, each bounded
/// and checked, or (whole) the config blob.
async fn read_artifact(
    client: &Client,
    reference: &Reference,
    options: &RegistryOptions,
) -> Result<Artifact> {
    let fetcher = ManifestFetcher::new(client, reference, options).await?;
    let pinned = match reference.digest() {
        Some(d) => Some(Digest::parse(d).map_err(|e| refused(reference, e))?),
        None => None,
    };
    let name = match &pinned {
        Some(d) => d.to_string(),
        None => reference.tag().unwrap_or("latest").to_string(),
    };
    let (body, digest) = fetcher.fetch(&name, pinned.as_ref()).await?;
    let artifact: ArtifactManifest = serde_json::from_slice(&body)
        .map_err(|e| refused(reference, format!("not an artifact manifest: {e}")))?;
    if artifact.artifact_type == chunked::UPSTREAM_ARTIFACT_TYPE {
        if artifact.config.media_type != chunked::CONFIG_MEDIA_TYPE {
            return Err(refused(
                reference,
                format!(
                    "unexpected config media type {:?}",
                    artifact.config.media_type
                ),
            ));
        }
        let config = fetcher.fetch_config(&artifact.config.digest).await?;
        return Ok(Artifact::Whole(super::snapshot_pull_whole::Remote {
            digest,
            artifact,
            config,
        }));
    }
    let (manifest_layer, index_layer) =
        chunked::check_layers(&artifact).map_err(|e| refused(reference, e))?;
    let cocoon_json = fetcher.fetch_config(&manifest_layer.digest).await?;
    let index = fetcher.fetch_config(&index_layer.digest).await?;
    let cocoon_json: serde_json::Value = serde_json::from_slice(&cocoon_json)
        .map_err(|e| refused(reference, format!("cocoon.json: {e}")))?;
    let manifest: Manifest = serde_json::from_value(cocoon_json.clone())
        .map_err(|e| refused(reference, format!("cocoon.json: {e}")))?;
    let index: ChunkIndex = serde_json::from_slice(&index)
        .map_err(|e| refused(reference, format!("chunk index: {e}")))?;
    let fetch = chunked::check(&index, &manifest, &artifact).map_err(|e| refused(reference, e))?;
    Ok(Artifact::Chunked(Remote {
        digest,
        cocoon_json,
        index,
        fetch,
    }))
}

fn block_path(cache: &Path, digest: &Digest) -> PathBuf {
    cache.join(digest.hex())
}

/// Fetches every block not yet in `cache`, `parallel` at once; returns the
/// blocks fetched by this run and their bytes.
async fn fetch_blocks(
    client: &Client,
    reference: &Reference,
    options: &RegistryOptions,
    fetch: &Fetch,
    cache: &Path,
    parallel: usize,
    progress: &dyn TransferProgress,
) -> Result<(BTreeSet<Digest>, u64)> {
    let work = futures_util::stream::iter(fetch.blocks.iter()).map(|(digest, len)| async move {
        let path = block_path(cache, digest);
        let have = std::fs::metadata(&path).is_ok_and(|m| m.len() == *len);
        if !have {
            super::blob_fetch::fetch(client, reference, options, digest, *len, &path)
                .await
                .map_err(|e| e.into_error(|reason| refused(reference, reason)))?;
        }
        progress.advance(*len);
        Ok::<_, Error>((!have).then_some((digest, *len)))
    });
    let mut work = std::pin::pin!(work.buffer_unordered(parallel));
    let mut fresh = BTreeSet::new();
    let mut bytes = 0;
    while let Some(done) = work.next().await {
        if let Some((digest, len)) = done? {
            fresh.insert(digest.clone());
            bytes += len;
        }
    }
    Ok((fresh, bytes))
}

/// Writes each file of `index` into `staging` from the fetched blocks. A
/// block an earlier, interrupted run left is verified again (the cache is a
/// directory on disk, not proof, and was not synced); one this run fetched
/// and checked is not hashed twice.
fn assemble(
    index: &ChunkIndex,
    cache: &Path,
    fresh: &BTreeSet<Digest>,
    staging: &Path,
) -> std::result::Result<(), String> {
    use sha2::Digest as _;
    use std::os::unix::fs::FileExt;
    for (name, file) in &index.files {
        let path = staging.join(name);
        let out = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| format!("cannot create {name}: {e}"))?;
        out.set_len(file.size)
            .map_err(|e| format!("cannot size {name}: {e}"))?;
        for (i, digest) in &file.chunks {
            let data = std::fs::read(block_path(cache, digest))
                .map_err(|e| format!("block {digest} of {name}: {e}"))?;
            if !fresh.contains(digest)
                && Digest::of(sha2::Sha256::new_with_prefix(&data)) != *digest
            {
                return Err(format!(
                    "block {digest} of {name} changed on disk after it was fetched"
                ));
            }
            out.write_all_at(&data, i * HASH_BLOCK)
                .map_err(|e| format!("cannot write {name}: {e}"))?;
        }
        out.sync_all()
            .map_err(|e| format!("cannot write {name}: {e}"))?;
    }
    Ok(())
}
