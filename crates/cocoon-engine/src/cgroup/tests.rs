use std::path::{Path, PathBuf};

use super::host::allowed_cpus;
use super::topology::{cache_domains, pick_domain};
use super::*;

fn list(s: &str) -> CpuList {
    s.parse().unwrap()
}

fn limits() -> CpuLimits {
    CpuLimits {
        cpu_weight: Some(200),
        cpu_quota_us: Some(10_000),
        cpu_period_us: Some(100_000),
        cpu_burst_us: Some(5_000),
        cpuset_cpus: Some(list("0-1")),
    }
}

fn files(version: Version, limits: &CpuLimits) -> Vec<(Controller, &'static str, String)> {
    writes(version, limits)
        .into_iter()
        .map(|w| (w.controller, w.file, w.value))
        .collect()
}

#[test]
fn v2_mapping_uses_cpu_max_weight_and_burst() {
    use Controller::*;
    assert_eq!(
        files(Version::V2, &limits()),
        vec![
            (Cpuset, "cpuset.cpus", "0-1".into()),
            (Cpu, "cpu.weight", "200".into()),
            (Cpu, "cpu.max", "10000 100000".into()),
            (Cpu, "cpu.max.burst", "5000".into()),
        ]
    );
    let period_only = CpuLimits {
        cpu_period_us: Some(50_000),
        ..CpuLimits::default()
    };
    assert_eq!(
        files(Version::V2, &period_only),
        vec![(Cpu, "cpu.max", "max 50000".into())]
    );
    let quota_only = CpuLimits {
        cpu_quota_us: Some(20_000),
        ..CpuLimits::default()
    };
    assert_eq!(
        files(Version::V2, &quota_only),
        vec![(Cpu, "cpu.max", "20000 100000".into())]
    );
}

#[test]
fn v1_mapping_writes_the_period_before_the_quota_and_the_burst_last() {
    use Controller::*;
    assert_eq!(
        files(Version::V1, &limits()),
        vec![
            (Cpuset, "cpuset.cpus", "0-1".into()),
            (Cpu, "cpu.shares", shares_of_weight(200).to_string()),
            (Cpu, "cpu.cfs_period_us", "100000".into()),
            (Cpu, "cpu.cfs_quota_us", "10000".into()),
            (Cpu, "cpu.cfs_burst_us", "5000".into()),
        ]
    );
    assert!(files(Version::V1, &CpuLimits::default()).is_empty());
}

#[test]
fn weight_maps_to_shares_as_runc_maps_shares_to_weight() {
    // runc's line is not the kernels' defaults (weight 100, 1024 shares):
    // the same flag must give the same number on either version, so it
    // is followed as it is.
    assert_eq!(shares_of_weight(1), 2);
    assert_eq!(shares_of_weight(10_000), 262_144);
    assert_eq!(shares_of_weight(100), 2_598);
    for weight in [1, 7, 100, 555, 10_000] {
        let back = 1 + (shares_of_weight(weight) - 2) * 9_999 / 262_142;
        assert_eq!(back, u64::from(weight));
    }
}

#[test]
fn values_outside_the_kernels_bounds_name_the_flag() {
    let check = |l: CpuLimits| l.validate().unwrap_err().to_string();
    let with = |f: fn(&mut CpuLimits)| {
        let mut l = limits();
        f(&mut l);
        l
    };
    assert!(limits().validate().is_ok());
    assert!(CpuLimits::default().validate().is_ok());
    assert!(check(with(|l| l.cpu_weight = Some(0))).contains("--cpu-weight \"0\""));
    assert!(check(with(|l| l.cpu_weight = Some(10_001))).contains("1..=10000"));
    assert!(check(with(|l| l.cpu_period_us = Some(999))).contains("--cpu-period-us"));
    assert!(check(with(|l| l.cpu_period_us = Some(1_000_001))).contains("--cpu-period-us"));
    assert!(check(with(|l| l.cpu_quota_us = Some(999))).contains("--cpu-quota-us"));
    assert!(check(with(|l| l.cpu_burst_us = Some(10_001))).contains("--cpu-burst-us"));
    assert!(check(with(|l| l.cpu_quota_us = None)).contains("needs --cpu-quota-us"));
    // The bounds themselves are allowed.
    let edges = CpuLimits {
        cpu_weight: Some(10_000),
        cpu_quota_us: Some(1_000),
        cpu_period_us: Some(1_000_000),
        cpu_burst_us: Some(1_000),
        cpuset_cpus: None,
    };
    assert!(edges.validate().is_ok());
}

