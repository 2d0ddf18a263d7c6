//! The initramfs container images boot: cocoon-init as `/init` and the
//! kernel modules it loads (`/modules/NN-<name>.ko`, loaded in name order,
//! dependencies first), built once per kernel and cocoon-init and cached
//! beside the kernel as `initramfs-<key>.img`, where the key hashes both:
//! a new cocoon-init gets a new image, and a VM keeps the one it was
//! created with.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::cpio::Cpio;
use super::{Installed, KernelError, io, modules};

/// What cocoon-init needs that a cloud kernel may have as modules: the
/// virtio transports (PCI for CH and QEMU's q35, MMIO for FC and microvm),
/// console, disks and NICs, the three filesystems of the guest contract,
/// vsock for the agent, and the ACPI power button that `vm stop` presses
/// (with evdev, through which cocoon-init reads it).
pub const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_mmio",
    "virtio_console",
    "virtio_blk",
    "virtio_net",
    "erofs",
    "overlay",
    "ext4",
    "vmw_vsock_virtio_transport",
    "button",
    "evdev",
];

/// Bumped when the archive's layout changes in a way its inputs do not show.
const FORMAT: &str = "cocoon-initramfs-2";

/// Where cocoon-init is looked for when `init_binary` is not set: beside
/// the running cocoon binary (a build tree, or `install.sh`'s prefix), then
/// the library directories packages use.
pub fn find_init(configured: &Path) -> Result<PathBuf, KernelError> {
    if !configured.as_os_str().is_empty() {
        return Ok(configured.to_path_buf());
    }
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join("cocoon-init"));
        candidates.push(dir.join("../lib/cocoon/cocoon-init"));
    }
    candidates.push(PathBuf::from("/usr/local/lib/cocoon/cocoon-init"));
    candidates.push(PathBuf::from("/usr/lib/cocoon/cocoon-init"));
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| KernelError::NoInit {
            looked: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The kernel's initramfs for `init`, built if not cached.
pub fn ensure(kernel: &Installed, init: &Path) -> Result<PathBuf, KernelError> {
    let binary = std::fs::read(init).map_err(io("cannot read cocoon-init", init))?;
    check_static(&binary).map_err(|reason| KernelError::BadInit {
        path: init.to_path_buf(),
        reason,
    })?;
    let mut hasher = Sha256::new();
    hasher.update(FORMAT);
    hasher.update(kernel.release.as_str());
    hasher.update(&binary);
    let key = hex16(&hasher.finalize());
    let target = kernel.dir.join(format!("initramfs-{key}.img"));
    if target.is_file() {
        return Ok(target);
    }
    let fail = |reason: String| KernelError::Initramfs {
        release: kernel.release.to_string(),
        reason,
    };
    let order = modules::load_order(&kernel.modules_dir(), MODULES).map_err(fail)?;
    let mut cpio = Cpio::new();
    for dir in ["dev", "proc", "sys", "newroot", "cow", "layers", "modules"] {
        cpio.dir(dir);
    }
    cpio.char_device("dev/console", 0o600, 5, 1);
    // With `console=hvc0` the console exists only once virtio_console is
    // loaded: the kernel starts /init with no fd 0-2, and Rust's runtime
    // opens /dev/null in their place (without it, PID 1 dies at once).
    cpio.char_device("dev/null", 0o666, 1, 3);
    cpio.file("init", 0o755, &binary);
    for (i, module) in order.iter().enumerate() {
        let image = std::fs::read(&module.path).map_err(io("cannot read", &module.path))?;
        cpio.file(&format!("modules/{i:02}-{}.ko", module.name), 0o644, &image);
    }
    let staged = kernel
        .dir
        .join(format!(".initramfs-{key}-{}", std::process::id()));
    let written = std::fs::write(&staged, cpio.finish())
        .and_then(|()| std::fs::File::open(&staged)?.sync_all())
        .and_then(|()| std::fs::rename(&staged, &target));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&staged);
        return Err(io("cannot write", &target)(e));
    }
    Ok(target)
}

