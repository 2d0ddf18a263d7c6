//! The manifest side of a pull: the image manifest for this platform,
//! fetched with bounded size and time and its digest checked, and the
//! validated layer descriptors it names.

use oci_client::manifest::{OciDescriptor, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::error::http_error;
use super::registry::{authenticate, within};
use super::{PullError, RegistryOptions};
use crate::digest::Digest;
use crate::image::config::ImageConfig;
use crate::image::limits::MAX_MANIFEST_BYTES;

const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

/// What a manifest request is doing, in a stall or HTTP error.
const FETCHING: &str = "fetching the manifest";

/// Fetches manifests itself rather than through oci-client, which reads a
/// response body whole, however large: here no more than
/// [`MAX_MANIFEST_BYTES`] is read, each read waits at most the read timeout,
/// and the digest is computed from the bytes received.
pub(crate) struct ManifestFetcher<'a> {
    http: reqwest::Client,
    reference: &'a Reference,
    options: &'a RegistryOptions,
    authorization: Option<String>,
}

impl<'a> ManifestFetcher<'a> {
    pub(crate) async fn new(
        client: &Client,
        reference: &'a Reference,
        options: &'a RegistryOptions,
    ) -> Result<ManifestFetcher<'a>, PullError> {
        let auth = options.auth(reference.resolve_registry())?;
        let limits = &options.limits;
        let token = authenticate(client, reference, &auth, limits).await?;
        let authorization = match (token, &auth) {
            (Some(token), _) => Some(format!("Bearer {token}")),
            (None, RegistryAuth::Basic(user, pass)) => {
                use base64::Engine;
                let pair =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
                Some(format!("Basic {pair}"))
            }
            _ => None,
        };
        let http = reqwest::Client::builder()
            .connect_timeout(limits.connect_timeout)
            .read_timeout(limits.read_timeout)
            .build()
            .map_err(|e| http_error(reference, "cannot start an HTTP client", 0, &e))?;
        Ok(ManifestFetcher {
            http,
            reference,
            options,
            authorization,
        })
    }

    /// The manifest named by `tag_or_digest`: its bytes and their digest,
    /// which must be `expected` when the name was a digest.
    pub(crate) async fn fetch(
        &self,
        tag_or_digest: &str,
        expected: Option<&Digest>,
    ) -> Result<(Vec<u8>, Digest), PullError> {
        self.fetch_from("manifests", tag_or_digest, expected).await
    }

    /// The image's config blob (bounded like a manifest, its digest checked).
    pub(crate) async fn fetch_config(&self, digest: &Digest) -> Result<Vec<u8>, PullError> {
        let (body, _) = self
            .fetch_from("blobs", digest.as_ref(), Some(digest))
            .await?;
        Ok(body)
    }

    async fn fetch_from(
        &self,
        endpoint: &str,
        tag_or_digest: &str,
        expected: Option<&Digest>,
    ) -> Result<(Vec<u8>, Digest), PullError> {
        let response = self.request(endpoint, tag_or_digest).await?;
        let header_digest = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = self.read_bounded(response).await?;
        let digest = Digest::of({
            use sha2::Digest as _;
            let mut hasher = sha2::Sha256::new();
            hasher.update(&body);
            hasher
        });
        self.check_digest(&digest, expected, header_digest)?;
        Ok((body, digest))
    }

    fn url(&self, endpoint: &str, tag_or_digest: &str) -> String {
        let reference = self.reference;
        format!(
            "{scheme}://{registry}/v2/{repository}/{endpoint}/{tag_or_digest}{ns}",
            scheme = self.options.scheme(reference),
            registry = reference.resolve_registry(),
            repository = reference.repository(),
            ns = reference
                .namespace()
                .map(|ns| format!("?ns={ns}"))
                .unwrap_or_default(),
        )
    }

    /// Sends the GET and refuses an unsuccessful status, or a body announced
    /// larger than [`MAX_MANIFEST_BYTES`].
    async fn request(
        &self,
        endpoint: &str,
        tag_or_digest: &str,
    ) -> Result<reqwest::Response, PullError> {
        let reference = self.reference;
        let limits = &self.options.limits;
        let seconds = limits.read_timeout.as_secs();
        let mut request = self
            .http
            .get(self.url(endpoint, tag_or_digest))
            .header(reqwest::header::ACCEPT, MANIFEST_TYPES);
        if let Some(authorization) = &self.authorization {
            request = request.header(reqwest::header::AUTHORIZATION, authorization);
        }
        let response = within(reference, limits, FETCHING, request.send())
            .await?
            .map_err(|e| http_error(reference, FETCHING, seconds, &e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(PullError::Status {
                reference: reference.whole(),
                what: format!("{} {tag_or_digest}", endpoint.trim_end_matches('s')),
                status,
                hint: match status.as_u16() {
                    401 | 403 => {
                        " (Not authorized: give credentials in the Docker config, `docker login`)"
                    }
                    404 => " (no such image or tag)",
                    _ => "",
                },
            });
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_MANIFEST_BYTES)
        {
            return Err(self.too_large());
        }
        Ok(response)
    }

    /// The body, read chunk by chunk: never more than [`MAX_MANIFEST_BYTES`],
    /// each chunk waited for at most the read timeout.
    async fn read_bounded(&self, mut response: reqwest::Response) -> Result<Vec<u8>, PullError> {
        let reference = self.reference;
        let limits = &self.options.limits;
        let seconds = limits.read_timeout.as_secs();
        let mut body = Vec::new();
        while let Some(chunk) = within(reference, limits, FETCHING, response.chunk())
            .await?
            .map_err(|e| http_error(reference, FETCHING, seconds, &e))?
        {
            if (body.len() + chunk.len()) as u64 > MAX_MANIFEST_BYTES {
                return Err(self.too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn too_large(&self) -> PullError {
        PullError::ManifestTooLarge {
            reference: self.reference.whole(),
            limit: MAX_MANIFEST_BYTES,
        }
    }

    /// The digest of the bytes received must be the one asked for, and the
    /// one the registry announced (when it announced a sha256).
    fn check_digest(
        &self,
        digest: &Digest,
        expected: Option<&Digest>,
        header_digest: Option<String>,
    ) -> Result<(), PullError> {
        let bad = |reason: String| PullError::BadManifest {
            reference: self.reference.whole(),
            reason,
        };
        if let Some(expected) = expected
            && expected != digest
        {
            return Err(bad(format!("its digest is {digest}, not {expected}")));
        }
        if let Some(header) = header_digest
            && header.starts_with("sha256:")
            && header.as_str() != AsRef::<str>::as_ref(digest)
        {
            return Err(bad(format!(
                "its digest is {digest}, not the {header} the registry announced"
            )));
        }
        Ok(())
    }
}

/// The image manifest for this platform: the one `reference` names, or the
/// entry of the index it names. Both are bounded and their digests checked.
async fn fetch_image_manifest(
    fetcher: &ManifestFetcher<'_>,
    reference: &Reference,
) -> Result<(OciImageManifest, Digest), PullError> {
    let pinned = reference
        .digest()
        .map(|d| validate(reference, "manifest", d))
        .transpose()?;
    let name = match &pinned {
        Some(digest) => digest.to_string(),
        None => reference.tag().unwrap_or("latest").to_string(),
    };
    let bad = |reason: String| PullError::BadManifest {
        reference: reference.whole(),
        reason,
    };
    let parse =
        |body: &[u8]| serde_json::from_slice::<OciManifest>(body).map_err(|e| bad(e.to_string()));
    let (body, digest) = fetcher.fetch(&name, pinned.as_ref()).await?;
    match parse(&body)? {
        OciManifest::Image(manifest) => Ok((manifest, digest)),
        OciManifest::ImageIndex(index) => {
            let entry = oci_client::client::current_platform_resolver(&index.manifests)
                .ok_or_else(|| {
                    bad(format!(
                        "the image index has no manifest for this platform ({}/{})",
                        std::env::consts::OS,
                        std::env::consts::ARCH
                    ))
                })?;
            let entry = validate(reference, "platform manifest", &entry)?;
            let (body, digest) = fetcher.fetch(entry.as_ref(), Some(&entry)).await?;
            match parse(&body)? {
                OciManifest::Image(manifest) => Ok((manifest, digest)),
                OciManifest::ImageIndex(_) => Err(bad(format!(
                    "index entry {entry} is another index, not an image manifest"
                ))),
            }
        }
    }
}

/// A layer descriptor whose digest was validated: the only kind the store
/// builds paths for.
#[derive(Debug, Clone)]
pub struct LayerDescriptor {
    pub digest: Digest,
    pub(super) descriptor: OciDescriptor,
}

impl LayerDescriptor {
    /// The size the manifest lists (None when it is negative).
    pub fn size(&self) -> Option<u64> {
        u64::try_from(self.descriptor.size).ok()
    }

    /// Validates a registry's descriptor (`what` names it in the error).
    pub fn new(
        reference: &Reference,
        what: &'static str,
        descriptor: OciDescriptor,
    ) -> Result<LayerDescriptor, PullError> {
        let digest = validate(reference, what, &descriptor.digest)?;
        Ok(LayerDescriptor { digest, descriptor })
    }
}

fn validate(reference: &Reference, what: &'static str, text: &str) -> Result<Digest, PullError> {
    Digest::parse(text).map_err(|source| PullError::BadDigest {
        reference: reference.whole(),
        what,
        source,
    })
}

/// What a pull needs before its layers: the manifest's digest (what an
/// up-to-date check compares), the validated layers, and the image's run
/// config.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub digest: Digest,
    pub layers: Vec<LayerDescriptor>,
    pub config: ImageConfig,
    /// A cocoonstack cloud-image artifact (a disk, maybe in parts, as its
    /// layers; upstream cocoon #35): `layers` are its disk layers in title
    /// order, to be joined and imported as a cloud image.
    pub cloud_disk: bool,
}

/// The `artifactType`s of cocoonstack's cloud images (epoch
/// `manifest/media.go`; the second is the older Windows name).
pub const CLOUD_ARTIFACT_TYPES: [&str; 2] = [
    "application/vnd.cocoonstack.os-image.v1+json",
    "application/vnd.cocoonstack.windows-image.v1+json",
];

/// Disk layer media types of a cloud-image artifact: whole disks or parts
/// (ghcr limits one layer's size), qcow2 or raw, and the older Windows names.
fn is_disk_layer(media_type: &str) -> bool {
    let kind = media_type
        .strip_prefix("application/vnd.cocoonstack.windows.disk.")
        .or_else(|| media_type.strip_prefix("application/vnd.cocoonstack.disk."));
    matches!(kind, Some("qcow2" | "qcow2.part" | "raw" | "raw.part"))
}

/// A cloud-image artifact's disk layers, in the order of their titles (the
/// parts' names sort in order); other layers (checksum lists) are left out.
fn cloud_disk_layers(
    reference: &Reference,
    manifest: OciImageManifest,
) -> Result<Vec<LayerDescriptor>, PullError> {
    let title = |d: &OciDescriptor| {
        d.annotations
            .as_ref()
            .and_then(|a| a.get("org.opencontainers.image.title"))
            .cloned()
            .unwrap_or_default()
    };
    let mut disks: Vec<OciDescriptor> = manifest
        .layers
        .into_iter()
        .filter(|d| is_disk_layer(&d.media_type))
        .collect();
    disks.sort_by_key(&title);
    if disks.is_empty() {
        return Err(PullError::NoLayers {
            reference: reference.whole(),
        });
    }
    disks
        .into_iter()
        .map(|d| LayerDescriptor::new(reference, "disk layer", d))
        .collect()
}

/// Resolves the manifest and fetches the image's config. Every digest
/// (the manifest's, its config's, each layer's) is validated here, before
/// anything is named after it.
pub async fn resolve(
    reference: &Reference,
    options: &RegistryOptions,
) -> Result<Resolved, PullError> {
    let client = options.client(reference);
    let fetcher = ManifestFetcher::new(&client, reference, options).await?;
    let (manifest, digest) = fetch_image_manifest(&fetcher, reference).await?;
    if manifest
        .artifact_type
        .as_deref()
        .is_some_and(|t| CLOUD_ARTIFACT_TYPES.contains(&t))
    {
        return Ok(Resolved {
            digest,
            layers: cloud_disk_layers(reference, manifest)?,
            config: ImageConfig::default(),
            cloud_disk: true,
        });
    }
    let config_digest = validate(reference, "config", &manifest.config.digest)?;
    let layers = manifest
        .layers
        .into_iter()
        .map(|d| LayerDescriptor::new(reference, "layer", d))
        .collect::<Result<Vec<_>, _>>()?;
    if layers.is_empty() {
        return Err(PullError::NoLayers {
            reference: reference.whole(),
        });
    }
    let body = fetcher.fetch_config(&config_digest).await?;
    let config = ImageConfig::from_oci(&body).map_err(|reason| PullError::BadConfig {
        reference: reference.whole(),
        reason,
    })?;
    Ok(Resolved {
        digest,
        layers,
        config,
        cloud_disk: false,
    })
}
