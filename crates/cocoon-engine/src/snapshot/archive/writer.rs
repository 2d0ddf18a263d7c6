//! Writing the tar stream: ustar headers, each preceded when needed by a PAX
//! extended header. The tar crate's `Builder` writes only old-GNU sparse
//! entries, so the framing is ours and the crate only formats header fields.

use std::io::{self, Write};

pub(super) const BLOCK: u64 = BLOCK_LEN as u64;
pub(super) const BLOCK_LEN: usize = 512;

/// What 11 octal digits hold; a bigger size also goes in a PAX `size` record
/// (the header then carries it base-256, which GNU tar reads too).
const USTAR_MAX_SIZE: u64 = 0o777_7777_7777;
const USTAR_NAME_LEN: usize = 100;

pub(super) struct TarWriter<W> {
    out: W,
}

/// A PAX record list: keys with their values.
pub(super) type Records<'a> = [(&'a str, &'a [u8])];

impl<W: Write> TarWriter<W> {
    pub fn new(out: W) -> Self {
        TarWriter { out }
    }

    /// Header of a regular file whose `size` data bytes follow, then
    /// [`Self::pad`]. `records` go in a PAX header first, with `path` and
    /// `size` added when the ustar fields cannot hold them; `header_name`
    /// is what a reader that ignores PAX sees.
    pub fn regular(
        &mut self,
        name: &str,
        header_name: &str,
        size: u64,
        mode: u32,
        mtime: u64,
        records: &Records<'_>,
    ) -> io::Result<()> {
        let size_text = size.to_string();
        let mut all: Vec<(&str, &[u8])> = records.to_vec();
        if header_name.len() > USTAR_NAME_LEN
            && !records.iter().any(|(k, _)| *k == "GNU.sparse.name")
        {
            all.push(("path", name.as_bytes()));
        }
        if size > USTAR_MAX_SIZE {
            all.push(("size", size_text.as_bytes()));
        }
        if !all.is_empty() {
            let pax = pax_records(&all);
            let pax_name = format!("PaxHeaders.0/{name}");
            let header = header(
                truncated(&pax_name),
                tar::EntryType::XHeader,
                pax.len() as u64,
                0o644,
                mtime,
            );
            self.out.write_all(header.as_bytes())?;
            self.out.write_all(&pax)?;
            self.pad(pax.len() as u64)?;
        }
        let header = header(
            truncated(header_name),
            tar::EntryType::Regular,
            size,
            mode,
            mtime,
        );
        self.out.write_all(header.as_bytes())
    }

    /// A header block exactly as given (tests build hostile ones).
    #[cfg(test)]
    pub fn raw_header(&mut self, header: &tar::Header) -> io::Result<()> {
        self.out.write_all(header.as_bytes())
    }

    #[cfg(test)]
    pub fn get_ref(&self) -> &W {
        &self.out
    }

    pub fn data(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)
    }

    /// Zeros up to the block boundary after `size` bytes of data.
    pub fn pad(&mut self, size: u64) -> io::Result<()> {
        let pad = size.next_multiple_of(BLOCK) - size;
        self.out.write_all(&[0; BLOCK_LEN][..super::small_len(pad)])
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    /// The end-of-archive marker (two zero blocks); returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0; 2 * BLOCK_LEN])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// `"<len> <key>=<value>\n"` records, where len counts the whole record,
/// its own digits included.
pub(super) fn pax_records(records: &Records<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in records {
        let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        out.extend_from_slice(format!("{len} {key}=").as_bytes());
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out
}

/// A ustar header; the name bytes go in verbatim (tar's `set_path` would
/// refuse the hostile names tests need, and ours are already plain).
pub(super) fn header(
    name: &[u8],
    kind: tar::EntryType,
    size: u64,
    mode: u32,
    mtime: u64,
) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    if let Some(ustar) = header.as_ustar_mut() {
        ustar.name = [0; USTAR_NAME_LEN];
        ustar.name[..name.len()].copy_from_slice(name);
    }
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(mtime);
    header.set_cksum();
    header
}

fn truncated(name: &str) -> &[u8] {
    &name.as_bytes()[..name.len().min(USTAR_NAME_LEN)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths_count_themselves() {
        assert_eq!(pax_records(&[("path", b"x")]), b"9 path=x\n");
        // 91 value bytes make a 99-byte record; one more crosses to three
        // digits, which themselves make it 101.
        let record = pax_records(&[("key", &[b'v'; 91])]);
        assert!(record.starts_with(b"99 key=v") && record.len() == 99);
        let record = pax_records(&[("key", &[b'v'; 92])]);
        assert!(record.starts_with(b"101 key=v") && record.len() == 101);
    }
}
