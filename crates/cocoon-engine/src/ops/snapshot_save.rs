//! `snapshot save`: pauses the VM, has the VMM write its state straight
//! into the snapshot store, copies the writable disks there (reflink where
//! possible), and resumes it whatever happened; the manifest is written
//! after the resume, outside the pause window, with each file's size but
//! not its digest: a detached sealer computes those after the command has
//! returned, and every use that needs them waits for or does that first
//! (`snapshot::seal`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use vmm_api::ApiError;

use crate::backend::{self, PauseError};
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::intent::{Op, step};
use crate::layout::VmPaths;
use crate::lock::create_private_dir;
use crate::model::{Snapshot, Vm, VmmProcess};
use crate::name::SnapshotName;
use crate::snapshot::copy::copy_file;
use crate::snapshot::manifest::{self, MANIFEST, Manifest};
use crate::snapshot::{SnapshotError, seal};
use crate::vm::VmError;

/// What `snapshot save` reports.
#[derive(Debug, Clone, Serialize)]
pub struct SaveOutcome {
    #[serde(flatten)]
    pub snapshot: Snapshot,
    /// How long the guest was paused, in milliseconds.
    pub pause_ms: f64,
    /// The whole save, in milliseconds.
    pub total_ms: f64,
}

/// The running VM a snapshot is taken of (`snapshot save`, `vm
/// hibernate`), under its lock, with its VMM; refused before any pause when
/// it does not run or its VMM cannot save one of its devices (a VMM fails
/// that only after stopping the guest).
pub(crate) fn locked_for_snapshot(
    ctx: &mut Ctx,
    reference: &str,
) -> Result<(crate::lock::VmLock, Vm, VmmProcess)> {
    let (lock, vm) = ctx.lock_resolved_vm(reference)?;
    let Some(vmm) = vm.vmm.clone().filter(crate::supervise::is_running) else {
        return Err(VmError::NotRunning {
            id: vm.id,
            name: vm.config.name,
        }
        .into());
    };
    if let Some(disk) = vm.storage_configs.iter().find(|d| d.external && d.ro) {
        return Err(SnapshotError::Save {
            reason: format!(
                "disk {} is attached read-only: a snapshot keeps copies of writable disks only, and a clone must never open a host file; detach it first (`cocoon vm disk detach {} --name {}`) and attach it again after",
                disk.serial, vm.config.name, disk.serial
            ),
            vm: vm.config.name,
        }
        .into());
    }
    if let Some(fs) = vm.filesystems.first() {
        return Err(SnapshotError::Save {
            reason: format!(
                "virtio-fs share {} is attached: virtiofsd cannot hand its state over, so a VM with a vhost-user-fs device cannot be saved and restored (cloud-hypervisor#4994); detach it first (`cocoon vm fs detach {} --tag {}`) and attach it again after",
                fs.tag, vm.config.name, fs.tag
            ),
            vm: vm.config.name,
        }
        .into());
    }
    if let Some(device) = vm.pci_devices.first() {
        return Err(SnapshotError::Save {
            reason: format!(
                "PCI device {} ({}) is passed through: a VMM cannot save a host device's state; detach it first (`cocoon vm device detach {} --id {}`) and attach it again after",
                device.id, device.bdf, vm.config.name, device.id
            ),
            vm: vm.config.name,
        }
        .into());
    }
    if let Some(reason) = backend::of(vm.hypervisor).snapshot_blocker(&vm) {
        return Err(SnapshotError::Save {
            vm: vm.config.name,
            reason,
        }
        .into());
    }
    Ok((lock, vm, vmm))
}

