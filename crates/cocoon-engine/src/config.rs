//! Engine configuration: defaults < TOML file < `COCOON_*` environment < flags.
//!
//! Every key has exactly one environment variable, spelled out in [`KEYS`]
//! (cocoon's viper setup derived them implicitly and several never worked,
//! e.g. `log.level`). All three sources go through the same per-key parser, so a
//! value means the same thing wherever it is written.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::spec;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/cocoon/config.toml";
pub const CONFIG_ENV: &str = "COCOON_CONFIG";

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
];

pub fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// Where a value came from, for error messages and diagnostics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum Source {
    Default,
    File(PathBuf),
    Env(&'static str),
    Flag(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => write!(f, "the default"),
            Source::File(path) => write!(f, "{}", path.display()),
            Source::Env(var) => write!(f, "environment variable {var}"),
            Source::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: unknown key {key:?} (known keys: {known})")]
    UnknownKey {
        path: PathBuf,
        key: String,
        known: String,
    },
    #[error("invalid {key} {value:?} from {origin}: {reason}")]
    Value {
        key: &'static str,
        value: String,
        origin: Source,
        reason: String,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

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
    /// Cloud Hypervisor's UEFI firmware (`CLOUDHV.fd`), booting cloud images.
    pub firmware_path: PathBuf,
    pub use_firecracker: bool,
    pub stop_timeout_seconds: u64,
    pub socket_wait_timeout_seconds: u64,
    pub terminate_grace_period_seconds: u64,
    /// Already resolved: never 0.
    pub pool_size: usize,
    /// `host[:port]` of registries spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
    pub registry_connect_timeout_seconds: u64,
    /// Idle time between bytes from a registry, not the transfer's total.
    pub registry_read_timeout_seconds: u64,
    /// The most bytes one layer may decompress to (a bomb stops there).
    pub max_layer_bytes: u64,
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
            firmware_path: PathBuf::from("/var/lib/cocoon/firmware/CLOUDHV.fd"),
            use_firecracker: false,
            stop_timeout_seconds: 30,
            socket_wait_timeout_seconds: 5,
            terminate_grace_period_seconds: 5,
            pool_size: default_pool_size(),
            insecure_registries: Vec::new(),
            registry_connect_timeout_seconds: 30,
            registry_read_timeout_seconds: 60,
            max_layer_bytes: 64 << 30,
            file: None,
            sources: BTreeMap::new(),
        }
    }
}

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
            "firmware_path" => path(&self.firmware_path),
            "use_firecracker" => self.use_firecracker.to_string(),
            "stop_timeout_seconds" => self.stop_timeout_seconds.to_string(),
            "socket_wait_timeout_seconds" => self.socket_wait_timeout_seconds.to_string(),
            "terminate_grace_period_seconds" => self.terminate_grace_period_seconds.to_string(),
            "pool_size" => self.pool_size.to_string(),
            "insecure_registries" => self.insecure_registries.join(","),
            "registry_connect_timeout_seconds" => self.registry_connect_timeout_seconds.to_string(),
            "registry_read_timeout_seconds" => self.registry_read_timeout_seconds.to_string(),
            "max_layer_bytes" => self.max_layer_bytes.to_string(),
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

    fn apply_file(&mut self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.message().to_string(),
            })?;
        let mut flat = Vec::new();
        flatten("", &table, &mut flat);
        for (name, value) in flat {
            let Some(key) = key(&name) else {
                return Err(ConfigError::UnknownKey {
                    path: path.to_path_buf(),
                    key: name,
                    known: KEYS.iter().map(|k| k.name).collect::<Vec<_>>().join(", "),
                });
            };
            let source = Source::File(path.to_path_buf());
            let raw = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Array(items)
                    if key.name == "dns" || key.name == "insecure_registries" =>
                {
                    let mut parts = Vec::new();
                    for item in items {
                        match item.as_str() {
                            Some(s) => parts.push(s.to_string()),
                            None => {
                                return Err(value_error(
                                    key.name,
                                    &item.to_string(),
                                    source,
                                    "expected a string",
                                ));
                            }
                        }
                    }
                    parts.join(",")
                }
                other => {
                    return Err(value_error(
                        key.name,
                        &other.to_string(),
                        source,
                        &format!("unexpected {} value", other.type_str()),
                    ));
                }
            };
            self.set(key.name, &raw, source)?;
        }
        Ok(())
    }

    /// Sets one key from its textual form; the single parser behind file, env and flags.
    pub fn set(&mut self, name: &str, raw: &str, source: Source) -> Result<(), ConfigError> {
        let key = key(name).ok_or_else(|| ConfigError::Invalid(format!("unknown key {name:?}")))?;
        let fail = |reason: &str| value_error(key.name, raw, source.clone(), reason);
        let value = raw.trim();
        match key.name {
            "root_dir" => self.root_dir = dir(value).map_err(&fail)?,
            "run_dir" => self.run_dir = dir(value).map_err(&fail)?,
            "log_dir" => self.log_dir = dir(value).map_err(&fail)?,
            "cni_conf_dir" => self.cni_conf_dir = dir(value).map_err(&fail)?,
            "cni_bin_dir" => self.cni_bin_dir = dir(value).map_err(&fail)?,
            "dns" => {
                let dns = spec::parse_dns(value).map_err(|e| fail(&e.to_string()))?;
                if dns.is_empty() {
                    return Err(fail("at least one DNS server is required"));
                }
                self.dns = dns;
            }
            "log.level" => {
                let level = value.to_ascii_lowercase();
                if !["trace", "debug", "info", "warn", "error"].contains(&level.as_str()) {
                    return Err(fail("expected trace, debug, info, warn or error"));
                }
                self.log.level = level;
            }
            "log.max_size" => self.log.max_size = number(value).map_err(&fail)?,
            "log.max_age" => self.log.max_age = number(value).map_err(&fail)?,
            "log.max_backups" => self.log.max_backups = number(value).map_err(&fail)?,
            "ch_binary" => self.ch_binary = binary(value).map_err(&fail)?,
            "fc_binary" => self.fc_binary = binary(value).map_err(&fail)?,
            "firmware_path" => self.firmware_path = dir(value).map_err(&fail)?,
            "use_firecracker" => {
                self.use_firecracker = match value.to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" | "on" => true,
                    "false" | "0" | "no" | "off" | "" => false,
                    _ => return Err(fail("expected true or false")),
                }
            }
            "stop_timeout_seconds" => self.stop_timeout_seconds = positive(value).map_err(&fail)?,
            "socket_wait_timeout_seconds" => {
                self.socket_wait_timeout_seconds = positive(value).map_err(&fail)?
            }
            "terminate_grace_period_seconds" => {
                self.terminate_grace_period_seconds = positive(value).map_err(&fail)?
            }
            "registry_connect_timeout_seconds" => {
                self.registry_connect_timeout_seconds = positive(value).map_err(&fail)?
            }
            "registry_read_timeout_seconds" => {
                self.registry_read_timeout_seconds = positive(value).map_err(&fail)?
            }
            "max_layer_bytes" => self.max_layer_bytes = positive(value).map_err(&fail)?,
            "insecure_registries" => {
                let hosts: Vec<String> = value
                    .split([',', ';'])
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .map(str::to_string)
                    .collect();
                if let Some(bad) = hosts
                    .iter()
                    .find(|h| h.contains('/') || h.contains(char::is_whitespace))
                {
                    return Err(fail(&format!("{bad:?} is not a registry host[:port]")));
                }
                self.insecure_registries = hosts;
            }
            "pool_size" => {
                let n: u64 = number(value).map_err(&fail)?;
                self.pool_size = if n == 0 {
                    default_pool_size()
                } else {
                    n as usize
                };
            }
            _ => unreachable!("every key in KEYS has a parser"),
        }
        self.sources.insert(key.name, source);
        Ok(())
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

