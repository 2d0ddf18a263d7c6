//! Cloud images through the real binary: `image pull URL` against a local
//! HTTP server (resume, refusals, normalisation with the real qemu-img) and
//! `image import` of disk images from files, stdin, gzip and split parts.

#[path = "cloud_image/http.rs"]
mod http;
#[path = "cloud_image/parallel.rs"]
mod parallel;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cocoon_testkit::{CocoonEnv, skip};
use http::{Resource, Server};
use sha2::{Digest, Sha256};

fn bin() -> String {
    cocoon_testkit::cocoon_bin()
}

/// A private cocoon root, or None (with a loud skip) when this machine lacks
/// the binary or qemu-img.
fn ready(test: &str) -> Option<CocoonEnv> {
    if Command::new("qemu-img").arg("--version").output().is_err() {
        skip(
            test,
            "qemu-img is not installed (apt-get install qemu-utils)",
        );
        return None;
    }
    Some(CocoonEnv::new(bin()))
}

fn cocoon(env: &CocoonEnv) -> assert_cmd::Command {
    let mut cmd = env.cmd();
    for proxy in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        cmd.env_remove(proxy);
    }
    cmd
}

fn run(env: &CocoonEnv, args: &[&str]) -> Output {
    cocoon(env).args(args).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn succeeded(out: &Output) -> String {
    assert!(out.status.success(), "{}", stderr(out));
    stderr(out)
}

/// The last line of stderr (the `Error: ...` line of a failed command).
fn error_line(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{}", stderr(out));
    stderr(out)
        .trim()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

fn images(env: &CocoonEnv) -> serde_json::Value {
    let out = run(env, &["image", "ls", "-o", "json"]);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn blob(env: &CocoonEnv, hex: &str) -> PathBuf {
    env.root_dir().join(format!("images/blobs/{hex}.qcow2"))
}

fn blobs(env: &CocoonEnv) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(env.root_dir().join("images/blobs"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn tmp_entries(env: &CocoonEnv) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(env.root_dir().join("images/tmp"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn partial(env: &CocoonEnv) -> PathBuf {
    let name = tmp_entries(env)
        .into_iter()
        .find(|n| n.ends_with(".partial"))
        .expect("a kept partial download");
    env.root_dir().join("images/tmp").join(name)
}

fn qemu_info(path: &Path) -> serde_json::Value {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn assert_qcow2_v3(path: &Path) {
    let info = qemu_info(path);
    assert_eq!(info["format"], "qcow2", "{info}");
    assert_eq!(info["format-specific"]["data"]["compat"], "1.1", "{info}");
    assert!(info.get("backing-filename").is_none(), "{info}");
}

/// Same guest-visible content (qemu-img compare exits 0).
fn assert_same_disk(a: &Path, a_format: &str, b: &Path) {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", a_format, "-F", "qcow2"])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A raw disk: an MBR boot signature, `data` pseudo-random bytes, then zeros.
fn raw_disk(seed: u64, data: usize, size: usize) -> Vec<u8> {
    let mut disk = vec![0u8; size];
    let mut x = seed | 1;
    for byte in disk[512..512 + data].iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // The state's low byte: the truncation is the point.
        #[allow(clippy::cast_possible_truncation)]
        let low = x as u8;
        *byte = low;
    }
    disk[..3].copy_from_slice(b"\xeb\x63\x90");
    disk[510] = 0x55;
    disk[511] = 0xaa;
    disk
}

/// `raw` converted by qemu-img to qcow2 with `compat` (0.10 = v2, 1.1 = v3).
fn qcow2(dir: &Path, raw: &[u8], compat: &str) -> Vec<u8> {
    let src = dir.join(format!("src-{compat}.raw"));
    let dst = dir.join(format!("out-{compat}.qcow2"));
    std::fs::write(&src, raw).unwrap();
    let out = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2", "-o"])
        .arg(format!("compat={compat}"))
        .arg(&src)
        .arg(&dst)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&dst).unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn mtime(path: &Path) -> (i64, i64, u64) {
    let meta = std::fs::metadata(path).unwrap();
    (meta.mtime(), meta.mtime_nsec(), meta.ino())
}

#[test]
fn pulls_store_qcow2_v3_as_is_and_normalise_raw_and_v2_once() {
    let Some(env) = ready("pulls_store_qcow2_v3_as_is_and_normalise_raw_and_v2_once") else {
        return;
    };
    let raw = raw_disk(7, 1 << 20, 4 << 20);
    let v3 = qcow2(env.path(), &raw_disk(8, 1 << 20, 4 << 20), "1.1");
    let v2 = qcow2(env.path(), &raw_disk(9, 1 << 20, 4 << 20), "0.10");
    let server = Server::start();
    server.put("/v3.qcow2", Resource::file(v3.clone(), "v3"));
    server.put("/disk.raw", Resource::file(raw.clone(), "raw"));
    server.put("/v2.qcow2", Resource::file(v2.clone(), "v2"));
    server.put("/disk.raw.gz", Resource::file(gzip(&raw), "gz"));

    // qcow2 v3: stored byte for byte, read-only.
    let url = server.url("/v3.qcow2");
    let log = succeeded(&run(&env, &["image", "pull", &url]));
    assert!(log.contains("qcow2 v3, stored as is"), "{log}");
    let v3_blob = blob(&env, &sha(&v3));
    assert_eq!(std::fs::read(&v3_blob).unwrap(), v3);
    assert_eq!(
        std::fs::metadata(&v3_blob).unwrap().permissions().mode() & 0o777,
        0o444
    );

    // raw: converted to qcow2 v3, named by the digest of the downloaded bytes.
    let raw_url = server.url("/disk.raw");
    let log = succeeded(&run(&env, &["image", "pull", &raw_url]));
    assert!(log.contains("converted from raw to qcow2 v3"), "{log}");
    let raw_blob = blob(&env, &sha(&raw));
    assert_qcow2_v3(&raw_blob);
    std::fs::write(env.path().join("disk.raw"), &raw).unwrap();
    assert_same_disk(&env.path().join("disk.raw"), "raw", &raw_blob);

    // qcow2 v2: upgraded to v3, same content.
    let v2_url = server.url("/v2.qcow2");
    let log = succeeded(&run(&env, &["image", "pull", &v2_url]));
    assert!(log.contains("upgraded from qcow2 v2 to v3"), "{log}");
    let v2_blob = blob(&env, &sha(&v2));
    assert_qcow2_v3(&v2_blob);
    std::fs::write(env.path().join("v2.qcow2"), &v2).unwrap();
    assert_same_disk(&env.path().join("v2.qcow2"), "qcow2", &v2_blob);

    // gzip is undone: the digest is the image's, so the raw blob is reused.
    let gz_url = server.url("/disk.raw.gz");
    let log = succeeded(&run(&env, &["image", "pull", &gz_url]));
    assert!(log.contains("decompressing (gzip)"), "{log}");
    assert!(log.contains("already stored"), "{log}");
    assert!(!log.contains("converted"), "{log}");

    let list = images(&env);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 4);
    for (entry, (name, hex)) in list.iter().zip([
        (&url, sha(&v3)),
        (&raw_url, sha(&raw)),
        (&v2_url, sha(&v2)),
        (&gz_url, sha(&raw)),
    ]) {
        assert_eq!(entry["name"], name.as_str());
        assert_eq!(entry["type"], "cloudimg");
        assert_eq!(entry["id"], format!("sha256:{hex}"));
        assert_eq!(
            entry["size"],
            std::fs::metadata(blob(&env, &hex)).unwrap().len()
        );
        assert!(entry.get("layers").is_none(), "{entry}");
    }
    assert_eq!(blobs(&env).len(), 3);
    let out = run(&env, &["image", "inspect", &raw_url]);
    let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inspected["type"], "cloudimg");
    assert_eq!(tmp_entries(&env), Vec::<String>::new());

    // Re-pulls: no request at all, nothing rewritten.
    let before = [&v3_blob, &raw_blob, &v2_blob].map(|p| mtime(p));
    let requests = server.requests("/disk.raw").len();
    for u in [&url, &raw_url, &v2_url] {
        let log = succeeded(&run(&env, &["image", "pull", u]));
        assert!(log.contains(&format!("{u} is up to date")), "{log}");
    }
    assert_eq!(server.requests("/disk.raw").len(), requests);
    // --force downloads again, finds the content stored, converts nothing.
    let log = succeeded(&run(&env, &["image", "pull", "--force", &raw_url]));
    assert!(log.contains("already stored"), "{log}");
    assert!(!log.contains("qemu-img"), "{log}");
    assert_eq!(server.requests("/disk.raw").len(), requests + 1);
    assert_eq!([&v3_blob, &raw_blob, &v2_blob].map(|p| mtime(p)), before);
    assert_eq!(images(&env).as_array().unwrap().len(), 4);
    assert_eq!(tmp_entries(&env), Vec::<String>::new());
}

#[test]
fn an_interrupted_pull_keeps_its_bytes_and_the_next_one_resumes_with_range() {
    let Some(env) =
        ready("an_interrupted_pull_keeps_its_bytes_and_the_next_one_resumes_with_range")
    else {
        return;
    };
    let image = qcow2(env.path(), &raw_disk(11, 3 << 20, 4 << 20), "1.1");
    let server = Server::start();
    server.put(
        "/big.qcow2",
        Resource {
            drop_after: 1 << 20,
            drops: 1,
            ..Resource::file(image.clone(), "big-1")
        },
    );
    let url = server.url("/big.qcow2");

    let out = run(&env, &["image", "pull", &url]);
    assert_eq!(
        error_line(&out),
        format!(
            "Error: the download of {url} broke off after 1048576 bytes of {}: end of file before message length reached; the bytes so far are kept: run the same command again to resume",
            image.len()
        )
    );
    assert_eq!(std::fs::read(partial(&env)).unwrap(), image[..1 << 20]);
    assert_eq!(images(&env), serde_json::json!([]));
    assert_eq!(blobs(&env), Vec::<String>::new());

    let log = succeeded(&run(&env, &["image", "pull", &url]));
    assert!(
        log.contains(&format!("resuming the download of {url} at 1.049MB")),
        "{log}"
    );
    assert!(log.contains("resumed at 1.049MB"), "{log}");
    let requests = server.requests("/big.qcow2");
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].range, None);
    assert_eq!(requests[1].range.as_deref(), Some("bytes=1048576-"));
    assert_eq!(requests[1].if_range.as_deref(), Some("\"big-1\""));
    assert_eq!(requests[1].status, 206);
    // The digest covers the whole file, not just the resumed tail.
    assert_eq!(images(&env)[0]["id"], format!("sha256:{}", sha(&image)));
    assert_eq!(std::fs::read(blob(&env, &sha(&image))).unwrap(), image);
    assert_eq!(tmp_entries(&env), Vec::<String>::new());
}

#[test]
fn resuming_never_splices_a_changed_or_unresumable_file() {
    let Some(env) = ready("resuming_never_splices_a_changed_or_unresumable_file") else {
        return;
    };
    let old = qcow2(env.path(), &raw_disk(21, 3 << 20, 4 << 20), "1.1");
    let new = qcow2(env.path(), &raw_disk(22, 3 << 20, 4 << 20), "1.1");
    let server = Server::start();
    let cut = |body: &Vec<u8>, etag| Resource {
        drop_after: 1 << 20,
        drops: 1,
        ..Resource::file(body.clone(), etag)
    };

    // The file changed upstream between the attempts: If-Range fails, the
    // server sends the new file whole, and that is what gets stored.
    server.put("/changing.qcow2", cut(&old, "old"));
    let url = server.url("/changing.qcow2");
    assert_eq!(run(&env, &["image", "pull", &url]).status.code(), Some(1));
    server.put("/changing.qcow2", Resource::file(new.clone(), "new"));
    let log = succeeded(&run(&env, &["image", "pull", &url]));
    assert!(log.contains("starting over"), "{log}");
    let requests = server.requests("/changing.qcow2");
    assert_eq!(requests[1].if_range.as_deref(), Some("\"old\""));
    assert_eq!(requests[1].status, 200);
    assert_eq!(images(&env)[0]["id"], format!("sha256:{}", sha(&new)));
    assert_eq!(std::fs::read(blob(&env, &sha(&new))).unwrap(), new);

    // A server that ignores Range: the second pull asks, gets everything, restarts from 0.
    server.put(
        "/noranges.qcow2",
        Resource {
            ranges: false,
            ..cut(&old, "same")
        },
    );
    let url = server.url("/noranges.qcow2");
    assert_eq!(run(&env, &["image", "pull", &url]).status.code(), Some(1));
    let log = succeeded(&run(&env, &["image", "pull", &url]));
    assert!(log.contains("starting over"), "{log}");
    let requests = server.requests("/noranges.qcow2");
    assert_eq!(requests[1].range.as_deref(), Some("bytes=1048576-"));
    assert_eq!(requests[1].status, 200);
    assert_eq!(images(&env)[1]["id"], format!("sha256:{}", sha(&old)));
    assert_eq!(std::fs::read(blob(&env, &sha(&old))).unwrap(), old);

    // No validator at all: nothing can be resumed safely, so nothing is kept.
    server.put(
        "/novalidator.qcow2",
        Resource {
            etag: None,
            ..cut(&old, "unused")
        },
    );
    let url = server.url("/novalidator.qcow2");
    let out = run(&env, &["image", "pull", &url]);
    assert_eq!(
        error_line(&out),
        format!(
            "Error: the download of {url} broke off after 1048576 bytes of {}: end of file before message length reached; the server cannot resume it: run the same command again to start over",
            old.len()
        )
    );
    assert_eq!(tmp_entries(&env), Vec::<String>::new());
    succeeded(&run(&env, &["image", "pull", &url]));
    assert_eq!(server.requests("/novalidator.qcow2")[1].range, None);
    assert_eq!(tmp_entries(&env), Vec::<String>::new());
}

#[test]
fn a_complete_download_survives_a_missing_qemu_img() {
    let Some(env) = ready("a_complete_download_survives_a_missing_qemu_img") else {
        return;
    };
    let raw = raw_disk(31, 1 << 20, 2 << 20);
    let server = Server::start();
    server.put("/disk.raw", Resource::file(raw.clone(), "r"));
    let url = server.url("/disk.raw");
    let out = cocoon(&env)
        .env("PATH", "/nonexistent")
        .args(["image", "pull", &url])
        .output()
        .unwrap();
    assert_eq!(
        error_line(&out),
        "Error: cannot run qemu-img (No such file or directory (os error 2)); install qemu-utils"
    );
    assert_eq!(
        std::fs::read(partial(&env)).unwrap(),
        raw,
        "the download is kept"
    );
    assert_eq!(images(&env), serde_json::json!([]));

    // The next pull learns from a 416 that the kept file is complete.
    let log = succeeded(&run(&env, &["image", "pull", &url]));
    assert!(log.contains("converted from raw to qcow2 v3"), "{log}");
    let requests = server.requests("/disk.raw");
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].range, Some(format!("bytes={}-", raw.len())));
    assert_eq!(requests[1].status, 416);
    assert_eq!(images(&env)[0]["id"], format!("sha256:{}", sha(&raw)));
    assert_eq!(tmp_entries(&env), Vec::<String>::new());
}

#[test]
fn refused_pulls_say_why_and_leave_nothing() {
    let Some(env) = ready("refused_pulls_say_why_and_leave_nothing") else {
        return;
    };
    let server = Server::start();
    let page = b"<!DOCTYPE html>\n<html><body>Sign in</body></html>\n".to_vec();
    let mut zip = b"PK\x03\x04".to_vec();
    zip.resize(4096, 0);
    let text = b"just some text, long enough\n".repeat(100);
    let vmdk = {
        let path = env.path().join("x.vmdk");
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "vmdk"])
            .arg(&path)
            .arg("1M")
            .status()
            .unwrap();
        std::fs::read(path).unwrap()
    };
    let backed = {
        let base = env.path().join("base.qcow2");
        std::fs::write(&base, qcow2(env.path(), &raw_disk(1, 4096, 1 << 20), "1.1")).unwrap();
        let overlay = env.path().join("overlay.qcow2");
        let out = Command::new("qemu-img")
            .args([
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                "-b",
                "base.qcow2",
            ])
            .arg(&overlay)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read(overlay).unwrap()
    };
    let raw = raw_disk(2, 4096, 1 << 20);
    for (path, body) in [
        ("/page.html", page.clone()),
        ("/page.html.gz", gzip(&page)),
        ("/image.zip", zip),
        ("/notes.txt", text),
        ("/disk.vmdk", vmdk),
        ("/overlay.qcow2", backed),
        ("/twice.gz", gzip(&gzip(&raw))),
        ("/empty.img", Vec::new()),
    ] {
        server.put(path, Resource::file(body, "e"));
    }
    server.put(
        "/huge.img",
        Resource {
            claimed_len: Some((20 << 30) + 1),
            ..Resource::file(raw.clone(), "huge")
        },
    );
    server.put(
        "/broken.img",
        Resource {
            status: Some(500),
            ..Resource::default()
        },
    );
    let dead_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let u = |p: &str| server.url(p);
    let cases = [
        (u("/page.html"), format!("Error: {} returned an HTML page, not a disk image; check the URL", u("/page.html"))),
        (u("/page.html.gz"), format!("Error: {} returned an HTML page, not a disk image; check the URL", u("/page.html.gz"))),
        (u("/image.zip"), format!("Error: {} returned a zip archive, not a disk image; check the URL", u("/image.zip"))),
        (u("/empty.img"), format!("Error: {} returned an empty file, not a disk image; check the URL", u("/empty.img"))),
        (u("/notes.txt"), format!("Error: what {} returned is not a disk image: it has no qcow2 header and no partition table (MBR or GPT); check the URL", u("/notes.txt"))),
        (u("/disk.vmdk"), format!("Error: {} returned a vmdk image; cloud images must be qcow2 or raw: convert it first (qemu-img convert -O qcow2 SRC DST)", u("/disk.vmdk"))),
        (u("/overlay.qcow2"), format!("Error: {} returned a qcow2 image with a backing file (base.qcow2); only standalone qcow2 images can be stored", u("/overlay.qcow2"))),
        (u("/twice.gz"), format!("Error: {} is compressed twice (gzip inside gzip); decompress it first", u("/twice.gz"))),
        (u("/huge.img"), format!("Error: {} is larger than the 20 GiB limit for cloud images", u("/huge.img"))),
        (u("/missing.img"), format!("Error: cannot download {}: the server answered 404 Not Found", u("/missing.img"))),
        (u("/broken.img"), format!("Error: cannot download {}: the server answered 500 Internal Server Error", u("/broken.img"))),
        (format!("http://127.0.0.1:{dead_port}/x.img"), format!("Error: cannot download http://127.0.0.1:{dead_port}/x.img: Connection refused (os error 111)")),
        ("http://exa mple.com/x.img".to_string(), "Error: invalid cloud image URL \"http://exa mple.com/x.img\": invalid international domain name".to_string()),
    ];
    // An image already stored must come through every refusal untouched,
    // even a forced re-pull of its own URL that now serves an error page.
    let good = qcow2(env.path(), &raw_disk(5, 4096, 1 << 20), "1.1");
    server.put("/good.qcow2", Resource::file(good.clone(), "good"));
    succeeded(&run(&env, &["image", "pull", &u("/good.qcow2")]));
    let before = images(&env);
    server.put("/good.qcow2", Resource::file(page.clone(), "now-a-page"));
    let mut cases = cases.to_vec();
    cases.push((
        u("/good.qcow2"),
        format!(
            "Error: {} returned an HTML page, not a disk image; check the URL",
            u("/good.qcow2")
        ),
    ));
    for (url, message) in cases {
        // --force only where the URL is recorded (it would be up to date otherwise).
        let force = (url == u("/good.qcow2")).then_some("--force");
        let out = cocoon(&env)
            .args(["image", "pull"])
            .args(force)
            .arg(&url)
            .output()
            .unwrap();
        assert_eq!(error_line(&out), message, "{url}");
        assert!(out.stdout.is_empty());
        assert_eq!(
            tmp_entries(&env),
            Vec::<String>::new(),
            "{url}: no file left"
        );
    }
    assert_eq!(images(&env), before, "nothing recorded, nothing lost");
    assert_eq!(blobs(&env), vec![format!("{}.qcow2", sha(&good))]);
    assert_eq!(std::fs::read(blob(&env, &sha(&good))).unwrap(), good);
}

