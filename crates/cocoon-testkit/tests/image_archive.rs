//! `image import` of whole image archives through the real binary: an OCI
//! image layout in a tar (skopeo's `oci-archive:`) and `docker save` output,
//! from a file or gzip-compressed on stdin. The image keeps its run config;
//! a damaged or mixed archive is refused and leaves nothing behind.

use std::io::Write;

use cocoon_testkit::CocoonEnv;
use cocoon_testkit::registry::layers::LayerBuilder;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

fn bin() -> String {
    cocoon_testkit::cocoon_bin()
}

fn sha(data: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(data);
    let hex: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// A container image: two layers (the top one gzip-compressed as a
/// registry would hold it) and the config that runs it.
struct Parts {
    base: Vec<u8>,
    top: Vec<u8>,
    top_gz: Vec<u8>,
    config: Vec<u8>,
}

fn parts() -> Parts {
    let base = LayerBuilder::new()
        .dir("bin/")
        .file_mode("bin/true", 0o755, b"#!/bin/sh\n")
        .build();
    let top = LayerBuilder::new()
        .dir("app/")
        .file("app/run", b"run\n")
        .build();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": ["/app/run"],
            "Cmd": ["--serve"],
            "Env": ["PATH=/bin", "MODE=archive"],
            "WorkingDir": "/app",
            "User": "1000:1000",
        },
        "rootfs": {"type": "layers", "diff_ids": [sha(&base), sha(&top)]},
    }))
    .unwrap();
    Parts {
        top_gz: gzip(&top),
        base,
        top,
        config,
    }
}

fn descriptor(media_type: &str, data: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": sha(data), "size": data.len()})
}

fn blob(name: &[u8]) -> String {
    format!("blobs/sha256/{}", &sha(name)[7..])
}

/// An OCI image layout, as `skopeo copy … oci-archive:` writes it; its
/// manifest's bytes too. `layer_blob` stands in for the top layer's stored
/// bytes (a damaged copy, in one test).
fn oci_archive(p: &Parts, layer_blob: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &p.config),
        "layers": [
            descriptor("application/vnd.oci.image.layer.v1.tar", &p.base),
            descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &p.top_gz),
        ],
    }))
    .unwrap();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [descriptor("application/vnd.oci.image.manifest.v1+json", &manifest)],
    }))
    .unwrap();
    let archive = LayerBuilder::new()
        .dir("blobs/")
        .dir("blobs/sha256/")
        .file(&blob(&p.base), &p.base)
        .file(&blob(&p.top_gz), layer_blob)
        .file(&blob(&p.config), &p.config)
        .file(&blob(&manifest), &manifest)
        .file("index.json", &index)
        .file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
        .build();
    (archive, manifest)
}

/// `docker save` in its classic layout; the top layer is a link to the
/// base's directory, as docker writes a layer it already saved.
fn docker_archive(p: &Parts) -> Vec<u8> {
    let (a, b) = (&sha(&p.base)[7..], &sha(&p.top)[7..]);
    let config_name = format!("{}.json", &sha(&p.config)[7..]);
    let manifest = serde_json::to_vec(&json!([{
        "Config": config_name,
        "RepoTags": ["apps/saved:1"],
        "Layers": [format!("{a}/layer.tar"), format!("{b}/layer.tar")],
    }]))
    .unwrap();
    LayerBuilder::new()
        .dir(&format!("{a}/"))
        .file(&format!("{a}/layer.tar"), &p.base)
        .dir(&format!("{b}/"))
        .file("top-layer.tar", &p.top)
        .symlink(&format!("{b}/layer.tar"), "../top-layer.tar")
        .file(&config_name, &p.config)
        .file("manifest.json", &manifest)
        .build()
}

