//! Disk copies: a reflink (FICLONE) where the filesystem shares extents, else
//! a sparse copy that reads only the data extents (SEEK_DATA/SEEK_HOLE) and
//! copies them in kernel space (copy_file_range), keeping the holes.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// How a copy was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copied {
    Reflink,
    Sparse,
}

/// Copies `src` to `dst` (which must not exist), holes preserved.
pub fn copy_file(src: &Path, dst: &Path) -> io::Result<Copied> {
    let from = File::open(src)?;
    let to = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)?;
    let result = copy_into(&from, &to);
    if result.is_err() {
        let _ = std::fs::remove_file(dst);
    }
    result
}

/// Copies the open file `from` to `dst` (which must not exist), holes
/// preserved: for a file opened without following links.
pub fn copy_from(from: &File, dst: &Path) -> io::Result<Copied> {
    let to = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)?;
    let result = copy_into(from, &to);
    if result.is_err() {
        let _ = std::fs::remove_file(dst);
    }
    result
}

fn copy_into(from: &File, to: &File) -> io::Result<Copied> {
    if rustix::fs::ioctl_ficlone(to, from).is_ok() {
        return Ok(Copied::Reflink);
    }
    let len = from.metadata()?.len();
    let mut pos = 0u64;
    while pos < len {
        let data = match rustix::fs::seek(from, rustix::fs::SeekFrom::Data(pos)) {
            Ok(offset) => offset,
            // ENXIO: no data after pos, the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = rustix::fs::seek(from, rustix::fs::SeekFrom::Hole(data))?.min(len);
        let mut off_in = data;
        let mut off_out = data;
        while off_in < hole {
            let want = (hole - off_in).min(1 << 30) as usize;
            let n = rustix::fs::copy_file_range(
                from.as_fd(),
                Some(&mut off_in),
                to.as_fd(),
                Some(&mut off_out),
                want,
            )?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "source shrank while copying",
                ));
            }
        }
        pos = hole;
    }
    to.set_len(len)?;
    Ok(Copied::Sparse)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn sparse_copy_keeps_bytes_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.raw");
        let mut f = File::create(&src).unwrap();
        f.set_len(256 << 20).unwrap();
        f.seek(SeekFrom::Start(4096)).unwrap();
        f.write_all(b"hello").unwrap();
        f.seek(SeekFrom::Start(200 << 20)).unwrap();
        f.write_all(&[7u8; 100_000]).unwrap();
        drop(f);
        let dst = dir.path().join("dst.raw");
        copy_file(&src, &dst).unwrap();
        let (a, b) = (std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        assert_eq!(a.len(), b.len());
        assert!(a == b, "contents differ");
        assert!(
            std::fs::metadata(&dst).unwrap().blocks() * 512 < 4 << 20,
            "holes kept"
        );
        assert!(copy_file(&src, &dst).is_err(), "never overwrites");
    }
}
