use std::io::Read;

use super::*;

fn total_size(dir: &Path) -> u64 {
    names_in(dir)
        .iter()
        .map(|n| std::fs::metadata(dir.join(n)).unwrap().len())
        .sum()
}

#[test]
fn round_trip_keeps_bytes_and_holes_for_every_compression() {
    let src = snapshot_dir();
    let total = total_size(src.path());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.path().join(MANIFEST)).unwrap()).unwrap();
    for compression in [Compression::Zstd, Compression::Gzip, Compression::None] {
        let mut out = Vec::new();
        let mut reports = Vec::new();
        export(
            src.path(),
            &mut out,
            &ExportOptions { compression },
            &mut |done| reports.push(done),
        )
        .unwrap();
        assert!(
            reports.windows(2).all(|w| w[0] < w[1]),
            "{compression:?}: progress went back"
        );
        assert_eq!(reports.last(), Some(&total), "{compression:?}");
        // The holes of the 1 GiB disk are not in the stream.
        assert!(
            out.len() < len(8 * MIB),
            "{compression:?}: {} bytes",
            out.len()
        );

        let dest = tempfile::tempdir().unwrap();
        let mut reports = Vec::new();
        let imported = import(&mut &out[..], dest.path(), &mut |done| reports.push(done)).unwrap();
        assert_eq!(
            imported,
            Imported {
                manifest: manifest.clone(),
                legacy: false
            }
        );
        assert_eq!(reports.last(), Some(&total), "{compression:?}");
        assert_same_files(src.path(), dest.path());
        assert!(allocated(&dest.path().join("cow.raw")) < 8 * MIB);
        assert_eq!(allocated(&dest.path().join("data-disk.raw")), 0);
    }
}

#[test]
fn each_compression_is_what_was_asked_for() {
    let src = snapshot_dir();
    assert_eq!(
        export_bytes(src.path(), Compression::Zstd)[..4],
        [0x28, 0xb5, 0x2f, 0xfd]
    );
    assert_eq!(
        export_bytes(src.path(), Compression::Gzip)[..2],
        [0x1f, 0x8b]
    );
    let plain = export_bytes(src.path(), Compression::None);
    assert_eq!(&plain[..13], b"snapshot.json");
    assert_eq!(&plain[257..263], b"ustar\0");
}

/// Hands out at most 997 bytes per read, like a slow pipe.
struct Trickle<R>(R);

impl<R: Read> Read for Trickle<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(997);
        self.0.read(&mut buf[..n])
    }
}

#[test]
fn export_streams_into_import_through_a_pipe() {
    let src = snapshot_dir();
    let (reader, mut writer) = std::io::pipe().unwrap();
    let dir = src.path().to_path_buf();
    let producer = std::thread::spawn(move || {
        export(&dir, &mut writer, &ExportOptions::default(), &mut |_| {})
        // `writer` drops here: the reader sees the end of the stream.
    });
    let dest = tempfile::tempdir().unwrap();
    let imported = import(&mut Trickle(reader), dest.path(), &mut |_| {}).unwrap();
    producer.join().unwrap().unwrap();
    assert!(!imported.legacy);
    assert_same_files(src.path(), dest.path());
}

#[test]
fn old_gnu_sparse_entries_of_the_tar_crate_import_sparse() {
    let src = snapshot_dir();
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append_path_with_name(src.path().join(MANIFEST), MANIFEST)
        .unwrap();
    for name in names_in(src.path()).iter().filter(|n| *n != MANIFEST) {
        builder
            .append_path_with_name(src.path().join(name), name)
            .unwrap();
    }
    let bytes = builder.into_inner().unwrap();
    let has_gnu_sparse = tar::Archive::new(&bytes[..])
        .entries()
        .unwrap()
        .any(|e| e.unwrap().header().entry_type().is_gnu_sparse());
    assert!(
        has_gnu_sparse,
        "the tar crate no longer writes 'S' entries: this test tests nothing"
    );
    let (dest, result) = import_bytes(&bytes);
    result.unwrap();
    assert_same_files(src.path(), dest.path());
}

