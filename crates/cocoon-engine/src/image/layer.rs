//! One OCI layer tar → a directory tree ready for `mkfs.erofs`.
//!
//! The tree is what overlayfs expects of a lower layer: OCI whiteouts
//! (`.wh.NAME`) become 0:0 character devices, opaque markers
//! (`.wh..wh..opq`) become `trusted.overlay.opaque=y` on their directory, so a
//! file an upper layer deletes stays deleted in the guest. Ownership, modes,
//! xattrs, hardlinks, symlinks and device nodes are kept.
//!
//! Layers are untrusted input: no entry may leave the tree, through `..`, an
//! absolute path, a hardlink, or a symlink planted by an earlier entry.
//!
//! Hand-written rather than `tar::Archive::unpack`: that unpacks container
//! whiteouts as plain files, and checks no symlink in the parents of a path.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("corrupt layer archive: {0}")]
    Corrupt(io::Error),
    #[error("layer entry {path:?} is not allowed: {reason}")]
    Hostile { path: String, reason: &'static str },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

/// What unpacking found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// Kernel and initrd as the guest contract finds them, relative to the tree.
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub entries: u64,
}

/// The tree path for a tar path: relative, normalised, without `..`.
fn clean(raw: &Path) -> Result<Option<PathBuf>, &'static str> {
    let mut out = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => return Err("it contains '..'"),
            Component::Prefix(_) => return Err("it has a path prefix"),
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

