//! Which backend a new VM gets, and how QEMU is launched, as `vm debug`
//! prints it: `default_hypervisor` picks the backend unless a flag does,
//! `qemu_binary` and `qemu_accel` shape QEMU's command line. Nothing here
//! runs a VMM (`vm debug` only plans); the image is the test guest's.

use cocoon_testkit::{CocoonEnv, debug_launch_argv};

/// An installation with the test guest imported as `test/guest:1`, and
/// `config` (TOML) as its config file.
fn env_with(config: &str) -> CocoonEnv {
    let env = CocoonEnv::new(env!("CARGO_BIN_EXE_cocoon"));
    let layer = cocoon_testkit::guest::boot_layer("6.1", b"initrd").build();
    let tar = env.path().join("layer.tar");
    std::fs::write(&tar, layer).unwrap();
    let out = env
        .cmd()
        .args(["image", "import", "test/guest:1"])
        .arg(&tar)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(env.config_path(), config).unwrap();
    env
}

/// `vm debug --nics 0 --name d FLAGS test/guest:1`: its script.
fn debug(env: &CocoonEnv, flags: &[&str]) -> String {
    let mut cmd = env.cmd();
    cmd.args(["vm", "debug", "--nics", "0", "--name", "d"])
        .args(flags)
        .arg("test/guest:1");
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "vm debug {flags:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The backend the script's `# Launch VM: d (<backend>)` line names.
fn backend_of(script: &str) -> &str {
    script
        .lines()
        .find_map(|l| l.strip_prefix("# Launch VM: d ("))
        .and_then(|l| l.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no launch line in:\n{script}"))
}

/// The value after `flag` in `argv` (which has it once).
fn value<'a>(argv: &'a [String], flag: &str) -> &'a str {
    let at: Vec<usize> = (0..argv.len()).filter(|&i| argv[i] == flag).collect();
    assert_eq!(at.len(), 1, "{flag} in {argv:?}");
    &argv[at[0] + 1]
}

#[test]
fn default_hypervisor_picks_qemu_and_a_flag_overrides_it() {
    let env = env_with(
        "default_hypervisor = \"qemu\"\nqemu_binary = \"/opt/qemu/bin/qemu-system-x86_64\"\nqemu_accel = \"kvm\"\n",
    );
    let script = debug(&env, &[]);
    assert_eq!(backend_of(&script), "qemu");
    let argv = debug_launch_argv(&script);
    assert_eq!(argv[0], "/opt/qemu/bin/qemu-system-x86_64");
    let id = value(&argv, "-name")
        .strip_prefix("cocoon-")
        .and_then(|v| v.strip_suffix(",debug-threads=on"))
        .unwrap();
    let run_dir = env.root_dir().join("run/vms").join(id);
    // The first chardev is QMP's, on the VM's API socket.
    let chardev = argv.iter().position(|a| a == "-chardev").unwrap();
    assert_eq!(
        argv[chardev + 1],
        format!(
            "socket,id=qmp,server=on,wait=off,path={}",
            run_dir.join("api.sock").display()
        )
    );
    // The launch runs in the background with the guest running (nothing to
    // plug first: no `-S`, no `cont`); QMP sets the balloon (a quarter of
    // the 1 GiB).
    let lines: Vec<&str> = script.lines().collect();
    assert!(lines[lines.len() - 2].ends_with(" -nodefaults -no-user-config &"));
    assert_eq!(
        lines[lines.len() - 1],
        format!(
            r#"printf '%s\n' '{{"execute":"qmp_capabilities"}}' '{{"execute":"balloon","arguments":{{"value":805306368}}}}' | socat - UNIX-CONNECT:{}"#,
            run_dir.join("api.sock").display()
        )
    );

    // A flag beats the configuration.
    for (flags, backend, binary) in [
        (
            &["--hypervisor", "ch"][..],
            "cloud-hypervisor",
            "cloud-hypervisor",
        ),
        (
            &["--hypervisor", "cloud-hypervisor"][..],
            "cloud-hypervisor",
            "cloud-hypervisor",
        ),
        (&["--fc"][..], "firecracker", "firecracker"),
        (&["--hypervisor", "fc"][..], "firecracker", "firecracker"),
        (&["--qemu"][..], "qemu", "/opt/qemu/bin/qemu-system-x86_64"),
    ] {
        let script = debug(&env, flags);
        assert_eq!(backend_of(&script), backend, "{flags:?}");
        assert_eq!(debug_launch_argv(&script)[0], binary, "{flags:?}");
    }
}

