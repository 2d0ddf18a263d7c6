//! `cocoon gc`: after converging dead operations, one consistent read of
//! every record decides what nothing references any more: blobs, boot files,
//! run/log/snapshot directories without records, stale temp files, network
//! namespaces and bridge TAPs of VMs that are gone, and VMMs no record owns.
//! Anything an in-flight operation may be writing (a held lock, an intent
//! whose owner lives, a file younger than a grace period) is left alone.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::engine::Engine;
use crate::error::Result;
use crate::image::store::ImageDirs;
use crate::net;
use crate::reconcile::Repair;
use crate::supervise::{self, StopTimeouts};

/// Temp files younger than this may belong to a running pull or import.
const TEMP_GRACE: Duration = Duration::from_secs(3600);
/// A kept partial download stays resumable this long.
const PARTIAL_GRACE: Duration = Duration::from_secs(24 * 3600);
/// A blob file with no record yet may be a pull about to record it.
const BLOB_GRACE: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Serialize)]
pub struct GcItem {
    /// `blob`, `boot`, `temp`, `run_dir`, `log_dir`, `snapshot_dir`, `netns`, `tap`, `vmm`.
    pub kind: &'static str,
    pub path: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// What crash recovery converged first (not done in a dry run).
    pub recovered: Vec<Repair>,
    pub removed: Vec<GcItem>,
    pub bytes_freed: u64,
}

/// Bytes a path takes on disk (allocated blocks: sparse disks count what they use).
fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if meta.is_dir() {
        std::fs::read_dir(path)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| disk_usage(&e.path()))
                    .sum()
            })
            .unwrap_or(0)
    } else {
        meta.blocks() * 512
    }
}

fn older_than(path: &Path, age: Duration) -> bool {
    std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|d| d >= age)
}

/// True when someone holds the flock on `lock` (an operation in flight).
fn locked(lock: &Path) -> bool {
    match File::open(lock) {
        Ok(f) => match f.try_lock() {
            Ok(()) => false,
            Err(std::fs::TryLockError::WouldBlock) => true,
            Err(_) => false,
        },
        Err(_) => false,
    }
}

fn entries(dir: &Path) -> Vec<(String, PathBuf)> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the `tmp/` entry `name` belongs to an operation in flight: a
/// layer work area (`<hex>`, `<hex>.<suffix>`) while its digest's lock is
/// held; a command's own work file or tree (`import-<pid>-<id>`,
/// `stage-<pid>-<id>.img`, `convert-...`, `pull-<key>.partial`) while the
/// process that made it lives: those are what it holds (its intent names
/// the same pid), not a digest lock, so gc never takes a running import's
/// tree. A dead owner's files are the reconciler's (`remove_work_of`).
fn work_area_held(dirs: &ImageDirs, name: &str) -> bool {
    let first = name.split(['.', '-']).next().unwrap_or_default();
    if let Ok(digest) = crate::digest::Digest::from_hex(first) {
        return locked(&dirs.lock(&digest));
    }
    name.split('-')
        .nth(1)
        .and_then(|pid| pid.parse::<u32>().ok())
        .filter(|pid| *pid > 0)
        .is_some_and(|pid| Path::new("/proc").join(pid.to_string()).exists())
}

