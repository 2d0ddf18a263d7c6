//! `image pull` against a real registry (Debian's docker-registry on 127.0.0.1).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cocoon_engine::config::{Config, LoadOptions};
use cocoon_engine::image::oci::NoProgress;
use cocoon_engine::image::store::ImageDirs;
use cocoon_engine::{Engine, Error};
use cocoon_testkit::registry::Registry;
use cocoon_testkit::registry::layers::LayerBuilder;
use cocoon_testkit::{CocoonEnv, skip};

fn engine(root: &Path) -> Engine {
    let lookup = |_: &str| None;
    let config = Config::load(LoadOptions {
        config_path: None,
        env: &lookup,
        flags: vec![("root_dir", root.display().to_string())],
        default_path: "/nonexistent/config.toml".into(),
    })
    .unwrap();
    Engine::open(config).unwrap()
}

fn registry(test: &str) -> Option<Registry> {
    let registry = Registry::start();
    if registry.is_none() {
        skip(
            test,
            "docker-registry is not installed (apt-get install docker-registry)",
        );
    }
    registry
}

/// A bootable-looking image: a base layer, an upper layer deleting a file, and
/// a layer with the kernel and initrd.
fn vm_image_layers(tag: &str) -> Vec<Vec<u8>> {
    vec![
        LayerBuilder::new()
            .dir("etc/")
            .file("etc/os-release", b"ID=cocoon-test\n")
            .file("etc/doomed", b"deleted above\n")
            .file("usr/bin/tool", b"tool")
            .hardlink("usr/bin/tool2", "usr/bin/tool")
            .char_device("dev/null", 1, 3)
            .build(),
        LayerBuilder::new()
            .delete("etc/doomed")
            .file("etc/motd", tag.as_bytes())
            .build(),
        LayerBuilder::new()
            .file("boot/vmlinuz-6.1.0", b"kernel")
            .file("boot/initrd.img-6.1.0", b"initrd")
            .build(),
    ]
}

fn digests(image: &cocoon_engine::model::Image) -> Vec<String> {
    image.layers.iter().map(|d| d.to_string()).collect()
}

#[test]
fn pull_by_tag_and_digest_fetches_each_layer_once() {
    let Some(registry) = registry("pull_by_tag_and_digest_fetches_each_layer_once") else {
        return;
    };
    let manifest = registry.push("vm/test:1", &vm_image_layers("v1"), "amd64");
    let root = tempfile::tempdir().unwrap();
    let mut engine = engine(root.path());

    let first = engine
        .pull_image(&registry.reference("vm/test:1"), &NoProgress)
        .unwrap();
    assert!(!first.up_to_date);
    assert_eq!(first.fetched_layers, 3);
    assert_eq!(first.image.id, manifest);
    assert_eq!(first.image.name, registry.reference("vm/test:1"));
    assert_eq!(first.image.layers.len(), 3);
    assert_eq!(
        first.image.kernel_layer.as_deref(),
        Some(first.image.layers[2].as_str())
    );
    assert_eq!(
        first.image.initrd_layer.as_deref(),
        Some(first.image.layers[2].as_str())
    );
    let dirs = ImageDirs::new(root.path());
    for layer in &first.image.layers {
        let blob = dirs.blob(layer);
        assert!(blob.is_file());
        let fsck = Command::new("fsck.erofs").arg(&blob).output().unwrap();
        assert!(
            fsck.status.success(),
            "{}",
            String::from_utf8_lossy(&fsck.stderr)
        );
    }
    assert_eq!(
        std::fs::read(dirs.kernel(&first.image.layers[2])).unwrap(),
        b"kernel"
    );
    assert_eq!(
        std::fs::read(dirs.initrd(&first.image.layers[2])).unwrap(),
        b"initrd"
    );

    // An unchanged tag: one manifest request, no layer work.
    let again = engine
        .pull_image(&registry.reference("vm/test:1"), &NoProgress)
        .unwrap();
    assert!(again.up_to_date);
    assert_eq!(again.image.id, manifest);

    // The same image by digest: recorded under its own name, nothing fetched.
    let by_digest = engine
        .pull_image(
            &registry.reference(&format!("vm/test@{manifest}")),
            &NoProgress,
        )
        .unwrap();
    assert_eq!(by_digest.fetched_layers, 0);
    assert_eq!(by_digest.image.id, manifest);
    for layer in digests(&first.image) {
        assert_eq!(
            registry.blob_fetches(&layer),
            1,
            "layer {layer} fetched more than once"
        );
    }
    assert_eq!(engine.list_images().unwrap().len(), 2);
    // Short names resolve to the recorded image.
    assert_eq!(
        engine
            .inspect_image(&registry.reference("vm/test:1"))
            .unwrap()
            .id,
        manifest
    );
}

