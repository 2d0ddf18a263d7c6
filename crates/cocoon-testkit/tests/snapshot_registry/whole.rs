//! `snapshot push --layout whole`: upstream's layout, the one epoch and
//! vk-cocoon pull (cocoonstack/epoch `snapshot/push.go`, `manifest/media.go`),
//! and `snapshot pull` of it: the layout as epoch reads it, the round trip
//! and a clone, a push run again sending nothing, a pull killed and run
//! again fetching nothing twice, and hostile artifacts refused with nothing
//! left behind.

use serde_json::Value;

use super::host::*;

const UPSTREAM: &str = "application/vnd.cocoonstack.snapshot.v1+json";

fn push_whole(host: &Host, snapshot: &str, reference: &str) -> Value {
    host.json(&[
        "snapshot", "push", "-o", "json", "--layout", "whole", snapshot, reference,
    ])
}

fn blob(registry: &cocoon_testkit::registry::Registry, digest: &Value) -> Vec<u8> {
    std::fs::read(registry.blob_data_path(digest.as_str().unwrap())).unwrap()
}

#[test]
fn a_snapshot_pushed_whole_is_in_epochs_layout_and_is_pulled_and_cloned() {
    let Some(registry) =
        registry("a_snapshot_pushed_whole_is_in_epochs_layout_and_is_pulled_and_cloned")
    else {
        return;
    };
    let a = source_with_snapshot();
    let reference = registry.reference("snaps/whole:v1");
    let pushed = push_whole(&a, "s", &reference);
    assert_eq!(pushed["layout"], "whole", "{pushed}");
    assert_eq!(pushed["sent_blocks"], pushed["blocks"], "{pushed}");

    // What epoch's pull reads: its artifactType and config type, a title
    // on every layer (the export stream's entries, in order), its media
    // types, and each sparse file's map in the config blob.
    let manifest: Value = serde_json::from_slice(&registry.manifest("snaps/whole:v1")).unwrap();
    assert_eq!(manifest["artifactType"], UPSTREAM, "{manifest}");
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.cocoonstack.snapshot.config.v1+json"
    );
    let layers = manifest["layers"].as_array().unwrap();
    let titles: Vec<&str> = layers
        .iter()
        .map(|l| {
            l["annotations"]["org.opencontainers.image.title"]
                .as_str()
                .unwrap()
        })
        .collect();
    let mut files: Vec<String> = sums(&a.data_dir("s")).into_iter().map(|(n, _)| n).collect();
    files.retain(|n| n != "cocoon.json.sha256");
    let mut expected = vec!["cocoon.json".to_string()];
    expected.extend(files);
    expected.push("cocoon.json.sha256".into());
    assert_eq!(titles, expected, "{manifest}");
    assert_eq!(layers.len() as u64, pushed["blocks"].as_u64().unwrap());
    for layer in layers {
        let title = layer["annotations"]["org.opencontainers.image.title"]
            .as_str()
            .unwrap();
        if title == "config.json" {
            assert_eq!(
                layer["mediaType"],
                "application/vnd.cocoonstack.vm.config+json"
            );
        }
    }
    let config: Value =
        serde_json::from_slice(&blob(&registry, &manifest["config"]["digest"])).unwrap();
    let cow = a.cow("src");
    let cow_name = cow.file_name().unwrap().to_str().unwrap().to_string();
    let cow_meta = &config["files"][&cow_name];
    let cow_size = std::fs::metadata(&cow).unwrap().len();
    assert_eq!(cow_meta["sparseSize"].as_u64(), Some(cow_size), "{config}");
    let map: Vec<Value> = serde_json::from_str(cow_meta["sparseMap"].as_str().unwrap()).unwrap();
    let data: u64 = map.iter().map(|s| s["l"].as_u64().unwrap()).sum();
    let cow_layer = layers
        .iter()
        .find(|l| l["annotations"]["org.opencontainers.image.title"] == cow_name.as_str())
        .unwrap();
    // The disk's holes are not sent: the blob is its data only.
    assert_eq!(cow_layer["size"].as_u64(), Some(data));
    assert!(data < cow_size / 4, "{data} of {cow_size}");
    assert_eq!(
        config["snapshotId"],
        a.json(&["snapshot", "inspect", "s"])["id"]
    );

    let b = Host::new();
    let pulled = b.json(&["snapshot", "pull", "-o", "json", &reference]);
    assert_eq!(pulled["digest"], pushed["digest"], "{pulled}");
    assert_eq!(b.snapshot_names(), ["s"]);
    assert_eq!(sums(&a.data_dir("s")), sums(&b.data_dir("s")));
    b.ok(&["vm", "clone", "--name", "c", "s"]);
    assert_eq!(b.json(&["vm", "inspect", "c"])["state"], "running");
    // `vm clone --pull` takes the layout too.
    b.ok(&["vm", "clone", "--pull", "--name", "c2", &reference]);
    assert_eq!(b.json(&["vm", "inspect", "c2"])["state"], "running");
    assert_eq!(b.snapshot_names(), ["s"]);
    assert!(b.leftovers().iter().all(|l| !l.starts_with("pulls/")));

    // Pushed again: every blob is in the registry, nothing is sent.
    let again = push_whole(&a, "s", &reference);
    assert_eq!(again["sent_blocks"], 0, "{again}");
    assert_eq!(again["digest"], pushed["digest"], "{again}");
}

