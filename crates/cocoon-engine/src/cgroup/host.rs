//! The host's cgroup layout, and the groups cocoon makes in it.
//!
//! A VM's group is `<hierarchy>/<cgroup_parent>/vm-<id>.scope` in every
//! hierarchy it uses (v2: the one unified tree; v1: `cpu`, `cpuacct` when
//! mounted apart, and `cpuset` when the VM or `cgroup_cpus` places CPUs).
//! Paths are built from a validated parent ([`super::parse_parent`]) and a
//! generated id only.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write as _};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{
    CgroupError, Controller, CpuLimits, CpuList, Version, group_name, vm_of_group, writes,
};

/// One mounted hierarchy and the controllers it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub root: PathBuf,
    pub controllers: Vec<Controller>,
}

/// Where this host's CPU controllers are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupHost {
    pub version: Version,
    pub hierarchies: Vec<Hierarchy>,
}

/// A group's `cpu.stat` figures in microseconds (v1's nanoseconds
/// converted); `usage_usec` is v1's `cpuacct.usage` where that is mounted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CpuStat {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_usec: Option<u64>,
    pub nr_periods: u64,
    pub nr_throttled: u64,
    pub throttled_usec: u64,
}

impl CgroupHost {
    /// The layout of this host, from `/proc/self/mounts`; None when no
    /// hierarchy has a CPU controller. Read once per process: a `vm start`
    /// asked three times (the plan, the group, the relay's adoption), each
    /// a read and parse of the whole mount table on the way to the VMM.
    pub fn detect() -> Option<CgroupHost> {
        static HOST: std::sync::OnceLock<Option<CgroupHost>> = std::sync::OnceLock::new();
        HOST.get_or_init(|| {
            let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
            CgroupHost::from_mounts(&mounts, |root| {
                std::fs::read_to_string(root.join("cgroup.controllers")).ok()
            })
        })
        .clone()
    }

