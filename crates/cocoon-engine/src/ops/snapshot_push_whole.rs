//! `snapshot push --layout whole`: upstream's layout (epoch's
//! `snapshot/push.go`), which epoch and vk-cocoon pull: one blob per entry
//! of the export stream ([`archive::epoch`]), titled with the entry's name,
//! sparse files as their data with the map in the config blob. A blob the
//! registry already has (an unchanged file, a push run again) is found with
//! one HEAD and not sent; the manifest goes last.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use oci_client::{Client, Reference, RegistryOperation};

use crate::context::Ctx;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::oci::{RegistryOptions, within};
use crate::model::Snapshot;
use crate::snapshot::archive::ArchiveError;
use crate::snapshot::archive::epoch::{self, Entry};
use crate::snapshot::chunked::Descriptor;

use super::snapshot_push::{
    Layout, Pushed, TransferProgress, blob_exists, push_client, push_error, push_manifest,
};

/// Bytes read from a file per piece of a blob's body.
const PIECE: usize = 1 << 20;

pub(super) fn run(
    ctx: &mut Ctx,
    snapshot: Snapshot,
    parsed: &Reference,
    progress: &dyn TransferProgress,
) -> Result<Pushed> {
    let invalid = |e: &dyn std::fmt::Display| {
        Error::Invalid(format!("cannot push snapshot {}: {e}", snapshot.id))
    };
    let (record, mut entries) = epoch::entries(&snapshot.data_dir).map_err(|e| invalid(&e))?;
    let digests = digests(&mut entries).map_err(|e| invalid(&e))?;
    let options = RegistryOptions::from_config(ctx.config());
    let parallel = super::snapshot_push::transfers(ctx);
    let bytes = entries.iter().map(Entry::blob_len).sum();
    progress.begin(&parsed.whole(), bytes);
    let config = config_blob(&snapshot, record, &entries);
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
        let blobs = entries.iter().zip(&digests);
        let work = futures_util::stream::iter(blobs)
            .map(|(entry, digest)| upload(&client, parsed, &options, entry, digest, progress));
        let mut work = std::pin::pin!(work.buffer_unordered(parallel));
        let (mut sent, mut sent_bytes) = (0, 0);
        while let Some(done) = work.next().await {
            if let Some(len) = done? {
                sent += 1;
                sent_bytes += len;
            }
        }
        // Killed here, the registry has every blob and no tag names them.
        crate::failpoint::hit("snapshot.push.blocks")?;
        let layers = entries
            .iter()
            .zip(&digests)
            .map(|(entry, digest)| {
                Descriptor::new(media_type(&entry.name), digest.clone(), entry.blob_len())
                    .titled(&entry.name)
            })
            .collect();
        let digest = push_manifest(
            &client,
            parsed,
            &options,
            &snapshot,
            Layout::Whole,
            config,
            layers,
        )
        .await?;
        Ok((digest, sent, sent_bytes))
    })?;
    Ok(Pushed {
        reference: parsed.whole(),
        digest,
        layout: Layout::Whole,
        blocks: entries.len(),
        bytes,
        sent_blocks,
        sent_bytes,
        snapshot,
    })
}

/// Each blob's digest first (HEAD needs it; the registry checks the bytes
/// against it), the files checked against `cocoon.json` and their zeros
/// left out on the way ([`Entry::prepare`]), one thread per file.
fn digests(entries: &mut [Entry]) -> std::result::Result<Vec<Digest>, ArchiveError> {
    std::thread::scope(|scope| {
        let work: Vec<_> = entries
            .iter_mut()
            .map(|entry| scope.spawn(|| entry.prepare()))
            .collect();
        work.into_iter()
            .map(|w| w.join().expect("digest thread"))
            .collect()
    })
}