#[test]
fn cpu_lists_parse_canonicalise_and_refuse_nonsense() {
    assert_eq!(list("0-3,6").to_string(), "0-3,6");
    assert_eq!(list("3,0-2, 6 ,5").to_string(), "0-3,5-6");
    assert_eq!(list("7").cpus(), &[7]);
    for bad in ["a", "3-1", "0-99999", "1,,2", "-1", "0-"] {
        assert!(bad.parse::<CpuList>().is_err(), "{bad}");
    }
    assert!(list("1-2").is_subset_of(&list("0-3")));
    assert!(!list("1-4").is_subset_of(&list("0-3")));
    let json = serde_json::to_string(&limits()).unwrap();
    assert!(json.contains(r#""cpuset_cpus":"0-1""#), "{json}");
    assert_eq!(serde_json::from_str::<CpuLimits>(&json).unwrap(), limits());
}

#[test]
fn parents_are_plain_relative_paths() {
    assert_eq!(parse_parent("cocoon").unwrap(), PathBuf::from("cocoon"));
    assert_eq!(
        parse_parent("/a/b.slice/").unwrap(),
        PathBuf::from("a/b.slice")
    );
    for bad in ["", "/", "..", "a/../b", "a//b", "a b", "a/./b"] {
        assert!(parse_parent(bad).is_err(), "{bad:?}");
    }
    assert_eq!(
        vm_of_group(&group_name("ABCDEFGHIJKLMNOPQRSTUVWXYZ")),
        Some("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    );
    assert_eq!(vm_of_group("vm-x.scope"), None);
    assert_eq!(vm_of_group("other"), None);
}

const HYBRID: &str = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";

#[test]
fn a_hybrid_host_uses_its_v1_hierarchies_when_cgroup2_lacks_cpu() {
    let host = CgroupHost::from_mounts(HYBRID, |_| Some("hugetlb".into())).unwrap();
    assert_eq!(host.version, Version::V1);
    let root = |c| host.hierarchy(c).unwrap().root.clone();
    assert_eq!(root(Controller::Cpu), Path::new("/sys/fs/cgroup/cpu"));
    assert_eq!(root(Controller::Cpuset), Path::new("/sys/fs/cgroup/cpuset"));
    assert_eq!(
        root(Controller::Cpuacct),
        Path::new("/sys/fs/cgroup/cpuacct")
    );
    let group = host.group(Path::new("cocoon"), "ABC");
    assert_eq!(
        group.dir(Controller::Cpu),
        Some(Path::new("/sys/fs/cgroup/cpu/cocoon/vm-ABC.scope"))
    );
}

#[test]
fn a_unified_host_with_cpu_is_v2_and_comounted_v1_is_one_hierarchy() {
    let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n";
    let host =
        CgroupHost::from_mounts(unified, |_| Some("cpuset cpu io memory pids".into())).unwrap();
    assert_eq!(host.version, Version::V2);
    assert_eq!(host.hierarchies.len(), 1);
    assert!(CgroupHost::from_mounts(unified, |_| Some("memory".into())).is_none());
    let comounted = "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n";
    let host = CgroupHost::from_mounts(comounted, |_| None).unwrap();
    assert_eq!(host.hierarchies.len(), 1);
    assert_eq!(
        host.hierarchy(Controller::Cpuacct),
        host.hierarchy(Controller::Cpu)
    );
    let err = host
        .check("VM x", &limits(), false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cpuset") && err.contains("cocoon doctor"),
        "{err}"
    );
    let escaped = "cgroup /sys/fs/cgroup/my\\040cpu cgroup rw,cpu 0 0\n";
    let host = CgroupHost::from_mounts(escaped, |_| None).unwrap();
    assert_eq!(host.hierarchies[0].root, Path::new("/sys/fs/cgroup/my cpu"));
}

#[test]
fn cache_domains_come_from_sysfs_and_auto_picks_the_emptiest() {
    let dir = tempfile::tempdir().unwrap();
    for (cpu, shared) in [(0, "0-1"), (1, "0-1"), (2, "2-3"), (3, "2-3")] {
        let cache = dir.path().join(format!("cpu{cpu}/cache/index3"));
        std::fs::create_dir_all(&cache).unwrap();
        std::fs::write(cache.join("shared_cpu_list"), format!("{shared}\n")).unwrap();
    }
    std::fs::create_dir_all(dir.path().join("cpufreq")).unwrap();
    let domains = cache_domains(dir.path());
    assert_eq!(domains, vec![list("0-1"), list("2-3")]);
    assert_eq!(pick_domain(&domains, &[], None), Some(list("0-1")));
    assert_eq!(
        pick_domain(&domains, &[list("0-1")], None),
        Some(list("2-3"))
    );
    assert_eq!(
        pick_domain(&domains, &[list("0-1"), list("2-3")], None),
        Some(list("0-1"))
    );
    assert_eq!(
        pick_domain(&domains, &[], Some(&list("2-3"))),
        Some(list("2-3"))
    );
    // No L3 information: one domain of every CPU.
    let bare = tempfile::tempdir().unwrap();
    for cpu in 0..3 {
        std::fs::create_dir_all(bare.path().join(format!("cpu{cpu}"))).unwrap();
    }
    assert_eq!(cache_domains(bare.path()), vec![list("0-2")]);
}

/// The real hierarchy of this host, under a parent made for this test and
/// removed afterwards; skipped (loudly) where cgroups are not writable.
#[test]
fn a_group_on_the_real_hierarchy_holds_the_settings_and_its_members() {
    let Some(host) = CgroupHost::detect() else {
        eprintln!("SKIPPED: no cgroup cpu controller on this host");
        return;
    };
    let parent = PathBuf::from(format!("cocoon-unit-{}", std::process::id()));
    let cpu_root = host.hierarchy(Controller::Cpu).unwrap().root.clone();
    if std::fs::create_dir(cpu_root.join(&parent)).is_err() {
        eprintln!("SKIPPED: cgroups not writable here");
        return;
    }
    let _ = std::fs::remove_dir(cpu_root.join(&parent));
    let id = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut asked = limits();
    asked.cpuset_cpus = host
        .hierarchy(Controller::Cpuset)
        .and_then(|h| allowed_cpus(host.version, &h.root))
        .map(|all| CpuList::from_cpus(all.cpus()[..1].to_vec()));
    let group = host.prepare(&parent, None, id, &asked).unwrap();
    let expected = writes(host.version, &asked);
    for w in &expected {
        let got = group.read(w.controller, w.file).unwrap();
        assert_eq!(got, w.value, "{}", w.file);
    }
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    group.adopt(child.id()).unwrap();
    assert_eq!(group.pids(), vec![child.id()]);
    assert!(!group.remove_if_empty(), "an occupied group stays");
    assert_eq!(host.vm_groups(&parent), vec![id.to_string()]);
    child.kill().unwrap();
    child.wait().unwrap();
    group.remove().unwrap();
    assert!(!group.exists());
    for h in &host.hierarchies {
        let _ = std::fs::remove_dir(h.root.join(&parent));
    }
}

#[test]
fn a_vm_without_a_quota_is_capped_at_its_vcpus() {
    let none = CpuLimits::default().capped(2);
    assert_eq!(none.cpu_quota_us, Some(200_000));
    assert_eq!(none.cpu_period_us, None, "the kernel's default period");
    let period = CpuLimits {
        cpu_period_us: Some(50_000),
        cpu_weight: Some(10),
        ..CpuLimits::default()
    };
    assert_eq!(period.capped(4).cpu_quota_us, Some(200_000));
    assert_eq!(period.capped(4).cpu_weight, Some(10));
    // An asked quota stands, below or above the vCPUs.
    assert_eq!(limits().capped(8), limits());
    use Controller::*;
    assert_eq!(
        files(Version::V1, &CpuLimits::default().capped(1)),
        vec![(Cpu, "cpu.cfs_quota_us", "100000".into())]
    );
}
