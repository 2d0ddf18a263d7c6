//! What can go wrong in a pull, as one error type shared by the registry
//! client, the manifest fetch and the layer pulls, with the helpers that
//! turn I/O and HTTP failures into it.

use std::io;
use std::path::{Path, PathBuf};

use oci_client::Reference;

use crate::digest::{Digest, DigestError};
use crate::image::commit;
use crate::image::layer;
use crate::image::limits::{self, LimitError};

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
        "image {reference} has no {what} (a regular file /boot/{pattern}* or /{pattern}* in some layer) but has the other boot file: a VM image brings both, a container image neither"
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
    #[error("cannot pull {reference}: bad image config: {reason}")]
    BadConfig { reference: String, reason: String },
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
    /// Every byte arrived, but they are not the layer the digest names.
    #[error(
        "cannot pull {reference}: layer {digest}: the registry sent content whose digest is {actual} (refused, nothing stored)"
    )]
    BlobDigest {
        reference: String,
        digest: Digest,
        actual: String,
    },
    #[error("cannot pull {reference}: {source}")]
    Limit {
        reference: String,
        #[source]
        source: LimitError,
    },
}

pub(super) fn io_err(what: &'static str, path: &Path) -> impl Fn(io::Error) -> PullError {
    let path = path.to_path_buf();
    move |source| PullError::Io {
        what,
        path: path.clone(),
        source,
    }
}

/// The error of a reqwest failure, its causes included (reqwest's own text
/// names only the URL).
pub(super) fn http_error(
    reference: &Reference,
    what: &str,
    seconds: u64,
    e: &reqwest::Error,
) -> PullError {
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
