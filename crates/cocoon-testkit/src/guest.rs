//! The test guest kernel (guest/kernel.S): a PVH kernel both real VMMs boot on
//! this project's PVM hosts, with a serial protocol tests can drive.

use std::path::Path;

/// Printed once at boot.
pub const READY_MARKER: &str = "COCOON-TEST-GUEST READY";
/// `heartbeat <n>` about once a second.
pub const HEARTBEAT_PREFIX: &str = "heartbeat ";
/// Sending this byte makes the guest print `count=<n>`.
pub const QUERY: u8 = b'?';
pub const COUNT_PREFIX: &str = "count=";
/// Sending this byte powers the VM off.
pub const POWEROFF: u8 = b'q';

/// The built kernel image (ELF64 with a PVH entry note).
pub fn kernel_path() -> &'static Path {
    Path::new(env!("COCOON_TEST_KERNEL"))
}

/// The last heartbeat number in `serial` output, if any.
pub fn last_heartbeat(serial: &str) -> Option<u64> {
    serial
        .lines()
        .rev()
        .filter_map(|l| l.trim().strip_prefix(HEARTBEAT_PREFIX))
        .find_map(|n| n.trim().parse().ok())
}

/// Every `count=<n>` answer in `serial` output.
pub fn counts(serial: &str) -> Vec<u64> {
    serial
        .lines()
        .filter_map(|l| l.trim().strip_prefix(COUNT_PREFIX))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// A layer that makes an image bootable by the engine: the test guest kernel
/// as `boot/vmlinuz-<version>` and `initrd` as `boot/initrd.img-<version>`
/// (the test kernel needs none; its bytes tell images apart). Add files to
/// taste before `build()`.
pub fn boot_layer(version: &str, initrd: &[u8]) -> crate::registry::layers::LayerBuilder {
    let kernel =
        std::fs::read(kernel_path()).unwrap_or_else(|e| panic!("{}: {e}", kernel_path().display()));
    crate::registry::layers::LayerBuilder::new()
        .file(&format!("boot/vmlinuz-{version}"), &kernel)
        .file(&format!("boot/initrd.img-{version}"), initrd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_is_an_elf64_with_a_pvh_note() {
        let image = std::fs::read(kernel_path()).unwrap();
        assert_eq!(&image[..4], b"\x7fELF");
        assert_eq!(image[4], 2, "ELFCLASS64, as the VMMs' loaders require");
        // The note: namesz 4, descsz 4, type 18 (XEN_ELFNOTE_PHYS32_ENTRY), "Xen\0".
        let note = [4u32.to_le_bytes(), 4u32.to_le_bytes(), 18u32.to_le_bytes()].concat();
        let at = image
            .windows(12)
            .position(|w| w == note.as_slice())
            .expect("PVH note present");
        assert_eq!(&image[at + 12..at + 16], b"Xen\0");
    }

    #[test]
    fn parses_serial_output() {
        let serial =
            "COCOON-TEST-GUEST READY tsc_khz=1\nheartbeat 1\nheartbeat 2\ncount=2\nheartbeat 3\n";
        assert_eq!(last_heartbeat(serial), Some(3));
        assert_eq!(counts(serial), vec![2]);
        assert_eq!(last_heartbeat("nothing"), None);
    }
}
