//! One registry blob into a file, trusting nothing: streamed into a `.part`
//! file next to it, never past the length the manifest listed, its sha256
//! checked, then renamed into place (`snapshot pull`'s blocks, the disk
//! layers of a cloud-image artifact).

use std::fs::File;
use std::io::Write;
use std::path::Path;

use futures_util::StreamExt;
use oci_client::{Client, Reference};

use crate::digest::Digest;
use crate::error::Error;
use crate::image::oci::{RegistryOptions, within};

/// Why a blob did not arrive.
pub(crate) enum Failure {
    /// The registry sent other bytes than the digest names: the artifact
    /// is damaged or was tampered with (the reason, for the caller's error).
    Refused(String),
    /// The transfer failed (network, timeout, disk): worth another try.
    Transfer(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Transfer(e)
    }
}

impl From<crate::image::oci::PullError> for Failure {
    fn from(e: crate::image::oci::PullError) -> Failure {
        Failure::Transfer(e.into())
    }
}

impl Failure {
    /// The error, a refusal made by `refused`.
    pub(crate) fn into_error(self, refused: impl FnOnce(String) -> Error) -> Error {
        match self {
            Failure::Refused(reason) => refused(reason),
            Failure::Transfer(e) => e,
        }
    }
}

/// Fetches blob `digest` of `len` bytes into `path`.
pub(crate) async fn fetch(
    client: &Client,
    reference: &Reference,
    options: &RegistryOptions,
    digest: &Digest,
    len: u64,
    path: &Path,
) -> Result<(), Failure> {
    use sha2::Digest as _;
    let limits = &options.limits;
    let what = format!("fetching blob {digest}");
    let transfer = |e: &dyn std::fmt::Display| {
        Failure::Transfer(Error::Invalid(format!(
            "cannot pull {}: {what}: {e}",
            reference.whole()
        )))
    };
    let descriptor = oci_client::manifest::OciDescriptor {
        digest: digest.to_string(),
        size: i64::try_from(len).map_err(|e| transfer(&e))?,
        ..Default::default()
    };
    let mut stream = within(
        reference,
        limits,
        &what,
        client.pull_blob_stream(reference, &descriptor),
    )
    .await?
    .map_err(|e| transfer(&e))?
    .stream;
    let part = path.with_extension("part");
    let io = |e| Error::io(format!("cannot write {}", part.display()), e);
    let mut file = File::create(&part).map_err(io)?;
    let mut hasher = sha2::Sha256::new();
    let mut got = 0u64;
    while let Some(chunk) = within(reference, limits, &what, stream.next()).await? {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            // oci-client checks the digest too, at the end of the stream:
            // with every byte here, the check below says why.
            Err(_) if got == len => break,
            Err(e) => return Err(transfer(&e)),
        };
        got += chunk.len() as u64;
        if got > len {
            let _ = std::fs::remove_file(&part);
            return Err(Failure::Refused(format!(
                "blob {digest} is longer than the {len} bytes listed"
            )));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).map_err(io)?;
    }
    let actual = Digest::of(hasher);
    if got != len || actual != *digest {
        let _ = std::fs::remove_file(&part);
        return Err(Failure::Refused(format!(
            "blob {digest} arrived as {got} bytes with digest {actual}: the registry's copy is damaged or was tampered with"
        )));
    }
    // Not synced: what lands here is read back and used only after the
    // whole transfer (a snapshot's blocks are assembled into synced files;
    // a disk part is imported), and a block a crash left short or empty is
    // caught by its digest when it is read back.
    std::fs::rename(&part, path).map_err(io)?;
    Ok(())
}
