//! Firecracker: a fresh boot is built from a `--config-file` as the process
//! starts, with no API call before the guest runs (one [`BootPlan`] value,
//! so `vm debug` prints exactly the file a start writes),
//! the serial port on its stdin/stdout, snapshots as `vmstate` plus `mem`,
//! restored by loading them behind the VM's TAPs. Its vmstate names the
//! disk paths the snapshot's VMM saw, where a clone's or restore's jail
//! shows the VM's own disks (see [`crate::jail`]).

mod boot_plan;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vmm_api::fc::Firecracker;
use vmm_api::fc::models::{
    MemoryBackend, MemoryBackendType, NetworkOverride, SnapshotCreateParams, SnapshotLoadParams,
    VsockOverride,
};
use vmm_api::{ApiError, Transition};

use super::{Backend, Boot, BootRequest, LaunchOptions, LocalFuture, RestoreMode};
use crate::config::Config;
use crate::console::RelayPort;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::guest::cmdline;
use crate::image::store::ImageDirs;
use crate::image::vmlinux;
use crate::jail::Jail;
use crate::layout::VmPaths;
use crate::model::{FsConfig, Hypervisor, PciDevice, Snapshot, StorageConfig, Vm};
use crate::snapshot::manifest::Manifest;

pub use boot_plan::{BootPlan, args};

pub struct FirecrackerBackend;

impl Backend for FirecrackerBackend {
    fn kind(&self) -> Hypervisor {
        Hypervisor::Firecracker
    }

