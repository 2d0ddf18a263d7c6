//! Archives written by cocoon (Go): `snapshot.json` first, flat files, sparse
//! ones as `COCOON.sparse.map`/`COCOON.sparse.size` PAX records with only the
//! data segments, usually gzip.

use std::io::Write;

use super::*;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// Go's `json.MarshalIndent` envelope, newline-terminated.
fn snapshot_json(version: u32) -> (serde_json::Value, Vec<u8>) {
    let doc = json!({
        "config": {"id": "8c7e", "name": "web-1", "hypervisor": "cloud-hypervisor", "image_blob_ids": {}},
        "version": version,
    });
    let mut bytes = serde_json::to_vec_pretty(&doc).unwrap();
    bytes.push(b'\n');
    (doc, bytes)
}

fn go_sparse(name: &str, real_size: u64, map: &str, data: &[u8], crafted: Crafted) -> Crafted {
    let size = real_size.to_string();
    crafted.file_with(
        name,
        data,
        &[
            ("COCOON.sparse.map", map.as_bytes()),
            ("COCOON.sparse.size", size.as_bytes()),
        ],
    )
}

#[test]
fn go_archives_import_as_legacy_with_holes() {
    let (doc, doc_bytes) = snapshot_json(1);
    let (one, two) = (pattern(8192, 7), pattern(4096, 8));
    let real_size = 64 * MIB;
    let map = format!(r#"[{{"o":4096,"l":8192}},{{"o":{},"l":4096}}]"#, 32 * MIB);
    // Go wrote other files densely; zero blocks in them land as holes.
    let dense = [vec![0; len(MIB)], b"state".to_vec()].concat();
    let crafted = Crafted::new().file("snapshot.json", &doc_bytes);
    let crafted = go_sparse(
        "memory-range-0",
        real_size,
        &map,
        &[one.clone(), two.clone()].concat(),
        crafted,
    );
    let archive = gzip(&crafted.file("state.json", &dense).finish());

    let (dest, result) = import_bytes(&archive);
    assert_eq!(
        result.unwrap(),
        Imported {
            manifest: doc,
            legacy: true
        }
    );
    // snapshot.json is the engine's to convert, not a snapshot file.
    assert_eq!(names_in(dest.path()), ["memory-range-0", "state.json"]);

    let memory = dest.path().join("memory-range-0");
    let mut expected = vec![0u8; len(real_size)];
    expected[4096..4096 + 8192].copy_from_slice(&one);
    expected[len(32 * MIB)..len(32 * MIB) + 4096].copy_from_slice(&two);
    assert!(
        std::fs::read(&memory).unwrap() == expected,
        "memory-range-0 differs"
    );
    assert!(
        allocated(&memory) <= 64 << 10,
        "{} bytes allocated",
        allocated(&memory)
    );

    let state = dest.path().join("state.json");
    assert_eq!(std::fs::read(&state).unwrap(), dense);
    assert!(
        allocated(&state) <= 8 << 10,
        "{} bytes allocated",
        allocated(&state)
    );
}

#[test]
fn bad_go_archives_are_refused() {
    let (_, newer) = snapshot_json(2);
    assert_eq!(
        import_error(&gzip(
            &Crafted::new().file("snapshot.json", &newer).finish()
        ))
        .to_string(),
        "manifest snapshot.json: version 2 is not supported (this cocoon reads version 1); use a newer cocoon"
    );

    let (_, doc) = snapshot_json(1);
    let start = || {
        Crafted::new()
            .file("snapshot.json", &doc)
            .file("config.json", b"{}")
    };
    let beyond = go_sparse("mem", 8192, r#"[{"o":8000,"l":512}]"#, &[1; 512], start()).finish();
    assert_eq!(
        import_error(&beyond).to_string(),
        r#"archive entry "mem" has a bad sparse map: segment 0 (offset 8000, length 512) goes beyond the file size 8192"#
    );
    let garbage = go_sparse("mem", 8192, "[{]", &[], start()).finish();
    let err = import_error(&garbage);
    assert!(
        matches!(&err, ArchiveError::BadSparseMap { name, .. } if name == "mem"),
        "{err}"
    );
    // Names are checked in legacy archives too.
    let escaping = start().file("../x", b"x").finish();
    assert!(matches!(
        import_error(&escaping),
        ArchiveError::UnsafeName { .. }
    ));
}