#[test]
fn a_multi_platform_index_resolves_to_this_platform() {
    let Some(registry) = registry("a_multi_platform_index_resolves_to_this_platform") else {
        return;
    };
    let amd64 = registry.push("vm/multi:amd64", &vm_image_layers("amd64"), "amd64");
    registry.push("vm/multi:arm64", &vm_image_layers("arm64"), "arm64");
    registry.push_index("vm/multi:1", &[("arm64", "arm64"), ("amd64", "amd64")]);
    let root = tempfile::tempdir().unwrap();
    let mut engine = engine(root.path());
    let pulled = engine
        .pull_image(&registry.reference("vm/multi:1"), &NoProgress)
        .unwrap();
    assert_eq!(
        pulled.image.id, amd64,
        "the linux/amd64 manifest was chosen"
    );
}

#[test]
fn failures_commit_nothing() {
    let Some(registry) = registry("failures_commit_nothing") else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let mut engine = engine(root.path());
    let dirs = ImageDirs::new(root.path());

    // Unreachable registry.
    let err = engine
        .pull_image("127.0.0.1:1/vm/test:1", &NoProgress)
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cannot pull 127.0.0.1:1/vm/test:1:"),
        "{err}"
    );
    // Missing tag.
    registry.push("vm/test:1", &vm_image_layers("v1"), "amd64");
    let err = engine
        .pull_image(&registry.reference("vm/test:nope"), &NoProgress)
        .unwrap_err();
    assert!(err.to_string().contains("vm/test:nope"), "{err}");
    // Half a VM image: an initrd without a kernel.
    registry.push(
        "vm/nokernel:1",
        &[LayerBuilder::new().file("boot/initrd.img-1", b"x").build()],
        "amd64",
    );
    let err = engine
        .pull_image(&registry.reference("vm/nokernel:1"), &NoProgress)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "image {} has no kernel (a regular file /boot/vmlinuz* or /vmlinuz* in some layer) but has the other boot file: a VM image brings both, a container image neither",
            registry.reference("vm/nokernel:1")
        )
    );
    // A hostile layer.
    registry.push(
        "vm/hostile:1",
        &[LayerBuilder::new().raw_entry(b"../../etc/evil").build()],
        "amd64",
    );
    let err = engine
        .pull_image(&registry.reference("vm/hostile:1"), &NoProgress)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("layer entry \"../../etc/evil\" is not allowed: it contains '..'"),
        "{err}"
    );
    assert!(!root.path().join("../etc/evil").exists());
    assert!(
        engine.list_images().unwrap().is_empty(),
        "no image recorded"
    );
    // A blob whose content no longer matches its digest.
    registry.push("vm/tampered:1", &vm_image_layers("t"), "amd64");
    // The middle layer is unique to this image, so no earlier pull cached it.
    let layer = layer_digests(&registry, "vm/tampered:1").remove(1);
    let data = registry.blob_data_path(&layer);
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 20;
    bytes[last] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    let err = engine
        .pull_image(&registry.reference("vm/tampered:1"), &NoProgress)
        .unwrap_err();
    assert!(matches!(err, Error::Pull(_)), "{err}");
    assert!(err.to_string().contains(&layer), "{err}");
    assert!(
        !dirs.blob(&layer.parse().unwrap()).exists(),
        "the tampered layer was not stored"
    );
    assert!(engine.list_images().unwrap().is_empty());
    // Layers that did verify stay cached, and each of them is sound.
    for entry in std::fs::read_dir(dirs.root.join("blobs")).unwrap() {
        assert!(
            Command::new("fsck.erofs")
                .arg(entry.unwrap().path())
                .status()
                .unwrap()
                .success()
        );
    }
    let leftovers = std::fs::read_dir(dirs.root.join("tmp")).unwrap().count();
    assert_eq!(leftovers, 0, "work directories are removed");
    assert!(engine.intents().unwrap().is_empty(), "intents are closed");
}

/// The layer digests of a pushed image, as the registry serves them.
fn layer_digests(registry: &Registry, repo_tag: &str) -> Vec<String> {
    let reference =
        cocoon_engine::image::oci::parse_reference(&registry.reference(repo_tag)).unwrap();
    let options = cocoon_engine::image::oci::RegistryOptions::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cocoon_engine::image::oci::Resolved { layers, .. } = rt
        .block_on(cocoon_engine::image::oci::resolve(&reference, &options))
        .unwrap();
    layers.into_iter().map(|l| l.digest.to_string()).collect()
}

