//! Hostile input, bounded: a registry that stalls (before the manifest, or
//! mid-blob), a 5 MiB manifest, blobs longer and shorter than their
//! descriptors, cut off midway or with content that does not match their
//! digest (streamed into the unpacker: refused all the same, nothing
//! committed), a layer whose gzip stream breaks midway, a gzip bomb layer (pulled, and imported with `image
//! import`), and `image import`s of a layer and of a cloud image (a file,
//! and standard input) that run out of space. Each runs the real CLI and asserts the exact error, that a
//! sentinel tree beside `root_dir` is unchanged, that no work directory or
//! partial blob is left, and that the layer lock is free: pulling the same
//! layer again, served honestly, succeeds promptly.
//!
//! The fake registry is a few lines of raw HTTP/1.1 over a `TcpListener`,
//! so that it can stop mid-response, lie about lengths and never answer.

mod hostile_support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cocoon_testkit::CocoonEnv;
use cocoon_testkit::registry::layers::LayerBuilder;
use hostile_support::{assert_success, assert_unchanged, plant, snapshot};
use sha2::Digest as _;

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// Accepts, reads the manifest request, never answers.
    Hang,
    /// A 5 MiB manifest.
    BigManifest,
    /// Sends half of each blob, then nothing.
    Stall,
    /// Each blob with 100 bytes more, chunked (no length announced).
    Long,
    /// Each blob 100 bytes short, with that length announced.
    Short,
    /// Each blob's full length announced, half of it sent, then the
    /// connection closed: the unpacker is mid-file when it stops.
    Cut,
    /// Each blob with one byte of its content changed ([`tamper`]): a tar
    /// the unpacker takes whole, whose digest does not match.
    Tampered,
    Honest,
}

struct Image {
    manifest: Vec<u8>,
    blobs: HashMap<String, Vec<u8>>,
}

#[derive(Clone)]
struct Fake {
    images: Arc<HashMap<String, Image>>,
    behaviour: Arc<Mutex<Behaviour>>,
}

fn sha256(data: &[u8]) -> String {
    let hex: String = sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

fn image(layers: Vec<(Vec<u8>, &str)>) -> Image {
    let config = b"{}".to_vec();
    let mut blobs = HashMap::new();
    blobs.insert(sha256(&config), config.clone());
    let descriptors: Vec<_> = layers
        .iter()
        .map(|(data, media_type)| {
            serde_json::json!({
                "mediaType": media_type,
                "digest": sha256(data),
                "size": data.len(),
            })
        })
        .collect();
    for (data, _) in layers {
        blobs.insert(sha256(&data), data);
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(&config),
            "size": config.len(),
        },
        "layers": descriptors,
    }))
    .unwrap();
    Image { manifest, blobs }
}

/// A VM layer of about 1 MiB, different for each `tag`.
fn vm_layer(tag: &str) -> Vec<u8> {
    let mut kernel = format!("kernel {tag}\n").into_bytes();
    let mut state = 0x9e3779b97f4a7c15u64 ^ tag.len() as u64;
    while kernel.len() < 1 << 20 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        // The state's low byte: the truncation is the point.
        #[allow(clippy::cast_possible_truncation)]
        let low = state as u8;
        kernel.push(low);
    }
    LayerBuilder::new()
        .file("boot/vmlinuz-6.1", &kernel)
        .file("boot/initrd.img-6.1", tag.as_bytes())
        .build()
}

/// Appends xorshift64 words (little-endian) from `seed` until `data` holds
/// at least `len` bytes.
fn xorshift_fill(data: &mut Vec<u8>, seed: u64, len: usize) {
    let mut state = seed;
    while data.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
}

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const TAR_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// 64 MiB of zeros in one file, gzipped: about 64 KiB.
fn gzip_bomb() -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(64 << 20);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, "zeros", std::io::repeat(0).take(64 << 20))
        .unwrap();
    let tar = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

/// `blob` with one byte of its first file's content flipped: the same
/// length, still a well-formed tar.
fn tamper(blob: &[u8]) -> Vec<u8> {
    let mut out = blob.to_vec();
    out[512 + 1000] ^= 0xff;
    out
}

