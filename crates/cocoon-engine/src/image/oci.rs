//! `image pull` of OCI images: manifest (or index, resolved for this
//! platform), then each layer streamed to disk with its digest verified,
//! unpacked and turned into an EROFS disk, in parallel up to `pool_size`.
//!
//! Layers are content-addressed and locked one by one: a layer already in the
//! store is never fetched again, two pulls sharing a layer fetch it once, and
//! nothing holds a store-wide lock while downloading.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{OciDescriptor, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::commit;
use super::layer;
use super::limits::{self, Bounded, LimitError, MAX_MANIFEST_BYTES};
use super::store::ImageDirs;
use crate::digest::{Digest, DigestError};

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("invalid image reference {reference:?}: {reason}")]
    Reference { reference: String, reason: String },
    #[error("cannot pull {reference}: {source}")]
    Registry {
        reference: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    /// The registry sent a digest that is not `sha256:` + 64 lowercase hex.
    #[error("cannot pull {reference}: the registry sent a bad {what} digest: {source}")]
    BadDigest {
        reference: String,
        what: &'static str,
        #[source]
        source: DigestError,
    },
    #[error("cannot pull {reference}: layer {digest}: {source}")]
    Download {
        reference: String,
        digest: Digest,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    #[error("layer {digest} of {reference}: {source}")]
    Layer {
        reference: String,
        digest: Digest,
        #[source]
        source: layer::LayerError,
    },
    #[error("layer {digest} of {reference}: {source}")]
    Commit {
        reference: String,
        digest: Digest,
        #[source]
        source: commit::CommitError,
    },
    #[error("pull of {reference} stopped after another layer failed")]
    Cancelled { reference: String },
    #[error("image {reference} has no layers")]
    NoLayers { reference: String },
    #[error(
        "image {reference} has no {what} (a regular file /boot/{pattern}* or /{pattern}* in some layer); it is not a cocoon VM image"
    )]
    MissingBootFile {
        reference: String,
        what: &'static str,
        pattern: &'static str,
    },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot read registry credentials from {}: {reason}", path.display())]
    Credentials { path: PathBuf, reason: String },
    /// Nothing arrived for `registry_read_timeout_seconds`.
    #[error(
        "cannot pull {reference}: the registry sent nothing for {seconds} s while {what} (registry_read_timeout_seconds)"
    )]
    Stalled {
        reference: String,
        what: String,
        seconds: u64,
    },
    #[error("cannot pull {reference}: {what}: {reason}")]
    Http {
        reference: String,
        what: String,
        reason: String,
    },
    #[error("cannot pull {reference}: the registry answered {status} for {what}{hint}")]
    Status {
        reference: String,
        what: String,
        status: reqwest::StatusCode,
        hint: &'static str,
    },
    #[error("cannot pull {reference}: the manifest is larger than {} (refused)", limits::human(*limit))]
    ManifestTooLarge { reference: String, limit: u64 },
    #[error("cannot pull {reference}: bad manifest: {reason}")]
    BadManifest { reference: String, reason: String },
    #[error(
        "cannot pull {reference}: layer {digest}: the registry sent {} bytes, its descriptor says {expected}",
        if *more { format!("more than {expected}") } else { got.to_string() }
    )]
    BlobSize {
        reference: String,
        digest: Digest,
        expected: u64,
        got: u64,
        /// The registry sent (or announced) more: `got` is then how many
        /// had arrived when it was stopped.
        more: bool,
    },
    #[error("cannot pull {reference}: {source}")]
    Limit {
        reference: String,
        #[source]
        source: LimitError,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl Fn(io::Error) -> PullError {
    let path = path.to_path_buf();
    move |source| PullError::Io {
        what,
        path: path.clone(),
        source,
    }
}

/// Parses and normalises a reference: `ubuntu` → `docker.io/library/ubuntu:latest`.
pub fn parse_reference(text: &str) -> Result<Reference, PullError> {
    text.parse::<Reference>().map_err(|e| PullError::Reference {
        reference: text.to_string(),
        reason: e.to_string(),
    })
}

/// One layer of a pulled image, as the engine boots it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledLayer {
    pub digest: Digest,
    pub erofs_size: u64,
    pub has_kernel: bool,
    pub has_initrd: bool,
    /// False when the layer was already in the store.
    pub fetched: bool,
}

#[derive(Debug, Clone)]
pub struct Pulled {
    /// The normalised reference: the image's name in the index.
    pub name: String,
    pub manifest_digest: Digest,
    pub layers: Vec<PulledLayer>,
}

