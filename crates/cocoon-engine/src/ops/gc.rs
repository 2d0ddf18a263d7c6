//! `cocoon gc`: after converging dead operations, one consistent read of
//! every record decides what nothing references any more: blobs, boot files,
//! run/log/snapshot directories without records, stale temp files, network
//! namespaces and bridge TAPs of VMs that are gone, and VMMs no record owns.
//! Anything an in-flight operation may be writing (a held lock, an intent
//! whose owner lives, a file younger than a grace period) is left alone.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::context::Ctx;
use crate::digest::Digest;
use crate::error::Result;
use crate::image::store::ImageDirs;
use crate::layout::{VmPaths, snapshot_id_of};
use crate::lock::{BlobLock, VmLock};
use crate::store::GcView;
use crate::supervise::{self, StopTimeouts};

use super::recover::Repair;

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

/// What one gc run removed (or, in a dry run, would remove).
struct Sweep {
    dry_run: bool,
    removed: Vec<GcItem>,
}

impl Sweep {
    fn remove(&mut self, kind: &'static str, path: &Path) {
        let bytes = disk_usage(path);
        if !self.dry_run {
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
        self.note(kind, path.display().to_string(), bytes);
    }

    fn note(&mut self, kind: &'static str, path: String, bytes: u64) {
        self.removed.push(GcItem { kind, path, bytes });
    }
}

/// What was on disk before the records were read.
struct Listing {
    run_dirs: Vec<(String, PathBuf)>,
    log_dirs: Vec<(String, PathBuf)>,
    snapshots: Vec<(String, PathBuf)>,
    markers: Vec<(String, crate::net::Marker)>,
}

pub(crate) fn run(ctx: &mut Ctx, dry_run: bool) -> Result<GcReport> {
    let recovered = if dry_run {
        vec![]
    } else {
        super::recover::run(ctx)?
    };
    // The directories and network markers are listed *before* the records
    // are read: an operation writes its intent (or record) before it makes
    // any of them, so whatever is listed here and has neither a record nor
    // an intent in the view below is garbage. One that appears after the
    // listing (a clone or save starting while gc runs) is never looked at.
    let listing = Listing {
        run_dirs: entries(&ctx.layout.vm_runs()),
        log_dirs: entries(&ctx.layout.vm_logs()),
        snapshots: entries(&ctx.layout.snapshots()),
        markers: ctx.net().markers(),
    };
    let view = ctx.store().gc_view()?;
    crate::failpoint::hit("gc.read")?;
    let mut sweep = Sweep {
        dry_run,
        removed: Vec::new(),
    };
    sweep_blobs(ctx, &view, &mut sweep)?;
    sweep_temp(&ctx.images(), &mut sweep);
    sweep_vm_dirs(ctx, &view, listing.run_dirs, listing.log_dirs, &mut sweep)?;
    for (name, path) in listing.snapshots {
        let id = snapshot_id_of(&name);
        if !view.snapshot_ids.contains(id) && !view.busy.contains(id) {
            sweep.remove("snapshot_dir", &path);
        }
    }
    sweep_network(ctx, &view, listing.markers, &mut sweep);
    sweep_pulls(ctx, &mut sweep);
    let bytes_freed = sweep.removed.iter().map(|i| i.bytes).sum();
    Ok(GcReport {
        dry_run,
        recovered,
        removed: sweep.removed,
        bytes_freed,
    })
}

/// The blocks of snapshot pulls no process is running (killed, or failed
/// on the network): kept until then so the pull can resume. Each is
/// removed under its lock, so a pull in flight keeps its blocks.
fn sweep_pulls(ctx: &Ctx, sweep: &mut Sweep) {
    for (_, dir) in entries(&ctx.layout.snapshot_pulls()) {
        let Ok(lock) = std::fs::File::open(dir.join(".lock")) else {
            continue;
        };
        if lock.try_lock().is_ok() {
            sweep.remove("snapshot_pull", &dir);
        }
    }
}

/// Blobs and boot files of layers nothing pins. Candidates are unpinned in
/// the view and past the grace period (a blob a pull renamed into place a
/// moment ago is recorded next); each goes under its blob lock, after a
/// fresh look at the records. A pull or import looks for a stored layer
/// under that same lock, after writing its intent: so either it finds the
/// blob gone (and fetches it again), or gc finds its intent (and keeps it).
fn sweep_blobs(ctx: &mut Ctx, view: &GcView, sweep: &mut Sweep) -> Result<()> {
    let dirs = ctx.images();
    let mut pinned: HashSet<String> = view
        .pinned
        .iter()
        .map(|d| crate::image::store::hex(d).to_string())
        .collect();
    // And whatever a VM's disks use, whatever its pins say (a clone made
    // before clones pinned their own disks' blobs).
    pinned.extend(blobs_used_by_vms(ctx)?);
    let mut candidates: Vec<(&'static str, String, PathBuf)> = Vec::new();
    for (name, path) in entries(&dirs.root.join("blobs")) {
        let hex = name.split('.').next().unwrap_or_default().to_string();
        if !pinned.contains(&hex) && older_than(&path, BLOB_GRACE) {
            candidates.push(("blob", hex, path));
        }
    }
    for (hex, path) in entries(&dirs.root.join("boot")) {
        if !pinned.contains(&hex) && older_than(&path, BLOB_GRACE) {
            candidates.push(("boot", hex, path));
        }
    }
    for (kind, hex, path) in candidates {
        let Ok(digest) = Digest::from_hex(&hex) else {
            continue; // not named by a digest: never stored by a pull or import
        };
        // None: a pull or import is on it, or none ever stored it.
        let Some(_lock) = BlobLock::try_existing(&dirs, &digest) else {
            continue;
        };
        if !ctx.store().blob_wanted(&hex)? {
            sweep.remove(kind, &path);
        }
    }
    Ok(())
}

/// Hex digests of the image blobs the recorded VMs' disks use: layer
/// blobs by their file name, a cloud image VM's base by its image.
fn blobs_used_by_vms(ctx: &mut Ctx) -> Result<HashSet<String>> {
    let mut used = HashSet::new();
    for vm in ctx.store().list_vms()? {
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

/// Stale files in the images' `tmp/`.
fn sweep_temp(dirs: &ImageDirs, sweep: &mut Sweep) {
    for (name, path) in entries(&dirs.root.join("tmp")) {
        // A resumable download: `pull-<url key>.partial` and its state
        // file `pull-<url key>.json` (image/cloud/download.rs).
        let resumable =
            name.starts_with("pull-") && (name.ends_with(".partial") || name.ends_with(".json"));
        let grace = if resumable { PARTIAL_GRACE } else { TEMP_GRACE };
        if older_than(&path, grace) && !work_area_held(dirs, &name) {
            sweep.remove("temp", &path);
        }
    }
}

/// Run and log directories of VMs that have no record, and any VMM or
/// relay no record owns still running there.
fn sweep_vm_dirs(
    ctx: &mut Ctx,
    view: &GcView,
    run_dirs: Vec<(String, PathBuf)>,
    log_dirs: Vec<(String, PathBuf)>,
    sweep: &mut Sweep,
) -> Result<()> {
    let gone = |id: &str| !view.vm_ids.contains(id) && !view.busy.contains(id);
    for (id, path) in run_dirs {
        if !gone(&id) {
            continue;
        }
        // Removed while holding its lock exclusively: a command waiting for
        // it then finds the lock file gone and starts afresh.
        let paths = VmPaths::run_only(&path);
        let lock = paths.lock();
        let _held = match VmLock::try_existing(&lock) {
            Some(held) => Some(held),
            None if lock.exists() => continue, // in use
            None => None,
        };
        stop_orphans(ctx, &paths, sweep)?;
        sweep.remove("run_dir", &path);
    }
    for (id, path) in log_dirs {
        if gone(&id) {
            sweep.remove("log_dir", &path);
        }
    }
    Ok(())
}

/// A VMM or relay no record owns that still runs in a run directory.
fn stop_orphans(ctx: &mut Ctx, paths: &VmPaths, sweep: &mut Sweep) -> Result<()> {
    let quick = StopTimeouts {
        graceful: Duration::ZERO,
        term: Duration::from_secs(2),
        kill: Duration::from_secs(5),
    };
    for socket in paths.process_sockets() {
        let found = supervise::find_by_socket(&socket);
        if found.is_empty() {
            continue;
        }
        for p in &found {
            let what = format!("pid {} ({})", p.identity.pid, socket.display());
            sweep.note("vmm", what, 0);
        }
        if !sweep.dry_run {
            ctx.block_on(async |_| {
                let _ = supervise::terminate_all_by_socket(&socket, quick).await;
                Ok(())
            })?;
        }
    }
    Ok(())
}

/// Network namespaces and bridge TAPs of VMs that are gone: only those this
/// installation marked (the host's namespaces are shared).
fn sweep_network(
    ctx: &Ctx,
    view: &GcView,
    markers: Vec<(String, crate::net::Marker)>,
    sweep: &mut Sweep,
) {
    let net = ctx.net();
    for (id, marker) in markers {
        if view.vm_ids.contains(&id) || view.busy.contains(&id) {
            continue;
        }
        if let Some(ns) = &marker.netns {
            sweep.note("netns", ns.display().to_string(), 0);
        }
        for tap in &marker.taps {
            sweep.note("tap", tap.clone(), 0);
        }
        if !sweep.dry_run {
            net.release_marked(&id, &marker);
        }
    }
}

/// Bytes a path takes on disk (allocated blocks: sparse disks count what they use).
pub(crate) fn disk_usage(path: &Path) -> u64 {
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
/// tree. A dead owner's files are crash recovery's (`remove_work_of`).
fn work_area_held(dirs: &ImageDirs, name: &str) -> bool {
    let first = name.split(['.', '-']).next().unwrap_or_default();
    if let Ok(digest) = Digest::from_hex(first) {
        return BlobLock::is_held(dirs, &digest);
    }
    name.split('-')
        .nth(1)
        .and_then(|pid| pid.parse::<u32>().ok())
        .filter(|pid| *pid > 0)
        .is_some_and(|pid| Path::new("/proc").join(pid.to_string()).exists())
}
