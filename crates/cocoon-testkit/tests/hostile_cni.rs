//! Hostile input: a CNI network list whose plugin `type` names a program
//! outside the plugin directories (`../evil`, `/bin/sh`). `cocoon vm create`
//! through the real CLI (fake VMMs) refuses the list by name before any
//! plugin runs or any network namespace is made: the planted program never
//! runs, no VM is recorded, no VM directory is left, and a sentinel tree
//! beside `root_dir` is unchanged. (Host-wide `ip netns` lists are not
//! compared: other tests make `cocoon-*` namespaces at the same time.)

mod hostile_support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cocoon_testkit::CocoonEnv;
use hostile_support::{assert_success, assert_unchanged, plant, snapshot};

const FAKE: &str = env!("CARGO_BIN_EXE_fake-vmm");

/// Runs `vm create --nics 1` against a conflist whose only plugin has type
/// `kind`; asserts the exact refusal, that `marker` never appears, and that
/// nothing was recorded, made or changed.
fn refused(kind: &str) {
    if !nix_free_is_root() {
        return cocoon_testkit::skip("hostile_cni", "network namespaces need root");
    }
    let env = CocoonEnv::new(cocoon_testkit::cocoon_bin());
    // The image first (its source file outside the sentinel tree).
    let sources = tempfile::tempdir().unwrap();
    let layer = sources.path().join("layer.tar");
    std::fs::write(
        &layer,
        cocoon_testkit::guest::boot_layer("6.1", b"initrd")
            .file("etc/os-release", b"ID=test\n")
            .build(),
    )
    .unwrap();
    let out = env
        .fake_vmm_cmd(FAKE)
        .args(["image", "import", "test/guest:1"])
        .arg(&layer)
        .output()
        .unwrap();
    assert_success(&out);

    // `<plugins>/bin` is the plugin directory; `<plugins>/evil` is where
    // `../evil` resolves from it, a program that leaves a marker if run.
    let beside = env.path().to_path_buf();
    let plugins = beside.join("plugins");
    let bin_dir = plugins.join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let marker = plugins.join("ran");
    let evil = plugins.join("evil");
    std::fs::write(
        &evil,
        format!("#!/bin/sh\necho ran > {}\necho '{{}}'\n", marker.display()),
    )
    .unwrap();
    std::fs::set_permissions(&evil, std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf_dir = beside.join("cni");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let conflist = conf_dir.join("10-evil.conflist");
    std::fs::write(
        &conflist,
        serde_json::to_vec(&serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "evil",
            "plugins": [{"type": kind}],
        }))
        .unwrap(),
    )
    .unwrap();
    plant(&beside);
    let skip: Vec<PathBuf> = vec![env.root_dir(), env.log_dir()];
    let before = snapshot(&beside, &skip);

    let out = env
        .fake_vmm_cmd(FAKE)
        .env("COCOON_CNI_CONF_DIR", &conf_dir)
        .env("COCOON_CNI_BIN_DIR", &bin_dir)
        .args([
            "vm",
            "create",
            "--nics",
            "1",
            "--name",
            "victim",
            "test/guest:1",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let expected = format!(
        "bad CNI network list {}: plugin 1 has type {kind:?}: a plugin type is a file name in the plugin directories (letters, digits, '.', '_', '-', not starting with '.')",
        conflist.display()
    );
    assert!(
        stderr.contains(&expected),
        "expected {expected:?} in {stderr}"
    );

    assert!(
        !marker.exists(),
        "the plugin outside the plugin directory ran"
    );
    let out = env
        .fake_vmm_cmd(FAKE)
        .args(["vm", "ls", "-o", "json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    let after = snapshot(&beside, &skip);
    assert_unchanged(&before, &after);
    assert_no_vm_dirs(&env.root_dir());
}

fn nix_free_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// No run or data directory of a VM was left under `root`.
fn assert_no_vm_dirs(root: &Path) {
    for dir in ["vms", "run/vms"] {
        let path = root.join(dir);
        if let Ok(entries) = std::fs::read_dir(&path) {
            let left: Vec<_> = entries.flatten().map(|e| e.file_name()).collect();
            assert!(left.is_empty(), "{}: {left:?}", path.display());
        }
    }
}

#[test]
fn a_plugin_type_that_climbs_out_of_the_plugin_directory_never_runs() {
    refused("../evil");
}

#[test]
fn a_plugin_type_that_is_an_absolute_path_never_runs() {
    refused("/bin/sh");
}
