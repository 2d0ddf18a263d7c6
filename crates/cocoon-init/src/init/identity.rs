//! The VM's identity in the image's tree: `/etc/hostname`, `/etc/hosts`
//! (only if the image has none), `/etc/resolv.conf` (from the `ip=` name
//! servers) and `/etc/machine-id`.
//!
//! The tree is the image's, so nothing here follows a symbolic link: paths
//! resolve with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, and a link (often
//! `/etc/resolv.conf` → `/run/systemd/resolve/...`) is replaced by a file.
//!
//! `/etc/machine-id` is rewritten with a fresh random id, if the image has
//! the file, on every boot. The contract's initramfs empties it instead;
//! an empty file means "first boot" to systemd (it then runs its first-boot
//! units on every boot) and is an invalid id to everything else (D-Bus,
//! journal readers), while a valid random id gives the same fresh identity
//! to both.

use std::fs::File;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{
    AtFlags, FileType, Mode, OFlags, ResolveFlags, mkdirat, openat2, statat, unlinkat,
};

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_SYMLINKS);

pub struct Identity<'a> {
    pub hostname: Option<&'a str>,
    pub name_servers: &'a [Ipv4Addr],
    /// The address `/etc/hosts` maps the hostname to (the first `ip=`).
    pub address: Option<Ipv4Addr>,
}

/// Writes the identity files under `root`.
pub fn write(root: &Path, identity: &Identity<'_>) -> Result<(), String> {
    let root_fd = openat2(
        rustix::fs::CWD,
        root,
        OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::empty(),
    )
    .map_err(|e| format!("cannot open {}: {e}", root.display()))?;
    let etc = open_etc(&root_fd).map_err(|e| format!("cannot open {}/etc: {e}", root.display()))?;
    let fail = |name: &str, e: rustix::io::Errno| {
        format!("cannot write {}/etc/{name}: {e}", root.display())
    };
    if let Some(hostname) = identity.hostname {
        replace(&etc, "hostname", format!("{hostname}\n").as_bytes())
            .map_err(|e| fail("hostname", e))?;
        if !exists(&etc, "hosts") {
            let hosts = hosts_file(hostname, identity.address);
            replace(&etc, "hosts", hosts.as_bytes()).map_err(|e| fail("hosts", e))?;
        }
    }
    if !identity.name_servers.is_empty() {
        let resolv: String = identity
            .name_servers
            .iter()
            .map(|ip| format!("nameserver {ip}\n"))
            .collect();
        replace(&etc, "resolv.conf", resolv.as_bytes()).map_err(|e| fail("resolv.conf", e))?;
    }
    if exists(&etc, "machine-id") {
        let id = machine_id().map_err(|e| format!("cannot make a machine id: {e}"))?;
        replace(&etc, "machine-id", format!("{id}\n").as_bytes())
            .map_err(|e| fail("machine-id", e))?;
    }
    Ok(())
}

fn open_etc(root: &OwnedFd) -> rustix::io::Result<OwnedFd> {
    let flags = OFlags::DIRECTORY | OFlags::CLOEXEC;
    match openat2(root, "etc", flags, Mode::empty(), RESOLVE) {
        Err(rustix::io::Errno::NOENT) => {
            mkdirat(root, "etc", Mode::from_raw_mode(0o755))?;
            openat2(root, "etc", flags, Mode::empty(), RESOLVE)
        }
        other => other,
    }
}

/// Whether `name` exists in `dir`, without following it.
fn exists(dir: &OwnedFd, name: &str) -> bool {
    statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).is_ok()
}

/// Makes `dir/name` a regular file holding `contents`: a link or other
/// non-directory there is removed first, never written through.
fn replace(dir: &OwnedFd, name: &str, contents: &[u8]) -> rustix::io::Result<()> {
    if let Ok(stat) = statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        && FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile
    {
        unlinkat(dir, name, AtFlags::empty())?;
    }
    let flags =
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = openat2(
        dir.as_fd(),
        name,
        flags,
        Mode::from_raw_mode(0o644),
        RESOLVE,
    )?;
    File::from(fd)
        .write_all(contents)
        .map_err(|e| rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO))
}

