//! The engine facade: configuration plus the state store, and the operations
//! the CLI exposes. Each operation lives with its domain; this is the door.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::image::cloud::{self, CloudProgress};
use crate::image::oci::{self, PullProgress, RegistryOptions};
use crate::image::store::ImageDirs;
use crate::lock::{VmLock, create_private_dir};
use crate::model::{Image, ImageType, Snapshot, VmView};
use crate::store::{ObjectKind, Store, StoreError};

/// How long a command waits for another command on the same VM before failing busy.
pub const VM_LOCK_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Engine {
    config: Config,
    store: Store,
    /// The program a console relay runs as (the `cocoon` binary).
    helper_exe: Option<PathBuf>,
}

/// How to point the engine elsewhere, as `cocoon doctor` words it.
fn set_elsewhere(name: &str) -> String {
    match crate::config::key(name) {
        Some(key) => match key.flag {
            Some(flag) => format!("set {name} ({flag} or {}) to another directory", key.env),
            None => format!(
                "set {name} in the config file (or {}) to another directory",
                key.env
            ),
        },
        None => format!("set {name} to another directory"),
    }
}

/// Refuses a state directory someone else could have planted: one that is
/// a symbolic link, not a directory, owned by another user, or writable by
/// group or others (with the sticky bit too: others could still create the
/// names cocoon is about to create). Checked on the directory's own
/// descriptor (opened `O_DIRECTORY | O_NOFOLLOW`, then `fstat`), never on a
/// path looked up twice.
fn check_state_dir(name: &'static str, path: &Path) -> Result<()> {
    use rustix::fs::{Mode, OFlags};
    let shown = path.display();
    let refuse = |why: String, fix: String| {
        Error::Invalid(format!("refusing to use {name} {shown}: {why}; {fix}"))
    };
    let fd = match rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(e) if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::NOTDIR => {
            let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
            let why = if link {
                "it is a symbolic link".to_string()
            } else {
                "it is not a directory".to_string()
            };
            let fix = if link {
                format!(
                    "set {name} to the directory it points to, or {}",
                    set_elsewhere(name)
                )
            } else {
                format!("remove {shown}, or {}", set_elsewhere(name))
            };
            return Err(refuse(why, fix));
        }
        Err(e) => {
            return Err(Error::io(
                format!("cannot open {name} {shown}"),
                std::io::Error::from(e),
            ));
        }
    };
    let stat = rustix::fs::fstat(&fd)
        .map_err(|e| Error::io(format!("cannot inspect {name} {shown}"), e.into()))?;
    let euid = rustix::process::geteuid().as_raw();
    if stat.st_uid != euid {
        return Err(refuse(
            format!(
                "it is owned by uid {}, not by this user (uid {euid}), so another user could have planted files in it",
                stat.st_uid
            ),
            format!(
                "if {shown} is really cocoon's, `chown {euid} {shown}`; otherwise {}",
                set_elsewhere(name)
            ),
        ));
    }
    let mode = stat.st_mode & 0o7777;
    if writable_by_others(mode) {
        return Err(refuse(
            format!(
                "it is writable by other users (mode {mode:04o}), so anyone could plant files in it"
            ),
            format!(
                "`chmod go-w {shown}` if it is cocoon's own directory; otherwise {}",
                set_elsewhere(name)
            ),
        ));
    }
    Ok(())
}

/// The missing directories among `path` and its ancestors, outermost first.
fn missing_dirs(path: &Path) -> Vec<PathBuf> {
    let mut missing: Vec<PathBuf> = path
        .ancestors()
        .take_while(|dir| {
            !dir.as_os_str().is_empty()
                && std::fs::symlink_metadata(dir)
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
        })
        .map(Path::to_path_buf)
        .collect();
    missing.reverse();
    missing
}

