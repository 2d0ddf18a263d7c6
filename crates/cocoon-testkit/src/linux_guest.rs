//! A Linux test image for the guest contract (reference/guest-contract.md):
//! Debian's cloud kernel, a busybox initramfs that implements the contract's
//! initramfs steps, and a busybox rootfs whose init reports what it sees.
//! The layers are OCI tars, ready for `cocoon image import`.
//!
//! The kernel and busybox come from Debian packages that
//! `scripts/fetch-test-assets.sh` unpacks under `target/test-assets`.

pub mod qemu;

use std::path::{Path, PathBuf};

use cocoon_engine::kernel::modules;
use sha2::{Digest, Sha256};

/// Printed by the rootfs init once the overlay root is up.
pub const READY_MARKER: &str = "COCOON-LINUX-GUEST READY";
/// Printed once the guest has reported its network, when a test asked for
/// network actions (`cocoon.test.ping=` or `cocoon.test.hold=`, see
/// rootfs-init.sh).
pub const NET_MARKER: &str = "COCOON-LINUX-GUEST NET-UP";
/// Printed by the interactive variant ([`interactive_layer_tars`]) before it
/// runs a shell on the console.
pub const SHELL_MARKER: &str = "COCOON-LINUX-GUEST SHELL";
/// What the interactive variant's extra layer adds.
const SHELL_FLAG: &str = "etc/cocoon-test-shell";
/// Printed after the written file is synced and the COW frozen.
pub const DONE_MARKER: &str = "COCOON-LINUX-GUEST DONE";
/// Prefix of every line the initramfs prints when it gives up.
pub const PANIC_MARKER: &str = "cocoon-overlay: PANIC:";
/// Shipped by the base layer, deleted (whiteout) by the upper layer.
pub const DELETED_FILE: &str = "/etc/doomed";
/// Written by the guest; must land in `upper/` on the COW disk.
pub const WRITTEN_FILE: &str = "/root/written-by-guest";
pub const WRITTEN_CONTENT: &str = "written by the guest\n";
/// `/etc/layer` says `base` in the base layer and `upper` in the upper one:
/// the guest sees `upper` only if the overlay stacks the layers top first.
pub const TOP_LAYER: &str = "upper";
/// Added by the upper layer at `/etc/added-by-upper`.
pub const ADDED_CONTENT: &str = "added by the upper layer";

const INITRAMFS_INIT: &str = include_str!("linux_guest/initramfs-init.sh");
const ROOTFS_INIT: &str = include_str!("linux_guest/rootfs-init.sh");
/// Busybox applets the rootfs init calls by name.
const ROOTFS_APPLETS: &[&str] = &[
    "sh", "cat", "sync", "fsfreeze", "poweroff", "ip", "ping", "tr", "seq", "sleep",
];
/// What the contract's initramfs loads "if not built in": the virtio
/// transports (PCI for CH, MMIO for FC), disks, console and NICs, and the
/// three filesystems. Console first, so a later failure can still be reported.
const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_mmio",
    "virtio_console",
    "virtio_blk",
    "virtio_net",
    "erofs",
    "overlay",
    "ext4",
];
/// Bumped when the image layout changes in a way the inputs do not show.
const FORMAT: &str = "linux-guest-2";

/// `target/test-assets`, where scripts/fetch-test-assets.sh unpacks.
pub fn assets_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-assets")
}

/// The unpacked Debian packages the image is built from.
#[derive(Debug, Clone)]
pub struct Assets {
    pub kernel: PathBuf,
    /// The kernel release, e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    /// `lib/modules/<release>`.
    pub modules_dir: PathBuf,
    pub busybox: PathBuf,
}

impl Assets {
    /// Err says what is missing, for a skip notice.
    pub fn find() -> Result<Assets, String> {
        let dir = assets_dir();
        let missing = || format!("no Debian cloud kernel under {}", dir.display());
        let boot = dir.join("debian-kernel/boot");
        let kernel = std::fs::read_dir(&boot)
            .map_err(|_| missing())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
            .ok_or_else(missing)?;
        let release =
            kernel.file_name().expect("file").to_string_lossy()["vmlinuz-".len()..].to_string();
        let modules_dir = dir.join("debian-kernel/lib/modules").join(&release);
        if !modules_dir.join("modules.builtin").is_file() {
            return Err(format!(
                "no modules for {release} under {}",
                modules_dir.display()
            ));
        }
        let busybox = dir.join("debian-busybox/bin/busybox");
        if !busybox.is_file() {
            return Err(format!("no busybox-static at {}", busybox.display()));
        }
        Ok(Assets {
            kernel,
            release,
            modules_dir,
            busybox,
        })
    }
}