pub fn hosts_file(hostname: &str, address: Option<Ipv4Addr>) -> String {
    let own = address.map_or_else(|| "127.0.1.1".to_string(), |ip| ip.to_string());
    format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{own}\t{hostname}\n")
}

/// A random 128-bit id in systemd's format (32 lowercase hex digits, marked
/// as a version 4 UUID as `systemd-id128 new` does).
fn machine_id() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn dns() -> Vec<Ipv4Addr> {
        vec!["10.0.0.1".parse().unwrap(), "1.1.1.1".parse().unwrap()]
    }

    #[test]
    fn the_files_are_written_and_an_existing_hosts_is_kept() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let servers = dns();
        let identity = Identity {
            hostname: Some("vm1"),
            name_servers: &servers,
            address: Some("10.0.0.5".parse().unwrap()),
        };
        write(r, &identity).unwrap();
        assert_eq!(fs::read_to_string(r.join("etc/hostname")).unwrap(), "vm1\n");
        assert_eq!(
            fs::read_to_string(r.join("etc/resolv.conf")).unwrap(),
            "nameserver 10.0.0.1\nnameserver 1.1.1.1\n"
        );
        assert!(
            fs::read_to_string(r.join("etc/hosts"))
                .unwrap()
                .contains("10.0.0.5\tvm1\n")
        );
        assert!(
            !r.join("etc/machine-id").exists(),
            "machine-id is only rewritten where the image has one"
        );
        fs::write(r.join("etc/hosts"), "mine\n").unwrap();
        fs::write(r.join("etc/machine-id"), "").unwrap();
        write(
            r,
            &Identity {
                hostname: Some("vm2"),
                name_servers: &[],
                address: None,
            },
        )
        .unwrap();
        assert_eq!(fs::read_to_string(r.join("etc/hosts")).unwrap(), "mine\n");
        assert_eq!(fs::read_to_string(r.join("etc/hostname")).unwrap(), "vm2\n");
        let id = fs::read_to_string(r.join("etc/machine-id")).unwrap();
        assert_eq!(id.len(), 33);
        assert!(
            id.trim_end()
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        write(
            r,
            &Identity {
                hostname: None,
                name_servers: &[],
                address: None,
            },
        )
        .unwrap();
        assert_ne!(
            fs::read_to_string(r.join("etc/machine-id")).unwrap(),
            id,
            "a fresh id on every boot"
        );
    }

    #[test]
    fn links_in_the_image_are_replaced_not_followed() {
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("resolv.conf");
        fs::write(&target, "host's own\n").unwrap();
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir(r.join("etc")).unwrap();
        symlink(&target, r.join("etc/resolv.conf")).unwrap();
        symlink(outside.path().join("hosts"), r.join("etc/hosts")).unwrap();
        symlink(outside.path().join("machine-id"), r.join("etc/machine-id")).unwrap();
        let servers = dns();
        write(
            r,
            &Identity {
                hostname: Some("vm"),
                name_servers: &servers,
                address: None,
            },
        )
        .unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "host's own\n");
        assert!(
            fs::symlink_metadata(r.join("etc/resolv.conf"))
                .unwrap()
                .is_file()
        );
        assert!(
            fs::read_to_string(r.join("etc/resolv.conf"))
                .unwrap()
                .starts_with("nameserver 10.0.0.1")
        );
        // A dangling link counts as the image's own hosts file: kept, not followed.
        assert!(
            fs::symlink_metadata(r.join("etc/hosts"))
                .unwrap()
                .is_symlink()
        );
        assert!(!outside.path().join("hosts").exists());
        assert!(!outside.path().join("machine-id").exists());
        assert!(
            fs::symlink_metadata(r.join("etc/machine-id"))
                .unwrap()
                .is_file()
        );
    }

    #[test]
    fn an_etc_link_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        symlink(outside.path(), root.path().join("etc")).unwrap();
        let err = write(
            root.path(),
            &Identity {
                hostname: Some("vm"),
                name_servers: &[],
                address: None,
            },
        )
        .unwrap_err();
        assert!(err.contains("/etc"), "{err}");
        assert!(!outside.path().join("hostname").exists());
    }
}
