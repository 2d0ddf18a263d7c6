//! What cocoon-init runs in a VM booted from a container image.
//!
//! The engine resolves the image's OCI config (`Entrypoint` + `Cmd`, or the
//! `vm run` arguments after `--`, `Env`, `WorkingDir`, `User`) into one
//! [`RunConfig`] and writes it as JSON at [`RUN_CONFIG_PATH`] on the VM's
//! COW disk (outside the overlay's `upper/`, so the guest's root never shows
//! it). cocoon-init reads it after mounting the COW disk.

use serde::{Deserialize, Serialize};

/// The run config's path relative to the COW disk's root.
pub const RUN_CONFIG_PATH: &str = ".cocoon/run.json";

/// The version this code writes and reads.
pub const RUN_CONFIG_VERSION: u32 = 1;

/// Printed on the console, on a line of its own, by cocoon-init when the main
/// process has exited and the VM is about to power off, followed by the
/// status (0-255; 128 + the signal number when a signal killed it, as shells
/// and docker report it). The engine reads the last such line of the
/// console log as the VM's exit code.
pub const EXIT_MARKER: &str = "cocoon-init: exit status ";

/// Printed on the console by cocoon-init at boot: an exit line before the
/// last boot line belongs to an earlier boot.
pub const BOOT_MARKER: &str = "cocoon-init: booting";

/// Bounds a reader applies to a run config (the guest reads what the engine
/// wrote, the engine builds it from a hostile image config).
pub const MAX_RUN_CONFIG_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub version: u32,
    /// The main process: `Entrypoint` + `Cmd` (or the `vm run` arguments
    /// that replace `Cmd`). Empty: boot the image's `/sbin/init` as PID 1.
    pub args: Vec<String>,
    /// `KEY=VALUE` entries, the image's `Env` then `vm run -e` ones.
    pub env: Vec<String>,
    /// `WorkingDir`; empty means `/`.
    #[serde(default)]
    pub cwd: String,
    /// `User` as OCI writes it: `user`, `uid`, `user:group`, `uid:gid`
    /// (names resolved in the image's `/etc/passwd` and `/etc/group`);
    /// empty means root.
    #[serde(default)]
    pub user: String,
    /// Start the guest agent (vsock port 1024) beside the main process.
    #[serde(default = "yes")]
    pub agent: bool,
}

fn yes() -> bool {
    true
}

/// The status on the last [`EXIT_MARKER`] line after the last
/// [`BOOT_MARKER`] line of `console` (the console log), if the guest
/// reported one.
pub fn exit_status(console: &str) -> Option<u8> {
    let boot = console.rfind(BOOT_MARKER).unwrap_or(0);
    console[boot..]
        .lines()
        .rev()
        .find_map(|line| line.trim_end_matches('\r').strip_prefix(EXIT_MARKER))
        .and_then(|status| status.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_exit_line_of_the_last_boot_counts() {
        let log = format!(
            "{BOOT_MARKER}\r\n{EXIT_MARKER}3\r\n{BOOT_MARKER}\r\nhello\r\n{EXIT_MARKER}0\r\n"
        );
        assert_eq!(exit_status(&log), Some(0));
        let rebooted = format!("{BOOT_MARKER}\n{EXIT_MARKER}3\n{BOOT_MARKER}\nrunning\n");
        assert_eq!(exit_status(&rebooted), None);
        assert_eq!(exit_status(&format!("x {EXIT_MARKER}7\n")), None);
        assert_eq!(exit_status(&format!("{EXIT_MARKER}300\n")), None);
    }

    #[test]
    fn a_config_round_trips_and_unknown_fields_are_refused() {
        let config = RunConfig {
            version: RUN_CONFIG_VERSION,
            args: vec!["/bin/sh".into(), "-c".into(), "exit 3".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/work".into(),
            user: "1000:1000".into(),
            agent: true,
        };
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(serde_json::from_str::<RunConfig>(&json).unwrap(), config);
        assert!(
            serde_json::from_str::<RunConfig>(r#"{"version":1,"args":[],"env":[],"x":1}"#).is_err()
        );
    }
}
