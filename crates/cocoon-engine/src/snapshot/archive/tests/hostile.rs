//! Archives a user (or an attacker) can hand to `snapshot import`: each is
//! refused with its exact error, and nothing stays in the destination.

use tar::EntryType;

use super::super::writer::header;
use super::*;

const A: &[u8] = b"content of a";

/// A valid start (manifest, one file written to disk) so that every refusal
/// also exercises the cleanup; `extra` is listed in the manifest too.
fn with_a(extra: &[(&str, &[u8])]) -> Crafted {
    let listed: Vec<(&str, &[u8])> = [("a.raw", A)].iter().chain(extra).copied().collect();
    Crafted::with_manifest(&listed).file("a.raw", A)
}

fn message(bytes: &[u8]) -> String {
    import_error(bytes).to_string()
}

fn unsafe_name(name: &str, reason: &str) -> String {
    format!(
        "archive entry {name:?} has an unsafe name ({reason}); a snapshot archive holds plain file names only"
    )
}

#[test]
fn names_outside_the_directory_are_refused() {
    for (name, reason) in [
        ("../x", "refers to a parent directory"),
        ("/etc/x", "absolute path"),
        ("a/b", "has a directory part"),
    ] {
        assert_eq!(
            message(&with_a(&[]).file(name, b"x").finish()),
            unsafe_name(name, reason)
        );
    }
    // Through a PAX path, the only way to get a NUL into a name.
    let bytes = with_a(&[])
        .file_with("innocent", b"x", &[("path", b"a\0b")])
        .finish();
    assert_eq!(message(&bytes), unsafe_name("a\0b", "contains a NUL byte"));
}

