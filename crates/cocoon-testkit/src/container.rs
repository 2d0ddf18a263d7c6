//! Container images for tests (issue #18): a busybox userland as OCI
//! layers, cocoon-init built static from this workspace, and Debian's cloud
//! kernel package that `cocoon kernel install --deb` installs.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::registry::layers::LayerBuilder;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The applets the test images link to busybox.
const APPLETS: &[&str] = &[
    "sh",
    "cat",
    "echo",
    "env",
    "id",
    "pwd",
    "ls",
    "sleep",
    "hostname",
    "tty",
    "stty",
    "uname",
    "sha256sum",
    "head",
    "wc",
    "ip",
    "ping",
    "true",
    "false",
    "kill",
    "ps",
];

/// cocoon-init, built once per workspace state as the static binary the
/// initramfs needs (`-C target-feature=+crt-static` on the host's gnu
/// target, its own target directory so the test build is untouched).
/// Concurrent tests wait on a lock for the one build.
pub fn init_binary() -> Result<PathBuf, String> {
    let target = workspace().join("target");
    std::fs::create_dir_all(&target).map_err(|e| e.to_string())?;
    let lock =
        std::fs::File::create(target.join(".cocoon-init-build.lock")).map_err(|e| e.to_string())?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| e.to_string())?;
    let triple = "x86_64-unknown-linux-gnu";
    let out = Command::new(env!("CARGO"))
        .args([
            "build",
            "-q",
            "--locked",
            "-p",
            "cocoon-init",
            "--release",
            "--target",
            triple,
        ])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(workspace())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building cocoon-init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(target.join(triple).join("release/cocoon-init"))
}

/// The Debian kernel package scripts/fetch-test-assets.sh keeps.
pub fn kernel_deb() -> Result<PathBuf, String> {
    let dir = crate::linux_guest::assets_dir().join("debs");
    std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("linux-image-") && n.ends_with(".deb"))
        })
        .ok_or_else(|| format!("no linux-image-*.deb in {}", dir.display()))
}

/// A busybox userland (static, from Debian's busybox-static) with a root
/// and an `app` (1000:1000, in group `staff` 50) user: one layer.
pub fn busybox_layer() -> Result<Vec<u8>, String> {
    let busybox = crate::linux_guest::assets_dir().join("debian-busybox/bin/busybox");
    let binary = std::fs::read(&busybox).map_err(|e| format!("{}: {e}", busybox.display()))?;
    let mut layer = LayerBuilder::new()
        .dir("bin/")
        .dir("etc/")
        .dir("tmp/")
        .dir("root/")
        .dir("home/")
        .dir("home/app/")
        .file_mode("bin/busybox", 0o755, &binary)
        .file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
        )
        .file("etc/group", b"root:x:0:\nstaff:x:50:app\napp:x:1000:\n");
    for applet in APPLETS {
        layer = layer.symlink(&format!("bin/{applet}"), "busybox");
    }
    Ok(layer.build())
}