    fn title(&self) -> &'static str {
        "Firecracker"
    }

    fn binary(&self, config: &Config) -> PathBuf {
        PathBuf::from(&config.fc_binary)
    }

    fn boots_uefi(&self) -> bool {
        false
    }

    fn firmware(&self, _: &Config) -> Vec<PathBuf> {
        Vec::new()
    }

    /// Never asked: it boots no UEFI guest.
    fn firmware_missing(&self, image: String, _: PathBuf) -> crate::vm::VmError {
        crate::vm::VmError::CloudImageOnFirecracker { image }
    }

    /// Firecracker loads only an uncompressed ELF: converted once per kernel.
    fn kernel(&self, dirs: &ImageDirs, layer: &Digest) -> Result<PathBuf> {
        Ok(vmlinux::ensure(dirs, layer).map_err(crate::vm::VmError::from)?)
    }

    fn default_kernel(&self, kernel: &crate::kernel::Installed) -> PathBuf {
        kernel.vmlinux()
    }

    fn layer_serial(&self, _: usize) -> String {
        String::new()
    }

    fn has_direct_io(&self) -> bool {
        false
    }

    /// One queue pair.
    fn nic_queues(&self, _: u32) -> u32 {
        2
    }

    fn cmdline_style(&self) -> cmdline::Style {
        cmdline::Style::Mmio
    }

    /// No watchdog device to leave out; a balloon to leave out; `--pci` is
    /// its `--enable-pci`. Its guest memory is private anonymous memory
    /// with no KSM or sharing switch, and never on huge pages (upstream
    /// #156: a huge-page snapshot cannot be mapped back, only loaded
    /// through userfaultfd).
    fn refused_switch(
        &self,
        switches: &crate::model::DeviceSwitches,
    ) -> Option<(&'static str, &'static str)> {
        if switches.hugepages {
            return Some((
                "--hugepages",
                "its snapshots of huge-page memory cannot be mapped back on restore or clone",
            ));
        }
        if switches.mergeable {
            return Some((
                "--mergeable",
                "it has no switch to make guest memory KSM-mergeable",
            ));
        }
        if switches.shared_memory {
            return Some(("--shared-memory", "it has no shared guest memory option"));
        }
        if switches.no_hotplug {
            return Some((
                "--no-hotplug",
                "it makes no hot-plug slots to leave out (--no-hotplug is QEMU's)",
            ));
        }
        None
    }

    fn launch_args(
        &self,
        vm: &Vm,
        paths: &VmPaths,
        opts: &LaunchOptions,
        restoring: bool,
    ) -> std::io::Result<Vec<String>> {
        // Firecracker refuses to create its log file itself.
        std::fs::File::create(paths.fc_log())?;
        if restoring {
            return Ok(args(vm, None));
        }
        let file = paths.fc_config();
        write_config(&file, &BootPlan::of(vm, opts).config_document())?;
        Ok(args(vm, Some(&file)))
    }

    /// A snapshot load is confined: the vmstate names the disks FC
    /// reopens, and only the VM's own files are there to reopen. A clone's
    /// copies are shown at the source paths its vmstate names.
    fn jail(
        &self,
        vm: &Vm,
        paths: &VmPaths,
        boot: &Boot,
        opts: &LaunchOptions,
        config: &Config,
    ) -> Result<Option<Jail>> {
        let Boot::Restore { source, .. } = boot else {
            return Ok(None);
        };
        let binary =
            crate::process::find_program(&opts.binary.display().to_string()).map_err(|reason| {
                Error::Invalid(format!("cannot confine {}: {reason}", self.title()))
            })?;
        let root = paths.jail_root();
        std::fs::create_dir_all(&root)
            .map_err(|e| Error::io(format!("cannot create {}", root.display()), e))?;
        let mut jail = Jail::new(root);
        jail.show(&binary, false);
        jail.show(&paths.run_dir, true);
        jail.show(&paths.log_dir, true);
        jail.show(source, false);
        for disk in &vm.storage_configs {
            let seen = disk.vmm_path.as_ref().unwrap_or(&disk.path);
            jail.show_at(&disk.path, seen, !disk.ro);
        }
        for extra in &config.jail_extra_paths {
            jail.show(extra, true);
        }
        Ok(Some(jail))
    }

    fn debug_args(&self, vm: &Vm, paths: &VmPaths, _: &LaunchOptions) -> Vec<String> {
        args(vm, Some(&paths.fc_config()))
    }

    fn debug_files(
        &self,
        vm: &Vm,
        paths: &VmPaths,
        opts: &LaunchOptions,
    ) -> Vec<(PathBuf, String)> {
        vec![(
            paths.fc_config(),
            config_text(&BootPlan::of(vm, opts).config_document()),
        )]
    }

    fn serial_on_stdin(&self, _: &Vm) -> bool {
        true
    }

    fn boot<'a>(
        &'a self,
        request: BootRequest<'a>,
    ) -> LocalFuture<'a, Result<Vec<RelayPort>, String>> {
        Box::pin(async move {
            let api = Firecracker::new(&request.paths.api_socket());
            match request.boot {
                Boot::Fresh => built(&api).await?,
                Boot::Restore { source, .. } => {
                    restore(&api, request.vm, source)
                        .await
                        .map_err(|e| e.to_string())?;
                    (request.arm)()?;
                    api.resume().await.map_err(|e| e.to_string())?;
                }
            }
            // The serial terminal (stdin/stdout) is the relay's already.
            Ok(Vec::new())
        })
    }

    /// None: the VM is built from the config file as the process starts.
    fn boot_calls(&self, _: &Vm, _: &LaunchOptions) -> Vec<(String, String, serde_json::Value)> {
        Vec::new()
    }

    fn graceful_wait(&self, _: bool, guest_wait: Duration, _: Duration) -> Duration {
        guest_wait
    }

    fn graceful_stop(&self, socket: PathBuf, _: bool) -> LocalFuture<'static, ()> {
        Box::pin(async move {
            if let Err(e) = Firecracker::new(&socket).send_ctrl_alt_del().await {
                tracing::debug!("graceful stop request failed, escalating: {e}");
            }
        })
    }

    fn pause<'a>(&self, socket: &'a Path) -> LocalFuture<'a, Result<Transition, ApiError>> {
        Box::pin(async move { Firecracker::new(socket).pause().await })
    }

    fn resume<'a>(&self, socket: &'a Path) -> LocalFuture<'a, Result<Transition, ApiError>> {
        Box::pin(async move { Firecracker::new(socket).resume().await })
    }

    fn snapshot<'a>(
        &self,
        socket: &'a Path,
        dir: &'a Path,
        memory: u64,
    ) -> LocalFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            let params = SnapshotCreateParams {
                snapshot_path: dir.join("vmstate").display().to_string(),
                mem_file_path: dir.join("mem").display().to_string(),
                snapshot_type: None,
                extra: Default::default(),
            };
            Firecracker::new(socket)
                .snapshot_create(&params, vmm_api::transfer_timeout(memory))
                .await
        })
    }

    fn snapshots_in_run_dir(&self) -> bool {
        true
    }

    fn is_state_file(&self, name: &str) -> bool {
        name == "vmstate" || self.is_memory_file(name)
    }

    fn is_memory_file(&self, name: &str) -> bool {
        name == "mem"
    }

    fn required_state_files(&self) -> &'static [&'static str] {
        &["vmstate", "mem"]
    }

    /// The vmstate is Firecracker's own binary format, not parsed here: the
    /// disk paths it names are checked through the manifest's storage (the
    /// VMM's jail shows the VM's own disks at exactly those paths, and
    /// nothing else of the host).
    fn check_state(&self, _: &OwnedFd, _: &Manifest) -> Result<(), String> {
        Ok(())
    }

    /// Firecracker's API adds drives before boot only (`PUT /drives/{id}`,
    /// "Pre-boot only"; after boot `PATCH` changes an existing drive's file).
    fn clone_data_disk_refusal(&self) -> Option<&'static str> {
        Some(
            "Firecracker restores exactly the drives its snapshot has and cannot add one (its API takes drives before boot only); clone without --data-disk, or take the snapshot of a VM created with the disk (`cocoon vm create --data-disk ...`)",
        )
    }

    fn disk_hot_plug_refusal(&self, vm: &Vm) -> Option<String> {
        Some(format!(
            "Firecracker cannot add a disk to or remove one from a running VM (its API takes drives before boot only); give the VM its disk at creation (`cocoon vm create --data-disk ...`), or run it on Cloud Hypervisor or QEMU (`--hypervisor`); VM {} is unchanged",
            vm.config.name
        ))
    }

    fn nic_hot_plug_refusal(&self, vm: &Vm) -> Option<String> {
        Some(format!(
            "backend does not support net resize: Firecracker cannot add a NIC to or remove one from a running VM (its API takes network interfaces before boot only); create or clone the VM with the NICs it needs (`--nics N`), or run it on Cloud Hypervisor (`--hypervisor`); VM {} is unchanged",
            vm.config.name
        ))
    }

    fn attach_disk<'a>(
        &'a self,
        _: &'a Vm,
        _: &'a Path,
        _: &'a StorageConfig,
    ) -> LocalFuture<'a, Result<Option<u32>, String>> {
        Box::pin(async { Err("Firecracker cannot hot-plug disks".to_string()) })
    }

    fn detach_disk<'a>(&'a self, _: &'a Path, _: &'a str) -> LocalFuture<'a, Result<(), String>> {
        Box::pin(async { Err("Firecracker cannot hot-unplug disks".to_string()) })
    }

    /// No disk is ever attached to a running Firecracker VM.
    fn attached_disk_ids<'a>(
        &'a self,
        _: &'a Path,
    ) -> LocalFuture<'a, Result<Vec<String>, String>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Firecracker has no vhost-user-fs device at all.
    fn fs_hot_plug_refusal(&self, vm: &Vm) -> Option<String> {
        Some(format!(
            "Firecracker has no virtio-fs (vhost-user-fs) device; share files through a disk (`cocoon vm create --data-disk ...`), or run the VM on Cloud Hypervisor or QEMU (`--hypervisor`); VM {} is unchanged",
            vm.config.name
        ))
    }

    fn attach_fs<'a>(
        &'a self,
        _: &'a Vm,
        _: &'a Path,
        _: &'a FsConfig,
    ) -> LocalFuture<'a, Result<Option<u32>, String>> {
        Box::pin(async { Err("Firecracker has no virtio-fs device".to_string()) })
    }

    /// Nothing was ever attached.
    fn detach_fs<'a>(&'a self, _: &'a Path, _: &'a str) -> LocalFuture<'a, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    /// Firecracker has no VFIO passthrough.
    fn device_hot_plug_refusal(&self, vm: &Vm) -> Option<String> {
        Some(format!(
            "Firecracker cannot pass a host PCI device through (it has no VFIO); run the VM on Cloud Hypervisor or QEMU (`--hypervisor`); VM {} is unchanged",
            vm.config.name
        ))
    }

    fn attach_device<'a>(
        &'a self,
        _: &'a Vm,
        _: &'a Path,
        _: &'a PciDevice,
        _: &'a Path,
    ) -> LocalFuture<'a, Result<Option<u32>, String>> {
        Box::pin(async { Err("Firecracker has no VFIO".to_string()) })
    }

    /// Nothing was ever attached.
    fn detach_device<'a>(&'a self, _: &'a Path, _: &'a str) -> LocalFuture<'a, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    fn on_demand(&self, mode: RestoreMode) -> Result<bool> {
        match mode {
            RestoreMode::Copy | RestoreMode::OnDemand => Err(Error::Invalid(
                "Firecracker restores memory by mapping the snapshot file (--restore-mode mmap); copy and ondemand are Cloud Hypervisor modes".into(),
            )),
            RestoreMode::Default | RestoreMode::Mmap => Ok(false),
        }
    }

    fn resizes_on_restore(&self) -> bool {
        false
    }

    fn reopens_source_disks(&self) -> bool {
        true
    }

    fn patch_clone(&self, _: &Vm, _: &str) -> Result<()> {
        Ok(())
    }

    /// Loaded straight from the snapshot directory (the memory is mapped
    /// private, never written).
    fn stage_restore(&self, _: &Vm, snapshot: &Snapshot, _: &Manifest) -> Result<PathBuf> {
        Ok(snapshot.data_dir.clone())
    }

    fn drop_staged_restore(&self, _: &Path, _: bool) {}

    fn resize<'a>(
        &self,
        socket: &'a Path,
        request: super::resize::ResizeRequest,
    ) -> LocalFuture<'a, std::result::Result<super::resize::Resized, super::resize::ResizeError>>
    {
        Box::pin(super::resize::firecracker(socket, request))
    }
}