#[test]
fn default_hypervisor_wins_over_use_firecracker() {
    let env = env_with("use_firecracker = true\n");
    assert_eq!(backend_of(&debug(&env, &[])), "firecracker");
    std::fs::write(
        env.config_path(),
        "use_firecracker = true\ndefault_hypervisor = \"qemu\"\n",
    )
    .unwrap();
    let script = debug(&env, &[]);
    assert_eq!(backend_of(&script), "qemu");
    assert_eq!(debug_launch_argv(&script)[0], "qemu-system-x86_64");
    // Neither key: the first VMM installed (here QEMU only), else Cloud Hypervisor.
    std::fs::write(
        env.config_path(),
        "ch_binary = \"/nonexistent/ch\"\nfc_binary = \"/nonexistent/fc\"\n",
    )
    .unwrap();
    assert_eq!(backend_of(&debug(&env, &[])), "qemu");
    std::fs::write(env.config_path(), "ch_binary = \"/bin/true\"\n").unwrap();
    assert_eq!(backend_of(&debug(&env, &[])), "cloud-hypervisor");
}

#[test]
fn qemu_accel_shapes_the_machine_and_cpu() {
    let env = env_with("qemu_accel = \"tcg\"\n");
    let script = debug(&env, &["--qemu"]);
    assert!(
        script.contains(
            " -machine microvm,pcie=on,accel=tcg,mem-merge=off -cpu max -bios qboot.rom "
        ),
        "{script}"
    );
    let argv = debug_launch_argv(&script);
    assert_eq!(
        value(&argv, "-machine"),
        "microvm,pcie=on,accel=tcg,mem-merge=off"
    );
    assert_eq!(value(&argv, "-cpu"), "max");

    std::fs::write(env.config_path(), "qemu_accel = \"kvm\"\n").unwrap();
    let argv = debug_launch_argv(&debug(&env, &["--qemu"]));
    assert_eq!(
        value(&argv, "-machine"),
        "microvm,pcie=on,accel=kvm,mem-merge=off"
    );
    assert_eq!(value(&argv, "-cpu"), "max,-arch-capabilities");

    // The environment beats the file.
    let mut cmd = env.cmd();
    cmd.env("COCOON_QEMU_ACCEL", "tcg").args([
        "vm",
        "debug",
        "--nics",
        "0",
        "--qemu",
        "test/guest:1",
    ]);
    let out = cmd.output().unwrap();
    assert!(out.status.success());
    let argv = debug_launch_argv(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(
        value(&argv, "-machine"),
        "microvm,pcie=on,accel=tcg,mem-merge=off"
    );
}

/// `--no-hotplug`: QEMU's machine without PCIe and without the hot-plug
/// root ports a QEMU VM otherwise gets (8).
#[test]
fn no_hotplug_leaves_out_the_root_ports_and_pcie() {
    let env = env_with("qemu_accel = \"kvm\"\n");
    let root_ports = |argv: &[String]| {
        argv.iter()
            .filter(|a| a.starts_with("pcie-root-port,"))
            .count()
    };
    let argv = debug_launch_argv(&debug(&env, &["--qemu"]));
    assert_eq!(
        value(&argv, "-machine"),
        "microvm,pcie=on,accel=kvm,mem-merge=off"
    );
    assert_eq!(root_ports(&argv), 8, "{argv:?}");

    let argv = debug_launch_argv(&debug(&env, &["--qemu", "--no-hotplug"]));
    assert_eq!(value(&argv, "-machine"), "microvm,accel=kvm,mem-merge=off");
    assert_eq!(root_ports(&argv), 0, "{argv:?}");
    assert!(!argv.iter().any(|a| a.contains("pcie")), "{argv:?}");
}
