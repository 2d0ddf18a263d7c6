//! Cloud Hypervisor: boots the VM given on its command line (no API call is
//! needed to start it), names its console PTY in `vm.info`, restores from a
//! directory holding a `config.json` the engine patches for the VM it
//! becomes, and snapshots into `config.json`, `state.json` and
//! `memory-range*` files.

mod args;
mod hotplug;
mod restore;
mod state;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vmm_api::ch::CloudHypervisor;
use vmm_api::ch::models::{VmSnapshotConfig, file_url};
use vmm_api::{ApiError, Transition};

use super::{Backend, Boot, BootRequest, LaunchOptions, LocalFuture, RestoreMode, direct_boot};
use crate::config::Config;
use crate::console::RelayPort;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::guest::cmdline;
use crate::image::store::ImageDirs;
use crate::layout::VmPaths;
use crate::model::{
    FsConfig, Hypervisor, NetworkConfig, PciDevice, Snapshot, StorageConfig, Vm, VmmProcess,
};
use crate::snapshot::manifest::Manifest;

pub use args::{args, disk_arg};
pub use restore::patch_ch_config;

/// How long CH's serial socket may take to appear once the VM runs.
const SERIAL_SOCKET_WAIT: Duration = Duration::from_secs(2);

pub struct CloudHypervisorBackend;

impl Backend for CloudHypervisorBackend {
    fn kind(&self) -> Hypervisor {
        Hypervisor::CloudHypervisor
    }

