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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    #[test]
    fn container_images_need_an_installed_kernel_and_a_static_init() {
        let root = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.root_dir = root.path().to_path_buf();
        // Nothing installed: both items warn, each with its fix.
        let kernel = default_kernel(&config);
        assert_eq!(kernel.status, Status::Warn);
        assert!(
            kernel.detail.contains("no kernel is installed"),
            "{}",
            kernel.detail
        );
        assert!(kernel.fix.unwrap().contains("cocoon kernel install"));
        config.init_binary = root.path().join("cocoon-init");
        let init = cocoon_init(&config);
        assert_eq!(init.status, Status::Warn);
        assert!(init.detail.contains("cannot read"), "{}", init.detail);
        // A dynamically linked binary (this test's own) is refused by name.
        std::fs::copy(std::env::current_exe().unwrap(), &config.init_binary).unwrap();
        let init = cocoon_init(&config);
        assert_eq!(init.status, Status::Warn);
        assert!(
            init.detail.contains("dynamically linked"),
            "{}",
            init.detail
        );
        assert!(init.fix.unwrap().contains("init_binary"));
        // An installed kernel is found, and named.
        let release = root.path().join("kernels/6.1.0-9-cloud-amd64");
        std::fs::create_dir_all(&release).unwrap();
        std::fs::write(release.join("vmlinuz"), b"kernel").unwrap();
        let kernel = default_kernel(&config);
        assert_eq!(kernel.status, Status::Ok);
        assert!(
            kernel.detail.starts_with("6.1.0-9-cloud-amd64 ("),
            "{}",
            kernel.detail
        );
    }
}
