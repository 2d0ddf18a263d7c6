//! A small UEFI-bootable test cloud image, for proving the cloud-image path
//! (reference/cocoon-behavior.md §6.4, §6.5, §9) with a real firmware boot:
//! a GPT disk whose only partition is an EFI system partition holding
//! systemd-boot (Debian's `systemd-boot-efi`) as `\EFI\BOOT\BOOTX64.EFI`, a
//! loader entry, Debian's cloud kernel and a busybox initramfs whose /init
//! stands in for cloud-init's NoCloud datasource (`cloud_guest/init.sh`):
//! it mounts the `cidata` disk, applies the hostname and the MAC-matched
//! addresses of `network-config`, prints them and [`READY_MARKER`] on the
//! serial console, and powers off. Delivered as a qcow2, as cloud images are.
//!
//! Built without root and without mounts: the partition table by util-linux
//! `sfdisk` on a plain file, the FAT file system by the `fatfs` crate, the
//! qcow2 by `qemu-img convert`. The build is deterministic (fixed GPT and
//! volume ids, fatfs' fixed timestamps), so the same inputs give the same
//! qcow2 bytes, and it is cached under `target/test-assets/cloud-guest`.

pub mod qemu;

use std::io::{Cursor, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::linux_guest::{self, Assets, GuestParts};

/// Printed by /init once the identity is applied and reported.
pub const READY_MARKER: &str = "COCOON-CLOUD-GUEST READY";
/// Prefix of every line /init prints when it gives up.
pub const PANIC_MARKER: &str = "cocoon-cloud: PANIC:";
/// Prefix of every report line /init prints (`hostname X`, `instance-id X`,
/// `nic <dev> mac <mac> address <ip/prefix>`, `nic <mac> absent`).
pub const REPORT_PREFIX: &str = "cocoon-cloud: ";

const INIT: &str = include_str!("cloud_guest/init.sh");
const UDHCPC_SCRIPT: &str = include_str!("cloud_guest/udhcpc.script");
/// virtio over PCI (CH's transport), disks, NICs, and FAT with the code
/// pages the cloud kernel's vfat defaults to (cp437 names, utf8 and ascii
/// I/O charsets): modules in Debian's cloud kernel, loaded by /init in order.
const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
    "vfat",
    // The ACPI power button as an input device /init can wait on.
    "button",
    "evdev",
];
/// Where Debian's `systemd-boot-efi` puts the boot loader.
const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
/// No menu: boot the one entry at once.
const LOADER_CONF: &str = "default cocoon.conf\ntimeout 0\neditor no\n";
/// The kernel's EFI stub is started by systemd-boot; the serial console is
/// the only one a CH cloud-image VM has (`--serial socket=... --console off`).
const LOADER_ENTRY: &str = "title cocoon test cloud image\nlinux /cocoon/vmlinuz\ninitrd /cocoon/initrd.img\noptions console=ttyS0,115200 panic=-1\n";
/// The layout: 1 MiB of GPT and alignment, a 32 MiB ESP, room for the backup GPT.
const SECTOR: u64 = 512;
const ESP_START: u64 = 2048;
const ESP_SECTORS: u64 = 32 << 11;
const DISK_BYTES: u64 = (ESP_START + ESP_SECTORS + 2048) * SECTOR;
// The backup GPT takes the last 33 sectors.
const _: () = assert!((ESP_START + ESP_SECTORS + 33) * SECTOR <= DISK_BYTES);
/// Fixed ids keep the image reproducible (sfdisk and mkfs would pick random ones).
const DISK_GUID: &str = "8E3A3C1B-4C7E-4B61-9E0F-434F434F4F4E";
const ESP_GUID: &str = "8E3A3C1B-4C7E-4B61-9E0F-434F434F0001";
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// Bumped when the image layout changes in a way the inputs do not show.
const FORMAT: &str = "cloud-guest-1";

/// The Debian packages the image is built from: the cloud kernel and
/// busybox unpacked by scripts/fetch-test-assets.sh, systemd-boot installed.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub assets: Assets,
    pub systemd_boot: PathBuf,
    /// util-linux `sfdisk` (Debian's `fdisk` package), for the partition table.
    pub sfdisk: PathBuf,
}

