//! `image pull` of OCI images: manifest (or index, resolved for this
//! platform), then each layer streamed through its digest check into the
//! unpacker and turned into an EROFS disk, in parallel up to `pool_size`.
//!
//! Layers are content-addressed and locked one by one: a layer already in the
//! store is never fetched again, two pulls sharing a layer fetch it once, and
//! nothing holds a store-wide lock while downloading.

use oci_client::Reference;

use crate::digest::Digest;

mod error;
mod manifest;
mod pull;
mod registry;
mod stream;

pub use error::PullError;
pub(crate) use manifest::ManifestFetcher;
pub use manifest::{LayerDescriptor, Resolved, resolve};
pub use pull::pull_layers;
pub(crate) use registry::within;
pub use registry::{PullLimits, RegistryOptions};

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

/// Progress callbacks, so the CLI can draw bars or lines.
pub trait PullProgress: Send + Sync {
    fn manifest(&self, _reference: &str, _layers: usize) {}
    fn layer_done(&self, _index: usize, _total: usize, _layer: &PulledLayer) {}
}

pub struct NoProgress;
impl PullProgress for NoProgress {}

/// Checks the image brings both boot files, or neither (a container image,
/// booted with the default kernel and cocoon-init): half a pair is a broken
/// VM image.
pub fn require_boot_files(reference: &str, layers: &[PulledLayer]) -> Result<(), PullError> {
    let kernel = layers.iter().any(|l| l.has_kernel);
    let initrd = layers.iter().any(|l| l.has_initrd);
    if kernel == initrd {
        return Ok(());
    }
    if !kernel {
        return Err(PullError::MissingBootFile {
            reference: reference.to_string(),
            what: "kernel",
            pattern: "vmlinuz",
        });
    }
    Err(PullError::MissingBootFile {
        reference: reference.to_string(),
        what: "initrd",
        pattern: "initrd.img",
    })
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
}
