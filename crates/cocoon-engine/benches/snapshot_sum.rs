//! The snapshot checksum (`cocoon.json`'s per-file sha256 tree over 4 MiB
//! blocks): the engine's `sum_file`, which hashes blocks on every core,
//! against the same digest computed by one thread streaming the file's data
//! extents through `TreeHasher` (what `sum_file` did before), on the same files in the same
//! run. Files: a 512 MiB memory-like file of random bytes, and a 2 GiB sparse
//! disk with 256 MiB of data, and a 512 MiB file written in full but zero
//! except for 64 MiB (a fresh guest's memory as its VMM saves it: zero
//! blocks are recognised without hashing). Page cache warm (a snapshot is hashed right
//! after the VMM wrote it).
//! Run: `cargo bench -p cocoon-engine --bench snapshot_sum` (or bench/run.sh).
// Test inputs: the values are built to fit the fields they fill.
#![allow(clippy::cast_possible_truncation)]

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use cocoon_engine::snapshot::manifest::{TreeHasher, sum_file};

const ROUNDS: usize = 5;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// The single-threaded baseline (what `sum_file` did before): data extents
/// found with SEEK_DATA/SEEK_HOLE, read in order and streamed through one
/// `TreeHasher`; holes hashed as zeros without being read.
fn streaming(path: &Path) -> String {
    let mut file = std::fs::File::open(path).unwrap();
    let len = file.metadata().unwrap().len();
    let mut hasher = TreeHasher::default();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < len {
        let data = match rustix::fs::seek(&file, rustix::fs::SeekFrom::Data(pos)) {
            Ok(d) => d.min(len),
            Err(_) => len,
        };
        hasher.update_zeros(data - pos);
        if data >= len {
            break;
        }
        let hole = rustix::fs::seek(&file, rustix::fs::SeekFrom::Hole(data))
            .unwrap()
            .min(len);
        file.seek(SeekFrom::Start(data)).unwrap();
        let mut left = hole - data;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = file.read(&mut buf[..want]).unwrap();
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        pos = hole;
    }
    hasher.finalize(len)
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn main() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let memory = dir.path().join("memory");
    std::fs::write(&memory, noise(512 << 20, 7)).unwrap();
    let disk = dir.path().join("disk");
    {
        let mut f = std::fs::File::create(&disk).unwrap();
        f.set_len(2 << 30).unwrap();
        for (i, at) in [0u64, 700 << 20, 1500 << 20, (2 << 30) - (64 << 20)]
            .iter()
            .enumerate()
        {
            f.seek(SeekFrom::Start(*at)).unwrap();
            f.write_all(&noise(64 << 20, i as u64 + 11)).unwrap();
        }
    }
    // A freshly booted guest's memory as a VMM writes it: every page
    // written (no holes), most of them zero; 64 MiB of data in 1 MiB runs,
    // one every 8 MiB, so half the 4 MiB blocks hold some data and are
    // hashed in full (only whole zero blocks are skipped).
    let guest = dir.path().join("guest");
    {
        let mut image = vec![0u8; 512 << 20];
        for run in 0..64usize {
            let at = run * (8 << 20);
            image[at..at + (1 << 20)].copy_from_slice(&noise(1 << 20, run as u64 + 31));
        }
        std::fs::write(&guest, image).unwrap();
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("snapshot checksum, median of {ROUNDS}, {cores} cores, page cache warm");
    println!(
        "{:<34} {:>12} {:>12} {:>8}",
        "file", "1 thread", "sum_file", "speedup"
    );
    for (name, path) in [
        ("memory, 512 MiB random", &memory),
        ("disk, 2 GiB sparse, 256 MiB data", &disk),
        ("guest memory, 512 MiB, 1/8 data", &guest),
    ] {
        // Warm the cache, and check both give one digest.
        assert_eq!(streaming(path), sum_file(path).unwrap().sha256);
        let mut base = Vec::new();
        let mut ours = Vec::new();
        for _ in 0..ROUNDS {
            let t = Instant::now();
            std::hint::black_box(streaming(path));
            base.push(t.elapsed());
            let t = Instant::now();
            std::hint::black_box(sum_file(path).unwrap());
            ours.push(t.elapsed());
        }
        let (b, o) = (median(base), median(ours));
        println!(
            "{name:<34} {:>9.1} ms {:>9.1} ms {:>7.2}x",
            b.as_secs_f64() * 1e3,
            o.as_secs_f64() * 1e3,
            b.as_secs_f64() / o.as_secs_f64()
        );
    }
}
