//! The engine facade: configuration plus the state store, and the operations
//! the CLI exposes. Each operation lives with its domain; this is the door.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::lock::{VmLock, create_private_dir};
use crate::model::{Image, Snapshot, VmView};
use crate::store::{ObjectKind, Store, StoreError};

/// How long a command waits for another command on the same VM before failing busy.
pub const VM_LOCK_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Engine {
    config: Config,
    store: Store,
}

impl Engine {
    /// Creates the root directory if needed and opens (migrating) the state database.
    pub fn open(config: Config) -> Result<Engine> {
        create_private_dir(&config.root_dir).map_err(|e| {
            Error::io(
                format!("cannot create root directory {}", config.root_dir.display()),
                e,
            )
        })?;
        let store = Store::open(&config.db_path())?;
        Ok(Engine { config, store })
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

    pub fn list_images(&mut self) -> Result<Vec<Image>> {
        Ok(self.store.list_images()?)
    }

    /// One image; a digest prefix shared by several names is ambiguous here.
    pub fn inspect_image(&mut self, reference: &str) -> Result<Image> {
        let mut found = self.store.resolve_images(reference, &[])?;
        if found.len() > 1 {
            return Err(StoreError::Ambiguous {
                kind: ObjectKind::Image,
                reference: reference.to_string(),
                candidates: found
                    .iter()
                    .map(|i| crate::store::Candidate {
                        id: i.id.clone(),
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
            for image in self.store.resolve_images(reference, &[])? {
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
