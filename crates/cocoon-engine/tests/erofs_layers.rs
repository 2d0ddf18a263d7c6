//! Layers converted to EROFS, mounted and stacked with overlayfs as the guest
//! does, show exactly the flattened image: whiteouts and opaque directories
//! honoured, hardlinks, symlinks, devices, modes and xattrs kept. Every image
//! also passes `fsck.erofs`.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use cocoon_engine::image::{erofs, layer};
use tar::{EntryType, Header};

fn header(path: &str, kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_path(path).unwrap();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(size);
    h
}

struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Layer {
        Layer(tar::Builder::new(Vec::new()))
    }
    fn dir(mut self, path: &str) -> Self {
        let mut h = header(path, EntryType::Directory, 0o755, 0);
        h.set_cksum();
        self.0.append(&h, &[][..]).unwrap();
        self
    }
    fn file(mut self, path: &str, data: &str) -> Self {
        let mut h = header(path, EntryType::Regular, 0o644, data.len() as u64);
        h.set_cksum();
        self.0.append(&h, data.as_bytes()).unwrap();
        self
    }
    fn link(mut self, kind: EntryType, path: &str, target: &str) -> Self {
        let mut h = header(path, kind, 0o777, 0);
        h.set_link_name(target).unwrap();
        h.set_cksum();
        self.0.append(&h, &[][..]).unwrap();
        self
    }
    fn device(mut self, path: &str, major: u32, minor: u32) -> Self {
        let mut h = header(path, EntryType::Char, 0o666, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        h.set_cksum();
        self.0.append(&h, &[][..]).unwrap();
        self
    }
    fn xattr_file(mut self, path: &str, data: &str, key: &str, value: &str) -> Self {
        self.0
            .append_pax_extensions([(format!("SCHILY.xattr.{key}").as_str(), value.as_bytes())])
            .unwrap();
        self.file(path, data)
    }
    fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// Unmounts everything it mounted, in reverse, even when the test fails.
struct Mounts(Vec<PathBuf>);

impl Drop for Mounts {
    fn drop(&mut self) {
        for target in self.0.iter().rev() {
            let _ = Command::new("umount").arg(target).status();
        }
    }
}

fn mount(args: &[&str], target: &Path, mounts: &mut Mounts) -> bool {
    let ok = Command::new("mount")
        .args(args)
        .arg(target)
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        mounts.0.push(target.to_path_buf());
    }
    ok
}

#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File(String, u64),
    Symlink(PathBuf),
    Char(u64),
}

fn walk(root: &Path, at: &Path, out: &mut BTreeMap<String, Node>) {
    for entry in std::fs::read_dir(at).unwrap() {
        let path = entry.unwrap().path();
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let node = if meta.is_dir() {
            walk(root, &path, out);
            Node::Dir
        } else if meta.file_type().is_symlink() {
            Node::Symlink(std::fs::read_link(&path).unwrap())
        } else if meta.file_type().is_char_device() {
            Node::Char(meta.rdev())
        } else {
            Node::File(std::fs::read_to_string(&path).unwrap(), meta.ino())
        };
        out.insert(rel, node);
    }
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = [0u8; 64];
    let len =
        // SAFETY: both names are NUL-terminated CStrings and `buf` is valid
        // for `buf.len()` bytes for the whole call.
        unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| buf[..len as usize].to_vec())
}