/// `root_dir` checked if it exists, else created 0750 with the parents it
/// needs, each of which is then checked too (nobody swapped one in between);
/// `run_dir` and `log_dir`, created when first used, are checked if they exist.
/// Whether a directory of this mode lets other users plant files in it:
/// writable by group or others, sticky or not (the sticky bit only keeps
/// them from removing others' files, not from creating the names cocoon is
/// about to create). `Engine::open` refuses such a state directory and
/// `cocoon doctor` reports it.
pub(crate) fn writable_by_others(mode: u32) -> bool {
    mode & 0o022 != 0
}

fn prepare_state_dirs(config: &Config) -> Result<()> {
    let created = missing_dirs(&config.root_dir);
    if !created.is_empty() {
        create_private_dir(&config.root_dir).map_err(|e| {
            Error::io(
                format!("cannot create root directory {}", config.root_dir.display()),
                e,
            )
        })?;
    }
    for dir in &created {
        check_state_dir("root_dir", dir)?;
    }
    if created.is_empty() {
        check_state_dir("root_dir", &config.root_dir)?;
    }
    for (name, dir) in [("run_dir", &config.run_dir), ("log_dir", &config.log_dir)] {
        if std::fs::symlink_metadata(dir).is_ok() {
            check_state_dir(name, dir)?;
        }
    }
    Ok(())
}

impl Engine {
    /// Creates the root directory if needed (refusing state directories
    /// another user could have planted) and opens (migrating) the state database.
    pub fn open(config: Config) -> Result<Engine> {
        prepare_state_dirs(&config)?;
        let store = Store::open(&config.db_path())?;
        Ok(Engine {
            config,
            store,
            helper_exe: None,
        })
    }

    /// The executable started as a VM's console relay: the running program by
    /// default (the `cocoon` CLI), settable for embedders.
    pub fn helper_exe(&self) -> PathBuf {
        // /proc/self/exe still runs this very binary after an upgrade (or a
        // rebuild) replaced the file on disk, where its path would not.
        self.helper_exe
            .clone()
            .unwrap_or_else(|| PathBuf::from("/proc/self/exe"))
    }

    pub fn set_helper_exe(&mut self, exe: PathBuf) {
        self.helper_exe = Some(exe);
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn store(&mut self) -> &mut Store {
        &mut self.store
    }

    /// Where snapshots keep their files: `<root_dir>/snapshots/<id>`.
    pub fn snapshot_root(&self) -> PathBuf {
        self.config.root_dir.join("snapshots")
    }

    /// Serialises operations on one VM across processes.
    pub fn lock_vm(&self, id: &str) -> Result<VmLock> {
        Ok(VmLock::acquire(&self.config.run_dir, id, VM_LOCK_TIMEOUT)?)
    }

    /// Every VM, oldest first, with its state checked against its VMM process.
    pub fn list_vms(&mut self) -> Result<Vec<VmView>> {
        Ok(self
            .store
            .list_vms()?
            .into_iter()
            .map(VmView::reconcile)
            .collect())
    }

    pub fn inspect_vm(&mut self, reference: &str) -> Result<VmView> {
        Ok(VmView::reconcile(self.store.resolve_vm(reference)?))
    }

    /// Pulls an OCI image: resolves the manifest (or index, for this platform),
    /// fetches and converts the layers the store lacks, and records the image.
    /// An unchanged tag whose layers are all present costs one manifest request.
    pub fn pull_image(
        &mut self,
        reference: &str,
        progress: &dyn PullProgress,
    ) -> Result<PullOutcome> {
        let parsed = oci::parse_reference(reference)?;
        let name = parsed.whole();
        let options = RegistryOptions::from_config(&self.config);
        let dirs = ImageDirs::new(&self.config.root_dir);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Error::io("cannot start the async runtime", e))?;
        let (digest, layers) = runtime.block_on(oci::resolve(&parsed, &options))?;
        if let Some(existing) = self
            .store
            .list_images()?
            .into_iter()
            .find(|i| i.name == name)
            && existing.id == digest
            && existing.layers.iter().all(|l| dirs.blob(l).is_file())
        {
            return Ok(PullOutcome {
                image: existing,
                fetched_layers: 0,
                up_to_date: true,
            });
        }
        progress.manifest(&name, layers.len());
        let intent = self.store.begin_intent(
            "image.pull",
            ObjectKind::Image,
            &name,
            &serde_json::json!({"digest": digest}),
        )?;
        let pulled = runtime.block_on(oci::pull_layers(
            &parsed,
            layers,
            &dirs,
            &options,
            self.config.pool_size,
            progress,
        ));
        let pulled = match pulled.map_err(Error::from).and_then(|layers| {
            oci::require_boot_files(&name, &layers)?;
            crate::failpoint::hit("image.pull.layers")?;
            Ok(layers)
        }) {
            Ok(layers) => layers,
            Err(e) => {
                // Converted layers are complete and content-addressed: they stay
                // for the next pull, or for gc. Nothing else was written.
                intent.finish(&mut self.store)?;
                return Err(e);
            }
        };
        let fetched_layers = pulled.iter().filter(|l| l.fetched).count();
        let image = self.record_image(&name, digest, &pulled)?;
        crate::failpoint::hit("image.pull.recorded")?;
        intent.finish(&mut self.store)?;
        Ok(PullOutcome {
            image,
            fetched_layers,
            up_to_date: false,
        })
    }

