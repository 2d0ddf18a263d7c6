//! CNI: the plugins a network list needs, found where VM networking looks for
//! them (`net::NetContext`: `cni_bin_dir`, then Debian's `/usr/lib/cni`), and
//! at least one `*.conflist`. Without them VMs still run, just without a CNI
//! NIC, so nothing here fails.

use std::path::{Path, PathBuf};

use super::{Check, set_key};
use crate::config::Config;
use crate::net::{NetContext, NetError, cni};

/// What cocoon's default network (a bridge with host-local addresses) runs.
const PLUGINS: &[&str] = &["bridge", "host-local", "loopback"];

const WITHOUT: &str = "VMs run only with --nics 0 (or --bridge)";

/// A minimal network list: a NATed bridge with addresses from host-local.
const EXAMPLE_CONFLIST: &str = r#"{"cniVersion":"1.0.0","name":"cocoon","plugins":[{"type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":true,"ipam":{"type":"host-local","subnet":"10.88.0.0/16","routes":[{"dst":"0.0.0.0/0"}]}}]}"#;

pub(super) fn cni(config: &Config) -> [Check; 2] {
    let ctx = NetContext::from_config(config);
    [plugins(&ctx.bin_dirs), networks(&ctx.conf_dir)]
}

fn plugins(bin_dirs: &[PathBuf]) -> Check {
    let found: Vec<(&str, Option<PathBuf>)> = PLUGINS
        .iter()
        .map(|&p| (p, cni::find_plugin(p, bin_dirs)))
        .collect();
    let missing: Vec<&str> = found
        .iter()
        .filter(|(_, path)| path.is_none())
        .map(|(p, _)| *p)
        .collect();
    if missing.is_empty() {
        let paths: Vec<String> = found
            .iter()
            .filter_map(|(_, path)| path.as_ref().map(|p| p.display().to_string()))
            .collect();
        return Check::ok("cni_plugins", paths.join(", "));
    }
    let dirs: Vec<String> = bin_dirs.iter().map(|d| d.display().to_string()).collect();
    Check::warn(
        "cni_plugins",
        format!(
            "{} not found in {}; {WITHOUT}",
            missing.join(", "),
            dirs.join(", ")
        ),
        format!(
            "apt-get install containernetworking-plugins (it installs them in {}), or {} to the directory holding them",
            crate::net::DEBIAN_CNI_DIR,
            set_key("cni_bin_dir")
        ),
    )
}

fn networks(conf_dir: &Path) -> Check {
    let elsewhere = set_key("cni_conf_dir");
    match cni::load(conf_dir) {
        Ok(lists) if !lists.is_empty() => {
            let names: Vec<&str> = lists.iter().map(|l| l.name.as_str()).collect();
            Check::ok(
                "cni_networks",
                format!(
                    "{} in {} (default: {})",
                    names.join(", "),
                    conf_dir.display(),
                    names[0]
                ),
            )
        }
        Ok(_) => {
            let found = if conf_dir.exists() {
                format!("no *.conflist in {}", conf_dir.display())
            } else {
                format!("{} does not exist", conf_dir.display())
            };
            Check::warn(
                "cni_networks",
                format!("{found}; {WITHOUT}"),
                format!(
                    "write a network list to {}, for example {EXAMPLE_CONFLIST}, or {elsewhere} to a directory with one",
                    conf_dir.join("10-cocoon.conflist").display()
                ),
            )
        }
        Err(e @ NetError::BadConfList { .. }) => Check::warn(
            "cni_networks",
            format!("{e}; {WITHOUT}"),
            "correct that file or remove it",
        ),
        Err(e) => Check::warn(
            "cni_networks",
            format!("{e}; {WITHOUT}"),
            format!("make {} readable, or {elsewhere}", conf_dir.display()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    #[test]
    fn plugins_found_in_any_search_dir() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let dirs = vec![a.path().to_path_buf(), b.path().to_path_buf()];
        std::fs::write(a.path().join("bridge"), "").unwrap();
        let check = plugins(&dirs);
        assert_eq!(check.status, Status::Warn);
        assert_eq!(
            check.detail,
            format!(
                "host-local, loopback not found in {}, {}; {WITHOUT}",
                a.path().display(),
                b.path().display()
            )
        );
        std::fs::write(b.path().join("host-local"), "").unwrap();
        std::fs::write(b.path().join("loopback"), "").unwrap();
        let check = plugins(&dirs);
        assert_eq!(check.status, Status::Ok);
        assert_eq!(
            check.detail,
            format!(
                "{}, {}, {}",
                a.path().join("bridge").display(),
                b.path().join("host-local").display(),
                b.path().join("loopback").display()
            )
        );
    }

    #[test]
    fn networks_need_a_valid_conflist() {
        let dir = tempfile::tempdir().unwrap();
        let check = networks(dir.path());
        assert_eq!(check.status, Status::Warn);
        assert_eq!(
            check.detail,
            format!("no *.conflist in {}; {WITHOUT}", dir.path().display())
        );
        // The example the fix offers is itself a valid network list.
        std::fs::write(dir.path().join("10-cocoon.conflist"), EXAMPLE_CONFLIST).unwrap();
        let check = networks(dir.path());
        assert_eq!(
            check,
            Check::ok(
                "cni_networks",
                format!("cocoon in {} (default: cocoon)", dir.path().display())
            )
        );
        std::fs::write(dir.path().join("20-bad.conflist"), "{").unwrap();
        let check = networks(dir.path());
        assert_eq!(check.status, Status::Warn);
        assert!(check.detail.contains("20-bad.conflist"), "{}", check.detail);
    }
}