    fn title(&self) -> &'static str {
        "Cloud Hypervisor"
    }

    fn binary(&self, config: &Config) -> PathBuf {
        PathBuf::from(&config.ch_binary)
    }

    fn boots_uefi(&self) -> bool {
        true
    }

    /// `CLOUDHV.fd`, which keeps its variables in guest memory.
    fn firmware(&self, config: &Config) -> Vec<PathBuf> {
        vec![config.firmware_path.clone()]
    }

    fn firmware_missing(&self, image: String, path: PathBuf) -> crate::vm::VmError {
        crate::vm::VmError::FirmwareMissing { image, path }
    }

    fn kernel(&self, dirs: &ImageDirs, layer: &Digest) -> Result<PathBuf> {
        Ok(dirs.kernel(layer))
    }

    fn layer_serial(&self, index: usize) -> String {
        cmdline::layer_serial(index)
    }

    fn has_direct_io(&self) -> bool {
        true
    }

    /// A pair per vCPU, at least one pair.
    fn nic_queues(&self, cpu: u32) -> u32 {
        (2 * cpu).max(2)
    }

    fn cmdline_style(&self) -> cmdline::Style {
        cmdline::Style::VirtioPci
    }

    /// Its devices are always virtio-pci: `--pci` is Firecracker's switch
    /// (refused here as upstream does).
    fn refused_switch(
        &self,
        switches: &crate::model::DeviceSwitches,
    ) -> Option<(&'static str, &'static str)> {
        if switches.no_hotplug {
            return Some((
                "--no-hotplug",
                "it hot-plugs on its own PCI bus, with no slots made at launch to leave out (--no-hotplug is QEMU's)",
            ));
        }
        switches.pci.then_some((
            "--pci",
            "its devices are always on virtio-pci (--pci switches Firecracker's transport)",
        ))
    }

    fn launch_args(
        &self,
        vm: &Vm,
        paths: &VmPaths,
        opts: &LaunchOptions,
        restoring: bool,
    ) -> std::io::Result<Vec<String>> {
        Ok(if restoring {
            args::restore_args(paths)
        } else {
            args(vm, opts)
        })
    }

    fn debug_args(&self, vm: &Vm, _: &VmPaths, opts: &LaunchOptions) -> Vec<String> {
        args(vm, opts)
    }

    /// Direct boot: the serial port is CH's stdin/stdout (`--serial tty`);
    /// UEFI: a socket the relay connects to.
    fn serial_on_stdin(&self, vm: &Vm) -> bool {
        direct_boot(vm)
    }

    fn boot<'a>(
        &'a self,
        request: BootRequest<'a>,
    ) -> LocalFuture<'a, Result<Vec<RelayPort>, String>> {
        Box::pin(boot(request))
    }

    fn boot_calls(&self, _: &Vm, _: &LaunchOptions) -> Vec<(String, String, serde_json::Value)> {
        Vec::new()
    }

    /// CH's `vm.shutdown` of a direct-boot guest is immediate: only the
    /// VMM's exit is waited for.
    fn graceful_wait(&self, direct_boot: bool, guest_wait: Duration, term: Duration) -> Duration {
        if direct_boot { term } else { guest_wait }
    }

    fn graceful_stop(&self, socket: PathBuf, direct_boot: bool) -> LocalFuture<'static, ()> {
        Box::pin(async move {
            let api = CloudHypervisor::new(&socket);
            let result = if direct_boot {
                let _ = api.shutdown().await;
                // The VM is down; let the VMM process exit on its own terms.
                api.shutdown_vmm().await
            } else {
                api.power_button().await
            };
            if let Err(e) = result {
                tracing::debug!("graceful stop request failed, escalating: {e}");
            }
        })
    }

    fn pause<'a>(&self, socket: &'a Path) -> LocalFuture<'a, Result<Transition, ApiError>> {
        Box::pin(async move { CloudHypervisor::new(socket).pause().await })
    }

    fn resume<'a>(&self, socket: &'a Path) -> LocalFuture<'a, Result<Transition, ApiError>> {
        Box::pin(async move { CloudHypervisor::new(socket).resume().await })
    }

    fn snapshot<'a>(
        &self,
        socket: &'a Path,
        dir: &'a Path,
        memory: u64,
    ) -> LocalFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            let config = VmSnapshotConfig {
                destination_url: file_url(dir),
                extra: Default::default(),
            };
            CloudHypervisor::new(socket)
                .snapshot(&config, vmm_api::transfer_timeout(memory))
                .await
        })
    }

    fn snapshots_in_run_dir(&self) -> bool {
        false
    }

    fn is_state_file(&self, name: &str) -> bool {
        name == "config.json" || name == "state.json" || self.is_memory_file(name)
    }

    fn is_memory_file(&self, name: &str) -> bool {
        name.starts_with("memory-range")
    }

    fn required_state_files(&self) -> &'static [&'static str] {
        &["config.json", "state.json"]
    }

    fn check_state(&self, dir: &OwnedFd, manifest: &Manifest) -> Result<(), String> {
        let config = crate::snapshot::trust::read_ch_config(dir)?;
        crate::snapshot::trust::check_ch_config(&config, &manifest.storage)
    }

    fn clone_data_disk_refusal(&self) -> Option<&'static str> {
        None
    }

    fn disk_hot_plug_refusal(&self, _: &Vm) -> Option<String> {
        None
    }

    fn nic_hot_plug_refusal(&self, _: &Vm) -> Option<String> {
        None
    }

    fn attach_nic<'a>(
        &'a self,
        _: &'a Vm,
        socket: &'a Path,
        nic: &'a NetworkConfig,
    ) -> LocalFuture<'a, Result<Option<u32>, String>> {
        Box::pin(async move { hotplug::attach_nic(socket, nic).await.map(|()| None) })
    }

    fn detach_nic<'a>(
        &'a self,
        socket: &'a Path,
        mac: &'a str,
    ) -> LocalFuture<'a, Result<(), String>> {
        Box::pin(hotplug::detach_nic(socket, mac))
    }

    fn nic_macs<'a>(&'a self, socket: &'a Path) -> LocalFuture<'a, Result<Vec<String>, String>> {
        Box::pin(async move {
            Ok(hotplug::nics(socket)
                .await?
                .into_iter()
                .map(|(_, mac)| mac)
                .collect())
        })
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
        Box::pin(async move {
            let ids = hotplug::disk_ids(socket).await?;
            Ok(ids
                .into_iter()
                .filter(|i| i.starts_with(crate::model::ATTACHED_DISK_PREFIX))
                .collect())
        })
    }

    fn fs_hot_plug_refusal(&self, vm: &Vm) -> Option<String> {
        hotplug::fs_refusal(vm)
    }

    fn attach_fs<'a>(
        &'a self,
        _: &'a Vm,
        socket: &'a Path,
        fs: &'a FsConfig,
    ) -> LocalFuture<'a, Result<Option<u32>, String>> {
        Box::pin(hotplug::attach_fs(socket, fs))
    }

    fn detach_fs<'a>(
        &'a self,
        socket: &'a Path,
        id: &'a str,
    ) -> LocalFuture<'a, Result<(), String>> {
        Box::pin(hotplug::detach_fs(socket, id))
    }

    fn device_hot_plug_refusal(&self, _: &Vm) -> Option<String> {
        None
    }

    fn attach_device<'a>(
        &'a self,
        _: &'a Vm,
        socket: &'a Path,
        device: &'a PciDevice,
        sysfs: &'a Path,
    ) -> LocalFuture<'a, Result<Option<u32>, String>> {
        Box::pin(hotplug::attach_device(socket, device, sysfs))
    }

    fn detach_device<'a>(
        &'a self,
        socket: &'a Path,
        id: &'a str,
    ) -> LocalFuture<'a, Result<(), String>> {
        Box::pin(hotplug::detach_device(socket, id))
    }

    fn on_demand(&self, mode: RestoreMode) -> Result<bool> {
        match mode {
            RestoreMode::OnDemand => Ok(true),
            RestoreMode::Mmap => Err(Error::Invalid(
                "--restore-mode mmap needs a Cloud Hypervisor with copy-on-write memory restore, which upstream releases lack; use copy or ondemand".into(),
            )),
            RestoreMode::Default | RestoreMode::Copy => Ok(false),
        }
    }

    fn resizes_on_restore(&self) -> bool {
        true
    }

    fn reopens_source_disks(&self) -> bool {
        false
    }

    fn patch_clone(&self, vm: &Vm, snapshot: &str) -> Result<()> {
        state::patch_config_file(&vm.run_dir.join("config.json"), vm, snapshot)
    }

    fn stage_restore(&self, vm: &Vm, snapshot: &Snapshot, manifest: &Manifest) -> Result<PathBuf> {
        state::stage_restore(self, vm, snapshot, manifest)
    }

    /// An on-demand restore keeps reading the memory files: they stay.
    fn drop_staged_restore(&self, source: &Path, on_demand: bool) {
        if !on_demand {
            let _ = std::fs::remove_dir_all(source);
        }
    }

    fn resize<'a>(
        &self,
        socket: &'a Path,
        request: super::resize::ResizeRequest,
    ) -> LocalFuture<'a, std::result::Result<super::resize::Resized, super::resize::ResizeError>>
    {
        Box::pin(super::resize::cloud_hypervisor(socket, request))
    }
}

