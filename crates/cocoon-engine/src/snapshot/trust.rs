//! What a snapshot may say. A snapshot directory may have come from another
//! host (`snapshot import`), so before a clone, a restore or an import
//! accepts it, everything its manifest and Cloud Hypervisor's `config.json`
//! name is checked against what this engine would itself have written:
//!
//! - every file it lists is a state file of its hypervisor or the copy of
//!   one of its writable disks, opened beneath the snapshot directory's
//!   descriptor (`openat2`, no links followed) and a regular file;
//! - a writable disk is only ever its copy in the snapshot directory; a
//!   read-only disk is an image layer blob named by its [`Digest`]
//!   (`images/blobs/<hex>.erofs`), or the cloud-init disk the clone makes
//!   anew; nothing else;
//! - kernel and initrd are boot files of one of those layers; a firmware is
//!   this engine's configured one;
//! - a qcow2 disk copy has no backing file, except a cloud image overlay's
//!   own base (`images/blobs/<hex>.qcow2` of the snapshot's image digest),
//!   and no external data file;
//! - `config.json` is read with a size bound; the fields the engine rewrites
//!   are rewritten (`restore::patch_ch_config`), those it does not pass
//!   through (`pmem`, `fs`, `devices`, ..., a memory zone's `file`,
//!   a disk's vhost socket, `backing_files` on a disk that is not such an
//!   overlay) are refused, and so is any other field naming a path.
//!
//! The image blobs the storage uses are what the snapshot, and a clone made
//! from it, pin ([`Checked::blobs`]), never a list copied from the archive.
//!
//! Its names (the snapshot's, the source VM's) need no check here: they are
//! [`crate::name::Name`]s, refused when the manifest is read.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use serde_json::Value;

use super::manifest::{self, Manifest};
use crate::digest::Digest;
use crate::image::store::ImageDirs;
use crate::model::{ImageType, StorageConfig, StorageRole};

/// Bytes of `config.json` read at most: CH writes a few KiB.
pub const MAX_CH_CONFIG: u64 = 1 << 20;

const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

/// This engine's directories and settings a snapshot is checked against.
#[derive(Debug, Clone)]
pub struct Facts {
    pub root_dir: PathBuf,
    pub run_dir: PathBuf,
    pub firmware_path: PathBuf,
}

/// What a checked snapshot uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checked {
    /// Image blobs its disks (and boot files) use: what it and its clones pin.
    pub blobs: BTreeSet<Digest>,
}

/// Opens `name` beneath `dir`, following no link, read-only.
pub fn open_beneath(dir: &OwnedFd, name: &str) -> std::io::Result<std::fs::File> {
    let fd = rustix::fs::openat2(
        dir.as_fd(),
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )?;
    Ok(std::fs::File::from(fd))
}

pub fn open_dir(dir: &Path) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// A plain file name: one normal component, no separators.
pub(crate) fn plain(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

/// What one check looks at.
struct Scope<'a> {
    manifest: &'a Manifest,
    facts: &'a Facts,
    dirs: ImageDirs,
    dir_fd: OwnedFd,
    backend: &'static dyn crate::backend::Backend,
    /// A cloud image's base blob.
    base: Option<(Digest, PathBuf)>,
}

/// Checks `manifest` against the snapshot directory `dir` and this engine's
/// `facts`; the reason it cannot be used otherwise.
pub fn check(manifest: &Manifest, dir: &Path, facts: &Facts) -> Result<Checked, String> {
    let dirs = ImageDirs::new(&facts.root_dir);
    let dir_fd = open_dir(dir).map_err(|e| format!("cannot open {}: {e}", dir.display()))?;
    let scope = Scope {
        manifest,
        facts,
        base: cloud_base(manifest, &dirs)?,
        dirs,
        dir_fd,
        backend: crate::backend::of(manifest.snapshot.hypervisor),
    };
    // Disks first: they say which files are disk copies.
    let mut checked = Checked::default();
    let mut copies = BTreeSet::new();
    for (i, disk) in manifest.storage.iter().enumerate() {
        let what = format!("disk {i} ({})", disk.path.display());
        if disk.ro {
            check_read_only_disk(&scope, disk, &what, &mut checked)?;
        } else {
            check_writable_disk(&scope, disk, &what, &mut copies, &mut checked)?;
        }
    }
    if let Some((digest, _)) = &scope.base {
        // The clone's overlay needs its base whether or not it was read here.
        checked.blobs.insert(digest.clone());
    }
    check_listed_files(&scope, &copies)?;
    check_boot_files(&scope, &checked)?;
    scope.backend.check_state(&scope.dir_fd, manifest)?;
    Ok(checked)
}