/// A gzip layer whose stream breaks midway, served with its true digest: a
/// first gzip member holding the start of a tar (mid-way through a 1 MiB
/// file), then a member whose deflate data uses the reserved block type,
/// then 2 MiB that no decoder reaches.
fn broken_gzip_layer() -> Vec<u8> {
    let mut content = Vec::new();
    xorshift_fill(&mut content, 0x5eed, 1 << 20);
    let tar = LayerBuilder::new()
        .file("usr/lib/big.bin", &content)
        .build();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar[..512 << 10]).unwrap();
    let mut blob = gz.finish().unwrap();
    // A member header (no flags, mtime 0, OS unknown), then BFINAL=1, BTYPE=11.
    blob.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff, 0x07]);
    blob.resize(blob.len() + (2 << 20), 0);
    blob
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

fn not_found(stream: &mut TcpStream) {
    respond(
        stream,
        "404 Not Found",
        &[("Content-Length", "0".into())],
        b"",
    );
}

fn hang() {
    std::thread::sleep(Duration::from_secs(600));
}

fn handle(fake: &Fake, mut stream: TcpStream) {
    let mut request = Vec::new();
    let mut byte = [0u8; 1];
    while !request.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => request.push(byte[0]),
            _ => return,
        }
    }
    let request = String::from_utf8_lossy(&request).into_owned();
    let path = request.split(' ').nth(1).unwrap_or("").to_string();
    let behaviour = *fake.behaviour.lock().unwrap();
    if path == "/v2/" {
        return respond(
            &mut stream,
            "200 OK",
            &[("Content-Length", "2".into())],
            b"{}",
        );
    }
    let parts: Vec<&str> = path.trim_start_matches("/v2/").split('/').collect();
    let [repo, kind, name] = parts[..] else {
        return not_found(&mut stream);
    };
    let Some(image) = fake.images.get(repo) else {
        return not_found(&mut stream);
    };
    match kind {
        "manifests" => {
            let body = match behaviour {
                Behaviour::Hang => return hang(),
                Behaviour::BigManifest => {
                    let mut body = image.manifest.clone();
                    body.resize(5 << 20, b' ');
                    body
                }
                _ => image.manifest.clone(),
            };
            respond(
                &mut stream,
                "200 OK",
                &[
                    ("Content-Type", MANIFEST_TYPE.into()),
                    ("Docker-Content-Digest", sha256(&body)),
                    ("Content-Length", body.len().to_string()),
                ],
                &body,
            );
        }
        "blobs" => {
            let Some(blob) = image.blobs.get(name) else {
                return not_found(&mut stream);
            };
            let is_config = blob.len() < 100;
            match behaviour {
                Behaviour::Stall if !is_config => {
                    respond(
                        &mut stream,
                        "200 OK",
                        &[("Content-Length", blob.len().to_string())],
                        &blob[..blob.len() / 2],
                    );
                    let _ = stream.flush();
                    hang();
                }
                Behaviour::Long if !is_config => {
                    let mut body = blob.clone();
                    body.extend_from_slice(&[0u8; 100]);
                    let mut chunked = Vec::new();
                    for chunk in body.chunks(64 << 10) {
                        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                        chunked.extend_from_slice(chunk);
                        chunked.extend_from_slice(b"\r\n");
                    }
                    chunked.extend_from_slice(b"0\r\n\r\n");
                    respond(
                        &mut stream,
                        "200 OK",
                        &[("Transfer-Encoding", "chunked".into())],
                        &chunked,
                    );
                }
                Behaviour::Cut if !is_config => {
                    respond(
                        &mut stream,
                        "200 OK",
                        &[("Content-Length", blob.len().to_string())],
                        &blob[..blob.len() / 2],
                    );
                }
                Behaviour::Tampered if !is_config => respond(
                    &mut stream,
                    "200 OK",
                    &[("Content-Length", blob.len().to_string())],
                    &tamper(blob),
                ),
                Behaviour::Short if !is_config => {
                    let body = &blob[..blob.len() - 100];
                    respond(
                        &mut stream,
                        "200 OK",
                        &[("Content-Length", body.len().to_string())],
                        body,
                    );
                }
                _ => respond(
                    &mut stream,
                    "200 OK",
                    &[("Content-Length", blob.len().to_string())],
                    blob,
                ),
            }
        }
        _ => not_found(&mut stream),
    }
}

