//! The one context every operation runs in: configuration, the state store,
//! the directory layout, the console relay's executable, and the tokio
//! runtimes, built on first use, whose `block_on` is called here and nowhere
//! else.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::image::store::ImageDirs;
use crate::intent::Op;
use crate::layout::Layout;
use crate::lock::VmLock;
use crate::net::NetContext;
use crate::store::{IntentGuard, Store};

/// How long a command waits for another command on the same VM before failing busy.
pub const VM_LOCK_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub(crate) struct Ctx {
    config: Config,
    store: Store,
    pub layout: Layout,
    /// The program a console relay runs as (the `cocoon` binary).
    helper_exe: Option<PathBuf>,
    runtime: Option<Arc<tokio::runtime::Runtime>>,
    parallel_runtime: Option<Arc<tokio::runtime::Runtime>>,
}

impl Ctx {
    pub fn new(config: Config, store: Store) -> Ctx {
        Ctx {
            layout: Layout::of(&config),
            config,
            store,
            helper_exe: None,
            runtime: None,
            parallel_runtime: None,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn store(&mut self) -> &mut Store {
        &mut self.store
    }

    pub fn images(&self) -> ImageDirs {
        self.layout.images()
    }

    pub fn net(&self) -> NetContext {
        NetContext::from_config(&self.config)
    }

    /// The executable started as a VM's console relay and as a snapshot's
    /// sealer (`snapshot::seal`): the running program by default (the
    /// `cocoon` CLI), settable for embedders.
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

    /// Serialises operations on one VM across processes.
    pub fn lock_vm(&self, id: &str) -> Result<VmLock> {
        Ok(VmLock::acquire(&self.config.run_dir, id, VM_LOCK_TIMEOUT)?)
    }

    /// A VM's lock and its record, read under the lock by exact ID; None
    /// when no record has the ID (a `vm rm` had the lock first, or crash
    /// recovery converges an intent of a VM that is gone). Then the wait
    /// leaves no trace: the run directory that taking the lock made again,
    /// with nothing in it but its lock file, goes too.
    pub fn lock_vm_if_recorded(&mut self, id: &str) -> Result<Option<(VmLock, crate::model::Vm)>> {
        let lock = self.lock_vm(id)?;
        match self.store.get_vm(id)? {
            Some(vm) => Ok(Some((lock, vm))),
            None => {
                lock.remove_if_bare();
                Ok(None)
            }
        }
    }

    /// [`Ctx::lock_vm_if_recorded`]; no record is "no such VM".
    pub fn lock_vm_record(&mut self, id: &str) -> Result<(VmLock, crate::model::Vm)> {
        self.lock_vm_if_recorded(id)?.ok_or_else(|| {
            crate::store::StoreError::NotFound {
                kind: crate::store::ObjectKind::Vm,
                reference: id.to_string(),
            }
            .into()
        })
    }

    /// The VM `reference` names (ID, name or ID prefix), locked, and its
    /// record read again under the lock.
    pub fn lock_resolved_vm(&mut self, reference: &str) -> Result<(VmLock, crate::model::Vm)> {
        let id = self.store.resolve_vm(reference)?.id;
        self.lock_vm_record(&id)
    }

    /// Runs async work to its end on the calling thread (a current-thread
    /// runtime): VM operations drive one future at a time, mostly waiting on
    /// a VMM's socket, and a worker thread would only add two thread starts
    /// to every command and a cross-thread wake-up to every reply.
    pub fn block_on<T>(&mut self, work: impl AsyncFnOnce(&mut Ctx) -> Result<T>) -> Result<T> {
        let runtime = Self::runtime(&mut self.runtime, false)?;
        runtime.block_on(work(self))
    }

    /// [`Ctx::block_on`] with two worker threads, for work whose tasks must
    /// run at once: a pull's or push's layers and pieces, and the signal
    /// watcher of a snapshot's pause window (it must see Ctrl+C while the
    /// calling thread copies disks).
    pub fn block_on_parallel<T>(
        &mut self,
        work: impl AsyncFnOnce(&mut Ctx) -> Result<T>,
    ) -> Result<T> {
        let runtime = Self::runtime(&mut self.parallel_runtime, true)?;
        runtime.block_on(work(self))
    }

    fn runtime(
        slot: &mut Option<Arc<tokio::runtime::Runtime>>,
        parallel: bool,
    ) -> Result<Arc<tokio::runtime::Runtime>> {
        if let Some(runtime) = slot {
            return Ok(runtime.clone());
        }
        let mut builder = if parallel {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(2);
            builder
        } else {
            tokio::runtime::Builder::new_current_thread()
        };
        let runtime = builder
            .enable_all()
            .build()
            .map_err(|e| Error::io("cannot start the async runtime", e))?;
        Ok(slot.insert(Arc::new(runtime)).clone())
    }

    /// Runs `work` under an intent: recorded before it starts, cleared when
    /// it returns, success or error (an error path rolls back first, inside
    /// `work`). A crash inside leaves the row for crash recovery, which is
    /// the point. `work` gets the guard to report steps.
    pub fn with_intent<T>(
        &mut self,
        op: &Op,
        object_id: &str,
        work: impl FnOnce(&mut Ctx, &IntentGuard) -> Result<T>,
    ) -> Result<T> {
        let guard = self
            .store
            .begin_intent(op.name(), op.kind(), object_id, &op.data())?;
        self.under_intent(guard, work)
    }

    /// [`Ctx::with_intent`] for an intent begun already (in one commit with
    /// the record it is about).
    pub fn under_intent<T>(
        &mut self,
        guard: IntentGuard,
        work: impl FnOnce(&mut Ctx, &IntentGuard) -> Result<T>,
    ) -> Result<T> {
        let result = work(self, &guard);
        guard.finish(&mut self.store)?;
        result
    }

    /// Records that the intent reached `step`.
    pub fn step(&mut self, intent: &IntentGuard, step: &str) -> Result<()> {
        Ok(intent.step(&mut self.store, step, None)?)
    }
}