fn special(kind: EntryType, name: &str) -> Vec<u8> {
    let mut h = header(name.as_bytes(), kind, 0, 0o777, 0);
    match kind {
        EntryType::Symlink => h.set_link_name_literal("/etc/passwd").unwrap(),
        EntryType::Link => h.set_link_name_literal("a.raw").unwrap(),
        EntryType::Char => {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        _ => {}
    }
    h.set_cksum();
    with_a(&[]).raw(&h, b"").finish()
}

#[test]
fn only_regular_files_are_accepted() {
    for (kind, name, what) in [
        (EntryType::Symlink, "link", "symbolic link"),
        (EntryType::Link, "hard", "hard link"),
        (EntryType::Char, "null", "character device"),
        (EntryType::Block, "vda", "block device"),
        (EntryType::Directory, "dir/", "directory"),
        (EntryType::Fifo, "fifo", "FIFO"),
    ] {
        assert_eq!(
            message(&special(kind, name)),
            format!(
                "archive entry {name:?} is a {what}; a snapshot archive holds regular files only"
            )
        );
    }
}

#[test]
fn duplicates_are_refused() {
    assert_eq!(
        message(&with_a(&[]).file("a.raw", A).finish()),
        r#"archive entry "a.raw" appears twice"#
    );
    assert_eq!(
        message(&with_a(&[]).file(MANIFEST, b"{}").finish()),
        r#"archive entry "cocoon.json" appears twice"#
    );
}

#[test]
fn the_manifest_rules_every_file() {
    assert_eq!(
        message(&with_a(&[]).file("b.raw", b"b").finish()),
        r#"archive entry "b.raw" is not listed in the manifest"#
    );
    assert_eq!(
        message(&with_a(&[("b.raw", b"b")]).finish()),
        r#"file "b.raw" listed in the manifest is missing from the archive"#
    );
    assert_eq!(
        message(&with_a(&[("b.raw", b"b")]).file("b.raw", b"bb").finish()),
        "b.raw: size 2 does not match the manifest's 1"
    );
    let not_first = Crafted::new()
        .file("a.raw", A)
        .file(MANIFEST, b"{}")
        .finish();
    assert_eq!(
        message(&not_first),
        r#"archive does not start with a manifest (cocoon.json, or snapshot.json from cocoon (Go)): its first entry is "a.raw""#
    );
    let newer = Crafted::new()
        .file(MANIFEST, br#"{"version": 2, "files": {}}"#)
        .finish();
    assert_eq!(
        message(&newer),
        "manifest cocoon.json: version 2 is not supported (this cocoon reads version 1); use a newer cocoon"
    );
    let escaping = Crafted::new()
        .file(
            MANIFEST,
            br#"{"version": 1, "files": {"../x": {"size": 0, "sha256": ""}}}"#,
        )
        .finish();
    assert_eq!(
        message(&escaping),
        r#"manifest cocoon.json: lists "../x", which is not a plain file name (refers to a parent directory)"#
    );
    assert_eq!(
        message(&Crafted::new().finish()),
        "manifest cocoon.json: not found: the archive has no entries"
    );
}

#[test]
fn a_flipped_byte_fails_the_checksum() {
    let src = snapshot_dir();
    let plain = export_bytes(src.path(), Compression::None);
    let find = |needle: &[u8]| {
        plain
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap()
    };

    // In a dense file.
    let mut bytes = plain.clone();
    bytes[find(b"CONFIG-MARKER")] ^= 0x20;
    let config = std::fs::read(src.path().join("config.json")).unwrap();
    let mut changed = config.clone();
    changed[2] ^= 0x20;
    let expected = format!(
        "config.json: sha256 {} does not match the manifest's {}; the data is corrupt",
        digest(&changed),
        digest(&config)
    );
    assert_eq!(message(&bytes), expected);

    // In a data segment of the sparse disk (config.json, before it, is
    // written and then removed).
    let mut bytes = plain.clone();
    let at = find(&pattern(64, 2)) + 1000;
    bytes[at] ^= 1;
    let err = import_error(&bytes);
    assert!(
        matches!(&err, ArchiveError::ChecksumMismatch { name, .. } if name == "cow.raw"),
        "{err}"
    );
}

fn truncated(what: &str) -> String {
    format!(
        "archive is truncated: {what}; it was cut short (an interrupted copy or download?), fetch it again"
    )
}

#[test]
fn a_cut_archive_is_truncated() {
    let big = pattern(100 << 10, 9);
    let start = with_a(&[("big.raw", &big)]);
    let header_at = start.unfinished().len();
    let full = start.file("big.raw", &big).finish();

    // In the middle of a file's data.
    let cut = header_at + 512 + 50_000;
    assert_eq!(
        message(&full[..cut]),
        truncated(r#"entry "big.raw" stops 52400 bytes short"#)
    );
    // In the middle of a header.
    assert_eq!(
        message(&full[..header_at + 100]),
        truncated(&format!(
            "the header at byte {header_at} stops after 100 of 512 bytes"
        ))
    );
    // At a header boundary, with no end-of-archive marker.
    assert_eq!(
        message(&full[..header_at]),
        truncated(r#"it ends after "a.raw" without an end-of-archive marker"#)
    );
    assert_eq!(message(&[]), truncated("the archive is empty"));

    // Compressed streams cut short: the decoder notices.
    let src = snapshot_dir();
    for compression in [Compression::Zstd, Compression::Gzip] {
        let bytes = export_bytes(src.path(), compression);
        let err = import_error(&bytes[..bytes.len() / 2]);
        assert!(
            matches!(err, ArchiveError::Truncated { .. }),
            "{compression:?}: {err}"
        );
        // Cut only in the trailer (checksum): caught by draining to the end.
        let err = import_error(&bytes[..bytes.len() - 3]);
        assert!(
            matches!(err, ArchiveError::Truncated { .. }),
            "{compression:?}: {err}"
        );
    }
}

#[test]
fn sizes_are_bounded() {
    let huge = header(b"a.raw", EntryType::Regular, 2 << 40, 0o644, 0);
    let bytes = Crafted::with_manifest(&[("a.raw", A)])
        .raw(&huge, b"")
        .finish();
    assert_eq!(
        message(&bytes),
        r#"archive entry "a.raw": entry data of 2199023255552 bytes is over the limit of 1099511627776 bytes"#
    );
    let pax = header(
        b"PaxHeaders.0/b.raw",
        EntryType::XHeader,
        (64 << 20) + 1,
        0o644,
        0,
    );
    let bytes = with_a(&[]).raw(&pax, b"").finish();
    assert_eq!(
        message(&bytes),
        r#"archive entry "PaxHeaders.0/b.raw": PAX header of 67108865 bytes is over the limit of 67108864 bytes"#
    );
    let long = header(b"././@LongLink", EntryType::GNULongName, 1 << 20, 0o644, 0);
    let bytes = with_a(&[]).raw(&long, b"").finish();
    assert_eq!(
        message(&bytes),
        r#"archive entry "././@LongLink": GNU long name of 1048576 bytes is over the limit of 4096 bytes"#
    );
    let big_manifest = header(
        MANIFEST.as_bytes(),
        EntryType::Regular,
        (16 << 20) + 1,
        0o644,
        0,
    );
    assert_eq!(
        message(&Crafted::new().raw(&big_manifest, b"").finish()),
        r#"archive entry "cocoon.json": manifest of 16777217 bytes is over the limit of 16777216 bytes"#
    );
}

/// A PAX 1.0 sparse entry for `a.raw` with a hand-written map.
fn pax1(real_size: u64, map: &str, data: &[u8]) -> Vec<u8> {
    let mut body = map.as_bytes().to_vec();
    body.resize(body.len().next_multiple_of(512), 0);
    body.extend_from_slice(data);
    let real = real_size.to_string();
    let records: [(&str, &[u8]); 4] = [
        ("GNU.sparse.major", b"1"),
        ("GNU.sparse.minor", b"0"),
        ("GNU.sparse.name", b"a.raw"),
        ("GNU.sparse.realsize", real.as_bytes()),
    ];
    Crafted::with_manifest(&[("b.raw", b"b"), ("a.raw", &[0; 100])])
        .file("b.raw", b"b")
        .file_with("GNUSparseFile.0/a.raw", &body, &records)
        .finish()
}

#[test]
fn bad_sparse_maps_are_refused() {
    let bad = |reason: &str| format!(r#"archive entry "a.raw" has a bad sparse map: {reason}"#);
    assert_eq!(
        message(&pax1(100, "1\n96\n8\n", &[1; 8])),
        bad("segment 0 (offset 96, length 8) goes beyond the file size 100")
    );
    assert_eq!(
        message(&pax1(100, "2\n0\n8\n4\n8\n", &[1; 16])),
        bad("segment 1 at offset 4 overlaps the previous one, which ends at 8")
    );
    assert_eq!(
        message(&pax1(100, "1\n0\n8\n", &[1; 9])),
        bad("the segments hold 8 bytes but the entry carries 9")
    );
    assert_eq!(
        message(&pax1(100, "3\n0\n1\n", &[])),
        bad("the map is shorter than its segment count says")
    );
    // A map that fills its block and goes on, in an entry with no more data.
    let endless = format!("1000\n{}1", "1\n".repeat(253));
    assert_eq!(endless.len(), 512);
    assert_eq!(
        message(&pax1(100, &endless, &[])),
        bad("the map runs past the entry's data")
    );
    assert_eq!(
        message(&pax1(100, "1\n0\n-8\n", &[])),
        bad("unexpected byte 0x2d in the map")
    );
    // A valid map still has to match the manifest.
    assert_eq!(
        message(&pax1(200, "1\n0\n8\n", &[1; 8])),
        "a.raw: size 200 does not match the manifest's 100"
    );
    assert_eq!(
        message(&pax1(32 << 40, "1\n0\n8\n", &[1; 8])),
        r#"archive entry "a.raw": file size of 35184372088832 bytes is over the limit of 17592186044416 bytes"#
    );
}

#[test]
fn damaged_or_foreign_headers_are_refused() {
    let mut bytes = with_a(&[]).finish();
    let a_header = with_a(&[]).unfinished().len() - 1024;
    bytes[a_header] ^= 0x01;
    assert_eq!(
        message(&bytes),
        format!("archive is corrupt at byte {a_header}: header checksum mismatch")
    );

    let old_sparse = with_a(&[("b.raw", b"b")]).file_with(
        "b.raw",
        b"b",
        &[("GNU.sparse.map", b"0,1"), ("GNU.sparse.size", b"1")],
    );
    assert_eq!(
        message(&old_sparse.finish()),
        r#"archive entry "b.raw": GNU sparse format 0.x is not supported; write the archive with tar --sparse-version=1.0"#
    );
    let global = header(b"pax_global_header", EntryType::XGlobalHeader, 9, 0o644, 0);
    assert_eq!(
        message(&with_a(&[]).raw(&global, b"9 path=x\n").finish()),
        r#"archive entry "pax_global_header": a global PAX header is not supported"#
    );
    let pax = header(b"PaxHeaders.0/b.raw", EntryType::XHeader, 8, 0o644, 0);
    assert_eq!(
        message(&with_a(&[]).raw(&pax, b"8 pathx\n").finish()),
        r#"archive entry "PaxHeaders.0/b.raw" has a bad PAX header: a record has no '='"#
    );
}
