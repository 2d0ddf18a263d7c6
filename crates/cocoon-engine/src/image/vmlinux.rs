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

/// The largest kernel ELF the extractor writes: a decompression bomb in a
/// payload stops here (real x86 kernels are tens of MiB).
pub const MAX_VMLINUX_BYTES: u64 = 512 << 20;

/// The most memory an xz or lzma decoder may ask for (the dictionary a
/// header declares; kernels use at most 64 MiB).
const MAX_DECODER_MEMORY: u64 = 256 << 20;

fn le16(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        data.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn le32(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        data.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// The compressed payload of a bzImage. Every field is read with a bounds
/// check: a truncated or crafted header is an error, never a panic.
pub fn payload<'a>(image: &'a [u8], path: &Path) -> Result<&'a [u8], VmlinuxError> {
    let fail = |reason| VmlinuxError::NotBzImage {
        path: path.to_path_buf(),
        reason,
    };
    if image.get(0x202..0x206) != Some(b"HdrS") {
        return Err(fail("no HdrS setup header"));
    }
    let version = le16(image, 0x206).ok_or_else(|| fail("truncated header"))?;
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
    let start = (setup_sects + 1)
        .checked_mul(512)
        .and_then(|s| s.checked_add(offset));
    let end = start.and_then(|s| s.checked_add(length));
    match (start, end) {
        (Some(start), Some(end)) => image.get(start..end),
        _ => None,
    }
    .ok_or_else(|| fail("payload outside the file"))
}

/// Decompresses a kernel payload into the ELF image, at most
/// [`MAX_VMLINUX_BYTES`] of it.
pub fn decompress(payload: &[u8], path: &Path) -> Result<Vec<u8>, VmlinuxError> {
    decompress_limited(payload, path, MAX_VMLINUX_BYTES)
}

/// [`decompress`] with the output limit given: decoding stops as soon as
/// the output would pass `limit`, not after.
pub fn decompress_limited(
    payload: &[u8],
    path: &Path,
    limit: u64,
) -> Result<Vec<u8>, VmlinuxError> {
    let format = Compression::detect(payload).ok_or_else(|| VmlinuxError::UnknownCompression {
        path: path.to_path_buf(),
        magic: payload.iter().take(6).copied().collect(),
    })?;
    let fail = |reason: String| VmlinuxError::Decompress {
        path: path.to_path_buf(),
        format: format.name(),
        reason,
    };
    let too_big = || fail(format!("the kernel is larger than {} MiB", limit >> 20));
    // A hint only: none when it would not fit the address space.
    let capacity =
        usize::try_from((payload.len() as u64).saturating_mul(4).min(limit)).unwrap_or(0);
    let mut out = Vec::with_capacity(capacity);
    // One byte more than the limit is read, so that reaching it is seen.
    let bounded = |reader: &mut dyn Read, out: &mut Vec<u8>| {
        reader
            .take(limit.saturating_add(1))
            .read_to_end(out)
            .map(drop)
    };
    // Each decoder stops at the end of its stream: the kernel build appends
    // the uncompressed size after it, which must not be read as more data.
    match format {
        Compression::Gzip => bounded(&mut flate2::read::GzDecoder::new(payload), &mut out),
        Compression::Zstd => zstd::stream::read::Decoder::with_buffer(payload)
            .map(|d| d.single_frame())
            .and_then(|mut d| bounded(&mut d, &mut out)),
        Compression::Xz => {
            let stream = liblzma::stream::Stream::new_stream_decoder(MAX_DECODER_MEMORY, 0)
                .map_err(|e| fail(e.to_string()))?;
            bounded(
                &mut liblzma::read::XzDecoder::new_stream(payload, stream),
                &mut out,
            )
        }
        Compression::Lzma => {
            let stream = liblzma::stream::Stream::new_lzma_decoder(MAX_DECODER_MEMORY)
                .map_err(|e| fail(e.to_string()))?;
            bounded(
                &mut liblzma::read::XzDecoder::new_stream(payload, stream),
                &mut out,
            )
        }
        Compression::Bzip2 => bounded(&mut bzip2::read::BzDecoder::new(payload), &mut out),
        Compression::Lz4 => {
            out = lz4_legacy(payload, limit).map_err(|e| match e {
                Lz4Error::TooBig => too_big(),
                Lz4Error::Bad(reason) => fail(reason),
            })?;
            Ok(())
        }
    }
    .map_err(|e| fail(e.to_string()))?;
    if out.len() as u64 > limit {
        return Err(too_big());
    }
    if !out.starts_with(b"\x7fELF") {
        return Err(VmlinuxError::NotElf {
            path: path.to_path_buf(),
        });
    }
    Ok(out)
}

