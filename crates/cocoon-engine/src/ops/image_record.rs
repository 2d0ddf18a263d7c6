//! Recording a stored image: one transaction writes the image and pins its
//! blobs, so an image is never visible with a blob gc may take.

use crate::context::Ctx;
use crate::digest::Digest;
use crate::error::Result;
use crate::image::cloud;
use crate::image::config::ImageConfig;
use crate::image::oci;
use crate::model::{Image, ImageType};

/// Records an image made of stored layers, pinning its blobs.
pub(crate) fn layers(
    ctx: &mut Ctx,
    name: &str,
    id: Digest,
    layers: &[oci::PulledLayer],
    config: Option<ImageConfig>,
) -> Result<Image> {
    let dirs = ctx.images();
    let pulled = oci::Pulled {
        name: name.to_string(),
        manifest_digest: id.clone(),
        layers: layers.to_vec(),
    };
    let file_size = |path: std::path::PathBuf| std::fs::metadata(path).map_or(0, |m| m.len());
    let size = layers.iter().map(|l| l.erofs_size).sum::<u64>()
        + pulled
            .kernel_layer()
            .map_or(0, |d| file_size(dirs.kernel(d)))
        + pulled
            .initrd_layer()
            .map_or(0, |d| file_size(dirs.initrd(d)));
    let image = Image {
        id,
        name: name.to_string(),
        kind: ImageType::Oci,
        size,
        created_at: jiff::Timestamp::now(),
        layers: layers.iter().map(|l| l.digest.clone()).collect(),
        kernel_layer: pulled.kernel_layer().cloned(),
        initrd_layer: pulled.initrd_layer().cloned(),
        own_kernel: pulled.kernel_layer().is_some(),
        config,
    };
    let blobs: Vec<(String, String, u64)> = layers
        .iter()
        .map(|l| (l.digest.to_string(), "erofs".to_string(), l.erofs_size))
        .collect();
    ctx.store().put_image(&image, &blobs)?;
    Ok(image)
}

/// Records a cloud image whose blob is stored, pinning the blob.
pub(crate) fn cloud(ctx: &mut Ctx, name: &str, stored: &cloud::commit::Stored) -> Result<Image> {
    let image = Image {
        id: stored.digest.clone(),
        name: name.to_string(),
        kind: ImageType::Cloudimg,
        size: stored.size,
        created_at: jiff::Timestamp::now(),
        layers: Vec::new(),
        kernel_layer: None,
        initrd_layer: None,
        own_kernel: true,
        config: None,
    };
    ctx.store().put_image(
        &image,
        &[(stored.digest.to_string(), "qcow2".to_string(), stored.size)],
    )?;
    Ok(image)
}
