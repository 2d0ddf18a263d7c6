//! `cocoon.json`: what a snapshot is (the record, the source VM's storage in
//! VMM disk order, boot and network configuration) and a sha256 of every file.
//!
//! `snapshot save` writes it with every file's size and its digest `null`
//! (the snapshot is *unsealed*) and returns; the digests are filled in
//! afterwards, by a background sealer or by the first use that needs them
//! (`snapshot::seal`). A manifest with digests (every manifest written
//! before sealing existed, every imported one) reads as sealed.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::{BootConfig, NetworkConfig, Snapshot, StorageConfig, VmConfig};

pub const MANIFEST: &str = "cocoon.json";
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    pub size: u64,
    /// A [`TreeHasher`] digest (sha256 over 4 MiB block digests).
    pub sha256: String,
}

/// One file as a manifest lists it: its size, and its [`FileSum`] digest
/// once the snapshot is sealed (`null` until then).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub size: u64,
    pub sha256: Option<String>,
}

impl FileEntry {
    /// The size alone, the digest still to be computed.
    pub fn unsealed(size: u64) -> FileEntry {
        FileEntry { size, sha256: None }
    }
}

impl From<FileSum> for FileEntry {
    fn from(sum: FileSum) -> FileEntry {
        FileEntry {
            size: sum.size,
            sha256: Some(sum.sha256),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub snapshot: Snapshot,
    /// The source VM's configuration at save time.
    pub source: VmConfig,
    /// The source's disks in the VMM's order; writable ones have a copy in
    /// the snapshot named by `file_of`.
    pub storage: Vec<StorageConfig>,
    pub boot: BootConfig,
    #[serde(default)]
    pub network: Vec<NetworkConfig>,
    /// Every other file of the snapshot directory.
    pub files: BTreeMap<String, FileEntry>,
}

impl Manifest {
    /// Whether every file has its digest.
    pub fn is_sealed(&self) -> bool {
        self.files.values().all(|f| f.sha256.is_some())
    }
}

/// The snapshot file holding a copy of a writable disk: its base name.
pub fn file_of(disk: &StorageConfig) -> Option<String> {
    (!disk.ro).then(|| {
        disk.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    })
}

/// A sha256 tree: sha256 over the sha256 digests of each 4 MiB block of the
/// file (the last one short; an empty file is one empty block). Holes of a
/// sparse disk hash as zero blocks without being read, so a 10 GiB COW disk
/// with 200 MiB of data costs 200 MiB of hashing, where a plain sha256 would
/// read and hash 10 GiB of zeros (seconds per snapshot on this machine).
pub struct TreeHasher {
    block: Sha256,
    in_block: u64,
    outer: Sha256,
}

pub const HASH_BLOCK: u64 = HASH_BLOCK_LEN as u64;
const HASH_BLOCK_LEN: usize = 4 << 20;

/// A length of at most one [`HASH_BLOCK`], as a buffer length.
fn block_len(n: u64) -> usize {
    usize::try_from(n).expect("at most one hash block")
}

fn zero_block_digest() -> &'static [u8] {
    static DIGEST: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    DIGEST.get_or_init(|| Sha256::digest(vec![0u8; HASH_BLOCK_LEN]).to_vec())
}

impl Default for TreeHasher {
    fn default() -> Self {
        TreeHasher {
            block: Sha256::new(),
            in_block: 0,
            outer: Sha256::new(),
        }
    }
}

impl TreeHasher {
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let take = block_len(HASH_BLOCK - self.in_block).min(data.len());
            self.block.update(&data[..take]);
            self.in_block += take as u64;
            data = &data[take..];
            if self.in_block == HASH_BLOCK {
                let digest = std::mem::take(&mut self.block).finalize();
                self.outer.update(digest);
                self.in_block = 0;
            }
        }
    }

    /// `n` zero bytes (a hole); whole aligned blocks cost nothing.
    pub fn update_zeros(&mut self, mut n: u64) {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        while n > 0 {
            if self.in_block == 0 && n >= HASH_BLOCK {
                self.outer.update(zero_block_digest());
                n -= HASH_BLOCK;
                continue;
            }
            let take = n.min(ZEROS.len() as u64).min(HASH_BLOCK - self.in_block);
            self.update(&ZEROS[..block_len(take)]);
            n -= take;
        }
    }

    pub fn finalize(mut self, total: u64) -> String {
        if self.in_block > 0 || total == 0 {
            let digest = self.block.finalize();
            self.outer.update(digest);
        }
        self.outer
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Size and [`TreeHasher`] digest of a file, reading only its data extents.
/// The 4 MiB blocks are independent until the outer hash, so they are hashed
/// on every core at once (each worker `pread`s its own blocks); whole blocks
/// inside holes cost nothing. Same digest as streaming the file through a
/// [`TreeHasher`].
pub fn sum_file(path: &Path) -> std::io::Result<FileSum> {
    let (len, digests) = block_digests(path)?;
    Ok(FileSum {
        size: len,
        sha256: tree_root(&digests),
    })
}

/// The sha256 of each [`HASH_BLOCK`] of a file (the last one short), read as
/// [`sum_file`] reads them: whole blocks inside holes are not read and get
/// [`zero_block_digest`]. With the file's length.
pub fn block_digests(path: &Path) -> std::io::Result<(u64, Vec<[u8; 32]>)> {
    block_digests_of(&std::fs::File::open(path)?, &|| false)
}

/// [`block_digests`] of an open file; `cancelled` is asked before each
/// block, and a `true` ends the sum with [`std::io::ErrorKind::Interrupted`].
pub fn block_digests_of(
    file: &std::fs::File,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> std::io::Result<(u64, Vec<[u8; 32]>)> {
    let len = file.metadata()?.len();
    let holes = hole_blocks(file, len)?;
    let blocks = usize::try_from(len.div_ceil(HASH_BLOCK).max(1))
        .map_err(|_| std::io::Error::other("file too large to hash here"))?;
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(blocks);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let digests: Vec<std::sync::Mutex<Option<[u8; 32]>>> =
        (0..blocks).map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| -> std::io::Result<()> {
        let work = || -> std::io::Result<()> {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0u8; HASH_BLOCK_LEN];
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= blocks {
                    return Ok(());
                }
                if cancelled() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::Interrupted,
                        "cancelled",
                    ));
                }
                let start = i as u64 * HASH_BLOCK;
                let size = block_len((len - start.min(len)).min(HASH_BLOCK));
                let digest: [u8; 32] = if size == HASH_BLOCK_LEN && holes.contains(&(i as u64)) {
                    zero_block()
                } else {
                    file.read_exact_at(&mut buf[..size], start).map_err(|e| {
                        if e.kind() == std::io::ErrorKind::UnexpectedEof {
                            std::io::Error::new(e.kind(), "file shrank while hashing")
                        } else {
                            e
                        }
                    })?;
                    if size == HASH_BLOCK_LEN && all_zero(&buf) {
                        zero_block()
                    } else {
                        Sha256::digest(&buf[..size]).into()
                    }
                };
                *digests[i].lock().expect("no worker panics holding it") = Some(digest);
            }
        };
        let handles: Vec<_> = (1..workers).map(|_| scope.spawn(work)).collect();
        let mine = work();
        for handle in handles {
            handle.join().expect("hash worker panicked")?;
        }
        mine
    })?;
    let digests = digests
        .into_iter()
        .map(|d| {
            d.into_inner()
                .expect("unpoisoned")
                .expect("every block hashed")
        })
        .collect();
    Ok((len, digests))
}

