//! `image pull URL`: download (resuming a kept prefix), undo compression,
//! store the blob. The caller records the image, under the URL's lock.

use crate::image::limits::SpaceWatch;
use std::fs::File;
use std::io::BufReader;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::commit::{self, Stored};
use super::download::{self, Downloaded, Resumable};
use super::error::{CloudError, Origin, io_err};
use super::sniff::Compression;
use super::stage::{self, Counting, read_head};
use super::{CloudProgress, MAX_IMAGE_BYTES, Step};
use crate::image::store::{self, ImageDirs};

/// Held while a URL is pulled: a second pull of the same URL waits, then
/// finds the first one's image instead of downloading it again.
#[derive(Debug)]
pub struct UrlLock {
    _file: File,
}

/// Takes the URL's lock; `waiting` is called if another process holds it.
pub fn lock_url(
    dirs: &ImageDirs,
    url: &str,
    waiting: impl FnOnce(),
) -> Result<UrlLock, CloudError> {
    dirs.create().map_err(io_err("cannot create", &dirs.root))?;
    let path = dirs
        .root
        .join("locks")
        .join(format!("url-{}.lock", download::url_key(url)));
    let file = store::open_lock_file(&path).map_err(io_err("cannot lock", &path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            waiting();
            file.lock().map_err(io_err("cannot lock", &path))?;
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io_err("cannot lock", &path)(e)),
    }
    Ok(UrlLock { _file: file })
}

/// What a pull fetched and stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub downloaded: Downloaded,
    pub stored: Stored,
}

/// Downloads `url` and stores it as a blob. `force` drops a kept partial
/// download first. Interrupted downloads keep their bytes for the next pull;
/// payloads that are not storable images are deleted.
pub fn fetch(
    dirs: &ImageDirs,
    url: &str,
    force: bool,
    conns: usize,
    progress: &dyn CloudProgress,
) -> Result<Fetched, CloudError> {
    dirs.create().map_err(io_err("cannot create", &dirs.root))?;
    let files = Resumable::new(dirs, url);
    if force {
        files.discard();
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CloudError::Request {
            url: url.to_string(),
            reason: format!("cannot start the async runtime: {e}"),
        })?;
    let downloaded = runtime.block_on(download::download(
        url,
        &files,
        MAX_IMAGE_BYTES,
        conns,
        progress,
    ))?;
    let origin = Origin::Url(url.to_string());
    let result = store_download(dirs, &files, &downloaded, &origin, progress);
    match &result {
        Ok(_) => files.discard(),
        Err(e) if e.condemns_download() => files.discard(),
        // Missing qemu-img, a full disk: the complete download stays, and the
        // next pull finds it complete (a 416 to its range request).
        Err(_) => {}
    }
    Ok(Fetched {
        downloaded,
        stored: result?,
    })
}

fn store_download(
    dirs: &ImageDirs,
    files: &Resumable,
    downloaded: &Downloaded,
    origin: &Origin,
    progress: &dyn CloudProgress,
) -> Result<Stored, CloudError> {
    let head = read_head(&files.partial)?;
    let Some(compression) = Compression::detect(&head) else {
        return commit::store(
            dirs,
            &files.partial,
            &downloaded.digest,
            false,
            origin,
            progress,
        );
    };
    progress.begin(Step::Decompress {
        compression,
        total: Some(downloaded.size),
    });
    let file = File::open(&files.partial).map_err(io_err("cannot open", &files.partial))?;
    let count = Arc::new(AtomicU64::new(0));
    let counting = Counting {
        inner: file,
        count: count.clone(),
    };
    let mut decoder = compression.decoder(BufReader::with_capacity(1 << 20, counting));
    let staged = stage::stage(
        &dirs.root.join("tmp"),
        &mut decoder,
        origin,
        Some(MAX_IMAGE_BYTES),
        Some(&mut SpaceWatch::new(
            &dirs.root,
            &format!("decompressing {origin}"),
        )),
        &|e| CloudError::Decompress {
            origin: origin.clone(),
            compression,
            reason: e.to_string(),
        },
        &mut |_| progress.advance(count.load(Ordering::Relaxed)),
    )?;
    if let Some(inner) = Compression::detect(&read_head(staged.file.path())?) {
        return Err(CloudError::CompressedTwice {
            origin: origin.clone(),
            outer: compression,
            inner,
        });
    }
    commit::store(
        dirs,
        staged.file.path(),
        &staged.digest,
        true,
        origin,
        progress,
    )
}