enum Lz4Error {
    TooBig,
    Bad(String),
}

/// lz4's legacy frame (what the kernel uses): the magic, then blocks of
/// `[u32 compressed size][lz4 block]` of up to 8 MiB output each, until the
/// input ends (or a trailing size field that no block could have).
fn lz4_legacy(input: &[u8], limit: u64) -> Result<Vec<u8>, Lz4Error> {
    const BLOCK: usize = 8 << 20;
    let mut at = 4usize;
    let mut out = Vec::new();
    let mut block = vec![0u8; BLOCK];
    while let Some(size) = le32(input, at) {
        let size = size as usize;
        if size == 0x184c2102 {
            at += 4; // a concatenated frame's magic
            continue;
        }
        let Some(compressed) = at
            .checked_add(4 + size)
            .and_then(|end| input.get(at + 4..end))
        else {
            break;
        };
        let n = lz4_flex::block::decompress_into(compressed, &mut block)
            .map_err(|e| Lz4Error::Bad(e.to_string()))?;
        if (out.len() + n) as u64 > limit {
            return Err(Lz4Error::TooBig);
        }
        out.extend_from_slice(block.get(..n).unwrap_or(&block));
        at += 4 + size;
    }
    if out.is_empty() {
        return Err(Lz4Error::Bad("no lz4 blocks".into()));
    }
    Ok(out)
}

/// `boot/<layer>/vmlinux`, extracted from the layer's kernel on first use.
pub fn ensure(
    dirs: &ImageDirs,
    kernel_layer: &crate::digest::Digest,
) -> Result<PathBuf, VmlinuxError> {
    let target = dirs.boot_dir(kernel_layer).join("vmlinux");
    ensure_at(&dirs.kernel(kernel_layer), &target)?;
    Ok(target)
}

/// Writes `target`, the ELF kernel of the bzImage `kernel`, unless it exists.
pub fn ensure_at(kernel: &Path, target: &Path) -> Result<(), VmlinuxError> {
    if target.is_file() {
        return Ok(());
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| VmlinuxError::Io {
            path: path.clone(),
            source,
        }
    };
    // Boot files are at most 512 MiB when a layer is unpacked; read no more
    // than that here either.
    let mut image = Vec::new();
    std::fs::File::open(kernel)
        .and_then(|f| f.take(MAX_VMLINUX_BYTES + 1).read_to_end(&mut image))
        .map_err(io(kernel))?;
    if image.len() as u64 > MAX_VMLINUX_BYTES {
        return Err(VmlinuxError::NotBzImage {
            path: kernel.to_path_buf(),
            reason: "larger than 512 MiB",
        });
    }
    // An image may already carry an ELF kernel.
    let elf = if image.starts_with(b"\x7fELF") {
        image
    } else {
        decompress(payload(&image, kernel)?, kernel)?
    };
    let staged = target.with_file_name(format!(".vmlinux-{}", std::process::id()));
    std::fs::write(&staged, &elf).map_err(io(&staged))?;
    std::fs::File::open(&staged)
        .and_then(|f| f.sync_all())
        .map_err(io(&staged))?;
    std::fs::rename(&staged, target).map_err(io(target))?;
    Ok(())
}

#[cfg(test)]
mod fuzz;
