//! A snapshot taken by another installation (another host, or another
//! `root_dir` on this one), re-pointed at this engine's files before it is
//! checked.
//!
//! A snapshot names the image layers and boot files its VM used by path,
//! and those paths begin with the source's `root_dir`. Layers are content
//! addressed (`<root>/images/blobs/<sha256>.erofs`), so the source root is
//! read off the first layer's path, and every path under it is moved under
//! this engine's root; what the path then names is checked by
//! [`super::trust::check`] exactly as for a local snapshot. Nothing here
//! widens what is accepted: a path outside the source root is left as it
//! is, and the check refuses it as before.
//!
//! Firecracker reopens the paths its state names and takes no override,
//! so for it each moved layer also records the path its VMM saw
//! (`vmm_path`), where the clone's jail shows this engine's copy (see
//! [`crate::jail`]). Such a path must have the engine's shape and lie
//! outside everything the jail shows of the host ([`foreign_target_ok`]).

use std::path::{Path, PathBuf};

use super::manifest::Manifest;
use crate::digest::Digest;
use crate::model::StorageRole;

/// The `root_dir` the snapshot was taken under, read off its first image
/// layer (`<root>/images/blobs/<hex>.erofs`); None without layers.
pub fn source_root(manifest: &Manifest) -> Option<PathBuf> {
    let layer = manifest
        .storage
        .iter()
        .find(|d| d.ro && d.role == StorageRole::Layer)?;
    let path = &layer.path;
    let hex = path.file_name()?.to_str()?.strip_suffix(".erofs")?;
    Digest::from_hex(hex).ok()?;
    let blobs = path.parent()?;
    let images = blobs.parent()?;
    if blobs.file_name()? != "blobs" || images.file_name()? != "images" {
        return None;
    }
    let root = images.parent()?;
    clean(root).then(|| root.to_path_buf())
}

/// An absolute path of plain components only.
fn clean(path: &Path) -> bool {
    use std::path::Component;
    path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

/// Whether a VMM may be shown a file at `path` from a snapshot: an
/// absolute path of plain components, nowhere the jail shows the host.
pub fn foreign_target_ok(path: &Path) -> bool {
    clean(path) && !crate::jail::reserved(path)
}

/// Moves every read-only disk and boot file path under the source root to
/// the same place under `root_dir`. Returns whether anything moved. The
/// writable disks' paths are left alone: a clone or restore places its own
/// copies (and the checks on the paths a VMM reopens still apply).
pub fn rebase(manifest: &mut Manifest, root_dir: &Path, reopens_source_disks: bool) -> bool {
    let Some(from) = source_root(manifest) else {
        return false;
    };
    if from == root_dir {
        return false;
    }
    let moved = |path: &Path| -> Option<PathBuf> {
        let rest = path.strip_prefix(&from).ok()?;
        clean(path).then(|| root_dir.join(rest))
    };
    for disk in manifest.storage.iter_mut().filter(|d| d.ro) {
        if let Some(path) = moved(&disk.path) {
            if reopens_source_disks && disk.vmm_path.is_none() {
                disk.vmm_path = Some(std::mem::replace(&mut disk.path, path));
            } else {
                disk.path = path;
            }
        }
    }
    let boot = &mut manifest.boot;
    for path in [&mut boot.kernel_path, &mut boot.initrd_path]
        .into_iter()
        .flatten()
    {
        if let Some(moved) = moved(path) {
            *path = moved;
        }
    }
    true
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A CH snapshot manifest of one image layer and no files.
    pub(crate) fn manifest_fixture() -> Manifest {
        manifest("/srv/a/images/blobs/x.erofs", "/srv/a/vmlinuz")
    }

    fn manifest(layer: &str, kernel: &str) -> Manifest {
        use crate::model::{
            BootConfig, Hypervisor, ImageType, Snapshot, StorageConfig, Vm, VmConfig,
        };
        let source = VmConfig::new("src".parse().unwrap(), "test/guest:1", ImageType::Oci);
        let dir = PathBuf::from("/srv/a/run/vms/SRC");
        let vm = Vm::new(
            "SRC",
            Hypervisor::CloudHypervisor,
            source.clone(),
            dir.clone(),
            dir,
        );
        let disk = StorageConfig {
            vmm_path: None,
            external: false,
            slot: None,
            path: PathBuf::from(layer),
            ro: true,
            serial: String::new(),
            role: StorageRole::Layer,
            mount_point: String::new(),
            fstype: None,
            direct_io: None,
            directio_mode: None,
        };
        Manifest {
            version: crate::snapshot::manifest::VERSION,
            snapshot: Snapshot::of_vm("S", None, &vm, PathBuf::from("/srv/a/snapshots/S")),
            source,
            storage: vec![disk],
            boot: BootConfig {
                kernel_path: Some(PathBuf::from(kernel)),
                ..Default::default()
            },
            network: vec![],
            files: Default::default(),
        }
    }

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn paths_under_the_source_root_move_under_this_one() {
        let mut m = manifest(
            &format!("/srv/a/images/blobs/{HEX}.erofs"),
            &format!("/srv/a/images/boot/{HEX}/vmlinuz"),
        );
        assert_eq!(source_root(&m), Some(PathBuf::from("/srv/a")));
        assert!(rebase(&mut m, Path::new("/var/lib/cocoon"), false));
        assert_eq!(
            m.storage[0].path,
            PathBuf::from(format!("/var/lib/cocoon/images/blobs/{HEX}.erofs"))
        );
        assert_eq!(
            m.boot.kernel_path,
            Some(PathBuf::from(format!(
                "/var/lib/cocoon/images/boot/{HEX}/vmlinuz"
            )))
        );
    }

    #[test]
    fn nothing_moves_without_a_layer_of_the_engine_shape() {
        for layer in [
            format!("/srv/a/images/blob/{HEX}.erofs"),
            format!("/srv/a/images/blobs/{}.erofs", &HEX[1..]),
            format!("/srv/../a/images/blobs/{HEX}.erofs"),
            format!("relative/images/blobs/{HEX}.erofs"),
        ] {
            let mut m = manifest(&layer, "/etc/passwd");
            assert!(
                !rebase(&mut m, Path::new("/var/lib/cocoon"), false),
                "{layer}"
            );
            assert_eq!(m.storage[0].path, PathBuf::from(&layer));
        }
    }

    #[test]
    fn for_a_vmm_that_reopens_its_paths_the_old_one_is_kept_as_the_path_it_sees() {
        let layer = format!("/srv/a/images/blobs/{HEX}.erofs");
        let mut m = manifest(&layer, "/etc/passwd");
        assert!(rebase(&mut m, Path::new("/var/lib/cocoon"), true));
        assert_eq!(
            m.storage[0].path,
            PathBuf::from(format!("/var/lib/cocoon/images/blobs/{HEX}.erofs"))
        );
        assert_eq!(m.storage[0].vmm_path, Some(PathBuf::from(&layer)));
        assert!(foreign_target_ok(Path::new(&layer)));
        assert!(!foreign_target_ok(Path::new("/usr/images/blobs/x.erofs")));
        assert!(!foreign_target_ok(Path::new("/srv/a/../usr/x")));
    }

    #[test]
    fn a_path_outside_the_source_root_stays_for_the_check_to_refuse() {
        let mut m = manifest(&format!("/srv/a/images/blobs/{HEX}.erofs"), "/etc/shadow");
        assert!(rebase(&mut m, Path::new("/var/lib/cocoon"), false));
        assert_eq!(m.boot.kernel_path, Some(PathBuf::from("/etc/shadow")));
    }
}
