//! The steps `vm create` and `vm clone` share: a new VM's directories, its
//! network, the start record, and the roll back that removes all of it.

use jiff::Timestamp;

use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::lock::create_private_dir;
use crate::model::{NetworkLease, Vm, VmState, VmmProcess};
use crate::net::{self, NetRequest};
use crate::process::ProcessIdentity;
use crate::store::IntentGuard;
use crate::vm::VmError;

/// What a new VM holds of the network, for its roll back.
#[derive(Debug, Default)]
pub(crate) struct Network {
    /// Its NICs were made (and must be released).
    pub attached: bool,
    pub leases: Vec<NetworkLease>,
}

/// Makes the VM's run and log directories, private.
pub(crate) fn make_dirs(vm: &Vm) -> Result<()> {
    for dir in [&vm.run_dir, &vm.log_dir] {
        create_private_dir(dir)
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    }
    Ok(())
}

/// Attaches `nics` NICs (CNI, or TAPs on `bridge`), records their leases,
/// and puts them in the VM's record.
pub(crate) fn attach_network(
    ctx: &mut Ctx,
    vm: &mut Vm,
    nics: u32,
    bridge: Option<&str>,
    network: &mut Network,
) -> Result<()> {
    let attached = net::attach(
        &ctx.net(),
        &NetRequest {
            vm_id: &vm.id,
            nics,
            network: &vm.config.network,
            bridge,
            hypervisor: vm.hypervisor,
            cpu: vm.config.cpu,
            queue_size: vm.config.queue_size,
        },
    )
    .map_err(VmError::from)?;
    network.attached = true;
    vm.config.network = attached.network;
    vm.network_configs = attached.configs;
    for lease in &attached.leases {
        ctx.store().put_lease(lease)?;
    }
    network.leases = attached.leases;
    Ok(())
}

/// A direct-boot VM's command line for its current NICs (UEFI guests take
/// no command line from us).
pub(crate) fn refresh_cmdline(ctx: &Ctx, vm: &mut Vm) {
    let cmdline = super::vm_plan::cmdline_of(ctx, vm);
    if let Some(boot) = vm.boot_config.as_mut().filter(|b| b.kernel_path.is_some()) {
        boot.cmdline = cmdline;
    }
}

/// Removes what a failed create or clone made: its network, directories
/// and record. Best effort: the error being returned is the one that counts.
pub(crate) fn roll_back(ctx: &mut Ctx, vm: &Vm, network: &Network) {
    if network.attached
        && let Err(e) = net::detach(&ctx.net(), vm, &network.leases)
    {
        tracing::warn!("rollback of the network of {}: {e}", vm.id);
    }
    let _ = std::fs::remove_dir_all(&vm.run_dir);
    let _ = std::fs::remove_dir_all(&vm.log_dir);
    let _ = ctx.store().delete_vm(&vm.id);
}

/// Records a VM running under `vmm` after its first boot (or clone).
pub(crate) fn mark_started(
    ctx: &mut Ctx,
    id: &str,
    vmm: VmmProcess,
    relay: Option<ProcessIdentity>,
) -> Result<Vm> {
    let (vm, _) = ctx
        .store()
        .update_vm(id, "started", |v| started(v, vmm, relay))?;
    Ok(vm)
}

/// [`mark_started`] and the end of the start's intent, in one commit.
pub(crate) fn finish_started(
    ctx: &mut Ctx,
    intent: &IntentGuard,
    id: &str,
    vmm: VmmProcess,
    relay: Option<ProcessIdentity>,
) -> Result<Vm> {
    let (vm, _) =
        intent.finish_updating_vm(ctx.store(), id, "started", |v| started(v, vmm, relay))?;
    Ok(vm)
}

fn started(v: &mut Vm, vmm: VmmProcess, relay: Option<ProcessIdentity>) {
    v.state = VmState::Running;
    v.pid = vmm.identity.pid;
    v.socket_path = vmm.api_socket.display().to_string();
    v.vmm = Some(vmm);
    v.vmm_memory = None;
    v.console_relay = relay;
    v.started_at = Some(Timestamp::now());
    v.first_booted = true;
}

/// Records a VM in `state` with no VMM or relay (`action` names the event).
pub(crate) fn settle(ctx: &mut Ctx, id: &str, state: VmState, action: &str) -> Result<Vm> {
    let (vm, _) = ctx.store().update_vm(id, action, |v| {
        v.state = state;
        v.pid = 0;
        v.vmm = None;
        v.console_relay = None;
        v.vsock_socket.clear();
        v.vsock_helper = None;
    })?;
    Ok(vm)
}