#[test]
fn registries_with_basic_auth_use_docker_credentials() {
    let Some(registry) = Registry::start_with_auth("alice", "s3cret") else {
        return skip(
            "registries_with_basic_auth_use_docker_credentials",
            "docker-registry is not installed",
        );
    };
    registry.push("vm/private:1", &vm_image_layers("p"), "amd64");
    let env = CocoonEnv::new(cocoon_testkit::cocoon_bin());
    let docker = env.path().join("docker");
    std::fs::create_dir(&docker).unwrap();
    let out = env
        .cmd()
        .env("DOCKER_CONFIG", &docker)
        .args(["image", "pull", &registry.reference("vm/private:1")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot pull") && stderr.contains("Not authorized"),
        "{stderr}"
    );

    std::fs::write(
        docker.join("config.json"),
        format!(
            r#"{{"auths": {{"{}": {{"auth": "YWxpY2U6czNjcmV0"}}}}}}"#,
            registry.addr
        ),
    )
    .unwrap();
    let out = env
        .cmd()
        .env("DOCKER_CONFIG", &docker)
        .args(["image", "pull", &registry.reference("vm/private:1")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env
        .cmd()
        .args(["image", "ls", "-o", "json"])
        .output()
        .unwrap();
    let images: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(images[0]["name"], registry.reference("vm/private:1"));
}

#[test]
fn concurrent_pulls_of_images_sharing_layers_fetch_each_layer_once() {
    let Some(registry) =
        registry("concurrent_pulls_of_images_sharing_layers_fetch_each_layer_once")
    else {
        return;
    };
    // Two images sharing a large base layer and the boot layer.
    let big: Vec<u8> = (0..(8u64 << 20) / 8)
        .flat_map(|i| i.wrapping_mul(0x9e3779b97f4a7c15).to_le_bytes())
        .collect();
    let base = LayerBuilder::new().file("usr/share/big.bin", &big).build();
    let boot = LayerBuilder::new()
        .file("boot/vmlinuz-6.1.0", b"kernel")
        .file("boot/initrd.img-6.1.0", b"initrd")
        .build();
    registry.push(
        "vm/a:1",
        &[
            base.clone(),
            LayerBuilder::new().file("etc/a", b"a").build(),
            boot.clone(),
        ],
        "amd64",
    );
    registry.push(
        "vm/b:1",
        &[base, LayerBuilder::new().file("etc/b", b"b").build(), boot],
        "amd64",
    );
    let bin = cocoon_testkit::cocoon_bin();
    let env = CocoonEnv::new(&bin);
    let children: Vec<_> = ["vm/a:1", "vm/b:1"]
        .iter()
        .map(|image| {
            env.std_cmd()
                .args(["image", "pull", &registry.reference(image)])
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let layers = layer_digests(&registry, "vm/a:1");
    assert_eq!(
        registry.blob_fetches(&layers[0]),
        1,
        "shared base layer fetched once"
    );
    assert_eq!(
        registry.blob_fetches(&layers[2]),
        1,
        "shared boot layer fetched once"
    );
}

#[test]
fn a_pull_killed_midway_leaves_nothing_corrupt_and_the_next_pull_finishes() {
    let Some(registry) =
        registry("a_pull_killed_midway_leaves_nothing_corrupt_and_the_next_pull_finishes")
    else {
        return;
    };
    let bin = cocoon_testkit::cocoon_bin();
    // Incompressible data so the pull takes a moment.
    let mut state = 0x9e3779b97f4a7c15u64;
    let big: Vec<u8> = (0..(32 << 20) / 8)
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()
        })
        .collect();
    let layers = vec![
        LayerBuilder::new().file("usr/share/big.bin", &big).build(),
        LayerBuilder::new()
            .file("boot/vmlinuz-6.1.0", b"kernel")
            .file("boot/initrd.img-6.1.0", b"initrd")
            .build(),
    ];
    registry.push("vm/big:1", &layers, "amd64");
    let env = CocoonEnv::new(&bin);
    let dirs = ImageDirs::new(&env.root_dir());
    for delay in [150u64, 400, 900] {
        let mut child = env
            .std_cmd()
            .args(["image", "pull", &registry.reference("vm/big:1")])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill();
        child.wait().unwrap();
        // Whatever was left is either complete or absent, never half a blob.
        if let Ok(entries) = std::fs::read_dir(dirs.root.join("blobs")) {
            for entry in entries {
                let fsck = Command::new("fsck.erofs")
                    .arg(entry.unwrap().path())
                    .output()
                    .unwrap();
                assert!(fsck.status.success(), "a killed pull left a corrupt blob");
            }
        }
    }
    let started = Instant::now();
    let out = env
        .cmd()
        .args(["image", "pull", &registry.reference("vm/big:1")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    let out = env
        .cmd()
        .args(["image", "inspect", &registry.reference("vm/big:1")])
        .output()
        .unwrap();
    let image: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for layer in image["layers"].as_array().unwrap() {
        let blob = dirs.blob(&layer.as_str().unwrap().parse().unwrap());
        assert!(
            Command::new("fsck.erofs")
                .arg(&blob)
                .status()
                .unwrap()
                .success()
        );
    }
}

/// A cocoonstack cloud-image artifact (upstream cocoon #35: what the
/// Windows builder publishes): a qcow2 in two `.part` layers, listed out
/// of order, beside a checksum layer; pulled as one cloud image. A part
/// whose bytes do not match its digest is refused and nothing is recorded.
#[test]
fn a_cloud_image_artifact_in_parts_is_pulled_as_one_disk() {
    let Some(registry) = registry("a_cloud_image_artifact_in_parts_is_pulled_as_one_disk") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.qcow2");
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", disk.to_str().unwrap(), "64M"])
        .status()
        .unwrap();
    assert!(status.success());
    let bytes = std::fs::read(&disk).unwrap();
    let (first, second) = bytes.split_at(bytes.len() / 2);
    let part = |data: &[u8], title: &str| {
        serde_json::json!({
            "mediaType": "application/vnd.cocoonstack.disk.qcow2.part",
            "digest": registry.put_blob("os/win", data), "size": data.len(),
            "annotations": {"org.opencontainers.image.title": title},
        })
    };
    let sums = b"checksums, not a disk\n";
    let empty = registry.put_blob("os/win", b"{}");
    let manifest = |parts: Vec<serde_json::Value>| {
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": "application/vnd.cocoonstack.os-image.v1+json",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
            "layers": parts,
        })
    };
    let good = manifest(vec![
        part(second, "win.qcow2.01.qcow2.part"),
        serde_json::json!({
            "mediaType": "text/plain", "digest": registry.put_blob("os/win", sums), "size": sums.len(),
            "annotations": {"org.opencontainers.image.title": "SHA256SUMS"},
        }),
        part(first, "win.qcow2.00.qcow2.part"),
    ]);
    registry.put_manifest("os/win:1", &serde_json::to_vec(&good).unwrap());
    let root = tempfile::tempdir().unwrap();
    let mut engine = engine(root.path());
    let pulled = engine
        .pull_image(&registry.reference("os/win:1"), &NoProgress)
        .unwrap();
    assert_eq!(pulled.fetched_layers, 2);
    assert_eq!(pulled.image.kind, cocoon_engine::model::ImageType::Cloudimg);
    assert_eq!(pulled.image.name, registry.reference("os/win:1"));
    // The same disk as importing the file whole.
    let whole = tempfile::tempdir().unwrap();
    let mut other = engine_at(whole.path());
    let imported = other
        .import_image("whole", std::slice::from_ref(&disk))
        .unwrap();
    assert_eq!(pulled.image.id, imported.id);

    // One part tampered with in the registry: refused, nothing recorded.
    let bad = manifest(vec![
        part(second, "win.qcow2.01.qcow2.part"),
        part(first, "win.qcow2.00.qcow2.part"),
    ]);
    registry.put_manifest("os/win:2", &serde_json::to_vec(&bad).unwrap());
    let digest = bad["layers"][0]["digest"].as_str().unwrap().to_string();
    let data = registry.blob_data_path(&digest);
    let f = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, b"evil", 0).unwrap();
    let root = tempfile::tempdir().unwrap();
    let mut engine = engine_at(root.path());
    let err = engine
        .pull_image(&registry.reference("os/win:2"), &NoProgress)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("blob {digest} arrived as")), "{err}");
    assert!(err.contains("damaged or was tampered with"), "{err}");
    assert!(engine.list_images().unwrap().is_empty());
    let tmp = root.path().join("images/tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

fn engine_at(root: &Path) -> Engine {
    engine(root)
}
