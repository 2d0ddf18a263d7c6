//! A VM's cgroup across its life: made (with its recorded CPU settings)
//! before its VMM starts, removed when it stops, found and removed when a
//! crash left it empty. The steps start, clone, restore, stop and crash
//! recovery share; the cgroup files themselves are [`crate::cgroup`]'s.

use crate::cgroup::{CgroupError, CgroupHost, Controller, CpuLimits, CpuList, CpuStat, VmGroup};
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::model::Vm;
use crate::supervise;

fn error(vm: &Vm, source: CgroupError) -> Error {
    Error::Cgroup {
        vm: format!("{} ({})", vm.config.name, vm.id),
        source,
    }
}

/// Checks what a new VM asks against this host: values in range, the
/// controllers there. No flag is ever dropped silently.
pub(crate) fn check_request(ctx: &Ctx, what: &str, limits: &CpuLimits) -> Result<()> {
    let err = |source| Error::Cgroup {
        vm: what.to_string(),
        source,
    };
    limits.validate().map_err(err)?;
    let fenced = ctx.config().cgroup_cpus.is_some();
    if limits.is_empty() && !fenced {
        return Ok(());
    }
    let Some(host) = CgroupHost::detect() else {
        return Err(err(CgroupError::Unavailable {
            what: what.to_string(),
            controller: "cpu",
            reason: "no cgroup hierarchy carries it".into(),
        }));
    };
    host.check(what, limits, fenced).map_err(err)
}

/// Makes the VM's group before its VMM starts, capped at its vCPU count
/// unless it asked for a quota ([`CpuLimits::capped`]). Without a usable
/// cpu controller a VM that asks for nothing runs ungrouped (said in the
/// debug log); one that asks for something fails.
///
/// `restoring`: the default cap waits for [`arm`] (upstream #186/#187): the
/// snapshot's memory loads with the VM's weight and CPUs but no ceiling,
/// and the cap is written before the guest resumes.
pub(crate) fn prepare(ctx: &Ctx, vm: &Vm, restoring: bool) -> Result<Option<VmGroup>> {
    let limits = &vm.config.resources;
    let fence = ctx.config().cgroup_cpus.as_ref();
    let required = !limits.is_empty() || fence.is_some();
    let what = format!("VM {}", vm.config.name);
    let Some(host) = CgroupHost::detect() else {
        if required {
            check_request(ctx, &what, limits)?;
        }
        tracing::debug!("VM {}: no cgroup cpu controller; running ungrouped", vm.id);
        return Ok(None);
    };
    host.check(&what, limits, fence.is_some())
        .map_err(|e| error(vm, e))?;
    let given = if restoring {
        limits.clone()
    } else {
        limits.capped(vm.config.cpu)
    };
    match host.prepare(&ctx.config().cgroup_parent, fence, &vm.id, &given) {
        Ok(group) => {
            crate::failpoint::hit("vm.cgroup.prepared")?;
            Ok(Some(group))
        }
        Err(e)
            if !required
                && matches!(&e, CgroupError::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied) =>
        {
            tracing::debug!(
                "VM {}: cgroups not writable ({e}); running ungrouped",
                vm.id
            );
            Ok(None)
        }
        Err(e) => Err(error(vm, e)),
    }
}

/// Writes the cap a restore's memory load ran without, before the guest
/// resumes (a VM that asked for a quota had it all along).
pub(crate) fn arm(vm: &Vm, group: Option<&VmGroup>) -> std::result::Result<(), String> {
    let Some(group) = group else {
        return Ok(());
    };
    if vm.config.resources.cpu_quota_us.is_some() {
        return Ok(());
    }
    group
        .set_quota(&vm.config.resources.capped(vm.config.cpu))
        .map_err(|e| format!("cannot cap its CPU before it resumes: {e}"))
}

/// Moves the default cap of a running VM's group to its vCPU count after
/// `vm resize` (a VM that asked for a quota keeps it).
pub(crate) fn recap(ctx: &Ctx, vm: &Vm) -> Result<()> {
    let Some(group) = group(ctx, &vm.id) else {
        return Ok(());
    };
    if vm.config.resources.cpu_quota_us.is_some() {
        return Ok(());
    }
    group
        .set_quota(&vm.config.resources.capped(vm.config.cpu))
        .map_err(|e| error(vm, e))
}

/// Removes the VM's group once its processes are gone (stop, a failed
/// start). A group that is not there is success.
pub(crate) fn remove(ctx: &Ctx, vm: &Vm) -> Result<()> {
    let Some(host) = CgroupHost::detect() else {
        return Ok(());
    };
    let group = host.group(&ctx.config().cgroup_parent, &vm.id);
    if !group.exists() {
        return Ok(());
    }
    group.remove().map_err(|e| error(vm, e))
}

/// The VM's group, if it has one now.
pub(crate) fn group(ctx: &Ctx, vm_id: &str) -> Option<VmGroup> {
    let host = CgroupHost::detect()?;
    let group = host.group(&ctx.config().cgroup_parent, vm_id);
    group.exists().then_some(group)
}

