//! Launching a VM's VMM and its console relay, and clearing what a previous
//! run left: the steps `vm start`, `vm clone` and `vm restore` share. What
//! differs per VMM (arguments, boot or restore calls, console ports) is the
//! backend's.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{self, Boot, BootRequest, LaunchOptions};
use crate::console::{self, RelaySpec};
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::layout::VmPaths;
use crate::model::{Vm, VmmProcess};
use crate::process::ProcessIdentity;
use crate::supervise::{self, LaunchSpec, Stdin, StopTimeouts};
use crate::vm::VmError;

/// The console log rotates at this size (one older file is kept).
const CONSOLE_LOG_BYTES: u64 = 4 << 20;
/// The hidden CLI subcommand that runs a console relay.
pub const RELAY_SUBCOMMAND: &str = "console-relay";

/// Launches the VMM, boots the guest and attaches the console relay. On
/// error, whatever was started is left for [`stop_leftovers`] to kill.
pub(crate) async fn launch_and_boot(
    ctx: &mut Ctx,
    vm: &Vm,
    boot: &Boot,
) -> Result<(VmmProcess, Option<ProcessIdentity>)> {
    let backend = backend::of(vm.hypervisor);
    let paths = VmPaths::of(vm);
    let mut opts = LaunchOptions::configured(backend.binary(ctx.config()), ctx.config());
    opts.container = super::vm_query::boots_cocoon_init(ctx, vm);
    let (serial, stdin) = serial_terminal(backend.serial_on_stdin(vm))?;
    let restoring = matches!(boot, Boot::Restore { .. });
    let group = super::vm_cgroup::prepare(ctx, vm, restoring)?;
    let cgroup = join_files(vm, group.as_ref())?;
    let helper = start_vsock_helper(ctx, vm, &paths, &opts, &cgroup).await?;
    let args = backend
        .launch_args(vm, &paths, &opts, restoring)
        .map_err(|e| Error::io(format!("cannot prepare the launch of VM {}", vm.id), e))?;
    let spec = LaunchSpec {
        binary: opts.binary.clone(),
        args: args.into_iter().map(OsString::from).collect(),
        api_socket: paths.api_socket(),
        log_file: paths.vmm_log(),
        stdin,
        netns: crate::net::vmm_netns(vm),
        socket_timeout: Duration::from_secs(ctx.config().socket_wait_timeout_seconds.max(1)),
        jail: backend.jail(vm, &paths, boot, &opts, ctx.config())?,
        cgroup,
    };
    let launch_error = |source| VmError::Launch {
        id: vm.id.clone(),
        name: vm.config.name.clone(),
        source,
    };
    let spawned = supervise::spawn(&spec).map_err(launch_error)?;
    // The relay starts now, beside the VMM, and gets its ports once the VMM
    // has them: its start-up is off the path to the guest's first output.
    let has_serial = serial.is_some();
    let relay = start_relay(ctx, vm, &paths, spawned.identity(), helper.clone(), serial)?;
    let vmm = spawned.ready(&spec).await.map_err(launch_error)?;
    let vsock = backend.has_vsock(vm, &opts).then(|| paths.vsock_socket());
    let launched = Launched {
        vmm: &vmm,
        vsock,
        helper: helper.clone(),
    };
    record_launched(ctx, vm, launched, matches!(boot, Boot::Fresh))?;
    let arm = || super::vm_cgroup::arm(vm, group.as_ref());
    let request = BootRequest {
        vm,
        paths: &paths,
        vmm: &vmm,
        boot,
        opts: &opts,
        timeout: spec.socket_timeout,
        arm: &arm,
    };
    let ports = backend
        .boot(request)
        .await
        .map_err(|reason| VmError::Boot {
            id: vm.id.clone(),
            name: vm.config.name.clone(),
            reason,
            log: read_tail(&paths.vmm_log()),
        })?;
    if ports.is_empty() && !has_serial {
        tracing::warn!(
            "VM {}: the VMM exposes no console terminal; `vm console` and `vm logs` will be empty",
            vm.id
        );
        return Ok((vmm, None));
    }
    crate::failpoint::hit("vm.launch.booted")?;
    let relay = relay
        .hand_over(&ports)
        .map_err(|source| relay_error(vm, source))?;
    adopt_relay(vm, group.as_ref(), &relay)?;
    Ok((vmm, Some(relay)))
}

