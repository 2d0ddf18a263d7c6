//! A snapshot as an OCI 1.1 artifact, in chunks (`snapshot push` / `snapshot
//! pull`): every file cut at the snapshot checksum's 4 MiB blocks
//! ([`HASH_BLOCK`]), each block a blob named by its sha256, which is the
//! block digest `cocoon.json`'s tree hash is made of. A second push of the
//! same VM (or of a clone) finds most blocks already in the registry and
//! sends only the ones that changed; holes and zero blocks are not sent.
//!
//! The manifest (`docs/registry-snapshots.md` has the whole layout):
//! - `artifactType` [`ARTIFACT_TYPE`], distinct from upstream's whole-file
//!   `application/vnd.cocoonstack.snapshot.v1+json`, so upstream's epoch
//!   refuses it as "not a snapshot" instead of misreading chunks as files;
//! - `config`: upstream's snapshot config blob ([`CONFIG_MEDIA_TYPE`]);
//! - `layers[0]`: `cocoon.json`; `layers[1]`: the chunk index
//!   ([`ChunkIndex`]); then every distinct non-zero block, once.
//!
//! Listing every block as a layer keeps them alive in the registry (its
//! garbage collector keeps what manifests reference).
//!
//! Nothing here trusts the registry: [`check`] refuses an index that does not
//! add up to `cocoon.json`'s digests, names a file twice or outside the
//! snapshot, or points at a blob the manifest does not list.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::manifest::{HASH_BLOCK, Manifest, zero_block};
use crate::digest::Digest;

pub const ARTIFACT_TYPE: &str = "application/vnd.cocoonstack.snapshot.chunked.v1+json";
/// Upstream's whole-file layout (epoch, vk-cocoon).
pub const UPSTREAM_ARTIFACT_TYPE: &str = "application/vnd.cocoonstack.snapshot.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.cocoonstack.snapshot.config.v1+json";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.cocoonstack.snapshot.manifest.v1+json";
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.cocoonstack.snapshot.chunks.v1+json";
pub const CHUNK_MEDIA_TYPE: &str = "application/vnd.cocoonstack.snapshot.chunk.v1";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const TITLE: &str = "org.opencontainers.image.title";
pub const ANNOTATION_ID: &str = "cocoonstack.snapshot.id";
pub const ANNOTATION_BASE_IMAGE: &str = "cocoonstack.snapshot.baseimage";
pub const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";

/// The most a registry manifest may be read at: registries cap theirs at
/// 4 MiB (distribution's default), and one block's descriptor is ~150 bytes.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// `cocoon.json` and the chunk index are read whole into memory, bounded
/// like a manifest.
pub const MAX_SMALL_BLOB: u64 = 4 << 20;

/// An OCI content descriptor, as much of it as this layout uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            annotations: BTreeMap::new(),
        }
    }

    pub fn titled(mut self, title: &str) -> Descriptor {
        self.annotations.insert(TITLE.into(), title.into());
        self
    }
}

/// An OCI 1.1 image manifest carrying an artifact.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArtifactManifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    #[serde(rename = "artifactType", default)]
    pub artifact_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Where each file's blocks are: the second layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkIndex {
    pub version: u32,
    pub block_size: u64,
    pub files: BTreeMap<String, FileChunks>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChunks {
    pub size: u64,
    /// `(block number, digest)` of every block that is not a whole zero
    /// block, in block order; the others are holes.
    pub chunks: Vec<(u64, Digest)>,
}

/// The blocks of one file, from its [`super::manifest::block_digests`].
pub fn file_chunks(size: u64, digests: &[[u8; 32]]) -> FileChunks {
    let zero = zero_block();
    let chunks = digests
        .iter()
        .enumerate()
        .filter(|(i, d)| {
            let len = block_len(size, *i as u64);
            // An empty file's one block is empty: nothing to send.
            len > 0 && !(**d == zero && len == HASH_BLOCK)
        })
        .map(|(i, d)| (i as u64, digest_of(d)))
        .collect();
    FileChunks { size, chunks }
}

pub fn digest_of(raw: &[u8; 32]) -> Digest {
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    Digest::from_hex(&hex).expect("64 hex digits")
}

/// The length of block `i` of a file of `size` bytes.
pub fn block_len(size: u64, i: u64) -> u64 {
    size.saturating_sub(i * HASH_BLOCK).min(HASH_BLOCK)
}

/// What a checked artifact asks a pull to fetch: each distinct block once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    /// Every block blob and its length.
    pub blocks: BTreeMap<Digest, u64>,
}