/// The groups of this store's VMs, for reading many of them: the host's
/// layout detected once (a read of the mount table), not per VM.
pub(crate) struct Groups<'a> {
    host: Option<CgroupHost>,
    parent: &'a std::path::Path,
}

impl<'a> Groups<'a> {
    pub(crate) fn detect(ctx: &'a Ctx) -> Groups<'a> {
        Groups {
            host: CgroupHost::detect(),
            parent: &ctx.config().cgroup_parent,
        }
    }

    /// [`stat`] of one VM (None when it has no group: its files are
    /// not there to read).
    pub(crate) fn stat(&self, vm_id: &str) -> Option<CpuStat> {
        self.host.as_ref()?.group(self.parent, vm_id).stat()
    }
}

/// The VM's CPU figures while it has a group.
pub(crate) fn stat(ctx: &Ctx, vm_id: &str) -> Option<CpuStat> {
    group(ctx, vm_id)?.stat()
}

/// The CPU settings its group holds now, as read back from the kernel
/// (`vm inspect`): the quota file, period, weight/shares and CPUs.
pub(crate) fn settings(ctx: &Ctx, vm_id: &str) -> Vec<(String, String)> {
    let Some(group) = group(ctx, vm_id) else {
        return Vec::new();
    };
    let files: &[(Controller, &str)] = match group.version {
        crate::cgroup::Version::V2 => &[
            (Controller::Cpu, "cpu.max"),
            (Controller::Cpu, "cpu.weight"),
            (Controller::Cpu, "cpu.max.burst"),
            (Controller::Cpuset, "cpuset.cpus.effective"),
        ],
        crate::cgroup::Version::V1 => &[
            (Controller::Cpu, "cpu.cfs_quota_us"),
            (Controller::Cpu, "cpu.cfs_period_us"),
            (Controller::Cpu, "cpu.shares"),
            (Controller::Cpu, "cpu.cfs_burst_us"),
            (Controller::Cpuset, "cpuset.cpus"),
        ],
    };
    files
        .iter()
        .filter_map(|(c, f)| group.read(*c, f).map(|v| (f.to_string(), v)))
        .collect()
}

/// Removes the empty groups of this store's VMs whose VMM is gone (a
/// killed VMM, a crashed stop): every command runs it after crash
/// recovery. A VM another command holds (it may be starting, its group
/// made and not yet joined) is left alone, and so is every group this
/// store does not know (another root's VMs may share the parent).
pub(crate) fn sweep(ctx: &mut Ctx) -> Result<Vec<String>> {
    let Some(host) = CgroupHost::detect() else {
        return Ok(Vec::new());
    };
    let parent = ctx.config().cgroup_parent.clone();
    let mut removed = Vec::new();
    for id in host.vm_groups(&parent) {
        // A group with a process in it cannot be removed (rmdir refuses):
        // one read of its members, before the record and the VMM's /proc
        // files (a running VM's group, the usual case, ends here).
        if !host.group(&parent, &id).pids().is_empty() {
            continue;
        }
        // The two fields looked at, not the whole record: every command
        // runs this, for each VM with a group.
        let Ok(Some(vm)) = ctx.store().get_vm_listing(&id) else {
            continue;
        };
        // A VM still being made (a clone holds no VM lock while it builds,
        // its group made and not yet joined) is its operation's, or, once
        // that died, crash recovery's.
        if vm.state == crate::model::VmState::Creating
            || vm.vmm.as_ref().is_some_and(supervise::is_running)
        {
            continue;
        }
        let Ok(_lock) = crate::lock::VmLock::try_acquire(&ctx.config().run_dir, &id) else {
            continue;
        };
        if host.group(&parent, &id).remove_if_empty() {
            removed.push(id);
        }
    }
    Ok(removed)
}

/// The CPU list `--cpuset-cpus auto` gives a new VM: the host's L3 cache
/// domain (within `cgroup_cpus`) that the fewest VMs were given; with one
/// domain, that one (and the log says so).
pub(crate) fn auto_cpus(ctx: &mut Ctx) -> Result<CpuList> {
    let domains =
        crate::cgroup::topology::cache_domains(std::path::Path::new("/sys/devices/system/cpu"));
    let taken: Vec<CpuList> = ctx
        .store()
        .list_vms()?
        .into_iter()
        .filter_map(|vm| vm.config.resources.cpuset_cpus)
        .collect();
    let fence = ctx.config().cgroup_cpus.clone();
    let picked = crate::cgroup::topology::pick_domain(&domains, &taken, fence.as_ref())
        .or(fence)
        .ok_or_else(|| Error::Invalid(
            "--cpuset-cpus auto: this host's CPU cache domains cannot be read from /sys/devices/system/cpu; give a CPU list (e.g. 0-3) instead".into(),
        ))?;
    if domains.len() <= 1 {
        tracing::warn!(
            "--cpuset-cpus auto: this host has one cache domain ({picked}); every VM gets it"
        );
    }
    Ok(picked)
}