/// A raw root disk copy is exactly the size the snapshot's VM had (upstream
/// cocoon #230): a clone or restore never boots a guest on a disk that
/// shrank or grew behind the manifest's back.
fn raw_cow_size(
    scope: &Scope<'_>,
    disk: &StorageConfig,
    what: &str,
    name: &str,
    file: &std::fs::File,
) -> Result<(), String> {
    let storage = scope.manifest.source.storage;
    if disk.role != StorageRole::Cow || storage == 0 {
        return Ok(());
    }
    // A qcow2 copy (no backing file) is as long as its clusters, not its disk.
    let mut magic = [0u8; 4];
    if std::os::unix::fs::FileExt::read_at(file, &mut magic, 0).is_ok_and(|n| n == 4)
        && &magic == QCOW2_MAGIC
    {
        return Ok(());
    }
    let size = file
        .metadata()
        .map_err(|e| format!("{what}: cannot read the size of {name:?}: {e}"))?
        .len();
    if size != storage {
        return Err(format!(
            "{what}: its copy {name:?} is {size} bytes, but the snapshot's root disk is {storage} bytes"
        ));
    }
    Ok(())
}

/// A read-only disk: an image layer blob, or the cloud-init disk a cloud
/// image clone makes anew.
fn check_read_only_disk(
    scope: &Scope<'_>,
    disk: &StorageConfig,
    what: &str,
    checked: &mut Checked,
) -> Result<(), String> {
    let source = &scope.manifest.source;
    match disk.role {
        StorageRole::Layer => {
            let digest = layer_digest(&scope.dirs, &disk.path).ok_or_else(|| {
                format!(
                    "{what} is read-only but not an image layer of this engine ({}/<sha256>.erofs)",
                    scope.dirs.root.join("blobs").display()
                )
            })?;
            if let Some(seen) = &disk.vmm_path {
                check_seen_layer(scope, seen, &digest, what)?;
            }
            checked.blobs.insert(digest);
            Ok(())
        }
        StorageRole::Cidata if source.image_type == ImageType::Cloudimg && !source.windows => {
            Ok(())
        }
        _ => Err(format!(
            "{what} is a read-only {:?} disk, which the engine never makes",
            disk.role
        )),
    }
}

/// The path a VMM that reopens its disks saw a layer at (another
/// installation's): the same layer's name under an image store, nowhere
/// the jail shows the host.
fn check_seen_layer(
    scope: &Scope<'_>,
    seen: &Path,
    digest: &Digest,
    what: &str,
) -> Result<(), String> {
    let same_layer = seen.parent().and_then(|blobs| {
        let images = blobs.parent()?;
        (blobs.file_name()? == "blobs" && images.file_name()? == "images")
            .then(|| layer_digest(&ImageDirs::new(images.parent()?), seen))?
    });
    if scope.backend.reopens_source_disks()
        && same_layer.as_ref() == Some(digest)
        && super::rebase::foreign_target_ok(seen)
    {
        return Ok(());
    }
    Err(format!(
        "{what} was seen by its VMM at {}, which is not the same layer in an image store outside the system's paths",
        seen.display()
    ))
}

