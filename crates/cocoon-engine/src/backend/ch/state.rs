//! A CH snapshot's `config.json` made this VM's: for a clone in its run
//! directory, for a restore in a staging directory beside the memory files.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::CloudHypervisorBackend;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::layout::VmPaths;
use crate::lock::create_private_dir;
use crate::model::{Snapshot, Vm};
use crate::snapshot::manifest::Manifest;
use crate::snapshot::{SnapshotError, trust, write_atomic};

/// Checks the `config.json` at `path` (nothing in it attaches a host file)
/// and rewrites it for `vm`.
pub(super) fn patch_config_file(path: &Path, vm: &Vm, snapshot: &str) -> Result<()> {
    let invalid = |reason: String| SnapshotError::Invalid {
        id: snapshot.to_string(),
        reason,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    let mut config =
        trust::read_bounded_json(file, "config.json").map_err(|reason| SnapshotError::Damaged {
            id: snapshot.to_string(),
            reason,
        })?;
    trust::check_ch_config(&config, &vm.storage_configs).map_err(invalid)?;
    super::patch_ch_config(&mut config, vm).map_err(invalid)?;
    write_atomic(path, &serde_json::to_vec(&config).expect("json"))
}

/// Stages the snapshot's state in the VM's run directory: memory files
/// hard-linked (copied across filesystems), `state.json` and a patched
/// `config.json` copied. Returns the directory to restore from.
pub(super) fn stage_restore(
    backend: &CloudHypervisorBackend,
    vm: &Vm,
    snapshot: &Snapshot,
    manifest: &Manifest,
) -> Result<PathBuf> {
    let staging = VmPaths::of(vm).restore_staging();
    let _ = std::fs::remove_dir_all(&staging);
    create_private_dir(&staging)
        .map_err(|e| Error::io(format!("cannot create {}", staging.display()), e))?;
    for name in manifest.files.keys() {
        let from = snapshot.data_dir.join(name);
        let to = staging.join(name);
        let staged = if backend.is_memory_file(name) {
            std::fs::hard_link(&from, &to).or_else(|_| std::fs::copy(&from, &to).map(drop))
        } else if backend.is_state_file(name) {
            std::fs::copy(&from, &to).map(drop)
        } else {
            continue;
        };
        staged.map_err(|e| Error::io(format!("cannot stage {name}"), e))?;
    }
    patch_config_file(&staging.join("config.json"), vm, &snapshot.id)?;
    Ok(staging)
}
