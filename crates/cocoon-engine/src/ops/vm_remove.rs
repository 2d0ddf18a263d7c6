//! `vm rm`: its VMM (with `force`), network, disks, directories, then the
//! record. Directories go first, so a failure leaves a record to retry.

use std::path::{Path, PathBuf};

use crate::context::Ctx;
use crate::error::Result;
use crate::intent::Op;
use crate::model::Vm;
use crate::supervise;
use crate::vm::VmError;

use super::vm_launch::stop_leftovers;
use super::vm_stop::{StopOptions, stop_locked};

pub(crate) fn run(ctx: &mut Ctx, id: &str, force: bool) -> Result<Vm> {
    let (lock, vm) = ctx.lock_vm_record(id)?;
    if vm.vmm.as_ref().is_some_and(supervise::is_running) {
        if !force {
            return Err(VmError::Running {
                id: vm.id,
                name: vm.config.name,
            }
            .into());
        }
        let options = StopOptions {
            force: true,
            timeout: None,
        };
        stop_locked(ctx, vm.clone(), options)?;
    }
    let op = Op::VmRemove {
        run_dir: vm.run_dir.clone(),
        log_dir: vm.log_dir.clone(),
    };
    let vm = ctx.with_intent(&op, &vm.id, |ctx, _| {
        ctx.block_on(async |ctx| stop_leftovers(ctx, &vm).await)?;
        let leases = ctx.store().leases(&vm.id)?;
        crate::net::detach(&ctx.net(), &vm, &leases).map_err(VmError::from)?;
        remove_dirs(&vm, lock.path())?;
        crate::failpoint::hit("vm.rm.dirs")?;
        Ok(ctx.store().delete_vm(&vm.id)?)
    })?;
    // Last: the lock file (a waiter holding it finds no record and says so).
    let _ = std::fs::remove_file(lock.path());
    let _ = std::fs::remove_dir(&vm.run_dir);
    drop(lock);
    Ok(vm)
}

/// The run directory but the held lock file, then the log directory.
fn remove_dirs(vm: &Vm, lock: &Path) -> Result<()> {
    let removed = remove_run_dir(&vm.run_dir, lock).and_then(|()| {
        remove_tree(&vm.log_dir).map_err(|e| ("log directory", vm.log_dir.clone(), e))
    });
    removed.map_err(|(what, path, source)| {
        VmError::Remove {
            id: vm.id.clone(),
            name: vm.config.name.clone(),
            what,
            path,
            source,
        }
        .into()
    })
}

fn remove_tree(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

type RemoveError = (&'static str, PathBuf, std::io::Error);

/// Everything in the run directory but the lock file the caller holds.
fn remove_run_dir(dir: &Path, lock: &Path) -> Result<(), RemoveError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(("run directory", dir.to_path_buf(), e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| ("run directory", dir.to_path_buf(), e))?;
        let path = entry.path();
        if path == lock {
            continue;
        }
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| ("disk or runtime file", path.clone(), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_directory_is_emptied_but_for_the_held_lock() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("vms/X");
        std::fs::create_dir_all(run.join("restore")).unwrap();
        for f in ["lock", "cow.raw", "restore/config.json"] {
            std::fs::write(run.join(f), b"x").unwrap();
        }
        remove_run_dir(&run, &run.join("lock")).unwrap();
        let left: Vec<_> = std::fs::read_dir(&run)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["lock"]);
        // Gone already is done.
        remove_run_dir(&dir.path().join("missing"), &run.join("lock")).unwrap();
        remove_tree(&dir.path().join("missing")).unwrap();
    }
}
