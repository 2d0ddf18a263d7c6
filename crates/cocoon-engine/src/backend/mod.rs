//! What differs per VMM, behind one trait. The operations (`ops/`) run the
//! same sequence for every VM and ask its [`Backend`] for the steps that
//! depend on the VMM: the launch arguments, the boot or restore calls and the
//! console ports they yield, the graceful stop, pause and resume, the
//! snapshot call and its file names, and what a clone or a restore must
//! rewrite in the VMM's saved state.
//!
//! Nothing outside this module matches on [`Hypervisor`]: adding a VMM is one
//! more file here and one line in [`of`].

pub mod ch;
pub mod fc;
pub mod launch;
pub mod qemu;
pub mod resize;

use std::future::Future;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use vmm_api::{ApiError, Transition};

use crate::config::Config;
use crate::console::RelayPort;
use crate::digest::Digest;
use crate::error::Result;
use crate::image::store::ImageDirs;
use crate::jail::Jail;
use crate::layout::VmPaths;
use crate::model::{
    FsConfig, Hypervisor, NetworkConfig, PciDevice, Snapshot, StorageConfig, Vm, VmmProcess,
};
use crate::snapshot::manifest::Manifest;

pub use launch::{GUEST_CID, Helper, LaunchOptions, host_has_hugepages};

/// A future a backend returns; not `Send`: the engine drives it with
/// `block_on` on the thread that asked.
pub type LocalFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// How a launched VMM gets its guest.
#[derive(Debug, Clone)]
pub enum Boot {
    /// A cold boot from the record's kernel and disks.
    Fresh,
    /// A snapshot's state: CH reads `source/config.json` (patched for this
    /// VM); FC loads `source/vmstate` and `source/mem`.
    Restore { source: PathBuf, on_demand: bool },
}

/// Everything a backend needs to bring a launched VMM's guest up.
pub struct BootRequest<'a> {
    pub vm: &'a Vm,
    pub paths: &'a VmPaths,
    pub vmm: &'a VmmProcess,
    pub boot: &'a Boot,
    pub opts: &'a LaunchOptions,
    /// How long the VMM may take to come up.
    pub timeout: Duration,
    /// A restore calls it once the snapshot is loaded, before the guest
    /// resumes (the engine caps the VM's CPU there); the error is the reason.
    pub arm: &'a dyn Fn() -> Result<(), String>,
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

/// The steps of the VM lifecycle that depend on the VMM.
pub trait Backend: Sync {
    fn kind(&self) -> Hypervisor;
    /// The VMM's name as people write it, for messages.
    fn title(&self) -> &'static str;
    /// The VMM binary this configuration names.
    fn binary(&self, config: &Config) -> PathBuf;

    // --- planning a VM ---
    /// Whether it boots UEFI guests (cloud images).
    fn boots_uefi(&self) -> bool;
    /// The host files its UEFI guests boot from, per the configuration:
    /// the firmware first (recorded as the VM's `firmware_path`), then any
    /// other file a new VM needs (QEMU's variable store template). Empty:
    /// it boots no UEFI guest.
    fn firmware(&self, config: &Config) -> Vec<PathBuf>;
    /// The error for `path`, one of its [`Backend::firmware`] files, missing.
    fn firmware_missing(&self, image: String, path: PathBuf) -> crate::vm::VmError;
    /// The kernel file it loads for a direct boot from an image layer.
    fn kernel(&self, dirs: &ImageDirs, layer: &Digest) -> Result<PathBuf>;
    /// Whether it can run a stock kernel where KVM cannot (PVM): only a VMM
    /// that emulates the CPU.
    fn emulates_cpu(&self) -> bool {
        false
    }
    /// The file of an installed default kernel it loads (container images).
    fn default_kernel(&self, kernel: &crate::kernel::Installed) -> PathBuf {
        kernel.vmlinuz()
    }
    /// The serial of the `index`th image layer disk (empty: none).
    fn layer_serial(&self, index: usize) -> String;
    /// Whether its disks have a direct I/O switch.
    fn has_direct_io(&self) -> bool;
    /// Queues per NIC as the VMM sees them.
    fn nic_queues(&self, cpu: u32) -> u32;
    /// How its guests see devices on the kernel command line.
    fn cmdline_style(&self) -> crate::guest::cmdline::Style;
    /// The first of `switches` it cannot honour: the flag and why (None:
    /// it takes them all).
    fn refused_switch(
        &self,
        switches: &crate::model::DeviceSwitches,
    ) -> Option<(&'static str, &'static str)>;

