//! A real OCI registry for tests: Debian's `docker-registry` on 127.0.0.1 with
//! a private storage directory, optionally behind htpasswd basic auth, and a
//! helper that pushes images built in the test.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::OciImageIndex;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

pub const BINARY: &str = "docker-registry";

pub struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    /// `127.0.0.1:<port>`
    pub addr: String,
    auth: RegistryAuth,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Registry {
    /// Starts a registry, or returns None when `docker-registry` is not installed.
    pub fn start() -> Option<Registry> {
        Self::launch(None)
    }

    /// A registry that requires `user`/`password` (basic auth via htpasswd).
    pub fn start_with_auth(user: &str, password: &str) -> Option<Registry> {
        Self::launch(Some((user, password)))
    }

    fn launch(auth: Option<(&str, &str)>) -> Option<Registry> {
        let binary = ["/usr/bin/docker-registry", "/usr/local/bin/docker-registry"]
            .into_iter()
            .find(|p| Path::new(p).is_file())?;
        let dir = tempfile::Builder::new()
            .prefix("cocoon-registry-")
            .tempdir()
            .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  formatter: text\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("storage").display()
        );
        if let Some((user, password)) = auth {
            let hash = bcrypt::hash(password, 4).unwrap();
            std::fs::write(dir.path().join("htpasswd"), format!("{user}:{hash}\n")).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: cocoon-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(binary)
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .ok()?;
        let registry = Registry {
            child,
            dir,
            addr,
            auth: auth.map_or(RegistryAuth::Anonymous, |(u, p)| {
                RegistryAuth::Basic(u.into(), p.into())
            }),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&registry.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "registry did not start: {}",
                registry.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(registry)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// How many times a blob was downloaded (successful GETs in the access log).
    pub fn blob_fetches(&self, digest: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| {
                l.contains("\"GET /v2/")
                    && l.contains(&format!("/blobs/{digest}"))
                    && l.contains("HTTP/1.1\" 200")
            })
            .count()
    }

    /// The registry's on-disk copy of a blob, for tampering tests.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    pub fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.addr)
    }

    fn client(&self) -> Client {
        Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..Default::default()
        })
    }

    /// Pushes an image whose layers are the given uncompressed tars (gzip
    /// compressed on the way), for linux/`arch`. Returns the manifest digest.
    pub fn push(&self, repo_tag: &str, layers: &[Vec<u8>], arch: &str) -> String {
        self.push_with_config(repo_tag, layers, arch, serde_json::json!({}))
    }

    /// [`Registry::push`] with the image config's `config` section (how to
    /// run it: `Entrypoint`, `Cmd`, `Env`, `WorkingDir`, `User`).
    pub fn push_with_config(
        &self,
        repo_tag: &str,
        layers: &[Vec<u8>],
        arch: &str,
        run: serde_json::Value,
    ) -> String {
        let reference: Reference = self.reference(repo_tag).parse().unwrap();
        let mut diff_ids = Vec::new();
        let mut image_layers = Vec::new();
        for tar in layers {
            diff_ids.push(format!("sha256:{}", hex(&Sha256::digest(tar))));
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut gz, tar).unwrap();
            image_layers.push(ImageLayer::oci_v1_gzip(gz.finish().unwrap(), None));
        }
        let config = serde_json::json!({
            "architecture": arch, "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "config": run,
        });
        let config = Config::oci_v1(serde_json::to_vec(&config).unwrap(), None);
        block_on(async {
            let client = self.client();
            let response = client
                .push(&reference, &image_layers, config, &self.auth, None)
                .await
                .expect("push");
            response
                .manifest_url
                .rsplit('/')
                .next()
                .unwrap()
                .to_string()
        })
    }

    /// Uploads `data` as a blob of `repo`; returns its digest.
    pub fn put_blob(&self, repo: &str, data: &[u8]) -> String {
        let reference: Reference = self.reference(&format!("{repo}:unused")).parse().unwrap();
        let digest = format!("sha256:{}", hex(&Sha256::digest(data)));
        block_on(async {
            let client = self.client();
            client
                .store_auth_if_needed(reference.resolve_registry(), &self.auth)
                .await;
            client
                .push_blob(&reference, data.to_vec(), &digest)
                .await
                .unwrap();
        });
        digest
    }

    /// The raw manifest `repo_tag` names (an OCI image manifest).
    pub fn manifest(&self, repo_tag: &str) -> Vec<u8> {
        let reference: Reference = self.reference(repo_tag).parse().unwrap();
        block_on(async {
            let (bytes, _) = self
                .client()
                .pull_manifest_raw(
                    &reference,
                    &self.auth,
                    &["application/vnd.oci.image.manifest.v1+json"],
                )
                .await
                .unwrap();
            bytes.to_vec()
        })
    }

    /// Stores `body` as the OCI image manifest `repo_tag` names.
    pub fn put_manifest(&self, repo_tag: &str, body: &[u8]) {
        let reference: Reference = self.reference(repo_tag).parse().unwrap();
        block_on(async {
            let client = self.client();
            client
                .store_auth_if_needed(reference.resolve_registry(), &self.auth)
                .await;
            client
                .push_manifest_raw(
                    &reference,
                    body.to_vec(),
                    "application/vnd.oci.image.manifest.v1+json"
                        .parse()
                        .unwrap(),
                )
                .await
                .unwrap();
        });
    }

    /// Pushes an index naming manifests already pushed as `repo:<tag>`, one per (tag, arch).
    pub fn push_index(&self, repo_tag: &str, entries: &[(&str, &str)]) -> String {
        let (repo, _) = repo_tag.split_once(':').unwrap();
        block_on(async {
            let client = self.client();
            let mut manifests = Vec::new();
            for (tag, arch) in entries {
                let r: Reference = self.reference(&format!("{repo}:{tag}")).parse().unwrap();
                let (bytes, digest) = client
                    .pull_manifest_raw(
                        &r,
                        &self.auth,
                        &["application/vnd.oci.image.manifest.v1+json"],
                    )
                    .await
                    .unwrap();
                manifests.push(serde_json::json!({
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": digest, "size": bytes.len(),
                    "platform": {"architecture": arch, "os": "linux"},
                }));
            }
            let index: OciImageIndex = serde_json::from_value(serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": manifests,
            }))
            .unwrap();
            let reference: Reference = self.reference(repo_tag).parse().unwrap();
            let url = client
                .push_manifest_list(&reference, &self.auth, index)
                .await
                .expect("push index");
            url.rsplit('/').next().unwrap().to_string()
        })
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// Uncompressed layer tars for tests.
pub mod layers {
    use tar::{EntryType, Header};