pub(crate) fn run(
    ctx: &mut Ctx,
    reference: &str,
    name: Option<SnapshotName>,
    description: &str,
) -> Result<SaveOutcome> {
    let (_lock, vm, vmm) = locked_for_snapshot(ctx, reference)?;
    let started = Instant::now();
    let id = crate::id::generate_id();
    let data_dir = ctx.layout.snapshot(&id);
    let mut record = Snapshot::of_vm(&id, name, &vm, data_dir.clone());
    record.description = description.to_string();
    let op = Op::SnapshotSave {
        vm_id: vm.id.clone(),
        data_dir: data_dir.clone(),
        api_socket: vmm.api_socket.clone(),
    };
    // Three commits, two of them synced: the pending record with the
    // intent; the intent's `captured` step, synced by the next commit (a
    // power loss before that one stops the VM anyway, and crash recovery
    // removes a pending snapshot at any step); the record ready with the
    // intent's end.
    let intent = ctx.store().begin_intent_inserting_snapshot(
        op.name(),
        op.kind(),
        &id,
        &op.data(),
        &record,
    )?;
    let saved = (|| {
        let pause = capture_paused(ctx, &vm, &vmm, &data_dir, false)?;
        ctx.store()
            .relaxed_if(true, |store| intent.step(store, step::CAPTURED, None))?;
        crate::failpoint::hit("snapshot.save.captured")?;
        write_manifest(&vm, &record, &data_dir)?;
        let (snapshot, _) =
            intent.finish_updating_snapshot(ctx.store(), &id, "saved", |s| s.pending = false)?;
        Ok((snapshot, pause))
    })();
    match saved {
        Ok((snapshot, pause)) => {
            start_sealer(ctx, &snapshot);
            Ok(SaveOutcome {
                snapshot,
                pause_ms: pause.as_secs_f64() * 1e3,
                total_ms: started.elapsed().as_secs_f64() * 1e3,
            })
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&data_dir);
            let _ = ctx.store().delete_snapshot(&id);
            intent.finish(ctx.store())?;
            Err(e)
        }
    }
}

/// The pause window; returns how long the guest was paused. With
/// `keep_paused` the guest is resumed only if the capture failed.
pub(super) fn capture_paused(
    ctx: &mut Ctx,
    vm: &Vm,
    vmm: &VmmProcess,
    data_dir: &Path,
    keep_paused: bool,
) -> Result<Duration> {
    let result = ctx.block_on_parallel(async |_| {
        create_private_dir(data_dir)
            .map_err(|e| Error::io(format!("cannot create {}", data_dir.display()), e))?;
        let interrupted = hold_signals();
        let backend = backend::of(vm.hypervisor);
        let window = Instant::now();
        let work = || capture(vm, &vmm.api_socket, data_dir);
        let saved = if keep_paused {
            backend::paused_unless_failed(backend, &vmm.api_socket, work).await
        } else {
            backend::while_paused(backend, &vmm.api_socket, work).await
        };
        let pause = window.elapsed();
        saved.map_err(|e| save_error(vm, e))?;
        // Yield once so a signal that arrived in the window is seen.
        tokio::task::yield_now().await;
        if interrupted.load(Ordering::SeqCst) {
            return Err(SnapshotError::Interrupted.into());
        }
        Ok(pause)
    });
    // The window is over: Ctrl+C and SIGTERM end the process again.
    // SAFETY: restoring default dispositions; only this thread's runtime
    // task watched for them, and it no longer acts on them.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
    }
    result
}

fn save_error(vm: &Vm, e: PauseError<CaptureError>) -> Error {
    let reason = match e {
        PauseError::Work(e) => format!("{e} (the VM was resumed)"),
        PauseError::Pause(e) => format!("cannot pause: {e}"),
        e @ PauseError::Resume { .. } => e.to_string(),
    };
    SnapshotError::Save {
        vm: vm.config.name.clone(),
        reason,
    }
    .into()
}

/// The manifest, unsealed (sizes, no digests), and the record no longer
/// pending. [`start_sealer`] follows.
pub(super) fn finish(
    ctx: &mut Ctx,
    vm: &Vm,
    record: &Snapshot,
    data_dir: &Path,
) -> Result<Snapshot> {
    write_manifest(vm, record, data_dir)?;
    let (snapshot, _) = ctx
        .store()
        .update_snapshot(&record.id, "saved", |s| s.pending = false)?;
    Ok(snapshot)
}

