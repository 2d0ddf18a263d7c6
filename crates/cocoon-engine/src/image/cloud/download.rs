//! One URL to one file in `images/tmp/`, resumable.
//!
//! The partial file keeps the bytes of an interrupted download; its sidecar
//! (`pull-<h>.json`) keeps the URL and the response's validator (a strong
//! ETag, else Last-Modified). The next pull asks for the rest with `Range` and
//! `If-Range`: a 206 continues the file, a 200 means the server cannot resume
//! or the file changed, and the download starts over. Without a validator
//! nothing is kept, since a resumed file could splice two versions.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::{CloudError, Origin, io_err};
use super::sniff;
use super::{CloudProgress, Step};
use crate::image::store::{ImageDirs, digest_of};

/// The partial file and sidecar of one URL.
#[derive(Debug, Clone)]
pub struct Resumable {
    pub partial: PathBuf,
    pub state: PathBuf,
    url: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct State {
    url: String,
    validator: Option<String>,
    total: Option<u64>,
}

impl Resumable {
    pub fn new(dirs: &ImageDirs, url: &str) -> Resumable {
        let tmp = dirs.root.join("tmp");
        let key = url_key(url);
        Resumable {
            partial: tmp.join(format!("pull-{key}.partial")),
            state: tmp.join(format!("pull-{key}.json")),
            url: url.to_string(),
        }
    }

    /// Forgets the kept bytes (they are done with, or unusable).
    pub fn discard(&self) {
        let _ = std::fs::remove_file(&self.partial);
        let _ = std::fs::remove_file(&self.state);
    }

    /// Where a previous pull of this URL stopped, and the validator that
    /// makes continuing it safe.
    fn resume_point(&self) -> Option<(u64, String)> {
        let state: Option<State> = std::fs::read(&self.state)
            .ok()
            .and_then(|s| serde_json::from_slice(&s).ok());
        let len = std::fs::metadata(&self.partial).map(|m| m.len()).ok();
        match (state, len) {
            (
                Some(State {
                    url,
                    validator: Some(v),
                    ..
                }),
                Some(len),
            ) if url == self.url && len > 0 => Some((len, v)),
            (None, None) => None,
            _ => {
                self.discard();
                None
            }
        }
    }

    pub(super) fn save(
        &self,
        validator: Option<&str>,
        total: Option<u64>,
    ) -> Result<(), CloudError> {
        let state = State {
            url: self.url.clone(),
            validator: validator.map(str::to_string),
            total,
        };
        let staging = self.state.with_extension("json.new");
        std::fs::write(&staging, serde_json::to_vec(&state).unwrap_or_default())
            .map_err(io_err("cannot write", &staging))?;
        std::fs::rename(&staging, &self.state).map_err(io_err("cannot write", &self.state))
    }
}

/// A short stable name for a URL's work files.
pub fn url_key(url: &str) -> String {
    let digest = digest_of(Sha256::new_with_prefix(url.as_bytes()));
    digest.hex()[..16].to_string()
}

/// A finished download: the partial file now holds all of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    /// `sha256:<hex>` of the whole file, kept prefix included.
    pub digest: crate::digest::Digest,
    pub size: u64,
    /// Bytes a previous, interrupted pull had already fetched.
    pub resumed_from: u64,
}

pub fn parse_url(url: &str) -> Result<reqwest::Url, CloudError> {
    let invalid = |reason: String| CloudError::Url {
        url: url.to_string(),
        reason,
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid("only http and https URLs can be pulled".into()));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid("it has no host".into()));
    }
    Ok(parsed)
}

