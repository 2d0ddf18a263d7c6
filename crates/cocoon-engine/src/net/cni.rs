//! CNI plugin invocation per the CNI spec (1.0/1.1): a network is a
//! `*.conflist`; each plugin is executed with the `CNI_*` variables of this
//! call only (never the process environment, which is shared by threads) and
//! its configuration on stdin, chaining `prevResult`. No crate does this
//! without setting process-wide variables, hence this module.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use super::NetError;
use crate::model::IpConfig;

/// How long one plugin may take for one ADD/DEL. The reference plugins
/// answer in milliseconds; one that hangs (an IPAM lock held by a dead
/// process, a stuck iptables) must fail the VM's operation, not hold its lock.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether `kind` can name a plugin: the CNI spec's `type` is the name of an
/// executable in the plugin directories, so nothing that could step out of
/// them (`/`, `..`, a leading `.`) and nothing but a plain file name.
fn is_plugin_name(kind: &str) -> bool {
    !kind.is_empty()
        && kind.len() <= 255
        && !kind.starts_with('.')
        && kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// One network configuration list.
#[derive(Debug, Clone)]
pub struct ConfList {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Value>,
    pub path: PathBuf,
}

/// Every `*.conflist` in `dir`, sorted by file name (the first is the default).
pub fn load(dir: &Path) -> Result<Vec<ConfList>, NetError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(source) => {
            return Err(NetError::ConfDir {
                dir: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "conflist"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let bad = |reason: String| NetError::BadConfList {
                path: path.clone(),
                reason,
            };
            let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
            let doc: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
            let name = doc["name"]
                .as_str()
                .ok_or_else(|| bad("no \"name\"".into()))?
                .to_string();
            let plugins = doc["plugins"]
                .as_array()
                .filter(|p| !p.is_empty())
                .ok_or_else(|| bad("no \"plugins\"".into()))?
                .clone();
            for (i, plugin) in plugins.iter().enumerate() {
                match plugin["type"].as_str() {
                    Some(kind) if is_plugin_name(kind) => {}
                    Some(kind) => {
                        return Err(bad(format!(
                            "plugin {} has type {kind:?}: a plugin type is a file name in the plugin directories (letters, digits, '.', '_', '-', not starting with '.')",
                            i + 1
                        )));
                    }
                    None => return Err(bad(format!("plugin {} has no \"type\"", i + 1))),
                }
            }
            Ok(ConfList {
                name,
                cni_version: doc["cniVersion"].as_str().unwrap_or("1.0.0").to_string(),
                plugins,
                path: path.clone(),
            })
        })
        .collect()
}

/// The list named `name`, or the first one when `name` is empty.
pub fn pick(lists: Vec<ConfList>, name: &str, dir: &Path) -> Result<ConfList, NetError> {
    if lists.is_empty() {
        return Err(NetError::NoNetworks {
            dir: dir.to_path_buf(),
        });
    }
    if name.is_empty() {
        return Ok(lists.into_iter().next().expect("non-empty"));
    }
    let names: Vec<String> = lists.iter().map(|l| l.name.clone()).collect();
    lists
        .into_iter()
        .find(|l| l.name == name)
        .ok_or_else(|| NetError::UnknownNetwork {
            name: name.to_string(),
            available: names.join(", "),
        })
}

/// One ADD/DEL/CHECK for one interface of one container (VM).
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
    /// `CNI_ARGS`, e.g. `IgnoreUnknown=1;IP=10.88.0.5`.
    pub args: Option<String>,
    pub bin_dirs: &'a [PathBuf],
}

/// ADD through every plugin in order; returns the final result.
pub fn add(list: &ConfList, call: &Call<'_>) -> Result<Value, NetError> {
    let mut prev: Option<Value> = None;
    for plugin in &list.plugins {
        let result = exec(list, plugin, "ADD", call, prev.as_ref())?;
        prev = Some(result);
    }
    Ok(prev.unwrap_or(Value::Null))
}

