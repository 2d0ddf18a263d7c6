//! Bounded fuzzing of the vmlinux extractor: valid bzImages in every
//! compression the kernel uses, mutated (bytes overwritten, flipped, cut,
//! inserted, header fields set to extremes), truncated, and random bytes,
//! must never panic, and end in a typed error or an ELF no larger than the
//! limit, in bounded time. Runs in CI (`COCOON_FUZZ_CASES`, default 256 per
//! compression); proptest keeps each failing input under
//! `proptest-regressions/` as a regression case.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::fuzzing::{cases, mutate, mutation};

/// The limit the fuzz cases run under: small, so that a mutation that
/// turns the payload into a bomb is caught quickly.
const FUZZ_LIMIT: u64 = 4 << 20;

fn fake_elf(len: usize) -> Vec<u8> {
    let mut data = b"\x7fELF\x02\x01\x01".to_vec();
    let mut state = 0x2545f4914f6cdd1du64;
    while data.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.push(if state.is_multiple_of(4) {
            state.to_le_bytes()[1]
        } else {
            b"ABCDEFG"[data.len() % 7]
        });
    }
    data
}

fn compress(format: Compression, data: &[u8]) -> Vec<u8> {
    match format {
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Compression::Zstd => zstd::encode_all(data, 1).unwrap(),
        Compression::Xz => {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Compression::Lzma => {
            let options = liblzma::stream::LzmaOptions::new_preset(1).unwrap();
            let stream = liblzma::stream::Stream::new_lzma_encoder(&options).unwrap();
            let mut e = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Compression::Bzip2 => {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Compression::Lz4 => {
            // The legacy frame, as `lz4 -l` writes it.
            let mut out = 0x184c2102u32.to_le_bytes().to_vec();
            for chunk in data.chunks(8 << 20) {
                let block = lz4_flex::block::compress(chunk);
                out.extend_from_slice(&u32::try_from(block.len()).unwrap().to_le_bytes());
                out.extend_from_slice(&block);
            }
            out
        }
    }
}

/// A minimal bzImage, built the way `tests/vmlinux.rs` builds its own.
fn bzimage(payload: &[u8], uncompressed: usize) -> Vec<u8> {
    let setup_sects = 4usize;
    let offset = 0x1c0usize;
    let mut image = vec![0u8; (setup_sects + 1) * 512 + offset];
    image[0x1f1] = u8::try_from(setup_sects).unwrap();
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x248..0x24c].copy_from_slice(&u32::try_from(offset).unwrap().to_le_bytes());
    let mut tail = payload.to_vec();
    tail.extend_from_slice(&u32::try_from(uncompressed).unwrap().to_le_bytes());
    image[0x24c..0x250].copy_from_slice(&u32::try_from(tail.len()).unwrap().to_le_bytes());
    image.extend_from_slice(&tail);
    image.extend_from_slice(&[0u8; 512]);
    image
}

/// setup_sects, version, payload offset and length: the header fields the
/// extractor trusts most.
const HEADER_FIELDS: &[usize] = &[0x1f1, 0x206, 0x248, 0x24c];

/// Runs the extractor's two steps on `image` and checks every outcome the
/// module comment promises; a panic fails the case.
fn check(image: &[u8]) -> Result<(), TestCaseError> {
    let path = Path::new("fuzz.bzImage");
    let started = Instant::now();
    let result = payload(image, path).and_then(|p| decompress_limited(p, path, FUZZ_LIMIT));
    prop_assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    if let Ok(elf) = result {
        prop_assert!(elf.starts_with(b"\x7fELF"));
        prop_assert!(elf.len() as u64 <= FUZZ_LIMIT, "{} bytes", elf.len());
    }
    Ok(())
}

fn fuzz(format: Compression) {
    let elf = fake_elf(256 << 10);
    let image = bzimage(&compress(format, &elf), elf.len());
    // The unmutated image extracts: the mutations start from a valid input.
    let path = Path::new("fuzz.bzImage");
    assert!(decompress_limited(payload(&image, path).unwrap(), path, FUZZ_LIMIT).unwrap() == elf);
    proptest!(ProptestConfig::with_cases(cases()), |(mutations in proptest::collection::vec(mutation(HEADER_FIELDS), 1..6))| {
        check(&mutate(image.clone(), &mutations))?;
    });
}

#[test]
fn mutated_gzip_bzimages_never_panic() {
    fuzz(Compression::Gzip);
}

#[test]
fn mutated_zstd_bzimages_never_panic() {
    fuzz(Compression::Zstd);
}

#[test]
fn mutated_xz_bzimages_never_panic() {
    fuzz(Compression::Xz);
}

#[test]
fn mutated_lzma_bzimages_never_panic() {
    fuzz(Compression::Lzma);
}

#[test]
fn mutated_bzip2_bzimages_never_panic() {
    fuzz(Compression::Bzip2);
}

#[test]
fn mutated_lz4_bzimages_never_panic() {
    fuzz(Compression::Lz4);
}

#[test]
fn truncated_and_random_inputs_never_panic() {
    let elf = fake_elf(64 << 10);
    let image = bzimage(&compress(Compression::Gzip, &elf), elf.len());
    // Every prefix of the header, and a sample of prefixes of the rest.
    for len in (0..0x260).chain((0x260..image.len()).step_by(97)) {
        check(&image[..len]).unwrap();
    }
    proptest!(ProptestConfig::with_cases(cases()), |(bytes in proptest::collection::vec(any::<u8>(), 0..0x1000))| {
        check(&bytes)?;
    });
    // Random bytes behind a valid header and every compression's magic.
    proptest!(ProptestConfig::with_cases(cases()), |(magic in 0usize..6, bytes in proptest::collection::vec(any::<u8>(), 0..0x1000))| {
        let magics: [&[u8]; 6] = [
            b"\x1f\x8b",
            b"\x28\xb5\x2f\xfd",
            b"\xfd7zXZ\x00",
            b"\x5d\x00\x00",
            b"BZh",
            b"\x02\x21\x4c\x18",
        ];
        let mut payload = magics[magic].to_vec();
        payload.extend_from_slice(&bytes);
        check(&bzimage(&payload, 0))?;
    });
}

/// The regression input from issue 15: `HdrS` at the very end of the file
/// (the version read after a shorter bounds check panicked).
#[test]
fn header_cut_after_hdrs_is_an_error() {
    let path = Path::new("/boot/vmlinuz-x");
    for len in 0x206..0x208 {
        let mut image = vec![0u8; len];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(
            payload(&image, path).unwrap_err().to_string(),
            "/boot/vmlinuz-x: not a bzImage (truncated header)"
        );
    }
    let mut image = bzimage(b"\x1f\x8b", 0);
    image[0x248..0x24c].copy_from_slice(&u32::MAX.to_le_bytes());
    image[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        payload(&image, path).unwrap_err().to_string(),
        "/boot/vmlinuz-x: not a bzImage (payload outside the file)"
    );
}

/// A bomb in every format stops at the limit with a clear error, after
/// reading no more than the limit: the real limit (512 MiB) for gzip and
/// lz4, whose bombs are cheap to build, and a small one for the rest.
#[test]
fn decompression_bombs_stop_at_the_limit() {
    let path = Path::new("/boot/vmlinuz-x");
    let mut elf = b"\x7fELF".to_vec();
    elf.resize(8 << 20, 0);
    for format in [
        Compression::Gzip,
        Compression::Zstd,
        Compression::Xz,
        Compression::Lzma,
        Compression::Bzip2,
        Compression::Lz4,
    ] {
        let image = bzimage(&compress(format, &elf), elf.len());
        let started = Instant::now();
        let err = decompress_limited(payload(&image, path).unwrap(), path, 1 << 20).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "/boot/vmlinuz-x: cannot decompress the {} payload: the kernel is larger than 1 MiB",
                format.name()
            )
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{}",
            format.name()
        );
    }
    // 520 MiB of zeros, compressed in 1 MiB pieces.
    let zeros = vec![0u8; 1 << 20];
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(b"\x7fELF").unwrap();
    let mut lz4 = 0x184c2102u32.to_le_bytes().to_vec();
    let block = lz4_flex::block::compress(&vec![0u8; 8 << 20]);
    for i in 0..520 {
        gz.write_all(&zeros).unwrap();
        if i % 8 == 0 {
            lz4.extend_from_slice(&u32::try_from(block.len()).unwrap().to_le_bytes());
            lz4.extend_from_slice(&block);
        }
    }
    let gz = gz.finish().unwrap();
    for (format, bomb) in [("gzip", gz), ("lz4", lz4)] {
        let image = bzimage(&bomb, 0);
        let err = decompress(payload(&image, path).unwrap(), path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "/boot/vmlinuz-x: cannot decompress the {format} payload: the kernel is larger than 512 MiB"
            )
        );
    }
}
