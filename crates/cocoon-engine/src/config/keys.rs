//! The table of configuration keys: each key's name in the file, its one
//! environment variable, its flag and its help, in one place so no source
//! can forget a key.

/// One configuration key: its dotted name in the file, its environment variable,
/// and its command-line flag if it has one.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    pub name: &'static str,
    pub env: &'static str,
    pub flag: Option<&'static str>,
    pub help: &'static str,
}

pub const KEYS: &[Key] = &[
    Key {
        name: "root_dir",
        env: "COCOON_ROOT_DIR",
        flag: Some("--root-dir"),
        help: "state, images and snapshots",
    },
    Key {
        name: "run_dir",
        env: "COCOON_RUN_DIR",
        flag: Some("--run-dir"),
        help: "per-VM runtime files (default <root_dir>/run)",
    },
    Key {
        name: "log_dir",
        env: "COCOON_LOG_DIR",
        flag: Some("--log-dir"),
        help: "per-VM VMM and console logs",
    },
    Key {
        name: "cni_conf_dir",
        env: "COCOON_CNI_CONF_DIR",
        flag: Some("--cni-conf-dir"),
        help: "CNI *.conflist directory",
    },
    Key {
        name: "cni_bin_dir",
        env: "COCOON_CNI_BIN_DIR",
        flag: Some("--cni-bin-dir"),
        help: "CNI plugin directory (/usr/lib/cni is searched too)",
    },
    Key {
        name: "dns",
        env: "COCOON_DNS",
        flag: Some("--dns"),
        help: "DNS servers for guests, comma or ; separated",
    },
    Key {
        name: "log.level",
        env: "COCOON_LOG_LEVEL",
        flag: Some("--log-level"),
        help: "trace, debug, info, warn or error",
    },
    Key {
        name: "log.max_size",
        env: "COCOON_LOG_MAX_SIZE",
        flag: None,
        help: "per-VM log size limit in MiB",
    },
    Key {
        name: "log.max_age",
        env: "COCOON_LOG_MAX_AGE",
        flag: None,
        help: "days to keep rotated logs",
    },
    Key {
        name: "log.max_backups",
        env: "COCOON_LOG_MAX_BACKUPS",
        flag: None,
        help: "rotated logs kept per VM",
    },
    Key {
        name: "ch_binary",
        env: "COCOON_CH_BINARY",
        flag: None,
        help: "Cloud Hypervisor binary",
    },
    Key {
        name: "fc_binary",
        env: "COCOON_FC_BINARY",
        flag: None,
        help: "Firecracker binary",
    },
    Key {
        name: "qemu_binary",
        env: "COCOON_QEMU_BINARY",
        flag: None,
        help: "QEMU binary (qemu-system-x86_64)",
    },
    Key {
        name: "qemu_accel",
        env: "COCOON_QEMU_ACCEL",
        flag: None,
        help: "QEMU accelerator: auto (KVM when it works, else TCG), kvm or tcg",
    },
    Key {
        name: "qemu_firmware",
        env: "COCOON_QEMU_FIRMWARE",
        flag: None,
        help: "QEMU's UEFI firmware code for cloud images (default /usr/share/OVMF/OVMF_CODE_4M.fd)",
    },
    Key {
        name: "qemu_firmware_vars",
        env: "COCOON_QEMU_FIRMWARE_VARS",
        flag: None,
        help: "template of a QEMU cloud-image VM's UEFI variable store, matching qemu_firmware (default /usr/share/OVMF/OVMF_VARS_4M.fd)",
    },
    Key {
        name: "vhost_vsock_binary",
        env: "COCOON_VHOST_VSOCK_BINARY",
        flag: None,
        help: "vhost-device-vsock binary QEMU VMs get their vsock device from (default: on PATH, ~/.cargo/bin or /usr/local/bin)",
    },
    Key {
        name: "default_hypervisor",
        env: "COCOON_DEFAULT_HYPERVISOR",
        flag: None,
        help: "backend of new VMs: cloud-hypervisor, firecracker or qemu (default: use_firecracker's choice)",
    },
    Key {
        name: "default_kernel",
        env: "COCOON_DEFAULT_KERNEL",
        flag: None,
        help: "kernel release container images boot (`cocoon kernel ls`; default: the newest installed)",
    },
    Key {
        name: "init_binary",
        env: "COCOON_INIT_BINARY",
        flag: None,
        help: "cocoon-init, PID 1 of container images (default: beside cocoon, then /usr/local/lib/cocoon, /usr/lib/cocoon)",
    },
    Key {
        name: "firmware_path",
        env: "COCOON_FIRMWARE_PATH",
        flag: None,
        help: "UEFI firmware for cloud images (default <root_dir>/firmware/CLOUDHV.fd)",
    },
    Key {
        name: "use_firecracker",
        env: "COCOON_USE_FIRECRACKER",
        flag: None,
        help: "make Firecracker the default backend",
    },
    Key {
        name: "stop_timeout_seconds",
        env: "COCOON_STOP_TIMEOUT_SECONDS",
        flag: None,
        help: "graceful guest shutdown timeout",
    },
    Key {
        name: "socket_wait_timeout_seconds",
        env: "COCOON_SOCKET_WAIT_TIMEOUT_SECONDS",
        flag: None,
        help: "wait for a new VMM's API socket",
    },
    Key {
        name: "terminate_grace_period_seconds",
        env: "COCOON_TERMINATE_GRACE_PERIOD_SECONDS",
        flag: None,
        help: "SIGTERM to SIGKILL grace period",
    },
    Key {
        name: "pool_size",
        env: "COCOON_POOL_SIZE",
        flag: None,
        help: "parallel workers (0 = number of CPUs)",
    },
    Key {
        name: "pull_conns",
        env: "COCOON_PULL_CONNS",
        flag: None,
        help: "connections per download: Range requests of a cloud image, blobs of a snapshot push or pull (0: 8; at most 64)",
    },
    Key {
        name: "insecure_registries",
        env: "COCOON_INSECURE_REGISTRIES",
        flag: None,
        help: "registries reached over plain HTTP (comma-separated hosts)",
    },
    Key {
        name: "registry_connect_timeout_seconds",
        env: "COCOON_REGISTRY_CONNECT_TIMEOUT_SECONDS",
        flag: None,
        help: "connect timeout of every registry request",
    },
    Key {
        name: "registry_read_timeout_seconds",
        env: "COCOON_REGISTRY_READ_TIMEOUT_SECONDS",
        flag: None,
        help: "longest wait for a registry's next bytes (idle time, not total)",
    },
    Key {
        name: "max_layer_bytes",
        env: "COCOON_MAX_LAYER_BYTES",
        flag: None,
        help: "largest uncompressed size of one image layer",
    },
    Key {
        name: "cgroup_parent",
        env: "COCOON_CGROUP_PARENT",
        flag: None,
        help: "the cgroup (relative to each hierarchy) VM groups are made in",
    },
    Key {
        name: "cgroup_cpus",
        env: "COCOON_CGROUP_CPUS",
        flag: None,
        help: "CPU list every VM is fenced to (empty: all)",
    },
    Key {
        name: "jail_extra_paths",
        env: "COCOON_JAIL_EXTRA_PATHS",
        flag: None,
        help: "host paths (absolute, comma-separated) a confined VMM also sees, read-write",
    },
    Key {
        name: "net_scope",
        env: "COCOON_NET_SCOPE",
        flag: None,
        help: "two letters or digits naming this installation's network namespaces and bridge TAPs (upstream #196); empty: cocoon-<id>, bt<id8>-<n>",
    },
];

/// Upstream cocoon's keys this cocoon does not support yet, and why: set in
/// the file or the environment, each is an error saying so, never ignored.
pub const UNSUPPORTED: &[(&str, &str, &str)] = &[
    (
        "meta_backend",
        "COCOON_META_BACKEND",
        "the state is always one SQLite database (<root_dir>/cocoon.db); remove the key",
    ),
    (
        "metering.backend",
        "COCOON_METERING_BACKEND",
        "there is no metering ledger; `vm status --event` streams every change instead; remove the key",
    ),
    (
        "metering.file.path",
        "COCOON_METERING_FILE_PATH",
        "there is no metering ledger; `vm status --event` streams every change instead; remove the key",
    ),
];

/// Why an upstream key is not supported, if `name` is one.
pub fn unsupported(name: &str) -> Option<&'static str> {
    UNSUPPORTED
        .iter()
        .find(|(n, ..)| *n == name)
        .map(|(.., why)| *why)
}

pub fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}