/// epoch's media type for an entry (`manifest/media.go`,
/// `MediaTypeForCocoonFile`).
fn media_type(name: &str) -> &'static str {
    match name {
        "config.json" => "application/vnd.cocoonstack.vm.config+json",
        "state.json" => "application/vnd.cocoonstack.vm.state+json",
        "memory-ranges" => "application/vnd.cocoonstack.vm.memory",
        "cidata.img" => "application/vnd.cocoonstack.vm.cidata",
        _ if name.ends_with(".qcow2") => "application/vnd.cocoonstack.disk.qcow2",
        _ if name.ends_with(".raw") => "application/vnd.cocoonstack.disk.raw",
        _ => "application/octet-stream",
    }
}

/// epoch's `SnapshotConfig`, with each entry's mode and sparse map under
/// `files`: what epoch's pull writes back as `snapshot.json` and PAX
/// records.
fn config_blob(snapshot: &Snapshot, record: serde_json::Value, entries: &[Entry]) -> Vec<u8> {
    let files: serde_json::Map<String, serde_json::Value> = entries
        .iter()
        .map(|entry| {
            let mut file = serde_json::json!({"mode": entry.mode});
            if let Some(map) = entry.sparse_map() {
                file["sparseMap"] = map.into();
                file["sparseSize"] = entry.size.into();
            }
            (entry.name.clone(), file)
        })
        .collect();
    let mut config = serde_json::json!({
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
        "files": files,
        "createdAt": snapshot.created_at,
    });
    if let Some(ids) = record.get("image_blob_ids") {
        config["imageBlobIds"] = ids.clone();
    }
    serde_json::to_vec(&config).expect("config serialises")
}

/// Sends one entry's blob unless the registry has it; the bytes sent.
async fn upload(
    client: &Client,
    reference: &Reference,
    options: &RegistryOptions,
    entry: &Entry,
    digest: &Digest,
    progress: &dyn TransferProgress,
) -> Result<Option<u64>> {
    let len = entry.blob_len();
    if blob_exists(client, reference, options, digest).await? {
        progress.advance(len);
        return Ok(None);
    }
    let reader = entry
        .open()
        .map_err(|e| Error::io(format!("cannot read {}", entry.name), e))?;
    let last = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let body = body(reader, last.clone(), start);
    let send = client.push_blob_stream(reference, body, digest.as_str(), Some(len));
    let stalled = watchdog(&last, start, options.limits.read_timeout);
    let what = format!("sending {}", entry.name);
    tokio::select! {
        sent = send => sent.map_err(|e| push_error(reference, &what, e))?,
        () = stalled => return Err(crate::image::oci::PullError::Stalled {
            reference: reference.whole(),
            what,
            seconds: options.limits.read_timeout.as_secs(),
        }.into()),
    };
    progress.advance(len);
    Ok(Some(len))
}

/// The blob's body, read a piece at a time off the runtime's threads;
/// `last` is when the registry last took a piece (ms after `start`).
fn body(
    reader: Box<dyn Read + Send>,
    last: Arc<AtomicU64>,
    start: Instant,
) -> impl futures_util::Stream<Item = oci_client::errors::Result<bytes::Bytes>> + Send + 'static {
    futures_util::stream::try_unfold(reader, move |mut reader| {
        let last = last.clone();
        async move {
            let (reader, piece) = tokio::task::spawn_blocking(move || {
                let mut piece = Vec::with_capacity(PIECE);
                (&mut reader).take(PIECE as u64).read_to_end(&mut piece)?;
                Ok::<_, std::io::Error>((reader, piece))
            })
            .await
            .expect("read task")?;
            last.store(elapsed_ms(start), Ordering::Relaxed);
            Ok((!piece.is_empty()).then(|| (bytes::Bytes::from(piece), reader)))
        }
    })
}

/// Resolves once the registry has taken nothing for `timeout`: a whole
/// blob may take long, a stall may not.
async fn watchdog(last: &AtomicU64, start: Instant, timeout: Duration) {
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if elapsed_ms(start).saturating_sub(last.load(Ordering::Relaxed)) > timeout_ms {
            return;
        }
    }
}

fn elapsed_ms(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}