    // --- launch and boot ---
    /// The arguments after the binary; `restoring`: the VM comes from
    /// snapshot state. May create files the VMM insists on (FC's log).
    fn launch_args(
        &self,
        vm: &Vm,
        paths: &VmPaths,
        opts: &LaunchOptions,
        restoring: bool,
    ) -> std::io::Result<Vec<String>>;
    /// The view of the host the VMM runs confined to (None: the whole
    /// host). A VMM that reopens paths named by state it did not write
    /// (FC's vmstate, on a clone or restore) sees only its own files. The
    /// others run with the host's view: CH's state is re-derived by the
    /// engine, QEMU opens only what its command line (the engine's) names.
    fn jail(
        &self,
        _vm: &Vm,
        _paths: &VmPaths,
        _boot: &Boot,
        _opts: &LaunchOptions,
        _config: &Config,
    ) -> Result<Option<Jail>> {
        Ok(None)
    }
    /// `vm debug`: the commands that make the files a launch makes itself
    /// (QEMU's UEFI variable store), to run before the printed launch.
    fn debug_prepare(&self, _vm: &Vm, _paths: &VmPaths, _opts: &LaunchOptions) -> Vec<Vec<String>> {
        Vec::new()
    }
    /// Whether this launch gives the VM a vsock device on its
    /// [`VmPaths::vsock_socket`]: unless `--no-agent`.
    fn has_vsock(&self, vm: &Vm, _opts: &LaunchOptions) -> bool {
        !vm.config.no_agent
    }
    /// Whether VMs of images built for cocoon (own kernel) get a vsock
    /// device, so the guest agent's layer can serve them.
    fn vsock_for_own_kernel_images(&self) -> bool {
        true
    }
    /// The process the VM's vsock device runs in, to start before the VMM
    /// (QEMU's vhost-device-vsock). None: the VMM is the device itself.
    fn vsock_helper(&self, _vm: &Vm, _paths: &VmPaths, _opts: &LaunchOptions) -> Option<Helper> {
        None
    }
    /// Why the running `vm` cannot be snapshotted (a device its VMM cannot
    /// save); None: it can.
    fn snapshot_blocker(&self, _vm: &Vm) -> Option<String> {
        None
    }
    /// `vm debug`: the arguments of a fresh launch, without side effects.
    fn debug_args(&self, vm: &Vm, paths: &VmPaths, opts: &LaunchOptions) -> Vec<String>;
    /// Files a start writes for the VMM to read (path, content), which
    /// `vm debug` prints before the launch.
    fn debug_files(
        &self,
        _vm: &Vm,
        _paths: &VmPaths,
        _opts: &LaunchOptions,
    ) -> Vec<(PathBuf, String)> {
        Vec::new()
    }
    /// Whether the guest's serial port is the VMM's stdin/stdout.
    fn serial_on_stdin(&self, vm: &Vm) -> bool;
    /// Boots (or restores) the launched VMM's guest; returns the ports for
    /// the console relay. The error is the reason, for the boot error.
    fn boot<'a>(
        &'a self,
        request: BootRequest<'a>,
    ) -> LocalFuture<'a, Result<Vec<RelayPort>, String>>;
    /// `vm debug`: the API calls a fresh boot makes (method, path, body).
    fn boot_calls(&self, vm: &Vm, opts: &LaunchOptions)
    -> Vec<(String, String, serde_json::Value)>;

    // --- stop ---
    /// How long the graceful step may take: the guest's shutdown, or only
    /// the VMM's exit when the VMM stops the guest at once.
    fn graceful_wait(&self, direct_boot: bool, guest_wait: Duration, term: Duration) -> Duration;
    /// The graceful step: a request errors are ignored for (the caller escalates).
    fn graceful_stop(&self, socket: PathBuf, direct_boot: bool) -> LocalFuture<'static, ()>;

    // --- pause, resume, snapshot ---
    /// Pausing a paused VM is success.
    fn pause<'a>(
        &self,
        socket: &'a Path,
    ) -> LocalFuture<'a, std::result::Result<Transition, ApiError>>;
    /// Resuming a running VM is success.
    fn resume<'a>(
        &self,
        socket: &'a Path,
    ) -> LocalFuture<'a, std::result::Result<Transition, ApiError>>;
    /// Writes the paused VM's state into `dir`.
    fn snapshot<'a>(
        &self,
        socket: &'a Path,
        dir: &'a Path,
        memory: u64,
    ) -> LocalFuture<'a, std::result::Result<(), ApiError>>;
    /// Whether the VMM writes a snapshot's state in the VM's run directory
    /// (it may be confined there), for the engine to move into the snapshot.
    fn snapshots_in_run_dir(&self) -> bool;
    /// Whether a snapshot file is VMM state (not a disk copy).
    fn is_state_file(&self, name: &str) -> bool;
    /// Whether a snapshot file is guest memory (hard-linked, never copied twice).
    fn is_memory_file(&self, name: &str) -> bool;
    /// The state files every snapshot of this VMM has.
    fn required_state_files(&self) -> &'static [&'static str];
    /// Checks the VMM's own state files of a snapshot (opened beneath the
    /// snapshot directory `dir`) against what this engine would write.
    fn check_state(&self, dir: &OwnedFd, manifest: &Manifest) -> std::result::Result<(), String>;

    // --- hot-plug (`vm disk attach`/`detach`) ---
    /// Slots a new VM gets for disks attached while it runs, where the VMM
    /// needs them made at launch (recorded as the VM's `hotplug_slots`).
    fn hotplug_slots(&self) -> u32 {
        0
    }
    /// Why a clone cannot get new data disks (`vm clone --data-disk`):
    /// what the VMM lacks and what to do instead (None: its restore adds
    /// the disks the VM has beyond its snapshot's).
    fn clone_data_disk_refusal(&self) -> Option<&'static str>;
    /// Why no disk can be attached to or detached from the running `vm`:
    /// what the VMM lacks and what to do instead (None: it can).
    fn disk_hot_plug_refusal(&self, vm: &Vm) -> Option<String>;
    /// Adds `disk`, an attached disk of `vm` (its device id
    /// [`StorageConfig::device_id`]), to the running VMM; returns the slot
    /// it took where the VMM has slots. The error is the reason.
    fn attach_disk<'a>(
        &'a self,
        vm: &'a Vm,
        socket: &'a Path,
        disk: &'a StorageConfig,
    ) -> LocalFuture<'a, Result<Option<u32>, String>>;
    /// Removes the attached disk device `id` from the running VMM; one it
    /// does not have is success (a crash may have removed it already).
    fn detach_disk<'a>(
        &'a self,
        socket: &'a Path,
        id: &'a str,
    ) -> LocalFuture<'a, Result<(), String>>;
    /// The device ids of the attached disks the running VMM has.
    fn attached_disk_ids<'a>(
        &'a self,
        socket: &'a Path,
    ) -> LocalFuture<'a, Result<Vec<String>, String>>;

    /// Why NICs cannot be added to or removed from the running `vm` (`vm
    /// net`): what the VMM lacks and what to do instead (None: it can).
    fn nic_hot_plug_refusal(&self, vm: &Vm) -> Option<String>;
    /// Adds `nic` (its TAP made, its MAC the guest's), the next NIC of
    /// `vm`, to the running VMM; returns the slot it took where the VMM has
    /// slots. The error is the reason.
    fn attach_nic<'a>(
        &'a self,
        _vm: &'a Vm,
        _socket: &'a Path,
        _nic: &'a NetworkConfig,
    ) -> LocalFuture<'a, Result<Option<u32>, String>> {
        Box::pin(async { Err("this VMM cannot hot-plug NICs".to_string()) })
    }
    /// Why NIC `index` (`nic`) of the running `vm` cannot be taken out
    /// (None: it can).
    fn nic_removal_refusal(&self, _vm: &Vm, _index: usize, _nic: &NetworkConfig) -> Option<String> {
        None
    }
    /// Removes the NIC with MAC `mac` from the running VMM; one it does not
    /// have is success (a crash may have removed it already).
    fn detach_nic<'a>(
        &'a self,
        _socket: &'a Path,
        _mac: &'a str,
    ) -> LocalFuture<'a, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
    /// The MACs of the NICs the running VMM has.
    fn nic_macs<'a>(&'a self, _socket: &'a Path) -> LocalFuture<'a, Result<Vec<String>, String>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    // --- hot-plug (`vm fs attach`/`detach`) ---
    /// Why no virtio-fs share can be attached to or detached from the
    /// running `vm`: what the VMM (or the VM) lacks and what to do instead.
    fn fs_hot_plug_refusal(&self, vm: &Vm) -> Option<String>;
    /// Adds the share `fs` (its device id [`FsConfig::device_id`]) to the
    /// running VMM; returns the slot it took where the VMM has slots.
    fn attach_fs<'a>(
        &'a self,
        vm: &'a Vm,
        socket: &'a Path,
        fs: &'a FsConfig,
    ) -> LocalFuture<'a, Result<Option<u32>, String>>;
    /// Removes the share device `id`; one the VMM does not have is success.
    fn detach_fs<'a>(
        &'a self,
        socket: &'a Path,
        id: &'a str,
    ) -> LocalFuture<'a, Result<(), String>>;

    // --- hot-plug (`vm device attach`/`detach`) ---
    /// Why no host PCI device can be passed through to the running `vm`.
    fn device_hot_plug_refusal(&self, vm: &Vm) -> Option<String>;
    /// Passes `device` (its sysfs directory `sysfs`) through to the running
    /// VMM; returns the slot it took where the VMM has slots.
    fn attach_device<'a>(
        &'a self,
        vm: &'a Vm,
        socket: &'a Path,
        device: &'a PciDevice,
        sysfs: &'a Path,
    ) -> LocalFuture<'a, Result<Option<u32>, String>>;
    /// Removes the device `id`; one the VMM does not have is success.
    fn detach_device<'a>(
        &'a self,
        socket: &'a Path,
        id: &'a str,
    ) -> LocalFuture<'a, Result<(), String>>;

    // --- clone and restore ---
    /// Whether a restore mode is the backend's; Ok(true) to restore on demand.
    fn on_demand(&self, mode: RestoreMode) -> Result<bool>;
    /// Whether a clone or restore may change CPUs, memory or the NIC count.
    fn resizes_on_restore(&self) -> bool;
    /// Whether the VMM reopens the source VM's disk paths from its state
    /// (FC's vmstate): a clone's disks then record those paths
    /// (`vmm_path`), where its jail shows them.
    fn reopens_source_disks(&self) -> bool;
    /// Rewrites the state files copied into `vm`'s run directory for `vm`.
    fn patch_clone(&self, vm: &Vm, snapshot: &str) -> Result<()>;
    /// The directory a restore of `vm` from `snapshot` loads, staged and
    /// patched where the VMM needs it.
    fn stage_restore(&self, vm: &Vm, snapshot: &Snapshot, manifest: &Manifest) -> Result<PathBuf>;
    /// Drops what `stage_restore` made, once the VMM has loaded it.
    fn drop_staged_restore(&self, source: &Path, on_demand: bool);

    // --- resize ---
    /// `vm resize` of the running VM behind `socket`: CPUs and memory to
    /// the request's absolute targets, or the reason it cannot.
    fn resize<'a>(
        &self,
        socket: &'a Path,
        request: resize::ResizeRequest,
    ) -> LocalFuture<'a, std::result::Result<resize::Resized, resize::ResizeError>>;
}

