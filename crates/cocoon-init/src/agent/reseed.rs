//! `reseed`: after a clone or restore the guest's CRNG state is a copy of
//! the snapshot's, shared with every other clone; mix in the host's fresh
//! bytes and make the kernel reseed now (as upstream's agent does).

use std::io::{self, Read};
use std::os::fd::AsRawFd;

use cocoon_guest_proto::agent::{MAX_RESEED_BYTES, ReseedRequest};

use super::Root;

/// `_IOW('R', 0x03, int[2])` and `_IO('R', 0x07)` from linux/random.h.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

const RANDOM_DEVICE: &str = "/dev/urandom";
const SYSTEMD_RANDOM_SEED: &str = "/var/lib/systemd/random-seed";
const MACHINE_ID: &str = "/etc/machine-id";
const DBUS_MACHINE_ID: &str = "/var/lib/dbus/machine-id";

/// Every step is tried; the errors of those that failed are joined.
pub fn run(mut request: ReseedRequest, root: &Root) -> Result<(), String> {
    let mut errors = Vec::new();
    request.entropy.truncate(MAX_RESEED_BYTES);
    if let Err(e) = reseed_crng(&request.entropy) {
        errors.push(e);
    }
    // Host entropy is single-use.
    request.entropy.fill(0);
    // systemd would feed the snapshot's saved seed back in at next boot.
    match std::fs::remove_file(root.path(SYSTEMD_RANDOM_SEED)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            errors.push(format!("remove systemd random seed: {e}"))
        }
        _ => {}
    }
    if request.regen_machine_id
        && let Err(e) = regen_machine_id(root)
    {
        errors.push(format!("regen machine id: {e}"));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

fn reseed_crng(entropy: &[u8]) -> Result<(), String> {
    let device = std::fs::OpenOptions::new()
        .write(true)
        .open(RANDOM_DEVICE)
        .map_err(|e| format!("open {RANDOM_DEVICE}: {e}"))?;
    let mut errors = Vec::new();
    if !entropy.is_empty() {
        // struct rand_pool_info { int entropy_count; int buf_size; u32 buf[]; }
        let mut info = Vec::with_capacity(8 + entropy.len());
        // At most MAX_RESEED_BYTES (512): both counts fit an int.
        let bytes = i32::try_from(entropy.len()).map_err(|_| "too much entropy".to_owned())?;
        info.extend_from_slice(&(bytes * 8).to_ne_bytes());
        info.extend_from_slice(&bytes.to_ne_bytes());
        info.extend_from_slice(entropy);
        // SAFETY: info is a complete rand_pool_info whose buf_size matches
        // the bytes that follow it; the kernel only reads it.
        let rc = unsafe { libc::ioctl(device.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) };
        if rc < 0 {
            errors.push(format!("add entropy: {}", io::Error::last_os_error()));
        }
        info.fill(0);
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    let rc = unsafe { libc::ioctl(device.as_raw_fd(), RNDRESEEDCRNG, 0) };
    if rc < 0 {
        errors.push(format!("reseed crng: {}", io::Error::last_os_error()));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// A fresh random id, only where the guest has one (upstream leaves a
/// guest without the file alone). Not systemd-machine-id-setup: in a VM it
/// derives the id from the SMBIOS UUID, which every clone shares.
fn regen_machine_id(root: &Root) -> io::Result<()> {
    let path = root.path(MACHINE_ID);
    if !path.exists() {
        return Ok(());
    }
    write_machine_id(root, &random_machine_id()?)
}

pub fn write_machine_id(root: &Root, id: &str) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = root.path(MACHINE_ID);
    // The file is read-only (0444); replace it rather than open it.
    let tmp = path.with_extension("cocoon-tmp");
    std::fs::write(&tmp, format!("{id}\n"))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o444))?;
    std::fs::rename(&tmp, &path)?;
    // A regular-file D-Bus copy would keep serving the old id; a symlink
    // already follows /etc/machine-id.
    let dbus = root.path(DBUS_MACHINE_ID);
    if std::fs::symlink_metadata(&dbus).is_ok_and(|m| m.file_type().is_file()) {
        std::fs::remove_file(&dbus)?;
    }
    Ok(())
}

/// 32 lowercase hex digits, as /etc/machine-id holds.
pub fn random_machine_id() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open(RANDOM_DEVICE)?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