/// A writable disk: its copy, a plain file in the snapshot directory, with
/// no backing file but a cloud image overlay's own base.
fn check_writable_disk(
    scope: &Scope<'_>,
    disk: &StorageConfig,
    what: &str,
    copies: &mut BTreeSet<String>,
    checked: &mut Checked,
) -> Result<(), String> {
    if disk.role == StorageRole::Layer || disk.role == StorageRole::Cidata {
        return Err(format!("{what} is a writable {:?} disk", disk.role));
    }
    let name = manifest::file_of(disk).unwrap_or_default();
    if !plain(&name) || scope.backend.is_state_file(&name) {
        return Err(format!(
            "{what}: its copy {name:?} is not a plain disk file name"
        ));
    }
    if !copies.insert(name.clone()) {
        return Err(format!("{what}: two disks share the copy {name:?}"));
    }
    if !scope.manifest.files.contains_key(&name) {
        return Err(format!("{what}: no copy of it in the snapshot"));
    }
    if scope.backend.reopens_source_disks() {
        check_source_disk_path(scope, disk, what)?;
    }
    let file = open_beneath(&scope.dir_fd, &name).map_err(|e| {
        format!("{what}: its copy {name:?} cannot be opened inside the snapshot directory: {e}")
    })?;
    let Some(backing) = qcow2_backing(&file).map_err(|e| format!("{what}: {e}"))? else {
        return raw_cow_size(scope, disk, what, &name, &file);
    };
    match &scope.base {
        Some((digest, path)) if Path::new(&backing) == path && disk.role == StorageRole::Cow => {
            checked.blobs.insert(digest.clone());
            Ok(())
        }
        _ => Err(format!(
            "{what} is a qcow2 image with backing file {backing:?}; only a cloud image overlay backed by its own image's blob is accepted"
        )),
    }
}

/// Firecracker reopens the path its VMM saw (from its vmstate); the
/// clone's jail shows its copy there, so it must be a VM's disk in this
/// engine's run directory: <run_dir>/vms/<id>/<name>.
fn check_source_disk_path(
    scope: &Scope<'_>,
    disk: &StorageConfig,
    what: &str,
) -> Result<(), String> {
    let vms = scope.facts.run_dir.join("vms");
    let ok = [Some(&disk.path), disk.vmm_path.as_ref()]
        .into_iter()
        .flatten()
        .all(|path| is_vm_disk_path(&vms, path) || is_foreign_vm_disk_path(path));
    if ok {
        return Ok(());
    }
    Err(format!(
        "{what} is not a VM disk in this engine's run directory ({}/<id>/<file>)",
        vms.display()
    ))
}

/// A VM disk path of another installation (`<run_dir>/vms/<id>/<file>`,
/// any `run_dir`) that a jail may show.
fn is_foreign_vm_disk_path(path: &Path) -> bool {
    let vms = path.parent().and_then(Path::parent);
    vms.is_some_and(|vms| vms.file_name() == Some("vms".as_ref()) && is_vm_disk_path(vms, path))
        && super::rebase::foreign_target_ok(path)
}

fn is_vm_disk_path(vms: &Path, path: &Path) -> bool {
    path.parent()
        .and_then(|p| (p.parent() == Some(vms)).then(|| p.file_name()))
        .flatten()
        .and_then(|id| id.to_str())
        .is_some_and(|id| plain(id) && !id.starts_with('.'))
}

/// Every listed file: a state file or a disk copy, a regular file beneath
/// the directory.
fn check_listed_files(scope: &Scope<'_>, copies: &BTreeSet<String>) -> Result<(), String> {
    let hypervisor = scope.manifest.snapshot.hypervisor;
    for name in scope.manifest.files.keys() {
        if !plain(name) || !(scope.backend.is_state_file(name) || copies.contains(name)) {
            return Err(format!(
                "it lists {name:?}, which is neither a {hypervisor:?} state file nor a disk copy"
            ));
        }
        let file = open_beneath(&scope.dir_fd, name)
            .map_err(|e| format!("{name} cannot be opened inside the snapshot directory: {e}"))?;
        let meta = file.metadata().map_err(|e| format!("{name}: {e}"))?;
        if !meta.is_file() {
            return Err(format!("{name} is not a regular file"));
        }
    }
    Ok(())
}

