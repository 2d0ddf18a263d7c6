//! `snapshot push SNAP REF`: a snapshot into an OCI registry as a chunked
//! artifact ([`crate::snapshot::chunked`]). Every block the registry already
//! has (a previous push of the same VM, a clone's, a push killed half-way)
//! is found with one HEAD request and not sent again; the manifest goes
//! last, so a push killed before it leaves no tag naming half a snapshot.
//! The registry checks each blob against its digest as it takes it, so a
//! snapshot file changed on disk since it was summed fails the push.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use oci_client::{Client, Reference, RegistryOperation};

use crate::context::Ctx;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::oci::{self, RegistryOptions, within};
use crate::model::Snapshot;
use crate::snapshot::chunked::{self, ChunkIndex, Descriptor};
use crate::snapshot::manifest::{HASH_BLOCK, Manifest, block_digests, tree_root};
use crate::snapshot::{MANIFEST, SnapshotError};

/// Progress of a transfer, in bytes of block data.
pub trait TransferProgress: Send + Sync {
    /// `total`: the data bytes of every distinct block.
    fn begin(&self, _reference: &str, _total: u64) {}
    /// A block is in place (sent, found in the registry, or fetched).
    fn advance(&self, _bytes: u64) {}
}

pub struct NoTransferProgress;
impl TransferProgress for NoTransferProgress {}

/// How a snapshot is laid out in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// 4 MiB blocks, each sent once ([`chunked`]): this engine's own.
    #[default]
    Chunked,
    /// One blob per file, as upstream's epoch pushes (and epoch and
    /// vk-cocoon pull): `snapshot_push_whole`.
    Whole,
}

impl Layout {
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Chunked => "chunked",
            Layout::Whole => "whole",
        }
    }
}

/// What a push did.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub snapshot: Snapshot,
    /// The reference pushed to, normalised.
    pub reference: String,
    /// The artifact manifest's digest.
    pub digest: Digest,
    pub layout: Layout,
    /// Distinct non-zero blocks of the snapshot (whole layout: its files),
    /// and their data bytes.
    pub blocks: usize,
    pub bytes: u64,
    /// Blocks (and bytes) sent by this push: the rest were in the registry.
    pub sent_blocks: usize,
    pub sent_bytes: u64,
}

/// Where one distinct block is read from.
#[derive(Debug, Clone)]
struct Source {
    path: PathBuf,
    offset: u64,
    len: u64,
}

/// The snapshot cut into blocks: the index and where each block is.
struct Plan {
    index: ChunkIndex,
    blocks: BTreeMap<Digest, Source>,
}

pub(crate) fn run(
    ctx: &mut Ctx,
    snapshot_ref: &str,
    reference: &str,
    layout: Layout,
    progress: &dyn TransferProgress,
) -> Result<Pushed> {
    let parsed = oci::parse_reference(reference)?;
    let snapshot = ctx.store().resolve_snapshot(snapshot_ref)?;
    super::snapshot_check::ensure_sealed(&snapshot)?;
    let manifest = super::snapshot_check::load_manifest(&snapshot, false)?;
    match layout {
        Layout::Chunked => push_chunked(ctx, snapshot, &manifest, &parsed, progress),
        Layout::Whole => super::snapshot_push_whole::run(ctx, snapshot, &parsed, progress),
    }
}

fn push_chunked(
    ctx: &mut Ctx,
    snapshot: Snapshot,
    manifest: &Manifest,
    parsed: &Reference,
    progress: &dyn TransferProgress,
) -> Result<Pushed> {
    let cocoon_json = std::fs::read(snapshot.data_dir.join(MANIFEST))
        .map_err(|e| Error::io(format!("cannot read snapshot {}", snapshot.id), e))?;
    let plan = plan(&snapshot, manifest)?;
    let options = RegistryOptions::from_config(ctx.config());
    let parallel = transfers(ctx);
    let config = config_blob(&snapshot);
    let bytes = plan.blocks.values().map(|s| s.len).sum();
    progress.begin(&parsed.whole(), bytes);
    let (digest, sent_blocks, sent_bytes) = ctx.block_on_parallel(async |_| {
        let client = Arc::new(push_client(&options, parsed));
        let auth = options.auth(parsed.resolve_registry())?;
        within(
            parsed,
            &options.limits,
            "authenticating",
            client.auth(parsed, &auth, RegistryOperation::Push),
        )
        .await?
        .map_err(|e| push_error(parsed, "authenticating", e))?;
        let (sent_blocks, sent_bytes) =
            upload_blocks(&client, parsed, &options, &plan.blocks, parallel, progress).await?;
        // Killed here, the registry has every block and no tag names them.
        crate::failpoint::hit("snapshot.push.blocks")?;
        let index = serde_json::to_vec(&plan.index).expect("index serialises");
        let layers = [
            (chunked::MANIFEST_MEDIA_TYPE, cocoon_json, Some(MANIFEST)),
            (chunked::INDEX_MEDIA_TYPE, index, None),
        ];
        let mut descriptors = Vec::new();
        for (media_type, body, title) in layers {
            let d = upload_small(&client, parsed, &options, media_type, body).await?;
            descriptors.push(match title {
                Some(title) => d.titled(title),
                None => d,
            });
        }
        descriptors.extend(plan.blocks.iter().map(|(digest, source)| {
            Descriptor::new(chunked::CHUNK_MEDIA_TYPE, digest.clone(), source.len)
        }));
        let digest = push_manifest(
            &client,
            parsed,
            &options,
            &snapshot,
            Layout::Chunked,
            config,
            descriptors,
        )
        .await?;
        Ok((digest, sent_blocks, sent_bytes))
    })?;
    Ok(Pushed {
        reference: parsed.whole(),
        digest,
        layout: Layout::Chunked,
        blocks: plan.blocks.len(),
        bytes,
        sent_blocks,
        sent_bytes,
        snapshot,
    })
}