/// The backend of a VMM kind: the only match on it.
pub fn of(kind: Hypervisor) -> &'static dyn Backend {
    match kind {
        Hypervisor::CloudHypervisor => &ch::CloudHypervisorBackend,
        Hypervisor::Firecracker => &fc::FirecrackerBackend,
        Hypervisor::Qemu => &qemu::QemuBackend,
    }
}

/// The backend a VM gets unless told otherwise: Cloud Hypervisor.
pub fn default() -> &'static dyn Backend {
    of(Hypervisor::CloudHypervisor)
}

/// The backend of a new VM the configuration picks: `default_hypervisor`,
/// else Firecracker under `use_firecracker` (cocoon's key), else the first
/// of Cloud Hypervisor, Firecracker and QEMU whose binary is installed
/// (the default when none is: its error then says what to install).
pub fn configured(config: &Config) -> Hypervisor {
    if let Some(chosen) = config.default_hypervisor {
        return chosen;
    }
    if config.use_firecracker {
        return Hypervisor::Firecracker;
    }
    Hypervisor::ALL
        .into_iter()
        .find(|h| {
            let binary = of(*h).binary(config);
            crate::process::find_program(&binary.to_string_lossy()).is_ok()
        })
        .unwrap_or(default().kind())
}

/// The backend a VMM's name (`cloud-hypervisor`, `firecracker`) names.
pub fn named(name: &str) -> Option<&'static dyn Backend> {
    Hypervisor::ALL
        .into_iter()
        .find(|h| h.as_str() == name)
        .map(of)
}