/// The unsealed manifest (sizes, no digests) of the files in `data_dir`.
fn write_manifest(vm: &Vm, record: &Snapshot, data_dir: &Path) -> Result<()> {
    let files = manifest::size_dir(data_dir)
        .map_err(|e| Error::io(format!("cannot list {}", data_dir.display()), e))?;
    let mut done = record.clone();
    done.pending = false;
    let manifest = Manifest {
        version: manifest::VERSION,
        snapshot: done,
        source: vm.vmm_config(),
        storage: vm.storage_configs.clone(),
        boot: vm.boot_config.clone().unwrap_or_default(),
        network: vm.network_configs.clone(),
        files,
    };
    // Not synced, like the files it lists: the sealer syncs them all, then
    // writes the sealed manifest durably. A synced manifest beside an
    // unsynced memory image would promise nothing, and on ext4 its fsync
    // waits on the journal, behind the image's writeback (up to 30 ms
    // measured here).
    let path = data_dir.join(MANIFEST);
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(&manifest).expect("manifest serialises"),
    )
    .and_then(|()| std::fs::rename(&tmp, &path))
    .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}

/// Starts the detached sealer of a finished snapshot. Failing that is no
/// failure of the save: the first use that needs the digests computes them.
pub(super) fn start_sealer(ctx: &Ctx, snapshot: &Snapshot) {
    if let Err(e) = seal::spawn_sealer(&ctx.helper_exe(), &snapshot.data_dir) {
        tracing::warn!(
            "snapshot {}: cannot start its sealer ({e}); its checksums are computed when it is first exported, pushed or restored",
            snapshot.id
        );
    }
}

/// Ctrl+C and SIGTERM wait while the guest is paused: a CLI killed there
/// would leave the VM paused. They are noted and honoured after the resume.
fn hold_signals() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    use tokio::signal::unix::{SignalKind, signal};
    // The handlers are installed here, before the pause is asked for; the
    // task that waits on them runs whenever the runtime gets to it.
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return flag;
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        f.store(true, Ordering::SeqCst);
    });
    flag
}

/// The work inside the pause window: VMM state into the store, then the
/// writable disks (they must match the memory image, so they cannot wait).
#[derive(Debug, thiserror::Error)]
enum CaptureError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Failpoint(#[from] Error),
    #[error("cannot copy disk {}: {source}", path.display())]
    Copy {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot move the VMM's state into the snapshot: {0}")]
    Stage(#[from] std::io::Error),
}

/// Every file of `from` into `to`: renamed, or copied where `to` is on
/// another file system (a `run_dir` elsewhere).
fn move_files(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let target = to.join(entry.file_name());
        match std::fs::rename(entry.path(), &target) {
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                copy_file(&entry.path(), &target)?;
            }
            other => other?,
        }
    }
    Ok(())
}

async fn capture(vm: &Vm, api_socket: &Path, dir: &Path) -> Result<(), CaptureError> {
    let backend = backend::of(vm.hypervisor);
    if backend.snapshots_in_run_dir() {
        // The VMM may be confined to its own files (crate::jail): it writes
        // its state in its run directory, moved here at once.
        let staging = VmPaths::of(vm).snapshot_staging();
        let staged = async {
            let _ = std::fs::remove_dir_all(&staging);
            create_private_dir(&staging)?;
            backend
                .snapshot(api_socket, &staging, vm.config.memory)
                .await
                .map_err(CaptureError::Api)?;
            move_files(&staging, dir)?;
            Ok::<(), CaptureError>(())
        }
        .await;
        let _ = std::fs::remove_dir_all(&staging);
        staged?;
    } else {
        backend.snapshot(api_socket, dir, vm.config.memory).await?;
    }
    crate::failpoint::hit("snapshot.save.paused")?;
    for disk in vm.storage_configs.iter().filter(|d| !d.ro) {
        let name = manifest::file_of(disk).unwrap_or_default();
        copy_file(&disk.path, &dir.join(&name)).map_err(|source| CaptureError::Copy {
            path: disk.path.clone(),
            source,
        })?;
    }
    Ok(())
}
