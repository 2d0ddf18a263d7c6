//! QEMU's vsock device: rust-vmm's vhost-device-vsock. Without it a QEMU VM
//! still runs, without vsock (its guest agent cannot be reached): a warning.

use super::{Check, origin, set_key};
use crate::config::Config;

const KEY: &str = "vhost_vsock_binary";

pub(super) fn check(config: &Config) -> Check {
    match crate::process::find_helper_program(&config.vhost_vsock_binary) {
        Ok(path) => Check::ok("vhost_vsock", path.display().to_string()),
        Err(why) => Check::warn(
            "vhost_vsock",
            format!(
                "{why}{}; QEMU VMs run without a vsock device, so their guest agent cannot be reached",
                origin(config, KEY)
            ),
            format!(
                "cargo install vhost-device-vsock --version 0.3.0 --locked (install.sh does), or {}",
                set_key(KEY)
            ),
        ),
    }
}
