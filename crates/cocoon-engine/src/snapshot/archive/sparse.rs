//! Sparse files: finding the data extents of a file, and the maps that carry
//! them through a tar stream (PAX 1.0 as GNU tar writes it, and cocoon (Go)'s
//! `COCOON.sparse.map`).

use std::fs::File;
use std::io;

use super::MAX_SPARSE_SEGMENTS;

/// One run of data in a sparse file; everything between runs is a hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub(super) struct Segment {
    #[serde(rename = "o")]
    pub offset: u64,
    #[serde(rename = "l")]
    pub len: u64,
}

/// The data extents of the first `len` bytes of `file` (SEEK_DATA/SEEK_HOLE).
/// A filesystem without hole support reports one extent: the whole file.
pub(super) fn data_segments(file: &File, len: u64) -> io::Result<Vec<Segment>> {
    use rustix::fs::{SeekFrom, seek};
    let mut segments = Vec::new();
    let mut pos = 0;
    while pos < len {
        let data = match seek(file, SeekFrom::Data(pos)) {
            Ok(offset) => offset.min(len),
            // ENXIO: nothing but hole after pos.
            Err(rustix::io::Errno::NXIO) => len,
            Err(e) => return Err(e.into()),
        };
        if data >= len {
            break;
        }
        let hole = seek(file, SeekFrom::Hole(data))?.min(len);
        segments.push(Segment {
            offset: data,
            len: hole - data,
        });
        pos = hole;
    }
    Ok(segments)
}

/// The PAX 1.0 sparse map that precedes the data: the segment count, then
/// offset and length of each, one decimal number per line, padded with NULs
/// to a whole 512-byte block. Like GNU tar, it ends with an empty segment at
/// the real size, which is how GNU tar knows to extend a trailing hole.
pub(super) fn encode_pax1_map(segments: &[Segment], real_size: u64) -> Vec<u8> {
    let mut map = format!("{}\n", segments.len() + 1);
    for s in segments {
        map.push_str(&format!("{}\n{}\n", s.offset, s.len));
    }
    map.push_str(&format!("{real_size}\n0\n"));
    let mut map = map.into_bytes();
    map.resize(map.len().next_multiple_of(512), 0);
    map
}

/// Reads a PAX 1.0 sparse map block by block (it may span several).
#[derive(Default)]
pub(super) struct Pax1MapParser {
    count: Option<usize>,
    numbers: Vec<u64>,
    digits: usize,
    current: u64,
    pub segments: Vec<Segment>,
}

impl Pax1MapParser {
    /// Feeds the next block; `Ok(true)` once the map is complete (the rest of
    /// that block is padding).
    pub fn feed(&mut self, block: &[u8]) -> Result<bool, String> {
        for &byte in block {
            match byte {
                b'0'..=b'9' => {
                    self.digits += 1;
                    self.current = self
                        .current
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(u64::from(byte - b'0')))
                        .ok_or("a number overflows 64 bits")?;
                }
                b'\n' if self.digits > 0 => {
                    let value = std::mem::take(&mut self.current);
                    self.digits = 0;
                    if self.accept(value)? {
                        return Ok(true);
                    }
                }
                b'\0' => return Err("the map is shorter than its segment count says".into()),
                _ => return Err(format!("unexpected byte {byte:#04x} in the map")),
            }
        }
        Ok(false)
    }

    fn accept(&mut self, value: u64) -> Result<bool, String> {
        let Some(count) = self.count else {
            let count = usize::try_from(value).unwrap_or(usize::MAX);
            if count > MAX_SPARSE_SEGMENTS {
                return Err(format!(
                    "{value} segments are over the limit of {MAX_SPARSE_SEGMENTS}"
                ));
            }
            self.count = Some(count);
            // A claim, not yet data: grow as segments really arrive.
            self.segments.reserve(count.min(1024));
            return Ok(count == 0);
        };
        self.numbers.push(value);
        if let [offset, len] = self.numbers[..] {
            self.segments.push(Segment { offset, len });
            self.numbers.clear();
        }
        Ok(self.segments.len() == count)
    }
}