/// The [`TreeHasher`] digest of a file whose blocks have `digests`.
pub fn tree_root(digests: &[[u8; 32]]) -> String {
    let mut outer = Sha256::new();
    for digest in digests {
        outer.update(digest);
    }
    outer
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `block` is all zeros: a guest's untouched memory, written out by
/// its VMM as zero pages rather than holes, then costs a `memcmp` instead
/// of a sha256 (same digest: [`zero_block`]). The overlapping compare
/// (`b[0] == 0` and `b[1..] == b[..n-1]`) is libc's vectorised `memcmp`
/// and stops at the first non-zero byte.
fn all_zero(block: &[u8]) -> bool {
    match block.split_first() {
        Some((first, rest)) => *first == 0 && rest == &block[..block.len() - 1],
        None => true,
    }
}

/// The digest of a whole [`HASH_BLOCK`] of zeros: a hole.
pub fn zero_block() -> [u8; 32] {
    zero_block_digest().try_into().expect("32 bytes")
}

/// Indexes of the whole [`HASH_BLOCK`]s of `file` that lie inside holes
/// (found with SEEK_DATA/SEEK_HOLE; a filesystem without them has none).
fn hole_blocks(file: &std::fs::File, len: u64) -> std::io::Result<std::collections::HashSet<u64>> {
    use rustix::fs::{SeekFrom, seek};
    let mut holes = std::collections::HashSet::new();
    let mut pos = 0u64;
    while pos < len {
        let data = match seek(file, SeekFrom::Data(pos)) {
            Ok(d) => d.min(len),
            Err(rustix::io::Errno::NXIO) => len,
            Err(e) => return Err(e.into()),
        };
        // Blocks wholly inside [pos, data).
        let first = pos.div_ceil(HASH_BLOCK);
        let end = data / HASH_BLOCK;
        holes.extend(first..end);
        if data >= len {
            break;
        }
        pos = seek(file, SeekFrom::Hole(data))?.min(len);
    }
    Ok(holes)
}

/// The size of every regular file of `dir` except the manifest, digests
/// not computed (an unsealed manifest's `files`).
pub fn size_dir(dir: &Path) -> std::io::Result<BTreeMap<String, FileEntry>> {
    map_dir(dir, |entry| {
        Ok(FileEntry::unsealed(entry.metadata()?.len()))
    })
}

/// Sums every regular file of `dir` except the manifest.
pub fn sum_dir(dir: &Path) -> std::io::Result<BTreeMap<String, FileSum>> {
    map_dir(dir, |entry| sum_file(&entry.path()))
}

/// `what` of every regular file of `dir` except the manifest, by name.
fn map_dir<T>(
    dir: &Path,
    what: impl Fn(&std::fs::DirEntry) -> std::io::Result<T>,
) -> std::io::Result<BTreeMap<String, T>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == MANIFEST || !entry.file_type()?.is_file() {
            continue;
        }
        files.insert(name, what(&entry)?);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    /// A test file's (small) offset or length as an index.
    fn at(n: u64) -> usize {
        usize::try_from(n).unwrap()
    }

    #[test]
    fn only_blocks_of_zeros_are_taken_for_zero_blocks() {
        let zeros = vec![0u8; HASH_BLOCK_LEN];
        assert!(all_zero(&zeros));
        assert!(all_zero(&[]));
        for at in [0, 1, HASH_BLOCK_LEN / 2, HASH_BLOCK_LEN - 1] {
            let mut block = zeros.clone();
            block[at] = 1;
            assert!(!all_zero(&block), "a non-zero byte at {at}");
        }
        assert!(!all_zero(&vec![7u8; HASH_BLOCK_LEN]));
        assert_eq!(zero_block(), <[u8; 32]>::from(Sha256::digest(&zeros)));
    }

    #[test]
    fn tree_hash_is_the_same_for_holes_and_written_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let sparse = dir.path().join("sparse");
        let dense = dir.path().join("dense");
        let len = 3 * HASH_BLOCK + 12345;
        let mut f = std::fs::File::create(&sparse).unwrap();
        f.set_len(len).unwrap();
        f.seek(SeekFrom::Start(HASH_BLOCK + 7)).unwrap();
        f.write_all(b"data").unwrap();
        let mut content = vec![0u8; at(len)];
        content[at(HASH_BLOCK + 7)..at(HASH_BLOCK + 11)].copy_from_slice(b"data");
        std::fs::write(&dense, &content).unwrap();
        let (a, b) = (sum_file(&sparse).unwrap(), sum_file(&dense).unwrap());
        assert_eq!(a, b);
        assert_eq!(a.size, len);
        // Streaming in odd pieces gives the same digest.
        let mut h = TreeHasher::default();
        for chunk in content.chunks(999_999) {
            h.update(chunk);
        }
        assert_eq!(h.finalize(len), a.sha256);
        // One changed byte changes it.
        content[5] = 1;
        std::fs::write(&dense, &content).unwrap();
        assert_ne!(sum_file(&dense).unwrap(), a);
        // Empty file: defined.
        std::fs::write(&dense, b"").unwrap();
        assert_eq!(sum_file(&dense).unwrap().size, 0);
    }

    /// The parallel sum equals the streaming hasher for sizes around block
    /// edges, and for holes at the start, middle and end, whole or partial.
    #[test]
    fn parallel_sum_matches_streaming() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let b = HASH_BLOCK;
        let cases: &[(u64, &[(u64, u64)])] = &[
            (0, &[]),
            (1, &[(0, 1)]),
            (b - 1, &[(0, b - 1)]),
            (b, &[(0, b)]),
            (b + 1, &[(b, 1)]),
            (5 * b + 77, &[(b + 3, 10), (4 * b, 200)]),
            (5 * b, &[(2 * b - 5, 10)]),
            (3 * b + 9, &[]),
        ];
        for (len, writes) in cases {
            let mut content = vec![0u8; at(*len)];
            let mut f = std::fs::File::create(&path).unwrap();
            f.set_len(*len).unwrap();
            for (i, (start, n)) in writes.iter().enumerate() {
                // A repeating byte pattern: the truncation is the point.
                #[allow(clippy::cast_possible_truncation)]
                let data: Vec<u8> = (0..*n)
                    .map(|k| (k as u8).wrapping_add(i as u8 + 1))
                    .collect();
                f.seek(SeekFrom::Start(*start)).unwrap();
                f.write_all(&data).unwrap();
                content[at(*start)..at(*start + *n)].copy_from_slice(&data);
            }
            drop(f);
            let mut h = TreeHasher::default();
            h.update(&content);
            let sum = sum_file(&path).unwrap();
            assert_eq!(sum.size, *len);
            assert_eq!(sum.sha256, h.finalize(*len), "len {len}, writes {writes:?}");
        }
    }
}