#[test]
fn stacked_erofs_layers_show_the_flattened_image() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return cocoon_test_skip::skip(
            "stacked_erofs_layers_show_the_flattened_image",
            "needs root for loop and overlay mounts",
        );
    }
    let base = Layer::new()
        .dir("etc/")
        .file("etc/a.conf", "a=1\n")
        .file("etc/deleted.conf", "gone soon\n")
        .dir("var/cache/")
        .file("var/cache/old1", "1")
        .file("var/cache/old2", "2")
        .file("usr/bin/tool", "tool")
        .link(EntryType::Link, "usr/bin/tool-hardlink", "usr/bin/tool")
        .link(EntryType::Symlink, "bin", "usr/bin")
        .device("dev/null", 1, 3)
        .xattr_file(
            "usr/bin/ping",
            "ping",
            "security.capability",
            "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
        )
        .bytes();
    let upper = Layer::new()
        .file("etc/.wh.deleted.conf", "")
        .file("etc/a.conf", "a=2\n")
        .dir("var/cache/")
        .file("var/cache/.wh..wh..opq", "")
        .file("var/cache/new", "n")
        .bytes();
    let boot = Layer::new()
        .file("boot/vmlinuz-6.1", "kernel")
        .file("boot/initrd.img-6.1", "initrd")
        .bytes();

    let dir = tempfile::tempdir().unwrap();
    let mut mounts = Mounts(vec![]);
    let mut lowers = Vec::new();
    for (i, tar) in [base, upper, boot].iter().enumerate() {
        let tree = dir.path().join(format!("tree{i}"));
        std::fs::create_dir(&tree).unwrap();
        let found = layer::unpack(&tar[..], &tree).unwrap();
        if i == 0 {
            assert!(
                xattr(&tree.join("usr/bin/ping"), "security.capability").is_some(),
                "xattr unpacked"
            );
            assert!(xattr(&tree.join("etc"), "user.probe").is_none());
        }
        if i == 2 {
            assert_eq!(found.kernel.as_deref(), Some(Path::new("boot/vmlinuz-6.1")));
            assert_eq!(
                found.initrd.as_deref(),
                Some(Path::new("boot/initrd.img-6.1"))
            );
        }
        let image = dir.path().join(format!("layer{i}.erofs"));
        erofs::build(
            &tree,
            &image,
            &erofs::layer_uuid(&format!("sha256:{i:064}")),
        )
        .unwrap();
        let fsck = Command::new("fsck.erofs").arg(&image).output().unwrap();
        assert!(
            fsck.status.success(),
            "fsck.erofs: {}",
            String::from_utf8_lossy(&fsck.stderr)
        );
        let mnt = dir.path().join(format!("mnt{i}"));
        std::fs::create_dir(&mnt).unwrap();
        if !mount(
            &["-t", "erofs", "-o", "loop,ro", image.to_str().unwrap()],
            &mnt,
            &mut mounts,
        ) {
            return cocoon_test_skip::skip(
                "stacked_erofs_layers_show_the_flattened_image",
                "cannot loop-mount EROFS here (kernel without erofs?)",
            );
        }
        lowers.push(mnt);
    }
    let merged = dir.path().join("merged");
    std::fs::create_dir(&merged).unwrap();
    // lowerdir lists the top layer first, as the guest's initramfs does.
    let lowerdir: Vec<String> = lowers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let options = format!("ro,lowerdir={}", lowerdir.join(":"));
    assert!(
        mount(
            &["-t", "overlay", "overlay", "-o", &options],
            &merged,
            &mut mounts
        ),
        "overlay mount"
    );

    let mut tree = BTreeMap::new();
    walk(&merged, &merged, &mut tree);
    let tool_ino = match &tree["usr/bin/tool"] {
        Node::File(_, ino) => *ino,
        other => panic!("{other:?}"),
    };
    let file = |s: &str| Node::File(s.to_string(), 0);
    let normalised: BTreeMap<String, Node> = tree
        .into_iter()
        .map(|(k, v)| match v {
            Node::File(s, _) => (k, Node::File(s, 0)),
            other => (k, other),
        })
        .collect();
    let expected: BTreeMap<String, Node> = [
        ("bin", Node::Symlink("usr/bin".into())),
        ("boot", Node::Dir),
        ("boot/initrd.img-6.1", file("initrd")),
        ("boot/vmlinuz-6.1", file("kernel")),
        ("dev", Node::Dir),
        ("dev/null", Node::Char(libc::makedev(1, 3))),
        ("etc", Node::Dir),
        ("etc/a.conf", file("a=2\n")),
        ("usr", Node::Dir),
        ("usr/bin", Node::Dir),
        ("usr/bin/ping", file("ping")),
        ("usr/bin/tool", file("tool")),
        ("usr/bin/tool-hardlink", file("tool")),
        ("var", Node::Dir),
        ("var/cache", Node::Dir),
        ("var/cache/new", file("n")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(
        normalised, expected,
        "deleted files must not reappear, opaque dirs must hide the lower content"
    );
    let hardlink = std::fs::metadata(merged.join("usr/bin/tool-hardlink")).unwrap();
    assert_eq!(hardlink.ino(), tool_ino, "hardlink kept");
    assert_eq!(hardlink.nlink(), 2);
    assert!(
        xattr(&merged.join("usr/bin/ping"), "security.capability").is_some(),
        "file capability kept"
    );
}