fn value_error(key: &'static str, value: &str, origin: Source, reason: &str) -> ConfigError {
    ConfigError::Value {
        key,
        value: value.to_string(),
        origin,
        reason: reason.to_string(),
    }
}

fn flatten<'a>(prefix: &str, table: &'a toml::Table, out: &mut Vec<(String, &'a toml::Value)>) {
    for (k, v) in table {
        let name = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(inner) => flatten(&name, inner, out),
            other => out.push((name, other)),
        }
    }
}

fn dir(value: &str) -> Result<PathBuf, &'static str> {
    if value.is_empty() {
        Err("must not be empty")
    } else if !value.starts_with('/') {
        Err("must be an absolute path")
    } else {
        Ok(PathBuf::from(value))
    }
}

fn binary(value: &str) -> Result<String, &'static str> {
    if value.is_empty() {
        Err("must not be empty")
    } else {
        Ok(value.to_string())
    }
}

fn number(value: &str) -> Result<u64, &'static str> {
    value
        .parse()
        .map_err(|_| "expected a non-negative whole number")
}

fn positive(value: &str) -> Result<u64, &'static str> {
    match number(value)? {
        0 => Err("must be greater than 0"),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(
        file: Option<&str>,
        env: &[(&str, &str)],
        flags: &[(&'static str, &str)],
    ) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        if let Some(text) = file {
            std::fs::write(&path, text).unwrap();
        }
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |k: &str| env.get(k).cloned();
        Config::load(LoadOptions {
            config_path: None,
            env: &lookup,
            flags: flags.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            default_path: path,
        })
    }

    /// Three distinct valid textual values per key: (file, env, flag).
    pub(crate) fn samples(key: &str) -> [&'static str; 3] {
        match key {
            "root_dir" => ["/f/root", "/e/root", "/c/root"],
            "run_dir" => ["/f/run", "/e/run", "/c/run"],
            "log_dir" => ["/f/log", "/e/log", "/c/log"],
            "cni_conf_dir" => ["/f/cni", "/e/cni", "/c/cni"],
            "cni_bin_dir" => ["/f/bin", "/e/bin", "/c/bin"],
            "dns" => ["9.9.9.9", "1.0.0.1", "8.8.4.4"],
            "log.level" => ["debug", "warn", "error"],
            "log.max_size" => ["10", "20", "30"],
            "log.max_age" => ["1", "2", "3"],
            "log.max_backups" => ["4", "5", "6"],
            "ch_binary" => ["/f/ch", "/e/ch", "/c/ch"],
            "fc_binary" => ["/f/fc", "/e/fc", "/c/fc"],
            "firmware_path" => ["/f/CLOUDHV.fd", "/e/CLOUDHV.fd", "/c/CLOUDHV.fd"],
            "use_firecracker" => ["true", "false", "true"],
            "stop_timeout_seconds" => ["11", "12", "13"],
            "socket_wait_timeout_seconds" => ["21", "22", "23"],
            "terminate_grace_period_seconds" => ["31", "32", "33"],
            "pool_size" => ["7", "8", "9"],
            "insecure_registries" => ["reg.f:5000", "reg.e", "reg.c:80"],
            "registry_connect_timeout_seconds" => ["41", "42", "43"],
            "registry_read_timeout_seconds" => ["51", "52", "53"],
            "max_layer_bytes" => ["1048576", "2097152", "4194304"],
            other => panic!("no samples for {other}"),
        }
    }

    fn value_of(config: &Config, key: &str) -> String {
        config.get(key).unwrap_or_else(|| panic!("unknown {key}"))
    }

    fn toml_line(key: &str, value: &str) -> String {
        let (table, leaf) = match key.split_once('.') {
            Some((t, l)) => (Some(t), l),
            None => (None, key),
        };
        let literal = match key {
            "log.max_size"
            | "log.max_age"
            | "log.max_backups"
            | "stop_timeout_seconds"
            | "socket_wait_timeout_seconds"
            | "terminate_grace_period_seconds"
            | "pool_size"
            | "registry_connect_timeout_seconds"
            | "registry_read_timeout_seconds"
            | "max_layer_bytes"
            | "use_firecracker" => value.to_string(),
            _ => format!("{value:?}"),
        };
        match table {
            Some(t) => format!("[{t}]\n{leaf} = {literal}\n"),
            None => format!("{leaf} = {literal}\n"),
        }
    }

    #[test]
    fn every_key_file_then_env_then_flag() {
        for key in KEYS {
            let [file_v, env_v, flag_v] = samples(key.name);
            let file = toml_line(key.name, file_v);

            let c = load(Some(&file), &[], &[]).unwrap();
            assert_eq!(value_of(&c, key.name), file_v, "file sets {}", key.name);
            assert!(matches!(c.source_of(key.name), Source::File(_)));

            let c = load(Some(&file), &[(key.env, env_v)], &[]).unwrap();
            assert_eq!(
                value_of(&c, key.name),
                env_v,
                "{} overrides the file",
                key.env
            );
            assert_eq!(c.source_of(key.name), Source::Env(key.env));

            if let Some(flag) = key.flag {
                let c = load(Some(&file), &[(key.env, env_v)], &[(key.name, flag_v)]).unwrap();
                assert_eq!(value_of(&c, key.name), flag_v, "flag overrides {}", key.env);
                assert_eq!(c.source_of(key.name), Source::Flag(flag));
            }
        }
    }

    #[test]
    fn every_key_can_be_read_back() {
        let c = load(None, &[], &[]).unwrap();
        for key in KEYS {
            assert!(c.get(key.name).is_some(), "{}", key.name);
        }
        assert_eq!(c.get("nope"), None);
    }

    #[test]
    fn defaults() {
        let c = load(None, &[], &[]).unwrap();
        assert_eq!(c.root_dir, PathBuf::from("/var/lib/cocoon"));
        assert_eq!(c.run_dir, PathBuf::from("/var/lib/cocoon/run"));
        assert_eq!(c.log_dir, PathBuf::from("/var/log/cocoon"));
        assert_eq!(c.cni_conf_dir, PathBuf::from("/etc/cni/net.d"));
        assert_eq!(c.cni_bin_dir, PathBuf::from("/opt/cni/bin"));
        assert_eq!(
            c.dns,
            vec![IpAddr::from([8, 8, 8, 8]), IpAddr::from([1, 1, 1, 1])]
        );
        assert_eq!(c.log.level, "info");
        assert_eq!(
            (c.log.max_size, c.log.max_age, c.log.max_backups),
            (500, 28, 3)
        );
        assert_eq!(c.stop_timeout_seconds, 30);
        assert_eq!(c.socket_wait_timeout_seconds, 5);
        assert_eq!(c.terminate_grace_period_seconds, 5);
        assert_eq!(c.registry_connect_timeout_seconds, 30);
        assert_eq!(c.registry_read_timeout_seconds, 60);
        assert_eq!(c.max_layer_bytes, 64 << 30);
        assert_eq!(c.pool_size, spec::host_cpus() as usize);
        assert!(!c.use_firecracker);
        assert_eq!(c.file, None);
        assert_eq!(c.source_of("root_dir"), Source::Default);
    }

    #[test]
    fn run_dir_follows_root_dir_unless_set() {
        let c = load(None, &[("COCOON_ROOT_DIR", "/srv/cocoon")], &[]).unwrap();
        assert_eq!(c.run_dir, PathBuf::from("/srv/cocoon/run"));
        let c = load(
            None,
            &[
                ("COCOON_ROOT_DIR", "/srv/cocoon"),
                ("COCOON_RUN_DIR", "/run/cocoon"),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(c.run_dir, PathBuf::from("/run/cocoon"));
    }

    #[test]
    fn firmware_follows_root_dir_unless_set() {
        let c = load(None, &[], &[]).unwrap();
        assert_eq!(
            c.firmware_path,
            PathBuf::from("/var/lib/cocoon/firmware/CLOUDHV.fd")
        );
        let c = load(None, &[("COCOON_ROOT_DIR", "/srv/cocoon")], &[]).unwrap();
        assert_eq!(
            c.firmware_path,
            PathBuf::from("/srv/cocoon/firmware/CLOUDHV.fd")
        );
        let c = load(
            None,
            &[
                ("COCOON_ROOT_DIR", "/srv/cocoon"),
                (
                    "COCOON_FIRMWARE_PATH",
                    "/usr/share/cloudhv-efi-x86-64/CLOUDHV.fd",
                ),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(
            c.firmware_path,
            PathBuf::from("/usr/share/cloudhv-efi-x86-64/CLOUDHV.fd")
        );
        let err = load(None, &[("COCOON_FIRMWARE_PATH", "CLOUDHV.fd")], &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid firmware_path \"CLOUDHV.fd\" from environment variable COCOON_FIRMWARE_PATH: must be an absolute path"
        );
    }

    #[test]
    fn dns_as_toml_array_and_pool_size_zero() {
        let c = load(
            Some("dns = [\"9.9.9.9\", \"2001:db8::1\"]\npool_size = 0\n"),
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(c.dns.len(), 2);
        assert_eq!(c.pool_size, spec::host_cpus() as usize);
    }

    #[test]
    fn bad_values_name_key_value_and_source() {
        let err = load(None, &[("COCOON_POOL_SIZE", "lots")], &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid pool_size \"lots\" from environment variable COCOON_POOL_SIZE: expected a non-negative whole number"
        );
        let err = load(None, &[], &[("dns", "8.8.8.8,nope")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid dns \"8.8.8.8,nope\" from flag --dns: invalid DNS server \"nope\": not an IP address"
        );
        let err = load(Some("stop_timeout_seconds = 0\n"), &[], &[]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid stop_timeout_seconds \"0\" from /"),
            "{err}"
        );
        assert!(
            err.to_string()
                .ends_with("config.toml: must be greater than 0"),
            "{err}"
        );
        let err = load(None, &[("COCOON_ROOT_DIR", "relative/dir")], &[]).unwrap_err();
        assert!(
            err.to_string().ends_with("must be an absolute path"),
            "{err}"
        );
        let err = load(None, &[("COCOON_LOG_LEVEL", "loud")], &[]).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("expected trace, debug, info, warn or error"),
            "{err}"
        );
        let err = load(Some("pool_size = \"x\"\n"), &[], &[]).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Value {
                    key: "pool_size",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_and_bad_toml_are_errors() {
        let err = load(Some("root_dri = \"/x\"\n"), &[], &[]).unwrap_err();
        assert!(
            matches!(&err, ConfigError::UnknownKey { key, .. } if key == "root_dri"),
            "{err}"
        );
        let err = load(Some("[log]\nlevle = \"debug\"\n"), &[], &[]).unwrap_err();
        assert!(
            matches!(&err, ConfigError::UnknownKey { key, .. } if key == "log.levle"),
            "{err}"
        );
        let err = load(Some("root_dir = \n"), &[], &[]).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    }

    #[test]
    fn explicit_config_path_must_exist_default_may_not() {
        let lookup = |_: &str| None;
        let err = Config::load(LoadOptions {
            config_path: Some("/nonexistent/cocoon.toml".into()),
            env: &lookup,
            flags: vec![],
            default_path: "/nonexistent/default.toml".into(),
        })
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot read config file /nonexistent/cocoon.toml"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("via-env.toml");
        std::fs::write(&path, "ch_binary = \"/opt/ch\"\n").unwrap();
        let p = path.display().to_string();
        let lookup = move |k: &str| (k == CONFIG_ENV).then(|| p.clone());
        let c = Config::load(LoadOptions {
            config_path: None,
            env: &lookup,
            flags: vec![],
            default_path: "/nonexistent/default.toml".into(),
        })
        .unwrap();
        assert_eq!(c.ch_binary, "/opt/ch");
        assert_eq!(c.file.as_deref(), Some(path.as_path()));
    }
}
