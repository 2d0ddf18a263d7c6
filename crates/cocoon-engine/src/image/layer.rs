//! One OCI layer tar → a directory tree ready for `mkfs.erofs`.
//!
//! The tree is what overlayfs expects of a lower layer: OCI whiteouts
//! (`.wh.NAME`) become 0:0 character devices, opaque markers
//! (`.wh..wh..opq`) become `trusted.overlay.opaque=y` on their directory, so a
//! file an upper layer deletes stays deleted in the guest. Ownership, modes,
//! xattrs, hardlinks, symlinks and device nodes are kept.
//!
//! Layers are untrusted input: no entry may leave the tree, through `..`, an
//! absolute path, a hardlink, or a symlink planted by an earlier entry. So
//! the tree is never touched through a path string:
//! - every path is resolved from a descriptor of the tree's root with
//!   `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`,
//!   parents one component at a time (created with `mkdirat` when missing);
//! - each object is created relative to its parent's descriptor, and its
//!   owner, mode and xattrs are applied through its own descriptor (symlinks,
//!   devices and fifos, which cannot be opened for that, through the parent's
//!   descriptor and their name, never following a link);
//! - directory modes and owners are applied last, to the inode recorded when
//!   the directory was made; a directory replaced since gets nothing;
//! - boot files are read back through the same resolution, only if they are
//!   regular files of at most [`MAX_BOOT_FILE_BYTES`].
//!
//! Hand-written rather than `tar::Archive::unpack`: that unpacks container
//! whiteouts as plain files, and checks no symlink in the parents of a path.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, XattrFlags};
use rustix::io::Errno;
use tar::EntryType;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// The largest kernel or initrd a layer may carry.
pub const MAX_BOOT_FILE_BYTES: u64 = 512 << 20;

