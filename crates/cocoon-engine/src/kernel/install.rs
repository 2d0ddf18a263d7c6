//! `cocoon kernel install`: Debian's kernel package, fetched with
//! `apt-get download` (the host's own sources and keys verify it) or given
//! as a `.deb`, unpacked with `dpkg-deb -x` into a staging directory —
//! never installed on the host — and renamed into `kernels/<release>/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Installed, KernelError, Kernels, Release, io};
use crate::image::vmlinux;
use crate::process::{self, RunError};

/// The metapackage that names the current cloud kernel.
pub const DEFAULT_PACKAGE: &str = "linux-image-cloud-amd64";

fn run(what: &str, cmd: &mut Command) -> Result<Vec<u8>, KernelError> {
    process::run(cmd).map_err(|e| {
        KernelError::Install(match e {
            RunError::Spawn(e) => {
                format!("cannot run {what}: {e} (this needs Debian's apt and dpkg)")
            }
            RunError::Failed(out) => format!("{what} failed: {out}"),
        })
    })
}

/// Downloads and installs `package` (a metapackage is resolved to the
/// kernel package it depends on).
pub fn install_package(kernels: &Kernels, package: &str) -> Result<Installed, KernelError> {
    if package.is_empty()
        || !package
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+-".contains(c))
    {
        return Err(KernelError::Install(format!(
            "{package:?} is not a Debian package name"
        )));
    }
    let real = real_package(package)?;
    let staging = Staging::new(kernels, "download")?;
    run(
        "apt-get download",
        Command::new("apt-get")
            .args(["download", "-qq", "-o", "APT::Sandbox::User=root", &real])
            .current_dir(&staging.0),
    )?;
    let deb = std::fs::read_dir(&staging.0)
        .map_err(io("cannot read", &staging.0))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| KernelError::Install(format!("apt-get download {real} wrote no .deb")))?;
    install_deb(kernels, &deb)
}

/// `linux-image-cloud-amd64` → `linux-image-6.1.0-41-cloud-amd64`.
fn real_package(package: &str) -> Result<String, KernelError> {
    let starts_with_version = |name: &str| {
        name.strip_prefix("linux-image-")
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
    };
    if starts_with_version(package) {
        return Ok(package.to_string());
    }
    let out = run(
        "apt-cache depends",
        Command::new("apt-cache").args(["depends", package]),
    )?;
    String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Depends: "))
        .find(|dep| starts_with_version(dep))
        .map(str::to_string)
        .ok_or_else(|| {
            KernelError::Install(format!(
                "{package} depends on no linux-image-<version> package (apt-cache depends {package})"
            ))
        })
}

/// A directory under `kernels/` removed however the install ends.
struct Staging(PathBuf);

impl Staging {
    fn new(kernels: &Kernels, what: &str) -> Result<Staging, KernelError> {
        let path = kernels.dir.join(format!(".{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).map_err(io("cannot create", &path))?;
        Ok(Staging(path))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Installs the kernel of a `linux-image-<release>` package file. An
/// already installed release is left as it is.
pub fn install_deb(kernels: &Kernels, deb: &Path) -> Result<Installed, KernelError> {
    let staging = Staging::new(kernels, "staging")?;
    let tree = staging.0.join("tree");
    run(
        "dpkg-deb -x",
        Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tree),
    )?;
    let (release, vmlinuz) = find_kernel(&tree)?;
    let target = kernels.dir.join(release.as_str());
    if target.join("vmlinuz").is_file() {
        return Ok(Installed {
            release,
            dir: target,
        });
    }
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| tree.join(d).join(release.as_str()))
        .find(|d| std::fs::symlink_metadata(d).is_ok_and(|m| m.is_dir()))
        .ok_or_else(|| {
            KernelError::Install(format!("{} has no lib/modules/{release}", deb.display()))
        })?;
    let out = staging.0.join("out");
    std::fs::create_dir(&out).map_err(io("cannot create", &out))?;
    std::fs::rename(&vmlinuz, out.join("vmlinuz")).map_err(io("cannot move", &vmlinuz))?;
    std::fs::rename(&modules, out.join("modules")).map_err(io("cannot move", &modules))?;
    vmlinux::ensure_at(&out.join("vmlinuz"), &out.join("vmlinux"))
        .map_err(|e| KernelError::Install(e.to_string()))?;
    let _ = std::fs::remove_dir_all(&target);
    std::fs::rename(&out, &target).map_err(io("cannot install", &target))?;
    Ok(Installed {
        release,
        dir: target,
    })
}

/// The package's one `boot/vmlinuz-<release>` (a regular file).
fn find_kernel(tree: &Path) -> Result<(Release, PathBuf), KernelError> {
    let boot = tree.join("boot");
    let mut found = Vec::new();
    for entry in
        std::fs::read_dir(&boot).map_err(io("the package has no boot/ directory:", &boot))?
    {
        let entry = entry.map_err(io("cannot read", &boot))?;
        let name = entry.file_name();
        let Some(release) = name.to_str().and_then(|n| n.strip_prefix("vmlinuz-")) else {
            continue;
        };
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            found.push((Release::parse(release)?, entry.path()));
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        n => Err(KernelError::Install(format!(
            "the package has {n} boot/vmlinuz-* kernels, not one"
        ))),
    }
}