fn is_boot_candidate(path: &Path, prefix: &str) -> bool {
    let parent_ok = match path.parent() {
        None => true,
        Some(p) => p.as_os_str().is_empty() || p == Path::new("boot"),
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    parent_ok && name.starts_with(prefix) && !name.ends_with(".old")
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("tar paths have no NUL")
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn mknod(path: &Path, mode: libc::mode_t, dev: libc::dev_t) -> io::Result<()> {
    // SAFETY: valid C string, plain syscall.
    check(unsafe { libc::mknod(c_path(path).as_ptr(), mode, dev) })
}

fn lchown(path: &Path, uid: u64, gid: u64) -> io::Result<()> {
    // SAFETY: valid C string, plain syscall; does not follow symlinks.
    check(unsafe {
        libc::lchown(
            c_path(path).as_ptr(),
            uid as libc::uid_t,
            gid as libc::gid_t,
        )
    })
}

fn lsetxattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let name = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: valid C strings and a buffer of the given length.
    check(unsafe {
        libc::lsetxattr(
            c_path(path).as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

/// Removes whatever is at `path` (a later entry replaces an earlier one).
fn remove_existing(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

struct Unpacker<'a> {
    root: &'a Path,
    out: Unpacked,
    /// Directories' final modes and owners, applied last so a read-only
    /// directory does not stop its own contents from being written.
    dirs: BTreeMap<PathBuf, (u32, u64, u64)>,
    opaque: Vec<PathBuf>,
}

impl Unpacker<'_> {
    fn write_err(&self, rel: &Path) -> impl Fn(io::Error) -> LayerError {
        let path = self.root.join(rel);
        move |source| LayerError::Write {
            path: path.clone(),
            source,
        }
    }

    /// Creates the parents of `rel`, refusing to go through a symlink.
    fn parents(&mut self, rel: &Path, shown: &str) -> Result<(), LayerError> {
        let mut at = self.root.to_path_buf();
        let Some(parent) = rel.parent() else {
            return Ok(());
        };
        for part in parent.components() {
            at.push(part);
            match fs::symlink_metadata(&at) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(LayerError::Hostile {
                        path: shown.to_string(),
                        reason: "it goes through a symlink",
                    });
                }
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(LayerError::Hostile {
                        path: shown.to_string(),
                        reason: "a parent is not a directory",
                    });
                }
                Err(_) => {
                    fs::create_dir(&at).map_err(|source| LayerError::Write {
                        path: at.clone(),
                        source,
                    })?;
                }
            }
        }
        Ok(())
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), LayerError> {
        let raw = entry.path().map_err(LayerError::Corrupt)?.into_owned();
        let shown = raw.display().to_string();
        let Some(rel) = clean(&raw).map_err(|reason| LayerError::Hostile {
            path: shown.clone(),
            reason,
        })?
        else {
            return Ok(()); // the root directory itself
        };
        self.out.entries += 1;
        let header = entry.header();
        let mode = header.mode().map_err(LayerError::Corrupt)? & 0o7777;
        let uid = header.uid().map_err(LayerError::Corrupt)?;
        let gid = header.gid().map_err(LayerError::Corrupt)?;
        let kind = header.entry_type();
        let name = rel
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string();

        self.parents(&rel, &shown)?;
        let target = self.root.join(&rel);

        // OCI whiteouts → overlayfs whiteouts.
        if name == OPAQUE_MARKER {
            let dir = rel.parent().map(Path::to_path_buf).unwrap_or_default();
            self.opaque.push(dir);
            return Ok(());
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(LayerError::Hostile {
                    path: shown,
                    reason: "it is a malformed whiteout",
                });
            }
            let path = target.with_file_name(hidden);
            remove_existing(&path).map_err(self.write_err(&rel))?;
            mknod(&path, libc::S_IFCHR, 0).map_err(self.write_err(&rel))?;
            return Ok(());
        }

        match kind {
            EntryType::Directory => {
                if !fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
                    remove_existing(&target).map_err(self.write_err(&rel))?;
                    fs::create_dir(&target).map_err(self.write_err(&rel))?;
                }
                self.dirs.insert(rel.clone(), (mode, uid, gid));
            }
            EntryType::Regular | EntryType::Continuous => {
                remove_existing(&target).map_err(self.write_err(&rel))?;
                let mut file = fs::File::create(&target).map_err(self.write_err(&rel))?;
                io::copy(&mut entry, &mut file).map_err(LayerError::Corrupt)?;
                if is_boot_candidate(&rel, "vmlinuz") {
                    self.out.kernel = Some(rel.clone());
                }
                if is_boot_candidate(&rel, "initrd.img") {
                    self.out.initrd = Some(rel.clone());
                }
            }
            EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(LayerError::Corrupt)?
                    .ok_or_else(|| LayerError::Hostile {
                        path: shown.clone(),
                        reason: "symlink without target",
                    })?;
                remove_existing(&target).map_err(self.write_err(&rel))?;
                // The target is stored verbatim: it is only ever resolved inside the guest.
                symlink(&link, &target).map_err(self.write_err(&rel))?;
            }
            EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(LayerError::Corrupt)?
                    .ok_or_else(|| LayerError::Hostile {
                        path: shown.clone(),
                        reason: "hardlink without target",
                    })?;
                let Some(source) = clean(&link).map_err(|reason| LayerError::Hostile {
                    path: shown.clone(),
                    reason,
                })?
                else {
                    return Err(LayerError::Hostile {
                        path: shown,
                        reason: "hardlink to the root",
                    });
                };
                self.parents(&source, &shown)?;
                let source = self.root.join(source);
                if !fs::symlink_metadata(&source).is_ok_and(|m| m.is_file()) {
                    return Err(LayerError::Hostile {
                        path: shown,
                        reason: "hardlink to a file this layer does not have",
                    });
                }
                remove_existing(&target).map_err(self.write_err(&rel))?;
                fs::hard_link(&source, &target).map_err(self.write_err(&rel))?;
                return Ok(()); // shares the inode's metadata
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (major, minor) = if kind == EntryType::Fifo {
                    (0, 0)
                } else {
                    (
                        header
                            .device_major()
                            .map_err(LayerError::Corrupt)?
                            .unwrap_or(0),
                        header
                            .device_minor()
                            .map_err(LayerError::Corrupt)?
                            .unwrap_or(0),
                    )
                };
                let file_type = match kind {
                    EntryType::Char => libc::S_IFCHR,
                    EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                remove_existing(&target).map_err(self.write_err(&rel))?;
                mknod(&target, file_type | mode, libc::makedev(major, minor))
                    .map_err(self.write_err(&rel))?;
            }
            // Metadata-only entries (PAX headers are consumed by the reader).
            EntryType::XGlobalHeader
            | EntryType::XHeader
            | EntryType::GNULongName
            | EntryType::GNULongLink => {
                return Ok(());
            }
            _ => {
                return Err(LayerError::Hostile {
                    path: shown,
                    reason: "unsupported entry type",
                });
            }
        }

        // Owner first: chown(2) clears setuid bits and file capabilities, which
        // the mode and xattrs below then set for good.
        if kind != EntryType::Directory {
            lchown(&target, uid, gid).map_err(self.write_err(&rel))?;
            if kind != EntryType::Symlink {
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                    .map_err(self.write_err(&rel))?;
            }
        }
        if let Some(extensions) = entry.pax_extensions().map_err(LayerError::Corrupt)? {
            for ext in extensions {
                let ext = ext.map_err(LayerError::Corrupt)?;
                if let Some(name) = ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr.")) {
                    lsetxattr(&target, name, ext.value_bytes()).map_err(self.write_err(&rel))?;
                }
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Unpacked, LayerError> {
        for dir in std::mem::take(&mut self.opaque) {
            let path = self.root.join(&dir);
            if !path.is_dir() {
                fs::create_dir_all(&path).map_err(self.write_err(&dir))?;
            }
            lsetxattr(&path, "trusted.overlay.opaque", b"y").map_err(self.write_err(&dir))?;
        }
        // Deepest first, so a parent's restrictive mode never blocks a child.
        for (dir, (mode, uid, gid)) in std::mem::take(&mut self.dirs).into_iter().rev() {
            let path = self.root.join(&dir);
            lchown(&path, uid, gid).map_err(self.write_err(&dir))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .map_err(self.write_err(&dir))?;
        }
        Ok(self.out)
    }
}

