//! Snapshots as plain directories: `snapshot export --to-dir` writes one,
//! `vm clone --from-dir` and `vm restore --from-dir` read one (upstream
//! cocoon's `ExportToDir` and `--from-dir`). The files are the snapshot's
//! own, reflinked where the filesystem shares extents, else sparse copies;
//! `cocoon.json` is written last, so its presence marks a complete export.
//!
//! A directory to read is as hostile as an archive: it is opened without
//! following a link (the directory itself included), every entry must be a
//! regular file the manifest lists (or the manifest itself), each
//! is copied into the engine's own staging directory and its size and
//! checksum verified on that copy, which nobody else can change afterwards.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use super::archive::listing;
use super::copy::{copy_file, copy_from};
use super::manifest::{FileSum, MANIFEST, sum_file};
use super::trust::{open_beneath, open_dir};

/// Bound on `cocoon.json`: a manifest is a few KiB.
const MAX_MANIFEST: u64 = 16 << 20;
/// Bound on the entries a directory may have.
const MAX_ENTRIES: usize = 4096;

/// Writes the snapshot directory `src` (the engine's own) into `dest`,
/// which must be absent or an empty directory (as upstream: an export never
/// merges into an unrelated tree).
pub fn export(src: &Path, dest: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(dest) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dest)
            .map_err(|e| format!("cannot create {}: {e}", dest.display()))?,
        Err(e) => return Err(format!("cannot read {}: {e}", dest.display())),
        Ok(meta) if !meta.is_dir() => {
            return Err(format!("{} exists and is not a directory", dest.display()));
        }
        Ok(_) => {
            let mut entries = std::fs::read_dir(dest)
                .map_err(|e| format!("cannot read {}: {e}", dest.display()))?;
            if entries.next().is_some() {
                return Err(format!(
                    "{} is not empty; export into a new or empty directory",
                    dest.display()
                ));
            }
        }
    }
    let mut names: Vec<String> = std::fs::read_dir(src)
        .map_err(|e| format!("cannot read {}: {e}", src.display()))?
        .filter_map(|e| {
            let e = e.ok()?;
            e.file_type().ok()?.is_file().then_some(())?;
            e.file_name().into_string().ok()
        })
        .filter(|n| n != MANIFEST)
        .collect();
    names.sort();
    names.push(MANIFEST.to_string());
    for name in names {
        copy_file(&src.join(&name), &dest.join(&name))
            .map_err(|e| format!("cannot write {}: {e}", dest.join(&name).display()))?;
    }
    Ok(())
}

/// Copies the snapshot directory `src` into `dest` (the engine's own
/// staging directory, existing and empty), verifying every file against
/// the manifest; returns the manifest document (also written into `dest`).
pub fn import(src: &Path, dest: &Path) -> Result<serde_json::Value, String> {
    let dir = open_dir(src)
        .map_err(|e| format!("cannot open it as a directory (links are not followed): {e}"))?;
    let raw = read_manifest(&dir)?;
    let doc: serde_json::Value =
        serde_json::from_slice(&raw).map_err(|e| format!("{MANIFEST} is not valid JSON: {e}"))?;
    let listed = listing::listed_files(&doc).map_err(|e| e.to_string())?;
    check_entries(src, &listed)?;
    for (name, sum) in &listed {
        copy_checked(&dir, dest, name, sum)?;
    }
    let path = dest.join(MANIFEST);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(&raw).and_then(|()| f.sync_all()))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(doc)
}

fn read_manifest(dir: &std::os::fd::OwnedFd) -> Result<Vec<u8>, String> {
    let file = open_beneath(dir, MANIFEST)
        .map_err(|e| format!("no readable {MANIFEST} (a regular file, not a link): {e}"))?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() || meta.len() > MAX_MANIFEST {
        return Err(format!(
            "{MANIFEST} is not a regular file of at most {MAX_MANIFEST} bytes"
        ));
    }
    let mut raw = Vec::new();
    file.take(MAX_MANIFEST + 1)
        .read_to_end(&mut raw)
        .map_err(|e| format!("cannot read {MANIFEST}: {e}"))?;
    Ok(raw)
}

/// Every entry is the manifest or a file it lists.
fn check_entries(src: &Path, listed: &BTreeMap<String, FileSum>) -> Result<(), String> {
    let entries = std::fs::read_dir(src).map_err(|e| format!("cannot list it: {e}"))?;
    for (count, entry) in entries.enumerate() {
        if count == MAX_ENTRIES {
            return Err(format!("more than {MAX_ENTRIES} entries"));
        }
        let entry = entry.map_err(|e| format!("cannot list it: {e}"))?;
        let name = entry.file_name().into_string().unwrap_or_default();
        if name != MANIFEST && !listed.contains_key(&name) {
            return Err(format!(
                "{:?} is not a file its {MANIFEST} lists",
                entry.file_name()
            ));
        }
    }
    Ok(())
}

/// One listed file: a regular file of the listed size, copied, and the
/// copy's checksum verified.
fn copy_checked(
    dir: &std::os::fd::OwnedFd,
    dest: &Path,
    name: &str,
    sum: &FileSum,
) -> Result<(), String> {
    let file = open_beneath(dir, name).map_err(|e| {
        format!("{name}: cannot open it as a regular file (links are not followed): {e}")
    })?;
    let meta = file.metadata().map_err(|e| format!("{name}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{name} is not a regular file"));
    }
    if meta.len() != sum.size {
        return Err(format!(
            "{name} is {} bytes, its {MANIFEST} says {}",
            meta.len(),
            sum.size
        ));
    }
    let target = dest.join(name);
    copy_from(&file, &target).map_err(|e| format!("cannot copy {name}: {e}"))?;
    let got = sum_file(&target).map_err(|e| format!("cannot checksum {name}: {e}"))?;
    if got.size != sum.size || got.sha256 != sum.sha256 {
        return Err(format!("{name} does not match its checksum in {MANIFEST}"));
    }
    Ok(())
}
