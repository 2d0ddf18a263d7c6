//! vmlinux extraction from bzImages compressed every way the kernel can be.
// Test inputs: the values are built to fit the fields they fill.
#![allow(clippy::cast_possible_truncation)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cocoon_engine::image::vmlinux::{self, Compression};

/// A fake ELF big enough for two lz4 blocks (8 MiB each), partly compressible.
fn fake_elf() -> Vec<u8> {
    let mut data = b"\x7fELF\x02\x01\x01".to_vec();
    let mut state = 0x2545f4914f6cdd1du64;
    while data.len() < 9 << 20 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let byte = if state.is_multiple_of(4) {
            (state >> 8) as u8
        } else {
            b'A' + (data.len() % 7) as u8
        };
        data.push(byte);
    }
    data
}

fn compress(tool: &[&str], data: &[u8]) -> Option<Vec<u8>> {
    let mut child = Command::new(tool[0])
        .args(&tool[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().ok()?;
    writer.join().unwrap().ok()?;
    out.status.success().then_some(out.stdout)
}

/// A minimal bzImage: setup header, then the payload (with the 4-byte size
/// the kernel build appends) at `payload_offset` of the protected-mode part.
fn bzimage(payload: &[u8], uncompressed: usize) -> Vec<u8> {
    let setup_sects = 4usize;
    let offset = 0x1c0usize;
    let mut image = vec![0u8; (setup_sects + 1) * 512 + offset];
    image[0x1f1] = setup_sects as u8;
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x248..0x24c].copy_from_slice(&(offset as u32).to_le_bytes());
    let mut tail = payload.to_vec();
    tail.extend_from_slice(&(uncompressed as u32).to_le_bytes());
    image[0x24c..0x250].copy_from_slice(&(tail.len() as u32).to_le_bytes());
    image.extend_from_slice(&tail);
    image.extend_from_slice(&[0u8; 512]);
    image
}

#[test]
fn every_kernel_compression_is_extracted() {
    let elf = fake_elf();
    let formats: &[(&[&str], Compression)] = &[
        // The options the kernel build uses, at fast presets.
        (&["gzip", "-1", "-c"], Compression::Gzip),
        (&["zstd", "-1", "-c", "-q"], Compression::Zstd),
        (
            &["xz", "--check=crc32", "--x86", "--lzma2=preset=1", "-c"],
            Compression::Xz,
        ),
        (&["lzma", "-1", "-c"], Compression::Lzma),
        (&["bzip2", "-1", "-c"], Compression::Bzip2),
        (&["lz4", "-l", "-1", "-c"], Compression::Lz4),
    ];
    let mut tested = 0;
    for (tool, format) in formats {
        let Some(compressed) = compress(tool, &elf) else {
            cocoon_test_skip::skip(
                &format!("{} bzImage", format.name()),
                &format!("`{}` is not installed", tool[0]),
            );
            continue;
        };
        assert_eq!(
            Compression::detect(&compressed),
            Some(*format),
            "{}",
            format.name()
        );
        let image = bzimage(&compressed, elf.len());
        let path = Path::new("test.bzImage");
        let payload = vmlinux::payload(&image, path).unwrap();
        let out =
            vmlinux::decompress(payload, path).unwrap_or_else(|e| panic!("{}: {e}", format.name()));
        assert!(out == elf, "{}: extracted image differs", format.name());
        tested += 1;
    }
    assert!(tested >= 4, "too few compressors available to test");
}

#[test]
fn bad_kernels_are_clear_errors() {
    let path = Path::new("/boot/vmlinuz-x");
    assert_eq!(
        vmlinux::payload(b"not a kernel at all", path)
            .unwrap_err()
            .to_string(),
        "/boot/vmlinuz-x: not a bzImage (no HdrS setup header)"
    );
    let image = bzimage(b"\x00\x01\x02\x03garbage", 10);
    let err = vmlinux::decompress(vmlinux::payload(&image, path).unwrap(), path).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/boot/vmlinuz-x: unknown kernel compression"),
        "{err}"
    );
    // A valid gzip stream of something that is not an ELF.
    let not_elf = compress(&["gzip", "-c"], b"just text").unwrap();
    let image = bzimage(&not_elf, 9);
    let err = vmlinux::decompress(vmlinux::payload(&image, path).unwrap(), path).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/boot/vmlinuz-x: the payload is not an ELF image"
    );
    // Truncated payload.
    let gz = compress(&["gzip", "-c"], &fake_elf()).unwrap();
    let image = bzimage(&gz[..gz.len() / 2], 1);
    let err = vmlinux::decompress(vmlinux::payload(&image, path).unwrap(), path).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/boot/vmlinuz-x: cannot decompress the gzip payload"),
        "{err}"
    );
}

/// Debian's own cloud kernel (lz4), when `scripts/fetch-test-assets.sh` has
/// unpacked it (CI does).
#[test]
fn debian_cloud_kernel_is_extracted() {
    let assets = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/test-assets/debian-kernel/boot");
    let kernel = std::fs::read_dir(&assets).ok().and_then(|d| {
        d.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz"))
        })
    });
    let Some(kernel) = kernel else {
        return cocoon_test_skip::skip(
            "debian_cloud_kernel_is_extracted",
            "the Debian cloud kernel test asset is missing: run scripts/fetch-test-assets.sh",
        );
    };
    let image = std::fs::read(&kernel).unwrap();
    let payload = vmlinux::payload(&image, &kernel).unwrap();
    assert_eq!(
        Compression::detect(payload),
        Some(Compression::Lz4),
        "Debian kernels are lz4"
    );
    let elf = vmlinux::decompress(payload, &kernel).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(elf[4], 2, "64-bit");
    assert!(
        elf.len() > image.len(),
        "the ELF is larger than the compressed kernel"
    );
}