impl Engine {
    /// Hex digests of the image blobs the recorded VMs' disks use: layer
    /// blobs by their file name, a cloud image VM's base by its image.
    fn blobs_used_by_vms(&mut self) -> Result<HashSet<String>> {
        let mut used = HashSet::new();
        for vm in self.store().list_vms()? {
            if vm.config.image_type == crate::model::ImageType::Cloudimg {
                used.insert(crate::image::store::hex(&vm.config.image_digest).to_string());
            }
            for disk in &vm.storage_configs {
                if let Some(hex) = disk
                    .path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".erofs"))
                {
                    used.insert(hex.to_string());
                }
            }
        }
        Ok(used)
    }

    /// Whether a layer is pinned, or may be about to be (an image pull or
    /// import is in flight): a fresh query, made under the digest's lock.
    fn blob_wanted(&mut self, hex: &str) -> Result<bool> {
        let digest = format!("sha256:{hex}");
        Ok(self.store().read(|tx| {
            Ok(tx.query_row(
                "SELECT EXISTS(SELECT 1 FROM blob_refs WHERE digest = ?1 OR digest = ?2)
                     OR EXISTS(SELECT 1 FROM intents WHERE op IN ('image.pull', 'image.import'))",
                [digest.as_str(), hex],
                |r| r.get::<_, bool>(0),
            )?)
        })?)
    }

    pub fn gc(&mut self, dry_run: bool) -> Result<GcReport> {
        let recovered = if dry_run { vec![] } else { self.reconcile()? };
        // The directories and network markers are listed *before* the
        // records are read: an operation writes its intent (or record)
        // before it makes any of them, so whatever is listed here and has
        // neither a record nor an intent in the view below is garbage. One
        // that appears after the listing (a clone or save starting while gc
        // runs) is never looked at.
        let config = self.config().clone();
        let run_dirs = entries(&config.run_dir.join("vms"));
        let log_dirs = entries(&config.log_dir.join("vms"));
        let snapshot_entries = entries(&self.snapshot_root());
        let ctx = net::NetContext::from_config(&config);
        let markers = ctx.markers();
        // One consistent view of everything recorded.
        let (vm_ids, snapshot_dirs, referenced, busy) = self.store().read(|tx| {
            let strings = |sql: &str| -> Result<HashSet<String>, crate::store::StoreError> {
                let mut stmt = tx.prepare(sql)?;
                Ok(stmt
                    .query_map([], |r| r.get::<_, String>(0))?
                    .collect::<rusqlite::Result<HashSet<_>>>()?)
            };
            Ok((
                strings("SELECT id FROM vms")?,
                strings("SELECT id FROM snapshots")?,
                strings("SELECT DISTINCT digest FROM blob_refs")?,
                strings("SELECT object_id FROM intents")?,
            ))
        })?;
        crate::failpoint::hit("gc.read")?;
        let mut removed: Vec<GcItem> = Vec::new();
        let remove = |kind: &'static str, path: &Path, removed: &mut Vec<GcItem>| {
            let bytes = disk_usage(path);
            if !dry_run {
                let result = if path.is_dir() {
                    std::fs::remove_dir_all(path)
                } else {
                    std::fs::remove_file(path)
                };
                if let Err(e) = result {
                    tracing::warn!("gc: cannot remove {}: {e}", path.display());
                    return;
                }
            }
            removed.push(GcItem {
                kind,
                path: path.display().to_string(),
                bytes,
            });
        };

        // Blobs and boot files of layers nothing pins.
        let dirs = ImageDirs::new(&config.root_dir);
        let mut pinned_hex: HashSet<String> = referenced
            .iter()
            .map(|d| crate::image::store::hex(d).to_string())
            .collect();
        // And whatever a VM's disks use, whatever its pins say (a clone
        // made before clones pinned their own disks' blobs).
        pinned_hex.extend(self.blobs_used_by_vms()?);
        // Candidates: unpinned in the view above, past the grace period (a
        // blob a pull renamed into place a moment ago is recorded next).
        let mut candidates: Vec<(&'static str, String, PathBuf)> = Vec::new();
        for (name, path) in entries(&dirs.root.join("blobs")) {
            let hex = name.split('.').next().unwrap_or_default().to_string();
            if !pinned_hex.contains(&hex) && older_than(&path, BLOB_GRACE) {
                candidates.push(("blob", hex, path));
            }
        }
        for (hex, path) in entries(&dirs.root.join("boot")) {
            if !pinned_hex.contains(&hex) && older_than(&path, BLOB_GRACE) {
                candidates.push(("boot", hex, path));
            }
        }
        // Each goes under its digest's lock, after a fresh look at the
        // records. A pull or import looks for a stored layer under that same
        // lock, after writing its intent: so either it finds the blob gone
        // (and fetches it again), or gc finds its intent (and keeps it).
        for (kind, hex, path) in candidates {
            let Ok(digest) = crate::digest::Digest::from_hex(&hex) else {
                continue; // not named by a digest: never stored by a pull or import
            };
            let Ok(lock) = File::open(dirs.lock(&digest)) else {
                continue; // never stored by a pull or import: left alone
            };
            if lock.try_lock().is_err() {
                continue; // a pull or import is on it
            }
            if self.blob_wanted(&hex)? {
                continue;
            }
            remove(kind, &path, &mut removed);
        }
        for (name, path) in entries(&dirs.root.join("tmp")) {
            // A resumable download: `pull-<url key>.partial` and its state
            // file `pull-<url key>.json` (image/cloud/download.rs).
            let resumable = name.starts_with("pull-")
                && (name.ends_with(".partial") || name.ends_with(".json"));
            let grace = if resumable { PARTIAL_GRACE } else { TEMP_GRACE };
            let held = work_area_held(&dirs, &name);
            if older_than(&path, grace) && !held {
                remove("temp", &path, &mut removed);
            }
        }

        // Directories of VMs and snapshots that have no record.
        let runtime = self.runtime()?;
        let quick = StopTimeouts {
            graceful: Duration::ZERO,
            term: Duration::from_secs(2),
            kill: Duration::from_secs(5),
        };
        for (id, path) in run_dirs {
            if vm_ids.contains(&id) || busy.contains(&id) {
                continue;
            }
            // Removed while holding its lock exclusively: a command waiting
            // for it (a Firecracker clone binding disks over files there)
            // then finds the lock file gone and starts afresh.
            let lock = path.join("lock");
            let _held = match crate::lock::VmLock::try_existing(&lock) {
                Some(held) => Some(held),
                None if lock.exists() => continue, // in use
                None => None,
            };
            // A VMM or relay no record owns still runs there: stop it first.
            for socket in [path.join("api.sock"), path.join("console.sock")] {
                let found = supervise::find_by_socket(&socket);
                if found.is_empty() {
                    continue;
                }
                for p in &found {
                    removed.push(GcItem {
                        kind: "vmm",
                        path: format!("pid {} ({})", p.identity.pid, socket.display()),
                        bytes: 0,
                    });
                }
                if !dry_run {
                    let _ = runtime.block_on(supervise::terminate_all_by_socket(&socket, quick));
                }
            }
            remove("run_dir", &path, &mut removed);
        }
        for (id, path) in log_dirs {
            if !vm_ids.contains(&id) && !busy.contains(&id) {
                remove("log_dir", &path, &mut removed);
            }
        }
        for (name, path) in snapshot_entries {
            let id = name.trim_start_matches(".import-");
            if snapshot_dirs.contains(id) || busy.contains(id) {
                continue;
            }
            remove("snapshot_dir", &path, &mut removed);
        }

        // Network namespaces and bridge TAPs of VMs that are gone: only
        // those this installation marked (the host's namespaces are shared).
        for (id, marker) in markers {
            if vm_ids.contains(&id) || busy.contains(&id) {
                continue;
            }
            if let Some(ns) = &marker.netns {
                removed.push(GcItem {
                    kind: "netns",
                    path: ns.display().to_string(),
                    bytes: 0,
                });
            }
            for tap in &marker.taps {
                removed.push(GcItem {
                    kind: "tap",
                    path: tap.clone(),
                    bytes: 0,
                });
            }
            if !dry_run {
                ctx.release_marked(&id, &marker);
            }
        }
        let bytes_freed = removed.iter().map(|i| i.bytes).sum();
        Ok(GcReport {
            dry_run,
            recovered,
            removed,
            bytes_freed,
        })
    }
}