    /// Imports local tar layers (bottom first; one compressed or plain tar
    /// stream from stdin when `files` is empty), or one cloud image (a qcow2
    /// or raw disk, whole or as split parts, possibly compressed), as `name`.
    pub fn import_image(&mut self, name: &str, files: &[std::path::PathBuf]) -> Result<Image> {
        self.import_image_with_progress(name, files, &cloud::NoCloudProgress)
    }

    pub fn import_image_with_progress(
        &mut self,
        name: &str,
        files: &[std::path::PathBuf],
        progress: &dyn CloudProgress,
    ) -> Result<Image> {
        use crate::image::import;
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::Invalid(format!(
                "invalid image name {name:?}: it must be non-empty, without spaces"
            )));
        }
        // Every source is opened and recognised before anything is converted.
        match import::open_all(files)? {
            import::Opened::Layers(readers) => self.import_layers(name, readers),
            import::Opened::Disk(disk) => self.import_cloud_image(name, disk, progress),
        }
    }

    fn import_layers(
        &mut self,
        name: &str,
        readers: Vec<(String, Box<dyn std::io::BufRead + Send>)>,
    ) -> Result<Image> {
        use crate::image::import;
        let dirs = ImageDirs::new(&self.config.root_dir);
        let intent = self.store.begin_intent(
            "image.import",
            ObjectKind::Image,
            name,
            &serde_json::json!({}),
        )?;
        let mut layers = Vec::with_capacity(readers.len());
        for (source_name, reader) in readers {
            match import::import_layer(&dirs, &source_name, reader, self.config.max_layer_bytes)
                .map_err(Error::from)
                .and_then(|layer| {
                    crate::failpoint::hit("image.import.layer")?;
                    Ok(layer)
                }) {
                Ok(layer) => layers.push(layer),
                Err(e) => {
                    intent.finish(&mut self.store)?;
                    return Err(e);
                }
            }
        }
        if let Err(e) = oci::require_boot_files(name, &layers) {
            intent.finish(&mut self.store)?;
            return Err(e.into());
        }
        // cocoon's import identity: sha256 over the layer digests in order.
        let id = {
            use sha2::{Digest, Sha256};
            let mut hasher = Sha256::new();
            for layer in &layers {
                hasher.update(layer.digest.hex().as_bytes());
            }
            crate::digest::Digest::of(hasher)
        };
        let image = self.record_image(name, id, &layers)?;
        crate::failpoint::hit("image.import.recorded")?;
        intent.finish(&mut self.store)?;
        Ok(image)
    }

    /// Pulls a cloud image from an http(s) URL. A URL already recorded with
    /// its blob present is up to date without a request, unless `force`,
    /// which downloads again (dropping any kept partial download); content
    /// already stored is never converted twice. An interrupted download is
    /// kept and resumed by the next pull where the server allows.
    pub fn pull_cloud_image(
        &mut self,
        url: &str,
        force: bool,
        progress: &dyn CloudProgress,
    ) -> Result<CloudPullOutcome> {
        cloud::download::parse_url(url)?;
        let dirs = ImageDirs::new(&self.config.root_dir);
        let up_to_date = |image| CloudPullOutcome {
            image,
            up_to_date: true,
            fetched: None,
        };
        if !force && let Some(image) = self.stored_cloud_image(url, &dirs)? {
            return Ok(up_to_date(image));
        }
        let _lock = cloud::pull::lock_url(&dirs, url, || {
            tracing::info!("waiting for another pull of {url} to finish")
        })?;
        // The pull we waited for may have stored it.
        let existing = self.stored_cloud_image(url, &dirs)?;
        if !force && let Some(image) = existing {
            return Ok(up_to_date(image));
        }
        let intent = self.store.begin_intent(
            "image.pull",
            ObjectKind::Image,
            url,
            &serde_json::json!({ "url": url }),
        )?;
        let result = cloud::pull::fetch(&dirs, url, force, progress)
            .map_err(Error::from)
            .and_then(|fetched| {
                crate::failpoint::hit("image.pull.fetched")?;
                let image = match existing {
                    // Same content under the same URL: the record stands as is.
                    Some(image) if image.id == fetched.stored.digest => image,
                    _ => self.record_cloud_image(url, &fetched.stored)?,
                };
                crate::failpoint::hit("image.pull.recorded")?;
                Ok(CloudPullOutcome {
                    image,
                    up_to_date: false,
                    fetched: Some(fetched),
                })
            });
        intent.finish(&mut self.store)?;
        result
    }

    /// The cloud image recorded under `name`, if its blob is present.
    fn stored_cloud_image(&mut self, name: &str, dirs: &ImageDirs) -> Result<Option<Image>> {
        Ok(self.store.list_images()?.into_iter().find(|i| {
            i.name == name
                && i.kind == ImageType::Cloudimg
                && cloud::blob_path(dirs, &i.id).is_file()
        }))
    }

    fn import_cloud_image(
        &mut self,
        name: &str,
        disk: cloud::import::DiskSource,
        progress: &dyn CloudProgress,
    ) -> Result<Image> {
        let dirs = ImageDirs::new(&self.config.root_dir);
        let intent = self.store.begin_intent(
            "image.import",
            ObjectKind::Image,
            name,
            &serde_json::json!({ "source": disk.name }),
        )?;
        let result = cloud::import::store_disk(&dirs, disk, progress)
            .map_err(Error::from)
            .and_then(|stored| {
                crate::failpoint::hit("image.import.stored")?;
                let image = self.record_cloud_image(name, &stored)?;
                crate::failpoint::hit("image.import.recorded")?;
                Ok(image)
            });
        intent.finish(&mut self.store)?;
        result
    }

    /// Records a cloud image whose blob is stored, pinning the blob.
    fn record_cloud_image(&mut self, name: &str, stored: &cloud::commit::Stored) -> Result<Image> {
        let image = Image {
            id: stored.digest.clone(),
            name: name.to_string(),
            kind: ImageType::Cloudimg,
            size: stored.size,
            created_at: jiff::Timestamp::now(),
            layers: Vec::new(),
            kernel_layer: None,
            initrd_layer: None,
        };
        self.store.put_image(
            &image,
            &[(stored.digest.to_string(), "qcow2".to_string(), stored.size)],
        )?;
        Ok(image)
    }

    /// Records an image made of stored layers, pinning its blobs.
    fn record_image(
        &mut self,
        name: &str,
        id: crate::digest::Digest,
        layers: &[oci::PulledLayer],
    ) -> Result<Image> {
        let dirs = ImageDirs::new(&self.config.root_dir);
        let pulled = oci::Pulled {
            name: name.to_string(),
            manifest_digest: id.clone(),
            layers: layers.to_vec(),
        };
        let file_size = |path: std::path::PathBuf| std::fs::metadata(path).map_or(0, |m| m.len());
        let size = layers.iter().map(|l| l.erofs_size).sum::<u64>()
            + pulled
                .kernel_layer()
                .map_or(0, |d| file_size(dirs.kernel(d)))
            + pulled
                .initrd_layer()
                .map_or(0, |d| file_size(dirs.initrd(d)));
        let image = Image {
            id,
            name: name.to_string(),
            kind: ImageType::Oci,
            size,
            created_at: jiff::Timestamp::now(),
            layers: layers.iter().map(|l| l.digest.clone()).collect(),
            kernel_layer: pulled.kernel_layer().cloned(),
            initrd_layer: pulled.initrd_layer().cloned(),
        };
        let blobs: Vec<(String, String, u64)> = layers
            .iter()
            .map(|l| (l.digest.to_string(), "erofs".to_string(), l.erofs_size))
            .collect();
        self.store.put_image(&image, &blobs)?;
        Ok(image)
    }

    pub fn list_images(&mut self) -> Result<Vec<Image>> {
        Ok(self.store.list_images()?)
    }

    /// One image; a digest prefix shared by several names is ambiguous here.
    pub fn inspect_image(&mut self, reference: &str) -> Result<Image> {
        let mut found = self
            .store
            .resolve_images(reference, &normalized(reference))?;
        if found.len() > 1 {
            return Err(StoreError::Ambiguous {
                kind: ObjectKind::Image,
                reference: reference.to_string(),
                candidates: found
                    .iter()
                    .map(|i| crate::store::Candidate {
                        id: i.id.to_string(),
                        name: i.name.clone(),
                    })
                    .collect(),
            }
            .into());
        }
        Ok(found.remove(0))
    }

    /// Removes index entries; a digest removes every name that shares it. All
    /// references are resolved before anything is removed.
    pub fn remove_images(&mut self, references: &[String]) -> Result<Vec<Image>> {
        let mut names: Vec<String> = Vec::new();
        for reference in references {
            for image in self
                .store
                .resolve_images(reference, &normalized(reference))?
            {
                if !names.contains(&image.name) {
                    names.push(image.name);
                }
            }
        }
        Ok(self.store.remove_images(&names)?)
    }

    pub fn list_snapshots(&mut self, vm: Option<&str>) -> Result<Vec<Snapshot>> {
        let vm_id = match vm {
            Some(reference) => Some(self.store.resolve_vm(reference)?.id),
            None => None,
        };
        Ok(self.store.list_snapshots(vm_id.as_deref())?)
    }

    pub fn inspect_snapshot(&mut self, reference: &str) -> Result<Snapshot> {
        Ok(self.store.resolve_snapshot(reference)?)
    }

    /// Removes snapshots: files first, then the record, so a failure leaves a
    /// record to retry with rather than files nothing points at. The source VM
    /// stops listing it in the same transaction (cocoon forgot that).
    pub fn remove_snapshots(&mut self, references: &[String]) -> Result<Vec<Snapshot>> {
        let snapshots = self.store.resolve_snapshots(references)?;
        let root = self.snapshot_root();
        let mut removed = Vec::with_capacity(snapshots.len());
        for snapshot in snapshots {
            remove_owned_dir(&root, &snapshot.data_dir)?;
            removed.push(self.store.delete_snapshot(&snapshot.id)?);
        }
        Ok(removed)
    }
}