    pub struct LayerBuilder(tar::Builder<Vec<u8>>);

    impl Default for LayerBuilder {
        fn default() -> Self {
            Self::new()
        }
    }

    impl LayerBuilder {
        pub fn new() -> LayerBuilder {
            LayerBuilder(tar::Builder::new(Vec::new()))
        }

        fn header(path: &str, kind: EntryType, mode: u32, size: u64) -> Header {
            let mut h = crate::tar_header(kind, mode, size);
            h.set_path(path).unwrap();
            h
        }

        pub fn file(mut self, path: &str, data: &[u8]) -> Self {
            let mut h = Self::header(path, EntryType::Regular, 0o644, data.len() as u64);
            h.set_cksum();
            self.0.append(&h, data).unwrap();
            self
        }

        /// A regular file with the given mode (executables: 0o755).
        pub fn file_mode(mut self, path: &str, mode: u32, data: &[u8]) -> Self {
            let mut h = Self::header(path, EntryType::Regular, mode, data.len() as u64);
            h.set_cksum();
            self.0.append(&h, data).unwrap();
            self
        }

        pub fn symlink(mut self, path: &str, target: &str) -> Self {
            let mut h = Self::header(path, EntryType::Symlink, 0o777, 0);
            h.set_link_name(target).unwrap();
            h.set_cksum();
            self.0.append(&h, &[][..]).unwrap();
            self
        }

        pub fn dir(mut self, path: &str) -> Self {
            let mut h = Self::header(path, EntryType::Directory, 0o755, 0);
            h.set_cksum();
            self.0.append(&h, &[][..]).unwrap();
            self
        }

        /// A whiteout deleting `path` from the layers below.
        pub fn delete(self, path: &str) -> Self {
            let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
            let whiteout = if dir.is_empty() {
                format!(".wh.{name}")
            } else {
                format!("{dir}/.wh.{name}")
            };
            self.file(&whiteout, b"")
        }

        pub fn hardlink(mut self, path: &str, target: &str) -> Self {
            let mut h = Self::header(path, EntryType::Link, 0o644, 0);
            h.set_link_name(target).unwrap();
            h.set_cksum();
            self.0.append(&h, &[][..]).unwrap();
            self
        }

        pub fn char_device(mut self, path: &str, major: u32, minor: u32) -> Self {
            let mut h = Self::header(path, EntryType::Char, 0o666, 0);
            h.set_device_major(major).unwrap();
            h.set_device_minor(minor).unwrap();
            h.set_cksum();
            self.0.append(&h, &[][..]).unwrap();
            self
        }

        /// Writes a raw, unchecked path (for hostile-layer tests).
        pub fn raw_entry(mut self, path: &[u8]) -> Self {
            let mut h = Header::new_old();
            h.as_old_mut().name[..path.len()].copy_from_slice(path);
            h.set_entry_type(EntryType::Regular);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_size(0);
            h.set_cksum();
            self.0.append(&h, &[][..]).unwrap();
            self
        }

        pub fn build(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
    }
}