/// The layers of `artifact`, checked for this layout: `cocoon.json`, the
/// index, then distinct block blobs no larger than a block.
pub fn check_layers(artifact: &ArtifactManifest) -> Result<(Descriptor, Descriptor), String> {
    if artifact.schema_version != 2 {
        return Err(format!(
            "schemaVersion {} (expected 2)",
            artifact.schema_version
        ));
    }
    if artifact.artifact_type != ARTIFACT_TYPE {
        return Err(format!(
            "artifactType {:?} is not a chunked cocoon snapshot ({ARTIFACT_TYPE})",
            artifact.artifact_type
        ));
    }
    let [manifest, index, blocks @ ..] = artifact.layers.as_slice() else {
        return Err("fewer than two layers".into());
    };
    for (layer, media_type) in [(manifest, MANIFEST_MEDIA_TYPE), (index, INDEX_MEDIA_TYPE)] {
        if layer.media_type != media_type || layer.size > MAX_SMALL_BLOB {
            return Err(format!(
                "layer {} is {:?} of {} bytes, expected {media_type} of at most {MAX_SMALL_BLOB}",
                layer.digest, layer.media_type, layer.size
            ));
        }
    }
    let mut seen = BTreeSet::new();
    for block in blocks {
        if block.media_type != CHUNK_MEDIA_TYPE || block.size == 0 || block.size > HASH_BLOCK {
            return Err(format!(
                "layer {} is {:?} of {} bytes, expected a {CHUNK_MEDIA_TYPE} of 1 to {HASH_BLOCK} bytes",
                block.digest, block.media_type, block.size
            ));
        }
        if !seen.insert(&block.digest) {
            return Err(format!("layer {} is listed twice", block.digest));
        }
    }
    Ok((manifest.clone(), index.clone()))
}

/// Checks `index` against `cocoon.json` and the artifact's block layers:
/// the same files with the same sizes, block numbers in order and in range,
/// each block a listed blob of the block's length, and each file's blocks
/// adding up to the tree digest `cocoon.json` records. Returns the blocks
/// to fetch.
pub fn check(
    index: &ChunkIndex,
    manifest: &Manifest,
    artifact: &ArtifactManifest,
) -> Result<Fetch, String> {
    if index.version != 1 || index.block_size != HASH_BLOCK {
        return Err(format!(
            "chunk index version {} with {}-byte blocks (expected version 1, {HASH_BLOCK})",
            index.version, index.block_size
        ));
    }
    let listed: BTreeMap<&Digest, u64> = artifact
        .layers
        .iter()
        .skip(2)
        .map(|l| (&l.digest, l.size))
        .collect();
    let names: BTreeSet<&String> = index.files.keys().collect();
    let expected: BTreeSet<&String> = manifest.files.keys().collect();
    if names != expected {
        return Err(format!(
            "the chunk index lists files {names:?}, but cocoon.json lists {expected:?}"
        ));
    }
    let mut blocks = BTreeMap::new();
    for (name, file) in &index.files {
        if !super::trust::plain(name) || name == super::MANIFEST {
            return Err(format!(
                "file name {name:?} is not a plain snapshot file name"
            ));
        }
        let sum = &manifest.files[name];
        if file.size != sum.size || file.size > super::archive::MAX_FILE_SIZE {
            return Err(format!(
                "{name}: the chunk index says {} bytes, cocoon.json {}",
                file.size, sum.size
            ));
        }
        let count = file.size.div_ceil(HASH_BLOCK).max(1);
        let mut last = None;
        for (i, digest) in &file.chunks {
            if *i >= count || last.is_some_and(|l| l >= *i) {
                return Err(format!("{name}: block {i} is out of order or past the end"));
            }
            last = Some(*i);
            let want = block_len(file.size, *i);
            match listed.get(digest) {
                Some(size) if *size == want => {}
                Some(size) => {
                    return Err(format!(
                        "{name}: block {i} is {want} bytes but its blob {digest} is listed with {size}"
                    ));
                }
                None => {
                    return Err(format!(
                        "{name}: block {i} names blob {digest}, which the manifest does not list"
                    ));
                }
            }
            blocks.insert(digest.clone(), want);
        }
        if sum.sha256.as_deref() != Some(root_of(file).as_str()) {
            return Err(format!(
                "{name}: its blocks do not add up to the digest cocoon.json records"
            ));
        }
    }
    Ok(Fetch { blocks })
}

/// The [`super::manifest::TreeHasher`] digest of a file whose blocks are
/// `file.chunks` and zeros elsewhere, streamed: a size the index declares
/// costs no memory, however large.
fn root_of(file: &FileChunks) -> String {
    use sha2::Digest as _;
    let mut outer = sha2::Sha256::new();
    if file.size == 0 {
        outer.update(raw_digest(&empty_digest()));
    } else {
        let zero = zero_block();
        let mut next = 0;
        for (i, digest) in &file.chunks {
            (next..*i).for_each(|_| outer.update(zero));
            outer.update(raw_digest(digest));
            next = i + 1;
        }
        (next..file.size.div_ceil(HASH_BLOCK)).for_each(|_| outer.update(zero));
    }
    outer
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn raw_digest(digest: &Digest) -> [u8; 32] {
    let hex = digest.hex();
    let mut raw = [0u8; 32];
    for (i, byte) in raw.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("validated hex");
    }
    raw
}

/// The sha256 of nothing: an empty file's one block.
pub fn empty_digest() -> Digest {
    use sha2::Digest as _;
    Digest::of(sha2::Sha256::new())
}

#[cfg(test)]
mod tests;
