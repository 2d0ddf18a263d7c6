//! `snapshot push` / `snapshot pull` through a real registry (Debian's
//! `docker-registry` on 127.0.0.1) between two installations (separate
//! root, run and log directories), with the fake VMMs: the round trip and
//! a clone on the second installation, the incremental second push counted
//! in the registry's own log, pushes and pulls killed half-way and run
//! again, and hostile artifacts refused with nothing left behind. The real
//! VMMs: snapshot_registry_real.rs.

// Test sizes: a few MiB, far below any address space.
#![allow(clippy::cast_possible_truncation)]

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;

use serde_json::Value;

#[path = "snapshot_registry/host.rs"]
mod host;
#[path = "snapshot_registry/whole.rs"]
mod whole;

use host::*;

#[test]
fn a_snapshot_pushed_on_one_host_is_pulled_and_cloned_on_another() {
    let Some(registry) = registry("a_snapshot_pushed_on_one_host_is_pulled_and_cloned_on_another")
    else {
        return;
    };
    let a = source_with_snapshot();
    let reference = registry.reference("snaps/src:v1");
    let pushed = a.push("s", &reference);
    let blocks = pushed["blocks"].as_u64().unwrap();
    assert!(blocks >= 3, "{pushed}");
    assert_eq!(pushed["sent_blocks"], pushed["blocks"], "{pushed}");
    // The disk's 10 GiB are mostly holes: only blocks with data were sent.
    assert!(pushed["bytes"].as_u64().unwrap() < 64 * BLOCK, "{pushed}");

    let b = Host::new();
    let pulled = b.json(&["snapshot", "pull", "-o", "json", &reference]);
    assert_eq!(pulled["fetched_blocks"].as_u64(), Some(blocks), "{pulled}");
    assert_eq!(pulled["digest"], pushed["digest"]);
    assert_eq!(b.snapshot_names(), ["s"]);
    // Byte for byte what host A saved, still sparse.
    let (theirs, ours) = (a.data_dir("s"), b.data_dir("s"));
    assert_eq!(sums(&theirs), sums(&ours));
    assert_eq!(
        b.leftovers()
            .iter()
            .filter(|l| l.starts_with("pulls/"))
            .count(),
        0
    );
    b.ok(&["vm", "clone", "--name", "c", "s"]);
    let vm = b.json(&["vm", "inspect", "c"]);
    assert_eq!(vm["state"], "running", "{vm}");
    // Its layer is host B's own copy.
    let layer = vm["storage_configs"][0]["path"].as_str().unwrap();
    assert!(
        layer.starts_with(b.env.root_dir().to_str().unwrap()),
        "{layer}"
    );

    // A name taken is refused, and --name gives another.
    let err = b.fail(&["snapshot", "pull", &reference]);
    assert!(err.contains("\"s\""), "{err}");
    b.ok(&["snapshot", "pull", "--name", "s2", &reference]);
    assert_eq!(b.snapshot_names(), ["s", "s2"]);

    // `vm clone --pull REF`: pulled, cloned, dropped.
    b.ok(&["vm", "clone", "--pull", "--name", "c2", &reference]);
    assert_eq!(b.json(&["vm", "inspect", "c2"])["state"], "running");
    assert_eq!(b.snapshot_names(), ["s", "s2"]);
    // `vm restore --pull`: a VM of host B is not the snapshot's VM...
    let src = a.json(&["vm", "inspect", "src"]);
    let c2 = b.json(&["vm", "inspect", "c2"]);
    let err = b.fail(&["vm", "restore", "--pull", "c2", &reference]);
    assert!(
        err.contains(&format!(
            "snapshot {reference} was taken from VM {}, not from VM c2 ({}); pass --force to restore it anyway",
            src["id"].as_str().unwrap(),
            c2["id"].as_str().unwrap()
        )),
        "{err}"
    );
    assert_eq!(b.snapshot_names(), ["s", "s2"]);
    b.ok(&["vm", "restore", "--pull", "--force", "c2", &reference]);
    assert_eq!(b.json(&["vm", "inspect", "c2"])["state"], "running");
    // ...while on host A it is, and --pull wants a reference.
    a.ok(&["vm", "restore", "--pull", "src", &reference]);
    let err = a.fail(&["vm", "restore", "--pull", "src", "s"]);
    assert!(
        err.contains("--pull takes a registry reference (host/repository:tag), not \"s\""),
        "{err}"
    );
    assert_eq!(a.snapshot_names(), ["s"]);
    assert_eq!(b.snapshot_names(), ["s", "s2"]);
}

