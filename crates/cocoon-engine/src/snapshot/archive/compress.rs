//! The compression around the tar stream: chosen on export, recognised by
//! its magic on import.

use std::io::{self, BufReader, Read, Write};

use super::{ArchiveError, Compression};

/// zstd level: 3 is zstd's default and still several hundred MB/s per core.
const ZSTD_LEVEL: i32 = 3;
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const READ_BUFFER: usize = 1 << 20;

pub(super) enum Encoder<'a> {
    Zstd(zstd::stream::write::Encoder<'static, &'a mut dyn Write>),
    Gzip(flate2::write::GzEncoder<&'a mut dyn Write>),
    None(&'a mut dyn Write),
}

impl<'a> Encoder<'a> {
    pub fn new(out: &'a mut dyn Write, compression: Compression) -> io::Result<Self> {
        Ok(match compression {
            Compression::Zstd => {
                let mut encoder = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?;
                let workers = std::thread::available_parallelism()
                    .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
                // Workers compress in the background while we read the next
                // chunk; needs libzstd built with threads (zstd-safe/zstdmt).
                encoder.set_parameter(zstd_safe::CParameter::NbWorkers(workers))?;
                // Frame checksums let `zstd -t` check an archive without
                // importing it, and catch corruption early on import.
                encoder.include_checksum(true)?;
                Encoder::Zstd(encoder)
            }
            // Level 1, as cocoon (Go) did: gzip is for compatibility, not size.
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::fast(),
            )),
            Compression::None => Encoder::None(out),
        })
    }

    /// Writes the trailer (frame end, gzip CRC) and flushes.
    pub fn finish(self) -> io::Result<()> {
        match self {
            Encoder::Zstd(e) => e.finish()?.flush(),
            Encoder::Gzip(e) => e.finish()?.flush(),
            Encoder::None(out) => out.flush(),
        }
    }
}

impl Write for Encoder<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Zstd(e) => e.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::None(out) => out.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Zstd(e) => e.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::None(out) => out.flush(),
        }
    }
}

/// The tar stream inside `input`, decompressed as its first bytes say.
pub(super) fn decoder<'a>(input: &'a mut dyn Read) -> Result<Box<dyn Read + 'a>, ArchiveError> {
    let mut magic = [0u8; 4];
    let mut got = 0;
    // A pipe may hand over fewer bytes than asked: fill the magic fully.
    while got < magic.len() {
        match input.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(ArchiveError::Read { source }),
        }
    }
    let head = io::Cursor::new(magic[..got].to_vec());
    let stream = BufReader::with_capacity(READ_BUFFER, head.chain(input));
    // The tar reader reads 512-byte headers: buffer the decoded side too.
    Ok(if magic == ZSTD_MAGIC {
        let decoder = zstd::stream::read::Decoder::with_buffer(stream)
            .map_err(|source| ArchiveError::Read { source })?;
        Box::new(BufReader::with_capacity(READ_BUFFER, decoder))
    } else if got >= 2 && magic[..2] == GZIP_MAGIC {
        // Multi-member: pigz and concatenated gzip files are valid gzip.
        let decoder = flate2::bufread::MultiGzDecoder::new(stream);
        Box::new(BufReader::with_capacity(READ_BUFFER, decoder))
    } else {
        Box::new(stream)
    })
}
