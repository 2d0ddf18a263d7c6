//! Configuration precedence through the real binary: file < COCOON_* < flag,
//! for every key. Invalid values are used as probes: the error names the
//! source that won, which proves each source is wired for each key.

use cocoon_engine::config::KEYS;
use cocoon_testkit::CocoonEnv;

fn env() -> CocoonEnv {
    CocoonEnv::new(env!("CARGO_BIN_EXE_cocoon"))
}

/// Three distinct valid values per key: (file, env, flag).
fn samples(key: &str) -> [&'static str; 3] {
    match key {
        "root_dir" => ["/f/root", "/e/root", "/c/root"],
        "run_dir" => ["/f/run", "/e/run", "/c/run"],
        "log_dir" => ["/f/log", "/e/log", "/c/log"],
        "cni_conf_dir" => ["/f/cni", "/e/cni", "/c/cni"],
        "cni_bin_dir" => ["/f/bin", "/e/bin", "/c/bin"],
        "dns" => ["9.9.9.9", "1.0.0.1", "8.8.4.4"],
        "log.level" => ["debug", "trace", "debug"],
        "use_firecracker" => ["true", "false", "true"],
        "ch_binary" => ["/f/ch", "/e/ch", "/c/ch"],
        "fc_binary" => ["/f/fc", "/e/fc", "/c/fc"],
        "qemu_binary" => ["/f/qemu", "/e/qemu", "/c/qemu"],
        "qemu_accel" => ["kvm", "tcg", "auto"],
        "qemu_firmware" => ["/f/CODE.fd", "/e/CODE.fd", "/c/CODE.fd"],
        "qemu_firmware_vars" => ["/f/VARS.fd", "/e/VARS.fd", "/c/VARS.fd"],
        "default_hypervisor" => ["qemu", "firecracker", "cloud-hypervisor"],
        "firmware_path" => ["/f/fw.fd", "/e/fw.fd", "/c/fw.fd"],
        "init_binary" => ["/f/init", "/e/init", "/c/init"],
        "default_kernel" => ["6.1.0-1-cloud-amd64", "6.1.0-2-cloud-amd64", "6.12.3"],
        "insecure_registries" => ["reg.f:5000", "reg.e", "reg.c:80"],
        "jail_extra_paths" => ["/f/x", "/e/x,/e/y", "/c/x"],
        "net_scope" => ["f1", "e2", "c3"],
        _ => ["7", "8", "9"],
    }
}

fn toml_line(key: &str, value: &str) -> String {
    let literal = if value.parse::<u64>().is_ok() || value == "true" || value == "false" {
        value.to_string()
    } else {
        format!("{value:?}")
    };
    match key.split_once('.') {
        Some((table, leaf)) => format!("[{table}]\n{leaf} = {literal}\n"),
        None => format!("{key} = {literal}\n"),
    }
}

