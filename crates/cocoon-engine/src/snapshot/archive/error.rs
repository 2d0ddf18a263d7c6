use std::io;
use std::path::PathBuf;

/// Why an export or import failed. Entry names are shown as received
/// (lossily decoded), so a hostile name is visible as such.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot read snapshot file {}: {source}", path.display())]
    Source {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the archive: {source}")]
    Write {
        #[source]
        source: io::Error,
    },
    #[error("cannot read the archive: {source}")]
    Read {
        #[source]
        source: io::Error,
    },
    #[error("cannot write {} while importing: {source}", path.display())]
    Dest {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("manifest {name}: {reason}")]
    BadManifest { name: String, reason: String },
    #[error(
        "archive is truncated: {what}; it was cut short (an interrupted copy or download?), fetch it again"
    )]
    Truncated { what: String },
    #[error("archive is corrupt at byte {offset}: {reason}")]
    Corrupt { offset: u64, reason: String },
    #[error(
        "archive entry {name:?} has an unsafe name ({reason}); a snapshot archive holds plain file names only"
    )]
    UnsafeName { name: String, reason: &'static str },
    #[error("archive entry {name:?} is a {kind}; a snapshot archive holds regular files only")]
    NotRegularFile { name: String, kind: String },
    #[error("archive entry {name:?} appears twice")]
    Duplicate { name: String },
    #[error("archive entry {name:?} is not listed in the manifest")]
    NotInManifest { name: String },
    #[error(
        "archive does not start with a manifest (cocoon.json, or snapshot.json from cocoon (Go)): its first entry is {name:?}"
    )]
    ManifestNotFirst { name: String },
    #[error("{name}: size {actual} does not match the manifest's {expected}")]
    SizeMismatch {
        name: String,
        expected: u64,
        actual: u64,
    },
    #[error(
        "{name}: sha256 {actual} does not match the manifest's {expected}; the data is corrupt"
    )]
    ChecksumMismatch {
        name: String,
        expected: String,
        actual: String,
    },
    #[error("file {name:?} listed in the manifest is missing from the archive")]
    MissingFile { name: String },
    #[error("archive entry {name:?}: {what} of {size} bytes is over the limit of {limit} bytes")]
    TooLarge {
        name: String,
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("archive entry {name:?} has a bad sparse map: {reason}")]
    BadSparseMap { name: String, reason: String },
    #[error("archive entry {name:?} has a bad PAX header: {reason}")]
    BadPax { name: String, reason: String },
    #[error("archive entry {name:?}: {what}")]
    Unsupported { name: String, what: String },
    #[error(
        "manifest cocoon.json: its sha256 {actual} does not match {expected} in cocoon.json.sha256; the manifest was changed or corrupted after export"
    )]
    ManifestChecksum { expected: String, actual: String },
    #[error("manifest cocoon.json: {reason}")]
    ManifestSum { reason: String },
    #[error(
        "archive entry {name:?} declares {size} bytes of data, more than the {free} bytes free in {}", dest.display()
    )]
    NoSpace {
        name: String,
        size: u64,
        free: u64,
        dest: PathBuf,
    },
    #[error("archive has more than {limit} entries")]
    TooManyEntries { limit: usize },
}

impl ArchiveError {
    /// A failed read of the (possibly decompressed) stream: a decoder that
    /// runs out of input mid-frame reports `UnexpectedEof`, which is a
    /// truncated archive, not an I/O fault.
    pub(super) fn from_read(source: io::Error, during: impl FnOnce() -> String) -> ArchiveError {
        if source.kind() == io::ErrorKind::UnexpectedEof {
            ArchiveError::Truncated {
                what: format!("{} ({source})", during()),
            }
        } else {
            ArchiveError::Read { source }
        }
    }
}
