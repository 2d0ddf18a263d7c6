//! Shared fixtures for the archive tests: snapshot directories with sparse
//! files, hand-built (hostile) archives, and comparisons.

mod fuzz;
mod gnu_tar;
mod hostile;
mod legacy;
mod roundtrip;

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use serde_json::json;

use super::writer::TarWriter;
use super::{ArchiveError, Compression, ExportOptions, Imported, export, import};
use crate::snapshot::manifest::{MANIFEST, TreeHasher, sum_dir, sum_file};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A test's (small) size or offset as a buffer length or index.
fn len(n: u64) -> usize {
    usize::try_from(n).unwrap()
}

/// Deterministic bytes that do not compress to nothing (xorshift, each
/// state's low byte: the truncation is the point).
#[allow(clippy::cast_possible_truncation)]
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A file of `size` bytes that is a hole except for `writes`.
fn sparse_file(path: &Path, size: u64, writes: &[(u64, &[u8])]) {
    let file = File::create(path).unwrap();
    file.set_len(size).unwrap();
    for (offset, data) in writes {
        file.write_all_at(data, *offset).unwrap();
    }
}

fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// A snapshot directory: a 1 GiB disk with a few MiB of data that ends in a
/// hole, a disk that is all hole, a small dense file, an empty file, and a
/// manifest listing them.
fn snapshot_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    sparse_file(
        &p.join("cow.raw"),
        GIB,
        &[
            (0, &pattern(len(MIB), 1)),
            (300 * MIB, &pattern(len(2 * MIB), 2)),
            // Unaligned, and data that is partly zero.
            (
                700 * MIB + 123,
                &[pattern(5000, 3), vec![0; 20000], pattern(7, 4)].concat(),
            ),
        ],
    );
    sparse_file(&p.join("data-disk.raw"), 64 * MIB, &[]);
    std::fs::write(
        p.join("config.json"),
        br#"{"CONFIG-MARKER": "cpus 2, memory 1 GiB"}"#,
    )
    .unwrap();
    std::fs::write(p.join("state.json"), b"").unwrap();
    write_manifest(p);
    dir
}

/// cocoon.json for whatever is in `dir`, with a field of the engine's that
/// the archive must carry through untouched.
fn write_manifest(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(MANIFEST));
    let files = sum_dir(dir).unwrap();
    let doc = json!({"version": 1, "snapshot": {"name": "snap-1"}, "files": files});
    std::fs::write(dir.join(MANIFEST), serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
}

fn export_bytes(dir: &Path, compression: Compression) -> Vec<u8> {
    let mut out = Vec::new();
    export(dir, &mut out, &ExportOptions { compression }, &mut |_| {}).unwrap();
    out
}

fn import_bytes(bytes: &[u8]) -> (tempfile::TempDir, Result<Imported, ArchiveError>) {
    let dest = tempfile::tempdir().unwrap();
    let result = import(&mut &bytes[..], dest.path(), &mut |_| {});
    (dest, result)
}

/// Imports `bytes`, expecting failure; asserts nothing was left behind.
fn import_error(bytes: &[u8]) -> ArchiveError {
    let (dest, result) = import_bytes(bytes);
    let err = result.expect_err("a hostile archive was accepted");
    assert_eq!(
        names_in(dest.path()),
        Vec::<String>::new(),
        "left behind after: {err}"
    );
    err
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `copy` has the same files with the same bytes as `original`, and no more
/// disk allocated than the original (plus a block per file of slack).
/// A copy GNU tar extracted also has the trailer, `sha256sum` output that
/// checks the manifest.
fn assert_same_files(original: &Path, copy: &Path) {
    let mut copied = names_in(copy);
    if let Some(at) = copied.iter().position(|n| n == super::MANIFEST_SUM) {
        copied.remove(at);
        assert_eq!(
            std::fs::read_to_string(copy.join(super::MANIFEST_SUM)).unwrap(),
            export::manifest_sum_line(&std::fs::read(copy.join(MANIFEST)).unwrap()),
            "the trailer sums the manifest"
        );
    }
    // GNU tar also extracts upstream's envelope, which names the snapshot.
    if let Some(at) = copied.iter().position(|n| n == super::LEGACY_MANIFEST) {
        copied.remove(at);
        let envelope: serde_json::Value =
            serde_json::from_slice(&std::fs::read(copy.join(super::LEGACY_MANIFEST)).unwrap())
                .unwrap();
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(copy.join(MANIFEST)).unwrap()).unwrap();
        assert_eq!(envelope["version"], 1);
        assert_eq!(envelope["config"], manifest["snapshot"]);
    }
    assert_eq!(names_in(original), copied);
    for name in names_in(original) {
        let (a, b) = (original.join(&name), copy.join(&name));
        assert_eq!(
            sum_file(&a).unwrap(),
            sum_file(&b).unwrap(),
            "{name} differs"
        );
        assert!(
            allocated(&b) <= allocated(&a) + 8192,
            "{name}: {} bytes allocated, the original has {}",
            allocated(&b),
            allocated(&a)
        );
    }
    assert_eq!(
        std::fs::read(original.join(MANIFEST)).unwrap(),
        std::fs::read(copy.join(MANIFEST)).unwrap()
    );
}

fn digest(data: &[u8]) -> String {
    let mut hasher = TreeHasher::default();
    hasher.update(data);
    hasher.finalize(data.len() as u64)
}

/// Builds archives entry by entry, including what our export never writes.
struct Crafted {
    tar: TarWriter<Vec<u8>>,
}

impl Crafted {
    fn new() -> Self {
        Crafted {
            tar: TarWriter::new(Vec::new()),
        }
    }

    /// Starts with a cocoon.json listing `files` (name, content).
    fn with_manifest(files: &[(&str, &[u8])]) -> Self {
        let listed: serde_json::Map<_, _> = files
            .iter()
            .map(|(name, data)| {
                (
                    name.to_string(),
                    json!({"size": data.len(), "sha256": digest(data)}),
                )
            })
            .collect();
        let doc = json!({"version": 1, "files": listed});
        Crafted::new().file(MANIFEST, &serde_json::to_vec(&doc).unwrap())
    }

    fn file(self, name: &str, data: &[u8]) -> Self {
        self.file_with(name, data, &[])
    }

    fn file_with(mut self, name: &str, data: &[u8], records: &[(&str, &[u8])]) -> Self {
        let size = data.len() as u64;
        self.tar
            .regular(name, name, size, 0o644, 0, records)
            .unwrap();
        self.data(data)
    }

    /// A header as given, then `data` (padded).
    fn raw(mut self, header: &tar::Header, data: &[u8]) -> Self {
        self.tar.raw_header(header).unwrap();
        self.data(data)
    }

    fn data(mut self, data: &[u8]) -> Self {
        self.tar.data(data).unwrap();
        self.tar.pad(data.len() as u64).unwrap();
        self
    }

    /// The bytes so far, without an end-of-archive marker.
    fn unfinished(&self) -> Vec<u8> {
        self.tar.get_ref().clone()
    }

    fn finish(self) -> Vec<u8> {
        self.tar.finish().unwrap()
    }
}
