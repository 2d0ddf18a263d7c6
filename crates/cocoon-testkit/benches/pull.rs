//! `image pull` of a multi-layer image (>= 200 MiB) from a local registry,
//! against `skopeo copy docker://… dir:…` (Debian's skopeo) on the same image
//! in the same run, plus the cached re-pull.
//!
//! skopeo only downloads and verifies; cocoon also unpacks every layer and
//! builds its EROFS disk, so a ratio near 1 means conversion is nearly free.
//!
//! Run: `cargo bench -p cocoon-testkit --bench pull` (or bench/run.sh).

use std::process::Command;
use std::time::{Duration, Instant};

use cocoon_engine::Engine;
use cocoon_engine::config::{Config, LoadOptions};
use cocoon_engine::image::oci::NoProgress;
use cocoon_testkit::registry::Registry;
use cocoon_testkit::registry::layers::LayerBuilder;

const LAYER_MIB: usize = 56;
const LAYERS: usize = 4;

/// Half random, half repetitive: compresses roughly like real binaries.
fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        if state & 1 == 0 {
            out.extend_from_slice(&state.to_le_bytes());
        } else {
            out.extend_from_slice(b"cocoon\0\0");
        }
    }
    out.truncate(len);
    out
}

fn engine(root: &std::path::Path) -> Engine {
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

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let Some(registry) = Registry::start() else {
        eprintln!("SKIPPED: docker-registry is not installed");
        return;
    };
    if Command::new("skopeo").arg("--version").output().is_err() {
        eprintln!("SKIPPED: skopeo is not installed");
        return;
    }
    let mut layers: Vec<Vec<u8>> = (0..LAYERS)
        .map(|i| {
            LayerBuilder::new()
                .file(
                    &format!("usr/lib/data{i}.bin"),
                    &data(i as u64 + 7, LAYER_MIB << 20),
                )
                .file(&format!("usr/share/doc/{i}/README"), b"docs")
                .build()
        })
        .collect();
    layers.push(
        LayerBuilder::new()
            .file("boot/vmlinuz-6.1", b"kernel")
            .file("boot/initrd.img-6.1", b"initrd")
            .build(),
    );
    let total: usize = layers.iter().map(Vec::len).sum();
    registry.push("bench/img:1", &layers, "amd64");
    let reference = registry.reference("bench/img:1");
    println!(
        "image pull, {} layers, {} MiB uncompressed, local registry:",
        layers.len(),
        total >> 20
    );

    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let status = Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("dir:{}", dir.path().join("skopeo").display()))
        .status()
        .unwrap();
    let baseline = start.elapsed();
    assert!(status.success(), "skopeo copy failed");

    let mut engine = engine(&dir.path().join("cocoon"));
    let start = Instant::now();
    let outcome = engine.pull_image(&reference, &NoProgress).unwrap();
    let ours = start.elapsed();
    assert_eq!(outcome.fetched_layers, layers.len());

    let start = Instant::now();
    let again = engine.pull_image(&reference, &NoProgress).unwrap();
    let cached = start.elapsed();
    assert!(again.up_to_date);

    println!(
        "  cold pull            baseline (skopeo copy, download only) {:>7.2} s   ours (download + EROFS) {:>7.2} s   ratio ours/baseline {:>5.2}",
        secs(baseline),
        secs(ours),
        secs(ours) / secs(baseline)
    );
    println!(
        "  cached re-pull       baseline (skopeo copy)                {:>7.2} s   ours                    {:>7.2} s   ratio ours/baseline {:>5.3}",
        secs(baseline),
        secs(cached),
        secs(cached) / secs(baseline)
    );
}
