use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde_json::Value;

use super::extract::Extractor;
use super::progress::Progress;
use super::reader::{Entry, Kind, TarReader};
use super::{
    ArchiveError, Imported, LEGACY_MANIFEST, MANIFEST_SUM, MAX_ENTRIES, MAX_MANIFEST_SIZE,
    compress, layout, listing, names,
};
use crate::snapshot::manifest::{FileSum, MANIFEST, TreeHasher};

/// Reads an archive (zstd, gzip or plain tar, told apart by magic) into
/// `dest`, an empty directory the caller made, checking every file against
/// the manifest as it is written. `cocoon.json` is written last, after every
/// file checked out. On error everything written into `dest` is removed
/// (`dest` itself stays). `progress` gets the bytes of file content written
/// so far, holes included.
pub fn import(
    input: &mut dyn Read,
    dest: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<Imported, ArchiveError> {
    let mut created = Vec::new();
    let result = Import {
        dest,
        created: &mut created,
    }
    .run(input, progress);
    if result.is_err() {
        for name in &created {
            let _ = std::fs::remove_file(dest.join(name));
        }
    }
    result
}

struct Import<'a> {
    dest: &'a Path,
    /// Files made so far, for the cleanup.
    created: &'a mut Vec<String>,
}

impl Import<'_> {
    fn run(
        &mut self,
        input: &mut dyn Read,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Imported, ArchiveError> {
        let mut tar = TarReader::new(compress::decoder(input)?);
        let mut extractor = Extractor::new(Progress::new(progress));
        let First {
            name: first_name,
            legacy,
            raw,
            manifest,
            mut pending,
        } = first_manifest(&mut tar)?;
        // Progress counts the manifest in force, as the export does.
        extractor.progress.advance(raw.len() as u64);
        let listed = if legacy {
            listing::check_version(&manifest, LEGACY_MANIFEST, 1)?;
            None
        } else {
            Some(listing::listed_files(&manifest)?)
        };

        let mut seen = BTreeSet::new();
        if !legacy {
            // The envelope, when there was one, was the first entry.
            seen.insert(LEGACY_MANIFEST.to_string());
        }
        while let Some(entry) = match pending.take() {
            Some(entry) => Some(entry),
            None => tar.next_entry()?,
        } {
            if seen.len() == MAX_ENTRIES {
                return Err(ArchiveError::TooManyEntries { limit: MAX_ENTRIES });
            }
            let name = checked_name(&entry)?;
            if !legacy && name == MANIFEST_SUM {
                check_manifest_sum(&mut tar, &entry, &raw)?;
                if tar.next_entry()?.is_some() {
                    return Err(ArchiveError::ManifestSum {
                        reason: format!("{MANIFEST_SUM} is not the archive's last entry"),
                    });
                }
                break;
            }
            if name == first_name || seen.contains(&name) {
                return Err(ArchiveError::Duplicate { name });
            }
            self.file(&mut tar, &mut extractor, &entry, &name, listed.as_ref())?;
            seen.insert(name);
        }
        tar.finish()?;

        if let Some(listed) = &listed {
            if let Some(name) = listed.keys().find(|name| !seen.contains(*name)) {
                return Err(ArchiveError::MissingFile { name: name.clone() });
            }
            let path = self.dest.join(MANIFEST);
            let file = self.create(&path, MANIFEST)?;
            (&file)
                .write_all(&raw)
                .and_then(|()| file.sync_all())
                .map_err(|source| ArchiveError::Dest {
                    path: path.clone(),
                    source,
                })?;
        }
        File::open(self.dest)
            .and_then(|d| d.sync_all())
            .map_err(|source| ArchiveError::Dest {
                path: self.dest.to_path_buf(),
                source,
            })?;
        Ok(Imported { manifest, legacy })
    }

    /// One data file: checked against its manifest entry (if any) before
    /// and while it is written.
    fn file<R: Read>(
        &mut self,
        tar: &mut TarReader<R>,
        extractor: &mut Extractor<'_>,
        entry: &Entry,
        name: &str,
        listed: Option<&BTreeMap<String, FileSum>>,
    ) -> Result<(), ArchiveError> {
        let expected = match listed {
            Some(listed) => Some(
                listed
                    .get(name)
                    .ok_or_else(|| ArchiveError::NotInManifest { name: name.into() })?,
            ),
            None => None,
        };
        let layout = layout::resolve(tar, entry, name)?;
        if let Some(sum) = expected
            && sum.size != layout.real_size
        {
            return Err(ArchiveError::SizeMismatch {
                name: name.into(),
                expected: sum.size,
                actual: layout.real_size,
            });
        }
        // What the entry declares must fit before a byte is written (a few
        // compressed bytes can declare terabytes); the extractor never
        // writes more than the declared segments.
        let data: u64 = layout.segments.iter().map(|s| s.len).sum();
        let free = rustix::fs::statvfs(self.dest)
            .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
            .map_err(|e| ArchiveError::Dest {
                path: self.dest.to_path_buf(),
                source: e.into(),
            })?;
        if data > free {
            return Err(ArchiveError::NoSpace {
                name: name.into(),
                size: data,
                free,
                dest: self.dest.to_path_buf(),
            });
        }
        let path = self.dest.join(name);
        let file = self.create(&path, name)?;
        let mut hasher = expected.map(|_| TreeHasher::default());
        extractor.write(
            tar,
            (&path, &file),
            &layout.segments,
            layout.real_size,
            hasher.as_mut(),
        )?;
        if let (Some(sum), Some(hasher)) = (expected, hasher) {
            let actual = hasher.finalize(layout.real_size);
            if actual != sum.sha256 {
                return Err(ArchiveError::ChecksumMismatch {
                    name: name.into(),
                    expected: sum.sha256.clone(),
                    actual,
                });
            }
        }
        file.sync_all()
            .map_err(|source| ArchiveError::Dest { path, source })
    }

    /// A new file in `dest`, never an existing one or through a symlink;
    /// 0600 whatever the archive says, since memory images hold guest secrets.
    fn create(&mut self, path: &Path, name: &str) -> Result<File, ArchiveError> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| ArchiveError::Dest {
                path: path.to_path_buf(),
                source,
            })?;
        self.created.push(name.to_string());
        Ok(file)
    }
}

