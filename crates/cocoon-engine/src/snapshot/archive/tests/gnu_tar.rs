//! GNU tar, the reference reader and writer of PAX 1.0 sparse entries.

use std::process::{Command, Stdio};

use super::*;

const FILES: [&str; 5] = [
    "cocoon.json",
    "config.json",
    "cow.raw",
    "data-disk.raw",
    "state.json",
];

fn run(command: &mut Command) {
    let status = command.status().unwrap();
    assert!(status.success(), "{command:?}: {status}");
}

fn on_path(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

#[test]
fn gnu_tar_lists_and_extracts_our_plain_export_sparse() {
    let src = snapshot_dir();
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("snap.tar");
    std::fs::write(&archive, export_bytes(src.path(), Compression::None)).unwrap();

    let listing = Command::new("tar")
        .arg("-tf")
        .arg(&archive)
        .output()
        .unwrap();
    assert!(
        listing.status.success(),
        "{}",
        String::from_utf8_lossy(&listing.stderr)
    );
    let listed: Vec<_> = String::from_utf8(listing.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let mut expected: Vec<&str> = vec![crate::snapshot::archive::LEGACY_MANIFEST];
    expected.extend(FILES);
    expected.push(crate::snapshot::archive::MANIFEST_SUM);
    assert_eq!(
        listed, expected,
        "upstream's envelope, the manifest, then the files by name, then the manifest's sum"
    );

    let dest = work.path().join("out");
    std::fs::create_dir(&dest).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&dest));
    assert_same_files(src.path(), &dest);
}

#[test]
fn gnu_tar_extracts_our_compressed_exports() {
    let src = snapshot_dir();
    let work = tempfile::tempdir().unwrap();

    let gzipped = work.path().join("snap.tar.gz");
    std::fs::write(&gzipped, export_bytes(src.path(), Compression::Gzip)).unwrap();
    let dest = work.path().join("gz");
    std::fs::create_dir(&dest).unwrap();
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&gzipped)
        .arg("-C")
        .arg(&dest));
    assert_same_files(src.path(), &dest);

    if !on_path("zstd") {
        return cocoon_test_skip::skip(
            "gnu_tar_extracts_our_compressed_exports (zstd part)",
            "the zstd CLI is not installed: `zstd -dc | tar -x` not tested",
        );
    }
    let zstd = work.path().join("snap.tar.zst");
    std::fs::write(&zstd, export_bytes(src.path(), Compression::Zstd)).unwrap();
    let dest = work.path().join("zst");
    std::fs::create_dir(&dest).unwrap();
    let mut decompress = Command::new("zstd")
        .arg("-dc")
        .arg(&zstd)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stream = decompress.stdout.take().unwrap();
    run(Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(&dest)
        .stdin(stream));
    assert!(decompress.wait().unwrap().success());
    assert_same_files(src.path(), &dest);
}

#[test]
fn gnu_tar_posix_sparse_archives_import() {
    let src = snapshot_dir();
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("gnu.tar");
    run(Command::new("tar")
        .args(["--sparse", "--format=posix", "-cf"])
        .arg(&archive)
        .arg("-C")
        .arg(src.path())
        .args(FILES));
    let bytes = std::fs::read(&archive).unwrap();
    assert!(
        bytes.windows(16).any(|w| w == b"GNU.sparse.major"),
        "GNU tar did not write PAX 1.0 sparse entries: this test tests nothing"
    );
    let (dest, result) = import_bytes(&bytes);
    assert!(!result.unwrap().legacy);
    assert_same_files(src.path(), dest.path());
}