/// Boot files: those of its layers, or (a container image's VM) a default
/// kernel's; firmware: this engine's.
fn check_boot_files(scope: &Scope<'_>, checked: &Checked) -> Result<(), String> {
    let (boot, dirs) = (&scope.manifest.boot, &scope.dirs);
    let kernels = scope.facts.root_dir.join("kernels");
    for (what, path) in [("kernel", &boot.kernel_path), ("initrd", &boot.initrd_path)] {
        let Some(path) = path else { continue };
        if crate::kernel::is_default_kernel_file(&kernels, path) {
            continue;
        }
        let ok = boot_layer(dirs, path).is_some_and(|d| {
            checked.blobs.contains(&d)
                && [
                    dirs.kernel(&d),
                    dirs.initrd(&d),
                    dirs.boot_dir(&d).join("vmlinux"),
                ]
                .contains(path)
        });
        if !ok {
            return Err(format!(
                "its {what} {} is not a boot file of one of its image layers or of an installed kernel",
                path.display()
            ));
        }
    }
    let firmware = &scope.facts.firmware_path;
    match &boot.firmware_path {
        Some(theirs) if theirs != firmware => Err(format!(
            "its firmware {} is not this engine's firmware {}",
            theirs.display(),
            firmware.display()
        )),
        _ => Ok(()),
    }
}

/// A cloud image snapshot's base: its image digest and that blob's path.
fn cloud_base(manifest: &Manifest, dirs: &ImageDirs) -> Result<Option<(Digest, PathBuf)>, String> {
    if manifest.source.image_type != ImageType::Cloudimg {
        return Ok(None);
    }
    let digest = Digest::parse(&manifest.source.image_digest)
        .map_err(|e| format!("its image digest is refused: {e}"))?;
    let path = crate::image::cloud::blob_path(dirs, &digest);
    Ok(Some((digest, path)))
}

/// The digest of `path` if it is exactly the layer blob `dirs.blob(digest)`.
fn layer_digest(dirs: &ImageDirs, path: &Path) -> Option<Digest> {
    let stem = path.file_name()?.to_str()?.strip_suffix(".erofs")?;
    let digest = Digest::from_hex(stem).ok()?;
    (dirs.blob(&digest) == path).then_some(digest)
}

/// The layer whose boot directory holds `path` (`boot/<hex>/<file>`).
fn boot_layer(dirs: &ImageDirs, path: &Path) -> Option<Digest> {
    let hex = path.parent()?.file_name()?.to_str()?;
    let digest = Digest::from_hex(hex).ok()?;
    (path.parent() == Some(dirs.boot_dir(&digest).as_path())).then_some(digest)
}

/// A qcow2 image's backing file name (None for raw data or no backing).
/// An external data file is refused.
pub fn qcow2_backing(file: &std::fs::File) -> Result<Option<String>, String> {
    use std::os::unix::fs::FileExt;
    let mut header = [0u8; 104];
    let n = file
        .read_at(&mut header, 0)
        .map_err(|e| format!("cannot read its header: {e}"))?;
    if n < 4 || &header[..4] != QCOW2_MAGIC {
        return Ok(None);
    }
    if n < 72 {
        return Err("a truncated qcow2 header".into());
    }
    let be64 = |at: usize| u64::from_be_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    let be32 = |at: usize| u32::from_be_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    let version = be32(4);
    if version >= 3 {
        if n < 104 {
            return Err("a truncated qcow2 v3 header".into());
        }
        // Incompatible feature bit 2: an external data file.
        if be64(72) & 0b100 != 0 {
            return Err("a qcow2 image with an external data file".into());
        }
    }
    let (offset, size) = (be64(8), be32(16));
    if offset == 0 {
        return Ok(None);
    }
    if size == 0 || size > 1023 {
        return Err(format!("a qcow2 backing file name of {size} bytes"));
    }
    let mut name = vec![0u8; size as usize];
    file.read_exact_at(&mut name, offset)
        .map_err(|e| format!("cannot read its backing file name: {e}"))?;
    Ok(Some(String::from_utf8_lossy(&name).into_owned()))
}

/// `config.json`, read beneath the snapshot directory with a size bound.
pub fn read_ch_config(dir: &OwnedFd) -> Result<Value, String> {
    let file = open_beneath(dir, "config.json")
        .map_err(|e| format!("config.json cannot be opened: {e}"))?;
    read_bounded_json(file, "config.json")
}