/// The normalised spelling of an OCI reference (`ubuntu` → `docker.io/library/ubuntu:latest`).
fn normalized(reference: &str) -> Vec<String> {
    if let Some(name) = quick_normalize(reference) {
        return vec![name];
    }
    oci::parse_reference(reference)
        .map(|r| vec![r.whole()])
        .unwrap_or_default()
}

/// Docker's name normalisation for the plain `[host/]path[:tag]` shapes,
/// without building oci-client's reference regex, which costs ~40 ms per
/// process even in release builds and sat on every `vm create`. Anything
/// unusual (digests, upper case, odd characters) returns None and goes through
/// the full parser; a test checks both agree.
fn quick_normalize(reference: &str) -> Option<String> {
    let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/:".contains(c);
    if reference.is_empty() || !reference.chars().all(valid) || reference.contains("//") {
        return None;
    }
    let (domain, path) = match reference.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (first, rest.to_string())
        }
        Some(_) => ("docker.io", reference.to_string()),
        None => ("docker.io", format!("library/{reference}")),
    };
    if domain == "index.docker.io" || domain.ends_with(':') || path.is_empty() {
        return None;
    }
    let last = path.rsplit('/').next()?;
    let (repo_tail, tag) = match last.split_once(':') {
        Some((_, "")) => return None,
        Some((name, tag)) if !tag.contains(':') => (name, Some(tag)),
        Some(_) => return None,
        None => (last, None),
    };
    if repo_tail.is_empty() || path[..path.len() - last.len()].contains(':') {
        return None;
    }
    Some(format!(
        "{domain}/{path}{}",
        if tag.is_some() { "" } else { ":latest" }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_normalisation_agrees_with_the_parser() {
        for reference in [
            "ubuntu",
            "ubuntu:24.04",
            "library/ubuntu",
            "cocoonstack/cocoon/ubuntu:24.04",
            "ghcr.io/cocoonstack/cocoon/ubuntu:24.04",
            "localhost/foo",
            "localhost:5000/foo/bar:v1.2-rc_3",
            "127.0.0.1:5000/guest/test:1",
            "docker.io/library/busybox:latest",
            "registry.example.com:443/a/b/c/d",
        ] {
            let quick = quick_normalize(reference).expect(reference);
            let full = oci::parse_reference(reference).unwrap().whole();
            assert_eq!(quick, full, "{reference}");
        }
        for odd in [
            "Ubuntu",
            "a@sha256:abc",
            "",
            "a:",
            "index.docker.io/x",
            "a//b",
            "h:1/x:y:z",
        ] {
            assert_eq!(quick_normalize(odd), None, "{odd}");
        }
    }
}

/// What `pull_image` did.
#[derive(Debug, Clone)]
pub struct PullOutcome {
    pub image: Image,
    /// Layers downloaded and converted by this pull (the rest were in the store).
    pub fetched_layers: usize,
    /// The tag still names the recorded image and every layer is present: nothing was done.
    pub up_to_date: bool,
}

/// What `pull_cloud_image` did.
#[derive(Debug, Clone)]
pub struct CloudPullOutcome {
    pub image: Image,
    /// The URL was recorded and its blob present: no request was made.
    pub up_to_date: bool,
    /// What was downloaded and how it was stored (None when up to date).
    pub fetched: Option<cloud::pull::Fetched>,
}

/// Removes `dir` only if it lies inside `root`: a record's path never makes
/// cocoon delete something it does not own.
fn remove_owned_dir(root: &Path, dir: &Path) -> Result<()> {
    let inside = dir.starts_with(root)
        && dir != root
        && dir
            .components()
            .all(|c| !matches!(c, std::path::Component::ParentDir));
    if !inside {
        return Err(Error::Invalid(format!(
            "refusing to remove {}: it is outside the snapshot store {}",
            dir.display(),
            root.display()
        )));
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(
            format!("cannot remove snapshot files {}", dir.display()),
            e,
        )),
    }
}
