//! The `qemu-img` calls cloud images need, with explicit argv and an
//! explicit source format: qemu-img never probes a file it rewrites.

use std::path::Path;
use std::process::Command;

use super::error::{CloudError, Origin};
use crate::process::RunError;

fn run(
    origin: &Origin,
    command: &'static str,
    args: &[&std::ffi::OsStr],
) -> Result<Vec<u8>, CloudError> {
    crate::process::run(Command::new("qemu-img").arg(command).args(args)).map_err(|e| match e {
        RunError::Spawn(source) => CloudError::QemuImgMissing { source },
        RunError::Failed(output) => CloudError::QemuImg {
            origin: origin.clone(),
            command,
            output,
        },
    })
}

/// The format `qemu-img info` probes `path` as (`raw` for anything unknown).
pub fn probe_format(path: &Path, origin: &Origin) -> Result<String, CloudError> {
    let out = run(
        origin,
        "info",
        &["--output=json".as_ref(), path.as_os_str()],
    )?;
    let info: serde_json::Value =
        serde_json::from_slice(&out).map_err(|e| CloudError::QemuImg {
            origin: origin.clone(),
            command: "info",
            output: format!("unreadable JSON: {e}"),
        })?;
    Ok(info["format"].as_str().unwrap_or("unknown").to_string())
}

/// Writes `src` (of `format`) to `dst` as qcow2 v3.
pub fn convert_to_qcow2_v3(
    src: &Path,
    format: &str,
    dst: &Path,
    origin: &Origin,
) -> Result<(), CloudError> {
    run(
        origin,
        "convert",
        &[
            "-f".as_ref(),
            format.as_ref(),
            "-O".as_ref(),
            "qcow2".as_ref(),
            "-o".as_ref(),
            "compat=1.1".as_ref(),
            src.as_os_str(),
            dst.as_os_str(),
        ],
    )
    .map(drop)
}

/// Upgrades a qcow2 v2 file to v3 in place: header and refcounts only, no data rewrite.
pub fn amend_to_v3(path: &Path, origin: &Origin) -> Result<(), CloudError> {
    run(
        origin,
        "amend",
        &[
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-o".as_ref(),
            "compat=1.1".as_ref(),
            path.as_os_str(),
        ],
    )
    .map(drop)
}
