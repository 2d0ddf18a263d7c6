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

use std::fs;
use std::io::{self, BufRead, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;

mod beneath;
mod unpacker;

use beneath::open_beneath;
use unpacker::Unpacker;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// The largest kernel or initrd a layer may carry.
pub const MAX_BOOT_FILE_BYTES: u64 = 512 << 20;

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
    let mut unpacker = Unpacker::new(root, root_fd);
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
    decompressed(io::BufReader::with_capacity(1 << 20, fs::File::open(path)?))
}

/// A layer stream with its gzip or zstd compression undone (detected by
/// magic); anything else is passed through as it is. The decoders read
/// straight from `reader`'s buffer: a stream that arrives in memory (a
/// download) is not copied once more on its way in.
pub fn decompressed<'a>(
    mut reader: impl BufRead + Send + 'a,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    let mut magic = [0u8; 4];
    let n = read_up_to(&mut reader, &mut magic)?;
    let stream = io::Cursor::new(magic[..n].to_vec()).chain(reader);
    Ok(match &magic[..n] {
        [0x1f, 0x8b, ..] => Box::new(flate2::bufread::MultiGzDecoder::new(stream)),
        [0x28, 0xb5, 0x2f, 0xfd] => Box::new(zstd::stream::read::Decoder::with_buffer(stream)?),
        _ => Box::new(stream),
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
mod tests;
