//! Unit tests of the layer unpacker: every entry kind, whiteouts, hostile
//! paths and links, truncated archives.

use super::*;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use tar::EntryType;

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