#[test]
fn a_second_push_of_the_same_vm_sends_only_the_blocks_that_changed() {
    let Some(registry) =
        registry("a_second_push_of_the_same_vm_sends_only_the_blocks_that_changed")
    else {
        return;
    };
    let a = source_with_snapshot();
    let mark = registry.log().len();
    let first = a.push("s", &registry.reference("snaps/src:v1"));
    let blocks = first["blocks"].as_u64().unwrap() as usize;
    // Every block, then cocoon.json, the index and the config.
    assert_eq!(blob_puts(&registry, mark), blocks + 3);

    // One block of the disk changes, then a later snapshot is pushed.
    let cow = std::fs::OpenOptions::new()
        .write(true)
        .open(a.cow("src"))
        .unwrap();
    cow.write_all_at(&vec![0x5a; BLOCK as usize], 32 * BLOCK)
        .unwrap();
    a.ok(&["snapshot", "save", "--name", "s-later", "src"]);
    let mark = registry.log().len();
    let second = a.push("s-later", &registry.reference("snaps/src:v2"));
    assert_eq!(second["sent_blocks"], 1, "{second}");
    assert_eq!(second["sent_bytes"], BLOCK, "{second}");
    // The registry's own log: that block, and the three small blobs that
    // name a new snapshot.
    assert_eq!(blob_puts(&registry, mark), 4);
    // Pushing it again sends nothing at all.
    let mark = registry.log().len();
    let third = a.push("s-later", &registry.reference("snaps/src:v2"));
    assert_eq!(third["sent_blocks"], 0, "{third}");
    assert_eq!(blob_puts(&registry, mark), 0);
}

#[test]
fn a_killed_push_or_pull_resumes_without_moving_a_block_twice() {
    let test = "a_killed_push_or_pull_resumes_without_moving_a_block_twice";
    let Some(registry) = registry(test) else {
        return;
    };
    if !failpoints(test) {
        return;
    }
    let a = source_with_snapshot();
    let reference = registry.reference("snaps/src:v1");
    // Killed after its blocks, before the manifest: no tag names anything.
    let mark = registry.log().len();
    a.killed_at(
        "snapshot.push.blocks",
        &["snapshot", "push", "s", &reference],
    );
    let sent_first = blob_puts(&registry, mark);
    assert!(sent_first >= 3);
    let b = Host::new();
    let err = b.fail(&["snapshot", "pull", &reference]);
    assert!(err.contains("404"), "{err}");
    let mark = registry.log().len();
    let pushed = a.push("s", &reference);
    assert_eq!(pushed["sent_blocks"], 0, "{pushed}");
    assert_eq!(blob_puts(&registry, mark), 3);

    // Killed after fetching its blocks: nothing visible; the rerun fetches none.
    b.killed_at("snapshot.pull.fetched", &["snapshot", "pull", &reference]);
    assert!(b.snapshot_names().is_empty());
    let pulled = b.json(&["snapshot", "pull", "-o", "json", &reference]);
    assert_eq!(pulled["fetched_blocks"], 0, "{pulled}");
    assert_eq!(b.snapshot_names(), ["s"]);
    let digests: BTreeSet<String> = registry
        .log()
        .lines()
        .filter(|l| l.contains("\"GET /v2/") && l.contains("/blobs/sha256:"))
        .filter_map(|l| {
            l.split("/blobs/")
                .nth(1)?
                .split([' ', '"'])
                .next()
                .map(str::to_string)
        })
        .collect();
    // Each run reads cocoon.json and the index (a few KiB); every block was
    // fetched once, by the killed run.
    let twice: Vec<&String> = digests
        .iter()
        .filter(|d| registry.blob_fetches(d) > 1)
        .collect();
    assert_eq!(twice.len(), 2, "{twice:?}");
    assert!(digests.iter().all(|d| registry.blob_fetches(d) <= 2));
    assert!(digests.len() >= 5, "{digests:?}");
    assert_eq!(
        b.leftovers()
            .iter()
            .filter(|l| l.starts_with("pulls/"))
            .count(),
        0
    );

    // gc removes the blocks of a pull no process runs.
    let pulls = |h: &Host| {
        h.leftovers()
            .iter()
            .filter(|l| l.starts_with("pulls/"))
            .count()
    };
    b.killed_at(
        "snapshot.pull.fetched",
        &["snapshot", "pull", "--name", "s3", &reference],
    );
    assert_eq!(pulls(&b), 1);
    let gc = b.json(&["gc", "-o", "json"]);
    let kinds: Vec<&str> = gc["removed"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"snapshot_pull"), "{gc}");
    assert_eq!(pulls(&b), 0);
    let pulled = b.json(&["snapshot", "pull", "-o", "json", "--name", "s3", &reference]);
    assert_eq!(pulled["fetched_blocks"], pulled["blocks"], "{pulled}");
}

#[test]
fn a_tampered_block_is_refused_and_nothing_is_left() {
    let Some(registry) = registry("a_tampered_block_is_refused_and_nothing_is_left") else {
        return;
    };
    let a = source_with_snapshot();
    let reference = registry.reference("snaps/src:v1");
    a.ok(&["snapshot", "push", "s", &reference]);
    // The block of 0xa5 bytes, changed in the registry's storage.
    let block = {
        use sha2::Digest as _;
        let raw = sha2::Sha256::digest(vec![0xa5u8; BLOCK as usize]);
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    };
    let data = registry.blob_data_path(&block);
    let file = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
    file.write_all_at(b"evil", 1000).unwrap();
    let b = Host::new();
    let before = b.leftovers();
    let err = b.fail(&["snapshot", "pull", &reference]);
    assert!(
        err.contains(&format!(
            "blob {block} arrived as 4194304 bytes with digest"
        )),
        "{err}"
    );
    assert!(err.contains("damaged or was tampered with"), "{err}");
    assert!(b.snapshot_names().is_empty());
    assert_eq!(b.leftovers(), before);
}