/// Serves `evil` (one VM layer), `good` (another), `broken` (a gzip layer
/// that breaks midway) and `bomb` (a VM layer and a gzip bomb) on 127.0.0.1; returns the port and the behaviour switch.
fn serve(behaviour: Behaviour) -> (u16, Arc<Mutex<Behaviour>>, String) {
    let evil_layer = vm_layer("evil");
    let evil_digest = sha256(&evil_layer);
    let mut images = HashMap::new();
    images.insert("evil".to_string(), image(vec![(evil_layer, TAR)]));
    images.insert("good".to_string(), image(vec![(vm_layer("good!"), TAR)]));
    images.insert(
        "broken".to_string(),
        image(vec![(broken_gzip_layer(), TAR_GZ)]),
    );
    images.insert(
        "bomb".to_string(),
        image(vec![(vm_layer("bomb"), TAR), (gzip_bomb(), TAR_GZ)]),
    );
    let fake = Fake {
        images: Arc::new(images),
        behaviour: Arc::new(Mutex::new(behaviour)),
    };
    let switch = fake.behaviour.clone();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let fake = fake.clone();
            std::thread::spawn(move || handle(&fake, stream));
        }
    });
    (port, switch, evil_digest)
}

/// A fresh environment with a sentinel tree beside `root_dir`.
struct Setup {
    env: CocoonEnv,
    beside: PathBuf,
    skip: Vec<PathBuf>,
    before: std::collections::BTreeMap<PathBuf, hostile_support::Seen>,
}

fn setup() -> Setup {
    let env = CocoonEnv::new(cocoon_testkit::cocoon_bin());
    let beside = env.path().to_path_buf();
    plant(&beside);
    let skip = vec![env.root_dir(), env.log_dir()];
    let before = snapshot(&beside, &skip);
    Setup {
        env,
        beside,
        skip,
        before,
    }
}

impl Setup {
    /// Runs `cocoon image pull` with a 2 s read timeout; returns success,
    /// stderr and how long it took.
    fn pull(&self, reference: &str, extra_env: &[(&str, &str)]) -> (bool, String, Duration) {
        let started = Instant::now();
        let mut cmd = self.env.cmd();
        cmd.env("COCOON_REGISTRY_READ_TIMEOUT_SECONDS", "2")
            .env("COCOON_REGISTRY_CONNECT_TIMEOUT_SECONDS", "2")
            .args(["image", "pull", reference])
            .timeout(Duration::from_secs(120));
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            started.elapsed(),
        )
    }

    /// Nothing outside the engine's directories changed.
    fn assert_beside_unchanged(&self) {
        let after = snapshot(&self.beside, &self.skip);
        assert_unchanged(&self.before, &after);
    }

    /// Nothing outside the engine's directories changed, and nothing of a
    /// failed layer is left inside them.
    fn assert_clean(&self) {
        self.assert_beside_unchanged();
        for sub in ["images/tmp", "images/blobs"] {
            let left: Vec<_> = std::fs::read_dir(self.env.root_dir().join(sub))
                .map(|d| d.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default();
            assert!(left.is_empty(), "{sub}: left behind: {left:?}");
        }
    }

    /// The same reference, served honestly now, pulls promptly: the layer
    /// lock was released and nothing stale is in the way.
    fn assert_pull_succeeds(&self, switch: &Mutex<Behaviour>, reference: &str) {
        *switch.lock().unwrap() = Behaviour::Honest;
        let (ok, stderr, took) = self.pull(reference, &[]);
        assert!(ok, "{stderr}");
        assert!(took < Duration::from_secs(20), "took {took:?}");
    }
}

/// Pulls `evil` from a registry behaving as `behaviour`: the pull fails with
/// `cannot pull <reference>: <what(layer digest)>`, within `within` where
/// given; nothing is left, and the same pull, served honestly, then succeeds.
fn assert_pull_refused(
    behaviour: Behaviour,
    within: Option<Duration>,
    what: impl FnOnce(&str) -> String,
) {
    let s = setup();
    let (port, switch, digest) = serve(behaviour);
    let reference = format!("127.0.0.1:{port}/evil:latest");
    let (ok, stderr, took) = s.pull(&reference, &[]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!("cannot pull {reference}: {}", what(&digest))),
        "{stderr}"
    );
    if let Some(within) = within {
        assert!(took < within, "took {took:?}");
    }
    s.assert_clean();
    s.assert_pull_succeeds(&switch, &reference);
}

