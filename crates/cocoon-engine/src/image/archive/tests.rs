use sha2::{Digest as _, Sha256};

use super::*;

enum E<'a> {
    File(&'a [u8]),
    Dir,
    Symlink(&'a str),
    Fifo,
}

fn tar_of(entries: &[(&str, E<'_>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, entry) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        let data: &[u8] = match entry {
            E::File(data) => {
                header.set_entry_type(tar::EntryType::Regular);
                data
            }
            E::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                b""
            }
            E::Symlink(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_link_name(target).unwrap();
                b""
            }
            E::Fifo => {
                header.set_entry_type(tar::EntryType::Fifo);
                b""
            }
        };
        header.set_size(data.len() as u64);
        // Raw names: the builder's own path checks would refuse the hostile ones.
        let bytes = name.as_bytes();
        header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn sha(data: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(data);
    crate::digest::Digest::of(hasher).to_string()
}

fn stage_bytes(archive: &[u8]) -> (tempfile::TempDir, Result<Staged, ArchiveError>) {
    let dir = tempfile::tempdir().unwrap();
    let staged = stage(
        archive,
        "test.tar",
        &dir.path().join("stage"),
        dir.path(),
        1 << 30,
    );
    (dir, staged)
}

/// A one-layer image: (layer tar, config JSON).
fn image_parts() -> (Vec<u8>, Vec<u8>) {
    let layer = tar_of(&[("hello", E::File(b"world"))]);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Entrypoint":["/hello"],"Env":["A=1"]}},"rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
        sha(&layer)
    )
    .into_bytes();
    (layer, config)
}

fn manifest_of(config: &[u8], layer: &[u8]) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}]}}"#,
        sha(config),
        config.len(),
        sha(layer),
        layer.len()
    )
    .into_bytes()
}

fn index_of(manifests: &[&[u8]]) -> Vec<u8> {
    let entries: Vec<String> = manifests
        .iter()
        .map(|m| {
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{}}}"#,
                sha(m),
                m.len()
            )
        })
        .collect();
    format!(
        r#"{{"schemaVersion":2,"manifests":[{}]}}"#,
        entries.join(",")
    )
    .into_bytes()
}

fn blob_name(data: &[u8]) -> String {
    format!("blobs/sha256/{}", &sha(data)[7..])
}

#[test]
fn the_first_entry_tells_an_archive_from_a_layer() {
    let hex = "a".repeat(64);
    for first in [
        "oci-layout",
        "./index.json",
        "blobs/",
        "blobs/sha256/x",
        "manifest.json",
        &format!("{hex}/VERSION"),
        &format!("{hex}.tar"),
        &format!("{hex}.json"),
    ] {
        let tar = tar_of(&[(first, E::File(b"x"))]);
        assert!(is_archive(&tar), "{first}");
    }
    for first in [
        "bin/sh",
        "etc/",
        "./usr/lib/x",
        "index.html",
        "aaaa/VERSION",
    ] {
        let tar = tar_of(&[(first, E::File(b"x"))]);
        assert!(!is_archive(&tar), "{first}");
    }
    assert!(!is_archive(b"not a tar at all"));
}

