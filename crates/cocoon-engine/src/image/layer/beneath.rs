//! Filesystem calls confined beneath a tree's root: every path resolved from
//! a descriptor through no symlink, and every change (owner, xattr, removal)
//! made through a descriptor, never through a path string a hostile layer
//! could have redirected.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, XattrFlags};
use rustix::io::Errno;

/// How every path inside a tree is resolved: beneath its root, through no
/// symlink at all (nor /proc magic link).
pub(super) const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// Opens `path` beneath `dir`, following no link of any kind.
pub(super) fn open_beneath(
    dir: BorrowedFd<'_>,
    path: &Path,
    flags: OFlags,
) -> Result<OwnedFd, Errno> {
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

pub(super) fn open_dir(dir: BorrowedFd<'_>, path: &Path) -> Result<OwnedFd, Errno> {
    open_beneath(dir, path, OFlags::RDONLY | OFlags::DIRECTORY)
}

pub(super) fn is_dir(stat: &rustix::fs::Stat) -> bool {
    FileType::from_raw_mode(stat.st_mode) == FileType::Directory
}

/// A tar owner as the kernel takes it. Truncation is what is meant: a tar
/// header can give an owner wider than 32 bits (in base-256), which keeps
/// its low 32 bits, as chown(2) itself would make of a wider value; that
/// yields no owner the layer could not have named directly.
#[allow(clippy::cast_possible_truncation)]
fn kernel_id(id: u64) -> libc::uid_t {
    id as libc::uid_t
}

pub(super) fn chown_fd(fd: BorrowedFd<'_>, uid: u64, gid: u64) -> io::Result<()> {
    // SAFETY: fchown takes plain integers; `fd` is an open descriptor for as
    // long as it is borrowed.
    let ret = unsafe { libc::fchown(fd.as_raw_fd(), kernel_id(uid), kernel_id(gid)) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// chown of `name` in `dir`, not following it if it is a symlink.
pub(super) fn chown_at(dir: BorrowedFd<'_>, name: &OsStr, uid: u64, gid: u64) -> io::Result<()> {
    let name = std::ffi::CString::new(name.as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `name` is a NUL-terminated C string that outlives the call, and
    // `dir` an open descriptor for as long as it is borrowed.
    let ret = unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.as_ptr(),
            kernel_id(uid),
            kernel_id(gid),
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
pub(super) enum Target<'a> {
    Fd(BorrowedFd<'a>),
    At(BorrowedFd<'a>, &'a OsStr),
}

pub(super) fn set_xattr(target: &Target<'_>, name: &str, value: &[u8]) -> io::Result<()> {
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
pub(super) fn remove_existing(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
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
