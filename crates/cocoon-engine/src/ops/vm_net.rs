//! `vm net VM --nics N` (upstream #42): grows or shrinks a running VM's
//! NICs. A new NIC is made as create makes one (CNI ADD of `eth<i>` on the
//! VM's network in its namespace, a TAP wired to it; or a TAP on its
//! bridge), plugged into the VMM (CH `vm.add-net`; QEMU a netdev and a
//! `virtio-net-pci` on a hot-plug slot, kept with the NIC), then recorded
//! (its lease, then the VM's `network_configs` and the kernel command line
//! a later boot takes). A
//! removed one goes from the highest index down: out of the VMM, released
//! (CNI DEL, TAP deleted), then forgotten.
//!
//! The intent records the count the VM had and the one asked for; crash
//! recovery makes the VMM and the host agree with the record: a NIC
//! beyond the record is taken out of the VMM and released (a grow rolls
//! back the NIC it was making), and a shrink is finished (rolls forward),
//! so nothing (CNI lease, interface, TAP) is left of a NIC the record does
//! not have.

use std::path::Path;

use serde::Serialize;

use crate::backend;
use crate::context::Ctx;
use crate::error::Result;
use crate::intent::Op;
use crate::lock::VmLock;
use crate::model::{NetworkConfig, Vm, VmmProcess};
use crate::net::resize::{self as nets, MAX_NICS};
use crate::vm::VmError;

/// One NIC `vm net` added or removed, as upstream prints it.
#[derive(Debug, Clone, Serialize)]
pub struct NicChange {
    pub index: usize,
    pub tap: String,
    pub mac: String,
}

/// What `vm net` prints with `-o json`: upstream's `netresize.Result`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NetResize {
    pub before: usize,
    pub after: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<NicChange>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<NicChange>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

pub(crate) fn resize(ctx: &mut Ctx, reference: &str, nics: u32) -> Result<NetResize> {
    let (_lock, vm, vmm) = locked_running(ctx, reference)?;
    let before = vm.network_configs.len();
    let target = nics as usize;
    check_count(&vm, target)?;
    let mut result = NetResize {
        before,
        after: before,
        ..Default::default()
    };
    if target == before {
        return Ok(result);
    }
    let backend = backend::of(vm.hypervisor);
    for index in target..before {
        if let Some(reason) = backend.nic_removal_refusal(&vm, index, &vm.network_configs[index]) {
            return Err(VmError::NicsRefused {
                vm: vm.config.name.clone(),
                reason,
            }
            .into());
        }
    }
    let op = Op::VmNet {
        from: u32::try_from(before).unwrap_or(u32::MAX),
        nics,
    };
    ctx.with_intent(&op, &vm.id, |ctx, _| {
        if target > before {
            for index in before..target {
                result.added.push(grow_one(ctx, &vm, &vmm, index)?);
                result.after = index + 1;
            }
        } else {
            for index in (target..before).rev() {
                let (change, warning) = shrink_one(ctx, &vm, &vmm.api_socket, index)?;
                result.removed.push(change);
                result.warnings.extend(warning);
                result.after = index;
            }
        }
        Ok(result)
    })
}

/// The VM, locked, with its running VMM; refused where its VMM cannot
/// hot-plug NICs.
fn locked_running(ctx: &mut Ctx, reference: &str) -> Result<(VmLock, Vm, VmmProcess)> {
    let (lock, vm) = ctx.lock_resolved_vm(reference)?;
    if let Some(reason) = backend::of(vm.hypervisor).nic_hot_plug_refusal(&vm) {
        return Err(VmError::NicsRefused {
            vm: vm.config.name,
            reason,
        }
        .into());
    }
    let Some(vmm) = vm.vmm.clone().filter(crate::supervise::is_running) else {
        return Err(VmError::NotRunning {
            id: vm.id,
            name: vm.config.name,
        }
        .into());
    };
    Ok((lock, vm, vmm))
}

/// The counts `vm net` can reach from the VM's.
fn check_count(vm: &Vm, target: usize) -> Result<()> {
    let refuse = |reason: String| -> Result<()> {
        Err(VmError::NicsRefused {
            vm: vm.config.name.clone(),
            reason,
        }
        .into())
    };
    if vm.nic_template().is_none() && target > 0 {
        return refuse(
            "it was made without a network (--nics 0), so its VMM runs outside any VM network namespace and a new NIC could not reach it; snapshot it and clone it with the NICs it needs (`cocoon vm clone --nics N`)"
                .to_string(),
        );
    }
    if target > MAX_NICS {
        return refuse(format!(
            "--nics {target} is more than {MAX_NICS}, the most NICs `vm net` gives a VM (its PCI bus is shared with its disks and other devices)"
        ));
    }
    Ok(())
}

