//! The guest agent for images built for cocoon (their own kernel, systemd as
//! init): one extra read-only layer on top of the image's, holding
//! cocoon-init as `/usr/local/bin/cocoon-agent` and upstream's systemd unit
//! (`cocoon-agent.service`, enabled for `multi-user.target`, running
//! `cocoon-agent serve`), at the paths upstream's images use. An image that
//! bakes upstream's agent in gets ours in its place: both speak the same
//! protocol (`docs/agent.md`) on the same vsock port.
//!
//! The layer is an ordinary tar layer, made deterministically (fixed owners,
//! modes and times) from the cocoon-init binary, so its digest names it: the
//! same binary gives the same layer on every host, which lets a host that
//! imports a snapshot rebuild the layer instead of carrying it.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use super::import::{self, ImportError};
use super::store::ImageDirs;
use crate::digest::Digest;

pub const BINARY: &str = "usr/local/bin/cocoon-agent";
pub const UNIT: &str = "etc/systemd/system/cocoon-agent.service";
pub const WANTS: &str = "etc/systemd/system/multi-user.target.wants/cocoon-agent.service";

/// Upstream's `packaging/cocoon-agent.service`, with our description.
pub const UNIT_TEXT: &str = "\
[Unit]
Description=cocoon guest agent (vsock port 1024: vm exec, reseed, identity)
Documentation=https://github.com/cocoonstack/cocoon-agent

[Service]
Type=simple
User=root
Group=root
ExecStart=/usr/local/bin/cocoon-agent serve
Restart=always
RestartSec=2s
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
";

/// The layer made from one cocoon-init binary, not yet stored.
pub struct AgentLayer {
    pub digest: Digest,
    init: PathBuf,
}

/// The file that remembers the last cocoon-init's layer digest, with that
/// file's identity, so a `vm create` does not read and hash the binary.
fn cache_path(dirs: &ImageDirs) -> PathBuf {
    dirs.root.join("agent-layer")
}

/// A file's identity: device, inode, size, modification and change times.
fn identity(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "{}:{}:{}:{}.{}:{}.{}",
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    )
}

impl AgentLayer {
    /// The layer of the cocoon-init at `init`; None when that is not a
    /// static binary (a development build), which no guest could run.
    pub fn of(init: &Path, dirs: &ImageDirs) -> std::io::Result<Option<AgentLayer>> {
        let key = identity(&std::fs::metadata(init)?);
        let cached = std::fs::read_to_string(cache_path(dirs)).ok();
        if let Some(digest) = cached
            .as_deref()
            .and_then(|c| c.strip_prefix(&key))
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|d| Digest::parse(d.trim_end()).ok())
        {
            return Ok(Some(AgentLayer {
                digest,
                init: init.to_path_buf(),
            }));
        }
        let binary = std::fs::read(init)?;
        if crate::kernel::initramfs::check_static(&binary).is_err() {
            return Ok(None);
        }
        let digest = digest_of(&tar_of(&binary));
        // Best effort: without it the next create hashes again.
        let tmp = cache_path(dirs).with_extension(format!("tmp-{}", std::process::id()));
        if std::fs::write(&tmp, format!("{key} {digest}\n")).is_ok() {
            let _ = std::fs::rename(&tmp, cache_path(dirs));
        }
        Ok(Some(AgentLayer {
            digest,
            init: init.to_path_buf(),
        }))
    }

    /// The layer of the installed cocoon-init (`init_binary`, else where
    /// install.sh puts it); None without one, or with a development build
    /// (dynamically linked), which no guest can run: `cocoon doctor`
    /// reports both.
    pub fn installed(init_binary: &Path, dirs: &ImageDirs) -> Option<AgentLayer> {
        let init = crate::kernel::initramfs::find_init(init_binary).ok()?;
        AgentLayer::of(&init, dirs).ok().flatten()
    }

    /// Stores the layer as a pulled one is (EROFS, under its blob lock),
    /// unless it is stored already. Called once a record names the blob, so
    /// gc keeps it from then on.
    pub fn ensure(&self, dirs: &ImageDirs, max_layer_bytes: u64) -> Result<(), ImportError> {
        if dirs.blob(&self.digest).is_file() {
            return Ok(());
        }
        let read = |source| ImportError::Read {
            source_name: self.init.display().to_string(),
            source,
        };
        let tar = tar_of(&std::fs::read(&self.init).map_err(read)?);
        if digest_of(&tar) != self.digest {
            return Err(read(std::io::Error::other(
                "cocoon-init changed while the VM was being made; run the command again",
            )));
        }
        import::import_layer(
            dirs,
            "the guest agent layer",
            Cursor::new(&tar),
            max_layer_bytes,
        )?;
        Ok(())
    }
}