    /// The layout the mount table describes. A cgroup2 mount counts only if
    /// its `cgroup.controllers` (read by `controllers_of`) offers `cpu`: on
    /// a hybrid host it usually holds none of them.
    pub fn from_mounts(
        mounts: &str,
        controllers_of: impl Fn(&Path) -> Option<String>,
    ) -> Option<CgroupHost> {
        let mut v1 = Vec::new();
        for line in mounts.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [_, root, fstype, options, ..] = fields[..] else {
                continue;
            };
            let root = PathBuf::from(unescape(root));
            if fstype == "cgroup2" {
                let offered = controllers_of(&root).unwrap_or_default();
                let controllers = controllers_in(offered.split_whitespace());
                if controllers.contains(&Controller::Cpu) {
                    return Some(CgroupHost {
                        version: Version::V2,
                        hierarchies: vec![Hierarchy { root, controllers }],
                    });
                }
            } else if fstype == "cgroup" {
                let controllers = controllers_in(options.split(','));
                if !controllers.is_empty() {
                    v1.push(Hierarchy { root, controllers });
                }
            }
        }
        let host = CgroupHost {
            version: Version::V1,
            hierarchies: v1,
        };
        host.hierarchy(Controller::Cpu).is_some().then_some(host)
    }

    pub fn hierarchy(&self, controller: Controller) -> Option<&Hierarchy> {
        self.hierarchies
            .iter()
            .find(|h| h.controllers.contains(&controller))
    }

    /// The hierarchies a VM's group lives in: the cpu one, a separate
    /// cpuacct one (v1 usage), and the cpuset one when CPUs are placed.
    fn used(&self, placed: bool) -> Vec<&Hierarchy> {
        let mut out: Vec<&Hierarchy> = Vec::new();
        let mut wanted = vec![Controller::Cpu, Controller::Cpuacct];
        if placed {
            wanted.push(Controller::Cpuset);
        }
        for c in wanted {
            if let Some(h) = self.hierarchy(c)
                && !out.iter().any(|o| o.root == h.root)
            {
                out.push(h);
            }
        }
        out
    }

    /// Fails unless every controller `limits` needs is here (a flag is
    /// never silently ignored). `what` names the VM for the error.
    pub fn check(&self, what: &str, limits: &CpuLimits, fenced: bool) -> Result<(), CgroupError> {
        let unavailable = |controller| CgroupError::Unavailable {
            what: what.to_string(),
            controller,
            reason: "not mounted or not enabled".into(),
        };
        if limits.needs_cpu() && self.hierarchy(Controller::Cpu).is_none() {
            return Err(unavailable("cpu"));
        }
        if (limits.cpuset_cpus.is_some() || fenced) && self.hierarchy(Controller::Cpuset).is_none()
        {
            return Err(unavailable("cpuset"));
        }
        Ok(())
    }

    /// Makes (or resets) the VM's group under `parent` with `limits`, the
    /// parent fenced to `fence` first. Nothing joins it yet: see
    /// [`VmGroup::join_files`].
    pub fn prepare(
        &self,
        parent: &Path,
        fence: Option<&CpuList>,
        vm_id: &str,
        limits: &CpuLimits,
    ) -> Result<VmGroup, CgroupError> {
        let placed = limits.cpuset_cpus.is_some() || fence.is_some();
        let mut dirs = Vec::new();
        for h in self.used(placed) {
            let parent_dir = self.ensure_parent(h, parent, fence)?;
            let dir = parent_dir.join(group_name(vm_id));
            let existed = match std::fs::create_dir(&dir) {
                Ok(()) => false,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => true,
                Err(e) => return Err(CgroupError::io("create cgroup", &dir)(e)),
            };
            if h.controllers.contains(&Controller::Cpuset) {
                self.place(&parent_dir, &dir, limits.cpuset_cpus.as_ref())?;
            }
            if existed && h.controllers.contains(&Controller::Cpu) {
                self.reset_cpu(&dir);
            }
            for w in writes(self.version, limits) {
                if h.controllers.contains(&w.controller) && w.controller != Controller::Cpuset {
                    write_file(&dir.join(w.file), &w.value)?;
                }
            }
            dirs.push((h.controllers.clone(), dir));
        }
        Ok(VmGroup {
            version: self.version,
            dirs,
        })
    }

    /// The VM's group in every hierarchy it may be in (for stats, sweeps
    /// and removal), whether it exists or not.
    pub fn group(&self, parent: &Path, vm_id: &str) -> VmGroup {
        VmGroup {
            version: self.version,
            dirs: self
                .hierarchies
                .iter()
                .filter(|h| {
                    [Controller::Cpu, Controller::Cpuset, Controller::Cpuacct]
                        .iter()
                        .any(|c| h.controllers.contains(c))
                })
                .map(|h| {
                    (
                        h.controllers.clone(),
                        h.root.join(parent).join(group_name(vm_id)),
                    )
                })
                .collect(),
        }
    }

    /// The ids of every VM group under `parent`, in any hierarchy.
    pub fn vm_groups(&self, parent: &Path) -> Vec<String> {
        let mut ids = Vec::new();
        for h in &self.hierarchies {
            let Ok(entries) = std::fs::read_dir(h.root.join(parent)) else {
                continue;
            };
            for entry in entries.flatten() {
                if let Some(id) = entry.file_name().to_str().and_then(vm_of_group)
                    && !ids.iter().any(|i| i == id)
                {
                    ids.push(id.to_string());
                }
            }
        }
        ids.sort();
        ids
    }

    /// The parent group in `h`, made level by level if missing; on v2 its
    /// ancestors hand down the controllers, on v1 cpuset each new level
    /// gets its parent's CPUs and memory nodes (an empty cpuset admits no
    /// task). The parent is fenced to `fence` when given.
    fn ensure_parent(
        &self,
        h: &Hierarchy,
        parent: &Path,
        fence: Option<&CpuList>,
    ) -> Result<PathBuf, CgroupError> {
        let cpuset = h.controllers.contains(&Controller::Cpuset);
        let mut dir = h.root.clone();
        for part in parent.components() {
            if self.version == Version::V2 {
                enable_controllers(&dir, &h.controllers)?;
            }
            let above = dir.clone();
            dir.push(part);
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(CgroupError::io("create cgroup", &dir)(e)),
            }
            if cpuset && self.version == Version::V1 {
                inherit_cpuset(&above, &dir)?;
            }
        }
        if self.version == Version::V2 {
            enable_controllers(&dir, &h.controllers)?;
        }
        if cpuset && let Some(fence) = fence {
            let above = dir.parent().unwrap_or(&h.root);
            check_within(self.version, above, fence, "cgroup_cpus")?;
            if read_list(&dir.join("cpuset.cpus")).as_ref() != Some(fence) {
                write_file(&dir.join("cpuset.cpus"), &fence.to_string())?;
            }
        }
        Ok(dir)
    }

    /// A VM's CPUs: the asked list (within the parent's), else on v1 the
    /// parent's (v2 inherits by itself); v1 memory nodes are the parent's.
    fn place(&self, parent: &Path, dir: &Path, cpus: Option<&CpuList>) -> Result<(), CgroupError> {
        if let Some(cpus) = cpus {
            check_within(self.version, parent, cpus, "--cpuset-cpus")?;
            write_file(&dir.join("cpuset.cpus"), &cpus.to_string())?;
        }
        if self.version == Version::V1 {
            inherit_cpuset(parent, dir)?;
        }
        Ok(())
    }

    /// A reused group (a crash left it) back at the kernel's defaults, so
    /// no setting of an earlier run outlives it. The burst goes first: the
    /// kernel refuses a quota below it.
    fn reset_cpu(&self, dir: &Path) {
        let defaults: &[(&str, &str)] = match self.version {
            Version::V2 => &[
                ("cpu.max.burst", "0"),
                ("cpu.max", "max 100000"),
                ("cpu.weight", "100"),
            ],
            Version::V1 => &[
                ("cpu.cfs_burst_us", "0"),
                ("cpu.cfs_quota_us", "-1"),
                ("cpu.cfs_period_us", "100000"),
                ("cpu.shares", "1024"),
            ],
        };
        for (file, value) in defaults {
            let _ = write_file(&dir.join(file), value);
        }
    }
}