/// Restores (if asked), waits for the VM to run, and collects the ports:
/// hvc0's PTY named in `vm.info`, and the serial port (the VMM's terminal on
/// a direct boot, CH's serial socket under UEFI).
async fn boot(request: BootRequest<'_>) -> Result<Vec<RelayPort>, String> {
    let BootRequest {
        vm,
        paths,
        vmm,
        boot,
        timeout,
        arm,
        ..
    } = request;
    let api = CloudHypervisor::new(&paths.api_socket());
    if let Boot::Restore {
        source, on_demand, ..
    } = boot
    {
        restore::ch_restore(&api, vm, source, *on_demand)
            .await
            .map_err(|e| e.to_string())?;
        arm()?;
        api.resume().await.map_err(|e| e.to_string())?;
    }
    // CH boots from its command line (or resumed the restored VM); the boot
    // was accepted once the VM reports Running. Its PTYs are named in vm.info.
    let info = wait_running(&api, vmm, timeout).await?;
    let mut ports = Vec::new();
    if let Some(pty) = info.config["console"]["file"].as_str() {
        let fd = super::open_tty(Path::new(pty))
            .map_err(|e| format!("cannot open the console terminal {pty}: {e}"))?;
        ports.push(RelayPort {
            name: "console".into(),
            fd,
        });
    }
    if direct_boot(vm) {
        // The serial terminal (stdin/stdout) is the relay's already.
        return Ok(ports);
    }
    // UEFI: the guest's ttyS0 is CH's serial socket.
    match connect_serial(paths).await {
        Ok(fd) => ports.push(RelayPort {
            name: "serial".into(),
            fd,
        }),
        Err(e) => tracing::warn!(
            "VM {}: cannot connect to the serial socket {}: {e}",
            vm.id,
            paths.serial_socket().display()
        ),
    }
    Ok(ports)
}

/// Polls `vm.info` until CH reports the VM Running. Its API socket comes up
/// before it has created and booted the VM from its command line, so the
/// first answers can be "VM is not created" or `Created`: those are waited
/// out (while the process lives, up to `limit`); the last one is the error.
async fn wait_running(
    api: &CloudHypervisor,
    vmm: &VmmProcess,
    limit: Duration,
) -> Result<vmm_api::ch::models::VmInfo, String> {
    let deadline = std::time::Instant::now() + limit;
    let mut pause = Duration::from_millis(1);
    loop {
        use vmm_api::ch::models::VmState;
        let last = match api.info().await {
            Ok(info) if info.state == VmState::Running => return Ok(info),
            // Still being created or booted from the command line: wait.
            Ok(info) if info.state == VmState::Created => {
                format!("the VM is {:?}, not running", info.state)
            }
            Err(e) if e.to_string().contains("not created") => e.to_string(),
            // Anything else (Shutdown, Paused, a refusal) will not change.
            Ok(info) => return Err(format!("the VM is {:?}, not running", info.state)),
            Err(e) => return Err(e.to_string()),
        };
        if !crate::supervise::is_running(vmm) {
            return Err(format!("the VMM exited ({last})"));
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!("{last} after {} s", limit.as_secs()));
        }
        tokio::time::sleep(pause).await;
        // CH creates and boots a small VM within milliseconds of its API
        // coming up: a longer pause would land well after that (one
        // `vm.info` over the socket costs far less than the wait).
        pause = (pause * 2).min(Duration::from_millis(2));
    }
}

/// Connects to CH's serial port socket (UEFI boot), for the console relay.
async fn connect_serial(paths: &VmPaths) -> std::io::Result<OwnedFd> {
    let socket = paths.serial_socket();
    let deadline = tokio::time::Instant::now() + SERIAL_SOCKET_WAIT;
    loop {
        match std::os::unix::net::UnixStream::connect(&socket) {
            Ok(stream) => return Ok(stream.into()),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