#[test]
fn a_registry_that_never_answers_the_manifest_fails_within_the_timeout() {
    assert_pull_refused(Behaviour::Hang, Some(Duration::from_secs(10)), |_| {
        "the registry sent nothing for 2 s while fetching the manifest (registry_read_timeout_seconds)".into()
    });
}

#[test]
fn a_blob_that_stalls_midway_fails_within_the_timeout_and_frees_its_lock() {
    assert_pull_refused(Behaviour::Stall, Some(Duration::from_secs(10)), |digest| {
        format!(
            "the registry sent nothing for 2 s while downloading layer {digest} (registry_read_timeout_seconds)"
        )
    });
}

#[test]
fn a_manifest_over_4_mib_is_refused() {
    assert_pull_refused(Behaviour::BigManifest, None, |_| {
        "the manifest is larger than 4.0 MiB (refused)".into()
    });
}

#[test]
fn a_blob_longer_than_its_descriptor_is_refused() {
    let size = vm_layer("evil").len();
    assert_pull_refused(Behaviour::Long, None, |digest| {
        format!(
            "layer {digest}: the registry sent more than {size} bytes, its descriptor says {size}"
        )
    });
}

#[test]
fn a_blob_shorter_than_its_descriptor_is_refused() {
    let size = vm_layer("evil").len();
    assert_pull_refused(Behaviour::Short, None, |digest| {
        format!(
            "layer {digest}: the registry sent {} bytes, its descriptor says {size}",
            size - 100
        )
    });
}

#[test]
fn a_blob_cut_off_midway_through_a_file_is_refused() {
    let size = vm_layer("evil").len();
    assert_pull_refused(Behaviour::Cut, None, |digest| {
        format!(
            "layer {digest}: the registry sent {} bytes, its descriptor says {size}",
            size / 2
        )
    });
}

/// Every byte arrives and unpacks, but the digest is checked before the
/// layer is committed: nothing of it is stored, no work directory is left.
#[test]
fn a_blob_whose_content_does_not_match_its_digest_is_refused() {
    let actual = sha256(&tamper(&vm_layer("evil")));
    assert_pull_refused(Behaviour::Tampered, None, |digest| {
        format!(
            "layer {digest}: the registry sent content whose digest is {actual} (refused, nothing stored)"
        )
    });
}

/// A gzip stream that breaks midway fails the pull with the decoder's
/// error. Served with a stall after its first half, the error is still the
/// decoder's, not the stall's: the failed unpacker stops the download.
#[test]
fn a_layer_whose_gzip_stream_breaks_midway_is_refused() {
    let digest = sha256(&broken_gzip_layer());
    for behaviour in [Behaviour::Honest, Behaviour::Stall] {
        let s = setup();
        let (port, _switch, _) = serve(behaviour);
        let reference = format!("127.0.0.1:{port}/broken:latest");
        let (ok, stderr, _) = s.pull(&reference, &[]);
        assert!(!ok);
        assert!(
            stderr.contains(&format!(
                "layer {digest} of {reference}: corrupt layer archive: corrupt deflate stream"
            )),
            "{behaviour:?}: {stderr}"
        );
        s.assert_clean();
    }
}

#[test]
fn a_gzip_bomb_layer_stops_at_max_layer_bytes() {
    let s = setup();
    let (port, _switch, _) = serve(Behaviour::Honest);
    let reference = format!("127.0.0.1:{port}/bomb:latest");
    let bomb = sha256(&gzip_bomb());
    let started = Instant::now();
    let (ok, stderr, _) = s.pull(&reference, &[("COCOON_MAX_LAYER_BYTES", "16777216")]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!(
            "cannot pull {reference}: layer {bomb} is larger than 16.0 MiB uncompressed (max_layer_bytes = 16777216)"
        )),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    // The bomb's work area is gone; the honest layer beside it may stay
    // (complete, content-addressed), nothing else.
    s.assert_beside_unchanged();
    let tmp = entries(&s.env.root_dir().join("images/tmp"));
    assert!(tmp.is_empty(), "{tmp:?}");
    let bomb_hex = bomb.trim_start_matches("sha256:");
    assert!(
        !s.env
            .root_dir()
            .join(format!("images/blobs/{bomb_hex}.erofs"))
            .exists()
    );
    // Under the default limit, another image pulls.
    let (ok, stderr, _) = s.pull(&format!("127.0.0.1:{port}/good:latest"), &[]);
    assert!(ok, "{stderr}");
}

