//! Everything a cloud image pull or import can fail with.

use std::fmt;
use std::io;
use std::path::PathBuf;

use super::sniff::{Compression, Foreign};

/// Where the bytes came from, as error messages name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Url(String),
    /// A file, several parts of one, or standard input.
    Local(String),
}

impl Origin {
    /// The subject of a sentence about the bytes: "URL returned" / "FILE is".
    fn returned(&self) -> String {
        match self {
            Origin::Url(url) => format!("{url} returned"),
            Origin::Local(name) => format!("{name} is"),
        }
    }

    /// The subject when the bytes have no name of their own: "what URL returned is".
    fn content_is(&self) -> String {
        match self {
            Origin::Url(url) => format!("what {url} returned is"),
            Origin::Local(name) => format!("{name} is"),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Url(s) | Origin::Local(s) => f.write_str(s),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("invalid cloud image URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot download {url}: {reason}")]
    Request { url: String, reason: String },
    #[error("cannot download {url}: the server answered {status}")]
    Status { url: String, status: String },
    #[error(
        "the download of {url} broke off after {done} bytes{}: {reason}; {}",
        total.map(|t| format!(" of {t}")).unwrap_or_default(),
        if *kept { "the bytes so far are kept: run the same command again to resume" } else { "the server cannot resume it: run the same command again to start over" }
    )]
    Interrupted {
        url: String,
        done: u64,
        total: Option<u64>,
        reason: String,
        kept: bool,
    },
    #[error("{} {found}, not a disk image{}", origin.returned(), if matches!(origin, Origin::Url(_)) { "; check the URL" } else { "" })]
    NotAnImage { origin: Origin, found: Foreign },
    /// Free space ran out (or would have).
    #[error(transparent)]
    Limit(#[from] crate::image::limits::LimitError),
    #[error("{origin} is larger than the {} GiB limit for cloud images", limit >> 30)]
    TooLarge { origin: Origin, limit: u64 },
    #[error("cannot decompress {origin} ({}): {reason}", compression.name())]
    Decompress {
        origin: Origin,
        compression: Compression,
        reason: String,
    },
    #[error(
        "{origin} is compressed twice ({} inside {}); decompress it first",
        inner.name(),
        outer.name()
    )]
    CompressedTwice {
        origin: Origin,
        outer: Compression,
        inner: Compression,
    },
    #[error("{} a qcow2 image {problem}; only standalone qcow2 images can be stored", origin.returned())]
    Qcow2 { origin: Origin, problem: String },
    #[error(
        "{} a {format} image; cloud images must be qcow2 or raw: convert it first (qemu-img convert -O qcow2 SRC DST)",
        origin.returned()
    )]
    Unsupported { origin: Origin, format: String },
    #[error(
        "{} not a disk image: it has no qcow2 header and no partition table (MBR or GPT){}",
        origin.content_is(),
        if matches!(origin, Origin::Url(_)) { "; check the URL" } else { "" }
    )]
    NoPartitionTable { origin: Origin },
    #[error("cannot run qemu-img ({source}); install qemu-utils")]
    QemuImgMissing { source: io::Error },
    #[error("qemu-img {command} failed for {origin}: {output}")]
    QemuImg {
        origin: Origin,
        command: &'static str,
        output: String,
    },
    #[error("cannot read {origin}: {source}")]
    Read { origin: Origin, source: io::Error },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl CloudError {
    /// True when the failure condemns the downloaded bytes themselves (they
    /// are not an image we can store), so keeping them for a resume is pointless.
    /// Interruptions, missing tools and local I/O trouble keep them.
    pub fn condemns_download(&self) -> bool {
        matches!(
            self,
            CloudError::NotAnImage { .. }
                | CloudError::TooLarge { .. }
                | CloudError::Decompress { .. }
                | CloudError::CompressedTwice { .. }
                | CloudError::Qcow2 { .. }
                | CloudError::Unsupported { .. }
                | CloudError::NoPartitionTable { .. }
                | CloudError::QemuImg { .. }
        )
    }
}

pub(crate) fn io_err(
    what: &'static str,
    path: &std::path::Path,
) -> impl Fn(io::Error) -> CloudError {
    let path = path.to_path_buf();
    move |source| CloudError::Io {
        what,
        path: path.clone(),
        source,
    }
}