/// The serial port as the VMM's stdin/stdout, if the backend has it there:
/// a terminal whose master the relay takes over from the start, so no
/// output is ever held back or lost.
fn serial_terminal(on_stdin: bool) -> Result<(Option<console::RelayPort>, Stdin)> {
    if !on_stdin {
        return Ok((None, Stdin::Null));
    }
    let (master, slave) = open_pty()
        .map_err(|e| Error::io("cannot allocate a terminal for the serial console", e))?;
    let port = console::RelayPort {
        name: "serial".into(),
        fd: master,
    };
    Ok((Some(port), Stdin::Terminal(Arc::new(slave))))
}

fn relay_error(vm: &Vm, source: std::io::Error) -> VmError {
    VmError::Relay {
        id: vm.id.clone(),
        name: vm.config.name.clone(),
        source,
    }
}

/// The console relay joins the VM's group as soon as it runs (it is
/// cocoon's own process, started after the VMM).
fn adopt_relay(
    vm: &Vm,
    group: Option<&crate::cgroup::VmGroup>,
    relay: &ProcessIdentity,
) -> Result<()> {
    let Some(group) = group else {
        return Ok(());
    };
    group.adopt(relay.pid).map_err(|source| Error::Cgroup {
        vm: format!("{} ({})", vm.config.name, vm.id),
        source,
    })
}

/// The group's `cgroup.procs` files the VMM and its helper join.
fn join_files(vm: &Vm, group: Option<&crate::cgroup::VmGroup>) -> Result<Vec<Arc<OwnedFd>>> {
    let Some(group) = group else {
        return Ok(Vec::new());
    };
    let files = group.join_files().map_err(|source| Error::Cgroup {
        vm: format!("{} ({})", vm.config.name, vm.id),
        source,
    })?;
    Ok(files.into_iter().map(Arc::new).collect())
}

/// Starts the process the VM's vsock device runs in, if its VMM needs one
/// (QEMU's vhost-device-vsock). Until it is recorded with the VMM, a crash
/// leaves it to be found by its socket (`VmPaths::process_sockets`).
async fn start_vsock_helper(
    ctx: &Ctx,
    vm: &Vm,
    paths: &VmPaths,
    opts: &LaunchOptions,
    cgroup: &[Arc<OwnedFd>],
) -> Result<Option<VmmProcess>> {
    let Some(helper) = backend::of(vm.hypervisor).vsock_helper(vm, paths, opts) else {
        return Ok(None);
    };
    let spec = LaunchSpec {
        binary: helper.binary,
        args: helper.args.into_iter().map(OsString::from).collect(),
        api_socket: helper.socket,
        log_file: paths.vsock_helper_log(),
        stdin: Stdin::Null,
        netns: None,
        socket_timeout: Duration::from_secs(ctx.config().socket_wait_timeout_seconds.max(1)),
        jail: None,
        cgroup: cgroup.to_vec(),
    };
    let process = supervise::launch_listener(&spec)
        .await
        .map_err(|source| VmError::Launch {
            id: vm.id.clone(),
            name: vm.config.name.clone(),
            source,
        })?;
    Ok(Some(process))
}

/// What a launch started: the VMM, its vsock socket (None: no device) and
/// the vsock device's own process.
struct Launched<'a> {
    vmm: &'a VmmProcess,
    vsock: Option<std::path::PathBuf>,
    helper: Option<VmmProcess>,
}