/// A VM's group, in each hierarchy it uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmGroup {
    pub version: Version,
    pub dirs: Vec<(Vec<Controller>, PathBuf)>,
}

impl VmGroup {
    /// The group's directory in the hierarchy carrying `controller`.
    pub fn dir(&self, controller: Controller) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(c, _)| c.contains(&controller))
            .map(|(_, d)| d.as_path())
    }

    /// `cgroup.procs` of each of its directories, open for writing: a
    /// launched process is moved in through them (see [`crate::supervise`]).
    pub fn join_files(&self) -> Result<Vec<OwnedFd>, CgroupError> {
        self.dirs
            .iter()
            .map(|(_, dir)| {
                let path = dir.join("cgroup.procs");
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map(OwnedFd::from)
                    .map_err(CgroupError::io("open", path))
            })
            .collect()
    }

    /// Moves a running process in (the console relay, which cocoon itself
    /// spawns after the VMM).
    pub fn adopt(&self, pid: u32) -> Result<(), CgroupError> {
        for (_, dir) in &self.dirs {
            write_file(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The processes in its cpu group.
    pub fn pids(&self) -> Vec<u32> {
        let Some(dir) = self.dir(Controller::Cpu) else {
            return Vec::new();
        };
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    pub fn exists(&self) -> bool {
        self.dirs.iter().any(|(_, d)| d.is_dir())
    }

    /// One control file's text, trimmed.
    /// Writes the quota (and period) of `limits` into the group, the rest
    /// untouched: the cap a restore's memory load ran without.
    pub fn set_quota(&self, limits: &CpuLimits) -> Result<(), CgroupError> {
        let quota = CpuLimits {
            cpu_quota_us: limits.cpu_quota_us,
            cpu_period_us: limits.cpu_period_us,
            ..CpuLimits::default()
        };
        for w in writes(self.version, &quota) {
            if let Some(dir) = self.dir(w.controller) {
                write_file(&dir.join(w.file), &w.value)?;
            }
        }
        Ok(())
    }

    pub fn read(&self, controller: Controller, file: &str) -> Option<String> {
        let dir = self.dir(controller)?;
        crate::process::read_small(dir.join(file))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// Its CPU figures; None when the group is not there.
    pub fn stat(&self) -> Option<CpuStat> {
        let text = self.read(Controller::Cpu, "cpu.stat")?;
        let field = |name: &str| {
            text.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == name).then(|| v.trim().parse::<u64>().ok())?
            })
        };
        Some(match self.version {
            Version::V2 => CpuStat {
                usage_usec: field("usage_usec"),
                nr_periods: field("nr_periods").unwrap_or(0),
                nr_throttled: field("nr_throttled").unwrap_or(0),
                throttled_usec: field("throttled_usec").unwrap_or(0),
            },
            Version::V1 => CpuStat {
                usage_usec: self
                    .read(Controller::Cpuacct, "cpuacct.usage")
                    .and_then(|s| s.parse::<u64>().ok())
                    .map(|ns| ns / 1000),
                nr_periods: field("nr_periods").unwrap_or(0),
                nr_throttled: field("nr_throttled").unwrap_or(0),
                throttled_usec: field("throttled_time").unwrap_or(0) / 1000,
            },
        })
    }

    /// Removes it if empty; an occupied or missing group is left as is.
    /// Returns whether anything was removed.
    pub fn remove_if_empty(&self) -> bool {
        let mut removed = false;
        for (_, dir) in &self.dirs {
            removed |= std::fs::remove_dir(dir).is_ok();
        }
        removed
    }

    /// Removes it once the VM's processes are gone: their exit takes a
    /// moment to leave the group, so a busy group is retried for a second;
    /// what still lingers then (a VMM's own child) is killed first.
    pub fn remove(&self) -> Result<(), CgroupError> {
        for (_, dir) in &self.dirs {
            if !remove_dir_waiting(dir, Duration::from_secs(1)) {
                kill_members(dir);
                if !remove_dir_waiting(dir, Duration::from_secs(2)) {
                    return Err(CgroupError::io("remove cgroup", dir)(std::io::Error::from(
                        ErrorKind::ResourceBusy,
                    )));
                }
            }
        }
        Ok(())
    }
}

fn remove_dir_waiting(dir: &Path, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return true,
            Err(e) if e.kind() == ErrorKind::NotFound => return true,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => return false,
        }
    }
}

