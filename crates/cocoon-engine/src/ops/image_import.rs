//! `image import`: local tar layers (bottom first; one compressed or plain
//! tar stream from stdin when no file is given), or one cloud image (a qcow2
//! or raw disk, whole or as split parts, possibly compressed). Every source
//! is opened and recognised before anything is converted.

use std::io::BufRead;
use std::path::PathBuf;

use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::image::cloud::{self, CloudProgress};
use crate::image::{archive, import, oci};
use crate::intent::Op;
use crate::model::Image;

use super::image_record;

pub(crate) fn run(
    ctx: &mut Ctx,
    name: &str,
    files: &[PathBuf],
    progress: &dyn CloudProgress,
) -> Result<Image> {
    validate_name(name)?;
    match import::open_all(files)? {
        import::Opened::Layers(readers) => layers(ctx, name, readers),
        import::Opened::Archive(source_name, reader) => archive(ctx, name, &source_name, reader),
        import::Opened::Disk(disk) => cloud_image(ctx, name, disk, progress),
    }
}

fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::Invalid(format!(
            "invalid image name {name:?}: it must be non-empty, without spaces"
        )));
    }
    Ok(())
}

fn layers(
    ctx: &mut Ctx,
    name: &str,
    readers: Vec<(String, Box<dyn BufRead + Send>)>,
) -> Result<Image> {
    ctx.with_intent(&Op::ImageImport { source: None }, name, |ctx, _| {
        let dirs = ctx.images();
        let max_layer_bytes = ctx.config().max_layer_bytes;
        let mut layers = Vec::with_capacity(readers.len());
        for (source_name, reader) in readers {
            layers.push(import::import_layer(
                &dirs,
                &source_name,
                reader,
                max_layer_bytes,
            )?);
            crate::failpoint::hit("image.import.layer")?;
        }
        oci::require_boot_files(name, &layers)?;
        let image = image_record::layers(ctx, name, import_id(&layers), &layers, None)?;
        crate::failpoint::hit("image.import.recorded")?;
        Ok(image)
    })
}

/// A whole image archive: staged (bounded, under the image store's work
/// directory, removed after), checked, then each layer stored as a pulled
/// one is, and the image recorded with its config and identity.
fn archive(
    ctx: &mut Ctx,
    name: &str,
    source_name: &str,
    reader: Box<dyn BufRead + Send>,
) -> Result<Image> {
    let op = Op::ImageImport {
        source: Some(source_name.to_string()),
    };
    ctx.with_intent(&op, name, |ctx, _| {
        let dirs = ctx.images();
        let max_layer_bytes = ctx.config().max_layer_bytes;
        let staging = dirs.root.join("tmp").join(format!(
            "import-{}-{}",
            std::process::id(),
            crate::id::generate_id()
        ));
        let result = (|| {
            dirs.create()
                .map_err(|e| Error::io("cannot create the image store", e))?;
            let staged = archive::stage(reader, source_name, &staging, &dirs.root, max_layer_bytes)
                .map_err(import::ImportError::from)?;
            crate::failpoint::hit("image.import.staged")?;
            let plan = archive::plan(&staged).map_err(import::ImportError::from)?;
            let mut layers = Vec::with_capacity(plan.layers.len());
            for planned in &plan.layers {
                layers.push(archive_layer(&dirs, source_name, planned, max_layer_bytes)?);
                crate::failpoint::hit("image.import.layer")?;
            }
            oci::require_boot_files(name, &layers)?;
            let image = image_record::layers(ctx, name, plan.id, &layers, Some(plan.config))?;
            crate::failpoint::hit("image.import.recorded")?;
            Ok(image)
        })();
        let _ = std::fs::remove_dir_all(&staging);
        result
    })
}

/// Stores one staged layer, checking a `docker save` layer's diff ID.
fn archive_layer(
    dirs: &crate::image::store::ImageDirs,
    source_name: &str,
    planned: &archive::PlannedLayer,
    max_layer_bytes: u64,
) -> Result<oci::PulledLayer> {
    let what = format!("{} in {source_name}", planned.name);
    let reader = crate::image::layer::open_decompressed(&planned.path)
        .map_err(|e| Error::io("cannot read a staged layer", e))?;
    let layer = import::import_layer(dirs, &what, reader, max_layer_bytes)?;
    if let archive::Expect::DiffId(expected) = &planned.expect
        && *expected != layer.digest
    {
        return Err(import::ImportError::from(archive::ArchiveError::Mismatch {
            source_name: source_name.to_string(),
            what: "layer".to_string(),
            entry: planned.name.clone(),
            expected: format!("diff ID {expected}"),
            found: layer.digest.to_string(),
        })
        .into());
    }
    Ok(layer)
}

/// cocoon's import identity: sha256 over the layer digests in order.
fn import_id(layers: &[oci::PulledLayer]) -> crate::digest::Digest {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for layer in layers {
        hasher.update(layer.digest.hex().as_bytes());
    }
    crate::digest::Digest::of(hasher)
}

fn cloud_image(
    ctx: &mut Ctx,
    name: &str,
    disk: cloud::import::DiskSource,
    progress: &dyn CloudProgress,
) -> Result<Image> {
    let op = Op::ImageImport {
        source: Some(disk.name.clone()),
    };
    ctx.with_intent(&op, name, |ctx, _| {
        let stored = cloud::import::store_disk(&ctx.images(), disk, progress)?;
        crate::failpoint::hit("image.import.stored")?;
        let image = image_record::cloud(ctx, name, &stored)?;
        crate::failpoint::hit("image.import.recorded")?;
        Ok(image)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_spaces_or_controls_are_refused() {
        for bad in ["", "a b", "a\tb", "a\nb"] {
            let err = validate_name(bad).unwrap_err().to_string();
            assert!(
                err.contains("it must be non-empty, without spaces"),
                "{err}"
            );
        }
        validate_name("local/my-image:1").unwrap();
    }
}