/// Runs `script` under `sh` with `root_dir` on a 6 MiB tmpfs in a private
/// mount namespace (`unshare -m`, so nothing is mounted for anyone else):
/// `$BIG` and `$SMALL` are `big` and `small` (name and bytes) written outside
/// it, `$COCOON` the CLI and `$ROOT` `root_dir`. `check` gets stdout, stderr,
/// `root_dir` and `$BIG`; then the script's last step, `image import small`,
/// succeeded, nothing beside `root_dir` changed, and the directory under
/// the tmpfs was never written. Skips, naming `test`, where no tmpfs can be
/// mounted.
fn import_on_a_small_tmpfs(
    test: &str,
    big: (&str, Vec<u8>),
    small: (&str, Vec<u8>),
    script: &str,
    check: impl FnOnce(&str, &str, &Path, &Path),
) {
    let s = setup();
    let root = s.env.root_dir();
    std::fs::create_dir(&root).unwrap();
    let sources = tempfile::tempdir().unwrap();
    let big_path = sources.path().join(big.0);
    std::fs::write(&big_path, big.1).unwrap();
    let small_path = sources.path().join(small.0);
    std::fs::write(&small_path, small.1).unwrap();
    let script = format!(
        "mount -t tmpfs -o size=6m,mode=0700 cocoon-test \"$ROOT\" || exit 99\n{script}\n\"$COCOON\" image import small \"$SMALL\"; echo \"small=$?\"\n"
    );
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", &script]);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("COCOON_") {
            cmd.env_remove(key);
        }
    }
    let out = cmd
        .env("ROOT", &root)
        .env("BIG", &big_path)
        .env("SMALL", &small_path)
        .env("COCOON", cocoon_testkit::cocoon_bin())
        .env("COCOON_ROOT_DIR", &root)
        .env("COCOON_LOG_DIR", s.env.log_dir())
        .env("COCOON_CNI_CONF_DIR", s.env.path().join("cni"))
        .env("COCOON_CONFIG", s.env.config_path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(99) || stdout.is_empty() {
        return cocoon_testkit::skip(
            test,
            &format!("cannot mount a tmpfs in a private mount namespace: {stderr}"),
        );
    }
    check(&stdout, &stderr, &root, &big_path);
    assert!(stdout.contains("small=0\n"), "{stdout}\n{stderr}");
    // The tmpfs went with the namespace; the directory under it was never written.
    s.assert_beside_unchanged();
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
}

/// `image import` in a root on a 6 MiB tmpfs (a private mount namespace, so
/// nothing is mounted for anyone else) of a 16 MiB layer: refused once the
/// unpacked part leaves no room for its EROFS copy, nothing left; a small
/// import afterwards succeeds.
#[test]
fn image_import_without_enough_free_space_is_refused() {
    let mut data = Vec::with_capacity(16 << 20);
    xorshift_fill(&mut data, 0x2545f4914f6cdd1d, 16 << 20);
    let big = LayerBuilder::new()
        .file("boot/vmlinuz-6.1", &data)
        .file("boot/initrd.img-6.1", b"i")
        .build();
    let script = r#"
        "$COCOON" image import big "$BIG"; echo "big=$?"
        echo "tmp=$(ls -A "$ROOT/images/tmp")"
        echo "blobs=$(ls -A "$ROOT/images/blobs")"
    "#;
    import_on_a_small_tmpfs(
        "image_import_without_enough_free_space_is_refused",
        ("big.tar", big),
        ("small.tar", vm_layer("small")),
        script,
        |stdout, stderr, root, big| {
            assert!(stdout.contains("big=1\n"), "{stdout}\n{stderr}");
            let expected = format!(
                "not enough free space in {}: importing {} (",
                root.join("images").display(),
                big.display()
            );
            assert!(stderr.contains(&expected), "{stderr}");
            assert!(
                stderr.contains(" unpacked so far) needs ")
                    && stderr.contains(" free (free some space or move root_dir)"),
                "{stderr}"
            );
            assert!(
                stdout.contains("tmp=\n") && stdout.contains("blobs=\n"),
                "{stdout}"
            );
        },
    );
}

