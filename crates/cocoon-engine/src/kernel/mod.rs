//! The default kernel that container images boot (`cocoon kernel`): Debian's
//! cloud kernel, unpacked from its package (never installed on the host)
//! into `<root_dir>/kernels/<release>/`:
//!
//! ```text
//! vmlinuz                    the bzImage (Cloud Hypervisor, QEMU)
//! vmlinux                    its ELF payload (Firecracker), extracted at install
//! modules/                   lib/modules/<release> of the package
//! initramfs-<key>.img        cocoon-init and the modules it loads (initramfs.rs), cached
//! ```
//!
//! A kernel directory appears whole or not at all: it is unpacked beside
//! and renamed into place.

pub mod cpio;
pub mod initramfs;
mod install;
pub mod modules;

use std::path::{Path, PathBuf};

pub use install::{DEFAULT_PACKAGE, install_deb, install_package};

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "invalid kernel release {0:?}: use letters, digits and . _ + - (as in 6.1.0-41-cloud-amd64)"
    )]
    BadRelease(String),
    #[error("no kernel is installed in {}: run `cocoon kernel install` (container images boot it)", dir.display())]
    NoneInstalled { dir: PathBuf },
    #[error(
        "kernel {release} is not installed (installed: {installed}); run `cocoon kernel install` or set default_kernel"
    )]
    NotInstalled { release: String, installed: String },
    #[error("kernel {release} is used by VM(s) {vms}: remove them first")]
    InUse { release: String, vms: String },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install the kernel: {0}")]
    Install(String),
    #[error("cannot build the initramfs for kernel {release}: {reason}")]
    Initramfs { release: String, reason: String },
    #[error(
        "cocoon-init not found (looked in {looked}): build it with install.sh, or set init_binary"
    )]
    NoInit { looked: String },
    #[error("{} is not a static cocoon-init binary ({reason}); set init_binary to one built by install.sh", path.display())]
    BadInit { path: PathBuf, reason: String },
}

pub(crate) fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> KernelError {
    let path = path.to_path_buf();
    move |source| KernelError::Io { what, path, source }
}

/// A kernel release name, validated before it names a directory.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Release(String);

impl Release {
    pub fn parse(text: &str) -> Result<Release, KernelError> {
        let ok = !text.is_empty()
            && text.len() <= 64
            && text.starts_with(|c: char| c.is_ascii_alphanumeric())
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c));
        if ok {
            Ok(Release(text.to_string()))
        } else {
            Err(KernelError::BadRelease(text.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Orders releases as versions: digit runs compare as numbers, so
/// `6.1.0-41` is newer than `6.1.0-9`.
fn version_key(release: &Release) -> Vec<(u64, String)> {
    let mut key = Vec::new();
    let mut rest = release.as_str();
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let (number, tail) = rest.split_at(digits);
        let text_len = tail.len() - tail.trim_start_matches(|c: char| !c.is_ascii_digit()).len();
        let (text, tail) = tail.split_at(text_len);
        key.push((number.parse().unwrap_or(0), text.to_string()));
        rest = tail;
    }
    key
}

/// Whether `path` is exactly a file the engine writes under `kernels`:
/// `<release>/vmlinuz`, `<release>/vmlinux` or `<release>/initramfs-<16
/// hex>.img`, the release a valid one. A snapshot may name only those
/// besides its layers' boot files (`snapshot::trust`).
pub fn is_default_kernel_file(kernels: &Path, path: &Path) -> bool {
    use std::path::Component;
    let Ok(rest) = path.strip_prefix(kernels) else {
        return false;
    };
    let parts: Vec<Component<'_>> = rest.components().collect();
    let [Component::Normal(release), Component::Normal(file)] = parts.as_slice() else {
        return false;
    };
    let (Some(release), Some(file)) = (release.to_str(), file.to_str()) else {
        return false;
    };
    let initramfs = file
        .strip_prefix("initramfs-")
        .and_then(|f| f.strip_suffix(".img"))
        .is_some_and(|key| {
            key.len() == 16
                && key
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
    Release::parse(release).is_ok() && (matches!(file, "vmlinuz" | "vmlinux") || initramfs)
}

/// The kernels directory.
#[derive(Debug, Clone)]
pub struct Kernels {
    pub dir: PathBuf,
}

/// One installed kernel.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Installed {
    pub release: Release,
    pub dir: PathBuf,
}

impl serde::Serialize for Release {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl Installed {
    pub fn vmlinuz(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }
    /// The ELF kernel Firecracker loads.
    pub fn vmlinux(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }
    /// `lib/modules/<release>` of the package.
    pub fn modules_dir(&self) -> PathBuf {
        self.dir.join("modules")
    }
    /// Bytes on disk (kernel, modules, initramfs images).
    pub fn size(&self) -> u64 {
        dir_size(&self.dir)
    }
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

impl Kernels {
    pub fn new(dir: PathBuf) -> Kernels {
        Kernels { dir }
    }

    /// Installed kernels, newest first. Half-installed ones (hidden staging
    /// directories) and names that are not releases are not kernels.
    pub fn list(&self) -> Result<Vec<Installed>, KernelError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("cannot read", &self.dir)(e)),
        };
        let mut found: Vec<Installed> = entries
            .flatten()
            .filter_map(|e| {
                let release = Release::parse(e.file_name().to_str()?).ok()?;
                let installed = Installed {
                    release,
                    dir: e.path(),
                };
                installed.vmlinuz().is_file().then_some(installed)
            })
            .collect();
        found.sort_by_key(|k| std::cmp::Reverse(version_key(&k.release)));
        Ok(found)
    }

    /// The kernel `wanted` names, or the newest when it is empty.
    pub fn resolve(&self, wanted: &str) -> Result<Installed, KernelError> {
        let installed = self.list()?;
        if wanted.is_empty() {
            return installed
                .into_iter()
                .next()
                .ok_or(KernelError::NoneInstalled {
                    dir: self.dir.clone(),
                });
        }
        let release = Release::parse(wanted)?;
        let names = installed
            .iter()
            .map(|k| k.release.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        installed
            .into_iter()
            .find(|k| k.release == release)
            .ok_or(KernelError::NotInstalled {
                release: release.to_string(),
                installed: if names.is_empty() {
                    "none".into()
                } else {
                    names
                },
            })
    }

    /// Removes an installed kernel (the caller checked no VM uses it).
    pub fn remove(&self, release: &Release) -> Result<(), KernelError> {
        let installed = self.resolve(release.as_str())?;
        let doomed = self
            .dir
            .join(format!(".rm-{release}-{}", std::process::id()));
        std::fs::rename(&installed.dir, &doomed).map_err(io("cannot remove", &installed.dir))?;
        std::fs::remove_dir_all(&doomed).map_err(io("cannot remove", &doomed))
    }
}

#[cfg(test)]
mod tests;

/// The Debian kernel scripts/fetch-test-assets.sh unpacks and keeps.
#[cfg(test)]
pub(crate) mod test_assets {
    use std::path::PathBuf;

    fn dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-assets")
    }

    /// `lib/modules/<release>` of the unpacked package.
    pub fn debian_modules() -> Option<PathBuf> {
        std::fs::read_dir(dir().join("debian-kernel/lib/modules"))
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.join("kernel").is_dir())
    }
}