#[derive(Debug, thiserror::Error)]
pub enum PauseError<E: std::error::Error + 'static> {
    #[error("cannot pause the VM: {0}")]
    Pause(#[source] ApiError),
    /// The work failed; the VM was resumed.
    #[error(transparent)]
    Work(E),
    /// The VM could not be resumed: it stays paused until someone resumes it.
    #[error("the VM could not be resumed and is still paused ({resume}); {}", .work.as_ref().map_or(String::new(), |w| format!("the operation had failed too: {w}")))]
    Resume { resume: ApiError, work: Option<E> },
}

/// Pauses the VM, runs `work`, and resumes it whatever `work` returned. A
/// VM that was already paused (left so by a command that died) is handled
/// like a running one: this is what un-wedges it. The caller must let the
/// future finish (no cancellation in the middle), and records an intent so
/// a crash inside the window is resumed by crash recovery.
pub async fn while_paused<T, E, F, Fut>(
    backend: &dyn Backend,
    socket: &Path,
    work: F,
) -> std::result::Result<T, PauseError<E>>
where
    E: std::error::Error + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = std::result::Result<T, E>>,
{
    backend.pause(socket).await.map_err(PauseError::Pause)?;
    let result = work().await;
    match (backend.resume(socket).await, result) {
        (Ok(_), Ok(value)) => Ok(value),
        (Ok(_), Err(e)) => Err(PauseError::Work(e)),
        (Err(resume), result) => Err(PauseError::Resume {
            resume,
            work: result.err(),
        }),
    }
}

