//! Unit tests of configuration loading: every key from every source, the
//! order of precedence, defaults, and the errors a bad value gives.

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
        "qemu_binary" => ["/f/qemu", "/e/qemu", "/c/qemu"],
        "qemu_accel" => ["kvm", "tcg", "auto"],
        "qemu_firmware" => ["/f/CODE.fd", "/e/CODE.fd", "/c/CODE.fd"],
        "qemu_firmware_vars" => ["/f/VARS.fd", "/e/VARS.fd", "/c/VARS.fd"],
        "vhost_vsock_binary" => ["/f/vdv", "/e/vdv", "/c/vdv"],
        "default_hypervisor" => ["qemu", "firecracker", "cloud-hypervisor"],
        "firmware_path" => ["/f/CLOUDHV.fd", "/e/CLOUDHV.fd", "/c/CLOUDHV.fd"],
        "use_firecracker" => ["true", "false", "true"],
        "stop_timeout_seconds" => ["11", "12", "13"],
        "socket_wait_timeout_seconds" => ["21", "22", "23"],
        "terminate_grace_period_seconds" => ["31", "32", "33"],
        "pool_size" => ["7", "8", "9"],
        "pull_conns" => ["2", "3", "4"],
        "insecure_registries" => ["reg.f:5000", "reg.e", "reg.c:80"],
        "registry_connect_timeout_seconds" => ["41", "42", "43"],
        "registry_read_timeout_seconds" => ["51", "52", "53"],
        "max_layer_bytes" => ["1048576", "2097152", "4194304"],
        "jail_extra_paths" => ["/f/x", "/e/x,/e/y", "/c/x"],
        "net_scope" => ["f1", "e2", "c3"],
        "init_binary" => ["/f/init", "/e/init", "/c/init"],
        "default_kernel" => ["6.1.0-1-cloud-amd64", "6.1.0-2-cloud-amd64", "6.12.3"],
        "cgroup_parent" => ["f.slice", "e/vms", "c"],
        "cgroup_cpus" => ["0-1", "2,4", "0"],
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
        | "pull_conns"
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

#[test]
fn upstream_keys_not_supported_yet_are_errors_that_say_so() {
    let err = load(Some("meta_backend = \"json\"\n"), &[], &[]).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Unsupported { key, .. } if key == "meta_backend"),
        "{err}"
    );
    assert!(
        err.to_string().contains("\"meta_backend\" is upstream cocoon's key, not supported by this cocoon yet: the state is always one SQLite database"),
        "{err}"
    );
    let err = load(Some("[metering]\nbackend = \"file\"\n"), &[], &[]).unwrap_err();
    assert!(
        err.to_string()
            .contains("\"metering.backend\" is upstream cocoon's key"),
        "{err}"
    );
    let err = load(None, &[("COCOON_META_BACKEND", "sqlite")], &[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "environment variable COCOON_META_BACKEND: \"meta_backend\" is upstream cocoon's key, not supported by this cocoon yet: the state is always one SQLite database (<root_dir>/cocoon.db); remove the key"
    );
}

#[test]
fn net_scope_is_two_letters_or_digits() {
    for good in ["", "a1", "ZZ"] {
        let config = load(Some(&format!("net_scope = \"{good}\"\n")), &[], &[]).unwrap();
        assert_eq!(config.net_scope, good);
    }
    for bad in ["a", "abc", "a-", "é1"] {
        let err = load(Some(&format!("net_scope = \"{bad}\"\n")), &[], &[]).unwrap_err();
        assert!(
            err.to_string()
                .contains("must be empty or two letters or digits"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn pull_conns_defaults_to_upstreams_eight_and_refuses_more_than_64() {
    assert_eq!(load(None, &[], &[]).unwrap().pull_conns, 8);
    assert_eq!(
        load(Some("pull_conns = 0\n"), &[], &[]).unwrap().pull_conns,
        8
    );
    assert_eq!(
        load(Some("pull_conns = 64\n"), &[], &[])
            .unwrap()
            .pull_conns,
        64
    );
    let err = load(Some("pull_conns = 65\n"), &[], &[]).unwrap_err();
    assert!(err.to_string().contains("at most 64 connections"), "{err}");
}