/// Unpacks an uncompressed layer tar into `root` (an empty directory).
pub fn unpack(reader: impl Read, root: &Path) -> Result<Unpacked, LayerError> {
    let mut archive = tar::Archive::new(reader);
    let mut unpacker = Unpacker {
        root,
        out: Unpacked::default(),
        dirs: BTreeMap::new(),
        opaque: Vec::new(),
    };
    for entry in archive.entries().map_err(LayerError::Corrupt)? {
        unpacker.entry(entry.map_err(LayerError::Corrupt)?)?;
    }
    unpacker.finish()
}

/// Opens a layer blob, undoing gzip or zstd compression (detected by magic).
pub fn open_decompressed(path: &Path) -> io::Result<Box<dyn Read + Send>> {
    let mut file = fs::File::open(path)?;
    let mut magic = [0u8; 4];
    let n = read_up_to(&mut file, &mut magic)?;
    use std::io::Seek;
    file.seek(io::SeekFrom::Start(0))?;
    let file = io::BufReader::with_capacity(1 << 20, file);
    Ok(match &magic[..n] {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(file)),
        [0x28, 0xb5, 0x2f, 0xfd] => Box::new(zstd::stream::read::Decoder::with_buffer(file)?),
        _ => Box::new(file),
    })
}

fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    fn header(path: &str, kind: EntryType, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(0);
        h
    }

    fn layer(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
        let mut h = header(path, EntryType::Regular, mode);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn special(b: &mut tar::Builder<Vec<u8>>, path: &str, kind: EntryType, link: Option<&str>) {
        let mut h = header(path, kind, 0o755);
        if let Some(link) = link {
            h.set_link_name(link).unwrap();
        }
        if kind == EntryType::Char {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
    }

    fn raw_path_header(path: &[u8], kind: EntryType) -> tar::Header {
        // set_path refuses '..'; hostile archives are written byte by byte.
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..path.len()].copy_from_slice(path);
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        h.set_cksum();
        h
    }

    #[test]
    fn unpacks_every_kind_and_finds_boot_files() {
        let tar = layer(|b| {
            special(b, "./", EntryType::Directory, None);
            special(b, "boot/", EntryType::Directory, None);
            file(b, "boot/vmlinuz-6.1.0-cloud-amd64", b"kernel", 0o644);
            file(b, "boot/vmlinuz-old.old", b"old", 0o644);
            file(b, "boot/initrd.img-6.1.0-cloud-amd64", b"initrd", 0o644);
            file(b, "usr/bin/tool", b"#!/bin/sh\n", 0o4755);
            special(b, "usr/bin/tool2", EntryType::Link, Some("usr/bin/tool"));
            special(b, "bin", EntryType::Symlink, Some("usr/bin"));
            special(b, "dev/null", EntryType::Char, None);
            special(b, "run/fifo", EntryType::Fifo, None);
            // A read-only directory with content: its mode is applied last.
            let mut h = header("locked/", EntryType::Directory, 0o500);
            h.set_cksum();
            b.append(&h, &[][..]).unwrap();
            file(b, "locked/inside", b"x", 0o600);
        });
        let dir = tempfile::tempdir().unwrap();
        let out = unpack(&tar[..], dir.path()).unwrap();
        assert_eq!(
            out.kernel.as_deref(),
            Some(Path::new("boot/vmlinuz-6.1.0-cloud-amd64"))
        );
        assert_eq!(
            out.initrd.as_deref(),
            Some(Path::new("boot/initrd.img-6.1.0-cloud-amd64"))
        );
        let root = dir.path();
        assert_eq!(fs::read(root.join("usr/bin/tool")).unwrap(), b"#!/bin/sh\n");
        assert_eq!(
            fs::metadata(root.join("usr/bin/tool")).unwrap().mode() & 0o7777,
            0o4755
        );
        assert_eq!(
            fs::metadata(root.join("usr/bin/tool")).unwrap().ino(),
            fs::metadata(root.join("usr/bin/tool2")).unwrap().ino(),
            "hardlink shares the inode"
        );
        assert_eq!(
            fs::read_link(root.join("bin")).unwrap(),
            Path::new("usr/bin")
        );
        let null = fs::symlink_metadata(root.join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), libc::makedev(1, 3));
        assert!(
            fs::symlink_metadata(root.join("run/fifo"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
        assert_eq!(
            fs::metadata(root.join("locked")).unwrap().mode() & 0o7777,
            0o500
        );
        assert_eq!(fs::read(root.join("locked/inside")).unwrap(), b"x");
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        let tar = layer(|b| {
            file(b, "etc/.wh.deleted.conf", b"", 0o644);
            special(b, "var/cache/", EntryType::Directory, None);
            file(b, "var/cache/.wh..wh..opq", b"", 0o644);
            file(b, "var/cache/kept", b"k", 0o644);
        });
        let dir = tempfile::tempdir().unwrap();
        unpack(&tar[..], dir.path()).unwrap();
        let whiteout = fs::symlink_metadata(dir.path().join("etc/deleted.conf")).unwrap();
        assert!(whiteout.file_type().is_char_device());
        assert_eq!(whiteout.rdev(), 0);
        assert!(!dir.path().join("etc/.wh.deleted.conf").exists());
        assert!(!dir.path().join("var/cache/.wh..wh..opq").exists());
        let mut value = [0u8; 8];
        let name = CString::new("trusted.overlay.opaque").unwrap();
        let n = unsafe {
            libc::lgetxattr(
                c_path(&dir.path().join("var/cache")).as_ptr(),
                name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        assert_eq!(&value[..n as usize], b"y");
        assert_eq!(fs::read(dir.path().join("var/cache/kept")).unwrap(), b"k");
    }

    #[test]
    fn hostile_entries_are_refused() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                {
                    let mut b = tar::Builder::new(Vec::new());
                    b.append(&raw_path_header(b"../escape", EntryType::Regular), &[][..])
                        .unwrap();
                    b.into_inner().unwrap()
                },
                "layer entry \"../escape\" is not allowed: it contains '..'",
            ),
            (
                layer(|b| {
                    special(b, "etc", EntryType::Symlink, Some("/etc"));
                    file(b, "etc/passwd", b"root::0:0::/:/bin/sh\n", 0o644);
                }),
                "layer entry \"etc/passwd\" is not allowed: it goes through a symlink",
            ),
            (
                layer(|b| special(b, "stolen", EntryType::Link, Some("etc/shadow"))),
                "layer entry \"stolen\" is not allowed: hardlink to a file this layer does not have",
            ),
            (
                {
                    let mut b = tar::Builder::new(Vec::new());
                    let mut h = raw_path_header(b"link", EntryType::Link);
                    h.as_old_mut().linkname[..9].copy_from_slice(b"../../etc");
                    h.set_cksum();
                    b.append(&h, &[][..]).unwrap();
                    b.into_inner().unwrap()
                },
                "layer entry \"link\" is not allowed: it contains '..'",
            ),
        ];
        for (tar, message) in cases {
            let outer = tempfile::tempdir().unwrap();
            let root = outer.path().join("tree");
            fs::create_dir(&root).unwrap();
            let err = unpack(&tar[..], &root).unwrap_err();
            assert_eq!(err.to_string(), message);
            assert!(!outer.path().join("escape").exists());
        }
    }

    #[test]
    fn truncated_archives_are_corrupt() {
        let tar = layer(|b| file(b, "big", &[7u8; 4096], 0o644));
        let dir = tempfile::tempdir().unwrap();
        let err = unpack(&tar[..1024], dir.path()).unwrap_err();
        assert!(matches!(err, LayerError::Corrupt(_)), "{err}");
    }
}