/// cocoon (Go)'s `COCOON.sparse.map`: JSON `[{"o":offset,"l":len},…]`
/// (`null` for a file that is all hole).
pub(super) fn parse_legacy_map(json: &[u8]) -> Result<Vec<Segment>, String> {
    let segments: Option<Vec<Segment>> = serde_json::from_slice(json)
        .map_err(|e| format!("COCOON.sparse.map is not a segment list: {e}"))?;
    let segments = segments.unwrap_or_default();
    if segments.len() > MAX_SPARSE_SEGMENTS {
        return Err(format!(
            "{} segments are over the limit of {MAX_SPARSE_SEGMENTS}",
            segments.len()
        ));
    }
    Ok(segments)
}

/// Checks that the segments are in order, do not overlap, stay within the
/// file, and account for exactly the data the entry carries: a map that
/// breaks any of these would scribble outside the file or desynchronise the
/// stream.
pub(super) fn check(segments: &[Segment], real_size: u64, data_size: u64) -> Result<(), String> {
    let mut end = 0u64;
    let mut total = 0u64;
    for (i, s) in segments.iter().enumerate() {
        if s.offset < end {
            return Err(format!(
                "segment {i} at offset {} overlaps the previous one, which ends at {end}",
                s.offset
            ));
        }
        end = s
            .offset
            .checked_add(s.len)
            .filter(|e| *e <= real_size)
            .ok_or_else(|| {
                format!(
                    "segment {i} (offset {}, length {}) goes beyond the file size {real_size}",
                    s.offset, s.len
                )
            })?;
        total += s.len;
    }
    if total != data_size {
        return Err(format!(
            "the segments hold {total} bytes but the entry carries {data_size}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(offset: u64, len: u64) -> Segment {
        Segment { offset, len }
    }

    #[test]
    fn pax1_map_round_trips_across_blocks() {
        let segments: Vec<_> = (0..100).map(|i| seg(i * 1_000_000_007, 4096)).collect();
        let map = encode_pax1_map(&segments, 1 << 40);
        assert_eq!(map.len() % 512, 0);
        assert!(map.len() > 512, "the test must span blocks");
        let mut parser = Pax1MapParser::default();
        let mut blocks = map.chunks(512);
        let used = loop {
            let block = blocks.next().expect("map ended early");
            if parser.feed(block).unwrap() {
                break map.len() - blocks.len() * 512;
            }
        };
        assert_eq!(used, map.len());
        let mut expected = segments.clone();
        expected.push(seg(1 << 40, 0));
        assert_eq!(parser.segments, expected);
    }

    #[test]
    fn pax1_map_rejects_garbage() {
        let mut parser = Pax1MapParser::default();
        assert_eq!(
            parser.feed(b"2\n0\nx\n").unwrap_err(),
            "unexpected byte 0x78 in the map"
        );
        let mut parser = Pax1MapParser::default();
        assert!(
            parser
                .feed(b"99999999999999999999999\n")
                .unwrap_err()
                .contains("overflows")
        );
        let mut parser = Pax1MapParser::default();
        assert!(
            parser
                .feed(b"4194305\n")
                .unwrap_err()
                .contains("over the limit")
        );
    }

    #[test]
    fn check_catches_bad_maps() {
        assert!(check(&[seg(0, 10), seg(100, 0)], 100, 10).is_ok());
        assert_eq!(
            check(&[seg(0, 10), seg(5, 10)], 100, 20).unwrap_err(),
            "segment 1 at offset 5 overlaps the previous one, which ends at 10"
        );
        assert_eq!(
            check(&[seg(95, 10)], 100, 10).unwrap_err(),
            "segment 0 (offset 95, length 10) goes beyond the file size 100"
        );
        assert!(check(&[seg(u64::MAX, 2)], u64::MAX, 2).is_err());
        assert_eq!(
            check(&[seg(0, 10)], 100, 11).unwrap_err(),
            "the segments hold 10 bytes but the entry carries 11"
        );
    }

    #[test]
    fn legacy_map_parses_go_json() {
        assert_eq!(
            parse_legacy_map(br#"[{"o":0,"l":4096},{"o":8192,"l":1}]"#).unwrap(),
            vec![seg(0, 4096), seg(8192, 1)]
        );
        assert_eq!(parse_legacy_map(b"null").unwrap(), vec![]);
        assert!(parse_legacy_map(br#"[{"o":-1,"l":1}]"#).is_err());
    }
}