/// SIGKILL to what is left in a VM's group: only ever processes the VM's
/// VMM started, since nothing else joins it.
fn kill_members(dir: &Path) {
    let text = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

fn controllers_in<'a>(names: impl Iterator<Item = &'a str>) -> Vec<Controller> {
    let mut out = Vec::new();
    for name in names {
        let c = match name {
            "cpu" => Controller::Cpu,
            "cpuset" => Controller::Cpuset,
            "cpuacct" => Controller::Cpuacct,
            _ => continue,
        };
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

/// `/proc/mounts` escapes spaces and friends as octal (`\040`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&field[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// v2: `+cpu +cpuset` in `dir`'s `cgroup.subtree_control`, read first (a
/// write takes the kernel's hierarchy-wide lock), missing ones in one write.
fn enable_controllers(dir: &Path, controllers: &[Controller]) -> Result<(), CgroupError> {
    let path = dir.join("cgroup.subtree_control");
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    let missing: Vec<String> = controllers
        .iter()
        .filter(|c| matches!(c, Controller::Cpu | Controller::Cpuset))
        .filter(|c| !have.split_whitespace().any(|h| h == c.name()))
        .map(|c| format!("+{}", c.name()))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    write_file(&path, &missing.join(" "))
}

/// v1 cpuset: an empty `cpuset.cpus` or `cpuset.mems` takes its parent's.
fn inherit_cpuset(parent: &Path, dir: &Path) -> Result<(), CgroupError> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let own = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        if own.trim().is_empty() {
            let from = std::fs::read_to_string(parent.join(file))
                .map_err(CgroupError::io("read", parent.join(file)))?;
            write_file(&dir.join(file), from.trim())?;
        }
    }
    Ok(())
}

/// The CPUs a group may hand down: its effective set.
pub(crate) fn allowed_cpus(version: Version, dir: &Path) -> Option<CpuList> {
    let effective = match version {
        Version::V2 => "cpuset.cpus.effective",
        Version::V1 => "cpuset.effective_cpus",
    };
    read_list(&dir.join(effective)).or_else(|| read_list(&dir.join("cpuset.cpus")))
}

fn check_within(
    version: Version,
    parent: &Path,
    cpus: &CpuList,
    flag: &'static str,
) -> Result<(), CgroupError> {
    let allowed = allowed_cpus(version, parent).unwrap_or_default();
    if cpus.is_subset_of(&allowed) {
        return Ok(());
    }
    Err(CgroupError::CpusOutside {
        flag,
        asked: cpus.to_string(),
        parent: parent.display().to_string(),
        allowed: allowed.to_string(),
    })
}

fn read_list(path: &Path) -> Option<CpuList> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// One write of a control file, which must exist (never created).
fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(CgroupError::io("write", path))
}