fn inspect(env: &CocoonEnv, name: &str) -> Value {
    let out = env.cmd().args(["image", "inspect", name]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn entries(dir: std::path::PathBuf) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn assert_run_config(image: &Value) {
    assert_eq!(image["own_kernel"], false, "{image:#}");
    let config = &image["config"];
    assert_eq!(config["entrypoint"], json!(["/app/run"]), "{image:#}");
    assert_eq!(config["cmd"], json!(["--serve"]), "{image:#}");
    assert_eq!(
        config["env"],
        json!(["PATH=/bin", "MODE=archive"]),
        "{image:#}"
    );
    assert_eq!(config["working_dir"], "/app", "{image:#}");
    assert_eq!(config["user"], "1000:1000", "{image:#}");
}

#[test]
fn an_oci_layout_and_a_docker_save_archive_import_with_their_run_config() {
    let env = CocoonEnv::new(bin());
    let p = parts();
    let (archive, manifest) = oci_archive(&p, &p.top_gz);
    let file = env.path().join("image.oci.tar");
    std::fs::write(&file, &archive).unwrap();
    let out = env
        .cmd()
        .args(["image", "import", "apps/oci:1"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let image = inspect(&env, "apps/oci:1");
    // The manifest's digest, as a pull of the same image records it.
    assert_eq!(image["id"], sha(&manifest), "{image:#}");
    // Layers are named by their uncompressed digests, as pulled ones are.
    assert_eq!(
        image["layers"],
        json!([sha(&p.base), sha(&p.top)]),
        "{image:#}"
    );
    assert_run_config(&image);

    // docker save, gzip-compressed on stdin: the same layers, reused.
    let out = env
        .cmd()
        .args(["image", "import", "apps/saved:1"])
        .write_stdin(gzip(&docker_archive(&p)))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let image = inspect(&env, "apps/saved:1");
    assert_eq!(image["id"], sha(&p.config), "docker's image ID: {image:#}");
    assert_eq!(image["layers"], json!([sha(&p.base), sha(&p.top)]));
    assert_run_config(&image);
    assert_eq!(entries(env.root_dir().join("images/blobs")).len(), 2);
    assert_eq!(
        entries(env.root_dir().join("images/tmp")),
        Vec::<String>::new()
    );
}

#[test]
fn a_damaged_or_mixed_archive_is_refused_and_leaves_nothing() {
    let env = CocoonEnv::new(bin());
    let p = parts();
    let mut damaged = p.top_gz.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 0xff;
    let (archive, _) = oci_archive(&p, &damaged);
    let file = env.path().join("damaged.tar");
    std::fs::write(&file, &archive).unwrap();
    let out = env
        .cmd()
        .args(["image", "import", "apps/bad:1"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let expected = format!(
        "Error: the image archive {}: layer \"{}\" does not match its digest or size (expected {}, {} bytes, found {}, {} bytes); the archive is damaged or was altered\n",
        file.display(),
        blob(&p.top_gz),
        sha(&p.top_gz),
        p.top_gz.len(),
        sha(&damaged),
        damaged.len()
    );
    assert_eq!(stderr(&out), expected);

    // An archive is imported alone, never as one layer among others.
    let (good, _) = oci_archive(&p, &p.top_gz);
    let good_file = env.path().join("good.tar");
    std::fs::write(&good_file, &good).unwrap();
    let layer = env.path().join("layer.tar");
    std::fs::write(&layer, &p.base).unwrap();
    let out = env
        .cmd()
        .args(["image", "import", "apps/mixed:1"])
        .arg(&layer)
        .arg(&good_file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "Error: {} is a whole image archive (docker save or an OCI layout): import it alone, not with other files\n",
            good_file.display()
        )
    );

    let out = env
        .cmd()
        .args(["image", "ls", "-o", "json"])
        .output()
        .unwrap();
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed, json!([]), "no image was recorded");
    assert_eq!(
        entries(env.root_dir().join("images/blobs")),
        Vec::<String>::new()
    );
    assert_eq!(
        entries(env.root_dir().join("images/tmp")),
        Vec::<String>::new()
    );
}