/// Fetches `url` into `files.partial`, continuing a kept prefix when the
/// server allows; a fresh download of a large file from a server that takes
/// ranges comes over `conns` connections ([`super::ranges`]).
pub async fn download(
    url: &str,
    files: &Resumable,
    limit: u64,
    conns: usize,
    progress: &dyn CloudProgress,
) -> Result<Downloaded, CloudError> {
    let parsed = parse_url(url)?;
    let request_err = |e: reqwest::Error| CloudError::Request {
        url: url.to_string(),
        reason: reason(&e),
    };
    let client = http_client().map_err(request_err)?;
    let plan = Plan {
        url,
        parsed: &parsed,
        client: &client,
        files,
        conns,
    };
    let mut resume = files.resume_point();
    loop {
        let response = get(&client, &parsed, resume.as_ref())
            .send()
            .await
            .map_err(request_err)?;
        let status = response.status();
        match (resume.take(), status) {
            (Some((offset, validator)), StatusCode::PARTIAL_CONTENT) => {
                match content_range(response.headers()) {
                    Some((Some(start), total)) if start == offset => {
                        let transfer = Transfer {
                            url,
                            files,
                            offset,
                            total,
                            validator: Some(validator),
                            limit,
                        };
                        return transfer.receive(response, progress).await;
                    }
                    _ => {
                        tracing::info!(
                            "{url}: the server answered with another range; starting over"
                        );
                        files.discard();
                    }
                }
            }
            (Some((offset, _)), StatusCode::RANGE_NOT_SATISFIABLE) => {
                // Nothing after `offset`: the kept file is complete if the
                // server's length says so (a pull that failed after downloading).
                if content_range(response.headers()) == Some((None, Some(offset))) {
                    return complete(url, files, offset);
                }
                files.discard();
            }
            (resumed, StatusCode::OK) => {
                if resumed.is_some() {
                    tracing::info!(
                        "{url}: the server sent the whole file (it changed, or cannot resume); starting over"
                    );
                }
                return plan.fresh(response, limit, progress).await;
            }
            (_, status) => return Err(refused(url, status)),
        }
    }
}

/// No overall timeout: a 20 GiB image on a slow link is legitimate; a
/// stalled server is caught by the read timeout instead.
fn http_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(concat!("cocoon/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(120))
        .build()
}

/// The GET of `url`, asking for the rest of a kept prefix when there is one.
fn get(
    client: &reqwest::Client,
    url: &reqwest::Url,
    resume: Option<&(u64, String)>,
) -> reqwest::RequestBuilder {
    let request = client.get(url.clone());
    match resume {
        Some((offset, validator)) => request
            .header(header::RANGE, format!("bytes={offset}-"))
            .header(header::IF_RANGE, validator.as_str()),
        None => request,
    }
}

fn refused(url: &str, status: StatusCode) -> CloudError {
    CloudError::Status {
        url: url.to_string(),
        status: format!(
            "{} {}",
            status.as_str(),
            status.canonical_reason().unwrap_or("")
        )
        .trim()
        .to_string(),
    }
}

struct Transfer<'a> {
    url: &'a str,
    files: &'a Resumable,
    /// Bytes already in the partial file.
    offset: u64,
    /// The whole file's size, if known.
    total: Option<u64>,
    validator: Option<String>,
    limit: u64,
}

