//! The cloud-init NoCloud disk of a cloud-image VM (docs/reference/cocoon-v0.3.8.md §9): a 1 MiB
//! FAT12 volume labelled `cidata` with `meta-data`, `user-data` and, when the
//! VM has NICs, `network-config`. It is attached read-only on the first boot
//! only, and regenerated with the new identity for a clone.
//!
//! Where this differs from cocoon (Go): the volume id is random (not
//! time-based); the non-root user's password reaches `chpasswd` as an
//! argument instead of inside a shell string, so quotes in it cannot break
//! the command. The password itself is written in clear, as cocoon does: a
//! crypt hash is only honoured by cloud-init for the formats the guest's libc
//! supports (bcrypt is missing from older glibc images, and cloud-init does
//! not recognise `$2b$`), and a wrong guess locks the user out.

mod fat;
mod render;
#[cfg(test)]
mod tests;

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::model::{IpConfig, StorageRole, Vm};
use crate::spec::FsType;

pub use fat::{IMAGE_BYTES, LABEL};

/// The file name of the disk in a VM's run directory.
pub const FILE_NAME: &str = "cidata.img";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

/// One NIC: matched by MAC; a static address or DHCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidataNic {
    pub mac: String,
    pub address: Option<IpConfig>,
}

/// One cloud-init `mounts:` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidataMount {
    pub device: String,
    pub mount_point: String,
    pub fstype: String,
    pub options: String,
}

/// Everything the three files say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidataSpec<'a> {
    pub instance_id: &'a str,
    pub hostname: &'a str,
    /// None on a clone: credentials are not kept, the guest keeps its own.
    pub credentials: Option<Credentials>,
    pub nics: &'a [CidataNic],
    pub mounts: &'a [CidataMount],
    pub dns: &'a [IpAddr],
}

#[derive(Debug, thiserror::Error)]
pub enum CidataError {
    #[error("the cloud-init {what} contains a control character; use printable characters only")]
    ControlCharacter { what: &'static str },
    #[error("cannot build the cloud-init disk: {0}")]
    Build(#[source] std::io::Error),
    #[error("cannot write the cloud-init disk {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The NICs of a VM as cloud-init matches them.
pub fn nics_of(vm: &Vm) -> Vec<CidataNic> {
    vm.network_configs
        .iter()
        .map(|n| CidataNic {
            mac: n.mac.clone(),
            address: n.network.clone(),
        })
        .collect()
}

/// Data disks with a filesystem and a mount point, by their virtio serial.
pub fn mounts_of(vm: &Vm) -> Vec<CidataMount> {
    vm.storage_configs
        .iter()
        .filter(|d| {
            d.role == StorageRole::Data
                && !d.mount_point.is_empty()
                && d.fstype.is_some_and(|f| f != FsType::None)
        })
        .map(|d| CidataMount {
            device: format!("/dev/disk/by-id/virtio-{}", d.serial),
            mount_point: d.mount_point.clone(),
            fstype: "ext4".into(),
            options: "defaults,nofail".into(),
        })
        .collect()
}

/// The files of the disk, in the order they are written.
pub fn files(spec: &CidataSpec<'_>) -> Result<Vec<(&'static str, String)>, CidataError> {
    let control = |s: &str| s.chars().any(char::is_control);
    if let Some(c) = &spec.credentials {
        if control(&c.user) {
            return Err(CidataError::ControlCharacter { what: "user" });
        }
        if control(&c.password) {
            return Err(CidataError::ControlCharacter { what: "password" });
        }
    }
    if control(spec.hostname) || control(spec.instance_id) {
        return Err(CidataError::ControlCharacter { what: "hostname" });
    }
    let mut files = vec![
        ("meta-data", render::meta_data(spec)),
        ("user-data", render::user_data(spec)),
    ];
    if let Some(network) = render::network_config(spec) {
        files.push(("network-config", network));
    }
    Ok(files)
}

/// The disk image with volume id `volume_id`.
pub fn image(spec: &CidataSpec<'_>, volume_id: u32) -> Result<Vec<u8>, CidataError> {
    let files = files(spec)?;
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, c)| (*n, c.as_bytes())).collect();
    fat::build(volume_id, &refs).map_err(CidataError::Build)
}

/// Writes the disk to `path` (mode 0600) with a random volume id, replacing
/// any earlier one atomically.
pub fn write(spec: &CidataSpec<'_>, path: &Path) -> Result<(), CidataError> {
    let mut id = [0u8; 4];
    getrandom::fill(&mut id).expect("the kernel's random source is available");
    let bytes = image(spec, u32::from_le_bytes(id))?;
    let fail = |source| CidataError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("img.tmp");
    let _ = std::fs::remove_file(&tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(e));
    }
    Ok(())
}
