//! QEMU: the VMM every distribution packages, so cocoon runs a VM right
//! after `install.sh`, and where `/dev/kvm` is missing (TCG: slow, correct).
//! Launched with its whole machine on the command line ([`args`]), started
//! paused and let go with QMP's `cont`; the serial port on its stdin/stdout
//! as Firecracker's. A snapshot is one file, `state`: QEMU's migration
//! stream written with `mapped-ram` (guest memory at fixed offsets, device
//! state beside it) while the VM is paused. A clone or restore starts the
//! same command line with `-incoming defer` and loads that file. The stream
//! carries device state only: the disks, TAPs and files QEMU opens are the
//! ones its command line names, from the engine's own records, so nothing
//! in a snapshot can point QEMU at another host file.
//!
//! A cloud image boots `-machine q35` with OVMF instead ([`uefi`]): the
//! same QMP, serial port, stop and snapshots, and a variable store per VM.

mod args;
mod hotplug;
mod hotplug_nic;
mod uefi;
mod vsock;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vmm_api::qmp::Qmp;
use vmm_api::{ApiError, Transition};

use super::{
    Backend, Boot, BootRequest, Helper, LaunchOptions, LocalFuture, RestoreMode, direct_boot,
};
use crate::config::Config;
use crate::console::RelayPort;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::guest::cmdline;
use crate::image::store::ImageDirs;
use crate::layout::VmPaths;
use crate::model::{FsConfig, Hypervisor, NetworkConfig, PciDevice, Snapshot, StorageConfig, Vm};
use crate::snapshot::manifest::Manifest;

/// The snapshot's one state file: memory and device state.
const STATE: &str = "state";
/// How long one QMP command may take (not a migration).
const QMP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct QemuBackend;

async fn connect(socket: &Path) -> Result<Qmp, ApiError> {
    Qmp::connect_within(socket, QMP_TIMEOUT).await
}

impl Backend for QemuBackend {
    fn kind(&self) -> Hypervisor {
        Hypervisor::Qemu
    }

