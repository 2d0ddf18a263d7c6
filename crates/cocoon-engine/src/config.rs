//! Engine configuration: defaults < TOML file < `COCOON_*` environment < flags.
//!
//! Every key has exactly one environment variable, spelled out in [`KEYS`]
//! (cocoon's viper setup derived them implicitly and several never worked,
//! e.g. `log.level`). All three sources go through the same per-key parser, so a
//! value means the same thing wherever it is written.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::model::Hypervisor;
use crate::spec;

mod error;
mod keys;
mod parse;

pub use error::{ConfigError, Source};
pub use keys::{KEYS, Key, key};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/cocoon/config.toml";
pub const CONFIG_ENV: &str = "COCOON_CONFIG";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogConfig {
    pub level: String,
    /// MiB per log file before rotation.
    pub max_size: u64,
    /// Days.
    pub max_age: u64,
    pub max_backups: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    pub root_dir: PathBuf,
    pub run_dir: PathBuf,
    pub log_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dir: PathBuf,
    pub dns: Vec<IpAddr>,
    pub log: LogConfig,
    pub ch_binary: String,
    pub fc_binary: String,
    pub qemu_binary: String,
    pub qemu_accel: QemuAccel,
    /// QEMU's UEFI firmware code (OVMF), read-only pflash of cloud-image VMs.
    pub qemu_firmware: PathBuf,
    /// The variable store template matching `qemu_firmware`: each VM gets its copy.
    pub qemu_firmware_vars: PathBuf,
    /// The vhost-user vsock device QEMU VMs get their vsock from
    /// (rust-vmm's vhost-device-vsock): on PATH, `~/.cargo/bin` or `/usr/local/bin`.
    pub vhost_vsock_binary: String,
    /// The backend of new VMs when not given; None: `use_firecracker`'s.
    pub default_hypervisor: Option<Hypervisor>,
    /// The kernel release (`cocoon kernel ls`) that container images boot;
    /// empty: the newest installed.
    pub default_kernel: String,
    /// cocoon-init, the static PID 1 of container images; empty: looked for
    /// beside the cocoon binary, then in /usr/local/lib/cocoon and /usr/lib/cocoon.
    pub init_binary: PathBuf,
    /// Cloud Hypervisor's UEFI firmware (`CLOUDHV.fd`), booting cloud images.
    pub firmware_path: PathBuf,
    pub use_firecracker: bool,
    pub stop_timeout_seconds: u64,
    pub socket_wait_timeout_seconds: u64,
    pub terminate_grace_period_seconds: u64,
    /// Already resolved: never 0.
    pub pool_size: usize,
    /// Connections per download (upstream #76): parallel Range requests of
    /// a cloud image, blobs at once of a snapshot push or pull. Already
    /// resolved: 1 to [`MAX_PULL_CONNS`].
    pub pull_conns: usize,
    /// `host[:port]` of registries spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
    pub registry_connect_timeout_seconds: u64,
    /// Idle time between bytes from a registry, not the transfer's total.
    pub registry_read_timeout_seconds: u64,
    /// The most bytes one layer may decompress to (a bomb stops there).
    pub max_layer_bytes: u64,
    /// Host paths a confined VMM sees besides its own (see [`crate::jail`]).
    pub jail_extra_paths: Vec<PathBuf>,
    /// Names this installation's network namespaces (`<scope>-<id>`) and
    /// bridge TAPs (`<scope><id8>-<n>`); empty: `cocoon-<id>` and `bt<id8>-<n>`.
    pub net_scope: String,
    /// Where VM cgroups are made, relative to each hierarchy's root.
    pub cgroup_parent: PathBuf,
    /// The CPUs every VM is fenced to (the parent group's cpuset).
    pub cgroup_cpus: Option<crate::cgroup::CpuList>,
    /// The config file that was read, if any.
    #[serde(skip)]
    pub file: Option<PathBuf>,
    #[serde(skip)]
    sources: BTreeMap<&'static str, Source>,
}

/// What `Config::load` reads besides the file: the environment (as a lookup
/// function, so tests never touch the process environment) and flag values.
pub struct LoadOptions<'a> {
    /// `--config`; falls back to `COCOON_CONFIG`, then `/etc/cocoon/config.toml` if present.
    pub config_path: Option<PathBuf>,
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// `(key name, raw value)` for every flag the user gave.
    pub flags: Vec<(&'static str, String)>,
    /// The default config path; a parameter so tests need not depend on /etc.
    pub default_path: PathBuf,
}

