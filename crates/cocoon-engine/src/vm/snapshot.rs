//! snapshot save, vm clone, vm restore: the lifecycle operations that start
//! from or produce a snapshot.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use jiff::Timestamp;
use serde::Serialize;
use vmm_api::ApiError;
use vmm_api::ch::CloudHypervisor;
use vmm_api::ch::models::{VmSnapshotConfig, file_url};
use vmm_api::fc::Firecracker;
use vmm_api::fc::models::SnapshotCreateParams;

use super::VmError;
use super::launch::VmPaths;
use super::lifecycle::Boot;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::lock::{VmLock, create_private_dir};
use crate::model::{Hypervisor, Snapshot, StorageRole, Vm, VmState};
use crate::net::{self, NetContext, NetRequest};
use crate::snapshot::copy::copy_file;
use crate::snapshot::manifest::{self, MANIFEST, Manifest};
use crate::snapshot::trust;
use crate::store::ObjectKind;
use crate::supervise;
use crate::vmm::{PauseError, VmmApi};
use std::os::unix::fs::OpenOptionsExt;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotOpError {
    #[error("snapshot {id}: {reason}")]
    Invalid { id: String, reason: String },
    #[error("snapshot {id} is damaged: {reason}; it cannot be used")]
    Damaged { id: String, reason: String },
    #[error("snapshot of VM {vm} failed: {reason}")]
    Save { vm: String, reason: String },
    #[error("interrupted: the VM was resumed and the half-made snapshot removed")]
    Interrupted,
    #[error("{0}")]
    Override(String),
}

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

/// How a restored VM gets its memory back (cocoon's `--restore-mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RestoreMode {
    /// The backend's own: CH copies the memory file in, FC maps it.
    #[default]
    Default,
    /// CH reads the whole memory file into guest RAM before resuming.
    Copy,
    /// CH maps guest RAM empty and fills pages on first touch (userfaultfd).
    OnDemand,
    /// The memory file is mapped copy-on-write: FC's (only) way. Upstream
    /// CH has no such mode (cocoon's needed a patched CH).
    Mmap,
}

impl RestoreMode {
    /// Whether CH restores on demand; an error for a mode `hypervisor` lacks.
    pub fn on_demand(self, hypervisor: Hypervisor) -> Result<bool> {
        let refuse = |why: &str| Err(Error::Invalid(why.to_string()));
        match (hypervisor, self) {
            (Hypervisor::CloudHypervisor, RestoreMode::OnDemand) => Ok(true),
            (Hypervisor::CloudHypervisor, RestoreMode::Mmap) => refuse(
                "--restore-mode mmap needs a Cloud Hypervisor with copy-on-write memory restore, which upstream releases lack; use copy or ondemand",
            ),
            (Hypervisor::Firecracker, RestoreMode::Copy | RestoreMode::OnDemand) => refuse(
                "Firecracker restores memory by mapping the snapshot file (--restore-mode mmap); copy and ondemand are Cloud Hypervisor modes",
            ),
            _ => Ok(false),
        }
    }
}

/// `vm clone` flags; zero/None inherit from the snapshot.
#[derive(Debug, Clone, Default)]
pub struct CloneRequest {
    pub name: Option<String>,
    pub cpu: u32,
    pub memory: Option<u64>,
    pub storage: Option<u64>,
    pub nics: u32,
    pub network: String,
    pub bridge: Option<String>,
    pub queue_size: u32,
    pub disk_queue_size: u32,
    pub no_direct_io: bool,
    pub restore_mode: RestoreMode,
}

/// `vm restore` flags.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreRequest {
    pub cpu: u32,
    pub memory: Option<u64>,
    pub storage: Option<u64>,
    pub restore_mode: RestoreMode,
}

fn op_err(e: SnapshotOpError) -> Error {
    Error::Invalid(e.to_string())
}

/// Ctrl+C and SIGTERM wait while the guest is paused: a CLI killed there
/// would leave the VM paused. They are noted and honoured after the resume.
fn hold_signals() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        f.store(true, Ordering::SeqCst);
    });
    flag
}