/// The image's layer tars, bottom first: base rootfs, upper layer, boot
/// files. Built once per set of inputs and cached under `target/test-assets`.
pub fn layer_tars(assets: &Assets) -> Vec<PathBuf> {
    let mut tars = cached_layers(assets);
    tars.truncate(3);
    tars
}

/// The interactive variant: [`layer_tars`] and a layer on top that makes
/// the rootfs init run a shell on the console after its reports, instead of
/// powering off (for tests that boot through the engine and type commands
/// on `vm console`).
pub fn interactive_layer_tars(assets: &Assets) -> Vec<PathBuf> {
    cached_layers(assets)
}

const LAYER_NAMES: [&str; 4] = ["base.tar", "upper.tar", "boot.tar", "shell.tar"];

fn cached_layers(assets: &Assets) -> Vec<PathBuf> {
    let image = GuestParts::read(assets, MODULES);
    let cache = assets_dir().join("linux-guest").join(image.key());
    let paths: Vec<PathBuf> = LAYER_NAMES.iter().map(|n| cache.join(n)).collect();
    if !paths.iter().all(|p| p.is_file()) {
        build(&image, &cache);
    }
    // Entries of older inputs (~15 MB each) would pile up with every change
    // to the scripts or a kernel update.
    let parent = cache.parent().expect("under linux-guest");
    for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        let stale = !entry.file_name().to_string_lossy().starts_with(".staging-");
        if stale && entry.path() != cache {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    paths
}

/// Builds the layers aside and renames them into place: tests building them
/// concurrently never see half a cache entry.
fn build(image: &GuestParts, cache: &Path) {
    let parent = cache.parent().expect("under linux-guest");
    std::fs::create_dir_all(parent).expect("create target/test-assets/linux-guest");
    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(parent)
        .expect("staging dir under target/test-assets");
    let tars = [
        image.base_layer(),
        image.upper_layer(),
        image.boot_layer(),
        image.shell_layer(),
    ];
    for (name, tar) in LAYER_NAMES.iter().zip(tars) {
        std::fs::write(staging.path().join(name), tar).expect("write layer tar");
    }
    let staged = staging.keep();
    if std::fs::rename(&staged, cache).is_err() {
        // Another test won the race; its entry has the same content.
        let _ = std::fs::remove_dir_all(&staged);
    }
}

/// The Debian parts both test images are made of, read once: the cloud
/// kernel, busybox, and the kernel modules a list names, in load order.
pub struct GuestParts {
    pub release: String,
    pub kernel: Vec<u8>,
    pub busybox: Vec<u8>,
    pub modules: Vec<(String, Vec<u8>)>,
}

impl GuestParts {
    pub fn read(assets: &Assets, wanted: &[&str]) -> GuestParts {
        let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let modules = modules::load_order(&assets.modules_dir, wanted)
            .unwrap_or_else(|e| panic!("kernel {}: {e}", assets.release))
            .into_iter()
            .map(|m| {
                let image = read(&m.path);
                (m.name, image)
            })
            .collect();
        GuestParts {
            release: assets.release.clone(),
            kernel: read(&assets.kernel),
            busybox: read(&assets.busybox),
            modules,
        }
    }

    /// A cache key: a digest of `extra` (scripts, layout versions, other
    /// inputs of the image) and of every part.
    pub fn cache_key(&self, extra: &[&[u8]]) -> String {
        let mut hash = Sha256::new();
        let parts = [self.release.as_bytes(), &self.kernel, &self.busybox];
        for part in extra.iter().chain(&parts) {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part);
        }
        for (name, image) in &self.modules {
            hash.update(name.as_bytes());
            hash.update(image);
        }
        let digest = hash.finalize();
        digest[..12].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The layers of the Linux test image.
impl GuestParts {
    /// A digest of everything the layers are made of.
    fn key(&self) -> String {
        self.cache_key(&[
            FORMAT.as_bytes(),
            INITRAMFS_INIT.as_bytes(),
            ROOTFS_INIT.as_bytes(),
            ROOTFS_APPLETS.join(" ").as_bytes(),
        ])
    }

    fn base_layer(&self) -> Vec<u8> {
        let mut tar = Tar::new();
        for dir in [
            "bin", "sbin", "etc", "root", "proc", "sys", "dev", "run", "tmp",
        ] {
            tar.dir(dir);
        }
        tar.file("bin/busybox", 0o755, &self.busybox);
        for applet in ROOTFS_APPLETS {
            tar.symlink(&format!("bin/{applet}"), "busybox");
        }
        tar.file("sbin/init", 0o755, ROOTFS_INIT.as_bytes());
        tar.file(
            &DELETED_FILE[1..],
            0o644,
            b"the upper layer deletes this file\n",
        );
        tar.file("etc/layer", 0o644, b"base\n");
        tar.finish()
    }

    fn upper_layer(&self) -> Vec<u8> {
        let mut tar = Tar::new();
        tar.dir("etc");
        let (dir, name) = DELETED_FILE[1..].rsplit_once('/').expect("in a directory");
        tar.file(&format!("{dir}/.wh.{name}"), 0o644, b"");
        tar.file("etc/layer", 0o644, format!("{TOP_LAYER}\n").as_bytes());
        tar.file(
            "etc/added-by-upper",
            0o644,
            format!("{ADDED_CONTENT}\n").as_bytes(),
        );
        tar.finish()
    }

    fn shell_layer(&self) -> Vec<u8> {
        let mut tar = Tar::new();
        tar.dir("etc");
        tar.file(SHELL_FLAG, 0o644, b"");
        tar.finish()
    }

    fn boot_layer(&self) -> Vec<u8> {
        let mut tar = Tar::new();
        tar.dir("boot");
        tar.file(
            &format!("boot/vmlinuz-{}", self.release),
            0o644,
            &self.kernel,
        );
        tar.file(
            &format!("boot/initrd.img-{}", self.release),
            0o644,
            &self.initramfs(),
        );
        tar.finish()
    }

    /// A gzip'd newc cpio: busybox, the modules, /init and its module list.
    fn initramfs(&self) -> Vec<u8> {
        let mut cpio = Cpio::new();
        for dir in [
            "bin",
            "dev",
            "etc",
            "lib",
            "lib/modules",
            "newroot",
            "proc",
            "run",
            "sys",
        ] {
            cpio.dir(dir);
        }
        // The kernel opens /dev/console before /init runs.
        cpio.char_device("dev/console", 0o600, 5, 1);
        cpio.file("bin/busybox", 0o755, &self.busybox);
        cpio.symlink("bin/sh", "busybox");
        let mut order = String::new();
        for (name, image) in &self.modules {
            cpio.file(&format!("lib/modules/{name}.ko"), 0o644, image);
            order.push_str(name);
            order.push('\n');
        }
        cpio.file("etc/cocoon-modules", 0o644, order.as_bytes());
        cpio.file("init", 0o755, INITRAMFS_INIT.as_bytes());
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &cpio.finish()).expect("gzip in memory");
        gz.finish().expect("gzip in memory")
    }
}

/// An uncompressed OCI layer tar with the modes and symlinks a rootfs needs.
struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Tar {
        Tar(tar::Builder::new(Vec::new()))
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        crate::tar_header(kind, mode, size)
    }

    fn dir(&mut self, path: &str) {
        let mut h = Self::header(tar::EntryType::Directory, 0o755, 0);
        self.0
            .append_data(&mut h, path, &[][..])
            .expect("tar in memory");
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        self.0
            .append_data(&mut h, path, data)
            .expect("tar in memory");
    }

    fn symlink(&mut self, path: &str, target: &str) {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.0
            .append_link(&mut h, path, target)
            .expect("tar in memory");
    }

    fn finish(self) -> Vec<u8> {
        self.0.into_inner().expect("tar in memory")
    }
}

// Shared with the other test image built from the same Debian packages
// (crate::cloud_guest): the engine's cpio writer.
pub use cocoon_engine::kernel::cpio::Cpio;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_layer_whiteouts_the_deleted_file() {
        let image = GuestParts {
            release: "0".into(),
            kernel: vec![],
            busybox: vec![],
            modules: vec![],
        };
        let tar = image.upper_layer();
        let mut archive = tar::Archive::new(tar.as_slice());
        let paths: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(paths.contains(&"etc/.wh.doomed".to_string()), "{paths:?}");
    }
}