/// The entry's name, if it is a regular file with a plain name.
fn checked_name(entry: &Entry) -> Result<String, ArchiveError> {
    if !matches!(entry.kind, Kind::Regular | Kind::GnuSparse) {
        return Err(ArchiveError::NotRegularFile {
            name: entry.display_name(),
            kind: entry.kind.describe(),
        });
    }
    names::plain_name(&entry.name)
}

/// The trailer: `<hex>  cocoon.json`, the sha256 of the manifest bytes read.
fn check_manifest_sum<R: Read>(
    tar: &mut TarReader<R>,
    entry: &Entry,
    manifest: &[u8],
) -> Result<(), ArchiveError> {
    let bad = |reason: String| ArchiveError::ManifestSum { reason };
    if entry.size > 256 || entry.gnu_sparse.is_some() {
        return Err(bad(format!("{MANIFEST_SUM} is not a checksum line")));
    }
    let mut line = vec![0; super::small_len(entry.size)];
    tar.read_data_exact(&mut line)?;
    let line = String::from_utf8_lossy(&line);
    let expected = line
        .strip_suffix('\n')
        .and_then(|l| l.strip_suffix(&format!("  {MANIFEST}")))
        .filter(|hex| {
            hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        .ok_or_else(|| {
            bad(format!(
                "{MANIFEST_SUM} is not a sha256sum line for {MANIFEST}"
            ))
        })?;
    let actual = super::export::manifest_sum_line(manifest);
    let actual = &actual[..64];
    if actual != expected {
        return Err(ArchiveError::ManifestChecksum {
            expected: expected.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(())
}

/// The manifest an archive starts with, and the entry after it when that
/// one is a file.
struct First {
    name: String,
    legacy: bool,
    raw: Vec<u8>,
    manifest: Value,
    pending: Option<Entry>,
}

/// Reads `cocoon.json`, or upstream's `snapshot.json` envelope. Our exports
/// (and epoch's re-streaming of them) carry the envelope first and
/// `cocoon.json` next: then `cocoon.json` rules and the envelope is only
/// read. A cocoon (Go) archive has no `cocoon.json`, and its next entry is
/// a file.
fn first_manifest<R: Read>(tar: &mut TarReader<R>) -> Result<First, ArchiveError> {
    let first = tar.next_entry()?.ok_or_else(|| ArchiveError::BadManifest {
        name: MANIFEST.into(),
        reason: "not found: the archive has no entries".into(),
    })?;
    let mut first_name = checked_name(&first)?;
    let mut legacy = match first_name.as_str() {
        MANIFEST => false,
        LEGACY_MANIFEST => true,
        _ => return Err(ArchiveError::ManifestNotFirst { name: first_name }),
    };
    let (mut raw, mut manifest) = read_manifest(tar, &first, &first_name)?;
    let mut pending = None;
    if legacy && let Some(next) = tar.next_entry()? {
        if checked_name(&next)? == MANIFEST {
            (raw, manifest) = read_manifest(tar, &next, MANIFEST)?;
            (legacy, first_name) = (false, MANIFEST.to_string());
        } else {
            pending = Some(next);
        }
    }
    Ok(First {
        name: first_name,
        legacy,
        raw,
        manifest,
        pending,
    })
}

/// The manifest entry's bytes and document; it must be small and stored
/// plainly.
fn read_manifest<R: Read>(
    tar: &mut TarReader<R>,
    entry: &Entry,
    name: &str,
) -> Result<(Vec<u8>, Value), ArchiveError> {
    let bad = |reason: String| ArchiveError::BadManifest {
        name: name.into(),
        reason,
    };
    if entry.size > MAX_MANIFEST_SIZE {
        return Err(ArchiveError::TooLarge {
            name: name.into(),
            what: "manifest",
            size: entry.size,
            limit: MAX_MANIFEST_SIZE,
        });
    }
    if entry.gnu_sparse.is_some() || entry.pax.keys().any(|k| k.contains(".sparse.")) {
        return Err(bad("is stored as a sparse file".into()));
    }
    let mut raw = vec![0; super::small_len(entry.size)];
    tar.read_data_exact(&mut raw)?;
    let doc = serde_json::from_slice(&raw).map_err(|e| bad(format!("is not JSON: {e}")))?;
    Ok((raw, doc))
}
