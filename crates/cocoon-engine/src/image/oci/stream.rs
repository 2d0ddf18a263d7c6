//! One layer blob on its way from the socket to the unpacker, never on
//! disk: the download task checks the exact size and the digest as the
//! bytes pass and hands them over a bounded channel to the blocking thread
//! that decompresses and unpacks them ([`ChannelReader`]).
//!
//! The unpacker sees the end of the stream only once the download has
//! ended with every byte there and the digest verified ([`Piece::End`]): a
//! blob cut short, too long or with the wrong content is an error on the
//! reading side too, never a clean end, so nothing built from it can pass
//! for a complete layer. What it unpacked before is in the work directory,
//! which the caller removes.

use std::io::{self, BufRead, Read};

use bytes::{Buf, Bytes};
use futures_util::StreamExt;
use oci_client::errors::{DigestError, OciDistributionError};
use oci_client::{Client, Reference};
use tokio::sync::mpsc;

use super::error::http_error;
use super::registry::within;
use super::{LayerDescriptor, PullError, PullLimits};

/// Batches in flight between the download and the unpacker: enough to ride
/// out a slow write in the unpacker, few enough to bound the memory held
/// (at most [`CHUNKS_PER_BATCH`] of the HTTP client's chunks each, which are
/// at most a few hundred KiB).
pub(super) const CHUNKS_IN_FLIGHT: usize = 16;

/// The most chunks handed over at once: whatever the socket has ready goes
/// in one batch, one wake-up of the unpacker (and one of the download when
/// the unpacker frees a place) instead of one per chunk.
const CHUNKS_PER_BATCH: usize = 32;

/// What the download hands to the unpacker.
pub(super) enum Piece {
    Data(Vec<Bytes>),
    /// Every byte arrived, exactly the descriptor's size, digest verified.
    End,
}

/// Why a download did not finish.
pub(super) enum Fetch {
    Failed(PullError),
    /// The unpacker stopped reading: it failed, and its error is the pull's.
    Abandoned,
}

/// The unpacker's side of the channel, as a buffered reader over the
/// chunks the download sends.
pub(super) struct ChannelReader {
    pieces: mpsc::Receiver<Piece>,
    chunk: Bytes,
    /// The rest of the current batch.
    queued: std::vec::IntoIter<Bytes>,
    ended: bool,
}

impl ChannelReader {
    pub(super) fn new(pieces: mpsc::Receiver<Piece>) -> ChannelReader {
        ChannelReader {
            pieces,
            chunk: Bytes::new(),
            queued: Vec::new().into_iter(),
            ended: false,
        }
    }