/// Recorded at once: from here on a crash leaves a VMM the record names.
/// A fresh boot sees its disks at their own paths (no `vmm_path`).
fn record_launched(ctx: &mut Ctx, vm: &Vm, launched: Launched<'_>, fresh: bool) -> Result<()> {
    let recorded = launched.vmm.clone();
    ctx.store().update_vm(&vm.id, "launched", |v| {
        v.vmm = Some(recorded.clone());
        v.vmm_memory = None;
        v.pid = recorded.identity.pid;
        v.vsock_socket = launched
            .vsock
            .as_ref()
            .map(|s| s.display().to_string())
            .unwrap_or_default();
        v.vsock_helper = launched.helper.clone();
        // A snapshot never has shares or devices; a fresh boot's are
        // plugged again once it runs (`vm_replug`).
        if !fresh {
            v.filesystems.clear();
            v.pci_devices.clear();
        }
        if fresh {
            for disk in &mut v.storage_configs {
                disk.vmm_path = None;
            }
        }
    })?;
    crate::failpoint::hit("vm.launch.recorded")
}

/// Starts the console relay for the VMM `watch` with the serial terminal
/// (if the VMM has it); the ports the VMM makes itself follow with
/// [`console::PendingRelay::hand_over`] once it has booted.
fn start_relay(
    ctx: &Ctx,
    vm: &Vm,
    paths: &VmPaths,
    watch: ProcessIdentity,
    helper: Option<VmmProcess>,
    serial: Option<console::RelayPort>,
) -> Result<console::PendingRelay> {
    let relay_spec = RelaySpec {
        socket: paths.console_socket(),
        log: paths.console_log(),
        log_max_bytes: CONSOLE_LOG_BYTES,
        ports: serial.into_iter().collect(),
        watch: Some(watch),
        reap: helper,
        more_ports: None,
    };
    Ok(console::spawn_relay_ahead(
        &ctx.helper_exe(),
        &[RELAY_SUBCOMMAND],
        &relay_spec,
        Some(&paths.relay_log()),
    )
    .map_err(|source| relay_error(vm, source))?)
}

/// Kills whatever a previous run of this VM left: its recorded VMM and
/// relay, and any process still naming its sockets (an orphan whose record
/// was lost to a crash). Removes the sockets.
pub(crate) async fn stop_leftovers(ctx: &Ctx, vm: &Vm) -> Result<()> {
    let paths = VmPaths::of(vm);
    let quick = StopTimeouts {
        graceful: Duration::ZERO,
        term: Duration::from_secs(ctx.config().terminate_grace_period_seconds.max(1)),
        kill: Duration::from_secs(5),
    };
    let stop_err = |source| VmError::Stop {
        id: vm.id.clone(),
        name: vm.config.name.clone(),
        source,
    };
    // One pass over /proc for the VMM's, the relay's and the vsock
    // helper's sockets (a pass per socket tripled a cost that grows with
    // the host's processes). Each of them makes its socket as it starts,
    // and a socket goes only with its process (or below, after the kill):
    // with none of them there, no orphan names one, and the pass, which
    // reads every process's command line, is skipped.
    let sockets = paths.process_sockets();
    let named = sockets.iter().any(|s| s.symlink_metadata().is_ok());
    let orphans = if named {
        supervise::find_by_sockets(&sockets)
    } else {
        Vec::new()
    };
    for process in orphans {
        supervise::terminate(&process, None::<fn() -> std::future::Ready<()>>, quick)
            .await
            .map_err(stop_err)?;
    }
    let relay = vm.console_relay.map(|identity| VmmProcess {
        identity,
        api_socket: paths.console_socket(),
    });
    let recorded = vm.vmm.iter().chain(relay.as_ref());
    for process in recorded.chain(vm.vsock_helper.as_ref()) {
        supervise::terminate(process, None::<fn() -> std::future::Ready<()>>, quick)
            .await
            .map_err(stop_err)?;
    }
    for file in paths.runtime_files() {
        let _ = std::fs::remove_file(file);
    }
    super::vm_cgroup::remove(ctx, vm)
}

fn read_tail(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(2048);
    String::from_utf8_lossy(&text[start..]).into_owned()
}

/// A new PTY pair (master, slave), both close-on-exec.
fn open_pty() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    use std::os::unix::ffi::OsStrExt;
    let slave = backend::open_tty(Path::new(std::ffi::OsStr::from_bytes(name.as_bytes())))?;
    // Raw before the VMM sees it, so whatever mode the VMM sets starts from raw.
    console::make_raw(&master)?;
    Ok((master, slave))
}
