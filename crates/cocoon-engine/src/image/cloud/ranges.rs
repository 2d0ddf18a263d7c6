//! One cloud image over several connections (`pull_conns`, upstream #76):
//! hosts such as ghcr throttle each stream to a fraction of the link. When
//! the first answer shows the server takes ranges (`Accept-Ranges: bytes`,
//! a length, a strong validator), the file is cut into `pull_conns`
//! contiguous parts: the first is read from that answer, the others are
//! asked for with `Range` and `If-Range` (a file that changed answers 200,
//! which is refused), each written at its offset into the pre-sized partial
//! file. The sha256 is taken once the file is whole (parts arrive out of
//! order).
//!
//! Interrupted, the download keeps its longest complete prefix (the first
//! part, then the next while each is whole) and the next pull resumes from
//! there over one connection, as a single-stream download would.

use std::cell::Cell;
use std::fs::File;
use std::os::unix::fs::FileExt;

use reqwest::StatusCode;
use reqwest::header;
use sha2::{Digest, Sha256};

use super::download::{Downloaded, Resumable, content_range, foreign, hash_file, reason};
use super::error::{CloudError, io_err};
use super::{CloudProgress, Step};
use crate::image::store::digest_of;

/// Below this a file comes over one connection: more cost a round trip each
/// and gain nothing.
pub(super) const MIN_PARALLEL: u64 = 8 << 20;

pub(super) struct Parallel<'a> {
    pub url: &'a str,
    pub parsed: &'a reqwest::Url,
    pub client: &'a reqwest::Client,
    pub files: &'a Resumable,
    pub total: u64,
    pub validator: String,
    pub conns: usize,
}

/// A part: bytes `start..end`, `done` of them written.
struct Part {
    start: u64,
    end: u64,
    done: Cell<u64>,
}