#[test]
fn export_refuses_files_that_do_not_match_the_manifest() {
    let export_error = |dir: &Path| {
        let mut out = Vec::new();
        export(dir, &mut out, &ExportOptions::default(), &mut |_| {}).unwrap_err()
    };
    // A byte changed after the manifest was written.
    let src = snapshot_dir();
    let config = src.path().join("config.json");
    let mut bytes = std::fs::read(&config).unwrap();
    bytes[3] ^= 1;
    std::fs::write(&config, &bytes).unwrap();
    let err = export_error(src.path());
    assert!(
        matches!(&err, ArchiveError::ChecksumMismatch { name, actual, .. } if name == "config.json" && *actual == digest(&bytes)),
        "{err}"
    );
    // A file that grew.
    let src = snapshot_dir();
    std::fs::write(src.path().join("state.json"), b"{}\n").unwrap();
    assert_eq!(
        export_error(src.path()).to_string(),
        "state.json: size 3 does not match the manifest's 0"
    );
    // A symlink in place of a listed file is not followed.
    let src = snapshot_dir();
    std::fs::remove_file(src.path().join("state.json")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", src.path().join("state.json")).unwrap();
    let err = export_error(src.path());
    assert!(
        matches!(&err, ArchiveError::Source { path, source } if path.ends_with("state.json") && source.raw_os_error() == Some(libc::ELOOP)),
        "{err}"
    );
}

/// What epoch (upstream's registry, through which vk-cocoon hibernates)
/// does with an export: it keeps the `snapshot.json` envelope as the
/// artifact's config, every other entry as one blob (expanded: Go's tar
/// reader fills the holes), and on the way back writes the envelope first
/// and each blob as a plain entry in the order pushed. That stream imports
/// to the same files.
#[test]
fn an_export_restreamed_as_epoch_does_imports() {
    let src = snapshot_dir();
    let exported = tempfile::NamedTempFile::new().unwrap();
    export(
        src.path(),
        &mut exported.as_file(),
        &ExportOptions {
            compression: Compression::None,
        },
        &mut |_| {},
    )
    .unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.path().join(MANIFEST)).unwrap()).unwrap();
    let envelope =
        serde_json::to_vec(&serde_json::json!({"version": 1, "config": manifest["snapshot"]}))
            .unwrap();
    let restreamed = tempfile::NamedTempFile::new().unwrap();
    let mut tar = tar::Builder::new(restreamed.as_file());
    let mut plain = |name: &str, len: u64, data: &mut dyn Read| {
        let mut header = tar::Header::new_ustar();
        header.set_size(len);
        header.set_mode(0o640);
        header.set_cksum();
        tar.append_data(&mut header, name, data).unwrap();
    };
    plain(
        crate::snapshot::archive::LEGACY_MANIFEST,
        envelope.len() as u64,
        &mut &envelope[..],
    );
    let mut names = vec![MANIFEST.to_string()];
    names.extend(names_in(src.path()).into_iter().filter(|n| n != MANIFEST));
    for name in &names {
        let file = File::open(src.path().join(name)).unwrap();
        let len = file.metadata().unwrap().len();
        plain(name, len, &mut &file);
    }
    let sum = export::manifest_sum_line(&std::fs::read(src.path().join(MANIFEST)).unwrap());
    plain(
        crate::snapshot::archive::MANIFEST_SUM,
        sum.len() as u64,
        &mut sum.as_bytes(),
    );
    tar.finish().unwrap();
    drop(tar);

    let dest = tempfile::tempdir().unwrap();
    let mut input = File::open(restreamed.path()).unwrap();
    let imported = import(&mut input, dest.path(), &mut |_| {}).unwrap();
    assert!(!imported.legacy);
    assert_eq!(imported.manifest, manifest);
    // The same bytes (the holes came as zeros, so allocation may differ).
    assert_eq!(names_in(src.path()), names_in(dest.path()));
    for name in names_in(src.path()) {
        assert_eq!(
            sum_file(&src.path().join(&name)).unwrap(),
            sum_file(&dest.path().join(&name)).unwrap(),
            "{name}"
        );
    }
}
