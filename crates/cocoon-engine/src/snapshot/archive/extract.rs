//! Writing one entry's content into its file: each data segment at its
//! offset, holes left as holes, the digest computed on the way.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::ArchiveError;
use super::progress::Progress;
use super::reader::TarReader;
use super::sparse::Segment;
use crate::snapshot::manifest::TreeHasher;

/// Zero blocks of this size are skipped instead of written, so that a dense
/// entry (cocoon (Go) wrote memory files densely) still lands sparse.
const ZERO_BLOCK: u64 = ZERO_BLOCK_LEN as u64;
const ZERO_BLOCK_LEN: usize = 4096;

/// Copies entries' data into files, with one reusable buffer.
pub(super) struct Extractor<'a> {
    buf: Vec<u8>,
    pub progress: Progress<'a>,
}

impl<'a> Extractor<'a> {
    pub fn new(progress: Progress<'a>) -> Self {
        Extractor {
            buf: vec![0; 1 << 20],
            progress,
        }
    }

    /// Reads the data of `segments` from `tar` into `file`, then sets its
    /// size. `segments` must have passed [`super::sparse::check`].
    pub fn write<R: Read>(
        &mut self,
        tar: &mut TarReader<R>,
        (path, file): (&Path, &File),
        segments: &[Segment],
        real_size: u64,
        mut hasher: Option<&mut TreeHasher>,
    ) -> Result<(), ArchiveError> {
        let dest = |source| ArchiveError::Dest {
            path: path.to_path_buf(),
            source,
        };
        let mut pos = 0;
        for segment in segments {
            let gap = segment.offset - pos;
            if let Some(h) = hasher.as_deref_mut() {
                h.update_zeros(gap);
            }
            self.progress.advance(gap);
            let mut at = segment.offset;
            let end = segment.offset + segment.len;
            while at < end {
                let want = self
                    .buf
                    .len()
                    .min(usize::try_from(end - at).unwrap_or(usize::MAX));
                let n = tar.read_data(&mut self.buf[..want])?;
                if n == 0 {
                    return Err(ArchiveError::Truncated {
                        what: format!("{} ends before its data", path.display()),
                    });
                }
                let data = &self.buf[..n];
                write_skipping_zeros(file, at, data).map_err(dest)?;
                if let Some(h) = hasher.as_deref_mut() {
                    h.update(data);
                }
                self.progress.advance(n as u64);
                at += n as u64;
            }
            pos = end;
        }
        if let Some(h) = hasher {
            h.update_zeros(real_size - pos);
        }
        self.progress.advance(real_size - pos);
        file.set_len(real_size).map_err(dest)
    }
}

/// Writes `data` at `offset`, leaving aligned all-zero blocks unwritten (the
/// file is new, so they read back as zeros and take no space).
fn write_skipping_zeros(file: &File, offset: u64, data: &[u8]) -> std::io::Result<()> {
    let mut run_start = 0;
    let mut i = 0;
    while i < data.len() {
        let to_boundary = super::small_len(ZERO_BLOCK - (offset + i as u64) % ZERO_BLOCK);
        let block_end = data.len().min(i + to_boundary);
        let block = &data[i..block_end];
        if block.len() == ZERO_BLOCK_LEN && block.iter().all(|b| *b == 0) {
            if run_start < i {
                file.write_all_at(&data[run_start..i], offset + run_start as u64)?;
            }
            run_start = block_end;
        }
        i = block_end;
    }
    if run_start < data.len() {
        file.write_all_at(&data[run_start..], offset + run_start as u64)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn zero_blocks_become_holes_and_the_rest_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        // Starts mid-block: the partial first block is written even if zero.
        let mut data = vec![0u8; 64 * ZERO_BLOCK_LEN];
        data[10] = 1;
        let last = data.len() - 1;
        data[last] = 2;
        write_skipping_zeros(&file, 100, &data).unwrap();
        file.set_len(100 + data.len() as u64).unwrap();
        let back = std::fs::read(&path).unwrap();
        assert_eq!(&back[100..], &data[..]);
        assert!(back[..100].iter().all(|b| *b == 0));
        // Two or three blocks written, not 64.
        assert!(file.metadata().unwrap().blocks() * 512 <= 4 * ZERO_BLOCK);
    }
}
