//! Per-VM cgroups: one CPU abstraction over cgroup v2 and cgroup v1.
//!
//! Upstream cocoon speaks only cgroup v2; many hosts still run v1 or a
//! hybrid (cgroup2 mounted beside v1 hierarchies that own the CPU
//! controllers). [`CpuLimits`] is what a VM asks for, validated against what
//! the kernel accepts; [`writes`] maps it to the files of either version:
//!
//! | setting | v2              | v1                                   |
//! |---------|-----------------|--------------------------------------|
//! | weight  | `cpu.weight`    | `cpu.shares` (crun's conversion)     |
//! | quota   | `cpu.max`       | `cpu.cfs_quota_us`, `cpu.cfs_period_us` |
//! | burst   | `cpu.max.burst` | `cpu.cfs_burst_us`                   |
//! | cpus    | `cpuset.cpus`   | `cpuset.cpus` (+ `cpuset.mems` from the parent) |
//!
//! [`host`] finds the host's layout and makes, joins and removes groups.

pub mod host;
mod list;
#[cfg(test)]
mod tests;
pub mod topology;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use host::{CgroupHost, CpuStat, Hierarchy, VmGroup};
pub use list::CpuList;

/// The kernel's bounds (kernel/sched/core.c): cpu.weight, the CFS period
/// and the smallest quota.
pub const MIN_WEIGHT: u32 = 1;
pub const MAX_WEIGHT: u32 = 10_000;
pub const MIN_PERIOD_US: u64 = 1_000;
pub const MAX_PERIOD_US: u64 = 1_000_000;
pub const MIN_QUOTA_US: u64 = 1_000;
/// The period a quota without one gets (the kernel's default).
pub const DEFAULT_PERIOD_US: u64 = 100_000;

/// What a VM asks of its cgroup: each `None` leaves the kernel's default.
/// Field names are upstream's (`types.VMConfig`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_quota_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_period_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_burst_us: Option<u64>,
    /// A CPU list (`0-3,6`), resolved: `auto` is turned into a cache
    /// domain's list when the VM is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpuset_cpus: Option<CpuList>,
}

impl CpuLimits {
    /// Nothing asked: the VM's group only accounts (its `cpu.stat`) and
    /// holds the default cap ([`CpuLimits::capped`]).
    pub fn is_empty(&self) -> bool {
        *self == CpuLimits::default()
    }

    /// What the VM's group is given: these limits, and without a quota
    /// upstream's default cap of one host CPU per vCPU (`cpu.max` =
    /// vCPUs x period, upstream #183 "Guaranteed-at-N"): a VM's VMM
    /// threads (I/O, halt polling) cannot take more of the host than its
    /// vCPU count says.
    pub fn capped(&self, vcpus: u32) -> CpuLimits {
        let mut limits = self.clone();
        if limits.cpu_quota_us.is_none() {
            let period = limits.cpu_period_us.unwrap_or(DEFAULT_PERIOD_US);
            limits.cpu_quota_us = Some(u64::from(vcpus.max(1)).saturating_mul(period));
        }
        limits
    }

    /// Whether the cpu controller has anything to do.
    pub fn needs_cpu(&self) -> bool {
        self.cpu_weight.is_some()
            || self.cpu_quota_us.is_some()
            || self.cpu_period_us.is_some()
            || self.cpu_burst_us.is_some()
    }

    /// Checks every value against the kernel's bounds (the flag named in
    /// each error is the one to change).
    pub fn validate(&self) -> Result<(), CgroupError> {
        let bad = |flag: &'static str, value: u64, allowed: String| CgroupError::Invalid {
            flag,
            value: value.to_string(),
            allowed,
        };
        if let Some(w) = self.cpu_weight
            && !(MIN_WEIGHT..=MAX_WEIGHT).contains(&w)
        {
            return Err(bad(
                "--cpu-weight",
                w.into(),
                format!("{MIN_WEIGHT}..={MAX_WEIGHT}"),
            ));
        }
        if let Some(p) = self.cpu_period_us
            && !(MIN_PERIOD_US..=MAX_PERIOD_US).contains(&p)
        {
            return Err(bad(
                "--cpu-period-us",
                p,
                format!("{MIN_PERIOD_US}..={MAX_PERIOD_US} µs"),
            ));
        }
        if let Some(q) = self.cpu_quota_us
            && q < MIN_QUOTA_US
        {
            return Err(bad(
                "--cpu-quota-us",
                q,
                format!("at least {MIN_QUOTA_US} µs"),
            ));
        }
        if let Some(b) = self.cpu_burst_us {
            let Some(q) = self.cpu_quota_us else {
                return Err(CgroupError::BurstWithoutQuota);
            };
            if b > q {
                return Err(bad("--cpu-burst-us", b, format!("0..={q} µs (the quota)")));
            }
        }
        if let Some(cpus) = &self.cpuset_cpus
            && cpus.is_empty()
        {
            return Err(CgroupError::Invalid {
                flag: "--cpuset-cpus",
                value: String::new(),
                allowed: "a non-empty CPU list such as 0-3,6".into(),
            });
        }
        Ok(())
    }
}

/// A controller a setting lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Controller {
    Cpu,
    Cpuset,
    Cpuacct,
}