/// Pauses the VM and runs `work`; resumes it only if `work` failed, so on
/// success the guest stays frozen at what `work` captured (`vm hibernate`
/// kills it there). The same rules as [`while_paused`] otherwise.
pub async fn paused_unless_failed<T, E, F, Fut>(
    backend: &dyn Backend,
    socket: &Path,
    work: F,
) -> std::result::Result<T, PauseError<E>>
where
    E: std::error::Error + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = std::result::Result<T, E>>,
{
    backend.pause(socket).await.map_err(PauseError::Pause)?;
    match work().await {
        Ok(value) => Ok(value),
        Err(e) => match backend.resume(socket).await {
            Ok(_) => Err(PauseError::Work(e)),
            Err(resume) => Err(PauseError::Resume {
                resume,
                work: Some(e),
            }),
        },
    }
}

/// Whether the VM boots its kernel directly (not through UEFI firmware).
pub fn direct_boot(vm: &Vm) -> bool {
    vm.boot_config
        .as_ref()
        .is_some_and(|b| b.kernel_path.is_some())
}

/// Opens a terminal without making it our controlling terminal.
pub(crate) fn open_tty(path: &Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    Ok(std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)?
        .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_backend_by_kind_and_by_name() {
        for kind in [Hypervisor::CloudHypervisor, Hypervisor::Firecracker] {
            assert_eq!(of(kind).kind(), kind);
            assert_eq!(named(kind.as_str()).map(|b| b.kind()), Some(kind));
        }
        assert!(named("qemu-kvm").is_none());
    }

    #[test]
    fn restore_modes_are_the_backends_own() {
        let ch = of(Hypervisor::CloudHypervisor);
        let fc = of(Hypervisor::Firecracker);
        assert!(!ch.on_demand(RestoreMode::Default).unwrap());
        assert!(!ch.on_demand(RestoreMode::Copy).unwrap());
        assert!(ch.on_demand(RestoreMode::OnDemand).unwrap());
        assert!(ch.on_demand(RestoreMode::Mmap).is_err());
        assert!(!fc.on_demand(RestoreMode::Mmap).unwrap());
        assert!(!fc.on_demand(RestoreMode::Default).unwrap());
        assert!(fc.on_demand(RestoreMode::Copy).is_err());
        assert!(fc.on_demand(RestoreMode::OnDemand).is_err());
    }
}