impl Pulled {
    /// The last layer carrying a kernel (resp. initrd) wins, as the guest contract says.
    pub fn kernel_layer(&self) -> Option<&Digest> {
        self.layers
            .iter()
            .rev()
            .find(|l| l.has_kernel)
            .map(|l| &l.digest)
    }

    pub fn initrd_layer(&self) -> Option<&Digest> {
        self.layers
            .iter()
            .rev()
            .find(|l| l.has_initrd)
            .map(|l| &l.digest)
    }
}

/// The bounds of a pull (config keys `registry_connect_timeout_seconds`,
/// `registry_read_timeout_seconds`, `max_layer_bytes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullLimits {
    pub connect_timeout: Duration,
    /// Idle time between bytes, not the transfer's total.
    pub read_timeout: Duration,
    /// The most one layer may decompress to.
    pub max_layer_bytes: u64,
}

impl Default for PullLimits {
    fn default() -> Self {
        let config = crate::config::Config::default();
        PullLimits::from_config(&config)
    }
}

impl PullLimits {
    pub fn from_config(config: &crate::config::Config) -> PullLimits {
        PullLimits {
            connect_timeout: config.registry_connect_timeout(),
            read_timeout: config.registry_read_timeout(),
            max_layer_bytes: config.max_layer_bytes,
        }
    }
}

/// Registry access settings.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// `host[:port]` spoken to over plain HTTP; loopback registries always are.
    pub insecure: Vec<String>,
    /// Docker config directory (`$DOCKER_CONFIG`, else `~/.docker`).
    pub docker_config: Option<PathBuf>,
    pub limits: PullLimits,
}

impl RegistryOptions {
    pub fn from_env(insecure: Vec<String>) -> RegistryOptions {
        let docker_config = std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")));
        RegistryOptions {
            insecure,
            docker_config,
            limits: PullLimits::default(),
        }
    }

    /// The options `config` gives, credentials from the environment.
    pub fn from_config(config: &crate::config::Config) -> RegistryOptions {
        RegistryOptions {
            limits: PullLimits::from_config(config),
            ..RegistryOptions::from_env(config.insecure_registries.clone())
        }
    }

    fn is_plain_http(&self, registry: &str) -> bool {
        let host = registry.rsplit_once(':').map_or(registry, |(h, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                registry
            }
        });
        matches!(host, "localhost" | "127.0.0.1" | "[::1]")
            || self.insecure.iter().any(|r| r == registry || r == host)
    }

    /// Credentials for `registry` from the Docker config file (`auths`), if any.
    pub fn auth(&self, registry: &str) -> Result<RegistryAuth, PullError> {
        use base64::Engine;
        let Some(dir) = &self.docker_config else {
            return Ok(RegistryAuth::Anonymous);
        };
        let path = dir.join("config.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(RegistryAuth::Anonymous),
            Err(e) => {
                return Err(PullError::Credentials {
                    path,
                    reason: e.to_string(),
                });
            }
        };
        let config: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| PullError::Credentials {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let aliases: Vec<&str> = match registry {
            "docker.io" | "index.docker.io" | "registry-1.docker.io" => {
                vec![
                    "https://index.docker.io/v1/",
                    "docker.io",
                    "index.docker.io",
                    "registry-1.docker.io",
                ]
            }
            other => vec![other],
        };
        let Some(auths) = config["auths"].as_object() else {
            return Ok(RegistryAuth::Anonymous);
        };
        for (key, entry) in auths {
            let host = key
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/');
            let host = host.split('/').next().unwrap_or(host);
            if !aliases.contains(&key.as_str()) && !aliases.contains(&host) {
                continue;
            }
            if let (Some(user), Some(pass)) =
                (entry["username"].as_str(), entry["password"].as_str())
            {
                return Ok(RegistryAuth::Basic(user.to_string(), pass.to_string()));
            }
            if let Some(encoded) = entry["auth"].as_str() {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|e| PullError::Credentials {
                        path: path.clone(),
                        reason: format!("auth for {key}: {e}"),
                    })?;
                let decoded = String::from_utf8_lossy(&decoded).into_owned();
                if let Some((user, pass)) = decoded.split_once(':') {
                    return Ok(RegistryAuth::Basic(user.to_string(), pass.to_string()));
                }
            }
        }
        Ok(RegistryAuth::Anonymous)
    }

    fn client(&self, reference: &Reference) -> Client {
        let mut plain: Vec<String> = self.insecure.clone();
        if self.is_plain_http(reference.resolve_registry()) {
            plain.push(reference.resolve_registry().to_string());
        }
        Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(plain),
            platform_resolver: Some(Box::new(oci_client::client::current_platform_resolver)),
            connect_timeout: Some(self.limits.connect_timeout),
            read_timeout: Some(self.limits.read_timeout),
            ..Default::default()
        })
    }

    fn scheme(&self, reference: &Reference) -> &'static str {
        if self.is_plain_http(reference.resolve_registry()) {
            "http"
        } else {
            "https"
        }
    }
}