/// Runs `cocoon image list` with `root_dir` prepared by `plant_root`;
/// returns success and stderr. The sentinel tree beside it is unchanged.
fn with_root(plant_root: impl FnOnce(&Path)) -> (bool, String, CocoonEnv) {
    let s = setup();
    let root = s.env.root_dir();
    plant_root(&root);
    let out = s.env.cmd().args(["image", "list"]).output().unwrap();
    s.assert_beside_unchanged();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        s.env,
    )
}

fn entries(dir: &Path) -> Vec<std::ffi::OsString> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect()
}

/// [`with_root`]: the command fails with `refusing to use root_dir <root>:
/// <why(root)>` and writes nothing into `root_dir`.
fn root_dir_refused(
    plant_root: impl FnOnce(&Path),
    why: impl FnOnce(&std::path::Display<'_>) -> String,
) -> CocoonEnv {
    let (ok, stderr, env) = with_root(plant_root);
    let root = env.root_dir();
    let r = root.display();
    assert!(!ok);
    assert!(
        stderr.contains(&format!("refusing to use root_dir {r}: {}", why(&r))),
        "{stderr}"
    );
    assert!(entries(&root).is_empty(), "{:?}", entries(&root));
    env
}

#[test]
fn a_root_dir_owned_by_another_user_is_refused() {
    root_dir_refused(
        |root| {
            std::fs::create_dir(root).unwrap();
            std::os::unix::fs::chown(root, Some(65534), Some(65534)).unwrap();
        },
        |r| {
            format!(
                "it is owned by uid 65534, not by this user (uid 0), so another user could have planted files in it; if {r} is really cocoon's, `chown 0 {r}`; otherwise set root_dir (--root-dir or COCOON_ROOT_DIR) to another directory"
            )
        },
    );
}

#[test]
fn a_world_or_group_writable_root_dir_is_refused_sticky_or_not() {
    use std::os::unix::fs::PermissionsExt;
    let env = root_dir_refused(
        |root| {
            std::fs::create_dir(root).unwrap();
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o777)).unwrap();
        },
        |r| {
            format!(
                "it is writable by other users (mode 0777), so anyone could plant files in it; `chmod go-w {r}` if it is cocoon's own directory; otherwise set root_dir (--root-dir or COCOON_ROOT_DIR) to another directory"
            )
        },
    );
    let root = env.root_dir();

    // Group-writable and sticky world-writable are refused the same way; the
    // owner's own 0750 is accepted.
    for mode in [0o770, 0o1777] {
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = env.cmd().args(["image", "list"]).output().unwrap();
        assert!(!out.status.success(), "mode {mode:o} accepted");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&format!(
                "(mode {mode:04o}), so anyone could plant files in it"
            )),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o750)).unwrap();
    let out = env.cmd().args(["image", "list"]).output().unwrap();
    assert_success(&out);
}

#[test]
fn a_symlinked_or_planted_log_dir_is_refused() {
    let (ok, stderr, env) = with_root(|root| {
        // The target is log_dir, which the sentinel comparison skips.
        let real = root.with_file_name("log");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, root).unwrap();
    });
    let r = env.root_dir();
    assert!(!ok);
    assert!(
        stderr.contains(&format!(
            "refusing to use root_dir {}: it is a symbolic link; set root_dir to the directory it points to, or set root_dir (--root-dir or COCOON_ROOT_DIR) to another directory",
            r.display()
        )),
        "{stderr}"
    );
    assert!(entries(&r.with_file_name("log")).is_empty());

    // An existing log_dir owned by someone else.
    let env = CocoonEnv::new(cocoon_testkit::cocoon_bin());
    let log = env.log_dir();
    std::fs::create_dir(&log).unwrap();
    std::os::unix::fs::chown(&log, Some(65534), None).unwrap();
    let out = env.cmd().args(["image", "list"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "refusing to use log_dir {}: it is owned by uid 65534",
            log.display()
        )),
        "{stderr}"
    );
    assert!(entries(&log).is_empty());
}

/// Missing parents are created (0750, ours) and the command works.
#[test]
fn a_missing_root_dir_is_created_with_its_parents() {
    use std::os::unix::fs::MetadataExt;
    let env = CocoonEnv::new(cocoon_testkit::cocoon_bin());
    let root = env.path().join("a/b/root");
    let out = env
        .cmd()
        .env("COCOON_ROOT_DIR", &root)
        .args(["image", "list"])
        .output()
        .unwrap();
    assert_success(&out);
    for dir in [env.path().join("a"), env.path().join("a/b"), root] {
        let meta = std::fs::metadata(&dir).unwrap();
        assert_eq!(
            meta.mode() & 0o7777 & !0o022,
            meta.mode() & 0o7777,
            "{}",
            dir.display()
        );
        assert_eq!(meta.uid(), 0);
    }
}

