//! `vm fs attach` / `vm fs detach` (upstream `extend/fs`): a virtio-fs
//! share (vhost-user-fs over a running virtiofsd's socket) into a running
//! VM, tagged for the guest to mount (`mount -t virtiofs <tag> /mnt`), and
//! out again.
//!
//! A share is recorded with the VM (`filesystems`; a snapshot or
//! hibernation refuses while one is there, since virtiofsd cannot hand its
//! state over) and plugged again at `vm start` where its socket is there
//! again (`vm_replug`; upstream keeps it for the VMM's lifetime only). Attach plugs it into the VMM first and
//! records it after; detach unplugs it first and forgets it after. Each
//! records an intent before touching the VMM: crash recovery unplugs a share
//! the record does not have (attach rolls back) and finishes a detach (rolls
//! forward).

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::hot_plugged;
use crate::backend;
use crate::context::Ctx;
use crate::error::Result;
use crate::intent::Op;
use crate::lock::VmLock;
use crate::model::{FsConfig, Vm, VmmProcess, fs_device_id};
use crate::name::FsTag;
use crate::spec::SpecError;
use crate::vm::VmError;

/// Upstream's defaults for `--num-queues 0` and `--queue-size 0`.
pub const DEFAULT_NUM_QUEUES: u32 = 1;
pub const DEFAULT_QUEUE_SIZE: u32 = 1024;

/// `vm fs attach`'s flags (0: the default).
#[derive(Debug, Clone)]
pub struct FsAttach {
    pub socket: PathBuf,
    pub tag: FsTag,
    pub num_queues: u32,
    pub queue_size: u32,
}