/// DEL through every plugin in reverse, with the cached ADD result. Every
/// plugin is called even if one fails (a DEL must release what it can); the
/// first error is returned.
pub fn del(list: &ConfList, call: &Call<'_>, cached: Option<&Value>) -> Result<(), NetError> {
    let mut first_error = None;
    for plugin in list.plugins.iter().rev() {
        if let Err(e) = exec(list, plugin, "DEL", call, cached) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The first of `dirs` holding plugin `kind` (also what `cocoon doctor` checks).
pub fn find_plugin(kind: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    if !is_plugin_name(kind) {
        return None;
    }
    dirs.iter().map(|d| d.join(kind)).find(|p| p.is_file())
}

fn exec(
    list: &ConfList,
    plugin: &Value,
    command: &str,
    call: &Call<'_>,
    prev: Option<&Value>,
) -> Result<Value, NetError> {
    let kind = plugin["type"].as_str().unwrap_or_default().to_string();
    let binary = find_plugin(&kind, call.bin_dirs).ok_or_else(|| NetError::PluginNotFound {
        plugin: kind.clone(),
        dirs: call
            .bin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })?;
    let mut config = plugin.clone();
    config["name"] = json!(list.name);
    config["cniVersion"] = json!(list.cni_version);
    if let Some(prev) = prev {
        config["prevResult"] = prev.clone();
    }
    let path = call
        .bin_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let mut cmd = Command::new(&binary);
    cmd.env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", call.container_id)
        .env("CNI_NETNS", call.netns)
        .env("CNI_IFNAME", call.ifname)
        .env("CNI_PATH", path)
        // Plugins run iptables and friends.
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        );
    if let Some(args) = &call.args {
        cmd.env("CNI_ARGS", args);
    }
    let failed = |msg: String| NetError::Plugin {
        plugin: kind.clone(),
        command: command.to_string(),
        ifname: call.ifname.to_string(),
        msg,
    };
    let output = crate::process::output_with_timeout(
        &mut cmd,
        config.to_string().as_bytes(),
        PLUGIN_TIMEOUT,
    )
    .map_err(|e| failed(format!("{}: {e}", binary.display())))?;
    let stdout: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    if !output.status.success() {
        let msg = match (&stdout["msg"], &stdout["details"]) {
            (Value::String(m), Value::String(d)) if !d.is_empty() => format!("{m}: {d}"),
            (Value::String(m), _) => m.clone(),
            _ => {
                let err = String::from_utf8_lossy(&output.stderr).trim().to_string();
                format!("{} {err}", output.status)
            }
        };
        return Err(failed(msg));
    }
    Ok(stdout)
}

/// The first IPv4 address of a CNI result; None means the network gave none
/// (the guest then uses DHCP).
pub fn ipv4_of(result: &Value) -> Option<IpConfig> {
    result["ips"].as_array()?.iter().find_map(|ip| {
        let address = ip["address"].as_str()?;
        let (addr, prefix) = address.split_once('/')?;
        let addr: std::net::Ipv4Addr = addr.parse().ok()?;
        Some(IpConfig {
            ip: addr.to_string(),
            gateway: ip["gateway"].as_str().unwrap_or_default().to_string(),
            prefix: prefix.parse().ok()?,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_ipv4_of_a_result() {
        let result = json!({"cniVersion": "1.0.0", "ips": [
            {"address": "fd00::5/64", "gateway": "fd00::1"},
            {"address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 0}
        ]});
        assert_eq!(
            ipv4_of(&result),
            Some(IpConfig {
                ip: "10.88.0.5".into(),
                gateway: "10.88.0.1".into(),
                prefix: 16
            })
        );
        assert_eq!(ipv4_of(&json!({"ips": []})), None);
        assert_eq!(ipv4_of(&json!({})), None);
    }

    #[test]
    fn conflists_load_sorted_and_pick_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("20-b.conflist"),
            r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("10-a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"loopback"}]}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("ignored.conf"), "{}").unwrap();
        let lists = load(dir.path()).unwrap();
        assert_eq!(
            lists.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(pick(lists.clone(), "", dir.path()).unwrap().name, "a");
        assert_eq!(pick(lists.clone(), "b", dir.path()).unwrap().name, "b");
        let err = pick(lists, "c", dir.path()).unwrap_err().to_string();
        assert!(err.contains("\"c\"") && err.contains("a, b"), "{err}");
        std::fs::write(dir.path().join("30-bad.conflist"), "{").unwrap();
        assert!(
            load(dir.path())
                .unwrap_err()
                .to_string()
                .contains("30-bad.conflist")
        );
    }

    /// A plugin type that would run a program outside the plugin directories
    /// is refused when the list is read, and the program never runs.
    #[test]
    fn plugin_types_that_leave_the_plugin_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("net.d");
        let bins = dir.path().join("bin");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::create_dir_all(&bins).unwrap();
        let ran = dir.path().join("ran");
        let evil = dir.path().join("evil");
        std::fs::write(&evil, format!("#!/bin/sh\ntouch {}\n", ran.display())).unwrap();
        std::fs::set_permissions(&evil, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        for kind in ["../evil", "/bin/sh", ".hidden", "a/b", "", "bridge\u{0}x"] {
            std::fs::write(
                conf.join("10-x.conflist"),
                json!({"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "loopback"}, {"type": kind}]})
                    .to_string(),
            )
            .unwrap();
            let err = load(&conf).unwrap_err().to_string();
            assert_eq!(
                err,
                format!(
                    "bad CNI network list {}: plugin 2 has type {kind:?}: a plugin type is a file name in the plugin directories (letters, digits, '.', '_', '-', not starting with '.')",
                    conf.join("10-x.conflist").display()
                )
            );
            assert_eq!(find_plugin(kind, std::slice::from_ref(&bins)), None);
        }
        std::fs::write(
            conf.join("10-x.conflist"),
            r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"loopback"},{}]}"#,
        )
        .unwrap();
        assert!(
            load(&conf)
                .unwrap_err()
                .to_string()
                .ends_with("plugin 2 has no \"type\"")
        );
        assert!(
            !ran.exists(),
            "the program outside the plugin directories ran"
        );
    }
}