/// The error of a reqwest failure, its causes included (reqwest's own text
/// names only the URL).
fn http_error(reference: &Reference, what: &str, seconds: u64, e: &reqwest::Error) -> PullError {
    if e.is_timeout() {
        return PullError::Stalled {
            reference: reference.whole(),
            what: what.to_string(),
            seconds,
        };
    }
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    PullError::Http {
        reference: reference.whole(),
        what: what.to_string(),
        reason,
    }
}

/// Awaits `future` for at most the read timeout; a timeout is [`PullError::Stalled`].
/// The token exchange for pulling `reference` (bounded like every request);
/// the client keeps the token for its later requests, and it is returned for
/// requests made outside the client.
async fn authenticate(
    client: &Client,
    reference: &Reference,
    auth: &RegistryAuth,
    limits: &PullLimits,
) -> Result<Option<String>, PullError> {
    within(
        reference,
        limits,
        "authenticating",
        client.auth(reference, auth, oci_client::RegistryOperation::Pull),
    )
    .await?
    .map_err(|source| PullError::Registry {
        reference: reference.whole(),
        source,
    })
}

async fn within<T>(
    reference: &Reference,
    limits: &PullLimits,
    what: &str,
    future: impl std::future::Future<Output = T>,
) -> Result<T, PullError> {
    tokio::time::timeout(limits.read_timeout, future)
        .await
        .map_err(|_| PullError::Stalled {
            reference: reference.whole(),
            what: what.to_string(),
            seconds: limits.read_timeout.as_secs(),
        })
}

const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

/// Fetches manifests itself rather than through oci-client, which reads a
/// response body whole, however large: here no more than
/// [`MAX_MANIFEST_BYTES`] is read, each read waits at most the read timeout,
/// and the digest is computed from the bytes received.
struct ManifestFetcher<'a> {
    http: reqwest::Client,
    reference: &'a Reference,
    options: &'a RegistryOptions,
    authorization: Option<String>,
}

