//! `image import` of a whole image archive, not a layer: what `docker save`
//! writes (its `manifest.json`, in the old layout or the OCI-era one) and an
//! OCI image layout in a tar (`skopeo copy … oci-archive:`, `buildah push …
//! oci-archive:`, `docker save` since moby 25). Unlike a bare layer, an
//! archive carries the image's config, so a container image imported this
//! way keeps its entrypoint, environment, directory and user.
//!
//! The archive is hostile. Its entries are staged as files the engine names
//! itself (a counter), never by the entry's name; names are only keys of a
//! map, links inside the archive only aliases between keys (nothing is ever
//! linked on disk); every file is bounded by `max_layer_bytes` and the free
//! space; JSON documents by [`MAX_MANIFEST_BYTES`]; every blob an OCI layout
//! names is checked against its digest and size, every `docker save` layer
//! against the config's `diff_ids`.

mod plan;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

pub use plan::{Expect, Plan, PlannedLayer, plan};

use super::limits::{self, Bounded, LimitError, MAX_MANIFEST_BYTES};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot read the image archive {source_name}: {source}")]
    Read {
        source_name: String,
        source: io::Error,
    },
    #[error(
        "the image archive {source_name} has an entry {entry:?} that {reason}; an image archive holds only files, directories and links between its own files"
    )]
    Entry {
        source_name: String,
        entry: String,
        reason: &'static str,
    },
    #[error("the image archive {source_name} names {entry:?} ({what}), which it does not hold")]
    Missing {
        source_name: String,
        what: String,
        entry: String,
    },
    #[error("the image archive {source_name}: {file} is not valid: {reason}")]
    Document {
        source_name: String,
        file: String,
        reason: String,
    },
    #[error(
        "the image archive {source_name}: {what} {entry:?} does not match its digest or size (expected {expected}, found {found}); the archive is damaged or was altered"
    )]
    Mismatch {
        source_name: String,
        what: String,
        entry: String,
        expected: String,
        found: String,
    },
    #[error("the image archive {source_name}: {reason}")]
    Unsupported { source_name: String, reason: String },
    #[error(transparent)]
    Limit(#[from] LimitError),
}

