//! The checks every use of a snapshot starts with: its manifest against its
//! directory, everything it names against what this engine would have
//! written (`snapshot::trust`), and its base image's files in the store.

use std::path::{Path, PathBuf};

use crate::context::Ctx;
use crate::error::Result;
use crate::image::store::ImageDirs;
use crate::model::{Hypervisor, ImageType, Snapshot, StorageRole};
use crate::snapshot::manifest::{self, MANIFEST, Manifest};
use crate::snapshot::seal::Sealed;
use crate::snapshot::{SnapshotError, trust};

/// The snapshot's digests, computed now if its sealer has not computed them
/// yet (see `snapshot::seal`: after the sealer, if it is at work); whether
/// this call computed them. Every use that needs the digests calls it first.
pub(crate) fn ensure_sealed(snapshot: &Snapshot) -> Result<bool> {
    let damaged = |reason: String| SnapshotError::Damaged {
        id: snapshot.id.clone(),
        reason,
    };
    match crate::snapshot::seal::seal(&snapshot.data_dir).map_err(damaged)? {
        Sealed::Already(_) => Ok(false),
        Sealed::Now(_) => Ok(true),
        Sealed::Gone => Err(damaged(format!(
            "its {MANIFEST} is gone (it is being removed, or a removal was interrupted: `cocoon snapshot rm {}`)",
            snapshot.id
        ))
        .into()),
    }
}

/// Reads and checks a snapshot's manifest against its directory: every
/// listed file present with its size; with `checksums`, its digest too.
pub(crate) fn load_manifest(snapshot: &Snapshot, checksums: bool) -> Result<Manifest> {
    let damaged = |reason: String| SnapshotError::Damaged {
        id: snapshot.id.clone(),
        reason,
    };
    let path = snapshot.data_dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| damaged(format!("cannot read {}: {e}", path.display())))?;
    let manifest: Manifest =
        serde_json::from_str(&text).map_err(|e| damaged(format!("bad {MANIFEST}: {e}")))?;
    if manifest.version != manifest::VERSION {
        return Err(damaged(format!(
            "manifest version {} is not supported",
            manifest.version
        ))
        .into());
    }
    check_files(snapshot, &manifest, checksums).map_err(damaged)?;
    Ok(manifest)
}

/// Every file the manifest lists, the disk copies and the backend's state
/// files are there, as the manifest says.
fn check_files(snapshot: &Snapshot, manifest: &Manifest, checksums: bool) -> Result<(), String> {
    for (name, sum) in &manifest.files {
        let file = snapshot.data_dir.join(name);
        let size = std::fs::metadata(&file)
            .map_err(|e| format!("{name}: {e}"))?
            .len();
        if size != sum.size {
            return Err(format!(
                "{name} is {size} bytes, the manifest says {}",
                sum.size
            ));
        }
        if checksums {
            if sum.sha256.is_none() {
                return Err(format!(
                    "{name} has no checksum yet (the snapshot is not sealed)"
                ));
            }
            let actual = manifest::sum_file(&file).map_err(|e| format!("{name}: {e}"))?;
            if sum.sha256.as_deref() != Some(actual.sha256.as_str()) {
                return Err(format!("{name} does not match its checksum"));
            }
        }
    }
    for disk in manifest.storage.iter().filter(|d| !d.ro) {
        let name = manifest::file_of(disk).unwrap_or_default();
        if !manifest.files.contains_key(&name) {
            return Err(format!("no copy of disk {}", disk.path.display()));
        }
    }
    let backend = crate::backend::of(manifest.snapshot.hypervisor);
    for name in backend.required_state_files() {
        if !manifest.files.contains_key(*name) {
            return Err(format!("no {name}"));
        }
    }
    Ok(())
}

/// What this engine's snapshot checks of a `hypervisor` snapshot compare
/// with (the firmware is that backend's).
pub(crate) fn trust_facts(ctx: &Ctx, hypervisor: Hypervisor) -> trust::Facts {
    let config = ctx.config();
    let firmware = crate::backend::of(hypervisor).firmware(config);
    trust::Facts {
        root_dir: config.root_dir.clone(),
        run_dir: config.run_dir.clone(),
        firmware_path: firmware.into_iter().next().unwrap_or_default(),
    }
}

/// Checks everything the snapshot names against what this engine would
/// have written (`snapshot::trust`); returns the image blobs it uses.
pub(crate) fn check(ctx: &Ctx, snapshot: &Snapshot, manifest: &Manifest) -> Result<trust::Checked> {
    Ok(trust::check(
        manifest,
        &snapshot.data_dir,
        &trust_facts(ctx, manifest.snapshot.hypervisor),
    )
    .map_err(|reason| SnapshotError::Invalid {
        id: snapshot.id.clone(),
        reason,
    })?)
}

/// Layers, kernel and initrd of the snapshot's image must still be here.
pub(crate) fn check_base_files(ctx: &Ctx, manifest: &Manifest) -> Result<()> {
    rebuild_agent_layer(ctx, manifest)?;
    convert_kernel(ctx, manifest)?;
    if let Some(path) = missing_image_file(ctx, manifest)? {
        return Err(SnapshotError::Invalid {
            id: manifest.snapshot.id.clone(),
            reason: format!(
                "its image {} is not in the store ({} is missing); pull it (cocoon image pull {}) or clone with --pull",
                manifest.source.image,
                path.display(),
                manifest.source.image
            ),
        }
        .into());
    }
    if let Some(firmware) = &manifest.boot.firmware_path
        && !firmware.is_file()
    {
        let backend = crate::backend::of(manifest.snapshot.hypervisor);
        return Err(backend
            .firmware_missing(manifest.source.image.clone(), firmware.clone())
            .into());
    }
    Ok(())
}