/// Transfers at once: `pull_conns` (the network, not the CPU, bounds a
/// transfer).
pub(crate) fn transfers(ctx: &Ctx) -> usize {
    ctx.config().pull_conns
}

/// Each file's blocks summed again (verifying the file against
/// `cocoon.json` on the way), and the first place each distinct block is.
fn plan(snapshot: &Snapshot, manifest: &Manifest) -> Result<Plan> {
    let damaged = |reason: String| -> Error {
        SnapshotError::Damaged {
            id: snapshot.id.clone(),
            reason,
        }
        .into()
    };
    let mut index = ChunkIndex {
        version: 1,
        block_size: HASH_BLOCK,
        files: BTreeMap::new(),
    };
    let mut blocks = BTreeMap::new();
    for (name, sum) in &manifest.files {
        let path = snapshot.data_dir.join(name);
        let (size, digests) =
            block_digests(&path).map_err(|e| damaged(format!("cannot read {name}: {e}")))?;
        if size != sum.size || sum.sha256.as_deref() != Some(tree_root(&digests).as_str()) {
            return Err(damaged(format!("{name} no longer matches its checksum")));
        }
        let file = chunked::file_chunks(size, &digests);
        for (i, digest) in &file.chunks {
            blocks.entry(digest.clone()).or_insert_with(|| Source {
                path: path.clone(),
                offset: i * HASH_BLOCK,
                len: chunked::block_len(size, *i),
            });
        }
        index.files.insert(name.clone(), file);
    }
    Ok(Plan { index, blocks })
}

/// Upstream's snapshot config blob (epoch's `SnapshotConfig`): what a
/// registry browser shows about the snapshot.
fn config_blob(snapshot: &Snapshot) -> Vec<u8> {
    let config = serde_json::json!({
        "schemaVersion": "v1",
        "snapshotId": snapshot.id,
        "description": snapshot.description,
        "image": snapshot.image,
        "imageDigest": snapshot.image_digest,
        "imageType": snapshot.image_type,
        "hypervisor": snapshot.hypervisor,
        "cpu": snapshot.cpu,
        "memory": snapshot.memory,
        "storage": snapshot.storage,
        "nics": snapshot.nics,
        "network": snapshot.network,
        "windows": snapshot.windows,
        "createdAt": snapshot.created_at,
    });
    serde_json::to_vec(&config).expect("config serialises")
}

/// Monolithic uploads (one POST and one PUT per blob): blocks are at most
/// 4 MiB, where chunked uploads only add round trips.
pub(super) fn push_client(options: &RegistryOptions, reference: &Reference) -> Client {
    Client::new(oci_client::client::ClientConfig {
        use_monolithic_push: true,
        ..options.client_config(reference)
    })
}

pub(crate) fn push_error(
    reference: &Reference,
    what: &str,
    e: oci_client::errors::OciDistributionError,
) -> Error {
    Error::Invalid(format!("cannot push to {}: {what}: {e}", reference.whole()))
}