#[test]
fn a_manifest_pointing_outside_the_snapshot_is_refused_and_nothing_is_left() {
    let Some(registry) =
        registry("a_manifest_pointing_outside_the_snapshot_is_refused_and_nothing_is_left")
    else {
        return;
    };
    let a = source_with_snapshot();
    a.ok(&["snapshot", "push", "s", &registry.reference("snaps/src:v1")]);
    let good: Value = serde_json::from_slice(&registry.manifest("snaps/src:v1")).unwrap();
    let b = Host::new();
    let before = b.leftovers();
    let refused = |tag: &str, manifest: &Value, expected: &str| {
        registry.put_manifest(
            &format!("snaps/src:{tag}"),
            &serde_json::to_vec(manifest).unwrap(),
        );
        let err = b.fail(&[
            "snapshot",
            "pull",
            &registry.reference(&format!("snaps/src:{tag}")),
        ]);
        assert!(err.contains(expected), "{tag}: {err}");
        assert!(b.snapshot_names().is_empty(), "{tag}");
        assert_eq!(b.leftovers(), before, "{tag}");
    };
    // A block the index names is no longer listed: the registry would serve
    // whatever blob that digest names, from any repository.
    let mut m = good.clone();
    m["layers"].as_array_mut().unwrap().remove(2);
    refused("unlisted", &m, "which the manifest does not list");
    // A listed block of the wrong size.
    let mut m = good.clone();
    m["layers"][2]["size"] = Value::from(BLOCK + 1);
    refused(
        "oversized",
        &m,
        "expected a application/vnd.cocoonstack.snapshot.chunk.v1 of 1 to 4194304 bytes",
    );
    // Upstream's whole-file layout, and something else entirely.
    let mut m = good.clone();
    m["artifactType"] = Value::from("application/vnd.cocoonstack.snapshot.v1+json");
    // (its layers are not titled files)
    refused("upstream", &m, "has no title");
    let mut m = good;
    m["artifactType"] = Value::from("application/vnd.example.other");
    refused("other", &m, "is not a chunked cocoon snapshot");
}

/// Fleets clone one reference on many VMs at once: pulls of the same
/// artifact wait for each other, and every one of them ends with its
/// snapshot (the later ones find the blocks, or fetch them anew once the
/// first has removed its cache).
#[test]
fn pulls_of_one_artifact_at_once_all_succeed() {
    let Some(registry) = registry("pulls_of_one_artifact_at_once_all_succeed") else {
        return;
    };
    let a = source_with_snapshot();
    let reference = registry.reference("snaps/src:v1");
    a.ok(&["snapshot", "push", "s", &reference]);
    let b = Host::new();
    let pulls: Vec<_> = (0..4)
        .map(|i| {
            b.cmd()
                .args(["snapshot", "pull", "--name", &format!("p{i}"), &reference])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for pull in pulls {
        let out = pull.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(b.snapshot_names(), ["p0", "p1", "p2", "p3"]);
    assert_eq!(
        b.leftovers()
            .iter()
            .filter(|l| l.starts_with("pulls/"))
            .count(),
        0
    );
}

/// A snapshot whose sealer died (`snapshot save` returns before the
/// digests exist) is sealed by its push, chunked and whole: the pushed
/// manifest has the digests an independent sum gives, and the pulls verify
/// against them.
#[test]
fn an_unsealed_snapshot_is_sealed_before_it_is_pushed() {
    let Some(registry) = registry("an_unsealed_snapshot_is_sealed_before_it_is_pushed") else {
        return;
    };
    let a = source_with_snapshot();
    for (name, layout) in [("u", "chunked"), ("w", "whole")] {
        let mut save = a.cmd();
        save.env("COCOON_FAILPOINTS", "snapshot.seal.summed=kill");
        cocoon_testkit::run_ok(save, &["snapshot", "save", "--name", name, "src"]);
        let dir = a.data_dir(name);
        let unsealed: Value =
            serde_json::from_slice(&std::fs::read(dir.join("cocoon.json")).unwrap()).unwrap();
        assert!(!cocoon_testkit::is_sealed(&unsealed), "{unsealed}");
        let reference = registry.reference(&format!("snaps/{name}:v1"));
        a.ok(&["snapshot", "push", "--layout", layout, name, &reference]);
        let sealed: Value =
            serde_json::from_slice(&std::fs::read(dir.join("cocoon.json")).unwrap()).unwrap();
        let listed: Vec<(String, String)> = sealed["files"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(n, f)| (n.clone(), f["sha256"].as_str().unwrap().to_string()))
            .collect();
        assert_eq!(listed, sums(&dir), "{layout}");
        let b = Host::new();
        b.ok(&["snapshot", "pull", &reference]);
        assert_eq!(sums(&b.data_dir(name)), sums(&dir), "{layout}");
    }
}