impl Inputs {
    /// Err says what is missing and how to get it, for a skip notice.
    pub fn find() -> Result<Inputs, String> {
        let assets =
            Assets::find().map_err(|why| format!("{why}: run scripts/fetch-test-assets.sh"))?;
        let systemd_boot = std::env::var_os("COCOON_SYSTEMD_BOOT_EFI")
            .filter(|p| !p.is_empty())
            .map_or_else(|| PathBuf::from(SYSTEMD_BOOT), PathBuf::from);
        if !systemd_boot.is_file() {
            return Err(format!(
                "no systemd-boot at {} (apt-get install systemd-boot-efi)",
                systemd_boot.display()
            ));
        }
        let sfdisk = crate::real_vmm("COCOON_SFDISK_BINARY", "sfdisk")
            .or_else(|| {
                ["/usr/sbin/sfdisk", "/sbin/sfdisk"]
                    .iter()
                    .map(PathBuf::from)
                    .find(|p| p.is_file())
            })
            .ok_or("no sfdisk (apt-get install fdisk)")?;
        Ok(Inputs {
            assets,
            systemd_boot,
            sfdisk,
        })
    }
}

/// The test cloud image as a qcow2, built once per set of inputs.
pub fn qcow2(inputs: &Inputs) -> PathBuf {
    let image = Image::read(inputs);
    let sfdisk = inputs.sfdisk.clone();
    let dir = linux_guest::assets_dir().join("cloud-guest");
    let cache = dir.join(image.key());
    let path = cache.join("cloud.qcow2");
    if !path.is_file() {
        build(&image, &sfdisk, &cache);
    }
    // Entries of older inputs (~12 MB each) would pile up with every change.
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let stale = !entry.file_name().to_string_lossy().starts_with(".staging-");
        if stale && entry.path() != cache {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    path
}

/// Builds aside and renames into place: tests building concurrently never
/// see half a cache entry.
fn build(image: &Image, sfdisk: &Path, cache: &Path) {
    let parent = cache.parent().expect("under cloud-guest");
    std::fs::create_dir_all(parent).expect("create target/test-assets/cloud-guest");
    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(parent)
        .expect("staging dir under target/test-assets");
    let raw = staging.path().join("disk.raw");
    partition(sfdisk, &raw);
    let esp = image.esp();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&raw)
        .expect("open the raw disk");
    file.write_all_at(&esp, ESP_START * SECTOR)
        .expect("write the ESP into the raw disk");
    file.sync_all().expect("sync the raw disk");
    drop(file);
    let out = Command::new("qemu-img")
        .args([
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            "compat=1.1",
        ])
        .arg(&raw)
        .arg(staging.path().join("cloud.qcow2"))
        .output()
        .expect("run qemu-img (apt-get install qemu-utils)");
    assert!(
        out.status.success(),
        "qemu-img convert: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(&raw).expect("remove the raw disk");
    let staged = staging.keep();
    if std::fs::rename(&staged, cache).is_err() {
        // Another test won the race; its entry has the same content.
        let _ = std::fs::remove_dir_all(&staged);
    }
}

/// A zeroed raw disk of [`DISK_BYTES`] with a GPT: one EFI system partition.
fn partition(sfdisk: &Path, raw: &Path) {
    let file = std::fs::File::create(raw).expect("create the raw disk");
    file.set_len(DISK_BYTES).expect("size the raw disk");
    drop(file);
    let script = format!(
        "label: gpt\nlabel-id: {DISK_GUID}\nunit: sectors\nfirst-lba: {ESP_START}\n\
         start={ESP_START}, size={ESP_SECTORS}, type={ESP_TYPE}, uuid={ESP_GUID}, name=\"EFI System\"\n"
    );
    let mut child = Command::new(sfdisk)
        .args([
            "--quiet",
            "--no-reread",
            "--no-tell-kernel",
            "--wipe",
            "never",
        ])
        .arg(raw)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", sfdisk.display()));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("feed sfdisk");
    let out = child.wait_with_output().expect("wait for sfdisk");
    assert!(
        out.status.success(),
        "sfdisk: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The inputs, read once.
struct Image {
    parts: GuestParts,
    systemd_boot: Vec<u8>,
}

impl Image {
    fn read(inputs: &Inputs) -> Image {
        let systemd_boot = std::fs::read(&inputs.systemd_boot)
            .unwrap_or_else(|e| panic!("{}: {e}", inputs.systemd_boot.display()));
        Image {
            parts: GuestParts::read(&inputs.assets, MODULES),
            systemd_boot,
        }
    }

    /// A digest of everything the image is made of.
    fn key(&self) -> String {
        self.parts.cache_key(&[
            FORMAT.as_bytes(),
            INIT.as_bytes(),
            UDHCPC_SCRIPT.as_bytes(),
            LOADER_CONF.as_bytes(),
            LOADER_ENTRY.as_bytes(),
            &self.systemd_boot,
        ])
    }

    /// The EFI system partition: a FAT file system with the boot loader, its
    /// configuration, the kernel and the initramfs.
    fn esp(&self) -> Vec<u8> {
        let bytes = usize::try_from(ESP_SECTORS * SECTOR).expect("fits");
        let mut disk = Cursor::new(vec![0u8; bytes]);
        fatfs::format_volume(
            &mut disk,
            fatfs::FormatVolumeOptions::new()
                .bytes_per_sector(u16::try_from(SECTOR).expect("fits"))
                .total_sectors(u32::try_from(ESP_SECTORS).expect("fits"))
                .volume_label(*b"COCOON-ESP ")
                .volume_id(0x434f_434f),
        )
        .expect("format the ESP in memory");
        disk.set_position(0);
        {
            let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new())
                .expect("open the ESP in memory");
            let root = fs.root_dir();
            for dir in ["EFI", "EFI/BOOT", "loader", "loader/entries", "cocoon"] {
                root.create_dir(dir).expect("mkdir on the ESP");
            }
            let initramfs = self.initramfs();
            for (path, content) in [
                ("EFI/BOOT/BOOTX64.EFI", self.systemd_boot.as_slice()),
                ("loader/loader.conf", LOADER_CONF.as_bytes()),
                ("loader/entries/cocoon.conf", LOADER_ENTRY.as_bytes()),
                ("cocoon/vmlinuz", &self.parts.kernel),
                ("cocoon/initrd.img", &initramfs),
            ] {
                let mut file = root.create_file(path).expect("create on the ESP");
                file.truncate().expect("truncate on the ESP");
                file.write_all(content).expect("write on the ESP");
                file.flush().expect("flush on the ESP");
            }
            drop(root);
            fs.unmount().expect("unmount the ESP");
        }
        disk.into_inner()
    }

    /// A gzip'd newc cpio: busybox, the modules and their load order, /init.
    fn initramfs(&self) -> Vec<u8> {
        let mut cpio = linux_guest::Cpio::new();
        for dir in ["bin", "dev", "etc", "lib", "lib/modules", "proc", "sys"] {
            cpio.dir(dir);
        }
        // The kernel opens /dev/console before /init runs.
        cpio.char_device("dev/console", 0o600, 5, 1);
        cpio.file("bin/busybox", 0o755, &self.parts.busybox);
        cpio.symlink("bin/sh", "busybox");
        let mut order = String::new();
        for (name, image) in &self.parts.modules {
            cpio.file(&format!("lib/modules/{name}.ko"), 0o644, image);
            order.push_str(name);
            order.push('\n');
        }
        cpio.file("etc/cocoon-modules", 0o644, order.as_bytes());
        cpio.file("etc/udhcpc.script", 0o755, UDHCPC_SCRIPT.as_bytes());
        cpio.file("init", 0o755, INIT.as_bytes());
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&cpio.finish()).expect("gzip in memory");
        gz.finish().expect("gzip in memory")
    }
}

/// The report lines /init printed, without their prefix, in order.
pub fn reports(console: &str) -> Vec<String> {
    console
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').split_once(REPORT_PREFIX))
        .map(|(_, rest)| rest.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_found_among_firmware_noise() {
        let console = "BdsDxe: loading Boot0001\r\n\x1b[0mcocoon-cloud: hostname web\r\n[    1.0] x\ncocoon-cloud: nic eth0 mac 02:00:00:00:00:01 address 10.0.0.2/24\n";
        assert_eq!(
            reports(console),
            [
                "hostname web",
                "nic eth0 mac 02:00:00:00:00:01 address 10.0.0.2/24"
            ]
        );
    }
}
