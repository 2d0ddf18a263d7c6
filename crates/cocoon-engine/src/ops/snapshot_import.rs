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
use crate::name::{SnapshotName, VmName};
use crate::snapshot::manifest::{self, MANIFEST, Manifest};
use crate::snapshot::{SnapshotError, trust};
use crate::snapshot::{archive, dir};

/// The source VM name of an unnamed cocoon (Go) snapshot (never used: a
/// clone is named anew, a restore keeps its VM's name).
const LEGACY_SOURCE: &str = "cocoon-imported";

fn invalid(reason: impl Into<String>) -> Error {
    SnapshotError::Manifest(reason.into()).into()
}

pub(crate) fn run(
    ctx: &mut Ctx,
    input: &mut dyn Read,
    name: Option<&SnapshotName>,
    description: Option<&str>,
    progress: &mut dyn FnMut(u64),
) -> Result<Snapshot> {
    import_with(ctx, name, description, |staging| {
        archive::import(input, staging, progress)
            .map_err(|e| Error::Invalid(format!("cannot import the snapshot: {e}")))
    })
}

/// A snapshot directory (`snapshot export --to-dir`, upstream's `--from-dir`)
/// imported like an archive; also returns the VM the snapshot was taken
/// from, as the directory says (`vm restore --from-dir` checks it).
pub(crate) fn run_from_dir(ctx: &mut Ctx, dir: &Path) -> Result<(Snapshot, Option<String>)> {
    let mut source_vm = None;
    let snapshot = import_with(ctx, None, None, |staging| {
        let manifest = dir::import(dir, staging).map_err(|e| {
            Error::Invalid(format!(
                "cannot use snapshot directory {}: {e}",
                dir.display()
            ))
        })?;
        source_vm = manifest["snapshot"]["vm_id"].as_str().map(str::to_string);
        // Used once and dropped: it takes no name a stored snapshot may have.
        let mut manifest = manifest;
        if let Some(snapshot) = manifest
            .get_mut("snapshot")
            .and_then(serde_json::Value::as_object_mut)
        {
            snapshot.remove("name");
        }
        Ok(archive::Imported {
            manifest,
            legacy: false,
        })
    })?;
    Ok((snapshot, source_vm))
}

/// The import: `fill` writes the files into the hidden staging directory;
/// they are verified and re-derived there, then renamed into place and
/// recorded.
pub(super) fn import_with(
    ctx: &mut Ctx,
    name: Option<&SnapshotName>,
    description: Option<&str>,
    fill: impl FnOnce(&Path) -> Result<archive::Imported>,
) -> Result<Snapshot> {
    let id = crate::id::generate_id();
    let staging = ctx.layout.snapshot_import(&id);
    let final_dir = ctx.layout.snapshot(&id);
    let op = Op::SnapshotImport {
        data_dir: final_dir.clone(),
        staging: staging.clone(),
    };
    ctx.with_intent(&op, &id, |ctx, _| {
        let result = (|| {
            create_private_dir(&staging)
                .map_err(|e| Error::io(format!("cannot create {}", staging.display()), e))?;
            let imported = fill(&staging)?;
            crate::failpoint::hit("snapshot.import.staged")?;
            let manifest = derive(ctx, imported, &staging, &id, name, description)?;
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

/// Verifies what was written into `staging`, and writes the re-derived
/// manifest there.
fn derive(
    ctx: &Ctx,
    imported: archive::Imported,
    staging: &Path,
    id: &str,
    name: Option<&SnapshotName>,
    description: Option<&str>,
) -> Result<Manifest> {
    let mut manifest = if imported.legacy {
        from_legacy(&imported.manifest, staging, name)?
    } else {
        let mut doc = imported.manifest;
        // `--name` replaces the archive's name, which is then never read.
        // (Not by indexing: that panics on a document that is no object.)
        if let Some(name) = name
            && let Some(snapshot) = doc
                .get_mut("snapshot")
                .and_then(serde_json::Value::as_object_mut)
        {
            snapshot.insert("name".into(), name.as_str().into());
        }
        // Names are validated here, as the manifest is read.
        serde_json::from_value::<Manifest>(doc).map_err(|e| invalid(e.to_string()))?
    };
    // Taken under another root_dir: its layers and boot files are looked
    // for under this one (by the same content-addressed names).
    let reopens = crate::backend::of(manifest.snapshot.hypervisor).reopens_source_disks();
    crate::snapshot::rebase::rebase(&mut manifest, &ctx.config().root_dir, reopens);
    let facts = super::snapshot_check::trust_facts(ctx, manifest.snapshot.hypervisor);
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

/// A cocoon (Go) snapshot's name (`--name`, else the archive's, validated)
/// and its source VM's, which the archive does not carry: the snapshot's
/// stands in.
fn legacy_names(
    config: &serde_json::Value,
    name: Option<&SnapshotName>,
) -> Result<(Option<SnapshotName>, VmName)> {
    let name = match name {
        Some(name) => Some(name.clone()),
        None => {
            let text = config["name"].as_str().unwrap_or_default().to_string();
            crate::name::optional(text).map_err(|e| invalid(e.to_string()))?
        }
    };
    let source = match &name {
        Some(name) => name.to_kind(),
        None => LEGACY_SOURCE.parse().expect("a valid name"),
    };
    Ok((name, source))
}

/// An archive written by cocoon (Go): `snapshot.json` holds the record, its
/// `cocoon.json` sidecar the storage and boot configuration; no checksums,
/// so they are computed from what was extracted.
fn from_legacy(
    envelope: &serde_json::Value,
    dir: &Path,
    name: Option<&SnapshotName>,
) -> Result<Manifest> {
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
    let (name, source_name) = legacy_names(config, name)?;
    let mut source = crate::model::VmConfig::new(source_name, &s("image"), ImageType::Oci);
    source.cpu = u32_of("cpu");
    source.memory = u("memory");
    source.storage = u("storage");
    source.image_digest = s("image_digest");
    source.network = s("network");
    // cocoon v0.3.8 gave VMs no vsock device, so its snapshots have none.
    source.no_agent = true;
    if config["image_type"] == "cloudimg" {
        source.image_type = ImageType::Cloudimg;
    }
    let snapshot = Snapshot {
        id: s("id"),
        name,
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
        last_accessed_at: None,
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
        files: files.into_iter().map(|(n, s)| (n, s.into())).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_cocoon_go_snapshot_name_is_validated_unless_replaced() {
        let (name, source) = legacy_names(&json!({"name": "web-1"}), None).unwrap();
        assert_eq!(name.as_deref(), Some("web-1"));
        assert_eq!(source, "web-1");
        for unnamed in [json!({"name": ""}), json!({})] {
            let (name, source) = legacy_names(&unnamed, None).unwrap();
            assert_eq!(name, None);
            assert_eq!(source, LEGACY_SOURCE);
        }
        let hostile = json!({"name": "../../etc/cron.d/x"});
        assert_eq!(
            legacy_names(&hostile, None).unwrap_err().to_string(),
            "the archive's manifest is not usable: invalid snapshot name \"../../etc/cron.d/x\": must start with a letter or digit and contain only letters, digits, '.', '_' or '-' (at most 63 characters)"
        );
        // `--name` replaces it; the archive's is then not read.
        let given: SnapshotName = "mine".parse().unwrap();
        let (name, source) = legacy_names(&hostile, Some(&given)).unwrap();
        assert_eq!(name, Some(given));
        assert_eq!(source, "mine");
    }
}