fn hex16(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// An x86-64 ELF executable without a program interpreter: the initramfs
/// has no libc or loader for a dynamic one, and the kernel would only say
/// "failed to execute /init".
pub(crate) fn check_static(image: &[u8]) -> Result<(), String> {
    const PT_INTERP: u32 = 3;
    if image.get(..5) != Some(b"\x7fELF\x02") || image.get(0x12..0x14) != Some(&[0x3e, 0]) {
        return Err("not an x86-64 ELF binary".into());
    }
    let field = |at: usize, len: usize| -> Result<u64, String> {
        let end = at.checked_add(len).ok_or("bad ELF offsets")?;
        let bytes = image.get(at..end).ok_or("truncated ELF header")?;
        let mut buf = [0u8; 8];
        buf[..len].copy_from_slice(bytes);
        Ok(u64::from_le_bytes(buf))
    };
    let to_usize = |v: u64| usize::try_from(v).map_err(|e| e.to_string());
    let (phoff, phentsize, phnum) = (
        to_usize(field(0x20, 8)?)?,
        to_usize(field(0x36, 2)?)?,
        to_usize(field(0x38, 2)?)?,
    );
    for i in 0..phnum {
        let at = phoff
            .checked_add(i.checked_mul(phentsize).ok_or("bad program headers")?)
            .ok_or("bad program headers")?;
        if field(at, 4)? == u64::from(PT_INTERP) {
            return Err(
                "it is dynamically linked; build it with -C target-feature=+crt-static".into(),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_static_x86_64_binaries_are_taken_as_init() {
        // The test binary itself is dynamically linked.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let err = check_static(&me).unwrap_err();
        assert!(err.contains("dynamically linked"), "{err}");
        assert!(
            check_static(b"#!/bin/sh\n")
                .unwrap_err()
                .contains("not an x86-64 ELF")
        );
        let mut truncated = me[..0x40].to_vec();
        truncated[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(check_static(&truncated).is_err());
    }

    #[test]
    fn the_initramfs_is_cached_per_kernel_and_init() {
        let Some(modules_dir) = super::super::test_assets::debian_modules() else {
            cocoon_test_skip::skip(
                "the_initramfs_is_cached_per_kernel_and_init",
                "run scripts/fetch-test-assets.sh first",
            );
            return;
        };
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("6.1.0-1-cloud-amd64");
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::symlink(&modules_dir, dir.join("modules")).unwrap();
        let kernel = Installed {
            release: super::super::Release::parse("6.1.0-1-cloud-amd64").unwrap(),
            dir,
        };
        // A static-looking ELF: the header of an x86-64 executable, no program headers.
        let mut init = vec![0u8; 64];
        init[..5].copy_from_slice(b"\x7fELF\x02");
        init[0x12] = 0x3e;
        let init_path = root.path().join("cocoon-init");
        std::fs::write(&init_path, &init).unwrap();
        let first = ensure(&kernel, &init_path).unwrap();
        let archive = std::fs::read(&first).unwrap();
        let text = String::from_utf8_lossy(&archive);
        for name in [
            "dev/console",
            "init",
            "-virtio_blk.ko",
            "-erofs.ko",
            "-overlay.ko",
            "-vmw_vsock_virtio_transport.ko",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
        assert!(
            text.find("-virtio.ko") < text.find("-virtio_blk.ko"),
            "dependencies first"
        );
        assert_eq!(ensure(&kernel, &init_path).unwrap(), first, "cached");
        init.push(0);
        std::fs::write(&init_path, &init).unwrap();
        let second = ensure(&kernel, &init_path).unwrap();
        assert_ne!(second, first, "a new init makes a new image");
        assert!(
            first.is_file(),
            "the old image stays for the VMs created with it"
        );
    }
}