fn nic_error(vm: &Vm, what: &'static str, index: usize, nics: usize, reason: String) -> VmError {
    VmError::NicHotPlug {
        vm: vm.config.name.clone(),
        what,
        index,
        nics,
        reason,
    }
}

/// Makes, plugs and records NIC `index`; on failure nothing of it stays.
fn grow_one(ctx: &mut Ctx, vm: &Vm, vmm: &VmmProcess, index: usize) -> Result<NicChange> {
    let current = ctx.store().resolve_vm(&vm.id)?;
    let (config, lease) = nets::add_nic(&ctx.net(), &current, index)
        .map_err(|e| nic_error(vm, "add", index, index, e.to_string()))?;
    let undo_plumbing = |ctx: &mut Ctx| {
        if let Err(e) = nets::remove_nic(&ctx.net(), &current, index, &config, lease.as_ref()) {
            tracing::warn!("VM {}: cannot release eth{index} again: {e}", vm.id);
        }
    };
    if let Err(e) = crate::failpoint::hit("vm.net.add.plumbed") {
        undo_plumbing(ctx);
        return Err(e);
    }
    let backend = backend::of(vm.hypervisor);
    let socket = &vmm.api_socket;
    let plugged =
        ctx.block_on(async |_| Ok(backend.attach_nic(&current, socket, &config).await))?;
    let config = match plugged {
        Ok(slot) => NetworkConfig {
            slot,
            ..config.clone()
        },
        Err(reason) => {
            undo_plumbing(ctx);
            return Err(nic_error(vm, "add", index, index, reason).into());
        }
    };
    let recorded = crate::failpoint::hit("vm.net.add.plugged")
        .and_then(|()| record(ctx, vm, &config, lease.as_ref()));
    if let Err(e) = recorded {
        let _ = ctx.block_on(async |_| Ok(backend.detach_nic(socket, &config.mac).await));
        undo_plumbing(ctx);
        if let Some(lease) = &lease {
            let _ = ctx.store().delete_lease(&vm.id, &lease.if_name);
        }
        return Err(e);
    }
    Ok(NicChange {
        index,
        tap: config.tap,
        mac: config.mac,
    })
}

/// The new NIC's lease, then the NIC in the record (with the kernel
/// command line that names it).
fn record(
    ctx: &mut Ctx,
    vm: &Vm,
    config: &NetworkConfig,
    lease: Option<&crate::model::NetworkLease>,
) -> Result<()> {
    if let Some(lease) = lease {
        ctx.store().put_lease(lease)?;
    }
    let mut updated = ctx.store().resolve_vm(&vm.id)?;
    updated.network_configs.push(config.clone());
    super::new_vm::refresh_cmdline(ctx, &mut updated);
    let cmdline = updated.boot_config.clone();
    ctx.store().update_vm(&vm.id, "NIC added", |v| {
        v.network_configs.push(config.clone());
        v.net_home = None;
        v.boot_config = cmdline;
    })?;
    Ok(())
}

/// Takes NIC `index` (the VM's last) out of the VMM, releases it and
/// forgets it; a release that fails is a warning (the NIC is out of the
/// VM and the record).
fn shrink_one(
    ctx: &mut Ctx,
    vm: &Vm,
    socket: &Path,
    index: usize,
) -> Result<(NicChange, Option<String>)> {
    let current = ctx.store().resolve_vm(&vm.id)?;
    let config = current.network_configs[index].clone();
    let backend = backend::of(vm.hypervisor);
    ctx.block_on(async |_| Ok(backend.detach_nic(socket, &config.mac).await))?
        .map_err(|reason| nic_error(vm, "remove", index, index + 1, reason))?;
    let failed = crate::failpoint::hit("vm.net.remove.unplugged");
    let warning = release_and_forget(ctx, &current, index)?;
    failed?;
    crate::failpoint::hit("vm.net.remove.released")?;
    Ok((
        NicChange {
            index,
            tap: config.tap,
            mac: config.mac,
        },
        warning,
    ))
}