/// How every path inside a tree is resolved: beneath its root, through no
/// symlink at all (nor /proc magic link).
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("corrupt layer archive: {0}")]
    Corrupt(io::Error),
    #[error("layer entry {path:?} is not allowed: {reason}")]
    Hostile { path: String, reason: &'static str },
    #[error("boot file {path:?} refused: {reason}")]
    BootFile { path: String, reason: &'static str },
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

/// Opens `path` beneath `dir`, following no link of any kind.
fn open_beneath(dir: BorrowedFd<'_>, path: &Path, flags: OFlags) -> Result<OwnedFd, Errno> {
    // openat2 refuses a mode without O_CREAT.
    let mode = if flags.contains(OFlags::CREATE) {
        Mode::from_raw_mode(0o600)
    } else {
        Mode::empty()
    };
    rustix::fs::openat2(
        dir,
        path,
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        mode,
        RESOLVE,
    )
}

fn open_dir(dir: BorrowedFd<'_>, path: &Path) -> Result<OwnedFd, Errno> {
    open_beneath(dir, path, OFlags::RDONLY | OFlags::DIRECTORY)
}

fn is_dir(stat: &rustix::fs::Stat) -> bool {
    FileType::from_raw_mode(stat.st_mode) == FileType::Directory
}

fn chown_fd(fd: BorrowedFd<'_>, uid: u64, gid: u64) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we own.
    let ret = unsafe { libc::fchown(fd.as_raw_fd(), uid as libc::uid_t, gid as libc::gid_t) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// chown of `name` in `dir`, not following it if it is a symlink.
fn chown_at(dir: BorrowedFd<'_>, name: &OsStr, uid: u64, gid: u64) -> io::Result<()> {
    let name = std::ffi::CString::new(name.as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: valid C string, plain syscall relative to a descriptor we own.
    let ret = unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.as_ptr(),
            uid as libc::uid_t,
            gid as libc::gid_t,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Where an entry's metadata goes: its own descriptor, or (for what cannot be
/// opened for writing) its name in its parent's descriptor.
enum Target<'a> {
    Fd(BorrowedFd<'a>),
    At(BorrowedFd<'a>, &'a OsStr),
}

fn set_xattr(target: &Target<'_>, name: &str, value: &[u8]) -> io::Result<()> {
    match target {
        Target::Fd(fd) => rustix::fs::fsetxattr(fd, name, value, XattrFlags::empty()),
        Target::At(dir, file) => {
            // The parent is our descriptor; the last component is not followed.
            let mut path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
            path.push(file);
            rustix::fs::lsetxattr(&path, name, value, XattrFlags::empty())
        }
    }
    .map_err(io::Error::from)
}

/// Removes whatever is at `name` in `dir` (a later entry replaces an earlier
/// one), a directory with all its contents, never following a link.
fn remove_existing(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) if is_dir(&stat) => {
            let sub = open_dir(dir, Path::new(name))?;
            let mut names = Vec::new();
            let mut entries = rustix::fs::Dir::read_from(&sub)?;
            while let Some(entry) = entries.read() {
                let entry = entry?;
                let bytes = entry.file_name().to_bytes();
                if bytes != b"." && bytes != b".." {
                    names.push(bytes.to_vec());
                }
            }
            for child in names {
                remove_existing(sub.as_fd(), OsStr::from_bytes(&child))?;
            }
            rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
        }
        Ok(_) => rustix::fs::unlinkat(dir, name, AtFlags::empty())?,
        Err(Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// A directory entry's owner and mode, applied last to the inode made for it.
struct DirMeta {
    mode: u32,
    uid: u64,
    gid: u64,
    dev: u64,
    ino: u64,
}

struct Unpacker<'a> {
    root_path: &'a Path,
    root: OwnedFd,
    out: Unpacked,
    /// Directories' final modes and owners, applied last so a read-only
    /// directory does not stop its own contents from being written.
    dirs: BTreeMap<PathBuf, DirMeta>,
}

impl Unpacker<'_> {
    fn write_err(&self, rel: &Path) -> impl Fn(io::Error) -> LayerError + use<> {
        let path = self.root_path.join(rel);
        move |source| LayerError::Write {
            path: path.clone(),
            source,
        }
    }

    /// `rel` and everything under it is being replaced: its directories'
    /// deferred metadata goes with it.
    fn forget(&mut self, rel: &Path) {
        self.dirs.retain(|dir, _| !dir.starts_with(rel));
    }

    /// The descriptor of `rel`'s parent directory, resolved beneath the root
    /// one component at a time through no symlink; missing directories are
    /// created when `create`, else the path is reported as `missing`.
    fn parent_dir(
        &self,
        rel: &Path,
        shown: &str,
        create: bool,
        missing: &'static str,
    ) -> Result<OwnedFd, LayerError> {
        let mut at = self
            .root
            .try_clone()
            .map_err(self.write_err(Path::new("")))?;
        let mut walked = PathBuf::new();
        let hostile = |reason| LayerError::Hostile {
            path: shown.to_string(),
            reason,
        };
        for part in rel.parent().into_iter().flat_map(Path::components) {
            let name = Path::new(part.as_os_str());
            walked.push(name);
            let next = match open_dir(at.as_fd(), name) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => {
                    rustix::fs::mkdirat(&at, name, Mode::from_raw_mode(0o755))
                        .map_err(|e| self.write_err(&walked)(e.into()))?;
                    open_dir(at.as_fd(), name).map_err(|e| self.write_err(&walked)(e.into()))?
                }
                Err(Errno::NOENT) => return Err(hostile(missing)),
                // O_DIRECTORY on a symlink reports ENOTDIR before ELOOP.
                Err(Errno::LOOP | Errno::NOTDIR) => {
                    let symlink = rustix::fs::statat(&at, name, AtFlags::SYMLINK_NOFOLLOW)
                        .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Symlink);
                    return Err(hostile(if symlink {
                        "it goes through a symlink"
                    } else {
                        "a parent is not a directory"
                    }));
                }
                Err(e) => return Err(self.write_err(&walked)(e.into())),
            };
            at = next;
        }
        Ok(at)
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
        let name_os = rel.file_name().expect("a cleaned path ends in a name");
        let name = name_os.to_str().unwrap_or("").to_string();
        let werr = self.write_err(&rel);

        let parent = self.parent_dir(&rel, &shown, true, "a parent is missing")?;
        let parent = parent.as_fd();

        // OCI whiteouts → overlayfs whiteouts.
        if name == OPAQUE_MARKER {
            // Set now, on the directory just resolved: never through a path later.
            return set_xattr(&Target::Fd(parent), "trusted.overlay.opaque", b"y")
                .map_err(self.write_err(rel.parent().unwrap_or(Path::new(""))));
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(LayerError::Hostile {
                    path: shown,
                    reason: "it is a malformed whiteout",
                });
            }
            let hidden_rel = rel.with_file_name(hidden);
            self.forget(&hidden_rel);
            let hidden = OsStr::new(hidden);
            remove_existing(parent, hidden).map_err(&werr)?;
            rustix::fs::mknodat(parent, hidden, FileType::CharacterDevice, Mode::empty(), 0)
                .map_err(|e| werr(e.into()))?;
            return Ok(());
        }

        // The created object's own descriptor, when it can be opened.
        let created: Option<OwnedFd>;
        match kind {
            EntryType::Directory => {
                let existing = rustix::fs::statat(parent, name_os, AtFlags::SYMLINK_NOFOLLOW).ok();
                if !existing.as_ref().is_some_and(is_dir) {
                    self.forget(&rel);
                    remove_existing(parent, name_os).map_err(&werr)?;
                    rustix::fs::mkdirat(parent, name_os, Mode::from_raw_mode(0o700))
                        .map_err(|e| werr(e.into()))?;
                }
                let fd = open_dir(parent, Path::new(name_os)).map_err(|e| werr(e.into()))?;
                let stat = rustix::fs::fstat(&fd).map_err(|e| werr(e.into()))?;
                self.dirs.insert(
                    rel.clone(),
                    DirMeta {
                        mode,
                        uid,
                        gid,
                        dev: stat.st_dev,
                        ino: stat.st_ino,
                    },
                );
                created = Some(fd);
            }
            EntryType::Regular | EntryType::Continuous => {
                self.forget(&rel);
                remove_existing(parent, name_os).map_err(&werr)?;
                let fd = open_beneath(
                    parent,
                    Path::new(name_os),
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
                )
                .map_err(|e| werr(e.into()))?;
                let mut file = fs::File::from(fd);
                io::copy(&mut entry, &mut file).map_err(LayerError::Corrupt)?;
                if is_boot_candidate(&rel, "vmlinuz") {
                    self.out.kernel = Some(rel.clone());
                }
                if is_boot_candidate(&rel, "initrd.img") {
                    self.out.initrd = Some(rel.clone());
                }
                created = Some(file.into());
            }
            EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(LayerError::Corrupt)?
                    .ok_or_else(|| LayerError::Hostile {
                        path: shown.clone(),
                        reason: "symlink without target",
                    })?;
                self.forget(&rel);
                remove_existing(parent, name_os).map_err(&werr)?;
                // The target is stored verbatim: it is only ever resolved inside the guest.
                rustix::fs::symlinkat(link.as_ref(), parent, name_os)
                    .map_err(|e| werr(e.into()))?;
                created = None;
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
                const NOT_HERE: &str = "hardlink to a file this layer does not have";
                let source_dir = self.parent_dir(&source, &shown, false, NOT_HERE)?;
                let source_name = source.file_name().expect("a cleaned path ends in a name");
                let is_file =
                    rustix::fs::statat(&source_dir, source_name, AtFlags::SYMLINK_NOFOLLOW)
                        .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::RegularFile);
                if !is_file {
                    return Err(LayerError::Hostile {
                        path: shown,
                        reason: NOT_HERE,
                    });
                }
                self.forget(&rel);
                remove_existing(parent, name_os).map_err(&werr)?;
                rustix::fs::linkat(&source_dir, source_name, parent, name_os, AtFlags::empty())
                    .map_err(|e| werr(e.into()))?;
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
                    EntryType::Char => FileType::CharacterDevice,
                    EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                self.forget(&rel);
                remove_existing(parent, name_os).map_err(&werr)?;
                rustix::fs::mknodat(
                    parent,
                    name_os,
                    file_type,
                    Mode::empty(),
                    libc::makedev(major, minor),
                )
                .map_err(|e| werr(e.into()))?;
                created = None;
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

        let target = match &created {
            Some(fd) => Target::Fd(fd.as_fd()),
            None => Target::At(parent, name_os),
        };
        // Owner first: chown(2) clears setuid bits and file capabilities, which
        // the mode and xattrs below then set for good.
        if kind != EntryType::Directory {
            match &target {
                Target::Fd(fd) => chown_fd(*fd, uid, gid),
                Target::At(dir, file) => chown_at(*dir, file, uid, gid),
            }
            .map_err(&werr)?;
            match &target {
                Target::Fd(fd) => rustix::fs::fchmod(fd, Mode::from_raw_mode(mode)),
                // A node just made in a resolved directory; never a symlink here.
                Target::At(dir, file) if kind != EntryType::Symlink => {
                    rustix::fs::chmodat(dir, *file, Mode::from_raw_mode(mode), AtFlags::empty())
                }
                Target::At(..) => Ok(()),
            }
            .map_err(|e| werr(e.into()))?;
        }
        if let Some(extensions) = entry.pax_extensions().map_err(LayerError::Corrupt)? {
            for ext in extensions {
                let ext = ext.map_err(LayerError::Corrupt)?;
                if let Some(name) = ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr.")) {
                    set_xattr(&target, name, ext.value_bytes()).map_err(&werr)?;
                }
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Unpacked, LayerError> {
        // Deepest first, so a parent's restrictive mode never blocks a child.
        for (dir, meta) in std::mem::take(&mut self.dirs).into_iter().rev() {
            let fd = match open_dir(self.root.as_fd(), &dir) {
                Ok(fd) => fd,
                // Replaced by a later entry (a symlink, a file, nothing): dropped.
                Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => continue,
                Err(e) => return Err(self.write_err(&dir)(e.into())),
            };
            let stat = rustix::fs::fstat(&fd).map_err(|e| self.write_err(&dir)(e.into()))?;
            if (stat.st_dev, stat.st_ino) != (meta.dev, meta.ino) {
                continue; // another directory now: not this entry's
            }
            chown_fd(fd.as_fd(), meta.uid, meta.gid).map_err(self.write_err(&dir))?;
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(meta.mode))
                .map_err(|e| self.write_err(&dir)(e.into()))?;
        }
        Ok(self.out)
    }
}

/// Unpacks an uncompressed layer tar into `root` (an empty directory).
pub fn unpack(reader: impl Read, root: &Path) -> Result<Unpacked, LayerError> {
    let root_fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| LayerError::Write {
        path: root.to_path_buf(),
        source: e.into(),
    })?;
    let mut archive = tar::Archive::new(reader);
    let mut unpacker = Unpacker {
        root_path: root,
        root: root_fd,
        out: Unpacked::default(),
        dirs: BTreeMap::new(),
    };
    for entry in archive.entries().map_err(LayerError::Corrupt)? {
        unpacker.entry(entry.map_err(LayerError::Corrupt)?)?;
    }
    unpacker.finish()
}

/// Opens the boot file `rel` of an unpacked `tree` for reading: resolved
/// beneath the tree through no link, a regular file (never a symlink, device
/// or fifo), of at most [`MAX_BOOT_FILE_BYTES`]. Returns it with its size.
pub fn open_boot_file(tree: &Path, rel: &Path) -> Result<(fs::File, u64), LayerError> {
    let refuse = |reason| LayerError::BootFile {
        path: rel.display().to_string(),
        reason,
    };
    let write_err = |e: Errno| LayerError::Write {
        path: tree.join(rel),
        source: e.into(),
    };
    let root = rustix::fs::open(
        tree,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(write_err)?;
    let check = |fd: &OwnedFd| -> Result<rustix::fs::Stat, LayerError> {
        let stat = rustix::fs::fstat(fd).map_err(write_err)?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(refuse("it is not a regular file"));
        }
        if stat.st_size as u64 > MAX_BOOT_FILE_BYTES {
            return Err(refuse("it is larger than the 512 MiB limit"));
        }
        Ok(stat)
    };
    let opened = |flags| match open_beneath(root.as_fd(), rel, flags) {
        Ok(fd) => Ok(fd),
        Err(Errno::LOOP) => Err(refuse("it is a symlink or lies under one")),
        Err(Errno::NOENT) => Err(refuse("it is missing")),
        Err(Errno::NOTDIR) => Err(refuse("a parent is not a directory")),
        Err(e) => Err(write_err(e)),
    };
    // Looked at through O_PATH first: opening a device or fifo could block or act.
    let seen = check(&opened(OFlags::PATH)?)?;
    let fd = opened(OFlags::RDONLY | OFlags::NONBLOCK)?;
    let stat = check(&fd)?;
    if (stat.st_dev, stat.st_ino) != (seen.st_dev, seen.st_ino) {
        return Err(refuse("it changed while being opened"));
    }
    Ok((fs::File::from(fd), stat.st_size as u64))
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
mod fuzz;

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
        let n = rustix::fs::lgetxattr(
            dir.path().join("var/cache"),
            "trusted.overlay.opaque",
            &mut value,
        )
        .unwrap();
        assert_eq!(&value[..n], b"y");
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