impl<'a> ManifestFetcher<'a> {
    async fn new(
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
    async fn fetch(
        &self,
        tag_or_digest: &str,
        expected: Option<&Digest>,
    ) -> Result<(Vec<u8>, Digest), PullError> {
        let reference = self.reference;
        let limits = &self.options.limits;
        let seconds = limits.read_timeout.as_secs();
        let url = format!(
            "{scheme}://{registry}/v2/{repository}/manifests/{tag_or_digest}{ns}",
            scheme = self.options.scheme(reference),
            registry = reference.resolve_registry(),
            repository = reference.repository(),
            ns = reference
                .namespace()
                .map(|ns| format!("?ns={ns}"))
                .unwrap_or_default(),
        );
        let what = "fetching the manifest";
        let mut request = self
            .http
            .get(&url)
            .header(reqwest::header::ACCEPT, MANIFEST_TYPES);
        if let Some(authorization) = &self.authorization {
            request = request.header(reqwest::header::AUTHORIZATION, authorization);
        }
        let mut response = within(reference, limits, what, request.send())
            .await?
            .map_err(|e| http_error(reference, what, seconds, &e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(PullError::Status {
                reference: reference.whole(),
                what: format!("manifest {tag_or_digest}"),
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
        let too_large = || PullError::ManifestTooLarge {
            reference: reference.whole(),
            limit: MAX_MANIFEST_BYTES,
        };
        if response
            .content_length()
            .is_some_and(|n| n > MAX_MANIFEST_BYTES)
        {
            return Err(too_large());
        }
        let header_digest = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = Vec::new();
        while let Some(chunk) = within(reference, limits, what, response.chunk())
            .await?
            .map_err(|e| http_error(reference, what, seconds, &e))?
        {
            if (body.len() + chunk.len()) as u64 > MAX_MANIFEST_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        let digest = Digest::of({
            use sha2::Digest as _;
            let mut hasher = sha2::Sha256::new();
            hasher.update(&body);
            hasher
        });
        let bad = |reason: String| PullError::BadManifest {
            reference: reference.whole(),
            reason,
        };
        if let Some(expected) = expected
            && *expected != digest
        {
            return Err(bad(format!("its digest is {digest}, not {expected}")));
        }
        if let Some(header) = header_digest
            && header.starts_with("sha256:")
            && header.as_str() != AsRef::<str>::as_ref(&digest)
        {
            return Err(bad(format!(
                "its digest is {digest}, not the {header} the registry announced"
            )));
        }
        Ok((body, digest))
    }
}

/// The image manifest for this platform: the one `reference` names, or the
/// entry of the index it names. Both are bounded and their digests checked.
async fn fetch_image_manifest(
    client: &Client,
    reference: &Reference,
    options: &RegistryOptions,
) -> Result<(OciImageManifest, Digest), PullError> {
    let fetcher = ManifestFetcher::new(client, reference, options).await?;
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

/// Progress callbacks, so the CLI can draw bars or lines.
pub trait PullProgress: Send + Sync {
    fn manifest(&self, _reference: &str, _layers: usize) {}
    fn layer_done(&self, _index: usize, _total: usize, _layer: &PulledLayer) {}
}

pub struct NoProgress;
impl PullProgress for NoProgress {}

/// A layer descriptor whose digest was validated: the only kind the store
/// builds paths for.
#[derive(Debug, Clone)]
pub struct LayerDescriptor {
    pub digest: Digest,
    descriptor: OciDescriptor,
}

impl LayerDescriptor {
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

/// Resolves the manifest only: the digest an up-to-date check compares.
/// Every digest in it (the manifest's, its config's, each layer's) is
/// validated here, before anything is named after it.
pub async fn resolve(
    reference: &Reference,
    options: &RegistryOptions,
) -> Result<(Digest, Vec<LayerDescriptor>), PullError> {
    let client = options.client(reference);
    let (manifest, digest) = fetch_image_manifest(&client, reference, options).await?;
    validate(reference, "config", &manifest.config.digest)?;
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
    Ok((digest, layers))
}

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
    let lock_path = dirs.lock(&digest);
    let lock = tokio::task::spawn_blocking(move || {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)?;
        file.lock()?;
        Ok::<_, io::Error>(file)
    })
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

/// Checks both boot files were found somewhere.
pub fn require_boot_files(reference: &str, layers: &[PulledLayer]) -> Result<(), PullError> {
    if !layers.iter().any(|l| l.has_kernel) {
        return Err(PullError::MissingBootFile {
            reference: reference.to_string(),
            what: "kernel",
            pattern: "vmlinuz",
        });
    }
    if !layers.iter().any(|l| l.has_initrd) {
        return Err(PullError::MissingBootFile {
            reference: reference.to_string(),
            what: "initrd",
            pattern: "initrd.img",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_normalised() {
        assert_eq!(
            parse_reference("ubuntu").unwrap().whole(),
            "docker.io/library/ubuntu:latest"
        );
        assert_eq!(
            parse_reference("127.0.0.1:5000/vm/img:1").unwrap().whole(),
            "127.0.0.1:5000/vm/img:1"
        );
        assert!(parse_reference("bad ref").is_err());
    }

    #[test]
    fn loopback_registries_use_plain_http() {
        let o = RegistryOptions {
            insecure: vec!["reg.lan:5000".into()],
            docker_config: None,
            ..Default::default()
        };
        assert!(o.is_plain_http("127.0.0.1:5000"));
        assert!(o.is_plain_http("localhost:1234"));
        assert!(o.is_plain_http("reg.lan:5000"));
        assert!(!o.is_plain_http("ghcr.io"));
    }

    #[test]
    fn credentials_come_from_the_docker_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"auths": {"127.0.0.1:5000": {"auth": "YWxpY2U6czNjcmV0"}, "https://index.docker.io/v1/": {"username": "bob", "password": "pw"}}}"#,
        )
        .unwrap();
        let o = RegistryOptions {
            insecure: vec![],
            docker_config: Some(dir.path().to_path_buf()),
            ..Default::default()
        };
        assert!(
            matches!(o.auth("127.0.0.1:5000").unwrap(), RegistryAuth::Basic(u, p) if u == "alice" && p == "s3cret")
        );
        assert!(matches!(o.auth("docker.io").unwrap(), RegistryAuth::Basic(u, _) if u == "bob"));
        assert!(matches!(
            o.auth("ghcr.io").unwrap(),
            RegistryAuth::Anonymous
        ));
        std::fs::write(dir.path().join("config.json"), "{not json").unwrap();
        assert!(
            o.auth("ghcr.io")
                .unwrap_err()
                .to_string()
                .starts_with("cannot read registry credentials from")
        );
    }
}
