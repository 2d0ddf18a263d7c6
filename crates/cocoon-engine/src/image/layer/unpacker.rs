//! The unpacker proper: one tar entry at a time into the tree, each kind
//! (directory, file, link, device, whiteout) made beneath the root through
//! descriptors, its owner, mode and xattrs set through the same descriptors,
//! and directories' own metadata kept for the end.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use tar::EntryType;

use super::beneath::{
    Target, chown_at, chown_fd, is_dir, open_beneath, open_dir, remove_existing, set_xattr,
};
use super::{LayerError, OPAQUE_MARKER, Unpacked, WHITEOUT_PREFIX, clean, is_boot_candidate};

/// An entry's permission bits and owner, as its header gives them.
struct Owner {
    mode: u32,
    uid: u64,
    gid: u64,
}

impl Owner {
    fn of(header: &tar::Header) -> Result<Owner, LayerError> {
        Ok(Owner {
            mode: header.mode().map_err(LayerError::Corrupt)? & 0o7777,
            uid: header.uid().map_err(LayerError::Corrupt)?,
            gid: header.gid().map_err(LayerError::Corrupt)?,
        })
    }
}

/// The last component of a cleaned path: the name made in its parent.
fn name_of(rel: &Path) -> &OsStr {
    rel.file_name().expect("a cleaned path ends in a name")
}

/// A directory entry's owner and mode, applied last to the inode made for it.
struct DirMeta {
    mode: u32,
    uid: u64,
    gid: u64,
    dev: u64,
    ino: u64,
}

pub(super) struct Unpacker<'a> {
    root_path: &'a Path,
    root: OwnedFd,
    out: Unpacked,
    /// Directories' final modes and owners, applied last so a read-only
    /// directory does not stop its own contents from being written.
    dirs: BTreeMap<PathBuf, DirMeta>,
    /// File data passes through here: large reads from the decompressor and
    /// large writes (`io::copy` would use 8 KiB for both), one allocation
    /// for the whole layer.
    buf: Vec<u8>,
}

/// The size of [`Unpacker`]'s copy buffer.
const COPY_BUF: usize = 256 << 10;