impl Transfer<'_> {
    async fn receive(
        self,
        mut response: reqwest::Response,
        progress: &dyn CloudProgress,
    ) -> Result<Downloaded, CloudError> {
        let origin = Origin::Url(self.url.to_string());
        let partial = &self.files.partial;
        let too_large = || {
            self.files.discard();
            CloudError::TooLarge {
                origin: origin.clone(),
                limit: self.limit,
            }
        };
        if self.total.is_some_and(|t| t > self.limit) {
            return Err(too_large());
        }
        let mut hasher = Sha256::new();
        let mut file = self.open_partial(&mut hasher)?;
        progress.begin(Step::Download {
            url: self.url,
            resumed_from: self.offset,
            total: self.total,
        });
        let mut done = self.offset;
        // A fresh download holds its first bytes back until they are known
        // not to be an error page, so a refused payload costs one request.
        let mut head: Option<Vec<u8>> = (self.offset == 0).then(Vec::new);
        let write = |file: &mut File, bytes: &[u8]| {
            file.write_all(bytes)
                .map_err(io_err("cannot write", partial))
        };
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => {
                    if let Some(held) = head.take() {
                        write(&mut file, &held)?;
                    }
                    let _ = file.sync_all();
                    return Err(self.interrupted(done, reason(&e)));
                }
            };
            done += chunk.len() as u64;
            if done > self.limit {
                return Err(too_large());
            }
            hasher.update(&chunk);
            match &mut head {
                Some(held) => {
                    held.extend_from_slice(&chunk);
                    if held.len() >= 512 {
                        self.sniff(held)?;
                        write(&mut file, held)?;
                        head = None;
                    }
                }
                None => write(&mut file, &chunk)?,
            }
            progress.advance(done);
        }
        if let Some(held) = head.take() {
            self.sniff(&held)?;
            write(&mut file, &held)?;
        }
        file.sync_all().map_err(io_err("cannot sync", partial))?;
        if self.total.is_some_and(|t| t != done) {
            return Err(self.interrupted(done, "the connection closed early".into()));
        }
        Ok(Downloaded {
            digest: digest_of(hasher),
            size: done,
            resumed_from: self.offset,
        })
    }

    /// The partial file to append to: created anew (its sidecar saved
    /// first), or the kept prefix, hashed again since the digest covers the
    /// whole file.
    fn open_partial(&self, hasher: &mut Sha256) -> Result<File, CloudError> {
        let partial = &self.files.partial;
        if self.offset == 0 {
            self.files.save(self.validator.as_deref(), self.total)?;
            File::create(partial).map_err(io_err("cannot create", partial))
        } else {
            hash_file(partial, hasher)?;
            File::options()
                .append(true)
                .open(partial)
                .map_err(io_err("cannot open", partial))
        }
    }

    fn sniff(&self, head: &[u8]) -> Result<(), CloudError> {
        foreign(self.url, self.files, head)
    }

    fn interrupted(&self, done: u64, reason: String) -> CloudError {
        let kept = self.validator.is_some() && done > 0;
        if !kept {
            self.files.discard();
        }
        CloudError::Interrupted {
            url: self.url.to_string(),
            done,
            total: self.total,
            reason,
            kept,
        }
    }
}

/// The kept file turned out complete: hash it, no bytes to fetch.
fn complete(url: &str, files: &Resumable, size: u64) -> Result<Downloaded, CloudError> {
    tracing::info!("{url}: the kept download is complete");
    let mut hasher = Sha256::new();
    hash_file(&files.partial, &mut hasher)?;
    Ok(Downloaded {
        digest: digest_of(hasher),
        size,
        resumed_from: size,
    })
}

pub(super) fn hash_file(path: &Path, hasher: &mut Sha256) -> Result<(), CloudError> {
    let mut file = File::open(path).map_err(io_err("cannot open", path))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf).map_err(io_err("cannot read", path))? {
            0 => return Ok(()),
            n => hasher.update(&buf[..n]),
        }
    }
}

/// What a fresh download could be split by.
#[derive(Clone, Copy)]
struct Plan<'a> {
    url: &'a str,
    parsed: &'a reqwest::Url,
    client: &'a reqwest::Client,
    files: &'a Resumable,
    conns: usize,
}

impl<'a> Plan<'a> {
    /// A download from the start: in parts when [`Self::parallel`] allows,
    /// else one stream.
    async fn fresh(
        self,
        response: reqwest::Response,
        limit: u64,
        progress: &dyn CloudProgress,
    ) -> Result<Downloaded, CloudError> {
        let validator = validator(response.headers());
        if let Some(parallel) = self.parallel(&response, &validator, limit) {
            return parallel.receive(response, progress).await;
        }
        let transfer = Transfer {
            url: self.url,
            files: self.files,
            offset: 0,
            total: response.content_length(),
            validator,
            limit,
        };
        transfer.receive(response, progress).await
    }

    /// The parallel download, when the first answer allows one: a large
    /// file of known length, ranges taken, a strong validator to hold the
    /// parts to one version.
    fn parallel(
        self,
        response: &reqwest::Response,
        validator: &Option<String>,
        limit: u64,
    ) -> Option<super::ranges::Parallel<'a>> {
        let (total, strong) = (response.content_length()?, validator.as_ref()?);
        let worth = self.conns > 1 && total >= super::ranges::MIN_PARALLEL && total <= limit;
        (worth && takes_ranges(response.headers())).then(|| super::ranges::Parallel {
            url: self.url,
            parsed: self.parsed,
            client: self.client,
            files: self.files,
            total,
            validator: strong.clone(),
            conns: self.conns,
        })
    }
}

