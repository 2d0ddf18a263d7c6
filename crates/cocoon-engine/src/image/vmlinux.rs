//! The uncompressed ELF `vmlinux` inside a bzImage, for Firecracker, which
//! cannot boot a bzImage.
//!
//! The x86 boot protocol (>= 2.08) gives the compressed payload's place in the
//! setup header; its format is recognised by magic: gzip, zstd, xz, lzma,
//! bzip2 or lz4 (Debian builds lz4 kernels, Ubuntu zstd; cocoon only knew the
//! last two). Hand-written because no crate parses the boot protocol; the
//! decompressors are crates.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::store::ImageDirs;

#[derive(Debug, thiserror::Error)]
pub enum VmlinuxError {
    #[error("{}: not a bzImage ({reason})", path.display())]
    NotBzImage { path: PathBuf, reason: &'static str },
    #[error("{}: unknown kernel compression (payload starts with {magic:02x?})", path.display())]
    UnknownCompression { path: PathBuf, magic: Vec<u8> },
    #[error("{}: cannot decompress the {format} payload: {reason}", path.display())]
    Decompress {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },
    #[error("{}: the payload is not an ELF image", path.display())]
    NotElf { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The compression of a kernel payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
    Xz,
    Lzma,
    Bzip2,
    Lz4,
}

impl Compression {
    pub fn detect(payload: &[u8]) -> Option<Compression> {
        Some(match payload {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => Compression::Xz,
            [0x5d, 0x00, 0x00, ..] => Compression::Lzma,
            [b'B', b'Z', b'h', ..] => Compression::Bzip2,
            [0x02, 0x21, 0x4c, 0x18, ..] => Compression::Lz4,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
            Compression::Lzma => "lzma",
            Compression::Bzip2 => "bzip2",
            Compression::Lz4 => "lz4",
        }
    }
}

fn le32(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

/// The compressed payload of a bzImage.
pub fn payload<'a>(image: &'a [u8], path: &Path) -> Result<&'a [u8], VmlinuxError> {
    let fail = |reason| VmlinuxError::NotBzImage {
        path: path.to_path_buf(),
        reason,
    };
    if image.get(0x202..0x206) != Some(b"HdrS") {
        return Err(fail("no HdrS setup header"));
    }
    let version = u16::from_le_bytes([image[0x206], image[0x207]]);
    if version < 0x0208 {
        return Err(fail("boot protocol older than 2.08 has no payload fields"));
    }
    let setup_sects = match image.get(0x1f1) {
        Some(0) => 4,
        Some(n) => *n as usize,
        None => return Err(fail("truncated header")),
    };
    let offset = le32(image, 0x248).ok_or_else(|| fail("truncated header"))? as usize;
    let length = le32(image, 0x24c).ok_or_else(|| fail("truncated header"))? as usize;
    let start = (setup_sects + 1) * 512 + offset;
    image
        .get(start..start + length)
        .ok_or_else(|| fail("payload outside the file"))
}

/// Decompresses a kernel payload into the ELF image.
pub fn decompress(payload: &[u8], path: &Path) -> Result<Vec<u8>, VmlinuxError> {
    let format = Compression::detect(payload).ok_or_else(|| VmlinuxError::UnknownCompression {
        path: path.to_path_buf(),
        magic: payload.iter().take(6).copied().collect(),
    })?;
    let fail = |reason: String| VmlinuxError::Decompress {
        path: path.to_path_buf(),
        format: format.name(),
        reason,
    };
    let mut out = Vec::with_capacity(payload.len() * 4);
    // Each decoder stops at the end of its stream: the kernel build appends
    // the uncompressed size after it, which must not be read as more data.
    match format {
        Compression::Gzip => flate2::read::GzDecoder::new(payload)
            .read_to_end(&mut out)
            .map(drop),
        Compression::Zstd => zstd::stream::read::Decoder::with_buffer(payload)
            .map(|d| d.single_frame())
            .and_then(|mut d| d.read_to_end(&mut out).map(drop)),
        Compression::Xz => {
            let stream = liblzma::stream::Stream::new_stream_decoder(u64::MAX, 0)
                .map_err(|e| fail(e.to_string()))?;
            liblzma::read::XzDecoder::new_stream(payload, stream)
                .read_to_end(&mut out)
                .map(drop)
        }
        Compression::Lzma => {
            let stream = liblzma::stream::Stream::new_lzma_decoder(u64::MAX)
                .map_err(|e| fail(e.to_string()))?;
            liblzma::read::XzDecoder::new_stream(payload, stream)
                .read_to_end(&mut out)
                .map(drop)
        }
        Compression::Bzip2 => bzip2::read::BzDecoder::new(payload)
            .read_to_end(&mut out)
            .map(drop),
        Compression::Lz4 => {
            out = lz4_legacy(payload).map_err(fail)?;
            Ok(())
        }
    }
    .map_err(|e| fail(e.to_string()))?;
    if !out.starts_with(b"\x7fELF") {
        return Err(VmlinuxError::NotElf {
            path: path.to_path_buf(),
        });
    }
    Ok(out)
}

/// lz4's legacy frame (what the kernel uses): the magic, then blocks of
/// `[u32 compressed size][lz4 block]` of up to 8 MiB output each, until the
/// input ends (or a trailing size field that no block could have).
fn lz4_legacy(input: &[u8]) -> Result<Vec<u8>, String> {
    const BLOCK: usize = 8 << 20;
    let mut at = 4;
    let mut out = Vec::new();
    let mut block = vec![0u8; BLOCK];
    while let Some(size) = le32(input, at) {
        let size = size as usize;
        if size == 0x184c2102 {
            at += 4; // a concatenated frame's magic
            continue;
        }
        let Some(compressed) = input.get(at + 4..at + 4 + size) else {
            break;
        };
        let n =
            lz4_flex::block::decompress_into(compressed, &mut block).map_err(|e| e.to_string())?;
        out.extend_from_slice(&block[..n]);
        at += 4 + size;
    }
    if out.is_empty() {
        return Err("no lz4 blocks".into());
    }
    Ok(out)
}

/// `boot/<layer>/vmlinux`, extracted from the layer's kernel on first use.
pub fn ensure(
    dirs: &ImageDirs,
    kernel_layer: &crate::digest::Digest,
) -> Result<PathBuf, VmlinuxError> {
    let target = dirs.boot_dir(kernel_layer).join("vmlinux");
    if target.is_file() {
        return Ok(target);
    }
    let kernel = dirs.kernel(kernel_layer);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| VmlinuxError::Io {
            path: path.clone(),
            source,
        }
    };
    let image = std::fs::read(&kernel).map_err(io(&kernel))?;
    // An image may already carry an ELF kernel.
    let elf = if image.starts_with(b"\x7fELF") {
        image
    } else {
        decompress(payload(&image, &kernel)?, &kernel)?
    };
    let staged = dirs
        .boot_dir(kernel_layer)
        .join(format!(".vmlinux-{}", std::process::id()));
    std::fs::write(&staged, &elf).map_err(io(&staged))?;
    std::fs::File::open(&staged)
        .and_then(|f| f.sync_all())
        .map_err(io(&staged))?;
    std::fs::rename(&staged, &target).map_err(io(&target))?;
    Ok(target)
}
