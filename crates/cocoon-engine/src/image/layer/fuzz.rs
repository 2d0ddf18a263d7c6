//! Bounded fuzzing of the layer unpacker with hostile-shaped archives: random
//! sequences of entries over a few names that collide on purpose (a directory
//! later replaced by a symlink, a symlink to the host, hardlinks, whiteouts
//! and opaque markers under links, `..` and absolute names, odd owners and
//! modes), built byte by byte as a registry could send them. Whatever the
//! sequence, unpacking must not panic and must not change, create or delete
//! anything outside its root: a host directory beside the root (files,
//! owners, modes, link targets) is compared before and after. Runs in CI
//! (`COCOON_FUZZ_CASES`, default 256); proptest keeps failing inputs under
//! `proptest-regressions/`.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use proptest::prelude::*;
use tar::EntryType;

use super::unpack;
use crate::fuzzing::cases;

/// Names that overlap: parents and children, a name that goes up, one that
/// is absolute, and the markers the unpacker treats specially.
const NAMES: &[&str] = &[
    "x",
    "x/",
    "x/file",
    "x/file/",
    "x/y/z",
    "boot",
    "boot/vmlinuz-1",
    "boot/initrd.img-1",
    "x/.wh.file",
    "x/.wh..wh..opq",
    ".wh.x",
    "../up",
    "x/../../up",
    "/abs",
    "./x/./file",
];

/// Link targets; `HOST` becomes the host directory's absolute path.
const TARGETS: &[&str] = &[
    "HOST",
    "HOST/file",
    "/",
    "..",
    "../..",
    "x",
    "x/file",
    "/dev/zero",
];

#[derive(Debug, Clone)]
struct Entry {
    name: usize,
    kind: u8,
    target: usize,
    mode: u32,
    uid: u64,
    data: Vec<u8>,
}

/// Picks an index of `weights.len()` choices, each as likely as its weight:
/// the collisions that matter (a directory of `x` replaced by a link to the
/// host) need a few specific entries in order, which uniform picks rarely
/// give.
fn weighted(weights: &'static [u32]) -> impl Strategy<Value = usize> {
    let total: u32 = weights.iter().sum();
    (0..total).prop_map(move |mut n| {
        weights
            .iter()
            .position(|w| {
                if n < *w {
                    true
                } else {
                    n -= w;
                    false
                }
            })
            .expect("n < total")
    })
}

/// Weights for NAMES, kinds (dir, file, symlink, hardlink, char, fifo) and TARGETS.
const NAME_WEIGHTS: &[u32] = &[4, 3, 3, 3, 1, 1, 1, 1, 2, 2, 1, 1, 1, 1, 1];
const KIND_WEIGHTS: &[u32] = &[4, 2, 4, 1, 1, 1];
const TARGET_WEIGHTS: &[u32] = &[6, 2, 1, 1, 1, 1, 1, 1];

fn entry() -> impl Strategy<Value = Entry> {
    (
        weighted(NAME_WEIGHTS),
        weighted(KIND_WEIGHTS),
        weighted(TARGET_WEIGHTS),
        prop_oneof![
            Just(0o755u32),
            Just(0o666),
            Just(0o4777),
            Just(0o000),
            0u32..0o7777
        ],
        prop_oneof![Just(0u64), Just(1000), Just(65534)],
        proptest::collection::vec(any::<u8>(), 0..32),
    )
        .prop_map(|(name, kind, target, mode, uid, data)| Entry {
            name,
            kind: u8::try_from(kind).expect("six kinds"),
            target,
            mode,
            uid,
            data,
        })
}

fn archive(entries: &[Entry], host: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let name = NAMES[e.name].as_bytes();
        let kind = match e.kind {
            0 => EntryType::Directory,
            1 => EntryType::Regular,
            2 => EntryType::Symlink,
            3 => EntryType::Link,
            4 => EntryType::Char,
            _ => EntryType::Fifo,
        };
        let target = TARGETS[e.target].replace("HOST", &host.display().to_string());
        // Written byte by byte: `tar::Header::set_path` refuses what a
        // hostile registry would send.
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(kind);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.uid);
        if matches!(kind, EntryType::Symlink | EntryType::Link) {
            h.as_gnu_mut().unwrap().linkname[..target.len()].copy_from_slice(target.as_bytes());
        }
        if kind == EntryType::Char {
            h.set_device_major(1).unwrap();
            h.set_device_minor(5).unwrap();
        }
        let data: &[u8] = if kind == EntryType::Regular {
            &e.data
        } else {
            &[]
        };
        h.set_size(data.len() as u64);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// Everything observable about a tree, without following links.
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut seen = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let what = if meta.file_type().is_symlink() {
            format!("link {:?}", std::fs::read_link(&path).unwrap())
        } else if meta.is_dir() {
            for child in std::fs::read_dir(&path).unwrap() {
                stack.push(child.unwrap().path());
            }
            "dir".into()
        } else {
            format!("file {:?}", std::fs::read(&path).unwrap())
        };
        let key = path.strip_prefix(dir).unwrap().display().to_string();
        seen.insert(
            key,
            format!(
                "{what} mode {:o} owner {}:{}",
                meta.mode(),
                meta.uid(),
                meta.gid()
            ),
        );
    }
    seen
}

fn check(entries: &[Entry]) -> Result<(), TestCaseError> {
    let parent = tempfile::tempdir().unwrap();
    let host = parent.path().join("host");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("file"), b"host secret").unwrap();
    std::fs::create_dir(host.join("x")).unwrap();
    std::fs::write(host.join("x/file"), b"host x file").unwrap();
    std::os::unix::fs::symlink("file", host.join("link")).unwrap();
    let root = parent.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let before = snapshot(&host);

    let _ = unpack(&archive(entries, &host)[..], &root);

    prop_assert_eq!(snapshot(&host), before, "the host directory changed");
    let mut beside: Vec<String> = std::fs::read_dir(parent.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    beside.sort();
    prop_assert_eq!(beside, vec!["host".to_string(), "root".to_string()]);
    Ok(())
}

#[test]
fn weights_match_their_tables() {
    assert_eq!(NAME_WEIGHTS.len(), NAMES.len());
    assert_eq!(KIND_WEIGHTS.len(), 6);
    assert_eq!(TARGET_WEIGHTS.len(), TARGETS.len());
}

#[test]
fn hostile_entry_sequences_never_reach_beside_the_root() {
    proptest!(ProptestConfig::with_cases(cases()), |(entries in proptest::collection::vec(entry(), 1..12))| {
        check(&entries)?;
    });
}