/// Waits until Firecracker has built and booted the VM of its config file
/// (the API answers once the build is over) and checks that it runs. A
/// refused configuration ends the process: the connection closes, and the
/// boot error carries Firecracker's reason from its log.
async fn built(api: &Firecracker) -> Result<(), String> {
    match api.describe_instance().await {
        Ok(info) if info.state == "Running" => Ok(()),
        Ok(info) => Err(format!(
            "Firecracker built the VM of its config file but reports it {:?}",
            info.state
        )),
        Err(e) => Err(format!(
            "Firecracker did not build the VM of its config file: {e}"
        )),
    }
}

fn config_text(doc: &serde_json::Value) -> String {
    serde_json::to_string_pretty(doc).expect("the config document serialises")
}

/// The config file, in the VM's own run directory (made by cocoon, private):
/// replaced whole, never through a link.
fn write_config(file: &Path, doc: &serde_json::Value) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(file)?;
    out.write_all(config_text(doc).as_bytes())
}

/// FC: load `source/vmstate` with `source/mem` behind the VM's TAPs and on
/// its own vsock socket (the vmstate names the source VM's), left paused.
async fn restore(api: &Firecracker, vm: &Vm, source: &Path) -> Result<(), ApiError> {
    let params = SnapshotLoadParams {
        snapshot_path: source.join("vmstate").display().to_string(),
        mem_backend: Some(MemoryBackend {
            backend_type: MemoryBackendType::File,
            backend_path: source.join("mem").display().to_string(),
            extra: Default::default(),
        }),
        track_dirty_pages: None,
        resume_vm: Some(false),
        network_overrides: vm
            .network_configs
            .iter()
            .enumerate()
            .map(|(i, n)| NetworkOverride {
                iface_id: format!("eth{i}"),
                host_dev_name: n.tap.clone(),
                extra: Default::default(),
            })
            .collect(),
        vsock_override: (!vm.config.no_agent).then(|| VsockOverride {
            uds_path: boot_plan::vsock(vm).uds_path,
            extra: Default::default(),
        }),
        extra: Default::default(),
    };
    api.snapshot_load(&params, vmm_api::transfer_timeout(vm.config.memory))
        .await
        .map(drop)
}