impl LoadOptions<'_> {
    pub fn process_env() -> impl Fn(&str) -> Option<String> {
        |name| std::env::var(name).ok()
    }
}

impl Default for Config {
    fn default() -> Self {
        let root = PathBuf::from("/var/lib/cocoon");
        Config {
            run_dir: root.join("run"),
            root_dir: root,
            log_dir: PathBuf::from("/var/log/cocoon"),
            cni_conf_dir: PathBuf::from("/etc/cni/net.d"),
            cni_bin_dir: PathBuf::from("/opt/cni/bin"),
            dns: vec![IpAddr::from([8, 8, 8, 8]), IpAddr::from([1, 1, 1, 1])],
            log: LogConfig {
                level: "info".into(),
                max_size: 500,
                max_age: 28,
                max_backups: 3,
            },
            ch_binary: "cloud-hypervisor".into(),
            fc_binary: "firecracker".into(),
            qemu_binary: "qemu-system-x86_64".into(),
            qemu_accel: QemuAccel::Auto,
            qemu_firmware: PathBuf::from("/usr/share/OVMF/OVMF_CODE_4M.fd"),
            qemu_firmware_vars: PathBuf::from("/usr/share/OVMF/OVMF_VARS_4M.fd"),
            vhost_vsock_binary: "vhost-device-vsock".into(),
            default_hypervisor: None,
            default_kernel: String::new(),
            init_binary: PathBuf::new(),
            firmware_path: PathBuf::from("/var/lib/cocoon/firmware/CLOUDHV.fd"),
            use_firecracker: false,
            stop_timeout_seconds: 30,
            socket_wait_timeout_seconds: 5,
            terminate_grace_period_seconds: 5,
            pool_size: default_pool_size(),
            pull_conns: DEFAULT_PULL_CONNS,
            insecure_registries: Vec::new(),
            registry_connect_timeout_seconds: 30,
            registry_read_timeout_seconds: 60,
            max_layer_bytes: 64 << 30,
            jail_extra_paths: Vec::new(),
            net_scope: String::new(),
            cgroup_parent: PathBuf::from("cocoon"),
            cgroup_cpus: None,
            file: None,
            sources: BTreeMap::new(),
        }
    }
}

/// Upstream's default and cap (`config.go`: `defaultPullConns`,
/// `maxPullConns`): the cap keeps a wrong value from exhausting file
/// descriptors.
pub const DEFAULT_PULL_CONNS: usize = 8;
pub const MAX_PULL_CONNS: usize = 64;

fn default_pool_size() -> usize {
    spec::host_cpus() as usize
}

