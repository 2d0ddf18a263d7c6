//! What a payload is, from its first bytes: a compression wrapper to undo,
//! something that is plainly not a disk image (an HTML error page, an
//! archive), a qcow2 header, another VM disk format, or a partition table.

use std::fmt;
use std::io::{BufRead, Read};

/// How many leading bytes the checks below look at (GPT on 4 KiB sectors
/// puts its header at 4096).
pub const HEAD_LEN: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Xz,
    Zstd,
    Bzip2,
}

impl Compression {
    pub fn detect(head: &[u8]) -> Option<Compression> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Some(Compression::Gzip)
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Some(Compression::Xz)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Compression::Zstd)
        } else if head.len() >= 4 && head.starts_with(b"BZh") && (b'1'..=b'9').contains(&head[3]) {
            Some(Compression::Bzip2)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bzip2",
        }
    }

    /// A decoder for the whole stream; concatenated members or frames (what
    /// `split` parts or `cat a.gz b.gz` give) decode as one stream.
    pub fn decoder<'a>(self, input: impl BufRead + Send + 'a) -> Box<dyn Read + Send + 'a> {
        match self {
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
            Compression::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(input)),
            Compression::Zstd => match zstd::stream::read::Decoder::with_buffer(input) {
                Ok(decoder) => Box::new(decoder),
                // Only fails when zstd cannot allocate its context.
                Err(e) => Box::new(FailingReader(Some(e))),
            },
            Compression::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(input)),
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

struct FailingReader(Option<std::io::Error>);

impl Read for FailingReader {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Err(self
            .0
            .take()
            .unwrap_or_else(|| std::io::Error::other("decoder unavailable")))
    }
}

/// Payloads that are plainly not disk images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Foreign {
    Empty,
    Html,
    Xml,
    Archive(&'static str),
}

impl fmt::Display for Foreign {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Foreign::Empty => f.write_str("an empty file"),
            Foreign::Html => f.write_str("an HTML page"),
            Foreign::Xml => f.write_str("an XML document"),
            Foreign::Archive(kind) => write!(f, "a {kind} archive"),
        }
    }
}

/// Error pages, XML listings (S3 `NoSuchKey`) and archives. Disk images start
/// with boot code, zeros or a format magic, never with markup.
pub fn foreign(head: &[u8]) -> Option<Foreign> {
    if head.is_empty() {
        return Some(Foreign::Empty);
    }
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Some(Foreign::Archive("zip"));
    }
    if head.starts_with(b"7z\xbc\xaf\x27\x1c") {
        return Some(Foreign::Archive("7z"));
    }
    let text = head.strip_prefix(b"\xef\xbb\xbf").unwrap_or(head);
    let text = &text[text
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(text.len())..];
    match text {
        [b'<', next, ..] if *next == b'!' || *next == b'?' || next.is_ascii_alphabetic() => {
            let lower = String::from_utf8_lossy(&text[..text.len().min(512)]).to_lowercase();
            if lower.starts_with("<?xml") && !lower.contains("html") {
                Some(Foreign::Xml)
            } else {
                Some(Foreign::Html)
            }
        }
        _ => None,
    }
}

pub const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

/// The qcow2 header fields that decide how an image is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Header {
    pub version: u32,
    /// The backing file name, if the header names one ("" if it lies beyond `head`).
    pub backing_file: Option<String>,
    /// v3 incompatible feature bits (0 for v2).
    pub incompatible: u64,
}

impl Qcow2Header {
    pub const DIRTY: u64 = 1 << 0;
    pub const CORRUPT: u64 = 1 << 1;
    pub const EXTERNAL_DATA_FILE: u64 = 1 << 2;

    /// None unless `head` starts with the qcow2 magic and a complete header.
    pub fn parse(head: &[u8]) -> Option<Qcow2Header> {
        if !head.starts_with(QCOW2_MAGIC) || head.len() < 72 {
            return None;
        }
        let be32 = |at: usize| u32::from_be_bytes(head[at..at + 4].try_into().unwrap());
        let be64 = |at: usize| u64::from_be_bytes(head[at..at + 8].try_into().unwrap());
        let version = be32(4);
        // An offset beyond the address space is beyond the head as well.
        let backing_offset = usize::try_from(be64(8)).unwrap_or(usize::MAX);
        let backing_size = be32(16) as usize;
        let backing_file = (backing_offset != 0).then(|| {
            head.get(backing_offset..backing_offset.saturating_add(backing_size))
                .map(|name| String::from_utf8_lossy(name).into_owned())
                .unwrap_or_default()
        });
        let incompatible = if version >= 3 && head.len() >= 80 {
            be64(72)
        } else {
            0
        };
        Some(Qcow2Header {
            version,
            backing_file,
            incompatible,
        })
    }
}

/// An MBR boot signature (also present as GPT's protective MBR) or a GPT
/// header on 512-byte or 4 KiB sectors.
pub fn has_partition_table(head: &[u8]) -> bool {
    head.get(510..512) == Some(&[0x55, 0xaa])
        || head.get(512..520) == Some(b"EFI PART")
        || head.get(4096..4104) == Some(b"EFI PART")
}

