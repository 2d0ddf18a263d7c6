//! Every bad input of docs/reference/cocoon-v0.3.8.md §1 is refused with its exact message and the
//! usage exit code (2), before anything is created.

use cocoon_testkit::CocoonEnv;

fn env() -> CocoonEnv {
    CocoonEnv::new(env!("CARGO_BIN_EXE_cocoon"))
}

/// Runs `args`, expects exit code 2 and `first_line` as the first line of stderr.
fn refused(env: &CocoonEnv, args: &[&str], first_line: &str) {
    let out = env.cmd().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert_eq!(stderr.lines().next().unwrap_or(""), first_line, "{args:?}");
    assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
}

fn host_cpus() -> u32 {
    cocoon_engine::spec::host_cpus()
}

#[test]
fn vm_flag_values() {
    let env = env();
    let over = (host_cpus() + 1).to_string();
    let cases: Vec<(Vec<&str>, String)> = vec![
        (vec!["--name=-bad"], "error: invalid value '-bad' for '--name <NAME>': invalid VM name \"-bad\": must start with a letter or digit and contain only letters, digits, '.', '_' or '-' (at most 63 characters)".into()),
        (vec!["--name", "a/b"], "error: invalid value 'a/b' for '--name <NAME>': invalid VM name \"a/b\": must start with a letter or digit and contain only letters, digits, '.', '_' or '-' (at most 63 characters)".into()),
        (vec!["--memory", "511M"], "error: invalid value '511M' for '--memory <MEMORY>': --memory 511MiB is below the minimum of 512MiB".into()),
        (vec!["--memory", "lots"], "error: invalid value 'lots' for '--memory <MEMORY>': invalid size \"lots\": no number (examples: 512M, 1G, 1.5GiB, 20G)".into()),
        (vec!["--storage", "9G"], "error: invalid value '9G' for '--storage <STORAGE>': --storage 9GiB is below the minimum of 10GiB".into()),
        (vec!["--cpu", "0"], "error: invalid value '0' for '--cpu <CPU>': --cpu must be at least 1".into()),
        (vec!["--cpu", over.as_str()], format!("error: invalid value '{over}' for '--cpu <CPU>': --cpu {over} exceeds the {} CPUs of this host", host_cpus())),
        (vec!["--cpu", "two"], "error: invalid value 'two' for '--cpu <CPU>': \"two\" is not a whole number".into()),
        (vec!["--queue-size", "500"], "error: invalid value '500' for '--queue-size <QUEUE_SIZE>': --queue-size 500 is not a power of two between 2 and 32768".into()),
        (vec!["--disk-queue-size", "1"], "error: invalid value '1' for '--disk-queue-size <DISK_QUEUE_SIZE>': --disk-queue-size 1 is not a power of two between 2 and 32768".into()),
        (vec!["--user", "Root"], "error: invalid value 'Root' for '--user <USER>': invalid --user \"Root\": must start with a lowercase letter or '_' and contain only lowercase letters, digits, '_' or '-' (at most 32 characters)".into()),
        (vec!["--password", "a$b"], "error: invalid value 'a$b' for '--password <PASSWORD>': invalid --password: the character '$' is not allowed (rejected: ` $ ; | & ( ) { } \\ < > !)".into()),
        (vec!["--fc", "--windows"], "error: the argument '--fc' cannot be used with '--windows'".into()),
        (vec!["--qemu", "--fc"], "error: the argument '--qemu' cannot be used with '--fc'".into()),
        (vec!["--fc", "--qemu"], "error: the argument '--fc' cannot be used with '--qemu'".into()),
        (vec!["--qemu", "--windows"], "error: the argument '--qemu' cannot be used with '--windows'".into()),
        (vec!["--qemu", "--hypervisor", "qemu"], "error: the argument '--qemu' cannot be used with '--hypervisor <VMM>'".into()),
        (vec!["--hypervisor", "qemu", "--fc"], "error: the argument '--hypervisor <VMM>' cannot be used with '--fc'".into()),
        (vec!["--hypervisor", "bogus"], "error: invalid value 'bogus' for '--hypervisor <VMM>': unknown hypervisor \"bogus\": expected cloud-hypervisor (ch), firecracker (fc) or qemu".into()),
        (vec!["--hypervisor", "QEMU"], "error: invalid value 'QEMU' for '--hypervisor <VMM>': unknown hypervisor \"QEMU\": expected cloud-hypervisor (ch), firecracker (fc) or qemu".into()),
        (vec!["--bridge", "br0", "--network", "cocoon"], "error: the argument '--bridge <DEV>' cannot be used with '--network <NETWORK>'".into()),
        (vec!["--nics", "-1"], "error: unexpected argument '-1' found".into()),
    ];
    for command in ["create", "run", "debug"] {
        for (flags, message) in &cases {
            let mut args = vec!["vm", command];
            args.extend(flags);
            args.push("ghcr.io/cocoonstack/cocoon/ubuntu:24.04");
            refused(&env, &args, message);
        }
    }
    assert!(!env.root_dir().exists(), "a refused command created state");
}

