//! Reading the tar stream. The framing is ours; the tar crate only decodes
//! header fields. Its `Archive` reads PAX and long-name headers into memory
//! whatever their size, and takes an end of input at a header boundary for
//! the end of the archive: an import must bound the one and catch the other.

use std::collections::BTreeMap;
use std::io::{self, Read};

use super::pax::{parse_decimal, parse_pax};
use super::sparse::Segment;
use super::writer::{BLOCK, BLOCK_LEN};
use super::{ArchiveError, MAX_DATA_SIZE, MAX_PAX_SIZE, MAX_SPARSE_SEGMENTS};

/// GNU long names are file names here; anything longer is not one.
const MAX_LONG_NAME: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Regular,
    /// Old GNU sparse ('S'): the map is in the header.
    GnuSparse,
    HardLink,
    Symlink,
    CharDevice,
    BlockDevice,
    Directory,
    Fifo,
    Other(u8),
}

impl Kind {
    fn of(typeflag: u8) -> Kind {
        match typeflag {
            // '7' is "contiguous file", a regular file to everyone but Masscomp.
            b'0' | b'\0' | b'7' => Kind::Regular,
            b'S' => Kind::GnuSparse,
            b'1' => Kind::HardLink,
            b'2' => Kind::Symlink,
            b'3' => Kind::CharDevice,
            b'4' => Kind::BlockDevice,
            b'5' => Kind::Directory,
            b'6' => Kind::Fifo,
            other => Kind::Other(other),
        }
    }

    pub fn describe(self) -> String {
        match self {
            Kind::Regular | Kind::GnuSparse => "regular file".into(),
            Kind::HardLink => "hard link".into(),
            Kind::Symlink => "symbolic link".into(),
            Kind::CharDevice => "character device".into(),
            Kind::BlockDevice => "block device".into(),
            Kind::Directory => "directory".into(),
            Kind::Fifo => "FIFO".into(),
            Kind::Other(t) => format!("entry of unknown type {:?}", char::from(t)),
        }
    }
}

/// One member, its extended headers applied.
#[derive(Debug)]
pub(super) struct Entry {
    /// `GNU.sparse.name`, else PAX `path`, else a GNU long name, else the
    /// header's (prefix and) name. Not yet checked.
    pub name: Vec<u8>,
    pub kind: Kind,
    /// Data bytes that follow in the stream.
    pub size: u64,
    pub pax: BTreeMap<String, Vec<u8>>,
    /// Old GNU sparse: real size and data segments.
    pub gnu_sparse: Option<(u64, Vec<Segment>)>,
}

