//! Whether container images can boot: a default kernel installed and a
//! static cocoon-init to put in their initramfs.

use super::{Check, origin, set_key};
use crate::config::Config;
use crate::kernel::{self, initramfs};

const WITHOUT: &str = "container images (images without a kernel) cannot boot; VM images and cloud images are unaffected";

pub(super) fn default_kernel(config: &Config) -> Check {
    let kernels = kernel::Kernels::new(config.root_dir.join("kernels"));
    match kernels.resolve(&config.default_kernel) {
        Ok(found) => Check::ok(
            "default_kernel",
            format!("{} ({})", found.release, found.dir.display()),
        ),
        Err(e) => Check::warn(
            "default_kernel",
            format!("{e}{}; {WITHOUT}", origin(config, "default_kernel")),
            "run `cocoon kernel install` (Debian's cloud kernel, unpacked, not installed on the host)",
        ),
    }
}

pub(super) fn cocoon_init(config: &Config) -> Check {
    let found = initramfs::find_init(&config.init_binary).and_then(|path| {
        let image = std::fs::read(&path).map_err(kernel::io("cannot read", &path))?;
        initramfs::check_static(&image).map_err(|reason| kernel::KernelError::BadInit {
            path: path.clone(),
            reason,
        })?;
        Ok(path)
    });
    match found {
        Ok(path) => Check::ok("cocoon_init", path.display().to_string()),
        Err(e) => Check::warn(
            "cocoon_init",
            format!("{e}{}; {WITHOUT}", origin(config, "init_binary")),
            format!(
                "run install.sh from the cocoon checkout (it builds cocoon-init static), or {} to one",
                set_key("init_binary")
            ),
        ),
    }
}