fn digest_of(tar: &[u8]) -> Digest {
    let mut hasher = sha2::Sha256::default();
    sha2::Digest::update(&mut hasher, tar);
    Digest::of(hasher)
}

/// The layer's tar: the same bytes for the same binary, always.
fn tar_of(binary: &[u8]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, mode: u32, data: &[u8], link: Option<&str>| {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(data.len() as u64);
        if let Some(link) = link {
            header
                .set_link_name(link)
                .expect("a constant link target fits");
        }
        builder
            .append_data(&mut header, path, data)
            .expect("a tar in memory cannot fail");
    };
    for dir in [
        "usr/",
        "usr/local/",
        "usr/local/bin/",
        "etc/",
        "etc/systemd/",
        "etc/systemd/system/",
        "etc/systemd/system/multi-user.target.wants/",
    ] {
        add(dir, tar::EntryType::Directory, 0o755, b"", None);
    }
    add(BINARY, tar::EntryType::Regular, 0o755, binary, None);
    add(
        UNIT,
        tar::EntryType::Regular,
        0o644,
        UNIT_TEXT.as_bytes(),
        None,
    );
    add(
        WANTS,
        tar::EntryType::Symlink,
        0o777,
        b"",
        Some("../cocoon-agent.service"),
    );
    builder.into_inner().expect("a tar in memory cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn static_binary(dir: &Path) -> PathBuf {
        // The smallest ELF check_static accepts: x86-64, no program headers
        // (so no PT_INTERP).
        let path = dir.join("cocoon-init");
        let mut elf = vec![0u8; 64];
        elf[..5].copy_from_slice(b"\x7fELF\x02");
        elf[0x12] = 0x3e;
        std::fs::write(&path, elf).unwrap();
        path
    }

    #[test]
    fn the_same_binary_gives_the_same_layer_and_another_one_another() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = ImageDirs::new(dir.path());
        dirs.create().unwrap();
        let init = static_binary(dir.path());
        let a = AgentLayer::of(&init, &dirs)
            .unwrap()
            .expect("a static binary");
        assert_eq!(a.digest, digest_of(&tar_of(&std::fs::read(&init).unwrap())));
        // Again, from the cache: the same digest.
        assert!(cache_path(&dirs).is_file());
        let b = AgentLayer::of(&init, &dirs).unwrap().unwrap();
        assert_eq!(a.digest, b.digest);
        // Another binary at the same path: another layer, whatever the cache says.
        let mut other = std::fs::read(&init).unwrap();
        other.push(0);
        std::fs::write(&init, other).unwrap();
        let c = AgentLayer::of(&init, &dirs).unwrap().unwrap();
        assert_ne!(a.digest, c.digest);
        // Stored under its digest.
        c.ensure(&dirs, 1 << 30).unwrap();
        assert!(dirs.blob(&c.digest).is_file());
    }

    #[test]
    fn a_dynamic_binary_makes_no_layer() {
        // This test binary is dynamically linked.
        let me = std::env::current_exe().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let dirs = ImageDirs::new(dir.path());
        assert!(AgentLayer::of(&me, &dirs).unwrap().is_none());
    }

    #[test]
    fn the_layer_holds_the_agent_its_unit_and_the_unit_enabled() {
        let tar = tar_of(b"the binary");
        let mut archive = tar::Archive::new(Cursor::new(tar));
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let header = entry.header().clone();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            assert_eq!((header.uid().unwrap(), header.gid().unwrap()), (0, 0));
            assert_eq!(header.mtime().unwrap(), 0);
            seen.push((
                path,
                header.mode().unwrap(),
                data,
                header
                    .link_name()
                    .unwrap()
                    .map(|l| l.to_string_lossy().into_owned()),
            ));
        }
        let find = |p: &str| {
            seen.iter()
                .find(|s| s.0.trim_end_matches('/') == p)
                .unwrap()
        };
        assert_eq!(find(BINARY).1, 0o755);
        assert_eq!(find(BINARY).2, b"the binary");
        assert_eq!(find(UNIT).2, UNIT_TEXT.as_bytes());
        assert!(UNIT_TEXT.contains("ExecStart=/usr/local/bin/cocoon-agent serve\n"));
        assert_eq!(find(WANTS).3.as_deref(), Some("../cocoon-agent.service"));
        assert_eq!(find("etc/systemd/system").1, 0o755);
    }
}