impl Entry {
    pub fn display_name(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

pub(super) struct TarReader<R> {
    inner: R,
    /// Bytes of the tar stream consumed, for messages.
    offset: u64,
    /// Data of the current entry not yet read, and its padding.
    remaining: u64,
    padding: u64,
    /// The current (or last) entry's name, for messages.
    current: String,
}

impl<R: Read> TarReader<R> {
    pub fn new(inner: R) -> Self {
        TarReader {
            inner,
            offset: 0,
            remaining: 0,
            padding: 0,
            current: String::new(),
        }
    }

    /// The next member, or `None` at the end-of-archive marker. The data of
    /// the previous one is skipped if it was not read.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, ArchiveError> {
        self.skip_current()?;
        let mut pax: Option<BTreeMap<String, Vec<u8>>> = None;
        let mut long_name: Option<Vec<u8>> = None;
        loop {
            let offset = self.offset;
            let pending = pax.is_some() || long_name.is_some();
            let Some(block) = self.read_block()? else {
                return Err(self.truncated(offset, pending));
            };
            if block.iter().all(|b| *b == 0) {
                return self.end_of_archive(offset, pending);
            }
            check_checksum(&block, offset)?;
            let header = tar::Header::from_byte_slice(&block);
            let header_name = header.path_bytes().into_owned();
            let shown = String::from_utf8_lossy(&header_name).into_owned();
            let size = header.entry_size().map_err(|e| {
                corrupt(
                    offset,
                    &format!("bad size field in the header of {shown:?}: {e}"),
                )
            })?;
            match block[156] {
                b'x' => {
                    if pax.is_some() {
                        return Err(corrupt(offset, "two PAX headers for one entry"));
                    }
                    let data = self.read_extension(&shown, "PAX header", size, MAX_PAX_SIZE)?;
                    let records = parse_pax(&data).map_err(|reason| ArchiveError::BadPax {
                        name: shown,
                        reason,
                    })?;
                    pax = Some(records);
                }
                b'L' => {
                    let mut data =
                        self.read_extension(&shown, "GNU long name", size, MAX_LONG_NAME)?;
                    while data.last() == Some(&0) {
                        data.pop();
                    }
                    long_name = Some(data);
                }
                // The target of a link, which is refused anyway.
                b'K' => {
                    self.read_extension(&shown, "GNU long link name", size, MAX_LONG_NAME)?;
                }
                b'g' => {
                    return Err(ArchiveError::Unsupported {
                        name: shown,
                        what: "a global PAX header is not supported".into(),
                    });
                }
                typeflag => {
                    let pax = pax.unwrap_or_default();
                    let name = pax
                        .get("GNU.sparse.name")
                        .or_else(|| pax.get("path"))
                        .cloned()
                        .or(long_name)
                        .unwrap_or(header_name);
                    return self.entry(header, typeflag, name, size, pax).map(Some);
                }
            }
        }
    }

    /// The error for an input that ends where a header should be.
    fn truncated(&self, offset: u64, pending: bool) -> ArchiveError {
        let what = if offset == 0 {
            "the archive is empty".to_string()
        } else if pending {
            format!("an extended header at byte {offset} has no entry after it")
        } else {
            format!(
                "it ends after {:?} without an end-of-archive marker",
                self.current
            )
        };
        ArchiveError::Truncated { what }
    }

    /// After a zero block at `offset`: the end of the archive if a second
    /// zero block follows, an error otherwise.
    fn end_of_archive(
        &mut self,
        offset: u64,
        pending: bool,
    ) -> Result<Option<Entry>, ArchiveError> {
        if pending {
            return Err(corrupt(
                offset,
                "an extended header is followed by the end of the archive",
            ));
        }
        match self.read_block()? {
            None => Err(ArchiveError::Truncated {
                what: "the end-of-archive marker is incomplete".into(),
            }),
            Some(b) if b.iter().any(|b| *b != 0) => {
                Err(corrupt(offset, "a zero block in the middle of the archive"))
            }
            Some(_) => Ok(None),
        }
    }

    fn entry(
        &mut self,
        header: &tar::Header,
        typeflag: u8,
        name: Vec<u8>,
        header_size: u64,
        pax: BTreeMap<String, Vec<u8>>,
    ) -> Result<Entry, ArchiveError> {
        let shown = String::from_utf8_lossy(&name).into_owned();
        let size = match pax.get("size") {
            Some(value) => parse_decimal(value).ok_or_else(|| ArchiveError::BadPax {
                name: shown.clone(),
                reason: format!("size {:?} is not a number", String::from_utf8_lossy(value)),
            })?,
            None => header_size,
        };
        if size > MAX_DATA_SIZE {
            return Err(ArchiveError::TooLarge {
                name: shown,
                what: "entry data",
                size,
                limit: MAX_DATA_SIZE,
            });
        }
        let kind = Kind::of(typeflag);
        let gnu_sparse = match kind {
            Kind::GnuSparse => Some(self.read_gnu_sparse(header, &shown)?),
            _ => None,
        };
        self.remaining = size;
        self.padding = size.next_multiple_of(BLOCK) - size;
        self.current = shown;
        Ok(Entry {
            name,
            kind,
            size,
            pax,
            gnu_sparse,
        })
    }

    /// Reads the current entry's data; 0 once it is all read.
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, ArchiveError> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        loop {
            match self.inner.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(ArchiveError::Truncated {
                        what: format!(
                            "entry {:?} stops {} bytes short",
                            self.current, self.remaining
                        ),
                    });
                }
                Ok(n) => {
                    self.remaining -= n as u64;
                    self.offset += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(ArchiveError::from_read(e, || {
                        format!("reading entry {:?}", self.current)
                    }));
                }
            }
        }
    }

    pub fn read_data_exact(&mut self, mut buf: &mut [u8]) -> Result<(), ArchiveError> {
        while !buf.is_empty() {
            if self.remaining == 0 {
                return Err(ArchiveError::Truncated {
                    what: format!(
                        "entry {:?} holds less data than its header says",
                        self.current
                    ),
                });
            }
            let n = self.read_data(buf)?;
            buf = &mut buf[n..];
        }
        Ok(())
    }

    /// Data bytes of the current entry not yet read.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Reads what follows the end-of-archive marker (tar pads to a record
    /// size) to the end, so the decompressor checks its trailer (gzip CRC and
    /// length, zstd frame checksum).
    pub fn finish(mut self) -> Result<(), ArchiveError> {
        let mut scratch = vec![0u8; 64 << 10];
        loop {
            match self.inner.read(&mut scratch) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(ArchiveError::from_read(e, || {
                        "after the end-of-archive marker".into()
                    }));
                }
            }
        }
    }

    fn skip_current(&mut self) -> Result<(), ArchiveError> {
        let mut scratch = [0u8; 8192];
        while self.remaining > 0 {
            self.read_data(&mut scratch)?;
        }
        let padding = super::small_len(std::mem::take(&mut self.padding));
        self.fill_exactly(&mut scratch[..padding], || "the padding after an entry")
    }

    /// One header block, or `None` at a clean end of input.
    fn read_block(&mut self) -> Result<Option<[u8; BLOCK_LEN]>, ArchiveError> {
        let mut block = [0u8; BLOCK_LEN];
        let got = self.fill(&mut block)?;
        match got {
            0 => Ok(None),
            n if n == block.len() => Ok(Some(block)),
            n => Err(ArchiveError::Truncated {
                what: format!(
                    "the header at byte {} stops after {n} of 512 bytes",
                    self.offset - n as u64
                ),
            }),
        }
    }

    /// An extension header's data (bounded), its padding skipped.
    fn read_extension(
        &mut self,
        name: &str,
        what: &'static str,
        size: u64,
        limit: u64,
    ) -> Result<Vec<u8>, ArchiveError> {
        if size > limit {
            return Err(ArchiveError::TooLarge {
                name: name.to_string(),
                what,
                size,
                limit,
            });
        }
        let mut data = vec![0u8; super::small_len(size.next_multiple_of(BLOCK))];
        self.fill_exactly(&mut data, || "an extended header")?;
        data.truncate(super::small_len(size));
        Ok(data)
    }

    fn read_gnu_sparse(
        &mut self,
        header: &tar::Header,
        name: &str,
    ) -> Result<(u64, Vec<Segment>), ArchiveError> {
        let bad = |reason: String| ArchiveError::BadSparseMap {
            name: name.to_string(),
            reason,
        };
        let gnu = header
            .as_gnu()
            .ok_or_else(|| bad("a GNU sparse entry without a GNU header".into()))?;
        let real_size = gnu.real_size().map_err(|e| bad(e.to_string()))?;
        let mut segments = Vec::new();
        let mut add = |entries: &[tar::GnuSparseHeader]| -> Result<(), ArchiveError> {
            for entry in entries.iter().filter(|e| !e.is_empty()) {
                let offset = entry.offset().map_err(|e| bad(e.to_string()))?;
                let len = entry.length().map_err(|e| bad(e.to_string()))?;
                if segments.len() == MAX_SPARSE_SEGMENTS {
                    return Err(bad(format!("more than {MAX_SPARSE_SEGMENTS} segments")));
                }
                segments.push(Segment { offset, len });
            }
            Ok(())
        };
        add(&gnu.sparse)?;
        let mut extended = gnu.is_extended();
        while extended {
            let mut ext = tar::GnuExtSparseHeader::new();
            let got = self.fill(ext.as_mut_bytes())?;
            if got != BLOCK_LEN {
                return Err(ArchiveError::Truncated {
                    what: format!("the sparse map of {name:?} is incomplete"),
                });
            }
            add(ext.sparse())?;
            extended = ext.is_extended();
        }
        Ok((real_size, segments))
    }

    fn fill_exactly(
        &mut self,
        buf: &mut [u8],
        what: impl Fn() -> &'static str,
    ) -> Result<(), ArchiveError> {
        if self.fill(buf)? != buf.len() {
            return Err(ArchiveError::Truncated {
                what: format!("{} after {:?} is incomplete", what(), self.current),
            });
        }
        Ok(())
    }

    /// Reads until `buf` is full or the input ends; how much was read.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, ArchiveError> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(ArchiveError::from_read(e, || {
                        format!("reading after {:?}", self.current)
                    }));
                }
            }
        }
        self.offset += got as u64;
        Ok(got)
    }
}

fn corrupt(offset: u64, reason: &str) -> ArchiveError {
    ArchiveError::Corrupt {
        offset,
        reason: reason.to_string(),
    }
}

/// The checksum is the byte sum with the checksum field as spaces; old tars
/// summed signed chars, so either is accepted (as GNU tar does).
fn check_checksum(block: &[u8], offset: u64) -> Result<(), ArchiveError> {
    let field = &block[148..156];
    let text: String = field
        .iter()
        .take_while(|b| **b != 0)
        .map(|b| char::from(*b))
        .collect();
    let Ok(stored) = i64::from_str_radix(text.trim(), 8) else {
        return Err(corrupt(offset, "not a tar header (bad checksum field)"));
    };
    let (mut unsigned, mut signed) = (0i64, 0i64);
    for (i, b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { *b };
        unsigned += i64::from(b);
        signed += i64::from(b as i8);
    }
    if stored != unsigned && stored != signed {
        return Err(corrupt(offset, "header checksum mismatch"));
    }
    Ok(())
}
