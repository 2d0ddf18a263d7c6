//! Sentinel trees for the hostile-input suite: host files outside the
//! engine's directories whose owners, modes, contents, link targets and
//! xattrs are recorded before a hostile command and compared after it.
//! Shared by several test binaries, each using part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What a sentinel path looked like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub content: Vec<u8>,
    pub xattr: Option<Vec<u8>>,
}

pub const XATTR: &str = "user.cocoon-sentinel";

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    let n = rustix_free_lgetxattr(path, name, &mut buf)?;
    buf.truncate(n);
    Some(buf)
}

fn rustix_free_lgetxattr(path: &Path, name: &str, buf: &mut [u8]) -> Option<usize> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: valid C strings and a buffer of the given length.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then_some(n as usize)
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C strings and a buffer of the given length.
    unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        ) == 0
    }
}

/// Makes `<dir>/hostdir/{file,key}` (root-owned 0600) and `<dir>/hostdir/sub/`
/// with an xattr where the filesystem allows; returns `<dir>/hostdir`.
pub fn plant(dir: &Path) -> PathBuf {
    let host = dir.join("hostdir");
    std::fs::create_dir_all(host.join("sub")).unwrap();
    for (name, data) in [
        ("file", &b"host file\n"[..]),
        ("key", b"PRIVATE KEY\n"),
        ("sub/data", b"d\n"),
    ] {
        let path = host.join(name);
        std::fs::write(&path, data).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o700)).unwrap();
    // tmpfs without user xattrs just records none.
    set_xattr(&host.join("file"), XATTR, b"sentinel");
    set_xattr(&host, XATTR, b"sentinel-dir");
    host
}

/// Every path under `dir` (itself included), skipping `skip` subtrees.
pub fn snapshot(dir: &Path, skip: &[PathBuf]) -> BTreeMap<PathBuf, Seen> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if skip.iter().any(|s| path.starts_with(s)) {
            continue;
        }
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let content = if meta.file_type().is_symlink() {
            use std::os::unix::ffi::OsStrExt;
            std::fs::read_link(&path)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec()
        } else if meta.is_file() {
            std::fs::read(&path).unwrap()
        } else {
            Vec::new()
        };
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        }
        out.insert(
            path.clone(),
            Seen {
                mode: meta.mode(),
                uid: meta.uid(),
                gid: meta.gid(),
                content,
                xattr: xattr(&path, XATTR),
            },
        );
    }
    out
}

/// Asserts nothing changed, appeared or went, naming the first difference.
pub fn assert_unchanged(before: &BTreeMap<PathBuf, Seen>, after: &BTreeMap<PathBuf, Seen>) {
    for (path, seen) in before {
        match after.get(path) {
            None => panic!("{} was deleted", path.display()),
            Some(now) => assert_eq!(now, seen, "{} changed", path.display()),
        }
    }
    for path in after.keys() {
        assert!(before.contains_key(path), "{} appeared", path.display());
    }
}

/// No path under `dir` carries an overlay opaque xattr.
pub fn assert_no_opaque(dir: &Path) {
    for path in snapshot(dir, &[]).keys() {
        assert_eq!(
            xattr(path, "trusted.overlay.opaque"),
            None,
            "{} was marked opaque",
            path.display()
        );
    }
}

/// Asserts that a command succeeded, showing its stderr if not.
pub fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
