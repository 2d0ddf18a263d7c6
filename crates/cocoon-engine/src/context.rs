//! The one context every operation runs in: configuration, the state store,
//! the directory layout, the console relay's executable, and one tokio
//! runtime, built on first use, whose `block_on` is called here and nowhere
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
}

impl Ctx {
    pub fn new(config: Config, store: Store) -> Ctx {
        Ctx {
            layout: Layout::of(&config),
            config,
            store,
            helper_exe: None,
            runtime: None,
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

    /// A VM's lock and its record, read under the lock. A record gone by
    /// then (a `vm rm` had the lock first) leaves no trace of the wait: the
    /// run directory that taking the lock made again, with nothing in it
    /// but its lock file, goes too.
    pub fn lock_vm_record(&mut self, reference: &str) -> Result<(VmLock, crate::model::Vm)> {
        let lock = self.lock_vm(reference)?;
        match self.store.resolve_vm(reference) {
            Ok(vm) => Ok((lock, vm)),
            Err(e) => {
                if matches!(e, crate::store::StoreError::NotFound { .. }) {
                    lock.remove_if_bare();
                }
                Err(e.into())
            }
        }
    }

    /// Runs async work to its end on the context's runtime. Two workers:
    /// enough for a pull's parallel layers; VM operations drive one future.
    pub fn block_on<T>(&mut self, work: impl AsyncFnOnce(&mut Ctx) -> Result<T>) -> Result<T> {
        let runtime = match &self.runtime {
            Some(runtime) => runtime.clone(),
            None => {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .map_err(|e| Error::io("cannot start the async runtime", e))?;
                self.runtime.insert(Arc::new(runtime)).clone()
            }
        };
        runtime.block_on(work(self))
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
        let result = work(self, &guard);
        guard.finish(&mut self.store)?;
        result
    }

    /// Records that the intent reached `step`.
    pub fn step(&mut self, intent: &IntentGuard, step: &str) -> Result<()> {
        Ok(intent.step(&mut self.store, step, None)?)
    }
}
