//! The cgroup controllers CPU control needs: `cpu` (weights, quotas,
//! `cpu.stat`) and `cpuset` (`--cpuset-cpus`, `cgroup_cpus`), on v2 or v1.
//! Without them VMs still run, ungrouped, and the CPU flags are refused: a
//! warning, a failure only when `cgroup_cpus` fences every VM.

use std::path::Path;

use super::{Check, set_key};
use crate::cgroup::{CgroupHost, Controller, Version};
use crate::config::Config;

const NAME: &str = "cgroups";

pub(super) fn check(config: &Config) -> Check {
    check_host(config, CgroupHost::detect(), |p| {
        rustix::fs::access(p, rustix::fs::Access::WRITE_OK).is_ok()
    })
}

fn check_host(
    config: &Config,
    host: Option<CgroupHost>,
    writable: impl Fn(&Path) -> bool,
) -> Check {
    let fenced = config.cgroup_cpus.is_some();
    let problem = |detail: String, fix: String| {
        if fenced {
            Check::fail(
                NAME,
                format!("{detail}; cgroup_cpus fences every VM, so none can start"),
                fix,
            )
        } else {
            Check::warn(
                NAME,
                format!(
                    "{detail}; VMs run without their own cgroup and --cpu-* / --cpuset-cpus are refused"
                ),
                fix,
            )
        }
    };
    let Some(host) = host else {
        return problem(
            "no cgroup hierarchy carries the cpu controller".into(),
            "mount cgroup2 with cpu enabled in cgroup.subtree_control, or a v1 cpu hierarchy (mount -t cgroup -o cpu cgroup /sys/fs/cgroup/cpu)".into(),
        );
    };
    let mut found = Vec::new();
    for c in [Controller::Cpu, Controller::Cpuset, Controller::Cpuacct] {
        if let Some(h) = host.hierarchy(c) {
            found.push(format!("{} at {}", c.name(), h.root.display()));
        }
    }
    let version = match host.version {
        Version::V1 => "v1",
        Version::V2 => "v2",
    };
    let detail = format!(
        "cgroup {version}: {}; VM groups under {}",
        found.join(", "),
        config.cgroup_parent.display()
    );
    if host.hierarchy(Controller::Cpuset).is_none() {
        return problem(
            format!("{detail}; no cpuset controller"),
            "mount the cpuset controller (v2: +cpuset in cgroup.subtree_control; v1: a cpuset hierarchy)".into(),
        );
    }
    if let Some(h) = host.hierarchies.iter().find(|h| !writable(&h.root)) {
        return problem(
            format!(
                "{detail}; {} is not writable by this user",
                h.root.display()
            ),
            format!(
                "run cocoon as root, or delegate a writable cgroup and {}",
                set_key("cgroup_parent")
            ),
        );
    }
    Check::ok(NAME, detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    const HYBRID: &str = "cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\ncgroup /sys/fs/cgroup/cpuset cgroup rw,cpuset 0 0\n";

    #[test]
    fn missing_or_unwritable_controllers_warn_and_fail_under_a_fence() {
        let config = Config::default();
        let host = CgroupHost::from_mounts(HYBRID, |_| None);
        let ok = check_host(&config, host.clone(), |_| true);
        assert_eq!(ok.status, Status::Ok, "{ok:?}");
        assert!(
            ok.detail.contains("cpu at /sys/fs/cgroup/cpu") && ok.detail.contains("under cocoon")
        );
        let ro = check_host(&config, host.clone(), |_| false);
        assert_eq!(ro.status, Status::Warn);
        assert!(
            ro.detail.contains("not writable") && ro.detail.contains("are refused"),
            "{ro:?}"
        );
        let none = check_host(&config, None, |_| true);
        assert_eq!(none.status, Status::Warn);
        let no_cpuset = CgroupHost::from_mounts("cgroup /c cgroup rw,cpu 0 0\n", |_| None);
        assert!(
            check_host(&config, no_cpuset, |_| true)
                .detail
                .contains("no cpuset")
        );
        let mut fenced = Config::default();
        fenced.cgroup_cpus = Some("0".parse().unwrap());
        assert_eq!(check_host(&fenced, None, |_| true).status, Status::Fail);
    }
}
