//! Where an entry's data goes in its file: all of it from offset 0, or the
//! data segments of a sparse file, in one of three encodings (PAX 1.0 as GNU
//! tar and our export write it; old GNU 'S' headers as the tar crate writes
//! them; cocoon (Go)'s `COCOON.sparse.*` records).

use std::io::Read;

use super::pax::parse_decimal;
use super::reader::{Entry, TarReader};
use super::sparse::{self, Pax1MapParser, Segment};
use super::writer::{BLOCK, BLOCK_LEN};
use super::{ArchiveError, MAX_FILE_SIZE};

pub(super) struct Layout {
    pub real_size: u64,
    pub segments: Vec<Segment>,
}

/// The entry's layout, checked against the data it carries. For PAX 1.0 this
/// reads the map at the start of the data.
pub(super) fn resolve<R: Read>(
    tar: &mut TarReader<R>,
    entry: &Entry,
    name: &str,
) -> Result<Layout, ArchiveError> {
    let bad = |reason: String| ArchiveError::BadSparseMap {
        name: name.to_string(),
        reason,
    };
    let pax = &entry.pax;
    let size_record = |key: &str| {
        pax.get(key)
            .and_then(|v| parse_decimal(v))
            .ok_or_else(|| bad(format!("{key} is missing or not a number")))
    };
    let (real_size, segments, data_size) = if let Some((real_size, segments)) = &entry.gnu_sparse {
        (*real_size, segments.clone(), entry.size)
    } else if pax.contains_key("GNU.sparse.major") || pax.contains_key("GNU.sparse.minor") {
        let version = |key| {
            pax.get(key)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let (major, minor) = (version("GNU.sparse.major"), version("GNU.sparse.minor"));
        if (major.as_str(), minor.as_str()) != ("1", "0") {
            return Err(ArchiveError::Unsupported {
                name: name.to_string(),
                what: format!("GNU sparse format {major}.{minor} is not supported (only 1.0 is)"),
            });
        }
        let real_size = within_limit(size_record("GNU.sparse.realsize")?, name)?;
        let (segments, map_size) = read_pax1_map(tar, name)?;
        (real_size, segments, entry.size - map_size)
    } else if pax.keys().any(|k| k.starts_with("GNU.sparse.")) {
        return Err(ArchiveError::Unsupported {
            name: name.to_string(),
            what: "GNU sparse format 0.x is not supported; write the archive with tar --sparse-version=1.0".into(),
        });
    } else if let Some(map) = pax.get("COCOON.sparse.map") {
        let segments = sparse::parse_legacy_map(map).map_err(bad)?;
        (size_record("COCOON.sparse.size")?, segments, entry.size)
    } else {
        let whole = Segment {
            offset: 0,
            len: entry.size,
        };
        (entry.size, vec![whole], entry.size)
    };
    let real_size = within_limit(real_size, name)?;
    sparse::check(&segments, real_size, data_size).map_err(bad)?;
    Ok(Layout {
        real_size,
        segments,
    })
}

fn within_limit(real_size: u64, name: &str) -> Result<u64, ArchiveError> {
    if real_size > MAX_FILE_SIZE {
        return Err(ArchiveError::TooLarge {
            name: name.to_string(),
            what: "file size",
            size: real_size,
            limit: MAX_FILE_SIZE,
        });
    }
    Ok(real_size)
}

/// The map at the start of a PAX 1.0 entry's data, and how many bytes
/// (whole blocks) it took.
fn read_pax1_map<R: Read>(
    tar: &mut TarReader<R>,
    name: &str,
) -> Result<(Vec<Segment>, u64), ArchiveError> {
    let mut parser = Pax1MapParser::default();
    let mut block = [0u8; BLOCK_LEN];
    let mut used = 0;
    loop {
        if tar.remaining() < BLOCK {
            return Err(ArchiveError::BadSparseMap {
                name: name.to_string(),
                reason: "the map runs past the entry's data".into(),
            });
        }
        tar.read_data_exact(&mut block)?;
        used += BLOCK;
        let done = parser
            .feed(&block)
            .map_err(|reason| ArchiveError::BadSparseMap {
                name: name.to_string(),
                reason,
            })?;
        if done {
            return Ok((parser.segments, used));
        }
    }
}