#[test]
fn an_oci_layout_gives_its_manifest_digest_config_and_checked_layers() {
    let (layer, config) = image_parts();
    let manifest = manifest_of(&config, &layer);
    let index = index_of(&[&manifest]);
    let tar = tar_of(&[
        ("oci-layout", E::File(br#"{"imageLayoutVersion":"1.0.0"}"#)),
        ("blobs/", E::Dir),
        ("blobs/sha256/", E::Dir),
        (&blob_name(&layer), E::File(&layer)),
        (&blob_name(&config), E::File(&config)),
        (&blob_name(&manifest), E::File(&manifest)),
        ("index.json", E::File(&index)),
    ]);
    let (_dir, staged) = stage_bytes(&tar);
    let plan = plan(&staged.unwrap()).unwrap();
    assert_eq!(plan.id.to_string(), sha(&manifest));
    assert_eq!(plan.config.entrypoint, ["/hello"]);
    assert_eq!(plan.config.env, ["A=1"]);
    assert_eq!(plan.layers.len(), 1);
    assert_eq!(plan.layers[0].expect, Expect::Blob);
    assert_eq!(std::fs::read(&plan.layers[0].path).unwrap(), layer);
}

#[test]
fn an_altered_blob_is_refused_by_its_digest() {
    let (layer, config) = image_parts();
    let manifest = manifest_of(&config, &layer);
    let index = index_of(&[&manifest]);
    let mut altered = layer.clone();
    altered[600] ^= 1;
    let tar = tar_of(&[
        (&blob_name(&layer), E::File(&altered)),
        (&blob_name(&config), E::File(&config)),
        (&blob_name(&manifest), E::File(&manifest)),
        ("index.json", E::File(&index)),
    ]);
    let (_dir, staged) = stage_bytes(&tar);
    let err = plan(&staged.unwrap()).unwrap_err().to_string();
    assert!(
        err.contains("layer") && err.contains("does not match its digest or size"),
        "{err}"
    );
}

#[test]
fn an_index_of_several_images_or_none_is_refused_with_the_reason() {
    let (layer, config) = image_parts();
    let manifest = manifest_of(&config, &layer);
    let two = index_of(&[&manifest, &manifest]);
    let tar = tar_of(&[("index.json", E::File(&two))]);
    let (_dir, staged) = stage_bytes(&tar);
    let err = plan(&staged.unwrap()).unwrap_err().to_string();
    assert!(err.contains("2 images and none for linux/amd64"), "{err}");
    let none = index_of(&[]);
    let tar = tar_of(&[("index.json", E::File(&none))]);
    let (_dir, staged) = stage_bytes(&tar);
    let err = plan(&staged.unwrap()).unwrap_err().to_string();
    assert!(err.contains("its index lists no image"), "{err}");
}

#[test]
fn docker_save_follows_its_own_links_and_names_the_diff_ids() {
    let (layer, config) = image_parts();
    let hex = "b".repeat(64);
    let other = "c".repeat(64);
    let manifest =
        format!(r#"[{{"Config":"{hex}.json","RepoTags":["x:1"],"Layers":["{other}/layer.tar"]}}]"#);
    let tar = tar_of(&[
        (&format!("{hex}/"), E::Dir),
        (&format!("{hex}/layer.tar"), E::File(&layer)),
        (
            &format!("{other}/layer.tar"),
            E::Symlink(&format!("../{hex}/layer.tar")),
        ),
        (&format!("{hex}.json"), E::File(&config)),
        ("manifest.json", E::File(manifest.as_bytes())),
    ]);
    let (_dir, staged) = stage_bytes(&tar);
    let plan = plan(&staged.unwrap()).unwrap();
    assert_eq!(plan.id.to_string(), sha(&config));
    assert_eq!(plan.config.entrypoint, ["/hello"]);
    assert_eq!(
        plan.layers[0].expect,
        Expect::DiffId(crate::digest::Digest::parse(&sha(&layer)).unwrap())
    );
    assert_eq!(std::fs::read(&plan.layers[0].path).unwrap(), layer);
}

#[test]
fn a_missing_layer_or_mismatched_diff_ids_are_refused() {
    let (_, config) = image_parts();
    let manifest = r#"[{"Config":"c.json","Layers":["gone/layer.tar"]}]"#;
    let tar = tar_of(&[
        ("manifest.json", E::File(manifest.as_bytes())),
        ("c.json", E::File(&config)),
    ]);
    let (_dir, staged) = stage_bytes(&tar);
    let err = plan(&staged.unwrap()).unwrap_err().to_string();
    assert!(
        err.contains("names \"gone/layer.tar\" (a layer), which it does not hold"),
        "{err}"
    );
    let manifest = r#"[{"Config":"c.json","Layers":["a","b"]}]"#;
    let tar = tar_of(&[
        ("manifest.json", E::File(manifest.as_bytes())),
        ("c.json", E::File(&config)),
    ]);
    let (_dir, staged) = stage_bytes(&tar);
    let err = plan(&staged.unwrap()).unwrap_err().to_string();
    assert!(err.contains("1 layer diff IDs for 2 layers"), "{err}");
}

#[test]
fn hostile_entries_are_refused_while_staging() {
    for (entries, reason) in [
        (
            vec![("../escape", E::File(b"x"))],
            "has an absolute or `..` name",
        ),
        (
            vec![("/etc/passwd", E::File(b"x"))],
            "has an absolute or `..` name",
        ),
        (
            vec![("link", E::Symlink("../../etc/passwd"))],
            "links outside the archive",
        ),
        (
            vec![("link", E::Symlink("/etc/passwd"))],
            "links outside the archive",
        ),
        (
            vec![("pipe", E::Fifo)],
            "is neither a file, a directory nor a link",
        ),
        (
            vec![("a", E::File(b"x")), ("./a", E::File(b"y"))],
            "appears twice",
        ),
    ] {
        let tar = tar_of(&entries);
        let (dir, staged) = stage_bytes(&tar);
        let err = staged.err().expect("refused").to_string();
        assert!(err.contains(reason), "{err}");
        // Nothing was written outside the staging directory.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["stage"], "{err}");
    }
}

#[test]
fn a_link_loop_is_missing_not_endless() {
    let tar = tar_of(&[("a", E::Symlink("b")), ("b", E::Symlink("a"))]);
    let (_dir, staged) = stage_bytes(&tar);
    let staged = staged.unwrap();
    assert!(!staged.has("a"));
}

#[test]
fn an_oversized_document_is_refused() {
    let big = vec![b' '; usize::try_from(MAX_MANIFEST_BYTES + 1).unwrap()];
    let tar = tar_of(&[("index.json", E::File(&big))]);
    let (_dir, staged) = stage_bytes(&tar);
    let err = plan(&staged.unwrap()).unwrap_err().to_string();
    assert!(
        err.contains("index.json is not valid: it is over 4.0 MiB"),
        "{err}"
    );
}
