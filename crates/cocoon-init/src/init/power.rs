//! The ACPI power button (`vm stop` on Cloud Hypervisor and QEMU presses it)
//! as a stop request. The kernel reports it as KEY_POWER on an evdev
//! device; that needs the `button` (ACPI power button) and `evdev` modules,
//! both modules in Debian's cloud kernel. Without them there is no device
//! and this finds nothing: best effort.

use std::fs::{self, File};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;
/// `KEY_MAX + 1` bits.
const KEY_BITS_BYTES: u32 = 0x300 / 8;
/// `struct input_event` on 64-bit Linux: a timeval, type, code, value.
const EVENT_SIZE: usize = 24;

pub struct PowerButtons {
    devices: Vec<File>,
}

impl PowerButtons {
    /// Opens every input device under `dir` that has a power key.
    pub fn open(dir: &Path) -> PowerButtons {
        let mut devices = Vec::new();
        let Ok(entries) = fs::read_dir(dir) else {
            return PowerButtons { devices };
        };
        for entry in entries.flatten() {
            if !entry.file_name().to_string_lossy().starts_with("event") {
                continue;
            }
            if let Ok(file) = File::open(entry.path())
                && has_power_key(&file)
            {
                devices.push(file);
            }
        }
        PowerButtons { devices }
    }

    pub fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.devices.iter().map(AsFd::as_fd)
    }

    /// Reads the devices `ready` marks (in [`Self::fds`] order); true if one
    /// reported a power key press.
    pub fn pressed(&mut self, ready: &[bool]) -> bool {
        let mut pressed = false;
        for (device, _) in self.devices.iter_mut().zip(ready).filter(|(_, r)| **r) {
            let mut buf = [0u8; EVENT_SIZE * 16];
            if let Ok(n) = device.read(&mut buf) {
                pressed |= buf[..n].chunks_exact(EVENT_SIZE).any(is_power_press);
            }
        }
        pressed
    }
}

fn is_power_press(event: &[u8]) -> bool {
    let kind = u16::from_ne_bytes([event[16], event[17]]);
    let code = u16::from_ne_bytes([event[18], event[19]]);
    let value = i32::from_ne_bytes([event[20], event[21], event[22], event[23]]);
    kind == EV_KEY && code == KEY_POWER && value == 1
}

fn has_power_key(device: &File) -> bool {
    let mut bits = [0u8; KEY_BITS_BYTES as usize];
    // EVIOCGBIT(EV_KEY, len) = _IOC(_IOC_READ, 'E', 0x20 + EV_KEY, len).
    let request =
        (2u32 << 30) | (KEY_BITS_BYTES << 16) | (u32::from(b'E') << 8) | (0x20 + u32::from(EV_KEY));
    // SAFETY: the ioctl writes at most KEY_BITS_BYTES bytes into `bits`,
    // which outlives the call.
    let rc = unsafe {
        libc::ioctl(
            device.as_raw_fd(),
            libc::c_ulong::from(request),
            bits.as_mut_ptr(),
        )
    };
    rc > 0 && bits[usize::from(KEY_POWER / 8)] & (1 << (KEY_POWER % 8)) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u16, code: u16, value: i32) -> Vec<u8> {
        let mut e = vec![0u8; 16];
        e.extend(kind.to_ne_bytes());
        e.extend(code.to_ne_bytes());
        e.extend(value.to_ne_bytes());
        e
    }

    #[test]
    fn only_a_power_key_press_counts() {
        assert!(is_power_press(&event(EV_KEY, KEY_POWER, 1)));
        assert!(!is_power_press(&event(EV_KEY, KEY_POWER, 0)));
        assert!(!is_power_press(&event(EV_KEY, 30, 1)));
        assert!(!is_power_press(&event(0, KEY_POWER, 1)));
    }

    #[test]
    fn no_input_devices_means_no_buttons() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("event0"), "not a device").unwrap();
        assert_eq!(PowerButtons::open(dir.path()).fds().count(), 0);
        assert_eq!(
            PowerButtons::open(&dir.path().join("missing"))
                .fds()
                .count(),
            0
        );
    }
}