/// A JSON document of at most [`MAX_CH_CONFIG`] bytes.
pub fn read_bounded_json(file: std::fs::File, what: &str) -> Result<Value, String> {
    let mut bytes = Vec::new();
    file.take(MAX_CH_CONFIG + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {what}: {e}"))?;
    if bytes.len() as u64 > MAX_CH_CONFIG {
        return Err(format!("{what} is over the limit of {MAX_CH_CONFIG} bytes"));
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("bad {what}: {e}"))
}

/// Top-level fields of CH's `config.json` the engine never passes through:
/// each attaches a host file, socket or device to the VM.
const REFUSED: &[&str] = &[
    "pmem",
    "fs",
    "devices",
    "user_devices",
    "vdpa",
    "tpm",
    "sgx_epc",
    "landlock_rules",
    "preserved_fds",
];

/// Where the engine writes its own value (`patch_ch_config`): a path there
/// is replaced, not passed through.
fn rewritten(pointer: &[&str]) -> bool {
    matches!(
        pointer,
        ["disks", _, "path"]
            | ["payload", "kernel" | "initramfs" | "firmware"]
            | ["rng", "src"]
            | ["serial" | "console" | "debug_console", "file" | "socket"]
            | ["vsock", "socket"]
    )
}

/// Refuses what the engine does not rewrite and will not pass through.
pub fn check_ch_config(config: &Value, storage: &[StorageConfig]) -> Result<(), String> {
    let object = config.as_object().ok_or("config.json is not an object")?;
    let set = |v: &Value| {
        !(v.is_null()
            || v == &Value::Bool(false)
            || v.as_array().is_some_and(Vec::is_empty)
            || v.as_object().is_some_and(|o| o.is_empty()))
    };
    for key in REFUSED {
        if object.get(*key).is_some_and(set) {
            return Err(format!(
                "config.json: \"{key}\" is set; the engine does not pass it through"
            ));
        }
    }
    if let Some(zones) = config["memory"]["zones"].as_array() {
        for (i, zone) in zones.iter().enumerate() {
            if zone.get("file").is_some_and(set) {
                return Err(format!(
                    "config.json: memory zone {i} has a backing \"file\"; the engine does not pass it through"
                ));
            }
        }
    }
    let disks = config["disks"].as_array().map_or(&[][..], Vec::as_slice);
    for (i, disk) in disks.iter().enumerate() {
        for key in ["vhost_user", "vhost_socket"] {
            if disk.get(key).is_some_and(set) {
                return Err(format!(
                    "config.json: disk {i} has \"{key}\"; the engine does not pass it through"
                ));
            }
        }
        let overlay = storage.get(i).is_some_and(|s| {
            !s.ro && s.role == StorageRole::Cow && s.path.extension().is_some_and(|e| e == "qcow2")
        });
        if disk.get("backing_files").is_some_and(set) && !overlay {
            return Err(format!(
                "config.json: disk {i} has \"backing_files\" but is not a cloud image overlay; the engine does not pass it through"
            ));
        }
    }
    if let Some(nets) = config["net"].as_array() {
        for (i, net) in nets.iter().enumerate() {
            for key in ["vhost_user", "vhost_socket"] {
                if net.get(key).is_some_and(set) {
                    return Err(format!(
                        "config.json: net {i} has \"{key}\"; the engine does not pass it through"
                    ));
                }
            }
        }
    }
    let mut pointer = Vec::new();
    names_a_path(config, &mut pointer)
}

/// Refuses any string that looks like a path outside [`rewritten`] places.
fn names_a_path<'a>(value: &'a Value, pointer: &mut Vec<&'a str>) -> Result<(), String> {
    match value {
        Value::String(s) if !rewritten(pointer) && looks_like_path(s) => Err(format!(
            "config.json: \"{}\" names a path ({s:?}); the engine does not pass paths through",
            pointer.join(".")
        )),
        Value::Array(items) => {
            for item in items {
                pointer.push("*");
                let r = names_a_path(item, pointer);
                pointer.pop();
                r?;
            }
            Ok(())
        }
        Value::Object(map) => {
            for (key, item) in map {
                pointer.push(key);
                let r = names_a_path(item, pointer);
                pointer.pop();
                r?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn looks_like_path(s: &str) -> bool {
    s.starts_with('/') || s.starts_with("./") || s.starts_with("../") || s.contains("/../")
}

#[cfg(test)]
mod tests;
