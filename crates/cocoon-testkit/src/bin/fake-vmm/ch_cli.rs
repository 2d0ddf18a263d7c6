//! Cloud Hypervisor v53's command-line parsing, as far as cocoon's launches
//! reach: the keys each option takes, how their values convert, and the
//! error chain and exit status CH gives a command line it refuses. Apart
//! from the API server because it runs before there is one.

use crate::args::{all_values, ch_option};

/// How CH v53 converts one `key=value` of its option syntax.
#[derive(Clone, Copy)]
enum Kind {
    /// Any text.
    Text,
    /// An unsigned integer.
    Int,
    /// `on`, `off`, `true` or `false`.
    Toggle,
    /// An integer with an optional `K`, `M` or `G` suffix.
    Bytes,
    /// `xx:xx:xx:xx:xx:xx`.
    Mac,
}

use Kind::{Bytes, Int, Mac, Text, Toggle};

/// The rate limiter's keys, shared by `--disk` and `--net`.
const RATE: [(&str, Kind); 6] = [
    ("bw_size", Int),
    ("bw_one_time_burst", Int),
    ("bw_refill_time", Int),
    ("ops_size", Int),
    ("ops_one_time_burst", Int),
    ("ops_refill_time", Int),
];

const CPUS: &[(&str, Kind)] = &[
    ("boot", Int),
    ("max", Int),
    ("topology", Text),
    ("kvm_hyperv", Toggle),
    ("max_phys_bits", Int),
    ("affinity", Text),
    ("features", Text),
    ("nested", Toggle),
    ("core_scheduling", Text),
];

const MEMORY: &[(&str, Kind)] = &[
    ("size", Bytes),
    ("mergeable", Toggle),
    ("shared", Toggle),
    ("hugepages", Toggle),
    ("hugepage_size", Bytes),
    ("hotplug_method", Text),
    ("hotplug_size", Bytes),
    ("hotplugged_size", Bytes),
    ("prefault", Toggle),
    ("reserve", Toggle),
    ("thp", Toggle),
];

const DISK: &[(&str, Kind)] = &[
    ("path", Text),
    ("readonly", Toggle),
    ("direct", Toggle),
    ("iommu", Toggle),
    ("num_queues", Int),
    ("queue_size", Int),
    ("vhost_user", Toggle),
    ("socket", Text),
    RATE[0],
    RATE[1],
    RATE[2],
    RATE[3],
    RATE[4],
    RATE[5],
    ("id", Text),
    ("pci_segment", Int),
    ("pci_device_id", Int),
    ("rate_limit_group", Text),
    ("queue_affinity", Text),
    ("serial", Text),
    ("backing_files", Toggle),
    ("sparse", Toggle),
    ("image_type", Text),
    ("lock_granularity", Text),
];

const NET: &[(&str, Kind)] = &[
    ("tap", Text),
    ("ip", Text),
    ("mask", Text),
    ("mac", Mac),
    ("host_mac", Mac),
    ("fd", Text),
    ("iommu", Toggle),
    ("num_queues", Int),
    ("queue_size", Int),
    ("id", Text),
    ("vhost_user", Toggle),
    ("socket", Text),
    ("vhost_mode", Text),
    RATE[0],
    RATE[1],
    RATE[2],
    RATE[3],
    RATE[4],
    RATE[5],
    ("pci_segment", Int),
    ("pci_device_id", Int),
    ("offload_tso", Toggle),
    ("offload_ufo", Toggle),
    ("offload_csum", Toggle),
];

const BALLOON: &[(&str, Kind)] = &[
    ("size", Bytes),
    ("deflate_on_oom", Toggle),
    ("free_page_reporting", Toggle),
    ("iommu", Toggle),
    ("id", Text),
    ("pci_segment", Int),
    ("pci_device_id", Int),
];

const SERIAL: &[(&str, Kind)] = &[("file", Text), ("socket", Text)];

const CONSOLE: &[(&str, Kind)] = &[
    ("file", Text),
    ("socket", Text),
    ("iommu", Toggle),
    ("id", Text),
    ("pci_segment", Int),
    ("pci_device_id", Int),
];

const VSOCK: &[(&str, Kind)] = &[
    ("cid", Int),
    ("socket", Text),
    ("iommu", Toggle),
    ("id", Text),
    ("pci_segment", Int),
];

