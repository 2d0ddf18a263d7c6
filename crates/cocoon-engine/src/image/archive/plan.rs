//! What a staged image archive holds: its layers in order (with what each
//! must match), its run config and its identity.
//!
//! - An OCI layout (`index.json`, `blobs/sha256/<hex>`): the index's one
//!   image (or the linux/amd64 one of several platforms, through at most one
//!   nested index); every blob is checked against its descriptor's digest
//!   and size before it is read. The identity is the manifest's digest, as a
//!   pull of the same image from a registry records it.
//! - `docker save` (`manifest.json`, one entry): its config file and layer
//!   files by name; each layer must match the config's `rootfs.diff_ids`.
//!   The identity is the config's sha256, docker's image ID.
//!
//! `docker save` since moby 25 writes both; the OCI index is preferred, as
//! its blobs are all checked by digest.

use std::path::PathBuf;

use oci_client::manifest::{ImageIndexEntry, OciDescriptor, OciImageIndex, OciImageManifest};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::{ArchiveError, Staged};
use crate::digest::Digest;
use crate::image::config::ImageConfig;

/// What a layer must match once read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// The stored file (checked before it is read): an OCI blob.
    Blob,
    /// The uncompressed tar's sha256: a `docker save` layer's diff ID.
    DiffId(Digest),
}

#[derive(Debug, Clone)]
pub struct PlannedLayer {
    /// The archive's name for it, for messages.
    pub name: String,
    pub path: PathBuf,
    pub expect: Expect,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub id: Digest,
    pub config: ImageConfig,
    pub layers: Vec<PlannedLayer>,
}

pub fn plan(staged: &Staged) -> Result<Plan, ArchiveError> {
    if staged.has("index.json") {
        oci_layout(staged)
    } else if staged.has("manifest.json") {
        docker_save(staged)
    } else {
        Err(unsupported(
            staged,
            "it holds neither index.json (an OCI image layout) nor manifest.json (docker save)",
        ))
    }
}

fn unsupported(staged: &Staged, reason: &str) -> ArchiveError {
    ArchiveError::Unsupported {
        source_name: staged.source_name.clone(),
        reason: reason.to_string(),
    }
}

fn document_error(staged: &Staged, file: &str, reason: impl ToString) -> ArchiveError {
    ArchiveError::Document {
        source_name: staged.source_name.clone(),
        file: file.to_string(),
        reason: reason.to_string(),
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    staged: &Staged,
    file: &str,
    body: &[u8],
) -> Result<T, ArchiveError> {
    serde_json::from_slice(body).map_err(|e| document_error(staged, file, e))
}

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

fn oci_layout(staged: &Staged) -> Result<Plan, ArchiveError> {
    let mut index: OciImageIndex = parse(
        staged,
        "index.json",
        &staged.document("index.json", "the OCI index")?,
    )?;
    // At most one nested index (a multi-platform image saved whole).
    for _ in 0..2 {
        let chosen = choose(staged, &index.manifests)?;
        let is_index = INDEX_TYPES.contains(&chosen.media_type);
        let (digest, body) = blob_document(staged, chosen, "manifest")?;
        if is_index {
            index = parse(staged, &blob_name(&digest), &body)?;
            continue;
        }
        let manifest: OciImageManifest = parse(staged, &blob_name(&digest), &body)?;
        return image_of(staged, digest, &manifest);
    }
    Err(unsupported(
        staged,
        "its index nests deeper than two levels",
    ))
}

/// The index's one image, or its linux/amd64 one.
fn choose<'a>(
    staged: &Staged,
    manifests: &'a [ImageIndexEntry],
) -> Result<Described<'a>, ArchiveError> {
    let entries: Vec<&ImageIndexEntry> = match manifests {
        [] => return Err(unsupported(staged, "its index lists no image")),
        [one] => vec![one],
        many => many
            .iter()
            .filter(|m| {
                m.platform.as_ref().is_some_and(|p| {
                    p.os.to_string() == "linux" && p.architecture.to_string() == "amd64"
                })
            })
            .collect(),
    };
    match entries.as_slice() {
        [one] => Ok(Described::from(*one)),
        [] => Err(unsupported(
            staged,
            &format!(
                "its index lists {} images and none for linux/amd64",
                manifests.len()
            ),
        )),
        several => Err(unsupported(
            staged,
            &format!(
                "it holds {} images; image import takes one (save one image per archive)",
                several.len()
            ),
        )),
    }
}

/// What a blob check reads of a descriptor or an index entry (oci-client
/// keeps the two types apart).
struct Described<'a> {
    media_type: &'a str,
    digest: &'a str,
    size: i64,
}

impl<'a> From<&'a ImageIndexEntry> for Described<'a> {
    fn from(e: &'a ImageIndexEntry) -> Described<'a> {
        Described {
            media_type: &e.media_type,
            digest: &e.digest,
            size: e.size,
        }
    }
}