impl Parallel<'_> {
    /// Downloads the whole file; `first` is the server's 200 answer to the
    /// plain GET, which carries the first part.
    pub async fn receive(
        self,
        first: reqwest::Response,
        progress: &dyn CloudProgress,
    ) -> Result<Downloaded, CloudError> {
        progress.begin(Step::Download {
            url: self.url,
            resumed_from: 0,
            total: Some(self.total),
        });
        let sniff = |head: &[u8]| foreign(self.url, self.files, head);
        let partial = &self.files.partial;
        self.files.save(Some(&self.validator), Some(self.total))?;
        let file = File::create(partial).map_err(io_err("cannot create", partial))?;
        file.set_len(self.total)
            .map_err(io_err("cannot size", partial))?;
        let parts = split(self.total, self.conns);
        let done = Cell::new(0u64);
        let advance = |n: u64| {
            done.set(done.get() + n);
            progress.advance(done.get());
        };
        let mut work = vec![
            Box::pin(self.first(first, &parts[0], &file, &sniff, &advance))
                as std::pin::Pin<Box<dyn Future<Output = Result<(), CloudError>>>>,
        ];
        for part in &parts[1..] {
            work.push(Box::pin(self.part(part, &file, &advance)));
        }
        if let Err(e) = futures_util::future::try_join_all(work).await {
            return Err(self.keep_prefix(&file, &parts, e));
        }
        file.sync_all().map_err(io_err("cannot sync", partial))?;
        let mut hasher = Sha256::new();
        hash_file(partial, &mut hasher)?;
        Ok(Downloaded {
            digest: digest_of(hasher),
            size: self.total,
            resumed_from: 0,
        })
    }

    /// The first part, from the answer to the plain GET: its first bytes
    /// are held back until they are known not to be an error page.
    async fn first(
        &self,
        mut response: reqwest::Response,
        part: &Part,
        file: &File,
        sniff: &impl Fn(&[u8]) -> Result<(), CloudError>,
        advance: &impl Fn(u64),
    ) -> Result<(), CloudError> {
        let mut head = Vec::new();
        while part.done.get() + (head.len() as u64) < part.end {
            let Some(chunk) = response.chunk().await.map_err(|e| self.failed(&e))? else {
                return Err(self.closed());
            };
            let room = part.end - part.done.get() - head.len() as u64;
            let chunk = &chunk[..fit(room, chunk.len())];
            if part.done.get() == 0 && head.len() < 512 {
                head.extend_from_slice(chunk);
                if head.len() >= 512 || head.len() as u64 == part.end {
                    sniff(&head)?;
                    self.write(file, part, &head, advance)?;
                    head.clear();
                }
                continue;
            }
            self.write(file, part, chunk, advance)?;
        }
        Ok(())
    }

    /// Any other part, asked for by range.
    async fn part(
        &self,
        part: &Part,
        file: &File,
        advance: &impl Fn(u64),
    ) -> Result<(), CloudError> {
        let mut response = self
            .client
            .get(self.parsed.clone())
            .header(
                header::RANGE,
                format!("bytes={}-{}", part.start, part.end - 1),
            )
            .header(header::IF_RANGE, self.validator.as_str())
            .send()
            .await
            .map_err(|e| self.failed(&e))?;
        let expected = Some((Some(part.start), Some(self.total)));
        if response.status() != StatusCode::PARTIAL_CONTENT
            || content_range(response.headers()) != expected
        {
            return Err(CloudError::Interrupted {
                url: self.url.to_string(),
                done: 0,
                total: Some(self.total),
                reason: format!(
                    "the server answered a range request with {} (the file changed?)",
                    response.status()
                ),
                kept: false,
            });
        }
        while part.start + part.done.get() < part.end {
            let Some(chunk) = response.chunk().await.map_err(|e| self.failed(&e))? else {
                return Err(self.closed());
            };
            let room = part.end - part.start - part.done.get();
            let chunk = &chunk[..fit(room, chunk.len())];
            self.write(file, part, chunk, advance)?;
        }
        Ok(())
    }

    fn write(
        &self,
        file: &File,
        part: &Part,
        bytes: &[u8],
        advance: &impl Fn(u64),
    ) -> Result<(), CloudError> {
        file.write_all_at(bytes, part.start + part.done.get())
            .map_err(io_err("cannot write", &self.files.partial))?;
        part.done.set(part.done.get() + bytes.len() as u64);
        advance(bytes.len() as u64);
        Ok(())
    }

    fn failed(&self, e: &reqwest::Error) -> CloudError {
        CloudError::Interrupted {
            url: self.url.to_string(),
            done: 0,
            total: Some(self.total),
            reason: reason(e),
            kept: false,
        }
    }

    fn closed(&self) -> CloudError {
        CloudError::Interrupted {
            url: self.url.to_string(),
            done: 0,
            total: Some(self.total),
            reason: "the connection closed early".into(),
            kept: false,
        }
    }

    /// After a failure: the partial file cut to its longest complete
    /// prefix, kept for the next pull (or dropped when empty); the error
    /// says what is kept.
    fn keep_prefix(&self, file: &File, parts: &[Part], e: CloudError) -> CloudError {
        let mut prefix = 0;
        for part in parts {
            prefix += part.done.get();
            if part.start + part.done.get() < part.end {
                break;
            }
        }
        let kept = prefix > 0 && file.set_len(prefix).and_then(|()| file.sync_all()).is_ok();
        if !kept {
            self.files.discard();
        }
        match e {
            CloudError::Interrupted { reason, .. } => CloudError::Interrupted {
                url: self.url.to_string(),
                done: prefix,
                total: Some(self.total),
                reason,
                kept,
            },
            other => {
                self.files.discard();
                other
            }
        }
    }
}

/// How much of a chunk of `len` bytes fits in `room`.
fn fit(room: u64, len: usize) -> usize {
    usize::try_from(room).map_or(len, |room| room.min(len))
}

/// `total` bytes cut into `conns` contiguous parts (the last may be
/// shorter).
fn split(total: u64, conns: usize) -> Vec<Part> {
    let size = total.div_ceil(conns.max(1) as u64).max(1);
    (0..total)
        .step_by(usize::try_from(size).unwrap_or(usize::MAX))
        .map(|start| Part {
            start,
            end: (start + size).min(total),
            done: Cell::new(0),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_file_once() {
        for (total, conns) in [(10u64, 3usize), (9, 3), (1, 8), (100 << 20, 8), (7, 64)] {
            let parts = split(total, conns);
            assert!(parts.len() <= conns);
            assert_eq!(parts[0].start, 0);
            assert_eq!(parts.last().unwrap().end, total);
            assert!(parts.windows(2).all(|w| w[0].end == w[1].start));
            assert!(parts.iter().all(|p| p.start < p.end));
        }
    }
}
