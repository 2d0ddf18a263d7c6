//! `snapshot export` and `snapshot import`: a snapshot as one archive stream.
//! An import is extracted and verified in a hidden directory and only then
//! renamed into place and recorded, so a half-read archive is never visible.

use std::io::{Read, Write};
use std::path::Path;

use super::archive::{self, Compression, ExportOptions};
use super::manifest::{self, MANIFEST, Manifest};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::lock::create_private_dir;
use crate::model::{Hypervisor, ImageType, Snapshot, StorageConfig, StorageRole};
use crate::store::ObjectKind;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
    #[error("the archive's manifest is not usable: {0}")]
    Manifest(String),
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::Invalid(TransferError::Manifest(reason.into()).to_string())
}

impl Engine {
    pub fn export_snapshot(
        &mut self,
        reference: &str,
        out: &mut dyn Write,
        compression: Compression,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Snapshot> {
        let snapshot = self.store().resolve_snapshot(reference)?;
        // Refuse to ship a damaged snapshot (sizes; checksums are verified on import).
        crate::vm::load_manifest(&snapshot, false)?;
        archive::export(
            &snapshot.data_dir,
            out,
            &ExportOptions { compression },
            progress,
        )
        .map_err(|e| Error::Invalid(format!("cannot export snapshot {}: {e}", snapshot.id)))?;
        Ok(snapshot)
    }

    pub fn import_snapshot(
        &mut self,
        input: &mut dyn Read,
        name: Option<&str>,
        description: Option<&str>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Snapshot> {
        if let Some(name) = name {
            crate::spec::validate_snapshot_name(name)?;
        }
        let id = crate::id::generate_id();
        let root = self.snapshot_root();
        let staging = root.join(format!(".import-{id}"));
        let final_dir = root.join(&id);
        let intent = self.store().begin_intent(
            "snapshot.import",
            ObjectKind::Snapshot,
            &id,
            &serde_json::json!({"data_dir": final_dir, "staging": staging}),
        )?;
        let result = (|| -> Result<Snapshot> {
            create_private_dir(&staging)
                .map_err(|e| Error::io(format!("cannot create {}", staging.display()), e))?;
            let imported = archive::import(input, &staging, progress)
                .map_err(|e| Error::Invalid(format!("cannot import the snapshot: {e}")))?;
            crate::failpoint::hit("snapshot.import.staged")?;
            let mut manifest = if imported.legacy {
                from_legacy(&imported.manifest, &staging)?
            } else {
                serde_json::from_value::<Manifest>(imported.manifest)
                    .map_err(|e| invalid(e.to_string()))?
            };
            if let Some(name) = name {
                manifest.snapshot.name = name.to_string();
            }
            // Re-derived, not trusted: what it names is checked against what
            // this engine would have written, and its pins are the blobs its
            // disks use, not the archive's list.
            let checked =
                super::trust::check(&manifest, &staging, &self.trust_facts()).map_err(invalid)?;
            let snapshot = &mut manifest.snapshot;
            snapshot.id = id.clone();
            snapshot.vm_id = None;
            snapshot.pending = false;
            snapshot.data_dir = final_dir.clone();
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
            std::fs::rename(&staging, &final_dir).map_err(|e| {
                Error::io(
                    format!("cannot move the import to {}", final_dir.display()),
                    e,
                )
            })?;
            crate::failpoint::hit("snapshot.import.renamed")?;
            self.store().insert_snapshot(&manifest.snapshot)?;
            Ok(manifest.snapshot)
        })();
        if result.is_err() {
            // `final_dir` is this import's own (a fresh id): a failure after
            // the rename must not leave it unrecorded.
            let _ = std::fs::remove_dir_all(&staging);
            let _ = std::fs::remove_dir_all(&final_dir);
        }
        intent.finish(self.store())?;
        result
    }
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
    let hypervisor = match config["hypervisor"].as_str() {
        Some("firecracker") => Hypervisor::Firecracker,
        _ => Hypervisor::CloudHypervisor,
    };
    let storage: Vec<StorageConfig> = serde_json::from_value(sidecar["storage_configs"].clone())
        .map_err(|e| invalid(format!("storage_configs: {e}")))?;
    let boot = serde_json::from_value(sidecar["boot_config"].clone()).unwrap_or_default();
    let u = |k: &str| config[k].as_u64().unwrap_or(0);
    let s = |k: &str| config[k].as_str().unwrap_or_default().to_string();
    let mut source = crate::model::VmConfig::new(&s("name"), &s("image"), ImageType::Oci);
    source.cpu = u("cpu") as u32;
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
        queue_size: u("queue_size") as u32,
        disk_queue_size: u("disk_queue_size") as u32,
        image: source.image.clone(),
        image_digest: source.image_digest.clone(),
        image_type: source.image_type,
        network: source.network.clone(),
        no_direct_io: config["no_direct_io"].as_bool().unwrap_or(false),
        windows: config["windows"].as_bool().unwrap_or(false),
        nics: u("nics") as u32,
        image_blob_ids: serde_json::from_value(config["image_blob_ids"].clone())
            .unwrap_or_default(),
        created_at: jiff::Timestamp::now(),
        pending: false,
        data_dir: dir.to_path_buf(),
    };
    if storage.iter().any(|d| d.role == StorageRole::Cidata)
        && hypervisor == Hypervisor::Firecracker
    {
        return Err(invalid("a Firecracker snapshot with a cidata disk"));
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
