//! HTTP/1.1 over the VMM's unix socket, with a deadline on every call.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, VmmError};

/// Deadline for ordinary calls.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Deadline for calls that move guest memory (snapshot, restore, load): a fixed
/// base plus the time to write or read `memory_bytes` at a pessimistic 64 MiB/s,
/// so a large VM is never cut off by a deadline sized for a small one.
pub fn transfer_timeout(memory_bytes: u64) -> Duration {
    const BASE: Duration = Duration::from_secs(60);
    const BYTES_PER_SEC: u64 = 64 << 20;
    BASE + Duration::from_secs(memory_bytes.div_ceil(BYTES_PER_SEC))
}

#[derive(Debug, Clone)]
pub(crate) struct Transport {
    client: reqwest::Client,
    socket: PathBuf,
    /// `http://localhost/api/v1` (CH) or `http://localhost` (FC).
    base: &'static str,
}

impl Transport {
    pub(crate) fn new(socket: &Path, base: &'static str) -> Transport {
        let client = reqwest::Client::builder()
            .unix_socket(socket.to_path_buf())
            // One short-lived CLI process makes a handful of calls; a pooled
            // connection to a VMM that restarted would only fail the next call.
            .pool_max_idle_per_host(0)
            // Plain HTTP over a unix socket: no certificate is ever checked,
            // so skip loading the host's CA store (~150 files) on every build.
            .tls_certs_only([])
            .build()
            .expect("a reqwest client with a unix socket builds");
        Transport {
            client,
            socket: socket.to_path_buf(),
            base,
        }
    }

    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }

    /// One request; any non-2xx answer becomes `ApiError::Vmm` with the body parsed.
    pub(crate) async fn call<B: Serialize + ?Sized>(
        &self,
        op: &str,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<Vec<u8>, ApiError> {
        let url = format!("{}{}", self.base, path);
        let mut request = self.client.request(method, url);
        if let Some(body) = body {
            request = request.json(body);
        }
        let transport = |source| ApiError::Transport {
            op: op.to_string(),
            socket: self.socket.clone(),
            source,
        };
        let exchange = async {
            let response = request.send().await.map_err(transport)?;
            let status = response.status();
            let bytes = response.bytes().await.map_err(transport)?;
            Ok::<_, ApiError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ApiError::Timeout {
                op: op.to_string(),
                after: timeout,
            })??;
        tracing::trace!(op, status = status.as_u16(), body = %String::from_utf8_lossy(&bytes), "VMM API");
        if status.is_success() {
            Ok(bytes.to_vec())
        } else {
            Err(ApiError::Vmm {
                op: op.to_string(),
                status: status.as_u16(),
                error: VmmError::parse(&bytes),
            })
        }
    }

    pub(crate) fn decode<T: DeserializeOwned>(op: &str, bytes: &[u8]) -> Result<T, ApiError> {
        serde_json::from_slice(bytes).map_err(|source| ApiError::Decode {
            op: op.to_string(),
            body: String::from_utf8_lossy(bytes).into_owned(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_timeout_grows_with_memory() {
        assert_eq!(transfer_timeout(0), Duration::from_secs(60));
        assert_eq!(transfer_timeout(1 << 30), Duration::from_secs(60 + 16));
        assert!(transfer_timeout(64 << 30) > Duration::from_secs(15 * 60));
    }
}