    /// Waits (blocking) until there is data or the verified end.
    fn fill(&mut self) -> io::Result<()> {
        while self.chunk.is_empty() && !self.ended {
            if let Some(chunk) = self.queued.next() {
                self.chunk = chunk;
                continue;
            }
            match self.pieces.blocking_recv() {
                Some(Piece::Data(batch)) => self.queued = batch.into_iter(),
                Some(Piece::End) => self.ended = true,
                // The download failed; it reports why.
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the layer download stopped",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Reads what is left up to the verified end: a tar ends before its
    /// blob does (end-of-archive padding, the gzip trailer), and the layer
    /// counts only once the whole blob is verified.
    pub(super) fn drain(&mut self) -> io::Result<()> {
        loop {
            self.fill()?;
            if self.chunk.is_empty() {
                return Ok(());
            }
            self.chunk.clear();
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for ChannelReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.fill()?;
        Ok(&self.chunk)
    }

    fn consume(&mut self, amount: usize) {
        self.chunk.advance(amount.min(self.chunk.len()));
    }
}

/// Streams one blob into `pieces`: exactly `size` bytes (the descriptor's),
/// each read waiting at most the read timeout, the digest verified at the
/// end, and only then [`Piece::End`]. Stops as soon as the unpacker stops
/// reading.
pub(super) async fn download(
    client: &Client,
    reference: &Reference,
    layer: &LayerDescriptor,
    size: u64,
    limits: &PullLimits,
    pieces: mpsc::Sender<Piece>,
) -> Result<(), Fetch> {
    let what = format!("downloading layer {}", layer.digest);
    let wrong_size = |got: u64, more: bool| blob_size(reference, layer, size, got, more);
    let stream = within(
        reference,
        limits,
        &what,
        client.pull_blob_stream(reference, &layer.descriptor),
    )
    .await
    .map_err(Fetch::Failed)?
    .map_err(|e| Fetch::Failed(request_error(reference, layer, &what, limits, e)))?;
    if let Some(announced) = stream.content_length
        && announced != size
    {
        return Err(Fetch::Failed(wrong_size(announced, announced > size)));
    }
    let mut got = 0u64;
    // The stream verifies the digest when it ends; a mismatch is an error item.
    let mut stream = stream.ready_chunks(CHUNKS_PER_BATCH);
    loop {
        let next = tokio::select! {
            next = within(reference, limits, &what, stream.next()) => next.map_err(Fetch::Failed)?,
            () = pieces.closed() => return Err(Fetch::Abandoned),
        };
        let Some(items) = next else { break };
        let mut batch = Vec::with_capacity(items.len());
        for chunk in items {
            let chunk = chunk.map_err(|e| {
                Fetch::Failed(chunk_error(reference, layer, &what, limits, got, size, e))
            })?;
            got += chunk.len() as u64;
            if got > size {
                return Err(Fetch::Failed(wrong_size(got, true)));
            }
            batch.push(chunk);
        }
        if pieces.send(Piece::Data(batch)).await.is_err() {
            return Err(Fetch::Abandoned);
        }
    }
    if got != size {
        return Err(Fetch::Failed(wrong_size(got, false)));
    }
    pieces.send(Piece::End).await.map_err(|_| Fetch::Abandoned)
}

/// `got` bytes of a blob of `size` (`more`: and more were coming).
fn blob_size(
    reference: &Reference,
    layer: &LayerDescriptor,
    size: u64,
    got: u64,
    more: bool,
) -> PullError {
    PullError::BlobSize {
        reference: reference.whole(),
        digest: layer.digest.clone(),
        expected: size,
        got,
        more,
    }
}

fn request_error(
    reference: &Reference,
    layer: &LayerDescriptor,
    what: &str,
    limits: &PullLimits,
    e: OciDistributionError,
) -> PullError {
    match e {
        OciDistributionError::RequestError(e) => {
            http_error(reference, what, limits.read_timeout.as_secs(), &e)
        }
        other => PullError::Download {
            reference: reference.whole(),
            digest: layer.digest.clone(),
            source: other,
        },
    }
}

/// The error of a failed chunk: a stall, a blob cut short, or (every byte
/// there) content that does not match the digest.
fn chunk_error(
    reference: &Reference,
    layer: &LayerDescriptor,
    what: &str,
    limits: &PullLimits,
    got: u64,
    size: u64,
    e: io::Error,
) -> PullError {
    let timed_out = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<reqwest::Error>())
        .is_some_and(reqwest::Error::is_timeout);
    if timed_out {
        return PullError::Stalled {
            reference: reference.whole(),
            what: what.to_string(),
            seconds: limits.read_timeout.as_secs(),
        };
    }
    if got != size {
        // Cut short (or a digest that cannot match): the size says more.
        return blob_size(reference, layer, size, got, false);
    }
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<DigestError>())
    {
        Some(DigestError::VerificationError { actual, .. }) => PullError::BlobDigest {
            reference: reference.whole(),
            digest: layer.digest.clone(),
            actual: actual.clone(),
        },
        _ => PullError::Download {
            reference: reference.whole(),
            digest: layer.digest.clone(),
            source: e.into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(pieces: Vec<Piece>, close: bool) -> (ChannelReader, Option<mpsc::Sender<Piece>>) {
        let (sender, receiver) = mpsc::channel(pieces.len().max(1));
        for piece in pieces {
            assert!(sender.try_send(piece).is_ok(), "room in the channel");
        }
        (ChannelReader::new(receiver), (!close).then_some(sender))
    }

    fn data(bytes: &'static [u8]) -> Piece {
        Piece::Data(vec![Bytes::from_static(bytes)])
    }

    #[test]
    fn the_stream_ends_only_at_the_verified_end() {
        let batch = ["c", "", "de"].map(|s| Bytes::from_static(s.as_bytes()));
        let batch = Piece::Data(batch.to_vec());
        let (mut r, _sender) = reader(vec![data(b"ab"), data(b""), batch, Piece::End], false);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abcde");
        // Past the end it stays ended, even with the sender alive.
        assert_eq!(r.read(&mut [0u8; 4]).unwrap(), 0);
        r.drain().unwrap();
    }

    #[test]
    fn a_download_that_stops_is_an_error_never_an_end() {
        let (mut r, _) = reader(vec![data(b"abc")], true);
        let mut out = Vec::new();
        let err = r.read_to_end(&mut out).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(err.to_string(), "the layer download stopped");
        assert_eq!(out, b"abc");
        let (mut r, _) = reader(vec![data(b"abc")], true);
        assert_eq!(
            r.drain().unwrap_err().to_string(),
            "the layer download stopped"
        );
    }

    #[test]
    fn drain_reads_what_the_tar_left_up_to_the_end() {
        let (mut r, sender) = reader(vec![data(b"head"), data(b"trailer")], false);
        let mut head = [0u8; 4];
        r.read_exact(&mut head).unwrap();
        let sender = sender.unwrap();
        let feeder = std::thread::spawn(move || {
            sender.blocking_send(data(b"more")).unwrap();
            sender.blocking_send(Piece::End).unwrap();
        });
        r.drain().unwrap();
        feeder.join().unwrap();
    }

    #[test]
    fn buffered_reads_hand_out_each_chunk_without_copying() {
        let (mut r, _sender) = reader(vec![data(b"0123456789"), Piece::End], false);
        assert_eq!(r.fill_buf().unwrap(), b"0123456789");
        r.consume(4);
        assert_eq!(r.fill_buf().unwrap(), b"456789");
        r.consume(100);
        assert!(r.fill_buf().unwrap().is_empty());
    }
}