/// Releases NIC `index` of `vm` on the host and forgets it and every NIC
/// after it; the release's failure comes back as a warning.
fn release_and_forget(ctx: &mut Ctx, vm: &Vm, index: usize) -> Result<Option<String>> {
    let config = &vm.network_configs[index];
    let if_name = format!("eth{index}");
    let leases = ctx.store().leases(&vm.id)?;
    let lease = leases.iter().find(|l| l.if_name == if_name);
    let warning = nets::remove_nic(&ctx.net(), vm, index, config, lease)
        .err()
        .map(|e| {
            format!(
                "NIC eth{index} ({}) is out of the VM but its host side could not be released: {e}",
                config.tap
            )
        });
    if let Some(w) = &warning {
        tracing::warn!("VM {}: {w}", vm.id);
    }
    forget_from(ctx, &vm.id, index)?;
    Ok(warning)
}

/// Drops NICs `index..` from the record (the last one's network stays
/// as its `net_home`), then their leases.
fn forget_from(ctx: &mut Ctx, vm_id: &str, index: usize) -> Result<()> {
    let mut updated = ctx.store().resolve_vm(vm_id)?;
    if updated.network_configs.len() > index {
        let home = updated
            .network_configs
            .first()
            .cloned()
            .map(|c| NetworkConfig { network: None, ..c });
        updated.network_configs.truncate(index);
        super::new_vm::refresh_cmdline(ctx, &mut updated);
        let boot = updated.boot_config.clone();
        ctx.store().update_vm(vm_id, "NIC removed", |v| {
            v.network_configs.truncate(index);
            if index == 0 {
                v.net_home = home;
            }
            v.boot_config = boot;
        })?;
    }
    for lease in ctx.store().leases(vm_id)? {
        let beyond = lease
            .if_name
            .strip_prefix("eth")
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|i| i >= index);
        if beyond {
            ctx.store().delete_lease(vm_id, &lease.if_name)?;
        }
    }
    Ok(())
}

/// Crash recovery of `vm net`: a shrink is finished (its NICs out of the
/// VMM, released, forgotten), then every NIC beyond the record is taken
/// out of the VMM and released, so the VMM, the host and the record agree.
pub(crate) fn recover(ctx: &mut Ctx, vm_id: &str, from: u32, nics: u32) -> Result<String> {
    let Some(vm) = ctx.store().get_vm(vm_id)? else {
        return Ok("the VM is gone; nothing to do".into());
    };
    let vmm = vm.vmm.clone().filter(crate::supervise::is_running);
    let backend = backend::of(vm.hypervisor);
    let ns = crate::net::vmm_netns(&vm);
    if nics < from {
        let target = (nics as usize).min(vm.network_configs.len());
        for index in (target..vm.network_configs.len()).rev() {
            if let Some(vmm) = &vmm {
                let mac = vm.network_configs[index].mac.clone();
                ctx.block_on(async |_| Ok(backend.detach_nic(&vmm.api_socket, &mac).await))?
                    .map_err(|reason| crate::Error::Invalid(format!("VM {vm_id}: {reason}")))?;
            }
            release_and_forget(ctx, &vm, index)?;
        }
    }
    let vm = ctx.store().resolve_vm(vm_id)?;
    let keep = vm.network_configs.len();
    if let Some(vmm) = &vmm {
        let recorded: Vec<String> = vm
            .network_configs
            .iter()
            .map(|c| c.mac.to_lowercase())
            .collect();
        let live = ctx
            .block_on(async |_| Ok(backend.nic_macs(&vmm.api_socket).await))?
            .map_err(|reason| crate::Error::Invalid(format!("VM {vm_id}: {reason}")))?;
        for mac in live
            .iter()
            .filter(|m| !recorded.contains(&m.to_lowercase()))
        {
            ctx.block_on(async |_| Ok(backend.detach_nic(&vmm.api_socket, mac).await))?
                .map_err(|reason| crate::Error::Invalid(format!("VM {vm_id}: {reason}")))?;
        }
    }
    let leases = ctx.store().leases(vm_id)?;
    if vm.nic_template().is_some() {
        nets::release_beyond(&ctx.net(), &vm, keep, ns.as_deref(), &leases)
            .map_err(VmError::from)?;
    }
    forget_from(ctx, vm_id, keep)?;
    Ok(format!("the VM has {keep} NIC(s), as its record says"))
}