impl Controller {
    pub fn name(self) -> &'static str {
        match self {
            Controller::Cpu => "cpu",
            Controller::Cpuset => "cpuset",
            Controller::Cpuacct => "cpuacct",
        }
    }
}

/// Which cgroup interface the host's CPU controllers speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    V1,
    V2,
}

/// One control file to write, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub controller: Controller,
    pub file: &'static str,
    pub value: String,
}

fn write(controller: Controller, file: &'static str, value: impl ToString) -> Write {
    Write {
        controller,
        file,
        value: value.to_string(),
    }
}

/// cgroup v1's `cpu.shares` for a v2 weight: the inverse of the conversion
/// runc and crun apply (weight = 1 + (shares - 2) * 9999 / 262142), so the
/// same flag gives the same share of the CPU on either version.
pub fn shares_of_weight(weight: u32) -> u64 {
    2 + ((u64::from(weight.clamp(MIN_WEIGHT, MAX_WEIGHT)) - 1) * 262_142).div_ceil(9_999)
}

/// The control files `limits` becomes on `version`, in the order they must
/// be written (v1: the period before the quota, the quota before the burst).
/// v1 cpuset's `cpuset.mems` is the host's business ([`host`] copies the
/// parent's), not a setting.
pub fn writes(version: Version, limits: &CpuLimits) -> Vec<Write> {
    use Controller::{Cpu, Cpuset};
    let mut out = Vec::new();
    if let Some(cpus) = &limits.cpuset_cpus {
        out.push(write(Cpuset, "cpuset.cpus", cpus));
    }
    match version {
        Version::V2 => {
            if let Some(w) = limits.cpu_weight {
                out.push(write(Cpu, "cpu.weight", w));
            }
            if limits.cpu_quota_us.is_some() || limits.cpu_period_us.is_some() {
                let quota = limits
                    .cpu_quota_us
                    .map_or_else(|| "max".to_string(), |q| q.to_string());
                let period = limits.cpu_period_us.unwrap_or(DEFAULT_PERIOD_US);
                out.push(write(Cpu, "cpu.max", format!("{quota} {period}")));
            }
            if let Some(b) = limits.cpu_burst_us {
                out.push(write(Cpu, "cpu.max.burst", b));
            }
        }
        Version::V1 => {
            if let Some(w) = limits.cpu_weight {
                out.push(write(Cpu, "cpu.shares", shares_of_weight(w)));
            }
            if let Some(p) = limits.cpu_period_us {
                out.push(write(Cpu, "cpu.cfs_period_us", p));
            }
            if let Some(q) = limits.cpu_quota_us {
                out.push(write(Cpu, "cpu.cfs_quota_us", q));
            }
            if let Some(b) = limits.cpu_burst_us {
                out.push(write(Cpu, "cpu.cfs_burst_us", b));
            }
        }
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{flag} {value:?} is out of range: allowed {allowed}")]
    Invalid {
        flag: &'static str,
        value: String,
        allowed: String,
    },
    #[error("--cpu-burst-us needs --cpu-quota-us: a burst is quota saved up")]
    BurstWithoutQuota,
    #[error(
        "cgroup_parent {0:?} is not a relative cgroup path of plain names (letters, digits, . _ -)"
    )]
    BadParent(String),
    #[error(
        "{what} asks for CPU control, but this host has no usable {controller} controller ({reason}); run `cocoon doctor` and mount it (cgroup v2 with {controller} enabled, or a v1 {controller} hierarchy), or drop the flag"
    )]
    Unavailable {
        what: String,
        controller: &'static str,
        reason: String,
    },
    #[error(
        "{flag} {asked} is not within the CPUs {parent} allows ({allowed}); choose CPUs from {allowed}"
    )]
    CpusOutside {
        flag: &'static str,
        asked: String,
        parent: String,
        allowed: String,
    },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl CgroupError {
    /// A value the user gave (exit code 2), not a host failure.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            CgroupError::Invalid { .. }
                | CgroupError::BurstWithoutQuota
                | CgroupError::CpusOutside { .. }
        )
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> CgroupError {
        let path = path.into();
        move |source| CgroupError::Io {
            action,
            path,
            source,
        }
    }
}

/// The name of a VM's group in each hierarchy (upstream's scope name).
pub fn group_name(vm_id: &str) -> String {
    format!("vm-{vm_id}.scope")
}

/// The VM id a group name stands for, if it is one of ours.
pub fn vm_of_group(name: &str) -> Option<&str> {
    let id = name.strip_prefix("vm-")?.strip_suffix(".scope")?;
    crate::id::is_id_prefix(id)
        .then_some(id)
        .filter(|id| id.len() == crate::id::ID_LEN)
}

/// `cgroup_parent`: a relative path of plain names, never `..`, so the
/// groups cocoon makes stay beneath each hierarchy's root.
pub fn parse_parent(value: &str) -> Result<PathBuf, CgroupError> {
    let bad = || CgroupError::BadParent(value.to_string());
    let trimmed = value.trim_matches('/');
    if trimmed.is_empty() {
        return Err(bad());
    }
    for part in trimmed.split('/') {
        let plain = part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if part.is_empty() || part == "." || part == ".." || !plain {
            return Err(bad());
        }
    }
    Ok(PathBuf::from(trimmed))
}
