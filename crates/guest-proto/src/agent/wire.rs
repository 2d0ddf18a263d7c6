//! Lines on the wire: Go-compatible encoding, and a bounded line reader.

use std::io::{self, BufRead};

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serializer};

use super::Frame;

/// Upstream's `frameMaxBuf`: a line must fit in 8 MiB with its newline
/// (Go's `bufio.Scanner` fails with "token too long" otherwise).
pub const MAX_LINE: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("read frame: {0}")]
    Io(#[from] io::Error),
    #[error("read frame: line does not fit in {MAX_LINE} bytes")]
    TooLong,
    #[error("decode frame: {0}")]
    Json(#[from] serde_json::Error),
}

/// `frame` as one line, newline included, byte for byte what upstream's
/// `json.Marshal` writes: its field order and omissions (the struct's serde
/// attributes), and its escaping of `<`, `>`, `&`, U+2028 and U+2029.
pub fn encode(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + frame.data.len() * 4 / 3);
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, GoFormatter);
    serde::Serialize::serialize(frame, &mut serializer)
        .expect("a frame always serialises: string keys, no floats");
    out.push(b'\n');
    out
}

/// serde_json's compact output with Go's HTML-safe string escapes.
struct GoFormatter;

impl serde_json::ser::Formatter for GoFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let escape = match c {
                '<' => "\\u003c",
                '>' => "\\u003e",
                '&' => "\\u0026",
                '\u{2028}' => "\\u2028",
                '\u{2029}' => "\\u2029",
                _ => continue,
            };
            writer.write_all(&fragment.as_bytes()[start..i])?;
            writer.write_all(escape.as_bytes())?;
            start = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

/// Reads frames one line at a time, refusing a line over [`MAX_LINE`]
/// before buffering it whole. Like Go's `bufio.Scanner` (`ScanLines`), a
/// last line without a newline still counts and a trailing `\r` is dropped.
pub struct FrameReader<R> {
    inner: R,
    line: Vec<u8>,
}

impl<R: BufRead> FrameReader<R> {
    pub fn new(inner: R) -> FrameReader<R> {
        FrameReader {
            inner,
            line: Vec::new(),
        }
    }

    /// The next frame, or `None` at a clean end of stream.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtoError> {
        if !self.next_line()? {
            return Ok(None);
        }
        let frame = serde_json::from_slice(&self.line)?;
        Ok(Some(frame))
    }

    fn next_line(&mut self) -> Result<bool, ProtoError> {
        self.line.clear();
        loop {
            let buf = match self.inner.fill_buf() {
                Ok(buf) => buf,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if buf.is_empty() {
                return Ok(!self.line.is_empty());
            }
            let (taken, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i, true),
                None => (buf.len(), false),
            };
            if self.line.len() + taken >= MAX_LINE {
                return Err(ProtoError::TooLong);
            }
            self.line.extend_from_slice(&buf[..taken]);
            self.inner.consume(taken + usize::from(done));
            if done {
                if self.line.last() == Some(&b'\r') {
                    self.line.pop();
                }
                return Ok(true);
            }
        }
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }
}

/// Go's encoding of `[]byte`: standard base64, padded; `null` is empty.
pub(super) mod base64_bytes {
    use super::*;

    pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(data))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        let Some(text) = text else {
            return Ok(Vec::new());
        };
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(|e| serde::de::Error::custom(format!("data is not base64: {e}")))
    }
}

/// Go decodes `null` into a field's zero value; so do we.
pub(super) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}