/// `image import` of a local gzip bomb: the layer's decompressed stream
/// stops at `max_layer_bytes`, as a pulled layer's does; nothing is left in
/// `images/`, and an import under the limit succeeds.
#[test]
fn image_import_of_a_layer_stops_at_max_layer_bytes() {
    let s = setup();
    let sources = tempfile::tempdir().unwrap();
    let bomb = sources.path().join("bomb.tar.gz");
    std::fs::write(&bomb, gzip_bomb()).unwrap();
    let started = Instant::now();
    let out = s
        .env
        .cmd()
        .env("COCOON_MAX_LAYER_BYTES", "16777216")
        .args(["image", "import", "bomb", bomb.to_str().unwrap()])
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "layer {} is larger than 16.0 MiB uncompressed (max_layer_bytes = 16777216)",
            bomb.display()
        )),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    s.assert_beside_unchanged();
    let images = s.env.root_dir().join("images");
    assert!(entries(&images.join("tmp")).is_empty());
    assert!(entries(&images.join("blobs")).is_empty());
    let list = s
        .env
        .cmd()
        .args(["image", "list", "-o", "json"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "[]");
    // Under the limit, a layer imports.
    let small = sources.path().join("small.tar");
    std::fs::write(&small, vm_layer("small")).unwrap();
    let out = s
        .env
        .cmd()
        .env("COCOON_MAX_LAYER_BYTES", "16777216")
        .args(["image", "import", "small", small.to_str().unwrap()])
        .output()
        .unwrap();
    assert_success(&out);
}

/// A raw disk image of `len` random (incompressible, hole-free) bytes with
/// an MBR signature, so that `image import` takes it for a cloud image.
fn raw_disk(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; 512];
    data[510..512].copy_from_slice(&[0x55, 0xaa]);
    xorshift_fill(&mut data, 0x9e3779b97f4a7c15, len);
    data.truncate(len);
    data
}

/// Cloud-image imports in a root on a 6 MiB tmpfs (a private mount
/// namespace): a 16 MiB raw disk file is refused before anything is copied
/// (the source's size against free space); the same bytes on standard input
/// (size unknown) are refused as the copy crosses the first 4 MiB step. Both
/// leave nothing in `images/`; a 1 MiB disk then imports.
#[test]
fn cloud_image_import_without_enough_free_space_is_refused() {
    let script = r#"
        "$COCOON" image import big "$BIG"; echo "file=$?"
        echo "tmp1=$(ls -A "$ROOT/images/tmp")"
        "$COCOON" image import big - < "$BIG"; echo "stdin=$?"
        echo "tmp2=$(ls -A "$ROOT/images/tmp")"
        echo "blobs=$(ls -A "$ROOT/images/blobs")"
    "#;
    import_on_a_small_tmpfs(
        "cloud_image_import_without_enough_free_space_is_refused",
        ("big.raw", raw_disk(16 << 20)),
        ("small.raw", raw_disk(1 << 20)),
        script,
        |stdout, stderr, root, big| {
            let images = root.join("images");
            assert!(stdout.contains("file=1\n"), "{stdout}\n{stderr}");
            let before_copy = format!(
                "not enough free space in {}: importing {} needs 16.0 MiB, ",
                images.display(),
                big.display()
            );
            assert!(stderr.contains(&before_copy), "{stderr}");
            assert!(stdout.contains("stdin=1\n"), "{stdout}\n{stderr}");
            let while_copying = format!(
                "not enough free space in {}: importing standard input (4.0 MiB copied so far) needs 4.0 MiB, ",
                images.display()
            );
            assert!(stderr.contains(&while_copying), "{stderr}");
            assert_eq!(
                stderr
                    .matches(" free (free some space or move root_dir)")
                    .count(),
                2,
                "{stderr}"
            );
            assert!(
                stdout.contains("tmp1=\n")
                    && stdout.contains("tmp2=\n")
                    && stdout.contains("blobs=\n"),
                "{stdout}"
            );
        },
    );
}