impl<'a> Unpacker<'a> {
    pub(super) fn new(root_path: &'a Path, root: OwnedFd) -> Unpacker<'a> {
        Unpacker {
            root_path,
            root,
            out: Unpacked::default(),
            dirs: BTreeMap::new(),
            buf: Vec::new(),
        }
    }

    /// Copies an entry's data into `file`: a read that fails is a corrupt
    /// archive, a write that fails is the tree's.
    fn copy_data(
        &mut self,
        rel: &Path,
        entry: &mut impl Read,
        file: &mut fs::File,
    ) -> Result<(), LayerError> {
        use std::io::Write;
        if self.buf.is_empty() {
            self.buf = vec![0u8; COPY_BUF];
        }
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(LayerError::Corrupt(e)),
            };
            file.write_all(&self.buf[..n])
                .map_err(self.write_err(rel))?;
        }
    }

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

    /// Unpacks one entry: its path checked and its parents resolved, then
    /// the object its kind asks for made, then its owner, mode and xattrs.
    pub(super) fn entry<R: Read>(
        &mut self,
        mut entry: tar::Entry<'_, R>,
    ) -> Result<(), LayerError> {
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
        let owner = Owner::of(entry.header())?;
        let kind = entry.header().entry_type();
        let name_os = rel.file_name().expect("a cleaned path ends in a name");
        let name = name_os.to_str().unwrap_or("").to_string();

        let parent = self.parent_dir(&rel, &shown, true, "a parent is missing")?;
        let parent = parent.as_fd();

        // OCI whiteouts → overlayfs whiteouts.
        if name == OPAQUE_MARKER {
            // Set now, on the directory just resolved: never through a path later.
            return set_xattr(&Target::Fd(parent), "trusted.overlay.opaque", b"y")
                .map_err(self.write_err(rel.parent().unwrap_or(Path::new(""))));
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            return self.whiteout(parent, &rel, hidden, shown);
        }

        // The created object's own descriptor, when it can be opened.
        let created: Option<OwnedFd> = match kind {
            EntryType::Directory => Some(self.make_dir(parent, &rel, &owner)?),
            EntryType::Regular | EntryType::Continuous => {
                Some(self.write_file(parent, &rel, &mut entry)?)
            }
            EntryType::Symlink => {
                self.make_symlink(parent, &rel, &shown, &entry)?;
                None
            }
            EntryType::Link => return self.make_hardlink(parent, &rel, shown, &entry),
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                self.make_node(parent, &rel, entry.header())?;
                None
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
        };

        let target = match &created {
            Some(fd) => Target::Fd(fd.as_fd()),
            None => Target::At(parent, name_os),
        };
        if kind != EntryType::Directory {
            self.set_owner_and_mode(&target, &rel, kind, &owner)?;
        }
        self.set_xattrs(&mut entry, &target, &rel)
    }

    /// `.wh.NAME`: whatever NAME was is replaced by a 0:0 character device.
    fn whiteout(
        &mut self,
        parent: BorrowedFd<'_>,
        rel: &Path,
        hidden: &str,
        shown: String,
    ) -> Result<(), LayerError> {
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err(LayerError::Hostile {
                path: shown,
                reason: "it is a malformed whiteout",
            });
        }
        let werr = self.write_err(rel);
        let hidden_rel = rel.with_file_name(hidden);
        self.forget(&hidden_rel);
        let hidden = OsStr::new(hidden);
        remove_existing(parent, hidden).map_err(&werr)?;
        rustix::fs::mknodat(parent, hidden, FileType::CharacterDevice, Mode::empty(), 0)
            .map_err(|e| werr(e.into()))?;
        Ok(())
    }

    /// Removes what is at `rel` (a later entry replaces an earlier one),
    /// forgetting its directories' deferred metadata.
    fn replace(&mut self, parent: BorrowedFd<'_>, rel: &Path) -> Result<(), LayerError> {
        self.forget(rel);
        remove_existing(parent, name_of(rel)).map_err(self.write_err(rel))
    }

    /// A directory: kept if one is there already, its owner and mode
    /// recorded against its inode for [`Unpacker::finish`].
    fn make_dir(
        &mut self,
        parent: BorrowedFd<'_>,
        rel: &Path,
        owner: &Owner,
    ) -> Result<OwnedFd, LayerError> {
        let werr = self.write_err(rel);
        let name = name_of(rel);
        let existing = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW).ok();
        if !existing.as_ref().is_some_and(is_dir) {
            self.replace(parent, rel)?;
            rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700))
                .map_err(|e| werr(e.into()))?;
        }
        let fd = open_dir(parent, Path::new(name)).map_err(|e| werr(e.into()))?;
        let stat = rustix::fs::fstat(&fd).map_err(|e| werr(e.into()))?;
        self.dirs.insert(
            rel.to_path_buf(),
            DirMeta {
                mode: owner.mode,
                uid: owner.uid,
                gid: owner.gid,
                dev: stat.st_dev,
                ino: stat.st_ino,
            },
        );
        Ok(fd)
    }

    /// A regular file with the entry's bytes; a kernel or initrd is noted.
    fn write_file<R: Read>(
        &mut self,
        parent: BorrowedFd<'_>,
        rel: &Path,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<OwnedFd, LayerError> {
        self.replace(parent, rel)?;
        let fd = open_beneath(
            parent,
            Path::new(name_of(rel)),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
        )
        .map_err(|e| self.write_err(rel)(e.into()))?;
        let mut file = fs::File::from(fd);
        self.copy_data(rel, entry, &mut file)?;
        if is_boot_candidate(rel, "vmlinuz") {
            self.out.kernel = Some(rel.to_path_buf());
        }
        if is_boot_candidate(rel, "initrd.img") {
            self.out.initrd = Some(rel.to_path_buf());
        }
        Ok(file.into())
    }

    fn make_symlink<R: Read>(
        &mut self,
        parent: BorrowedFd<'_>,
        rel: &Path,
        shown: &str,
        entry: &tar::Entry<'_, R>,
    ) -> Result<(), LayerError> {
        let link = entry
            .link_name()
            .map_err(LayerError::Corrupt)?
            .ok_or_else(|| LayerError::Hostile {
                path: shown.to_string(),
                reason: "symlink without target",
            })?;
        self.replace(parent, rel)?;
        // The target is stored verbatim: it is only ever resolved inside the guest.
        rustix::fs::symlinkat(link.as_ref(), parent, name_of(rel))
            .map_err(|e| self.write_err(rel)(e.into()))
    }

    /// A hardlink, only to a regular file this layer made; it shares that
    /// inode's metadata, so nothing more is set.
    fn make_hardlink<R: Read>(
        &mut self,
        parent: BorrowedFd<'_>,
        rel: &Path,
        shown: String,
        entry: &tar::Entry<'_, R>,
    ) -> Result<(), LayerError> {
        const NOT_HERE: &str = "hardlink to a file this layer does not have";
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
        let source_dir = self.parent_dir(&source, &shown, false, NOT_HERE)?;
        let source_name = source.file_name().expect("a cleaned path ends in a name");
        let is_file = rustix::fs::statat(&source_dir, source_name, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::RegularFile);
        if !is_file {
            return Err(LayerError::Hostile {
                path: shown,
                reason: NOT_HERE,
            });
        }
        self.replace(parent, rel)?;
        rustix::fs::linkat(
            &source_dir,
            source_name,
            parent,
            name_of(rel),
            AtFlags::empty(),
        )
        .map_err(|e| self.write_err(rel)(e.into()))
    }

    /// A character or block device (its numbers from the header) or a fifo.
    fn make_node(
        &mut self,
        parent: BorrowedFd<'_>,
        rel: &Path,
        header: &tar::Header,
    ) -> Result<(), LayerError> {
        let kind = header.entry_type();
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
        self.replace(parent, rel)?;
        rustix::fs::mknodat(
            parent,
            name_of(rel),
            file_type,
            Mode::empty(),
            libc::makedev(major, minor),
        )
        .map_err(|e| self.write_err(rel)(e.into()))
    }

    /// Owner first: chown(2) clears setuid bits and file capabilities, which
    /// the mode and xattrs then set for good.
    fn set_owner_and_mode(
        &self,
        target: &Target<'_>,
        rel: &Path,
        kind: EntryType,
        owner: &Owner,
    ) -> Result<(), LayerError> {
        let werr = self.write_err(rel);
        match target {
            Target::Fd(fd) => chown_fd(*fd, owner.uid, owner.gid),
            Target::At(dir, file) => chown_at(*dir, file, owner.uid, owner.gid),
        }
        .map_err(&werr)?;
        let mode = Mode::from_raw_mode(owner.mode);
        match target {
            Target::Fd(fd) => rustix::fs::fchmod(fd, mode),
            // A node just made in a resolved directory; never a symlink here.
            Target::At(dir, file) if kind != EntryType::Symlink => {
                rustix::fs::chmodat(dir, *file, mode, AtFlags::empty())
            }
            Target::At(..) => Ok(()),
        }
        .map_err(|e| werr(e.into()))
    }

    /// The entry's `SCHILY.xattr.*` PAX records, as xattrs of what was made.
    fn set_xattrs<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        target: &Target<'_>,
        rel: &Path,
    ) -> Result<(), LayerError> {
        if let Some(extensions) = entry.pax_extensions().map_err(LayerError::Corrupt)? {
            for ext in extensions {
                let ext = ext.map_err(LayerError::Corrupt)?;
                if let Some(name) = ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr.")) {
                    set_xattr(target, name, ext.value_bytes()).map_err(self.write_err(rel))?;
                }
            }
        }
        Ok(())
    }

    pub(super) fn finish(mut self) -> Result<Unpacked, LayerError> {
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