/// Reads and checks a snapshot's manifest against its directory: every
/// listed file present with its size; with `checksums`, its digest too.
pub fn load_manifest(snapshot: &Snapshot, checksums: bool) -> Result<Manifest> {
    let damaged = |reason: String| {
        op_err(SnapshotOpError::Damaged {
            id: snapshot.id.clone(),
            reason,
        })
    };
    let path = snapshot.data_dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| damaged(format!("cannot read {}: {e}", path.display())))?;
    let manifest: Manifest =
        serde_json::from_str(&text).map_err(|e| damaged(format!("bad {MANIFEST}: {e}")))?;
    if manifest.version != manifest::VERSION {
        return Err(damaged(format!(
            "manifest version {} is not supported",
            manifest.version
        )));
    }
    for (name, sum) in &manifest.files {
        let file = snapshot.data_dir.join(name);
        let size = std::fs::metadata(&file)
            .map_err(|e| damaged(format!("{name}: {e}")))?
            .len();
        if size != sum.size {
            return Err(damaged(format!(
                "{name} is {size} bytes, the manifest says {}",
                sum.size
            )));
        }
        if checksums {
            let actual = manifest::sum_file(&file).map_err(|e| damaged(format!("{name}: {e}")))?;
            if actual.sha256 != sum.sha256 {
                return Err(damaged(format!("{name} does not match its checksum")));
            }
        }
    }
    for disk in manifest.storage.iter().filter(|d| !d.ro) {
        let name = manifest::file_of(disk).unwrap_or_default();
        if !manifest.files.contains_key(&name) {
            return Err(damaged(format!("no copy of disk {}", disk.path.display())));
        }
    }
    let state: &[&str] = match manifest.snapshot.hypervisor {
        Hypervisor::CloudHypervisor => &["config.json", "state.json"],
        Hypervisor::Firecracker => &["vmstate", "mem"],
    };
    for name in state {
        if !manifest.files.contains_key(*name) {
            return Err(damaged(format!("no {name}")));
        }
    }
    Ok(manifest)
}