fn first_stderr_line(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// The effective value and source of `key`, from the binary's debug log.
fn effective(env: &CocoonEnv, key: &str, extra_env: &[(&str, &str)], flags: &[&str]) -> String {
    let mut cmd = env.bare_cmd();
    cmd.env("COCOON_CONFIG", env.config_path())
        .env("RUST_LOG", "debug");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    // `version` reads the configuration but touches no directory, so any path value is fine.
    let out = cmd.args(flags).arg("version").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{key}: {stderr}");
    let prefix = format!("config {key} = ");
    stderr
        .lines()
        .find_map(|l| l.split_once(&prefix).map(|(_, rest)| rest.to_string()))
        .unwrap_or_else(|| panic!("{key} not logged: {stderr}"))
}

#[test]
fn each_key_is_read_from_file_env_and_flag_in_that_order() {
    let env = env();
    for key in KEYS {
        let [file_v, env_v, flag_v] = samples(key.name);
        std::fs::write(env.config_path(), toml_line(key.name, file_v)).unwrap();
        assert_eq!(
            effective(&env, key.name, &[], &[]),
            format!("{file_v} (from {})", env.config_path().display()),
            "file sets {}",
            key.name
        );
        assert_eq!(
            effective(&env, key.name, &[(key.env, env_v)], &[]),
            format!("{env_v} (from environment variable {})", key.env),
            "{} beats the file",
            key.env
        );
        if let Some(flag) = key.flag {
            assert_eq!(
                effective(&env, key.name, &[(key.env, env_v)], &[flag, flag_v]),
                format!("{flag_v} (from flag {flag})"),
                "{flag} beats {}",
                key.env
            );
        }
    }
}

#[test]
fn invalid_values_name_their_source() {
    let env = env();
    let out = env
        .cmd()
        .env("COCOON_POOL_SIZE", "many")
        .args(["vm", "ls"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        first_stderr_line(&out),
        "Error: invalid pool_size \"many\" from environment variable COCOON_POOL_SIZE: expected a non-negative whole number"
    );
    let out = env
        .cmd()
        .env("COCOON_STOP_TIMEOUT_SECONDS", "0")
        .args(["vm", "ls"])
        .output()
        .unwrap();
    assert_eq!(
        first_stderr_line(&out),
        "Error: invalid stop_timeout_seconds \"0\" from environment variable COCOON_STOP_TIMEOUT_SECONDS: must be greater than 0"
    );
}

#[test]
fn root_dir_precedence_decides_where_state_lives() {
    let env = env();
    let file_root = env.path().join("from-file");
    let env_root = env.path().join("from-env");
    let flag_root = env.path().join("from-flag");
    std::fs::write(
        env.config_path(),
        format!("root_dir = {:?}\n", file_root.display().to_string()),
    )
    .unwrap();

    let run = |cmd: &mut assert_cmd::Command| {
        cmd.env("COCOON_CONFIG", env.config_path())
            .args(["vm", "ls"])
            .assert()
            .success();
    };
    run(&mut env.bare_cmd());
    assert!(file_root.join("cocoon.db").exists());
    run(env.bare_cmd().env("COCOON_ROOT_DIR", &env_root));
    assert!(env_root.join("cocoon.db").exists());
    run(env
        .bare_cmd()
        .env("COCOON_ROOT_DIR", &env_root)
        .arg("--root-dir")
        .arg(&flag_root));
    assert!(flag_root.join("cocoon.db").exists());
    // --config beats COCOON_CONFIG.
    let other = env.path().join("other.toml");
    let other_root = env.path().join("from-other-file");
    std::fs::write(
        &other,
        format!("root_dir = {:?}\n", other_root.display().to_string()),
    )
    .unwrap();
    env.bare_cmd()
        .env("COCOON_CONFIG", env.config_path())
        .arg("--config")
        .arg(&other)
        .args(["vm", "ls"])
        .assert()
        .success();
    assert!(other_root.join("cocoon.db").exists());
}

#[test]
fn broken_config_files_are_clear_errors() {
    let env = env();
    std::fs::write(env.config_path(), "root_dir = \n").unwrap();
    let out = env.cmd().args(["vm", "ls"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        first_stderr_line(&out).starts_with(&format!(
            "Error: config file {} is not valid TOML:",
            env.config_path().display()
        )),
        "{}",
        first_stderr_line(&out)
    );
    std::fs::write(env.config_path(), "rootdir = \"/x\"\n").unwrap();
    let out = env.cmd().args(["vm", "ls"]).output().unwrap();
    assert!(first_stderr_line(&out).starts_with(&format!(
        "Error: config file {}: unknown key \"rootdir\" (known keys: root_dir,",
        env.config_path().display()
    )));
    let out = env
        .cmd()
        .args(["--config", "/nonexistent/c.toml", "vm", "ls"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        first_stderr_line(&out),
        "Error: cannot read config file /nonexistent/c.toml: No such file or directory (os error 2)"
    );
}