/// Whether a tar stream whose first bytes are `head` is an image archive
/// rather than a layer: its first entry is one of the files or directories
/// an OCI layout or `docker save` starts with. A root filesystem's tar does
/// not start with `oci-layout`, `blobs/` or a 64-hex directory.
pub fn is_archive(head: &[u8]) -> bool {
    let mut archive = tar::Archive::new(io::Cursor::new(head));
    let Ok(mut entries) = archive.entries() else {
        return false;
    };
    let Some(Ok(first)) = entries.next() else {
        return false;
    };
    let Ok(path) = first.path() else {
        return false;
    };
    let name = path.to_string_lossy();
    let name = name.trim_start_matches("./");
    let top = name.split('/').next().unwrap_or_default();
    let stem = top.split('.').next().unwrap_or_default();
    matches!(
        top,
        "oci-layout" | "index.json" | "manifest.json" | "repositories" | "blobs"
    ) || (stem.len() == 64 && stem.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The archive's files, staged under a directory of the engine's own.
pub struct Staged {
    pub source_name: String,
    files: HashMap<String, PathBuf>,
    /// Symbolic and hard links: name → the name they stand for.
    links: HashMap<String, String>,
}

/// How deep a chain of links inside the archive may go.
const MAX_LINK_HOPS: usize = 8;

impl Staged {
    /// The staged file an entry name stands for, following the archive's
    /// own links.
    pub fn file(&self, name: &str, what: &str) -> Result<&Path, ArchiveError> {
        let mut current = normalise(name).unwrap_or_default();
        for _ in 0..=MAX_LINK_HOPS {
            if let Some(path) = self.files.get(&current) {
                return Ok(path);
            }
            match self.links.get(&current) {
                Some(target) => current = target.clone(),
                None => break,
            }
        }
        Err(ArchiveError::Missing {
            source_name: self.source_name.clone(),
            what: what.to_string(),
            entry: name.to_string(),
        })
    }

    pub fn has(&self, name: &str) -> bool {
        self.file(name, "").is_ok()
    }

    /// A JSON document of the archive, at most [`MAX_MANIFEST_BYTES`].
    pub fn document(&self, name: &str, what: &str) -> Result<Vec<u8>, ArchiveError> {
        let path = self.file(name, what)?;
        let read = |source| ArchiveError::Read {
            source_name: self.source_name.clone(),
            source,
        };
        let file = File::open(path).map_err(read)?;
        let mut body = Vec::new();
        file.take(MAX_MANIFEST_BYTES + 1)
            .read_to_end(&mut body)
            .map_err(read)?;
        if body.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(ArchiveError::Document {
                source_name: self.source_name.clone(),
                file: name.to_string(),
                reason: format!("it is over {}", limits::human(MAX_MANIFEST_BYTES)),
            });
        }
        Ok(body)
    }
}

/// An entry's name as a key: no leading `./`, no `.`/`..`/empty components,
/// not absolute. None when it cannot be one.
fn normalise(name: &str) -> Option<String> {
    let mut rest = name;
    while let Some(stripped) = rest.strip_prefix("./") {
        rest = stripped;
    }
    let rest = rest.trim_end_matches('/');
    let ok = !rest.is_empty()
        && !rest.starts_with('/')
        && !rest.contains('\0')
        && rest
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    ok.then(|| rest.to_string())
}

/// A link's target as a key: relative to the link's directory for a
/// symbolic link, to the archive's root for a hard link.
fn link_target(link: &str, target: &str, symbolic: bool) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = match (symbolic, link.rsplit_once('/')) {
        (true, Some((dir, _))) => dir.split('/').collect(),
        _ => Vec::new(),
    };
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    normalise(&parts.join("/"))
}

/// Stages every file of the archive under `dir` (created here, private),
/// each bounded by `max_bytes` and the free space of `space_dir`.
pub fn stage(
    reader: impl Read,
    source_name: &str,
    dir: &Path,
    space_dir: &Path,
    max_bytes: u64,
) -> Result<Staged, ArchiveError> {
    let read = |source| ArchiveError::Read {
        source_name: source_name.to_string(),
        source,
    };
    let entry_error = |entry: &str, reason| ArchiveError::Entry {
        source_name: source_name.to_string(),
        entry: entry.to_string(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(read)?;
    let mut staged = Staged {
        source_name: source_name.to_string(),
        files: HashMap::new(),
        links: HashMap::new(),
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(read)? {
        let mut entry = entry.map_err(read)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(name) = normalise(&raw) else {
            return Err(entry_error(&raw, "has an absolute or `..` name"));
        };
        if staged.files.contains_key(&name) || staged.links.contains_key(&name) {
            return Err(entry_error(&raw, "appears twice"));
        }
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .map(|t| String::from_utf8_lossy(&t).into_owned())
                .unwrap_or_default();
            let Some(target) = link_target(&name, &target, kind.is_symlink()) else {
                return Err(entry_error(&raw, "links outside the archive"));
            };
            staged.links.insert(name, target);
            continue;
        }
        if !kind.is_file() {
            return Err(entry_error(
                &raw,
                "is neither a file, a directory nor a link",
            ));
        }
        let path = dir.join(staged.files.len().to_string());
        let what = format!("importing {source_name}");
        let mut bounded = Bounded::new(&mut entry, max_bytes, space_dir, &what)
            .too_large_as(&format!("{name} in {source_name}"));
        let failure = bounded.failure();
        let copied = File::create(&path).and_then(|mut out| io::copy(&mut bounded, &mut out));
        if let Err(source) = copied {
            return Err(match limits::take_failure(&failure) {
                Some(limit) => limit.into(),
                None => read(source),
            });
        }
        staged.files.insert(name, path);
    }
    Ok(staged)
}

#[cfg(test)]
mod tests;