impl Engine {
    /// Pauses the VM, has the VMM write its state straight into the snapshot
    /// store, copies the writable disks there (reflink where possible), and
    /// resumes it whatever happened; checksums and the manifest are written
    /// after the resume, outside the pause window.
    pub fn save_snapshot(
        &mut self,
        reference: &str,
        name: &str,
        description: &str,
    ) -> Result<SaveOutcome> {
        if !name.is_empty() {
            crate::spec::validate_snapshot_name(name)?;
        }
        let vm = self.store().resolve_vm(reference)?;
        let _lock = self.lock_vm(&vm.id)?;
        let vm = self.store().resolve_vm(&vm.id)?;
        let Some(vmm) = vm.vmm.clone().filter(supervise::is_running) else {
            return Err(VmError::NotRunning {
                id: vm.id,
                name: vm.config.name,
            }
            .into());
        };
        let started = Instant::now();
        let id = crate::id::generate_id();
        let data_dir = self.snapshot_root().join(&id);
        let mut record = Snapshot::of_vm(&id, name, &vm, data_dir.clone());
        record.description = description.to_string();
        self.store().insert_snapshot(&record)?;
        let intent = self.store().begin_intent(
            "snapshot.save",
            ObjectKind::Snapshot,
            &id,
            &serde_json::json!({"vm_id": vm.id, "data_dir": data_dir, "api_socket": vmm.api_socket}),
        )?;
        let runtime = self.runtime()?;
        let result = runtime.block_on(async {
            create_private_dir(&data_dir)
                .map_err(|e| Error::io(format!("cannot create {}", data_dir.display()), e))?;
            let interrupted = hold_signals();
            let api = VmmApi::new(vm.hypervisor, &vmm.api_socket);
            let window = Instant::now();
            let saved = api
                .while_paused(|| capture(&vm, &vmm.api_socket, &data_dir))
                .await;
            let pause = window.elapsed();
            match saved {
                Ok(()) => {}
                Err(PauseError::Work(e)) => {
                    return Err(op_err(SnapshotOpError::Save {
                        vm: vm.config.name.clone(),
                        reason: format!("{e} (the VM was resumed)"),
                    }));
                }
                Err(PauseError::Pause(e)) => {
                    return Err(op_err(SnapshotOpError::Save {
                        vm: vm.config.name.clone(),
                        reason: format!("cannot pause: {e}"),
                    }));
                }
                Err(e @ PauseError::Resume { .. }) => {
                    return Err(op_err(SnapshotOpError::Save {
                        vm: vm.config.name.clone(),
                        reason: e.to_string(),
                    }));
                }
            }
            // Yield once so a signal that arrived in the window is seen.
            tokio::task::yield_now().await;
            if interrupted.load(Ordering::SeqCst) {
                return Err(op_err(SnapshotOpError::Interrupted));
            }
            Ok(pause)
        });
        // The window is over: Ctrl+C and SIGTERM end the process again.
        // SAFETY: restoring default dispositions; the runtime that handled them is gone.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
        }
        let pause = match result {
            Ok(pause) => pause,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&data_dir);
                let _ = self.store().delete_snapshot(&id);
                intent.finish(self.store())?;
                return Err(e);
            }
        };
        intent.step(self.store(), "captured", None)?;
        if let Err(e) = crate::failpoint::hit("snapshot.save.captured") {
            let _ = std::fs::remove_dir_all(&data_dir);
            let _ = self.store().delete_snapshot(&id);
            intent.finish(self.store())?;
            return Err(e);
        }
        let finished = (|| -> Result<Snapshot> {
            let files = manifest::sum_dir(&data_dir)
                .map_err(|e| Error::io(format!("cannot checksum {}", data_dir.display()), e))?;
            let mut done = record.clone();
            done.pending = false;
            let manifest = Manifest {
                version: manifest::VERSION,
                snapshot: done,
                source: vm.config.clone(),
                storage: vm.storage_configs.clone(),
                boot: vm.boot_config.clone().unwrap_or_default(),
                network: vm.network_configs.clone(),
                files,
            };
            write_atomic(
                &data_dir.join(MANIFEST),
                serde_json::to_vec_pretty(&manifest)
                    .expect("manifest serialises")
                    .as_slice(),
            )?;
            let (snapshot, _) = self
                .store()
                .update_snapshot(&id, "saved", |s| s.pending = false)?;
            Ok(snapshot)
        })();
        match finished {
            Ok(snapshot) => {
                intent.finish(self.store())?;
                Ok(SaveOutcome {
                    snapshot,
                    pause_ms: pause.as_secs_f64() * 1e3,
                    total_ms: started.elapsed().as_secs_f64() * 1e3,
                })
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&data_dir);
                let _ = self.store().delete_snapshot(&id);
                intent.finish(self.store())?;
                Err(e)
            }
        }
    }

    /// A new VM from a snapshot, running from the snapshot's state with a
    /// fresh identity and network.
    pub fn clone_vm(&mut self, reference: &str, request: CloneRequest) -> Result<Vm> {
        let snapshot = self.store().resolve_snapshot(reference)?;
        let manifest = load_manifest(&snapshot, false)?;
        let checked = self.check_snapshot(&snapshot, &manifest)?;
        let on_demand = clone_request_fits(&snapshot, &manifest, &request)?;
        let s = &manifest.source;
        let snap_nics = manifest.network.len() as u32;
        self.check_base_files(&manifest)?;

        let id = crate::id::generate_id();
        let paths = self.vm_paths(&id);
        let mut config = s.clone();
        config.name = request
            .name
            .clone()
            .unwrap_or_else(|| format!("cocoon-clone-{}", id[..8].to_ascii_lowercase()));
        crate::spec::validate_vm_name(&config.name)?;
        if request.cpu != 0 {
            config.cpu = request.cpu;
        }
        config.memory = request.memory.unwrap_or(s.memory);
        config.storage = request.storage.unwrap_or(s.storage);
        if request.queue_size != 0 {
            config.queue_size = request.queue_size;
        }
        if request.disk_queue_size != 0 {
            config.disk_queue_size = request.disk_queue_size;
        }
        config.no_direct_io |= request.no_direct_io;
        if !request.network.is_empty() {
            config.network = request.network.clone();
        }
        crate::spec::validate_cpu(config.cpu, crate::spec::host_cpus())?;
        let mut vm = Vm::new(
            &id,
            snapshot.hypervisor,
            config,
            paths.run_dir.clone(),
            paths.log_dir.clone(),
        );
        // Pinned: the image blobs its own disks use, as checked above (not
        // the list the snapshot record carries).
        vm.image_blob_ids = checked
            .blobs
            .iter()
            .map(|d| (d.to_string(), crate::model::Empty {}))
            .collect();
        let intent = self.store().begin_intent(
            "vm.clone",
            ObjectKind::Vm,
            &id,
            &serde_json::json!({"snapshot": snapshot.id, "run_dir": vm.run_dir, "log_dir": vm.log_dir}),
        )?;
        if let Err(e) = self.store().insert_vm(&vm) {
            intent.finish(self.store())?;
            return Err(e.into());
        }
        let net_ctx = NetContext::from_config(self.config());
        let mut leases = Vec::new();
        let mut targets = MountTargets::default();
        let runtime = self.runtime()?;
        let built = (|| -> Result<Boot> {
            for dir in [&vm.run_dir, &vm.log_dir] {
                create_private_dir(dir)
                    .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
            }
            let (binds, held) = self.place_snapshot_files(&snapshot, &manifest, &mut vm)?;
            targets = held;
            crate::failpoint::hit("vm.clone.files")?;
            let nics = if request.nics == 0 {
                snap_nics
            } else {
                request.nics
            };
            if nics > 0 {
                let attached = net::attach(
                    &net_ctx,
                    &NetRequest {
                        vm_id: &id,
                        nics,
                        network: &vm.config.network,
                        bridge: request.bridge.as_deref(),
                        hypervisor: vm.hypervisor,
                        cpu: vm.config.cpu,
                        queue_size: vm.config.queue_size,
                    },
                )
                .map_err(VmError::from)?;
                for lease in &attached.leases {
                    self.store().put_lease(lease)?;
                }
                leases = attached.leases;
                vm.config.network = attached.network;
                vm.network_configs = attached.configs;
            }
            vm.boot_config = Some(manifest.boot.clone());
            let cmdline = self.cmdline_of(&vm);
            // UEFI guests take no command line from us.
            if let Some(b) = vm.boot_config.as_mut().filter(|b| b.kernel_path.is_some()) {
                b.cmdline = cmdline;
            }
            let hot_plug_cidata = self.clone_cidata(&mut vm)?;
            if vm.hypervisor == Hypervisor::CloudHypervisor {
                patch_config_file(&vm.run_dir.join("config.json"), &vm, &snapshot.id)?;
            }
            if let Some(disk) = hot_plug_cidata {
                // After the patch: config.json keeps the snapshot's disks,
                // and the restore hot-plugs this one (`ch_restore`).
                vm.storage_configs.push(disk);
            }
            let done = vm.clone();
            self.store().update_vm(&id, "cloned", |v| {
                v.config = done.config;
                v.storage_configs = done.storage_configs;
                v.network_configs = done.network_configs;
                v.boot_config = done.boot_config;
            })?;
            Ok(Boot::Restore {
                source: vm.run_dir.clone(),
                on_demand,
                binds,
            })
        })();
        let launched = match built {
            Ok(boot) => {
                let paths = VmPaths::of(&vm);
                let result = runtime.block_on(self.launch_and_boot(&vm, &paths, &boot));
                self.release_mount_targets(std::mem::take(&mut targets));
                result
            }
            Err(e) => {
                self.release_mount_targets(std::mem::take(&mut targets));
                Err(e)
            }
        };
        match launched {
            Ok((vmm, relay)) => {
                let (vm, _) = self.store().update_vm(&id, "started", |v| {
                    v.state = VmState::Running;
                    v.pid = vmm.identity.pid;
                    v.socket_path = vmm.api_socket.display().to_string();
                    v.vmm = Some(vmm);
                    v.console_relay = relay;
                    v.started_at = Some(Timestamp::now());
                    v.first_booted = true;
                })?;
                intent.finish(self.store())?;
                Ok(vm)
            }
            Err(e) => {
                let _ = runtime.block_on(self.clear_runtime(&vm));
                if let Err(e) = net::detach(&net_ctx, &vm, &leases) {
                    tracing::warn!("rollback of the network of clone {id}: {e}");
                }
                let _ = std::fs::remove_dir_all(&vm.run_dir);
                let _ = std::fs::remove_dir_all(&vm.log_dir);
                let _ = self.store().delete_vm(&id);
                intent.finish(self.store())?;
                Err(e)
            }
        }
    }

    /// `vm clone --pull`: when the snapshot's base image is not in the store
    /// (an imported snapshot, or an image removed since), fetch exactly the
    /// one it was taken from: an OCI image by `repo@<manifest digest>` (the
    /// tag may point elsewhere by now), a cloud image from its URL, refused
    /// if the URL now serves other content. Returns what was pulled, or None
    /// when everything was already here.
    pub fn pull_snapshot_base(
        &mut self,
        reference: &str,
        request: &CloneRequest,
        oci_progress: &dyn crate::image::oci::PullProgress,
        cloud_progress: &dyn crate::image::cloud::CloudProgress,
    ) -> Result<Option<String>> {
        let snapshot = self.store().resolve_snapshot(reference)?;
        let manifest = load_manifest(&snapshot, false)?;
        self.check_snapshot(&snapshot, &manifest)?;
        // A clone these flags cannot make is refused before any download.
        clone_request_fits(&snapshot, &manifest, request)?;
        if self.missing_image_file(&manifest)?.is_none() {
            // Nothing a pull brings back is missing (a missing firmware is
            // reported by the clone itself).
            return Ok(None);
        }
        let invalid = |reason: String| {
            op_err(SnapshotOpError::Invalid {
                id: snapshot.id.clone(),
                reason,
            })
        };
        let source = &manifest.source;
        if source.image_digest.is_empty() {
            return Err(invalid(format!(
                "it records no image digest (an older snapshot), so --pull cannot know which {} to fetch; pull the image yourself",
                source.image
            )));
        }
        let pulled = if source.image_type == crate::model::ImageType::Cloudimg {
            let outcome = self.pull_cloud_image(&source.image, false, cloud_progress)?;
            if outcome.image.id != source.image_digest {
                return Err(invalid(format!(
                    "{} now serves {}, not the snapshot's image {}; nothing was cloned",
                    source.image, outcome.image.id, source.image_digest
                )));
            }
            source.image.clone()
        } else {
            let parsed = crate::image::oci::parse_reference(&source.image)?;
            let pinned = format!(
                "{}/{}@{}",
                parsed.registry(),
                parsed.repository(),
                source.image_digest
            );
            self.pull_image(&pinned, oci_progress).map_err(|e| {
                invalid(format!(
                    "cannot pull its image {pinned}: {e} (an image that was imported rather than pulled cannot be fetched: import it again)"
                ))
            })?;
            pinned
        };
        // The pull must have brought back every file the snapshot names.
        self.check_base_files(&manifest)?;
        Ok(Some(pulled))
    }

    /// What this engine's snapshot checks compare with.
    pub(crate) fn trust_facts(&self) -> trust::Facts {
        let config = self.config();
        trust::Facts {
            root_dir: config.root_dir.clone(),
            run_dir: config.run_dir.clone(),
            firmware_path: config.firmware_path.clone(),
        }
    }

    /// Checks everything the snapshot names against what this engine would
    /// have written (`snapshot::trust`); returns the image blobs it uses.
    pub(crate) fn check_snapshot(
        &self,
        snapshot: &Snapshot,
        manifest: &Manifest,
    ) -> Result<trust::Checked> {
        trust::check(manifest, &snapshot.data_dir, &self.trust_facts()).map_err(|reason| {
            op_err(SnapshotOpError::Invalid {
                id: snapshot.id.clone(),
                reason,
            })
        })
    }

    /// Layers, kernel and initrd of the snapshot's image must still be here.
    fn check_base_files(&mut self, manifest: &Manifest) -> Result<()> {
        if let Some(path) = self.missing_image_file(manifest)? {
            return Err(op_err(SnapshotOpError::Invalid {
                id: manifest.snapshot.id.clone(),
                reason: format!(
                    "its image {} is not in the store ({} is missing); pull it (cocoon image pull {}) or clone with --pull",
                    manifest.source.image,
                    path.display(),
                    manifest.source.image
                ),
            }));
        }
        if let Some(firmware) = &manifest.boot.firmware_path
            && !firmware.is_file()
        {
            return Err(VmError::FirmwareMissing {
                image: manifest.source.image.clone(),
                path: firmware.clone(),
            }
            .into());
        }
        Ok(())
    }

    /// The first file of the snapshot's image (layers, kernel, initrd, or a
    /// cloud image's blob) that is not in the store; an error for one
    /// outside this engine's root.
    fn missing_image_file(&mut self, manifest: &Manifest) -> Result<Option<PathBuf>> {
        let root = self.config().root_dir.clone();
        let mut needed: Vec<&Path> = manifest
            .storage
            .iter()
            .filter(|d| d.ro && d.role == StorageRole::Layer)
            .map(|d| d.path.as_path())
            .collect();
        needed.extend(manifest.boot.kernel_path.as_deref());
        needed.extend(manifest.boot.initrd_path.as_deref());
        // A cloud image's overlay is backed by the image's blob.
        let blob = if manifest.source.image_type == crate::model::ImageType::Cloudimg {
            let digest =
                crate::digest::Digest::parse(&manifest.source.image_digest).map_err(|e| {
                    op_err(SnapshotOpError::Invalid {
                        id: manifest.snapshot.id.clone(),
                        reason: e.to_string(),
                    })
                })?;
            Some(crate::image::cloud::blob_path(
                &crate::image::store::ImageDirs::new(&root),
                &digest,
            ))
        } else {
            None
        };
        needed.extend(blob.as_deref());
        for path in needed {
            if !path.starts_with(&root) {
                return Err(op_err(SnapshotOpError::Invalid {
                    id: manifest.snapshot.id.clone(),
                    reason: format!("{} is outside this engine's root directory", path.display()),
                }));
            }
            if !path.exists() {
                return Ok(Some(path.to_path_buf()));
            }
        }
        Ok(None)
    }

    /// Copies a snapshot's files into `vm.run_dir` (memory hard-linked, disks
    /// reflinked or sparse-copied, the rest copied) and points the VM's
    /// storage at them. Returns FC's bind mounts: the source disk paths its
    /// vmstate names, shown as the copies (placeholders made where missing).
    fn place_snapshot_files(
        &mut self,
        snapshot: &Snapshot,
        manifest: &Manifest,
        vm: &mut Vm,
    ) -> Result<Placed> {
        let run_root = self.config().run_dir.clone();
        let io = |what: String| move |e: std::io::Error| Error::io(what, e);
        for name in manifest.files.keys() {
            let from = snapshot.data_dir.join(name);
            let to = vm.run_dir.join(name);
            let is_memory = name.starts_with("memory-range") || name == "mem";
            let is_disk = manifest
                .storage
                .iter()
                .any(|d| manifest::file_of(d).as_deref() == Some(name.as_str()));
            if is_memory {
                // Read-only for the VMM (CH copies or maps it private, FC maps it private).
                std::fs::hard_link(&from, &to)
                    .or_else(|_| std::fs::copy(&from, &to).map(drop))
                    .map_err(io(format!("cannot place {name}")))?;
            } else if is_disk {
                copy_file(&from, &to).map_err(io(format!("cannot copy disk {name}")))?;
            } else {
                std::fs::copy(&from, &to).map_err(io(format!("cannot copy {name}")))?;
            }
        }
        let mut binds = Vec::new();
        vm.storage_configs = manifest.storage.clone();
        for disk in vm.storage_configs.iter_mut().filter(|d| !d.ro) {
            let name = manifest::file_of(disk).unwrap_or_default();
            let copy = vm.run_dir.join(&name);
            if disk.role == StorageRole::Cow && vm.config.storage > manifest.source.storage {
                grow_cow(&copy, vm.config.storage).map_err(io(format!("cannot grow {name}")))?;
            }
            if vm.hypervisor == Hypervisor::Firecracker && disk.path != copy {
                if !disk.path.starts_with(&run_root) {
                    return Err(op_err(SnapshotOpError::Invalid {
                        id: snapshot.id.clone(),
                        reason: format!(
                            "disk {} is outside this engine's run directory",
                            disk.path.display()
                        ),
                    }));
                }
                binds.push((copy.clone(), disk.path.clone()));
            }
            disk.path = copy;
        }
        // The targets live in the source VM's run directory, which is gone
        // when the source VM is (removed, or the snapshot was imported):
        // then they are made as empty files. Each target directory is held
        // under a shared lock until the clone's VMM has opened its disks, so
        // concurrent clones share the targets and gc, which removes a
        // directory without a record only under its exclusive lock, waits.
        let mut targets = MountTargets::default();
        let vms_root = self.config().run_dir.join("vms");
        for (_, target) in &binds {
            let Some(dir) = target.parent() else { continue };
            let Some(id) = dir
                .strip_prefix(&vms_root)
                .ok()
                .and_then(|rest| rest.to_str())
                .filter(|id| !id.is_empty() && !id.contains('/'))
            else {
                continue;
            };
            if !targets.leases.iter().any(|(held, _)| held == id) {
                let lease = VmLock::acquire_shared(
                    &self.config().run_dir,
                    id,
                    crate::engine::VM_LOCK_TIMEOUT,
                )
                .map_err(|e| Error::Invalid(e.to_string()))?;
                targets.leases.push((id.to_string(), lease));
            }
            if !target.exists() {
                std::fs::File::create(target)
                    .map_err(io(format!("cannot create {}", target.display())))?;
            }
        }
        Ok((binds, targets))
    }

    /// Lets go of a clone's mount targets once its VMM holds its disks open:
    /// the last clone out removes a target directory no VM owns.
    fn release_mount_targets(&mut self, targets: MountTargets) {
        for (id, lease) in targets.leases {
            if lease.try_upgrade() && matches!(self.store().get_vm(&id), Ok(None)) {
                let _ = std::fs::remove_dir_all(self.config().run_dir.join("vms").join(&id));
            }
        }
    }

    /// Restores a running VM in place from one of its own snapshots. Every
    /// check, checksums included, runs before the VM is touched.
    pub fn restore_vm(
        &mut self,
        vm_ref: &str,
        snapshot_ref: &str,
        request: RestoreRequest,
    ) -> Result<Vm> {
        let vm = self.store().resolve_vm(vm_ref)?;
        let _lock = self.lock_vm(&vm.id)?;
        let mut vm = self.store().resolve_vm(&vm.id)?;
        let snapshot = self.store().resolve_snapshot(snapshot_ref)?;
        let on_demand = request.restore_mode.on_demand(vm.hypervisor)?;
        if snapshot.vm_id.as_deref() != Some(vm.id.as_str()) {
            return Err(Error::Invalid(format!(
                "snapshot {} was not taken from VM {} ({}); restore only accepts the VM's own snapshots, use `cocoon vm clone {}` to start a new VM from it",
                snapshot.id, vm.id, vm.config.name, snapshot.id
            )));
        }
        if !vm.vmm.as_ref().is_some_and(supervise::is_running) {
            return Err(VmError::NotRunning {
                id: vm.id,
                name: vm.config.name,
            }
            .into());
        }
        let manifest = load_manifest(&snapshot, true)?;
        self.check_snapshot(&snapshot, &manifest)?;
        let s = &manifest.source;
        let over = |e: String| op_err(SnapshotOpError::Override(e));
        if manifest.network.len() != vm.network_configs.len() {
            return Err(over(format!(
                "the snapshot has {} NICs, the VM {}",
                manifest.network.len(),
                vm.network_configs.len()
            )));
        }
        let restored_cidata = super::cloudimg::restore_cidata_entry(&mut vm, &manifest.storage);
        let roles = |d: &[crate::model::StorageConfig]| {
            d.iter().map(|d| d.role.clone()).collect::<Vec<_>>()
        };
        if roles(&manifest.storage) != roles(&vm.storage_configs) {
            return Err(over("the snapshot's disks do not match the VM's".into()));
        }
        let cpu = if request.cpu == 0 { s.cpu } else { request.cpu };
        let memory = request.memory.unwrap_or(s.memory);
        if cpu < s.cpu || memory < s.memory || request.storage.is_some_and(|st| st < s.storage) {
            return Err(over(
                "CPU, memory and storage must be at least the snapshot's".into(),
            ));
        }
        if vm.hypervisor == Hypervisor::Firecracker && (cpu != s.cpu || memory != s.memory) {
            return Err(over(
                "Firecracker cannot change CPUs or memory on restore".into(),
            ));
        }
        self.check_base_files(&manifest)?;
        let intent = self.store().begin_intent(
            "vm.restore",
            ObjectKind::Vm,
            &vm.id,
            &serde_json::json!({"snapshot": snapshot.id}),
        )?;
        let runtime = self.runtime()?;
        // From here on the running VM is replaced.
        let result = (|| -> Result<(crate::model::VmmProcess, Option<crate::process::ProcessIdentity>)> {
            runtime.block_on(self.clear_runtime(&vm))?;
            crate::failpoint::hit("vm.restore.killed")?;
            vm.config.cpu = cpu;
            vm.config.memory = memory;
            if let Some(st) = request.storage {
                vm.config.storage = st;
            }
            if let Some(path) = &restored_cidata {
                self.write_cidata(&vm, path, None)?;
            }
            // Every replacement is staged beside its disk (same filesystem)
            // before any is swapped in; a failure from here on puts the old
            // disks back (`roll_back_disk_swap`, here or in the reconciler).
            let mut writable = Vec::new();
            for (disk, saved) in vm.storage_configs.iter().zip(&manifest.storage) {
                if disk.ro {
                    continue;
                }
                let name = manifest::file_of(saved).unwrap_or_default();
                let staged = swap_name(&disk.path, NEW);
                let _ = std::fs::remove_file(&staged);
                copy_file(&snapshot.data_dir.join(&name), &staged)
                    .and_then(|_| {
                        if disk.role == StorageRole::Cow && vm.config.storage > s.storage {
                            grow_cow(&staged, vm.config.storage)?;
                        }
                        Ok(())
                    })
                    .map_err(|e| Error::io(format!("cannot stage disk {}", disk.path.display()), e))?;
                writable.push(disk.path.clone());
            }
            intent.step(self.store(), "swapping", None)?;
            for (i, path) in writable.iter().enumerate() {
                let io = |e| Error::io(format!("cannot restore disk {}", path.display()), e);
                std::fs::rename(path, swap_name(path, OLD)).map_err(io)?;
                std::fs::rename(swap_name(path, NEW), path).map_err(io)?;
                if i == 0 {
                    crate::failpoint::hit("vm.restore.swapped")?;
                }
            }
            let source = match vm.hypervisor {
                Hypervisor::CloudHypervisor => {
                    let staging = vm.run_dir.join("restore");
                    let _ = std::fs::remove_dir_all(&staging);
                    create_private_dir(&staging)
                        .map_err(|e| Error::io(format!("cannot create {}", staging.display()), e))?;
                    for name in manifest.files.keys() {
                        let from = snapshot.data_dir.join(name);
                        if name.starts_with("memory-range") {
                            std::fs::hard_link(&from, staging.join(name))
                                .or_else(|_| std::fs::copy(&from, staging.join(name)).map(drop))
                                .map_err(|e| Error::io(format!("cannot stage {name}"), e))?;
                        } else if name == "state.json" || name == "config.json" {
                            std::fs::copy(&from, staging.join(name))
                                .map_err(|e| Error::io(format!("cannot stage {name}"), e))?;
                        }
                    }
                    patch_config_file(&staging.join("config.json"), &vm, &snapshot.id)?;
                    staging
                }
                Hypervisor::Firecracker => snapshot.data_dir.clone(),
            };
            let boot = Boot::Restore {
                source: source.clone(),
                on_demand,
                binds: vec![],
            };
            let paths = VmPaths::of(&vm);
            let launched = runtime.block_on(self.launch_and_boot(&vm, &paths, &boot));
            if vm.hypervisor == Hypervisor::CloudHypervisor && !on_demand {
                let _ = std::fs::remove_dir_all(&source);
            }
            launched
        })();
        match result {
            Ok((vmm, relay)) => {
                let done = vm.config.clone();
                let storage = vm.storage_configs.clone();
                let (vm, _) = self.store().update_vm(&vm.id, "restored", |v| {
                    v.config = done;
                    v.storage_configs = storage;
                    v.state = VmState::Running;
                    v.pid = vmm.identity.pid;
                    v.vmm = Some(vmm);
                    v.console_relay = relay;
                    v.started_at = Some(Timestamp::now());
                })?;
                // Past this step the reconciler rolls forward (drops the old
                // disks) instead of back.
                intent.step(self.store(), "committing", None)?;
                finish_disk_swap(&vm.storage_configs);
                intent.finish(self.store())?;
                Ok(vm)
            }
            Err(e) => {
                let _ = runtime.block_on(self.clear_runtime(&vm));
                roll_back_disk_swap(&vm.storage_configs);
                if let Some(path) = &restored_cidata {
                    let _ = std::fs::remove_file(path);
                }
                self.store().update_vm(&vm.id, "error", |v| {
                    v.state = VmState::Error;
                    v.pid = 0;
                    v.vmm = None;
                    v.console_relay = None;
                })?;
                intent.finish(self.store())?;
                Err(e)
            }
        }
    }
}

