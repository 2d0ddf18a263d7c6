//! `vm reconcile-stale-create` (upstream #173): reclaims a VM record left in
//! `creating` by a create or clone that died, so an embedder (vk-cocoon's
//! startup reconcile) can free the name synchronously. Every command already
//! rolls back a dead owner's create when the engine opens; this verb answers
//! what is left, and never touches a VM an operation in flight owns.

use serde::Serialize;

use crate::context::Ctx;
use crate::error::Result;
use crate::lock::{LockError, VmLock};
use crate::model::VmState;
use crate::store::StoreError;

/// What `vm reconcile-stale-create` found; every outcome is a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StaleCreate {
    /// The placeholder was reclaimed: its record and name are free.
    Collected,
    /// An operation in flight owns the VM; nothing was touched.
    Busy,
    /// The VM is not in `creating`; nothing was touched.
    NotCreating,
    /// No VM has that ID or name.
    NotFound,
}

impl std::fmt::Display for StaleCreate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StaleCreate::Collected => "collected",
            StaleCreate::Busy => "busy",
            StaleCreate::NotCreating => "not-creating",
            StaleCreate::NotFound => "not-found",
        })
    }
}

/// Upstream's JSON: `{"id": "...", "outcome": "..."}`.
#[derive(Debug, Clone, Serialize)]
pub struct StaleCreateOutcome {
    pub id: String,
    pub outcome: StaleCreate,
}

pub(crate) fn run(ctx: &mut Ctx, reference: &str) -> Result<StaleCreateOutcome> {
    let answer = |id: &str, outcome| {
        Ok(StaleCreateOutcome {
            id: id.to_string(),
            outcome,
        })
    };
    let vm = match ctx.store().resolve_vm(reference) {
        Ok(vm) => vm,
        Err(StoreError::NotFound { .. }) => return answer(reference, StaleCreate::NotFound),
        Err(e) => return Err(e.into()),
    };
    if vm.state != VmState::Creating {
        return answer(&vm.id, StaleCreate::NotCreating);
    }
    // A free lock and no intent of a live owner prove no one is building
    // it (the engine already rolled back dead owners' intents).
    let _lock = match VmLock::try_acquire(&ctx.config().run_dir, &vm.id) {
        Ok(lock) => lock,
        Err(LockError::Busy { .. }) => return answer(&vm.id, StaleCreate::Busy),
        Err(e) => return Err(e.into()),
    };
    if ctx.store().intents()?.iter().any(|i| i.object_id == vm.id) {
        return answer(&vm.id, StaleCreate::Busy);
    }
    // Looked at again under the lock.
    match ctx.store().get_vm(&vm.id)? {
        None => return answer(&vm.id, StaleCreate::NotFound),
        Some(now) if now.state != VmState::Creating => {
            return answer(&vm.id, StaleCreate::NotCreating);
        }
        Some(now) => super::recover::discard_vm(ctx, &now)?,
    }
    answer(&vm.id, StaleCreate::Collected)
}
