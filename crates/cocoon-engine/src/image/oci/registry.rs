//! Talking to a registry: the bounds of a pull, plain HTTP or TLS, the
//! credentials from the Docker config, the bounded token exchange, and the
//! read timeout every request waits under.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::PullError;

/// The bounds of a pull (config keys `registry_connect_timeout_seconds`,
/// `registry_read_timeout_seconds`, `max_layer_bytes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullLimits {
    pub connect_timeout: Duration,
    /// Idle time between bytes, not the transfer's total.
    pub read_timeout: Duration,
    /// The most one layer may decompress to.
    pub max_layer_bytes: u64,
}

impl Default for PullLimits {
    fn default() -> Self {
        let config = crate::config::Config::default();
        PullLimits::from_config(&config)
    }
}

impl PullLimits {
    pub fn from_config(config: &crate::config::Config) -> PullLimits {
        PullLimits {
            connect_timeout: config.registry_connect_timeout(),
            read_timeout: config.registry_read_timeout(),
            max_layer_bytes: config.max_layer_bytes,
        }
    }
}

/// Registry access settings.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// `host[:port]` spoken to over plain HTTP; loopback registries always are.
    pub insecure: Vec<String>,
    /// Docker config directory (`$DOCKER_CONFIG`, else `~/.docker`).
    pub docker_config: Option<PathBuf>,
    pub limits: PullLimits,
}

impl RegistryOptions {
    pub fn from_env(insecure: Vec<String>) -> RegistryOptions {
        let docker_config = std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")));
        RegistryOptions {
            insecure,
            docker_config,
            limits: PullLimits::default(),
        }
    }

    /// The options `config` gives, credentials from the environment.
    pub fn from_config(config: &crate::config::Config) -> RegistryOptions {
        RegistryOptions {
            limits: PullLimits::from_config(config),
            ..RegistryOptions::from_env(config.insecure_registries.clone())
        }
    }

    pub(super) fn is_plain_http(&self, registry: &str) -> bool {
        let host = registry.rsplit_once(':').map_or(registry, |(h, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                registry
            }
        });
        matches!(host, "localhost" | "127.0.0.1" | "[::1]")
            || self.insecure.iter().any(|r| r == registry || r == host)
    }

    /// Credentials for `registry` from the Docker config file (`auths`), if any.
    pub fn auth(&self, registry: &str) -> Result<RegistryAuth, PullError> {
        use base64::Engine;
        let Some(dir) = &self.docker_config else {
            return Ok(RegistryAuth::Anonymous);
        };
        let path = dir.join("config.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(RegistryAuth::Anonymous),
            Err(e) => {
                return Err(PullError::Credentials {
                    path,
                    reason: e.to_string(),
                });
            }
        };
        let config: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| PullError::Credentials {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let aliases: Vec<&str> = match registry {
            "docker.io" | "index.docker.io" | "registry-1.docker.io" => {
                vec![
                    "https://index.docker.io/v1/",
                    "docker.io",
                    "index.docker.io",
                    "registry-1.docker.io",
                ]
            }
            other => vec![other],
        };
        let Some(auths) = config["auths"].as_object() else {
            return Ok(RegistryAuth::Anonymous);
        };
        for (key, entry) in auths {
            let host = key
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/');
            let host = host.split('/').next().unwrap_or(host);
            if !aliases.contains(&key.as_str()) && !aliases.contains(&host) {
                continue;
            }
            if let (Some(user), Some(pass)) =
                (entry["username"].as_str(), entry["password"].as_str())
            {
                return Ok(RegistryAuth::Basic(user.to_string(), pass.to_string()));
            }
            if let Some(encoded) = entry["auth"].as_str() {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|e| PullError::Credentials {
                        path: path.clone(),
                        reason: format!("auth for {key}: {e}"),
                    })?;
                let decoded = String::from_utf8_lossy(&decoded).into_owned();
                if let Some((user, pass)) = decoded.split_once(':') {
                    return Ok(RegistryAuth::Basic(user.to_string(), pass.to_string()));
                }
            }
        }
        Ok(RegistryAuth::Anonymous)
    }

    pub(crate) fn client(&self, reference: &Reference) -> Client {
        Client::new(self.client_config(reference))
    }

    pub(crate) fn client_config(&self, reference: &Reference) -> ClientConfig {
        let mut plain: Vec<String> = self.insecure.clone();
        if self.is_plain_http(reference.resolve_registry()) {
            plain.push(reference.resolve_registry().to_string());
        }
        ClientConfig {
            protocol: ClientProtocol::HttpsExcept(plain),
            platform_resolver: Some(Box::new(oci_client::client::current_platform_resolver)),
            connect_timeout: Some(self.limits.connect_timeout),
            read_timeout: Some(self.limits.read_timeout),
            ..Default::default()
        }
    }

    pub(super) fn scheme(&self, reference: &Reference) -> &'static str {
        if self.is_plain_http(reference.resolve_registry()) {
            "http"
        } else {
            "https"
        }
    }
}

/// The token exchange for pulling `reference` (bounded like every request);
/// the client keeps the token for its later requests, and it is returned for
/// requests made outside the client.
pub(super) async fn authenticate(
    client: &Client,
    reference: &Reference,
    auth: &RegistryAuth,
    limits: &PullLimits,
) -> Result<Option<String>, PullError> {
    within(
        reference,
        limits,
        "authenticating",
        client.auth(reference, auth, oci_client::RegistryOperation::Pull),
    )
    .await?
    .map_err(|source| PullError::Registry {
        reference: reference.whole(),
        source,
    })
}

/// Awaits `future` for at most the read timeout; a timeout is [`PullError::Stalled`].
pub(crate) async fn within<T>(
    reference: &Reference,
    limits: &PullLimits,
    what: &str,
    future: impl Future<Output = T>,
) -> Result<T, PullError> {
    tokio::time::timeout(limits.read_timeout, future)
        .await
        .map_err(|_| PullError::Stalled {
            reference: reference.whole(),
            what: what.to_string(),
            seconds: limits.read_timeout.as_secs(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_use_plain_http() {
        let o = RegistryOptions {
            insecure: vec!["reg.lan:5000".into()],
            docker_config: None,
            ..Default::default()
        };
        assert!(o.is_plain_http("127.0.0.1:5000"));
        assert!(o.is_plain_http("localhost:1234"));
        assert!(o.is_plain_http("reg.lan:5000"));
        assert!(!o.is_plain_http("ghcr.io"));
    }

    #[test]
    fn credentials_come_from_the_docker_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"auths": {"127.0.0.1:5000": {"auth": "YWxpY2U6czNjcmV0"}, "https://index.docker.io/v1/": {"username": "bob", "password": "pw"}}}"#,
        )
        .unwrap();
        let o = RegistryOptions {
            insecure: vec![],
            docker_config: Some(dir.path().to_path_buf()),
            ..Default::default()
        };
        assert!(
            matches!(o.auth("127.0.0.1:5000").unwrap(), RegistryAuth::Basic(u, p) if u == "alice" && p == "s3cret")
        );
        assert!(matches!(o.auth("docker.io").unwrap(), RegistryAuth::Basic(u, _) if u == "bob"));
        assert!(matches!(
            o.auth("ghcr.io").unwrap(),
            RegistryAuth::Anonymous
        ));
        std::fs::write(dir.path().join("config.json"), "{not json").unwrap();
        assert!(
            o.auth("ghcr.io")
                .unwrap_err()
                .to_string()
                .starts_with("cannot read registry credentials from")
        );
    }
}