/// The `vm clone` flags a snapshot can take (docs/reference/cocoon-v0.3.8.md §1.3: CPU, memory,
/// storage and NICs may grow on CH, not shrink; FC changes none of CPU,
/// memory or NIC count; the restore mode must be the backend's). Checked
/// before anything is made or pulled. Returns whether CH restores on demand.
fn clone_request_fits(
    snapshot: &Snapshot,
    manifest: &Manifest,
    request: &CloneRequest,
) -> Result<bool> {
    let fc = snapshot.hypervisor == Hypervisor::Firecracker;
    let on_demand = request.restore_mode.on_demand(snapshot.hypervisor)?;
    let s = &manifest.source;
    let over = |e: String| op_err(SnapshotOpError::Override(e));
    if fc
        && ((request.cpu != 0 && request.cpu != s.cpu)
            || request.memory.is_some_and(|m| m != s.memory))
    {
        return Err(over(format!(
            "Firecracker cannot change CPUs or memory on clone (snapshot: {} CPUs, {} MiB)",
            s.cpu,
            s.memory >> 20
        )));
    }
    if request.cpu != 0 && request.cpu < s.cpu {
        return Err(over(format!(
            "--cpu {} is below the snapshot's {}",
            request.cpu, s.cpu
        )));
    }
    if let Some(m) = request.memory.filter(|m| *m < s.memory) {
        return Err(over(format!(
            "--memory {} MiB is below the snapshot's {} MiB",
            m >> 20,
            s.memory >> 20
        )));
    }
    if let Some(st) = request.storage.filter(|st| *st < s.storage) {
        return Err(over(format!(
            "--storage {} GiB is below the snapshot's {} GiB",
            st >> 30,
            s.storage >> 30
        )));
    }
    let snap_nics = manifest.network.len() as u32;
    if request.nics != 0 && request.nics < snap_nics {
        return Err(over(format!(
            "--nics {} is below the snapshot's {snap_nics}",
            request.nics
        )));
    }
    if fc && request.nics != 0 && request.nics != snap_nics {
        return Err(over(format!(
            "Firecracker cannot change the NIC count on clone (snapshot: {snap_nics})"
        )));
    }
    Ok(on_demand)
}