    fn title(&self) -> &'static str {
        "QEMU"
    }

    fn binary(&self, config: &Config) -> PathBuf {
        PathBuf::from(&config.qemu_binary)
    }

    /// `q35` with OVMF ([`uefi`]).
    fn boots_uefi(&self) -> bool {
        true
    }

    /// OVMF's code, then the variable store template each VM copies.
    fn firmware(&self, config: &Config) -> Vec<PathBuf> {
        vec![
            config.qemu_firmware.clone(),
            config.qemu_firmware_vars.clone(),
        ]
    }

    fn firmware_missing(&self, image: String, path: PathBuf) -> crate::vm::VmError {
        crate::vm::VmError::OvmfMissing { image, path }
    }

    /// QEMU loads the layer's kernel as it is (bzImage or PVH ELF).
    fn kernel(&self, dirs: &ImageDirs, layer: &Digest) -> Result<PathBuf> {
        Ok(dirs.kernel(layer))
    }

    /// TCG, which `qemu_accel = auto` picks for stock kernels on PVM.
    fn emulates_cpu(&self) -> bool {
        true
    }

    /// virtio-mmio: the guest finds its disks in order.
    fn layer_serial(&self, _: usize) -> String {
        String::new()
    }

    fn has_direct_io(&self) -> bool {
        false
    }

    /// A pair per vCPU, at least one pair (as Cloud Hypervisor).
    fn nic_queues(&self, cpu: u32) -> u32 {
        (2 * cpu).max(2)
    }

    fn cmdline_style(&self) -> cmdline::Style {
        cmdline::Style::Mmio
    }

    /// It has no watchdog device to leave out; its transport follows the
    /// machine (virtio-mmio on microvm, virtio-pci on q35), so `--pci`,
    /// Firecracker's switch, is refused.
    fn refused_switch(
        &self,
        switches: &crate::model::DeviceSwitches,
    ) -> Option<(&'static str, &'static str)> {
        switches.pci.then_some((
            "--pci",
            "its transport follows the machine (virtio-mmio for OCI images, virtio-pci for cloud images); --pci switches Firecracker's",
        ))
    }

    fn launch_args(
        &self,
        vm: &Vm,
        paths: &VmPaths,
        opts: &LaunchOptions,
        restoring: bool,
    ) -> std::io::Result<Vec<String>> {
        let kvm = args::uses_kvm(opts.qemu_accel, opts.container);
        if !kvm && opts.qemu_accel == crate::config::QemuAccel::Auto {
            let why = if opts.container && crate::doctor::kvm_is_pvm() {
                "this host's KVM (PVM) cannot run the default kernel"
            } else {
                "/dev/kvm is not usable here"
            };
            tracing::warn!(
                "VM {}: {why}; QEMU emulates the CPU (TCG), and the VM will be slow",
                vm.id
            );
        }
        if direct_boot(vm) {
            return Ok(args::args(vm, paths, opts, kvm, restoring));
        }
        uefi::ensure_vars(paths, &opts.qemu_firmware_vars)?;
        Ok(uefi::args(vm, paths, opts, kvm, restoring))
    }

    /// Only with vhost-device-vsock installed: QEMU's device needs it.
    fn has_vsock(&self, vm: &Vm, opts: &LaunchOptions) -> bool {
        vsock::on(vm, opts)
    }

    /// No: QEMU's vhost-user vsock cannot be snapshotted, and these VMs are.
    fn vsock_for_own_kernel_images(&self) -> bool {
        false
    }

    fn vsock_helper(&self, vm: &Vm, paths: &VmPaths, opts: &LaunchOptions) -> Option<Helper> {
        vsock::helper(vm, paths, opts)
    }

    fn snapshot_blocker(&self, vm: &Vm) -> Option<String> {
        vsock::blocker(vm)
    }

    /// A UEFI guest's variable store, copied from the template as a start does.
    fn debug_prepare(&self, vm: &Vm, paths: &VmPaths, opts: &LaunchOptions) -> Vec<Vec<String>> {
        if direct_boot(vm) {
            return Vec::new();
        }
        vec![vec![
            "install".into(),
            "-D".into(),
            "-m".into(),
            "600".into(),
            opts.qemu_firmware_vars.display().to_string(),
            paths.efi_vars().display().to_string(),
        ]]
    }

    fn debug_args(&self, vm: &Vm, paths: &VmPaths, opts: &LaunchOptions) -> Vec<String> {
        let kvm = args::uses_kvm(opts.qemu_accel, opts.container);
        if direct_boot(vm) {
            args::args(vm, paths, opts, kvm, false)
        } else {
            uefi::args(vm, paths, opts, kvm, false)
        }
    }

    fn serial_on_stdin(&self, _: &Vm) -> bool {
        true
    }

    fn boot<'a>(
        &'a self,
        request: BootRequest<'a>,
    ) -> LocalFuture<'a, Result<Vec<RelayPort>, String>> {
        Box::pin(async move {
            let mut qmp = boot(&request).await.map_err(|e| e.to_string())?;
            if matches!(request.boot, Boot::Restore { .. }) {
                (request.arm)()?;
            } else if args::plugs_first(request.vm) {
                hotplug::plug_recorded(&mut qmp, request.vm).await?;
                hotplug_nic::plug_recorded(&mut qmp, request.vm).await?;
            } else {
                // Started without -S: the guest runs already.
                return Ok(Vec::new());
            }
            qmp.resume().await.map_err(|e| e.to_string())?;
            // The serial terminal (stdin/stdout) is the relay's already.
            Ok(Vec::new())
        })
    }

    fn boot_calls(
        &self,
        vm: &Vm,
        opts: &LaunchOptions,
    ) -> Vec<(String, String, serde_json::Value)> {
        let mut calls = Vec::new();
        if let Some(balloon) = opts.balloon(vm) {
            calls.push((
                "QMP".into(),
                "balloon".into(),
                serde_json::json!({ "value": vm.config.memory.saturating_sub(balloon) }),
            ));
        }
        if args::plugs_first(vm) {
            calls.extend(hotplug::plug_calls(vm));
            calls.extend(hotplug_nic::plug_calls(vm));
            calls.push(("QMP".into(), "cont".into(), serde_json::json!({})));
        }
        calls
    }

    /// A direct-boot guest is stopped with QEMU itself (`quit`); a guest
    /// with firmware gets the power button.
    fn graceful_wait(&self, direct_boot: bool, guest_wait: Duration, term: Duration) -> Duration {
        if direct_boot { term } else { guest_wait }
    }

    fn graceful_stop(&self, socket: PathBuf, direct_boot: bool) -> LocalFuture<'static, ()> {
        Box::pin(async move {
            let result = match connect(&socket).await {
                Ok(mut qmp) if direct_boot => qmp.quit().await,
                Ok(mut qmp) => qmp.system_powerdown().await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::debug!("graceful stop request failed, escalating: {e}");
            }
        })
    }

    fn pause<'a>(&self, socket: &'a Path) -> LocalFuture<'a, Result<Transition, ApiError>> {
        Box::pin(async move { connect(socket).await?.pause().await })
    }

    fn resume<'a>(&self, socket: &'a Path) -> LocalFuture<'a, Result<Transition, ApiError>> {
        Box::pin(async move { connect(socket).await?.resume().await })
    }

    fn snapshot<'a>(
        &self,
        socket: &'a Path,
        dir: &'a Path,
        memory: u64,
    ) -> LocalFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            connect(socket)
                .await?
                .save_to_file(&dir.join(STATE), vmm_api::transfer_timeout(memory))
                .await
                .map(drop)
        })
    }

    fn snapshots_in_run_dir(&self) -> bool {
        false
    }

    fn is_state_file(&self, name: &str) -> bool {
        name == STATE
    }

    /// Memory and device state in one file: hard-linked into a clone, read
    /// by QEMU, never written.
    fn is_memory_file(&self, name: &str) -> bool {
        name == STATE
    }

    fn required_state_files(&self) -> &'static [&'static str] {
        &[STATE]
    }

    /// The migration stream holds device state, no host paths: nothing in
    /// it reaches the host (QEMU opens what the engine's command line names).
    fn check_state(&self, _: &OwnedFd, _: &Manifest) -> Result<(), String> {
        Ok(())
    }

    fn hotplug_slots(&self) -> u32 {
        hotplug::SLOTS
    }

    fn clone_data_disk_refusal(&self) -> Option<&'static str> {
        Some(
            "QEMU restores exactly the devices its snapshot has; clone without --data-disk, then add a disk to the running clone with `cocoon vm disk attach`",
        )
    }

    fn disk_hot_plug_refusal(&self, vm: &Vm) -> Option<String> {
        hotplug::refusal(vm)
    }

    fn nic_hot_plug_refusal(&self, vm: &Vm) -> Option<String> {
        hotplug::refusal(vm).map(|reason| format!("backend does not support net resize: {reason}"))
    }

    fn attach_nic<'a>(
        &'a self,
        vm: &'a Vm,
        socket: &'a Path,
        nic: &'a NetworkConfig,
    ) -> LocalFuture<'a, Result<Option<u32>, String>> {
        Box::pin(hotplug_nic::attach(vm, socket, nic))
    }

    fn nic_removal_refusal(&self, vm: &Vm, index: usize, nic: &NetworkConfig) -> Option<String> {
        hotplug_nic::removal_refusal(vm, index, nic)
    }

    fn detach_nic<'a>(
        &'a self,
        socket: &'a Path,
        mac: &'a str,
    ) -> LocalFuture<'a, Result<(), String>> {
        Box::pin(hotplug_nic::detach(socket, mac))
    }

    fn nic_macs<'a>(&'a self, socket: &'a Path) -> LocalFuture<'a, Result<Vec<String>, String>> {
        Box::pin(hotplug_nic::macs(socket))
    }

    fn attach_disk<'a>(
        &'a self,
        vm: &'a Vm,
        socket: &'a Path,
        disk: &'a StorageConfig,
    ) -> LocalFuture<'a, Result<Option<u32>, String>> {
        Box::pin(hotplug::attach(vm, socket, disk))
    }

    fn detach_disk<'a>(
        &'a self,
        socket: &'a Path,
        id: &'a str,
    ) -> LocalFuture<'a, Result<(), String>> {
        Box::pin(hotplug::detach(socket, id))
    }

    fn attached_disk_ids<'a>(
        &'a self,
        socket: &'a Path,
    ) -> LocalFuture<'a, Result<Vec<String>, String>> {
        Box::pin(hotplug::disk_ids(socket))
    }

    fn fs_hot_plug_refusal(&self, vm: &Vm) -> Option<String> {
        hotplug::fs_refusal(vm)
    }

    fn attach_fs<'a>(
        &'a self,
        vm: &'a Vm,
        socket: &'a Path,
        fs: &'a FsConfig,
    ) -> LocalFuture<'a, Result<Option<u32>, String>> {
        Box::pin(hotplug::attach_fs(vm, socket, fs))
    }

    fn detach_fs<'a>(
        &'a self,
        socket: &'a Path,
        id: &'a str,
    ) -> LocalFuture<'a, Result<(), String>> {
        Box::pin(hotplug::detach_fs(socket, id))
    }

    fn device_hot_plug_refusal(&self, vm: &Vm) -> Option<String> {
        hotplug::refusal(vm)
    }

    fn attach_device<'a>(
        &'a self,
        vm: &'a Vm,
        socket: &'a Path,
        device: &'a PciDevice,
        _: &'a Path,
    ) -> LocalFuture<'a, Result<Option<u32>, String>> {
        Box::pin(hotplug::attach_device(vm, socket, device))
    }

    fn detach_device<'a>(
        &'a self,
        socket: &'a Path,
        id: &'a str,
    ) -> LocalFuture<'a, Result<(), String>> {
        Box::pin(hotplug::detach_device(socket, id))
    }

    /// QEMU reads the state file into guest memory before the guest runs.
    fn on_demand(&self, mode: RestoreMode) -> Result<bool> {
        match mode {
            RestoreMode::Default | RestoreMode::Copy => Ok(false),
            RestoreMode::OnDemand | RestoreMode::Mmap => Err(Error::Invalid(
                "QEMU restores memory by reading the snapshot file into the VM (--restore-mode copy); mmap and ondemand are Firecracker's and Cloud Hypervisor's".into(),
            )),
        }
    }

    fn resizes_on_restore(&self) -> bool {
        false
    }

    fn reopens_source_disks(&self) -> bool {
        false
    }

    fn patch_clone(&self, _: &Vm, _: &str) -> Result<()> {
        Ok(())
    }

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
        Box::pin(super::resize::qemu(socket, request))
    }
}

/// A fresh boot: the balloon's target (the guest may run already: its
/// driver takes the target whenever it comes). A restore: the state file
/// loaded into the waiting QEMU. The caller then `cont`s what waits (a
/// restore once armed).
async fn boot(request: &BootRequest<'_>) -> Result<Qmp, ApiError> {
    let socket = request.paths.api_socket();
    let mut qmp = Qmp::connect_within(&socket, request.timeout).await?;
    match request.boot {
        Boot::Fresh => {
            if direct_boot(request.vm)
                && let Some(balloon) = request.opts.balloon(request.vm)
            {
                let target = request.vm.config.memory.saturating_sub(balloon);
                qmp.balloon(i64::try_from(target).unwrap_or(i64::MAX))
                    .await?;
            }
        }
        Boot::Restore { source, .. } => {
            qmp.load_from_file(
                &source.join(STATE),
                vmm_api::transfer_timeout(request.vm.config.memory),
            )
            .await?;
        }
    }
    Ok(qmp)
}
