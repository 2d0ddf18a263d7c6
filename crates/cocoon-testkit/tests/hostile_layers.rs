//! Hostile layer tars through `cocoon image import`: nothing outside the
//! engine's directories changes, whatever the layer's entries do with links.
//! A sentinel tree (owners, modes, contents, xattrs) outside `root_dir` is
//! compared before and after each import.

mod hostile_support;

use std::path::Path;

use hostile_support::{assert_no_opaque, assert_unchanged, plant, snapshot};
use tar::{EntryType, Header};

fn bin() -> String {
    cocoon_testkit::cocoon_bin()
}

/// A tar written entry by entry, owners and modes as given.
struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Tar {
        Tar(tar::Builder::new(Vec::new()))
    }

    fn entry(mut self, path: &str, kind: EntryType, mode: u32, uid: u64, data: &[u8]) -> Tar {
        let mut h = Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    fn dir(self, path: &str, mode: u32, uid: u64) -> Tar {
        self.entry(path, EntryType::Directory, mode, uid, b"")
    }

    fn file(self, path: &str, data: &[u8]) -> Tar {
        self.entry(path, EntryType::Regular, 0o644, 0, data)
    }

    fn symlink(mut self, path: &str, target: &Path) -> Tar {
        let mut h = Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_entry_type(EntryType::Symlink);
        h.set_link_name(target).unwrap();
        h.set_mode(0o777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(0);
        h.set_cksum();
        self.0.append(&h, &[][..]).unwrap();
        self
    }

    fn boot_files(self) -> Tar {
        self.file("boot/vmlinuz-6.1", b"kernel")
            .file("boot/initrd.img-6.1", b"initrd")
    }

    fn build(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// Imports `tar` as image `evil` in a fresh environment whose sentinel tree
/// lives beside (outside) `root_dir`; asserts the tree unchanged and returns
/// the command's stderr and success.
fn import(tar: impl FnOnce(&Path) -> Vec<u8>) -> (bool, String, cocoon_testkit::CocoonEnv) {
    let env = cocoon_testkit::CocoonEnv::new(bin());
    let outside = tempfile::tempdir().unwrap();
    let host = plant(outside.path());
    let before = snapshot(outside.path(), &[]);
    let layer = env.path().join("evil.tar");
    std::fs::write(&layer, tar(&host)).unwrap();
    let out = env
        .cmd()
        .args(["image", "import", "evil"])
        .arg(&layer)
        .output()
        .unwrap();
    let after = snapshot(outside.path(), &[]);
    assert_unchanged(&before, &after);
    assert_no_opaque(outside.path());
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        env,
    )
}

/// [`import`] fails with `expected` and leaves no work area.
fn import_refused(tar: impl FnOnce(&Path) -> Vec<u8>, expected: &str) {
    let (ok, stderr, env) = import(tar);
    assert!(!ok);
    assert!(stderr.contains(expected), "{stderr}");
    no_work_left(&env);
}

/// [`import`] succeeds.
fn import_ok(tar: impl FnOnce(&Path) -> Vec<u8>) {
    let (ok, stderr, _env) = import(tar);
    assert!(ok, "{stderr}");
}

fn no_work_left(env: &cocoon_testkit::CocoonEnv) {
    let tmp = env.root_dir().join("images/tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "work areas left: {left:?}");
}

/// The reproduction: `x/`, `x/file/` (uid 1000, 0666), then `x` a
/// symlink to a host directory. The directory's deferred owner and mode
/// belong to the inode made for `x/file`, which is gone: the host's
/// `file` keeps root 0600.
#[test]
fn replaced_directory_metadata_never_reaches_the_host() {
    // Without boot files it is a container image, and harmless.
    import_ok(|host| {
        Tar::new()
            .dir("x/", 0o755, 0)
            .dir("x/file/", 0o666, 1000)
            .symlink("x", host)
            .build()
    });

    // With boot files the same layer is a VM image, and still harmless.
    import_ok(|host| {
        Tar::new()
            .dir("x/", 0o755, 0)
            .dir("x/file/", 0o666, 1000)
            .dir("x/sub/", 0o777, 1000)
            .symlink("x", host)
            .boot_files()
            .build()
    });
}

/// Opaque markers: under a directory later replaced by a symlink to the host
/// (set on the layer's own directory, never followed), and under a symlink
/// planted first (refused).
#[test]
fn opaque_markers_never_reach_the_host() {
    import_ok(|host| {
        Tar::new()
            .dir("x/", 0o755, 0)
            .file("x/.wh..wh..opq", b"")
            .dir("x/sub/", 0o755, 0)
            .file("x/sub/.wh..wh..opq", b"")
            .symlink("x", host)
            .boot_files()
            .build()
    });

    import_refused(
        |host| {
            Tar::new()
                .symlink("y", host)
                .file("y/.wh..wh..opq", b"")
                .boot_files()
                .build()
        },
        "layer entry \"y/.wh..wh..opq\" is not allowed: it goes through a symlink",
    );
}

/// A boot file recorded from a regular entry, then replaced in the same layer
/// by a symlink (to a host key, to /dev/zero) or a device node: the import
/// fails naming it, and no host bytes are stored as a kernel or initrd.
#[test]
fn boot_files_replaced_by_links_are_refused() {
    type Case = (&'static str, fn(&Path) -> Vec<u8>, &'static str);
    let cases: [Case; 4] = [
        (
            "initrd → host key",
            |host| {
                Tar::new()
                    .boot_files()
                    .symlink("boot/initrd.img-6.1", &host.join("key"))
                    .build()
            },
            "boot file \"boot/initrd.img-6.1\" refused: it is not a regular file",
        ),
        (
            "kernel → /dev/zero",
            |_| {
                Tar::new()
                    .boot_files()
                    .symlink("boot/vmlinuz-6.1", Path::new("/dev/zero"))
                    .build()
            },
            "boot file \"boot/vmlinuz-6.1\" refused: it is not a regular file",
        ),
        (
            "boot dir → host dir",
            |host| Tar::new().boot_files().symlink("boot", host).build(),
            "boot file \"boot/vmlinuz-6.1\" refused: it is a symlink or lies under one",
        ),
        (
            "kernel → a zero device node",
            |_| {
                let mut t = Tar::new().boot_files();
                let mut h = Header::new_gnu();
                h.set_path("boot/vmlinuz-6.1").unwrap();
                h.set_entry_type(EntryType::Char);
                h.set_device_major(1).unwrap();
                h.set_device_minor(5).unwrap();
                h.set_mode(0o666);
                h.set_uid(0);
                h.set_gid(0);
                h.set_mtime(1_700_000_000);
                h.set_size(0);
                h.set_cksum();
                t.0.append(&h, &[][..]).unwrap();
                t.build()
            },
            "boot file \"boot/vmlinuz-6.1\" refused: it is not a regular file",
        ),
    ];
    for (what, tar, message) in cases {
        let (ok, stderr, env) = import(tar);
        assert!(!ok, "{what}: imported");
        assert!(stderr.contains(message), "{what}: {stderr}");
        no_work_left(&env);
        // Nothing stored a boot file at all.
        let boot = env.root_dir().join("images/boot");
        let stored: Vec<_> = std::fs::read_dir(&boot)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        for dir in stored {
            for file in std::fs::read_dir(&dir).unwrap().flatten() {
                let data = std::fs::read(file.path()).unwrap();
                assert!(
                    !String::from_utf8_lossy(&data).contains("PRIVATE KEY"),
                    "{what}: host key stored as {}",
                    file.path().display()
                );
            }
        }
    }
}
