//! Bounded fuzzing of `snapshot import`: a valid archive, mutated (bytes
//! overwritten, flipped, cut, inserted), must never panic, never write
//! outside its destination, leave nothing behind when it is refused, and when
//! accepted hold exactly the files its manifest lists with their sums. Runs in
//! CI (`COCOON_FUZZ_CASES`, default 256 per compression); proptest keeps each
//! failing input under `proptest-regressions/` as a regression case.

use proptest::prelude::*;

use super::*;
use crate::fuzzing::{cases, mutate, mutation};
use crate::snapshot::manifest::sum_file;

/// A small snapshot: a dense file, a sparse one with data at both ends and a
/// hole between, an empty one, and the manifest.
fn small_snapshot() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("config.json"), br#"{"cpus": {"boot_vcpus": 1}}"#).unwrap();
    sparse_file(
        &p.join("cow.raw"),
        8 * MIB,
        &[(0, &pattern(4096, 7)), (8 * MIB - 700, &pattern(700, 8))],
    );
    std::fs::write(p.join("empty.raw"), b"").unwrap();
    write_manifest(p);
    dir
}

/// Imports `bytes` into `<parent>/dest` beside a sentinel file and checks
/// every outcome the module comment promises.
fn check_import(bytes: &[u8]) -> Result<(), TestCaseError> {
    let parent = tempfile::tempdir().unwrap();
    let dest = parent.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    let sentinel = parent.path().join("sentinel");
    std::fs::write(&sentinel, b"outside").unwrap();
    let started = std::time::Instant::now();
    let result = import(&mut &bytes[..], &dest, &mut |_| {});
    // A few bytes changed must not turn into minutes of writing (a size
    // field grown to terabytes).
    prop_assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}: {:?}",
        started.elapsed(),
        result.as_ref().map(|_| ()).map_err(|e| e.to_string())
    );
    prop_assert_eq!(names_in(parent.path()), vec!["dest", "sentinel"]);
    prop_assert_eq!(std::fs::read(&sentinel).unwrap(), b"outside".to_vec());
    match result {
        Err(_) => prop_assert_eq!(names_in(&dest), Vec::<String>::new()),
        Ok(imported) if imported.legacy => {}
        Ok(imported) => {
            let files = imported.manifest["files"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            let mut expected: Vec<String> = files.keys().cloned().collect();
            expected.push(MANIFEST.into());
            expected.sort();
            prop_assert_eq!(names_in(&dest), expected);
            for (name, sum) in files {
                let found = sum_file(&dest.join(&name)).unwrap();
                prop_assert_eq!(
                    serde_json::to_value(&found).unwrap()["sha256"].clone(),
                    sum["sha256"].clone(),
                    "{} accepted with other content",
                    name
                );
            }
        }
    }
    Ok(())
}

fn fuzz(compression: Compression) {
    let snapshot = small_snapshot();
    let archive = export_bytes(snapshot.path(), compression);
    // The unmutated archive imports: the mutations start from a valid input.
    check_import(&archive).unwrap();
    proptest!(ProptestConfig::with_cases(cases()), |(mutations in proptest::collection::vec(mutation(&[]), 1..6))| {
        check_import(&mutate(archive.clone(), &mutations))?;
    });
}

#[test]
fn mutated_plain_archives_never_escape_panic_or_half_import() {
    fuzz(Compression::None);
}

#[test]
fn mutated_zstd_archives_never_escape_panic_or_half_import() {
    fuzz(Compression::Zstd);
}
