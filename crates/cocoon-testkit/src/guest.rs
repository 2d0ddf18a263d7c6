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

/// Every heartbeat number in `serial` output, in order.
pub fn heartbeats(serial: &str) -> Vec<u64> {
    serial
        .lines()
        .filter_map(|l| l.trim().strip_prefix(HEARTBEAT_PREFIX))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// The heartbeats of an append-only console log written after `offset`
/// (the log's length before an operation), preceded by the last one before
/// it, so that a count that drops right at the operation shows as a drop.
/// Starts at `offset` itself when that is a line start (the usual case: the
/// log ended with a whole line), else at the next line.
pub fn heartbeats_since(log: &str, offset: usize) -> Vec<u64> {
    let from = offset.min(log.len());
    let from = if from == 0 || log.as_bytes()[from - 1] == b'\n' {
        from
    } else {
        log[from..].find('\n').map_or(log.len(), |i| from + i + 1)
    };
    let mut beats: Vec<u64> = heartbeats(&log[..from])
        .last()
        .copied()
        .into_iter()
        .collect();
    beats.extend(heartbeats(&log[from..]));
    beats
}

/// Where the count last went down in `beats` (a restored or cloned guest
/// counting from its snapshot's value again), if it did.
pub fn last_drop(beats: &[u64]) -> Option<usize> {
    (1..beats.len()).rev().find(|k| beats[*k] < beats[*k - 1])
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
        assert_eq!(heartbeats(serial), vec![1, 2, 3]);
    }

    #[test]
    fn beats_since_an_offset_keep_the_last_one_before() {
        let log = "heartbeat 9\nheartbeat 10\n";
        let before = log.len();
        let log = format!("{log}heartbeat 4\nheartbeat 5\n");
        // The offset is a line start: the old beat 10 stays, so the drop shows.
        assert_eq!(heartbeats_since(&log, before), [10, 4, 5]);
        assert_eq!(last_drop(&heartbeats_since(&log, before)), Some(1));
        // Mid-line: from the next whole line.
        assert_eq!(heartbeats_since(&log, 3), [9, 10, 4, 5]);
        assert_eq!(heartbeats_since(&log, 0), [9, 10, 4, 5]);
        assert_eq!(heartbeats_since(&log, 1000), [5]);
        assert_eq!(last_drop(&[3, 4, 5]), None);
        assert_eq!(last_drop(&[7, 3, 4, 2, 3]), Some(3));
    }
}
