//! The guest contract (reference/guest-contract.md) proven with a real Linux
//! boot: the Linux test image is imported, `cocoon vm create` records disks
//! and a command line for each backend, and qemu (TCG; this machine's PVM
//! KVM runs no stock kernel under CH or FC) boots exactly those. The guest
//! must come up on the overlay of the layers, without the file an upper
//! layer deleted, and its writes must land on the COW disk.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cocoon_testkit::CocoonEnv;
use cocoon_testkit::linux_guest::{self, qemu};
use serde_json::Value;

/// TCG on two shared cores: a boot takes seconds, a stuck one must not take minutes.
const BOOT_LIMIT: Duration = Duration::from_secs(100);

fn bin() -> String {
    cocoon_testkit::cocoon_bin()
}

fn cocoon(env: &CocoonEnv, args: &[&str]) -> String {
    let out = env.std_cmd().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "cocoon {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn debugfs() -> Option<PathBuf> {
    cocoon_testkit::real_vmm("COCOON_DEBUGFS_BINARY", "debugfs")
        .or_else(|| Some(PathBuf::from("/usr/sbin/debugfs")).filter(|p| p.is_file()))
        .or_else(|| Some(PathBuf::from("/sbin/debugfs")).filter(|p| p.is_file()))
}

/// A file's content on an (unmounted) ext4 image, None if it is not there.
fn read_ext4(debugfs: &Path, image: &Path, file: &str) -> Option<String> {
    let out = Command::new(debugfs)
        .arg("-R")
        .arg(format!("cat {file}"))
        .arg(image)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "debugfs on {}: {stderr}",
        image.display()
    );
    (!stderr.contains("not found")).then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Boots the Linux test image the way `cocoon vm create [--fc]` records it.
fn boots_under(test: &str, create_flags: &[&str], hypervisor: &str) {
    let Some(qemu_bin) = qemu::binary() else {
        cocoon_testkit::skip(
            test,
            "qemu-system-x86_64 not found (apt-get install qemu-system-x86)",
        );
        return;
    };
    let assets = match linux_guest::Assets::find() {
        Ok(assets) => assets,
        Err(why) => {
            cocoon_testkit::skip(test, &format!("{why}: run scripts/fetch-test-assets.sh"));
            return;
        }
    };
    let Some(debugfs) = debugfs() else {
        cocoon_testkit::skip(test, "debugfs not found (apt-get install e2fsprogs)");
        return;
    };

    let env = CocoonEnv::new(bin());
    let layers = linux_guest::layer_tars(&assets);
    let mut import = vec!["image", "import", "test/linux:1"];
    import.extend(layers.iter().map(|p| p.to_str().unwrap()));
    cocoon(&env, &import);
    let mut create = vec!["vm", "create", "--nics", "0", "--name", "guest"];
    create.extend_from_slice(create_flags);
    create.push("test/linux:1");
    cocoon(&env, &create);
    let vm: Value = serde_json::from_str(&cocoon(&env, &["vm", "inspect", "guest"])).unwrap();
    assert_eq!(vm["hypervisor"], hypervisor);

    let boot = qemu::Boot::from_inspect(&vm);
    let roles: Vec<&str> = boot.disks.iter().map(|d| d.role.as_str()).collect();
    assert_eq!(roles, ["layer", "layer", "layer", "cow"], "{vm:#}");
    let console_log = env.path().join("console.log");
    let outcome = boot.run(&qemu_bin, &console_log, BOOT_LIMIT);
    eprintln!(
        "{test}: qemu ran {:.1} s; console:\n{}",
        outcome.elapsed.as_secs_f64(),
        outcome.console
    );
    let context = format!(
        "cmdline: {}\nqemu exit: {:?}\nqemu output: {}\nconsole:\n{}",
        boot.cmdline, outcome.exit_status, outcome.qemu_output, outcome.console
    );

    let console = &outcome.console;
    assert!(
        !console.contains(linux_guest::PANIC_MARKER),
        "the initramfs gave up\n{context}"
    );
    assert!(
        console.contains(linux_guest::READY_MARKER),
        "no ready marker\n{context}"
    );
    let lines: Vec<&str> = console.lines().map(str::trim_end).collect();
    let reported = |key: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("the guest did not report {key}\n{context}"))
    };
    // qemu passed the engine's command line on untouched.
    assert_eq!(reported("cmdline"), boot.cmdline, "{context}");
    assert_eq!(reported("doomed"), "absent", "{context}");
    assert_eq!(reported("top-layer"), linux_guest::TOP_LAYER, "{context}");
    assert_eq!(
        reported("added-by-upper"),
        linux_guest::ADDED_CONTENT,
        "{context}"
    );
    assert!(console.contains(linux_guest::DONE_MARKER), "{context}");
    assert!(
        outcome.exit_status.is_some_and(|s| s.success()),
        "the guest did not power off within {BOOT_LIMIT:?}\n{context}"
    );

    let cow = &boot.disks.iter().find(|d| d.role == "cow").unwrap().path;
    let written = format!("/upper{}", linux_guest::WRITTEN_FILE);
    assert_eq!(
        read_ext4(&debugfs, cow, &written).as_deref(),
        Some(linux_guest::WRITTEN_CONTENT),
        "{written} on the COW disk {}\n{context}",
        cow.display()
    );
    // The whiteout the guest saw came from the layers, not from a deletion.
    let deleted = format!("/upper{}", linux_guest::DELETED_FILE);
    assert_eq!(read_ext4(&debugfs, cow, &deleted), None, "{context}");
}

#[test]
fn linux_boots_from_cloud_hypervisor_disks_and_command_line() {
    boots_under(
        "linux_boots_from_cloud_hypervisor_disks_and_command_line",
        &["--hypervisor", "cloud-hypervisor"],
        "cloud-hypervisor",
    );
}

#[test]
fn linux_boots_from_firecracker_disks_and_command_line() {
    boots_under(
        "linux_boots_from_firecracker_disks_and_command_line",
        &["--fc"],
        "firecracker",
    );
}