/// `Accept-Ranges: bytes`.
fn takes_ranges(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT_RANGES)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|unit| unit.trim() == "bytes"))
}

/// Refuses (and forgets) a payload whose first bytes say it is no image.
pub(super) fn foreign(url: &str, files: &Resumable, head: &[u8]) -> Result<(), CloudError> {
    match sniff::foreign(head) {
        Some(found) => {
            files.discard();
            Err(CloudError::NotAnImage {
                origin: Origin::Url(url.to_string()),
                found,
            })
        }
        None => Ok(()),
    }
}

/// A validator `If-Range` may carry: a strong ETag, else Last-Modified
/// (weak ETags are not allowed there).
fn validator(headers: &HeaderMap) -> Option<String> {
    let get = |name| headers.get(name).and_then(|v| v.to_str().ok());
    get(header::ETAG)
        .filter(|etag| !etag.starts_with("W/"))
        .or_else(|| get(header::LAST_MODIFIED))
        .map(str::to_string)
}

/// `Content-Range: bytes START-END/TOTAL` (or `bytes */TOTAL` on a 416) as
/// (START, TOTAL); `*` totals are None.
pub(super) fn content_range(headers: &HeaderMap) -> Option<(Option<u64>, Option<u64>)> {
    let value = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let (range, total) = value.strip_prefix("bytes ")?.split_once('/')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    let start = match range.trim() {
        "*" => None,
        r => Some(r.split_once('-')?.0.parse().ok()?),
    };
    Some((start, total))
}

/// The root cause of a request failure, without reqwest's URL-laden wrapper.
pub(super) fn reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "the server stopped answering (timed out)".into();
    }
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let text = cause.to_string();
    if text.is_empty() { e.to_string() } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name.clone(), value.parse().unwrap());
        }
        map
    }

    #[test]
    fn content_ranges() {
        let h = |v| headers(&[(header::CONTENT_RANGE, v)]);
        assert_eq!(
            content_range(&h("bytes 100-199/200")),
            Some((Some(100), Some(200)))
        );
        assert_eq!(content_range(&h("bytes 5-9/*")), Some((Some(5), None)));
        assert_eq!(content_range(&h("bytes */200")), Some((None, Some(200))));
        assert_eq!(content_range(&h("items 1-2/3")), None);
        assert_eq!(content_range(&HeaderMap::new()), None);
    }

    #[test]
    fn validators_prefer_strong_etags() {
        let lm = (header::LAST_MODIFIED, "Tue, 01 Apr 2025 00:00:00 GMT");
        assert_eq!(
            validator(&headers(&[(header::ETAG, "\"abc\""), lm.clone()])).as_deref(),
            Some("\"abc\"")
        );
        assert_eq!(
            validator(&headers(&[(header::ETAG, "W/\"abc\""), lm.clone()])).as_deref(),
            Some(lm.1)
        );
        assert_eq!(validator(&HeaderMap::new()), None);
    }

    #[test]
    fn urls() {
        assert!(parse_url("https://example.com/a.img").is_ok());
        assert_eq!(
            parse_url("ftp://example.com/a.img")
                .unwrap_err()
                .to_string(),
            "invalid cloud image URL \"ftp://example.com/a.img\": only http and https URLs can be pulled"
        );
        assert!(parse_url("http://").is_err());
    }

    #[test]
    fn work_files_are_per_url() {
        let dirs = ImageDirs::new(Path::new("/r"));
        let a = Resumable::new(&dirs, "http://h/a.img");
        let b = Resumable::new(&dirs, "http://h/b.img");
        assert_ne!(a.partial, b.partial);
        assert_eq!(a.partial.parent(), Some(Path::new("/r/images/tmp")));
        assert_eq!(url_key("x").len(), 16);
    }
}
