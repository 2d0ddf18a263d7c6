//! A hostile registry: a manifest whose layer digest is not `sha256:` + 64
//! lowercase hex (`sha256:../../../victim`, upper case, too short). The
//! testkit's docker-registry validates digests itself, so a tiny fake
//! registry serves `/v2/` and the manifest by tag, and nothing else.
//! `image pull` must fail naming the bad digest before any path is built
//! from it: the victim directory beside `root_dir` is untouched.

mod hostile_support;

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::IntoResponse;
use hostile_support::{assert_unchanged, plant, snapshot};
use sha2::Digest as _;

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

#[derive(Clone)]
struct Fake {
    manifest: Arc<Vec<u8>>,
    requests: Arc<Mutex<Vec<String>>>,
}

async fn any(State(fake): State<Fake>, uri: Uri) -> impl IntoResponse {
    let path = uri.path().to_string();
    fake.requests.lock().unwrap().push(path.clone());
    let mut headers = HeaderMap::new();
    if path == "/v2/" || path == "/v2" {
        return (StatusCode::OK, headers, b"{}".to_vec());
    }
    if path == "/v2/evil/manifests/latest" {
        let hex: String = sha2::Sha256::digest(&*fake.manifest)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let digest = format!("sha256:{hex}");
        headers.insert("content-type", HeaderValue::from_static(MANIFEST_TYPE));
        headers.insert("docker-content-digest", digest.parse().unwrap());
        return (StatusCode::OK, headers, fake.manifest.to_vec());
    }
    (StatusCode::NOT_FOUND, headers, b"not found".to_vec())
}

/// Serves `manifest` on 127.0.0.1; returns the port and the request log.
fn serve(manifest: Vec<u8>) -> (u16, Arc<Mutex<Vec<String>>>) {
    let fake = Fake {
        manifest: Arc::new(manifest),
        requests: Arc::default(),
    };
    let requests = fake.requests.clone();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let app = axum::Router::new().fallback(any).with_state(fake);
            axum::serve(listener, app).await.unwrap();
        });
    });
    (port, requests)
}

fn manifest(layer_digest: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{}", "c".repeat(64)),
            "size": 2
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": 1024
        }]
    }))
    .unwrap()
}

#[test]
fn bad_layer_digests_fail_the_pull_before_any_path_is_built() {
    let good_hex = "0123456789abcdef".repeat(4);
    for bad in [
        "sha256:../../../victim".to_string(),
        format!("sha256:{}", good_hex.to_uppercase()),
        format!("sha256:{}", &good_hex[..63]),
    ] {
        let env = cocoon_testkit::CocoonEnv::new(cocoon_testkit::cocoon_bin());
        // `<root_dir>/images/tmp/../../../victim` is `<root_dir>/../victim`.
        let beside = env.root_dir().parent().unwrap().to_path_buf();
        let victim = beside.join("victim");
        std::fs::create_dir(&victim).unwrap();
        plant(&victim);
        std::fs::write(victim.join("precious"), b"keep me\n").unwrap();
        let skip = [env.root_dir(), env.log_dir()];
        let before = snapshot(&beside, &skip);

        let (port, requests) = serve(manifest(&bad));
        let out = env
            .cmd()
            .args(["image", "pull", &format!("127.0.0.1:{port}/evil:latest")])
            .timeout(std::time::Duration::from_secs(60))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad}: pulled");
        let expected = format!(
            "cannot pull 127.0.0.1:{port}/evil:latest: the registry sent a bad layer digest: invalid digest {bad:?}: expected \"sha256:\" followed by 64 lowercase hex digits"
        );
        assert!(stderr.contains(&expected), "{bad}: {stderr}");

        let after = snapshot(&beside, &skip);
        assert_unchanged(&before, &after);
        assert!(victim.join("precious").is_file());
        assert!(!beside.join("victim.lock").exists());
        // Only the API root and the manifest were asked for: no blob.
        let asked = requests.lock().unwrap().clone();
        assert!(
            asked.iter().all(|p| !p.contains("/blobs/")),
            "{bad}: {asked:?}"
        );
        assert!(
            asked.iter().any(|p| p == "/v2/evil/manifests/latest"),
            "{bad}: {asked:?}"
        );
    }
}
