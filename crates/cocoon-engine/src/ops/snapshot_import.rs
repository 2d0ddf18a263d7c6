//! `snapshot import`: an archive (ours, or cocoon (Go)'s) extracted and
//! verified in a hidden directory, re-derived (never trusted: what it names
//! is checked against what this engine would have written, and its pins are
//! the blobs its disks use, not the archive's list), and only then renamed
//! into place and recorded, so a half-read archive is never visible.

use std::io::Read;
use std::path::Path;

use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::intent::Op;
use crate::lock::create_private_dir;
use crate::model::{ImageType, Snapshot, StorageConfig, StorageRole};
use crate::snapshot::archive;
use crate::snapshot::manifest::{self, MANIFEST, Manifest};
use crate::snapshot::{SnapshotError, trust};

fn invalid(reason: impl Into<String>) -> Error {
    SnapshotError::Manifest(reason.into()).into()
}

pub(crate) fn run(
    ctx: &mut Ctx,
    input: &mut dyn Read,
    name: Option<&str>,
    description: Option<&str>,
    progress: &mut dyn FnMut(u64),
) -> Result<Snapshot> {
    if let Some(name) = name {
        crate::spec::validate_snapshot_name(name)?;
    }
    let id = crate::id::generate_id();
    let staging = ctx.layout.snapshot_import(&id);
    let final_dir = ctx.layout.snapshot(&id);
    let op = Op::SnapshotImport {
        data_dir: final_dir.clone(),
        staging: staging.clone(),
    };
    ctx.with_intent(&op, &id, |ctx, _| {
        let result = (|| {
            let manifest = extract(ctx, input, &staging, &id, name, description, progress)?;
            std::fs::rename(&staging, &final_dir).map_err(|e| {
                Error::io(
                    format!("cannot move the import to {}", final_dir.display()),
                    e,
                )
            })?;
            crate::failpoint::hit("snapshot.import.renamed")?;
            ctx.store().insert_snapshot(&manifest.snapshot)?;
            Ok(manifest.snapshot)
        })();
        if result.is_err() {
            // `final_dir` is this import's own (a fresh id): a failure after
            // the rename must not leave it unrecorded.
            let _ = std::fs::remove_dir_all(&staging);
            let _ = std::fs::remove_dir_all(&final_dir);
        }
        result
    })
}

/// Extracts and verifies the archive into `staging`, and writes the
/// re-derived manifest there.
fn extract(
    ctx: &Ctx,
    input: &mut dyn Read,
    staging: &Path,
    id: &str,
    name: Option<&str>,
    description: Option<&str>,
    progress: &mut dyn FnMut(u64),
) -> Result<Manifest> {
    create_private_dir(staging)
        .map_err(|e| Error::io(format!("cannot create {}", staging.display()), e))?;
    let imported = archive::import(input, staging, progress)
        .map_err(|e| Error::Invalid(format!("cannot import the snapshot: {e}")))?;
    crate::failpoint::hit("snapshot.import.staged")?;
    let mut manifest = if imported.legacy {
        from_legacy(&imported.manifest, staging)?
    } else {
        serde_json::from_value::<Manifest>(imported.manifest).map_err(|e| invalid(e.to_string()))?
    };
    if let Some(name) = name {
        manifest.snapshot.name = name.to_string();
    }
    let facts = super::snapshot_check::trust_facts(ctx);
    let checked = trust::check(&manifest, staging, &facts).map_err(invalid)?;
    let snapshot = &mut manifest.snapshot;
    snapshot.id = id.to_string();
    snapshot.vm_id = None;
    snapshot.pending = false;
    snapshot.data_dir = ctx.layout.snapshot(id);
    snapshot.image_blob_ids = checked
        .blobs
        .iter()
        .map(|d| (d.to_string(), crate::model::Empty {}))
        .collect();
    if let Some(description) = description {
        snapshot.description = description.to_string();
    }
    std::fs::write(
        staging.join(MANIFEST),
        serde_json::to_vec_pretty(&manifest).expect("manifest serialises"),
    )
    .map_err(|e| Error::io("cannot write the manifest", e))?;
    Ok(manifest)
}

/// An archive written by cocoon (Go): `snapshot.json` holds the record, its
/// `cocoon.json` sidecar the storage and boot configuration; no checksums,
/// so they are computed from what was extracted.
fn from_legacy(envelope: &serde_json::Value, dir: &Path) -> Result<Manifest> {
    let config = &envelope["config"];
    let sidecar: serde_json::Value = std::fs::read(dir.join(MANIFEST))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| invalid("the cocoon (Go) archive has no cocoon.json sidecar"))?;
    let _ = std::fs::remove_file(dir.join(MANIFEST));
    // cocoon (Go) writes `firecracker` for Firecracker and nothing (or
    // `cloud-hypervisor`) for the default.
    let backend = config["hypervisor"]
        .as_str()
        .and_then(crate::backend::named)
        .unwrap_or_else(crate::backend::default);
    let hypervisor = backend.kind();
    let storage: Vec<StorageConfig> = serde_json::from_value(sidecar["storage_configs"].clone())
        .map_err(|e| invalid(format!("storage_configs: {e}")))?;
    let boot = serde_json::from_value(sidecar["boot_config"].clone()).unwrap_or_default();
    let u = |k: &str| config[k].as_u64().unwrap_or(0);
    // A count beyond u32 is nonsense; it saturates and the checks refuse it.
    let u32_of = |k: &str| u32::try_from(u(k)).unwrap_or(u32::MAX);
    let s = |k: &str| config[k].as_str().unwrap_or_default().to_string();
    let mut source = crate::model::VmConfig::new(&s("name"), &s("image"), ImageType::Oci);
    source.cpu = u32_of("cpu");
    source.memory = u("memory");
    source.storage = u("storage");
    source.image_digest = s("image_digest");
    source.network = s("network");
    if config["image_type"] == "cloudimg" {
        source.image_type = ImageType::Cloudimg;
    }
    let snapshot = Snapshot {
        id: s("id"),
        name: s("name"),
        description: s("description"),
        hypervisor,
        vm_id: None,
        cpu: source.cpu,
        memory: source.memory,
        storage: source.storage,
        queue_size: u32_of("queue_size"),
        disk_queue_size: u32_of("disk_queue_size"),
        image: source.image.clone(),
        image_digest: source.image_digest.clone(),
        image_type: source.image_type,
        network: source.network.clone(),
        no_direct_io: config["no_direct_io"].as_bool().unwrap_or(false),
        windows: config["windows"].as_bool().unwrap_or(false),
        nics: u32_of("nics"),
        image_blob_ids: serde_json::from_value(config["image_blob_ids"].clone())
            .unwrap_or_default(),
        created_at: jiff::Timestamp::now(),
        pending: false,
        data_dir: dir.to_path_buf(),
    };
    if storage.iter().any(|d| d.role == StorageRole::Cidata) && !backend.boots_uefi() {
        return Err(invalid(format!(
            "a {} snapshot with a cidata disk",
            backend.title()
        )));
    }
    let files = manifest::sum_dir(dir).map_err(|e| Error::io("cannot checksum the import", e))?;
    Ok(Manifest {
        version: manifest::VERSION,
        snapshot,
        source,
        storage,
        boot,
        network: vec![],
        files,
    })
}