#[test]
fn data_disk_specs() {
    let env = env();
    let cases = [
        ("name=x", "size= is required, e.g. size=20G"),
        ("size=8M", "size 8MiB is below the minimum of 16MiB"),
        (
            "size=1G,name=Data",
            "name \"Data\" must match [a-z][a-z0-9_-]{0,19} and must not start with \"cocoon-\"",
        ),
        (
            "size=1G,name=cocoon-db",
            "name \"cocoon-db\" must match [a-z][a-z0-9_-]{0,19} and must not start with \"cocoon-\"",
        ),
        ("size=1G,fstype=xfs", "fstype \"xfs\" is not ext4 or none"),
        (
            "size=1G,fstype=none,mount=/mnt/x",
            "fstype=none disks are not mounted, so mount= must be empty",
        ),
        (
            "size=1G,mount=data",
            "mount \"data\" must be an absolute path other than /",
        ),
        (
            "size=1G,directio=yes",
            "directio \"yes\" is not on, off or auto",
        ),
        (
            "size=1G,ro=true",
            "unknown key \"ro\" (known: size, name, fstype, mount, directio)",
        ),
        ("size=1G,size=2G", "size is given twice"),
    ];
    for (spec, reason) in cases {
        refused(
            &env,
            &["vm", "create", "--data-disk", spec, "img"],
            &format!(
                "error: invalid value '{spec}' for '--data-disk <SPEC>': invalid --data-disk \"{spec}\": {reason}"
            ),
        );
    }
    // Cross-disk rules are checked after parsing, still as usage errors.
    refused(
        &env,
        &[
            "vm",
            "create",
            "--data-disk",
            "size=1G,name=db",
            "--data-disk",
            "size=2G,name=db",
            "img",
        ],
        "Error: invalid --data-disk \"size=2G,name=db\": name \"db\" is used by another --data-disk",
    );
    refused(
        &env,
        &[
            "vm",
            "run",
            "--data-disk",
            "size=1G,mount=/srv",
            "--data-disk",
            "size=2G,mount=/srv",
            "img",
        ],
        "Error: invalid --data-disk \"size=2G,mount=/srv\": mount \"/srv\" is used by another --data-disk",
    );
    assert!(!env.root_dir().exists(), "a refused command created state");
}

#[test]
fn clone_restore_and_other_flags() {
    let env = env();
    refused(
        &env,
        &["vm", "clone", "--memory", "100M", "snap"],
        "error: invalid value '100M' for '--memory <MEMORY>': --memory 100MiB is below the minimum of 512MiB",
    );
    refused(
        &env,
        &["vm", "clone", "--bridge", "br0", "--network", "n", "snap"],
        "error: the argument '--bridge <DEV>' cannot be used with '--network <NETWORK>'",
    );
    refused(
        &env,
        &["vm", "clone", "--name", "bad name", "snap"],
        "error: invalid value 'bad name' for '--name <NAME>': invalid VM name \"bad name\": must start with a letter or digit and contain only letters, digits, '.', '_' or '-' (at most 63 characters)",
    );
    refused(
        &env,
        &["vm", "restore", "--storage", "1G", "vm", "snap"],
        "error: invalid value '1G' for '--storage <STORAGE>': --storage 1GiB is below the minimum of 10GiB",
    );
    refused(
        &env,
        &["vm", "restore", "vm"],
        "error: the following required arguments were not provided:",
    );
    refused(
        &env,
        &["vm", "console", "--escape-char", "^M", "vm"],
        "error: invalid value '^M' for '--escape-char <ESCAPE_CHAR>': invalid escape character \"^M\": use a single ASCII character or caret notation such as ^] or ^a",
    );
    refused(
        &env,
        &["vm", "stop", "--timeout", "-3", "vm"],
        "error: unexpected argument '-3' found",
    );
    refused(
        &env,
        &["vm", "start"],
        "error: the following required arguments were not provided:",
    );
    refused(
        &env,
        &["vm", "list", "-o", "yaml"],
        "error: invalid value 'yaml' for '--format <FORMAT>'",
    );
    refused(
        &env,
        &["snapshot", "save", "--name", "a b", "vm"],
        "error: invalid value 'a b' for '--name <NAME>': invalid snapshot name \"a b\": must start with a letter or digit and contain only letters, digits, '.', '_' or '-' (at most 63 characters)",
    );
    refused(
        &env,
        &["image", "pull"],
        "error: the following required arguments were not provided:",
    );
    refused(
        &env,
        &["image", "rm"],
        "error: the following required arguments were not provided:",
    );
    refused(
        &env,
        &["completion", "tcsh"],
        "error: invalid value 'tcsh' for '<SHELL>'",
    );
    refused(
        &env,
        &["vm", "frobnicate"],
        "error: unrecognized subcommand 'frobnicate'",
    );
    refused(
        &env,
        &["--dns", "8.8.8.8,dns.google", "vm", "ls"],
        "Error: invalid dns \"8.8.8.8,dns.google\" from flag --dns: invalid DNS server \"dns.google\": not an IP address",
    );
    refused(
        &env,
        &["--log-level", "loud", "vm", "ls"],
        "Error: invalid log.level \"loud\" from flag --log-level: expected trace, debug, info, warn or error",
    );
    refused(
        &env,
        &["--root-dir", "relative", "vm", "ls"],
        "Error: invalid root_dir \"relative\" from flag --root-dir: must be an absolute path",
    );
}

#[test]
fn help_and_examples() {
    let env = env();
    for args in [
        &["--help"][..],
        &["vm", "run", "--help"],
        &["snapshot", "export", "--help"],
        &["image", "pull", "--help"],
    ] {
        let out = env.cmd().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        let help = String::from_utf8(out.stdout).unwrap();
        assert!(help.contains("Examples:"), "{args:?} has no examples");
    }
    let out = env.cmd().arg("--help").output().unwrap();
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("Exit codes: 0 success, 1 error, 2 usage error")
    );
}