/// Sends every block the registry lacks, `parallel` at once; returns how
/// many blocks and bytes were sent.
async fn upload_blocks(
    client: &Arc<Client>,
    reference: &Reference,
    options: &RegistryOptions,
    blocks: &BTreeMap<Digest, Source>,
    parallel: usize,
    progress: &dyn TransferProgress,
) -> Result<(usize, u64)> {
    use futures_util::StreamExt;
    let work = futures_util::stream::iter(blocks.iter()).map(|(digest, source)| async move {
        let present = blob_exists(client, reference, options, digest).await?;
        if !present {
            let data = read_block(source).await?;
            within(
                reference,
                &options.limits,
                "sending a block",
                client.push_blob(reference, data, digest.as_str()),
            )
            .await?
            .map_err(|e| push_error(reference, &format!("sending block {digest}"), e))?;
        }
        progress.advance(source.len);
        Ok::<_, Error>((!present).then_some(source.len))
    });
    let mut work = std::pin::pin!(work.buffer_unordered(parallel));
    let (mut sent, mut sent_bytes) = (0, 0);
    while let Some(done) = work.next().await {
        if let Some(len) = done? {
            sent += 1;
            sent_bytes += len;
        }
    }
    Ok((sent, sent_bytes))
}

pub(super) async fn blob_exists(
    client: &Client,
    reference: &Reference,
    options: &RegistryOptions,
    digest: &Digest,
) -> Result<bool> {
    within(
        reference,
        &options.limits,
        "looking for a block",
        client.blob_exists(reference, digest.as_str()),
    )
    .await?
    .map_err(|e| push_error(reference, &format!("looking for blob {digest}"), e))
}

async fn read_block(source: &Source) -> Result<Vec<u8>> {
    let source = source.clone();
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::open(&source.path)?;
        let mut data = vec![0u8; usize::try_from(source.len).expect("at most one block")];
        file.read_exact_at(&mut data, source.offset)?;
        Ok(data)
    })
    .await
    .expect("read task")
    .map_err(|e: std::io::Error| Error::io("cannot read a snapshot block", e))
}

/// A small blob (manifest, index, config) sent unless present.
pub(super) async fn upload_small(
    client: &Client,
    reference: &Reference,
    options: &RegistryOptions,
    media_type: &str,
    body: Vec<u8>,
) -> Result<Descriptor> {
    use sha2::Digest as _;
    let digest = Digest::of(sha2::Sha256::new_with_prefix(&body));
    let size = body.len() as u64;
    if !blob_exists(client, reference, options, &digest).await? {
        within(
            reference,
            &options.limits,
            "sending a blob",
            client.push_blob(reference, body, digest.as_str()),
        )
        .await?
        .map_err(|e| push_error(reference, &format!("sending {media_type}"), e))?;
    }
    Ok(Descriptor::new(media_type, digest, size))
}

/// Sends the config blob (`config`, the artifact's config body), then the
/// manifest naming it and `layers`; last, so a killed push leaves no tag.
pub(super) async fn push_manifest(
    client: &Client,
    reference: &Reference,
    options: &RegistryOptions,
    snapshot: &Snapshot,
    layout: Layout,
    config: Vec<u8>,
    layers: Vec<Descriptor>,
) -> Result<Digest> {
    use sha2::Digest as _;
    let config = upload_small(
        client,
        reference,
        options,
        chunked::CONFIG_MEDIA_TYPE,
        config,
    )
    .await?;
    let mut annotations = BTreeMap::from([
        (chunked::ANNOTATION_ID.to_string(), snapshot.id.clone()),
        (
            chunked::ANNOTATION_CREATED.to_string(),
            snapshot.created_at.to_string(),
        ),
    ]);
    if !snapshot.image.is_empty() {
        annotations.insert(
            chunked::ANNOTATION_BASE_IMAGE.to_string(),
            snapshot.image.clone(),
        );
    }
    let artifact = chunked::ArtifactManifest {
        schema_version: 2,
        media_type: chunked::OCI_MANIFEST.to_string(),
        artifact_type: match layout {
            Layout::Chunked => chunked::ARTIFACT_TYPE,
            Layout::Whole => chunked::UPSTREAM_ARTIFACT_TYPE,
        }
        .to_string(),
        config,
        layers,
        annotations,
    };
    let body = serde_json::to_vec(&artifact).expect("manifest serialises");
    if body.len() as u64 > chunked::MAX_MANIFEST_BYTES {
        return Err(Error::Invalid(format!(
            "cannot push snapshot {}: its manifest would be {} bytes, more than registries take ({})",
            snapshot.id,
            body.len(),
            chunked::MAX_MANIFEST_BYTES
        )));
    }
    let digest = Digest::of(sha2::Sha256::new_with_prefix(&body));
    within(
        reference,
        &options.limits,
        "sending the manifest",
        client.push_manifest_raw(
            reference,
            body,
            reqwest::header::HeaderValue::from_static(chunked::OCI_MANIFEST),
        ),
    )
    .await?
    .map_err(|e| push_error(reference, "sending the manifest", e))?;
    Ok(digest)
}
