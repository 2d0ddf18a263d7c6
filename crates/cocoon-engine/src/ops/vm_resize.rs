//! `vm resize VM [--cpu N] [--memory SIZE]` (not upstream; cocoon #8).
//!
//! A running VM is resized by its VMM ([`crate::backend::resize`]) and the
//! record follows, so `vm inspect` shows the new size and the next boot
//! has it; snapshots and clones take the size the VMM has. A stopped (or
//! created, or failed) VM has only its record changed: it boots at the new
//! size, with no hot-plug limits but the host's. A hibernated VM is refused:
//! its guest sleeps in a snapshot of the old size.
//!
//! Steps of a running resize: intent (the target) → the VMM call → the
//! record (and the cgroup's CPU cap). A crash between the call and the
//! record is converged by [`recover`]: the target is asked again (absolute
//! targets are idempotent) and recorded once the VMM took it.

use std::path::Path;

use crate::backend::{self, resize::ResizeError, resize::ResizeRequest};
use crate::context::Ctx;
use crate::error::Result;
use crate::intent::Op;
use crate::model::{Vm, VmState, VmmProcess};
use crate::spec::{self, SpecError};
use crate::vm::VmError;

/// What `vm resize` asks: absolute targets, at least one of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmResize {
    pub cpu: Option<u32>,
    pub memory: Option<u64>,
}

impl VmResize {
    /// Checks the targets as `vm create` checks its flags.
    fn validate(&self) -> Result<()> {
        if let Some(cpu) = self.cpu {
            spec::validate_cpu(cpu, spec::host_cpus())?;
        }
        if let Some(memory) = self.memory.filter(|m| *m < spec::MIN_MEMORY) {
            return Err(SpecError::MemoryTooSmall(memory).into());
        }
        Ok(())
    }

    fn target(&self, vm: &Vm) -> (u32, u64) {
        (
            self.cpu.unwrap_or(vm.config.cpu),
            self.memory.unwrap_or(vm.config.memory),
        )
    }
}

fn describe(cpu: u32, memory: u64) -> String {
    format!("{cpu} vCPUs and {} MiB", memory >> 20)
}

pub(crate) fn run(ctx: &mut Ctx, reference: &str, request: VmResize) -> Result<Vm> {
    request.validate()?;
    let (_lock, vm) = ctx.lock_resolved_vm(reference)?;
    if let Some(vmm) = vm.vmm.clone().filter(crate::supervise::is_running) {
        return running(ctx, &vm, &vmm, request);
    }
    let hint = match vm.state {
        VmState::Stopped | VmState::Created | VmState::Error | VmState::Running => None,
        VmState::Hibernated => Some(format!(
            "its guest sleeps in a snapshot of {}; wake it with `cocoon vm start {}` and resize it then",
            describe(vm.config.cpu, vm.config.memory),
            vm.config.name
        )),
        VmState::Creating => Some("it is still being created; try again once it is".into()),
    };
    if let Some(hint) = hint {
        return Err(VmError::NotResizable {
            id: vm.id.clone(),
            name: vm.config.name.clone(),
            state: vm.state.as_str(),
            hint,
        }
        .into());
    }
    let (cpu, memory) = request.target(&vm);
    record(ctx, &vm.id, cpu, memory, None)
}

/// The VMM first, then the record, under an intent.
fn running(ctx: &mut Ctx, vm: &Vm, vmm: &VmmProcess, request: VmResize) -> Result<Vm> {
    let (cpu, memory) = request.target(vm);
    let op = Op::VmResize {
        api_socket: vmm.api_socket.clone(),
        cpu,
        memory,
    };
    ctx.with_intent(&op, &vm.id, |ctx, _intent| {
        crate::failpoint::hit("vm.resize.begin")?;
        let ram = apply(ctx, vm, &vmm.api_socket, request)?;
        // The VMM took it: the record follows whatever fails from here.
        let failed = crate::failpoint::hit("vm.resize.applied");
        let vm = record(ctx, &vm.id, cpu, memory, Some(ram))?;
        recap(ctx, &vm);
        failed.map(|()| vm)
    })
}

/// Asks the VMM; returns the RAM it has after.
fn apply(ctx: &mut Ctx, vm: &Vm, socket: &Path, request: VmResize) -> Result<u64> {
    let backend = backend::of(vm.hypervisor);
    let ask = ResizeRequest {
        cpu: request.cpu,
        memory: request.memory,
        current_cpu: vm.config.cpu,
        ram: vm.vmm_config().memory,
        balloon: backend::launch::balloon(&vm.vmm_config()).is_some(),
    };
    let (cpu, memory) = request.target(vm);
    let answer = ctx.block_on(async |_| Ok(backend.resize(socket, ask).await))?;
    let target = describe(cpu, memory);
    let error = match answer {
        Ok(resized) => return Ok(resized.ram),
        Err(ResizeError::Refused(reason)) => VmError::ResizeRefused {
            id: vm.id.clone(),
            name: vm.config.name.clone(),
            target,
            reason,
        },
        Err(ResizeError::Api(source)) => VmError::ResizeFailed {
            id: vm.id.clone(),
            name: vm.config.name.clone(),
            target,
            current: describe(vm.config.cpu, vm.config.memory),
            source: Box::new(source),
        },
    };
    Err(error.into())
}

/// Records the new size; `ram`: the RAM the running VMM has (the balloon
/// holds the guest below it when it is more).
fn record(ctx: &mut Ctx, id: &str, cpu: u32, memory: u64, ram: Option<u64>) -> Result<Vm> {
    let (vm, _) = ctx.store().update_vm(id, "resized", |v| {
        v.config.cpu = cpu;
        v.config.memory = memory;
        v.vmm_memory = ram.filter(|r| *r != memory);
    })?;
    Ok(vm)
}

/// The VM's cgroup caps its CPU at its vCPU count unless it asked for a
/// quota: the cap follows the new count.
fn recap(ctx: &mut Ctx, vm: &Vm) {
    if let Err(e) = super::vm_cgroup::recap(ctx, vm) {
        tracing::warn!(
            "VM {}: cannot move its CPU cap to {} vCPUs: {e}",
            vm.id,
            vm.config.cpu
        );
    }
}

/// A resize whose owner died: the VMM may or may not have taken the
/// target. If it still runs, the target is asked again and recorded; if
/// the VMM refuses or is gone, the record stays as it was.
pub(crate) fn recover(
    ctx: &mut Ctx,
    id: &str,
    api_socket: &Path,
    cpu: u32,
    memory: u64,
) -> Result<String> {
    let Ok(vm) = ctx.store().resolve_vm(id) else {
        return Ok("the VM is gone; nothing to converge".into());
    };
    let live = vm
        .vmm
        .clone()
        .filter(|v| v.api_socket == api_socket && crate::supervise::is_running(v));
    if live.is_none() {
        return Ok("its VMM is gone; the record keeps its size".into());
    }
    let request = VmResize {
        cpu: Some(cpu),
        memory: Some(memory),
    };
    match apply(ctx, &vm, api_socket, request) {
        Ok(ram) => {
            let vm = record(ctx, id, cpu, memory, Some(ram))?;
            recap(ctx, &vm);
            Ok(format!("finished the resize to {}", describe(cpu, memory)))
        }
        Err(e) => Ok(format!(
            "the VMM did not take the resize ({e}); the record keeps its size"
        )),
    }
}