/// FC bind mounts (clone copy, source path) and the hold on their targets.
type Placed = (Vec<(PathBuf, PathBuf)>, MountTargets);

/// A Firecracker clone's hold on the directories its disks are bound over.
#[derive(Default)]
struct MountTargets {
    leases: Vec<(String, VmLock)>,
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
}

async fn capture(vm: &Vm, api_socket: &Path, dir: &Path) -> std::result::Result<(), CaptureError> {
    let timeout = vmm_api::transfer_timeout(vm.config.memory);
    match vm.hypervisor {
        Hypervisor::CloudHypervisor => {
            CloudHypervisor::new(api_socket)
                .snapshot(
                    &VmSnapshotConfig {
                        destination_url: file_url(dir),
                        extra: Default::default(),
                    },
                    timeout,
                )
                .await?
        }
        Hypervisor::Firecracker => {
            Firecracker::new(api_socket)
                .snapshot_create(
                    &SnapshotCreateParams {
                        snapshot_path: dir.join("vmstate").display().to_string(),
                        mem_file_path: dir.join("mem").display().to_string(),
                        snapshot_type: None,
                        extra: Default::default(),
                    },
                    timeout,
                )
                .await?
        }
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

fn patch_config_file(path: &Path, vm: &Vm, snapshot: &str) -> Result<()> {
    let invalid = |reason: String| {
        op_err(SnapshotOpError::Invalid {
            id: snapshot.to_string(),
            reason,
        })
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    let mut config = trust::read_bounded_json(file, "config.json").map_err(|reason| {
        op_err(SnapshotOpError::Damaged {
            id: snapshot.to_string(),
            reason,
        })
    })?;
    trust::check_ch_config(&config, &vm.storage_configs).map_err(invalid)?;
    super::restore::patch_ch_config(&mut config, vm).map_err(invalid)?;
    write_atomic(path, &serde_json::to_vec(&config).expect("json"))
}

const NEW: &str = "restore-new";
const OLD: &str = "restore-old";

/// `<disk>.<what>`: a restore's staged copy or the disk it replaced, beside
/// the disk so the swap is a rename.
fn swap_name(path: &Path, what: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(what);
    path.with_file_name(name)
}

/// Undoes a restore's disk swap: each disk whose old copy is still there
/// gets it back, staged copies go. Idempotent: a crash during it is
/// converged by running it again.
pub(crate) fn roll_back_disk_swap(disks: &[crate::model::StorageConfig]) {
    for disk in disks.iter().filter(|d| !d.ro) {
        let old = swap_name(&disk.path, OLD);
        if old.exists()
            && let Err(e) = std::fs::rename(&old, &disk.path)
        {
            tracing::warn!("cannot put back {}: {e}", disk.path.display());
        }
        let _ = std::fs::remove_file(swap_name(&disk.path, NEW));
    }
}

/// Completes a restore's disk swap: the replaced disks go.
pub(crate) fn finish_disk_swap(disks: &[crate::model::StorageConfig]) {
    for disk in disks.iter().filter(|d| !d.ro) {
        let _ = std::fs::remove_file(swap_name(&disk.path, OLD));
        let _ = std::fs::remove_file(swap_name(&disk.path, NEW));
    }
}

/// Grows a COW disk to `size`: a raw file by length, a cloud image's qcow2
/// overlay by its virtual size (its file length means nothing to the guest).
fn grow_cow(path: &Path, size: u64) -> std::io::Result<()> {
    if is_qcow2(path) {
        return super::overlay::grow(path, size).map_err(std::io::Error::other);
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(size)
}

fn is_qcow2(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok_and(|()| &magic == b"QFI\xfb")
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let io = |e| Error::io(format!("cannot write {}", path.display()), e);
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