#[test]
fn a_killed_whole_pull_runs_again_without_fetching_a_blob_twice() {
    let test = "a_killed_whole_pull_runs_again_without_fetching_a_blob_twice";
    let Some(registry) = registry(test) else {
        return;
    };
    if !failpoints(test) {
        return;
    }
    let a = source_with_snapshot();
    let reference = registry.reference("snaps/whole:v1");
    a.killed_at(
        "snapshot.push.blocks",
        &["snapshot", "push", "--layout", "whole", "s", &reference],
    );
    // Killed before the manifest: no tag, and run again nothing is resent.
    let pushed = push_whole(&a, "s", &reference);
    assert_eq!(pushed["sent_blocks"], 0, "{pushed}");

    let b = Host::new();
    b.killed_at("snapshot.pull.fetched", &["snapshot", "pull", &reference]);
    assert!(b.snapshot_names().is_empty());
    let pulled = b.json(&["snapshot", "pull", "-o", "json", &reference]);
    assert_eq!(pulled["fetched_blocks"], 0, "{pulled}");
    assert_eq!(b.snapshot_names(), ["s"]);
    let manifest: Value = serde_json::from_slice(&registry.manifest("snaps/whole:v1")).unwrap();
    for layer in manifest["layers"].as_array().unwrap() {
        let digest = layer["digest"].as_str().unwrap();
        assert!(registry.blob_fetches(digest) <= 1, "{digest} fetched twice");
    }
    assert!(b.leftovers().iter().all(|l| !l.starts_with("pulls/")));
}

#[test]
fn a_hostile_whole_artifact_is_refused_and_nothing_is_left() {
    let Some(registry) = registry("a_hostile_whole_artifact_is_refused_and_nothing_is_left") else {
        return;
    };
    let a = source_with_snapshot();
    push_whole(&a, "s", &registry.reference("snaps/whole:v1"));
    let good: Value = serde_json::from_slice(&registry.manifest("snaps/whole:v1")).unwrap();
    let config: Value =
        serde_json::from_slice(&blob(&registry, &good["config"]["digest"])).unwrap();
    let b = Host::new();
    let before = b.leftovers();
    let refused = |tag: &str, manifest: &Value, expected: &str| {
        registry.put_manifest(
            &format!("snaps/whole:{tag}"),
            &serde_json::to_vec(manifest).unwrap(),
        );
        let reference = registry.reference(&format!("snaps/whole:{tag}"));
        let err = b.fail(&["snapshot", "pull", &reference]);
        eprintln!("{tag}: {err}");
        assert!(err.contains(expected), "{tag}: {err}");
        assert!(b.snapshot_names().is_empty(), "{tag}");
        assert_eq!(b.leftovers(), before, "{tag}");
    };
    let with_config = |config: &Value| {
        let bytes = serde_json::to_vec(config).unwrap();
        let digest = registry.put_blob("snaps/whole", &bytes);
        let mut m = good.clone();
        m["config"]["digest"] = digest.into();
        m["config"]["size"] = bytes.len().into();
        m
    };
    let title = "org.opencontainers.image.title";
    // A title that leaves the snapshot directory.
    let mut m = good.clone();
    m["layers"][1]["annotations"][title] = "../../etc/cron.d/evil".into();
    refused("escape", &m, "../../etc/cron.d/evil");
    // A layer without a title.
    let mut m = good.clone();
    m["layers"][1]["annotations"] = serde_json::json!({});
    refused("untitled", &m, "has no title");
    // A blob whose bytes are not what its digest says (changed in the
    // registry's storage), then put back.
    let victim = good["layers"][1]["digest"].as_str().unwrap().to_string();
    let data = registry.blob_data_path(&victim);
    let original = std::fs::read(&data).unwrap();
    let mut bytes = original.clone();
    bytes[0] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();
    refused("tampered", &good, "damaged or was tampered with");
    std::fs::write(&data, &original).unwrap();
    // A sparse map that writes past the file's end.
    let mut c = config.clone();
    let cow = a.cow("src");
    let cow_name = cow.file_name().unwrap().to_str().unwrap();
    c["files"][cow_name]["sparseSize"] = 4096.into();
    refused("map", &with_config(&c), cow_name);
    // A config blob that is not epoch's.
    let m = with_config(&serde_json::json!({"files": 7}));
    refused("config", &m, "the snapshot config blob");
}
