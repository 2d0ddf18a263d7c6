//! The host's last-level cache domains, for `--cpuset-cpus auto` (upstream
//! #226): CPUs sharing an L3 (`cpu*/cache/index3/shared_cpu_list` in sysfs)
//! form one domain; VMs spread over domains keep out of each other's cache.

use std::path::Path;

use super::CpuList;

/// The distinct L3 domains under `cpu_root` (normally
/// `/sys/devices/system/cpu`), sorted by first CPU; one domain of all
/// online CPUs when sysfs has no L3 information.
pub fn cache_domains(cpu_root: &Path) -> Vec<CpuList> {
    let mut domains: Vec<CpuList> = Vec::new();
    let Ok(entries) = std::fs::read_dir(cpu_root) else {
        return domains;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(n) = name.to_str().and_then(|n| n.strip_prefix("cpu")) else {
            continue;
        };
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let shared = entry.path().join("cache/index3/shared_cpu_list");
        let list = std::fs::read_to_string(shared)
            .ok()
            .and_then(|t| t.trim().parse::<CpuList>().ok())
            .filter(|l| !l.is_empty());
        let list = match list {
            Some(list) => list,
            None => match n.parse::<u32>() {
                Ok(cpu) => CpuList::from_cpus(vec![cpu]),
                Err(_) => continue,
            },
        };
        if !domains.contains(&list) {
            domains.push(list);
        }
    }
    // Without L3 data every CPU is its own "domain": treat them as one.
    if domains.iter().all(|d| d.cpus().len() == 1) && domains.len() > 1 {
        let all = domains.iter().flat_map(|d| d.cpus().to_vec()).collect();
        domains = vec![CpuList::from_cpus(all)];
    }
    domains.sort();
    domains
}

/// The domain with the fewest of `taken` (the CPU lists other VMs were
/// given) inside it, the first such on a tie; only domains within `allowed`
/// (the fence) count.
pub fn pick_domain(
    domains: &[CpuList],
    taken: &[CpuList],
    allowed: Option<&CpuList>,
) -> Option<CpuList> {
    domains
        .iter()
        .filter(|d| allowed.is_none_or(|a| d.is_subset_of(a)))
        .min_by_key(|d| taken.iter().filter(|t| t.is_subset_of(d)).count())
        .cloned()
}