impl Config {
    pub fn load(options: LoadOptions<'_>) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        let path = match options.config_path {
            Some(path) => Some((path, true)),
            None => match (options.env)(CONFIG_ENV).filter(|p| !p.is_empty()) {
                Some(path) => Some((PathBuf::from(path), true)),
                None => Some((options.default_path, false)),
            },
        };
        if let Some((path, explicit)) = path {
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    config.apply_file(&path, &text)?;
                    config.file = Some(path);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {}
                Err(source) => return Err(ConfigError::Read { path, source }),
            }
        }
        for (name, env, reason) in keys::UNSUPPORTED {
            if (options.env)(env).is_some() {
                return Err(ConfigError::Unsupported {
                    origin: Source::Env(env),
                    key: (*name).to_string(),
                    reason,
                });
            }
        }
        for key in KEYS {
            if let Some(value) = (options.env)(key.env) {
                config.set(key.name, &value, Source::Env(key.env))?;
            }
        }
        for (name, value) in options.flags {
            let flag = key(name).and_then(|k| k.flag).unwrap_or(name);
            config.set(name, &value, Source::Flag(flag))?;
        }
        config.finish()?;
        Ok(config)
    }

    /// Where the value of `key` came from.
    pub fn source_of(&self, key: &str) -> Source {
        self.sources.get(key).cloned().unwrap_or(Source::Default)
    }

    /// The value of `key` in the same textual form `set` accepts.
    pub fn get(&self, key: &str) -> Option<String> {
        let path = |p: &Path| p.display().to_string();
        Some(match key {
            "root_dir" => path(&self.root_dir),
            "run_dir" => path(&self.run_dir),
            "log_dir" => path(&self.log_dir),
            "cni_conf_dir" => path(&self.cni_conf_dir),
            "cni_bin_dir" => path(&self.cni_bin_dir),
            "dns" => self
                .dns
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(","),
            "log.level" => self.log.level.clone(),
            "log.max_size" => self.log.max_size.to_string(),
            "log.max_age" => self.log.max_age.to_string(),
            "log.max_backups" => self.log.max_backups.to_string(),
            "ch_binary" => self.ch_binary.clone(),
            "fc_binary" => self.fc_binary.clone(),
            "qemu_binary" => self.qemu_binary.clone(),
            "qemu_accel" => self.qemu_accel.as_str().to_string(),
            "qemu_firmware" => path(&self.qemu_firmware),
            "qemu_firmware_vars" => path(&self.qemu_firmware_vars),
            "vhost_vsock_binary" => self.vhost_vsock_binary.clone(),
            "default_hypervisor" => self
                .default_hypervisor
                .map(|h| h.as_str().to_string())
                .unwrap_or_default(),
            "default_kernel" => self.default_kernel.clone(),
            "init_binary" => path(&self.init_binary),
            "firmware_path" => path(&self.firmware_path),
            "use_firecracker" => self.use_firecracker.to_string(),
            "stop_timeout_seconds" => self.stop_timeout_seconds.to_string(),
            "socket_wait_timeout_seconds" => self.socket_wait_timeout_seconds.to_string(),
            "terminate_grace_period_seconds" => self.terminate_grace_period_seconds.to_string(),
            "pool_size" => self.pool_size.to_string(),
            "pull_conns" => self.pull_conns.to_string(),
            "insecure_registries" => self.insecure_registries.join(","),
            "registry_connect_timeout_seconds" => self.registry_connect_timeout_seconds.to_string(),
            "registry_read_timeout_seconds" => self.registry_read_timeout_seconds.to_string(),
            "max_layer_bytes" => self.max_layer_bytes.to_string(),
            "net_scope" => self.net_scope.clone(),
            "jail_extra_paths" => self
                .jail_extra_paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(","),
            "cgroup_parent" => path(&self.cgroup_parent),
            "cgroup_cpus" => self
                .cgroup_cpus
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default(),
            _ => return None,
        })
    }

    pub fn stop_timeout(&self) -> Duration {
        Duration::from_secs(self.stop_timeout_seconds)
    }

    pub fn socket_wait_timeout(&self) -> Duration {
        Duration::from_secs(self.socket_wait_timeout_seconds)
    }

    pub fn registry_connect_timeout(&self) -> Duration {
        Duration::from_secs(self.registry_connect_timeout_seconds)
    }

    pub fn registry_read_timeout(&self) -> Duration {
        Duration::from_secs(self.registry_read_timeout_seconds)
    }

    pub fn terminate_grace_period(&self) -> Duration {
        Duration::from_secs(self.terminate_grace_period_seconds)
    }

    pub fn db_path(&self) -> PathBuf {
        self.root_dir.join("cocoon.db")
    }

    fn finish(&mut self) -> Result<(), ConfigError> {
        // run_dir follows root_dir unless set on its own, so `--root-dir /tmp/x`
        // keeps everything of that instance under /tmp/x.
        if !self.sources.contains_key("run_dir") {
            self.run_dir = self.root_dir.join("run");
        }
        if !self.sources.contains_key("firmware_path") {
            self.firmware_path = self.root_dir.join("firmware").join("CLOUDHV.fd");
        }
        Ok(())
    }
}

/// How QEMU runs guests (`qemu_accel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QemuAccel {
    /// KVM when `/dev/kvm` opens and creates a VM, else TCG with a warning.
    #[default]
    Auto,
    Kvm,
    /// Software emulation: slow, and works anywhere.
    Tcg,
}

impl QemuAccel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        }
    }
}

impl std::str::FromStr for QemuAccel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "kvm" => Ok(Self::Kvm),
            "tcg" => Ok(Self::Tcg),
            other => Err(format!("{other:?} is not auto, kvm or tcg")),
        }
    }
}

#[cfg(test)]
mod tests;
