//! The parsers behind every source: the TOML file flattened to dotted keys,
//! and the one per-key parser that the file, the environment and the flags
//! all go through.

use std::path::{Path, PathBuf};

use super::{Config, ConfigError, KEYS, Source, default_pool_size, key};
use crate::spec;

impl Config {
    pub(super) fn apply_file(&mut self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.message().to_string(),
            })?;
        let mut flat = Vec::new();
        flatten("", &table, &mut flat);
        for (name, value) in flat {
            if let Some(reason) = super::keys::unsupported(&name) {
                return Err(ConfigError::Unsupported {
                    origin: Source::File(path.to_path_buf()),
                    key: name,
                    reason,
                });
            }
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
                    if matches!(key.name, "dns" | "insecure_registries" | "jail_extra_paths") =>
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
            "log.level" => self.log.level = log_level(value).map_err(&fail)?,
            "log.max_size" => self.log.max_size = number(value).map_err(&fail)?,
            "log.max_age" => self.log.max_age = number(value).map_err(&fail)?,
            "log.max_backups" => self.log.max_backups = number(value).map_err(&fail)?,
            "ch_binary" => self.ch_binary = binary(value).map_err(&fail)?,
            "fc_binary" => self.fc_binary = binary(value).map_err(&fail)?,
            "qemu_binary" => self.qemu_binary = binary(value).map_err(&fail)?,
            "qemu_accel" => self.qemu_accel = value.parse().map_err(|e: String| fail(&e))?,
            "qemu_firmware" => self.qemu_firmware = dir(value).map_err(&fail)?,
            "qemu_firmware_vars" => self.qemu_firmware_vars = dir(value).map_err(&fail)?,
            "vhost_vsock_binary" => self.vhost_vsock_binary = binary(value).map_err(&fail)?,
            "default_hypervisor" => {
                self.default_hypervisor = match value {
                    "" => None,
                    name => Some(name.parse().map_err(|e: String| fail(&e))?),
                }
            }
            "default_kernel" => {
                self.default_kernel = match value {
                    "" => String::new(),
                    release => crate::kernel::Release::parse(release)
                        .map_err(|e| fail(&e.to_string()))?
                        .to_string(),
                }
            }
            "init_binary" => {
                self.init_binary = match value {
                    "" => PathBuf::new(),
                    path => dir(path).map_err(&fail)?,
                }
            }
            "firmware_path" => self.firmware_path = dir(value).map_err(&fail)?,
            "use_firecracker" => self.use_firecracker = boolean(value).map_err(&fail)?,
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
                self.insecure_registries = registry_hosts(value).map_err(|e| fail(&e))?
            }
            "pool_size" => self.pool_size = pool_size(value).map_err(&fail)?,
            "pull_conns" => self.pull_conns = pull_conns(value).map_err(&fail)?,
            "cgroup_parent" => self.cgroup_parent = cgroup_parent(value).map_err(|e| fail(&e))?,
            "cgroup_cpus" => self.cgroup_cpus = cpu_list(value).map_err(|e| fail(&e))?,
            "jail_extra_paths" => {
                self.jail_extra_paths = plain_paths(value).map_err(|e| fail(&e))?
            }
            "net_scope" => self.net_scope = net_scope(value).map_err(&fail)?,
            _ => unreachable!("every key in KEYS has a parser"),
        }
        self.sources.insert(key.name, source);
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

fn log_level(value: &str) -> Result<String, &'static str> {
    let level = value.to_ascii_lowercase();
    if !["trace", "debug", "info", "warn", "error"].contains(&level.as_str()) {
        return Err("expected trace, debug, info, warn or error");
    }
    Ok(level)
}

fn boolean(value: &str) -> Result<bool, &'static str> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err("expected true or false"),
    }
}

/// Comma- or semicolon-separated `host[:port]`s, empty items skipped.
fn registry_hosts(value: &str) -> Result<Vec<String>, String> {
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
        return Err(format!("{bad:?} is not a registry host[:port]"));
    }
    Ok(hosts)
}

/// Absolute paths of plain components only (no `.` or `..`).
fn plain_paths(value: &str) -> Result<Vec<PathBuf>, String> {
    let paths: Vec<PathBuf> = value
        .split([',', ';'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect();
    for path in &paths {
        let mut parts = path.components();
        let plain = parts.next() == Some(std::path::Component::RootDir)
            && parts.all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain {
            return Err(format!(
                "{} is not an absolute path without . or ..",
                path.display()
            ));
        }
    }
    Ok(paths)
}

/// A worker count; 0 means one per CPU.
fn pool_size(value: &str) -> Result<usize, &'static str> {
    match number(value)? {
        0 => Ok(default_pool_size()),
        n => usize::try_from(n).map_err(|_| "too large a number of workers"),
    }
}

/// Connections per download; 0 means upstream's default, and more than
/// the cap is refused (upstream clamps silently).
fn pull_conns(value: &str) -> Result<usize, &'static str> {
    match number(value)? {
        0 => Ok(super::DEFAULT_PULL_CONNS),
        n if n > super::MAX_PULL_CONNS as u64 => Err("at most 64 connections"),
        n => usize::try_from(n).map_err(|_| "at most 64 connections"),
    }
}

/// `net_scope`: empty, or two ASCII letters or digits (upstream #196).
fn net_scope(value: &str) -> Result<String, &'static str> {
    if value.is_empty() || (value.len() == 2 && value.bytes().all(|b| b.is_ascii_alphanumeric())) {
        Ok(value.to_string())
    } else {
        Err("must be empty or two letters or digits, e.g. a1")
    }
}

fn cgroup_parent(value: &str) -> Result<PathBuf, String> {
    crate::cgroup::parse_parent(value).map_err(|e| e.to_string())
}

/// A CPU list; empty: none.
fn cpu_list(value: &str) -> Result<Option<crate::cgroup::CpuList>, String> {
    match value {
        "" => Ok(None),
        list => list.parse().map(Some),
    }
}