#[test]
fn concurrent_pulls_of_one_url_download_and_convert_once() {
    let Some(env) = ready("concurrent_pulls_of_one_url_download_and_convert_once") else {
        return;
    };
    let raw = raw_disk(41, 2 << 20, 3 << 20);
    let server = Server::start();
    server.put(
        "/slow.raw",
        Resource {
            pace: Some(std::time::Duration::from_millis(15)),
            ..Resource::file(raw.clone(), "slow")
        },
    );
    let url = server.url("/slow.raw");
    let children: Vec<_> = (0..2)
        .map(|_| {
            let mut cmd = env.std_cmd();
            for proxy in ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"] {
                cmd.env_remove(proxy);
            }
            cmd.args(["image", "pull", &url])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let logs: Vec<String> = children
        .into_iter()
        .map(|child| succeeded(&child.wait_with_output().unwrap()))
        .collect();
    let all = logs.join("\n");
    assert_eq!(
        all.matches("converted from raw to qcow2 v3 (qemu-img)")
            .count(),
        1,
        "{all}"
    );
    assert_eq!(all.matches("is up to date").count(), 1, "{all}");
    assert_eq!(server.requests("/slow.raw").len(), 1, "downloaded once");
    assert_eq!(blobs(&env), vec![format!("{}.qcow2", sha(&raw))]);
    assert_eq!(images(&env).as_array().unwrap().len(), 1);
    assert_eq!(tmp_entries(&env), Vec::<String>::new());
}

#[test]
fn imports_disk_images_from_files_stdin_gzip_and_split_parts() {
    let Some(env) = ready("imports_disk_images_from_files_stdin_gzip_and_split_parts") else {
        return;
    };
    let raw = raw_disk(51, 1 << 20, 4 << 20);
    let v3 = qcow2(env.path(), &raw_disk(52, 1 << 20, 4 << 20), "1.1");
    let v2 = qcow2(env.path(), &raw_disk(53, 1 << 20, 4 << 20), "0.10");
    let file = |name: &str, body: &[u8]| {
        let path = env.path().join(name);
        std::fs::write(&path, body).unwrap();
        path.display().to_string()
    };
    let v3_file = file("disk.qcow2", &v3);
    let raw_file = file("disk.raw", &raw);
    let v3_gz = file("disk.qcow2.gz", &gzip(&v3));
    // `split -b` parts, in order; and the parts of a gzip'd raw image.
    let parts: Vec<String> = v3
        .chunks(v3.len() / 3 + 1)
        .enumerate()
        .map(|(i, part)| file(&format!("disk.qcow2.part{i}"), part))
        .collect();
    let gz = gzip(&raw);
    let gz_parts: Vec<String> = gz
        .chunks(gz.len() / 2 + 1)
        .enumerate()
        .map(|(i, part)| file(&format!("disk.raw.gz.{i:02}"), part))
        .collect();

    let import = |name: &str, files: &[&str]| {
        let out = cocoon(&env)
            .args(["image", "import", name])
            .args(files)
            .output()
            .unwrap();
        succeeded(&out)
    };
    let log = import("local/v3", &[&v3_file]);
    assert!(log.contains("imported: local/v3"), "{log}");
    assert_eq!(
        std::fs::read(blob(&env, &sha(&v3))).unwrap(),
        v3,
        "stored as is"
    );
    let log = import("local/raw", &[&raw_file]);
    assert!(log.contains("converted from raw to qcow2 v3"), "{log}");
    assert_qcow2_v3(&blob(&env, &sha(&raw)));
    assert_same_disk(Path::new(&raw_file), "raw", &blob(&env, &sha(&raw)));
    let log = import("local/v3-gz", &[&v3_gz]);
    assert!(!log.contains("qemu-img"), "the same image again: {log}");
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    import("local/v3-parts", &parts);
    let gz_parts: Vec<&str> = gz_parts.iter().map(String::as_str).collect();
    import("local/raw-gz-parts", &gz_parts);

    let out = cocoon(&env)
        .args(["image", "import", "local/v2-stdin"])
        .write_stdin(v2.clone())
        .output()
        .unwrap();
    let log = succeeded(&out);
    assert!(log.contains("upgraded from qcow2 v2 to v3"), "{log}");
    assert_qcow2_v3(&blob(&env, &sha(&v2)));
    std::fs::write(env.path().join("v2.qcow2"), &v2).unwrap();
    assert_same_disk(
        &env.path().join("v2.qcow2"),
        "qcow2",
        &blob(&env, &sha(&v2)),
    );
    let out = cocoon(&env)
        .args(["image", "import", "local/v3-dash", "-"])
        .write_stdin(gzip(&v3))
        .output()
        .unwrap();
    succeeded(&out);

    let expected = [
        ("local/v3", sha(&v3)),
        ("local/raw", sha(&raw)),
        ("local/v3-gz", sha(&v3)),
        ("local/v3-parts", sha(&v3)),
        ("local/raw-gz-parts", sha(&raw)),
        ("local/v2-stdin", sha(&v2)),
        ("local/v3-dash", sha(&v3)),
    ];
    let list = images(&env);
    let mut got: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            assert_eq!(i["type"], "cloudimg");
            (
                i["name"].as_str().unwrap().to_string(),
                i["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, String)> = expected
        .iter()
        .map(|(n, h)| (n.to_string(), format!("sha256:{h}")))
        .collect();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(blobs(&env).len(), 3, "one blob per distinct image");
    assert_eq!(tmp_entries(&env), Vec::<String>::new());
}

#[test]
fn refused_imports_say_why_and_leave_nothing() {
    let Some(env) = ready("refused_imports_say_why_and_leave_nothing") else {
        return;
    };
    let file = |name: &str, body: &[u8]| {
        let path = env.path().join(name);
        std::fs::write(&path, body).unwrap();
        path.display().to_string()
    };
    let page = file("page.html", b"<html><body>404</body></html>");
    let empty = file("empty.img", b"");
    let text = file("notes.txt", &b"plain text\n".repeat(100));
    let twice = file("twice.gz", &gzip(&gzip(&raw_disk(3, 4096, 1 << 20))));
    let vmdk = env.path().join("x.vmdk");
    Command::new("qemu-img")
        .args(["create", "-q", "-f", "vmdk"])
        .arg(&vmdk)
        .arg("1M")
        .status()
        .unwrap();
    let vmdk = vmdk.display().to_string();
    let layer = {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, "etc/x", &b"x"[..])
            .unwrap();
        file("layer.tar", &builder.into_inner().unwrap())
    };
    let disk = file(
        "disk.qcow2",
        &qcow2(env.path(), &raw_disk(4, 4096, 1 << 20), "1.1"),
    );
    let truncated = file("truncated.qcow2", b"QFI\xfb\x00\x00\x00\x03rest-of-header");
    let overlay = env.path().join("overlay.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&disk)
        .arg(&overlay)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let overlay = overlay.display().to_string();
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec![&page],
            format!("Error: {page} is an HTML page, not a disk image"),
        ),
        (
            vec![&empty],
            format!("Error: {empty} is an empty file, not a disk image"),
        ),
        (
            vec![&text],
            format!(
                "Error: cannot tell what {text} is: it is not a tar archive, a qcow2 image or a raw disk image with a partition table (MBR or GPT)"
            ),
        ),
        (
            vec![&twice],
            format!("Error: {twice} is compressed twice (gzip inside gzip); decompress it first"),
        ),
        (
            vec![&vmdk],
            format!(
                "Error: {vmdk} is a vmdk image; cloud images must be qcow2 or raw: convert it first (qemu-img convert -O qcow2 SRC DST)"
            ),
        ),
        (
            vec![&truncated],
            format!(
                "Error: {truncated} is a qcow2 image with a truncated header; only standalone qcow2 images can be stored"
            ),
        ),
        (
            vec![&overlay],
            format!(
                "Error: {overlay} is a qcow2 image with a backing file ({disk}); only standalone qcow2 images can be stored"
            ),
        ),
        (
            vec![&layer, &disk],
            format!(
                "Error: {disk} is a qcow2 disk image, not a tar archive: when the first file is a tar layer, every file must be one (the parts of a split disk image start with a qcow2 header or partition table)"
            ),
        ),
    ];
    // The name already holds an image: refusals must leave it as it was.
    succeeded(
        &cocoon(&env)
            .args(["image", "import", "local/x", &disk])
            .output()
            .unwrap(),
    );
    let before = images(&env);
    let stored = blobs(&env);
    for (files, message) in cases {
        let out = cocoon(&env)
            .args(["image", "import", "local/x"])
            .args(&files)
            .output()
            .unwrap();
        assert_eq!(error_line(&out), message, "{files:?}");
        assert_eq!(tmp_entries(&env), Vec::<String>::new(), "{files:?}");
    }
    let out = cocoon(&env)
        .args(["image", "import", "local/x"])
        .write_stdin(b"<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code></Error>".to_vec())
        .output()
        .unwrap();
    assert_eq!(
        error_line(&out),
        "Error: standard input is an XML document, not a disk image"
    );
    assert_eq!(images(&env), before, "nothing recorded, nothing lost");
    assert_eq!(blobs(&env), stored, "nothing stored");
}
