//! A cloud image's writable disk: a qcow2 overlay per VM whose backing file
//! is the image's read-only blob, grown to the VM's `--storage`.
//!
//! The argv builders are shared by `vm create` and `vm debug`, so what debug
//! prints is what create runs. qemu-img is always told the formats (`-f`,
//! `-F`): it never probes a file.

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One overlay to create before the first boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayPrep {
    /// The cloud image's blob (qcow2 v3).
    pub base: PathBuf,
    pub path: PathBuf,
    /// The disk's size as the guest sees it, at least; a larger image stays as is.
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("cannot read the cloud image disk {}: {source}; pull or import the image again", path.display())]
    Base { path: PathBuf, source: io::Error },
    #[error("{} is not a qcow2 disk; pull or import the image again", path.display())]
    NotQcow2 { path: PathBuf },
    #[error("disk {} already exists", path.display())]
    Exists { path: PathBuf },
    #[error("cannot run qemu-img ({source}); install qemu-utils")]
    QemuImgMissing { source: io::Error },
    #[error("qemu-img {command} failed for {}: {output}", path.display())]
    QemuImg {
        command: String,
        path: PathBuf,
        output: String,
    },
    #[error("cannot set the mode of {}: {source}", path.display())]
    Mode { path: PathBuf, source: io::Error },
}

/// The virtual size in a qcow2 header (big-endian u64 at offset 24).
pub fn virtual_size(path: &Path) -> Result<u64, OverlayError> {
    let mut header = [0u8; 32];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .map_err(|source| OverlayError::Base {
            path: path.to_path_buf(),
            source,
        })?;
    if &header[..4] != b"QFI\xfb" {
        return Err(OverlayError::NotQcow2 {
            path: path.to_path_buf(),
        });
    }
    Ok(u64::from_be_bytes(
        header[24..32].try_into().expect("8 bytes"),
    ))
}

fn argv(parts: &[&std::ffi::OsStr]) -> Vec<OsString> {
    parts.iter().map(|p| p.to_os_string()).collect()
}

fn resize_argv(path: &Path, size: u64) -> Vec<OsString> {
    let size = size.to_string();
    argv(&[
        "qemu-img".as_ref(),
        "resize".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        path.as_os_str(),
        size.as_ref(),
    ])
}

/// `qemu-img create` of the overlay, then `qemu-img resize` when `size` is
/// larger than the image (cocoon's rule: never shrink, never resize to equal).
pub fn commands(prep: &OverlayPrep) -> Result<Vec<Vec<OsString>>, OverlayError> {
    let mut commands = vec![argv(&[
        "qemu-img".as_ref(),
        "create".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-F".as_ref(),
        "qcow2".as_ref(),
        "-b".as_ref(),
        prep.base.as_os_str(),
        prep.path.as_os_str(),
    ])];
    if prep.size > virtual_size(&prep.base)? {
        commands.push(resize_argv(&prep.path, prep.size));
    }
    Ok(commands)
}

fn run(command: &[OsString], path: &Path) -> Result<(), OverlayError> {
    use crate::process::RunError;
    crate::process::run(Command::new(&command[0]).args(&command[1..]))
        .map(drop)
        .map_err(|e| match e {
            RunError::Spawn(source) => OverlayError::QemuImgMissing { source },
            RunError::Failed(output) => OverlayError::QemuImg {
                command: command[1].to_string_lossy().into_owned(),
                path: path.to_path_buf(),
                output,
            },
        })
}

/// Creates the overlay (it must not exist yet), mode 0600. On failure
/// nothing is left behind.
pub fn prepare(prep: &OverlayPrep) -> Result<(), OverlayError> {
    if prep.path.exists() {
        return Err(OverlayError::Exists {
            path: prep.path.clone(),
        });
    }
    let made = commands(prep).and_then(|commands| {
        commands
            .iter()
            .try_for_each(|command| run(command, &prep.path))?;
        std::fs::set_permissions(&prep.path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| OverlayError::Mode {
                path: prep.path.clone(),
                source,
            },
        )
    });
    if made.is_err() {
        let _ = std::fs::remove_file(&prep.path);
    }
    made
}

/// Grows an existing qcow2 disk to `size` if it is smaller (a clone or
/// restore with a larger `--storage`).
pub fn grow(path: &Path, size: u64) -> Result<(), OverlayError> {
    if size > virtual_size(path)? {
        run(&resize_argv(path, size), path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qemu_img() -> bool {
        Command::new("qemu-img").arg("--version").output().is_ok()
    }

    fn info(path: &Path) -> serde_json::Value {
        let out = Command::new("qemu-img")
            .args(["info", "--output=json", "-f", "qcow2"])
            .arg(path)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    }

    #[test]
    fn overlay_is_backed_by_the_base_and_grown_only_when_larger() {
        if !qemu_img() {
            return cocoon_test_skip::skip(
                "overlay_is_backed_by_the_base_and_grown_only_when_larger",
                "qemu-img is not installed (qemu-utils)",
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        let out = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&base)
            .arg("64M")
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(virtual_size(&base).unwrap(), 64 << 20);

        let prep = OverlayPrep {
            base: base.clone(),
            path: dir.path().join("overlay.qcow2"),
            size: 128 << 20,
        };
        let commands = commands(&prep).unwrap();
        assert_eq!(commands.len(), 2);
        assert_eq!(commands[1][..4], ["qemu-img", "resize", "-f", "qcow2"]);
        prepare(&prep).unwrap();
        let info = info(&prep.path);
        assert_eq!(info["virtual-size"], 128 << 20);
        assert_eq!(info["backing-filename"], base.display().to_string());
        assert_eq!(info["backing-filename-format"], "qcow2");
        let mode = std::fs::metadata(&prep.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(prepare(&prep), Err(OverlayError::Exists { .. })));

        // Smaller than the image: no resize.
        let small = OverlayPrep {
            size: 32 << 20,
            path: dir.path().join("small.qcow2"),
            ..prep.clone()
        };
        assert_eq!(super::commands(&small).unwrap().len(), 1);
        prepare(&small).unwrap();
        assert_eq!(virtual_size(&small.path).unwrap(), 64 << 20);
        grow(&small.path, 96 << 20).unwrap();
        assert_eq!(virtual_size(&small.path).unwrap(), 96 << 20);
        grow(&small.path, 80 << 20).unwrap();
        assert_eq!(virtual_size(&small.path).unwrap(), 96 << 20);
    }

    #[test]
    fn a_missing_or_foreign_base_fails_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let prep = OverlayPrep {
            base: dir.path().join("gone.qcow2"),
            path: dir.path().join("overlay.qcow2"),
            size: 1 << 30,
        };
        let err = prepare(&prep).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot read the cloud image disk {}: No such file or directory (os error 2); pull or import the image again",
                prep.base.display()
            )
        );
        std::fs::write(&prep.base, vec![0u8; 4096]).unwrap();
        let err = prepare(&prep).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} is not a qcow2 disk; pull or import the image again",
                prep.base.display()
            )
        );
        assert!(!prep.path.exists());
    }
}
