//! `pull_conns` (upstream #76): a large cloud image from a server that
//! takes ranges comes over several connections, each part asked for with
//! `Range` and `If-Range`; one broken off keeps the longest whole prefix,
//! and the next pull resumes from it.

use super::*;

/// A qcow2 of about 11 MiB: over the size where parts pay off.
fn big_image(env: &CocoonEnv) -> Vec<u8> {
    qcow2(env.path(), &raw_disk(21, 11 << 20, 12 << 20), "1.1")
}

fn pull_with(env: &CocoonEnv, conns: &str, url: &str) -> Output {
    cocoon(env)
        .env("COCOON_PULL_CONNS", conns)
        .args(["image", "pull", url])
        .output()
        .unwrap()
}

#[test]
fn a_large_image_comes_over_pull_conns_connections() {
    let Some(env) = ready("a_large_image_comes_over_pull_conns_connections") else {
        return;
    };
    let image = big_image(&env);
    let server = Server::start();
    server.put("/big.qcow2", Resource::file(image.clone(), "big-1"));
    let url = server.url("/big.qcow2");
    succeeded(&pull_with(&env, "4", &url));
    let mut requests = server.requests("/big.qcow2");
    assert_eq!(requests.len(), 4, "{requests:?}");
    // The first part comes with the plain GET; the others by range, each
    // checked against the validator the first answer gave.
    assert_eq!(requests.remove(0).range, None);
    let part = image.len().div_ceil(4);
    let mut ranges: Vec<String> = requests
        .iter()
        .map(|r| {
            assert_eq!(r.if_range.as_deref(), Some("\"big-1\""));
            assert_eq!(r.status, 206);
            r.range.clone().unwrap()
        })
        .collect();
    let mut expected: Vec<String> = (1..4)
        .map(|i| {
            let end = ((i + 1) * part).min(image.len());
            format!("bytes={}-{}", i * part, end - 1)
        })
        .collect();
    ranges.sort();
    expected.sort();
    assert_eq!(ranges, expected);
    assert_eq!(images(&env)[0]["id"], format!("sha256:{}", sha(&image)));
    assert_eq!(std::fs::read(blob(&env, &sha(&image))).unwrap(), image);
    assert_eq!(tmp_entries(&env), Vec::<String>::new());

    // pull_conns = 1: one connection, as before.
    let other = qcow2(env.path(), &raw_disk(22, 11 << 20, 12 << 20), "1.1");
    server.put("/one.qcow2", Resource::file(other.clone(), "one-1"));
    succeeded(&pull_with(&env, "1", &server.url("/one.qcow2")));
    let requests = server.requests("/one.qcow2");
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(std::fs::read(blob(&env, &sha(&other))).unwrap(), other);
}

#[test]
fn a_broken_part_keeps_the_whole_prefix_and_the_next_pull_resumes() {
    let Some(env) = ready("a_broken_part_keeps_the_whole_prefix_and_the_next_pull_resumes") else {
        return;
    };
    let image = big_image(&env);
    let server = Server::start();
    // The first answer (the plain GET, the first part) breaks off at 1 MiB.
    server.put(
        "/big.qcow2",
        Resource {
            drop_after: 1 << 20,
            drops: 1,
            ..Resource::file(image.clone(), "big-1")
        },
    );
    let url = server.url("/big.qcow2");
    let out = pull_with(&env, "4", &url);
    let line = error_line(&out);
    assert!(
        line.starts_with(&format!(
            "Error: the download of {url} broke off after 1048576 bytes of {}",
            image.len()
        )),
        "{line}"
    );
    assert!(
        line.ends_with("run the same command again to resume"),
        "{line}"
    );
    assert_eq!(std::fs::read(partial(&env)).unwrap(), image[..1 << 20]);
    assert_eq!(images(&env), serde_json::json!([]));

    succeeded(&pull_with(&env, "4", &url));
    // The second pull asked only for the rest of the kept prefix: one plain
    // GET in all (the first pull's), one resume, and otherwise only the
    // first pull's bounded parts (a part cancelled before it was sent may
    // never reach the server, so they are not counted).
    let requests = server.requests("/big.qcow2");
    let ranges: Vec<Option<&str>> = requests.iter().map(|r| r.range.as_deref()).collect();
    assert_eq!(
        ranges.iter().filter(|r| r.is_none()).count(),
        1,
        "{requests:?}"
    );
    assert_eq!(
        ranges
            .iter()
            .filter(|r| **r == Some("bytes=1048576-"))
            .count(),
        1,
        "{requests:?}"
    );
    assert!(
        ranges
            .iter()
            .flatten()
            .all(|r| *r == "bytes=1048576-" || !r.ends_with('-')),
        "{requests:?}"
    );
    assert_eq!(images(&env)[0]["id"], format!("sha256:{}", sha(&image)));
    assert_eq!(std::fs::read(blob(&env, &sha(&image))).unwrap(), image);
    assert_eq!(tmp_entries(&env), Vec::<String>::new());
}