impl<'a> From<&'a OciDescriptor> for Described<'a> {
    fn from(d: &'a OciDescriptor) -> Described<'a> {
        Described {
            media_type: &d.media_type,
            digest: &d.digest,
            size: d.size,
        }
    }
}

fn blob_name(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// A blob named by a descriptor, checked against its digest and size.
fn blob(staged: &Staged, d: Described<'_>, what: &str) -> Result<(Digest, PathBuf), ArchiveError> {
    let digest = Digest::parse(d.digest).map_err(|e| document_error(staged, what, e))?;
    let name = blob_name(&digest);
    let path = staged.file(&name, what)?.to_path_buf();
    let read = |source| ArchiveError::Read {
        source_name: staged.source_name.clone(),
        source,
    };
    let mut file = std::fs::File::open(&path).map_err(read)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf).map_err(read)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    let found = Digest::of(hasher);
    let size_ok = u64::try_from(d.size).is_ok_and(|s| s == size);
    if found != digest || !size_ok {
        return Err(ArchiveError::Mismatch {
            source_name: staged.source_name.clone(),
            what: what.to_string(),
            entry: name,
            expected: format!("{digest}, {} bytes", d.size),
            found: format!("{found}, {size} bytes"),
        });
    }
    Ok((digest, path))
}

fn blob_document(
    staged: &Staged,
    d: Described<'_>,
    what: &str,
) -> Result<(Digest, Vec<u8>), ArchiveError> {
    let (digest, _) = blob(staged, d, what)?;
    let body = staged.document(&blob_name(&digest), what)?;
    Ok((digest, body))
}

fn image_of(
    staged: &Staged,
    id: Digest,
    manifest: &OciImageManifest,
) -> Result<Plan, ArchiveError> {
    let (config_digest, body) = blob_document(staged, (&manifest.config).into(), "config")?;
    let config = ImageConfig::from_oci(&body)
        .map_err(|reason| document_error(staged, &blob_name(&config_digest), reason))?;
    if manifest.layers.is_empty() {
        return Err(unsupported(staged, "its image has no layers"));
    }
    let mut layers = Vec::with_capacity(manifest.layers.len());
    for d in &manifest.layers {
        if !d.media_type.contains("tar") {
            return Err(unsupported(
                staged,
                &format!(
                    "layer {} is {:?}, not a tar layer (gzip, zstd or plain)",
                    d.digest, d.media_type
                ),
            ));
        }
        let (digest, path) = blob(staged, d.into(), "layer")?;
        layers.push(PlannedLayer {
            name: blob_name(&digest),
            path,
            expect: Expect::Blob,
        });
    }
    Ok(Plan { id, config, layers })
}

/// One image of `docker save`'s `manifest.json`.
#[derive(Deserialize)]
struct SavedImage {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

#[derive(Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Deserialize)]
struct SavedConfig {
    rootfs: RootFs,
}

fn docker_save(staged: &Staged) -> Result<Plan, ArchiveError> {
    let images: Vec<SavedImage> = parse(
        staged,
        "manifest.json",
        &staged.document("manifest.json", "docker save's manifest")?,
    )?;
    let image = match images.as_slice() {
        [one] => one,
        [] => return Err(unsupported(staged, "its manifest.json lists no image")),
        several => {
            return Err(unsupported(
                staged,
                &format!(
                    "it holds {} images; image import takes one (save one image per archive)",
                    several.len()
                ),
            ));
        }
    };
    let body = staged.document(&image.config, "the image config")?;
    let config = ImageConfig::from_oci(&body)
        .map_err(|reason| document_error(staged, &image.config, reason))?;
    let saved: SavedConfig = parse(staged, &image.config, &body)?;
    if saved.rootfs.diff_ids.len() != image.layers.len() {
        return Err(document_error(
            staged,
            &image.config,
            format!(
                "it lists {} layer diff IDs for {} layers",
                saved.rootfs.diff_ids.len(),
                image.layers.len()
            ),
        ));
    }
    if image.layers.is_empty() {
        return Err(unsupported(staged, "its image has no layers"));
    }
    let mut layers = Vec::with_capacity(image.layers.len());
    for (name, diff_id) in image.layers.iter().zip(&saved.rootfs.diff_ids) {
        let diff_id =
            Digest::parse(diff_id).map_err(|e| document_error(staged, &image.config, e))?;
        layers.push(PlannedLayer {
            name: name.clone(),
            path: staged.file(name, "a layer")?.to_path_buf(),
            expect: Expect::DiffId(diff_id),
        });
    }
    let mut hasher = Sha256::new();
    hasher.update(&body);
    Ok(Plan {
        id: Digest::of(hasher),
        config,
        layers,
    })
}