/// A snapshot of a VM of an image built for cocoon names the guest agent's
/// layer, which no registry holds: a host that imported the snapshot
/// rebuilds it from its own cocoon-init when that is the same binary (the
/// layer's digest says so). Otherwise the layer stays missing and the
/// check below names it.
fn rebuild_agent_layer(ctx: &Ctx, manifest: &Manifest) -> Result<()> {
    let missing = manifest
        .storage
        .iter()
        .any(|d| d.ro && d.role == StorageRole::Layer && !d.path.exists());
    if !missing {
        return Ok(());
    }
    let Some(agent) =
        crate::image::agent_layer::AgentLayer::installed(&ctx.config().init_binary, &ctx.images())
    else {
        return Ok(());
    };
    let dirs = ctx.images();
    let path = dirs.blob(&agent.digest);
    if manifest.storage.iter().any(|d| d.path == path) {
        agent.ensure(&dirs, ctx.config().max_layer_bytes)?;
    }
    Ok(())
}

/// The first file of the snapshot's image (layers, kernel, initrd, or a
/// cloud image's blob) that is not in the store; an error for one
/// outside this engine's root.
/// A kernel the snapshot's VMM booted from a conversion of its layer's
/// (Firecracker's vmlinux) that this store has not made yet (a snapshot
/// from another host, whose layer came in by `image pull`): made now, from
/// the layer's own kernel, as a boot would.
fn convert_kernel(ctx: &Ctx, manifest: &Manifest) -> Result<()> {
    let Some(kernel) = &manifest.boot.kernel_path else {
        return Ok(());
    };
    if kernel.exists() {
        return Ok(());
    }
    let dirs = ctx.layout.images();
    let backend = crate::backend::of(manifest.snapshot.hypervisor);
    for disk in manifest
        .storage
        .iter()
        .filter(|d| d.ro && d.role == StorageRole::Layer)
    {
        let Some(digest) = disk
            .path
            .file_name()
            .and_then(|n| n.to_str()?.strip_suffix(".erofs"))
            .and_then(|hex| crate::digest::Digest::from_hex(hex).ok())
        else {
            continue;
        };
        if kernel.parent() == Some(dirs.boot_dir(&digest).as_path())
            && dirs.kernel(&digest).is_file()
        {
            // Only the file the snapshot names: any other answer is left to the checks.
            let _ = backend.kernel(&dirs, &digest)?;
        }
    }
    Ok(())
}

pub(crate) fn missing_image_file(ctx: &Ctx, manifest: &Manifest) -> Result<Option<PathBuf>> {
    let root = ctx.config().root_dir.clone();
    let invalid = |reason: String| SnapshotError::Invalid {
        id: manifest.snapshot.id.clone(),
        reason,
    };
    let mut needed: Vec<&Path> = manifest
        .storage
        .iter()
        .filter(|d| d.ro && d.role == StorageRole::Layer)
        .map(|d| d.path.as_path())
        .collect();
    needed.extend(manifest.boot.kernel_path.as_deref());
    needed.extend(manifest.boot.initrd_path.as_deref());
    // A cloud image's overlay is backed by the image's blob.
    let blob = if manifest.source.image_type == ImageType::Cloudimg {
        let digest = crate::digest::Digest::parse(&manifest.source.image_digest)
            .map_err(|e| invalid(e.to_string()))?;
        Some(crate::image::cloud::blob_path(
            &ImageDirs::new(&root),
            &digest,
        ))
    } else {
        None
    };
    needed.extend(blob.as_deref());
    for path in needed {
        if !path.starts_with(&root) {
            return Err(invalid(format!(
                "{} is outside this engine's root directory",
                path.display()
            ))
            .into());
        }
        if !path.exists() {
            return Ok(Some(path.to_path_buf()));
        }
    }
    Ok(None)
}

/// `--cpu/--memory/--storage` on a clone or restore (`0`/`None`: not
/// given): only the snapshot's own values pass. A restored guest keeps the
/// CPUs, memory map and filesystem it was saved with and never sees more,
/// so upstream removed these flags (cocoon #26/#27); we still take the
/// snapshot's values because vk-cocoon passes its pod's (equal) resources
/// on every clone. Growth is `vm resize` on the running VM.
pub(crate) fn inherits_resources(
    source: &crate::model::VmConfig,
    cpu: u32,
    memory: Option<u64>,
    storage: Option<u64>,
) -> Result<()> {
    let differs = |flag: String, had: String| {
        Err(SnapshotError::Override(format!(
            "{flag} differs from the snapshot's {had}: a clone or restore takes the snapshot's vCPUs, memory and storage, since the restored guest never sees more; leave the flag out (or give the snapshot's value) and grow the running VM with `cocoon vm resize`"
        ))
        .into())
    };
    if cpu != 0 && cpu != source.cpu {
        return differs(format!("--cpu {cpu}"), format!("{} vCPUs", source.cpu));
    }
    if let Some(m) = memory.filter(|m| *m != source.memory) {
        return differs(
            format!("--memory {}", crate::image::limits::human(m)),
            format!("{} memory", crate::image::limits::human(source.memory)),
        );
    }
    if let Some(s) = storage.filter(|s| *s != source.storage) {
        return differs(
            format!("--storage {}", crate::image::limits::human(s)),
            format!("{} storage", crate::image::limits::human(source.storage)),
        );
    }
    Ok(())
}