/// Other VM disk formats, named so the refusal can say what the file is.
/// `qemu-img info` remains the authority for anything this misses.
pub fn other_disk_format(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(b"KDMV") || head.starts_with(b"COWD") {
        Some("vmdk")
    } else if head.starts_with(b"# Disk DescriptorFile") {
        Some("vmdk (descriptor)")
    } else if head.starts_with(b"vhdxfile") {
        Some("vhdx")
    } else if head.starts_with(b"conectix") {
        Some("vpc (VHD)")
    } else if head.get(0x40..0x44) == Some(&[0x7f, 0x10, 0xda, 0xbe]) {
        Some("vdi")
    } else if head.starts_with(b"QED\0") {
        Some("qed")
    } else if head.starts_with(b"LUKS\xba\xbe") {
        Some("luks")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressions_by_magic() {
        assert_eq!(
            Compression::detect(&[0x1f, 0x8b, 8]),
            Some(Compression::Gzip)
        );
        assert_eq!(Compression::detect(b"\xfd7zXZ\0\0"), Some(Compression::Xz));
        assert_eq!(
            Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Some(Compression::Zstd)
        );
        assert_eq!(Compression::detect(b"BZh9"), Some(Compression::Bzip2));
        assert_eq!(Compression::detect(b"BZhx"), None);
        assert_eq!(Compression::detect(b"QFI\xfb"), None);
        assert_eq!(Compression::detect(b""), None);
    }

    #[test]
    fn decoders_undo_every_compression_including_concatenated_members() {
        use std::io::Write;
        let data = b"disk bytes ".repeat(1000);
        let gz = |d: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(d).unwrap();
            e.finish().unwrap()
        };
        let mut two = gz(&data[..5000]);
        two.extend(gz(&data[5000..]));
        let xz = {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(&data).unwrap();
            e.finish().unwrap()
        };
        let zst = zstd::encode_all(&data[..], 1).unwrap();
        let bz = {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            e.write_all(&data).unwrap();
            e.finish().unwrap()
        };
        for packed in [two, xz, zst, bz] {
            let kind = Compression::detect(&packed).unwrap();
            let mut out = Vec::new();
            kind.decoder(&packed[..]).read_to_end(&mut out).unwrap();
            assert_eq!(out, data, "{kind}");
        }
    }

    #[test]
    fn foreign_payloads() {
        assert_eq!(foreign(b""), Some(Foreign::Empty));
        assert_eq!(foreign(b"<!DOCTYPE html><html>"), Some(Foreign::Html));
        assert_eq!(
            foreign(b"\xef\xbb\xbf\r\n  <html lang=en>"),
            Some(Foreign::Html)
        );
        assert_eq!(
            foreign(b"<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code>"),
            Some(Foreign::Xml)
        );
        assert_eq!(
            foreign(b"<?xml version=\"1.0\"?><!DOCTYPE html PUBLIC"),
            Some(Foreign::Html)
        );
        assert_eq!(foreign(b"PK\x03\x04rest"), Some(Foreign::Archive("zip")));
        assert_eq!(foreign(b"7z\xbc\xaf\x27\x1c"), Some(Foreign::Archive("7z")));
        assert_eq!(foreign(b"QFI\xfb\0\0\0\x03"), None);
        assert_eq!(foreign(&[0u8; 512]), None);
        assert_eq!(foreign(b"\xeb\x63\x90<html"), None);
        assert_eq!(foreign(b"1 < 2"), None);
    }

    fn qcow2_head(version: u32, backing: Option<&str>, incompatible: u64) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..4].copy_from_slice(QCOW2_MAGIC);
        h[4..8].copy_from_slice(&version.to_be_bytes());
        if let Some(name) = backing {
            h[8..16].copy_from_slice(&200u64.to_be_bytes());
            h[16..20].copy_from_slice(&u32::try_from(name.len()).unwrap().to_be_bytes());
            h[200..200 + name.len()].copy_from_slice(name.as_bytes());
        }
        h[72..80].copy_from_slice(&incompatible.to_be_bytes());
        h
    }

    #[test]
    fn qcow2_headers() {
        let v3 = Qcow2Header::parse(&qcow2_head(3, None, 0)).unwrap();
        assert_eq!((v3.version, v3.backing_file, v3.incompatible), (3, None, 0));
        let v2 = Qcow2Header::parse(&qcow2_head(2, Some("/etc/shadow"), 7)).unwrap();
        assert_eq!(v2.version, 2);
        assert_eq!(v2.backing_file.as_deref(), Some("/etc/shadow"));
        assert_eq!(v2.incompatible, 0, "v2 has no feature bits");
        let ext =
            Qcow2Header::parse(&qcow2_head(3, None, Qcow2Header::EXTERNAL_DATA_FILE)).unwrap();
        assert_eq!(ext.incompatible, Qcow2Header::EXTERNAL_DATA_FILE);
        assert_eq!(Qcow2Header::parse(b"QFI\xfb\0\0\0\x03"), None, "truncated");
        assert_eq!(Qcow2Header::parse(&[0u8; 512]), None);
    }

    #[test]
    fn partition_tables_and_other_formats() {
        let mut mbr = vec![0u8; 1024];
        assert!(!has_partition_table(&mbr));
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        assert!(has_partition_table(&mbr));
        let mut gpt4k = vec![0u8; HEAD_LEN];
        gpt4k[4096..4104].copy_from_slice(b"EFI PART");
        assert!(has_partition_table(&gpt4k));
        assert!(!has_partition_table(&mbr[..511]));
        assert_eq!(other_disk_format(b"KDMV\x01"), Some("vmdk"));
        assert_eq!(other_disk_format(b"vhdxfile"), Some("vhdx"));
        let mut vdi = vec![0u8; 0x80];
        vdi[0x40..0x44].copy_from_slice(&[0x7f, 0x10, 0xda, 0xbe]);
        assert_eq!(other_disk_format(&vdi), Some("vdi"));
        assert_eq!(other_disk_format(&mbr), None);
    }
}
