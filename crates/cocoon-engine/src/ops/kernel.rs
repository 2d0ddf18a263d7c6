//! `kernel install/ls/rm`: the default kernels container images boot.
//! Removing one a VM was created with is refused: the VM's record pins its
//! kernel and initramfs paths.

use std::path::Path;

use crate::context::Ctx;
use crate::error::Result;
use crate::kernel::{self, Installed, KernelError, Release};

/// Where a kernel to install comes from.
#[derive(Debug, Clone)]
pub enum Source<'a> {
    /// A Debian package (a metapackage is resolved), with `apt-get download`.
    Package(&'a str),
    /// A `linux-image-<release>` package file.
    Deb(&'a Path),
}

/// One installed kernel as `kernel ls` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KernelView {
    #[serde(flatten)]
    pub kernel: Installed,
    pub size: u64,
    /// The kernel new container VMs boot (`default_kernel`, or the newest).
    pub default: bool,
}

pub(crate) fn install(ctx: &mut Ctx, source: Source<'_>) -> Result<Installed> {
    let kernels = ctx.layout.kernels();
    std::fs::create_dir_all(&kernels.dir).map_err(kernel::io("cannot create", &kernels.dir))?;
    Ok(match source {
        Source::Package(package) => kernel::install_package(&kernels, package)?,
        Source::Deb(deb) => kernel::install_deb(&kernels, deb)?,
    })
}

pub(crate) fn list(ctx: &mut Ctx) -> Result<Vec<KernelView>> {
    let kernels = ctx.layout.kernels();
    let default = kernels
        .resolve(&ctx.config().default_kernel)
        .ok()
        .map(|k| k.release);
    Ok(kernels
        .list()?
        .into_iter()
        .map(|kernel| KernelView {
            size: kernel.size(),
            default: Some(&kernel.release) == default.as_ref(),
            kernel,
        })
        .collect())
}

pub(crate) fn remove(ctx: &mut Ctx, release: &str) -> Result<()> {
    let release = Release::parse(release)?;
    let kernels = ctx.layout.kernels();
    let dir = kernels.dir.join(release.as_str());
    let users: Vec<String> = ctx
        .store()
        .list_vms()?
        .into_iter()
        .filter(|vm| {
            vm.boot_config
                .as_ref()
                .and_then(|b| b.kernel_path.as_ref())
                .is_some_and(|p| p.starts_with(&dir))
        })
        .map(|vm| vm.config.name.to_string())
        .collect();
    if !users.is_empty() {
        return Err(KernelError::InUse {
            release: release.to_string(),
            vms: users.join(", "),
        }
        .into());
    }
    Ok(kernels.remove(&release)?)
}