/// What `vm fs attach`/`detach` print with `-o json`, as upstream: the VM
/// as given, the tag and (attach) the VMM device id.
#[derive(Debug, Clone, Serialize)]
pub struct FsChange {
    pub vm: String,
    pub tag: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

pub(crate) fn attach(ctx: &mut Ctx, reference: &str, request: &FsAttach) -> Result<FsChange> {
    let (_lock, vm, vmm) = locked_running(ctx, reference, "attach a virtio-fs share to")?;
    let tag = request.tag.as_str();
    if vm.filesystems.iter().any(|f| f.tag == tag) {
        return Err(VmError::FsTaken {
            vm: vm.config.name.clone(),
            tag: tag.to_string(),
        }
        .into());
    }
    let fs = FsConfig {
        tag: tag.to_string(),
        socket: check_socket(ctx, &request.socket)?,
        num_queues: or_default(request.num_queues, DEFAULT_NUM_QUEUES),
        queue_size: queue_size(request.queue_size)?,
        slot: None,
    };
    plug(ctx, &vm, &vmm, fs)?;
    Ok(FsChange {
        vm: reference.to_string(),
        tag: tag.to_string(),
        id: Some(fs_device_id(tag)),
    })
}

/// Plugs `fs` into the running VMM and records it, under an intent (the
/// caller holds the VM's lock).
pub(super) fn plug(ctx: &mut Ctx, vm: &Vm, vmm: &VmmProcess, fs: FsConfig) -> Result<()> {
    let id = fs.device_id();
    let tag = fs.tag.clone();
    let op = Op::VmFsAttach { tag: tag.clone() };
    ctx.with_intent(&op, &vm.id, |ctx, _| {
        let backend = backend::of(vm.hypervisor);
        let plugged =
            ctx.block_on(async |_| Ok(backend.attach_fs(vm, &vmm.api_socket, &fs).await))?;
        let slot = plugged.map_err(|reason| hot_plug_error(vm, "attach", &tag, reason))?;
        let fs = FsConfig { slot, ..fs };
        let recorded = crate::failpoint::hit("vm.fs.attach.plugged").and_then(|()| {
            ctx.store()
                .update_vm(&vm.id, "virtio-fs attached", |v| v.filesystems.push(fs))
                .map(drop)
                .map_err(Into::into)
        });
        if let Err(e) = recorded {
            hot_plugged::unplug(ctx, &KIND, vm, vmm, &id);
            return Err(e);
        }
        Ok(())
    })
}

/// A recorded share again, into the VMM `vm start` just launched: its
/// socket checked again first.
pub(super) fn replug(ctx: &mut Ctx, vm: &Vm, vmm: &VmmProcess, fs: FsConfig) -> Result<()> {
    let socket = check_socket(ctx, &fs.socket)?;
    plug(ctx, vm, vmm, FsConfig { socket, ..fs })
}

pub(crate) fn detach(ctx: &mut Ctx, reference: &str, tag: &FsTag) -> Result<FsChange> {
    let (_lock, vm, vmm) = locked_running(ctx, reference, "detach a virtio-fs share from")?;
    let tag = tag.as_str();
    if !vm.filesystems.iter().any(|f| f.tag == tag) {
        return Err(VmError::NoAttachedFs {
            vm: vm.config.name.clone(),
            tag: tag.to_string(),
        }
        .into());
    }
    let op = Op::VmFsDetach {
        tag: tag.to_string(),
    };
    ctx.with_intent(&op, &vm.id, |ctx, _| {
        let backend = backend::of(vm.hypervisor);
        let id = fs_device_id(tag);
        ctx.block_on(async |_| Ok(backend.detach_fs(&vmm.api_socket, &id).await))?
            .map_err(|reason| hot_plug_error(&vm, "detach", tag, reason))?;
        // The share is out of the VMM: the record forgets it whatever fails.
        let failed = crate::failpoint::hit("vm.fs.detach.unplugged");
        hot_plugged::forget(ctx, &KIND, &vm.id, tag)?;
        failed?;
        Ok(FsChange {
            vm: reference.to_string(),
            tag: tag.to_string(),
            id: None,
        })
    })
}

fn or_default(n: u32, default: u32) -> u32 {
    if n == 0 { default } else { n }
}

/// A virtqueue's size: a power of two up to 32768 (virtio's limit; the
/// VMM would refuse it after connecting to virtiofsd).
fn queue_size(n: u32) -> Result<u32, SpecError> {
    let size = or_default(n, DEFAULT_QUEUE_SIZE);
    if size.is_power_of_two() && size <= 32768 {
        Ok(size)
    } else {
        Err(SpecError::FsQueueSize(n))
    }
}

/// The VM, locked, with its running VMM; refused where its VMM (or the
/// VM's memory) cannot take a share.
fn locked_running(
    ctx: &mut Ctx,
    reference: &str,
    what: &'static str,
) -> Result<(VmLock, Vm, VmmProcess)> {
    hot_plugged::locked_running(ctx, reference, |vm| {
        let reason = backend::of(vm.hypervisor).fs_hot_plug_refusal(vm)?;
        Some(VmError::DeviceRefused {
            vm: vm.config.name.clone(),
            what,
            reason,
        })
    })
}

/// The virtiofsd socket: an absolute path with no symbolic link in it, to
/// a Unix socket outside the engine's own directories.
fn check_socket(ctx: &Ctx, path: &Path) -> Result<PathBuf, SpecError> {
    use std::os::unix::fs::FileTypeExt as _;
    let wanted = super::host_path::Wanted {
        noun: "socket",
        kind: |kind| {
            (!kind.is_socket()).then_some(
                "is not a Unix socket; start virtiofsd (`virtiofsd --socket-path PATH --shared-dir DIR`) and give its --socket-path",
            )
        },
        elsewhere: "put virtiofsd's socket elsewhere",
    };
    super::host_path::check(ctx, path, &wanted)
        .map(|(real, _)| real)
        .map_err(|reason| SpecError::FsSocket {
            path: path.to_path_buf(),
            reason,
        })
}

fn hot_plug_error(vm: &Vm, what: &'static str, tag: &str, reason: String) -> VmError {
    VmError::DeviceHotPlug {
        vm: vm.config.name.clone(),
        what,
        name: format!("virtio-fs share {tag}"),
        reason,
    }
}

/// virtio-fs shares, by tag.
const KIND: hot_plugged::Kind = hot_plugged::Kind {
    label: "virtio-fs share",
    recorded: |vm, tag| vm.filesystems.iter().any(|f| f.tag == tag),
    drop: |vm, tag| vm.filesystems.retain(|f| f.tag != tag),
    device_id: fs_device_id,
    detach: |backend, socket, id| backend.detach_fs(socket, id),
};

/// Crash recovery of the attach (`attach`) or detach of `tag`.
pub(crate) fn recover(ctx: &mut Ctx, vm_id: &str, tag: &str, attach: bool) -> Result<String> {
    hot_plugged::recover(ctx, &KIND, vm_id, tag, attach)
}