const RNG: &[(&str, Kind)] = &[
    ("src", Text),
    ("iommu", Toggle),
    ("pci_segment", Int),
    ("pci_device_id", Int),
];

/// The keys CH v53 knows per option (`cloud-hypervisor --help`).
fn ch_keys(option: &str) -> &'static [(&'static str, Kind)] {
    match option {
        "--cpus" => CPUS,
        "--memory" => MEMORY,
        "--disk" => DISK,
        "--net" => NET,
        "--balloon" => BALLOON,
        "--serial" => SERIAL,
        "--console" => CONSOLE,
        "--rng" => RNG,
        "--vsock" => VSOCK,
        _ => &[],
    }
}

fn converts(kind: Kind, value: &str) -> bool {
    if value.is_empty() {
        // CH takes an empty value as the default.
        return true;
    }
    match kind {
        Text => true,
        Int => value.parse::<u64>().is_ok(),
        Toggle => matches!(value, "on" | "off" | "true" | "false"),
        Bytes => {
            let digits = value.strip_suffix(['K', 'M', 'G']).unwrap_or(value);
            digits.parse::<u64>().is_ok()
        }
        Mac => {
            let parts: Vec<&str> = value.split(':').collect();
            parts.len() == 6
                && parts
                    .iter()
                    .all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok())
        }
    }
}

/// Parses one CH option value as CH v53 does: the error it gives, if any.
fn ch_parse(option: &str, value: &str) -> Result<(), String> {
    let keys = ch_keys(option);
    let port = matches!(option, "--serial" | "--console");
    for (i, item) in value.split(',').enumerate() {
        let Some((key, v)) = item.split_once('=') else {
            if port && i == 0 && matches!(item, "off" | "null" | "pty" | "tty") {
                continue;
            }
            if port && keys.iter().any(|(k, _)| *k == item) {
                return Err(format!("invalid syntax: {value}"));
            }
            return Err(format!("unknown option: {item}"));
        };
        let Some((_, kind)) = keys.iter().find(|(k, _)| *k == key) else {
            return Err(format!("unknown option: {key}"));
        };
        if !converts(*kind, v) {
            return Err(format!("unable to convert {v} for {key}"));
        }
    }
    Ok(())
}

/// CH's exit on a command line it cannot parse: its error chain on stderr, status 1.
pub fn ch_exit(chain: &[&str]) -> ! {
    eprintln!("Error: Cloud Hypervisor exited with the following chain of errors:");
    for (i, e) in chain.iter().enumerate() {
        eprintln!("  {i}: {e}");
    }
    std::process::exit(1)
}

/// Refuses, as CH v53 does and with its message, a command line whose
/// `--cpus`, `--memory`, `--disk`, `--net`, `--balloon`, `--serial`,
/// `--console` or `--rng` it cannot parse or validate.
pub fn ch_check_command_line(args: &[String]) {
    for option in [
        "--cpus",
        "--memory",
        "--disk",
        "--net",
        "--rng",
        "--balloon",
        "--serial",
        "--console",
        "--vsock",
    ] {
        for value in all_values(args, option) {
            if let Err(e) = ch_parse(option, &value) {
                ch_exit(&[
                    "Error parsing config",
                    &format!("Error parsing {option}"),
                    &e,
                ]);
            }
        }
    }
    if let Some(cpus) = all_values(args, "--cpus").first() {
        let get = |k: &str| {
            ch_option(cpus, k)
                .filter(|v| !v.is_empty())
                .and_then(|v| v.parse::<u64>().ok())
        };
        let boot = get("boot").unwrap_or(1);
        if let Some(max) = get("max").filter(|m| *m < boot) {
            ch_exit(&[
                "Error parsing config",
                "Error validating configuration",
                &format!("Max CPUs ({max}) lower than boot CPUs ({boot})"),
            ]);
        }
    }
    // (Checked on the serial port; CH checks the console's socket later.)
    if all_values(args, "--serial")
        .iter()
        .any(|v| v.split(',').any(|kv| kv == "socket="))
    {
        ch_exit(&[
            "Error parsing config",
            "Error validating configuration",
            "Path missing when using socket console mode",
        ]);
    }
}
