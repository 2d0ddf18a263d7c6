//! The CPU control flags of `vm create/run/clone/restore` (the VM's cgroup).

use clap::Args;
use cocoon_engine::cgroup::{CpuLimits, CpuList};

/// `--cpuset-cpus`: a CPU list, or `auto` (a cache domain of the host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpusetArg {
    Auto,
    List(CpuList),
}

fn parse_cpuset(value: &str) -> Result<CpusetArg, String> {
    if value == "auto" {
        return Ok(CpusetArg::Auto);
    }
    let list: CpuList = value.parse()?;
    if list.is_empty() {
        return Err("expected a CPU list such as 0-3,6, or auto".into());
    }
    Ok(CpusetArg::List(list))
}

#[derive(Debug, Args, Clone, Default)]
pub struct CpuFlags {
    /// cgroup CPU weight, 1-10000 (v1 hosts: the matching cpu.shares)
    #[arg(long, value_name = "N")]
    pub cpu_weight: Option<u32>,
    /// CPU time the VM may use per period, in µs (at least 1000)
    #[arg(long, value_name = "US")]
    pub cpu_quota_us: Option<u64>,
    /// The quota's period in µs, 1000-1000000 [default: 100000]
    #[arg(long, value_name = "US")]
    pub cpu_period_us: Option<u64>,
    /// Unused quota the VM may save up and burst with, in µs (at most the quota)
    #[arg(long, value_name = "US")]
    pub cpu_burst_us: Option<u64>,
    /// Host CPUs the VM runs on: a list (0-3,6) or auto (a cache domain of its own)
    #[arg(long, value_name = "N-M|auto", value_parser = parse_cpuset)]
    pub cpuset_cpus: Option<CpusetArg>,
}

impl CpuFlags {
    pub fn given(&self) -> bool {
        self.cpu_weight.is_some()
            || self.cpu_quota_us.is_some()
            || self.cpu_period_us.is_some()
            || self.cpu_burst_us.is_some()
            || self.cpuset_cpus.is_some()
    }

    /// The limits asked, `auto` resolved by `auto` (the engine's pick).
    pub fn limits(
        &self,
        auto: impl FnOnce() -> cocoon_engine::Result<CpuList>,
    ) -> cocoon_engine::Result<CpuLimits> {
        Ok(CpuLimits {
            cpu_weight: self.cpu_weight,
            cpu_quota_us: self.cpu_quota_us,
            cpu_period_us: self.cpu_period_us,
            cpu_burst_us: self.cpu_burst_us,
            cpuset_cpus: match &self.cpuset_cpus {
                None => None,
                Some(CpusetArg::List(list)) => Some(list.clone()),
                Some(CpusetArg::Auto) => Some(auto()?),
            },
        })
    }
}
