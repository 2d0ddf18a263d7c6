//! One door to either VMM's API, and the pause window every snapshot uses.

use std::future::Future;
use std::path::Path;

use vmm_api::ch::CloudHypervisor;
use vmm_api::fc::Firecracker;
use vmm_api::{ApiError, Transition};

use crate::model::Hypervisor;

#[derive(Debug, Clone)]
pub enum VmmApi {
    CloudHypervisor(CloudHypervisor),
    Firecracker(Firecracker),
}

#[derive(Debug, thiserror::Error)]
pub enum PauseError<E: std::error::Error + 'static> {
    #[error("cannot pause the VM: {0}")]
    Pause(#[source] ApiError),
    /// The work failed; the VM was resumed.
    #[error(transparent)]
    Work(E),
    /// The VM could not be resumed: it stays paused until someone resumes it.
    #[error("the VM could not be resumed and is still paused ({resume}); {}", .work.as_ref().map_or(String::new(), |w| format!("the operation had failed too: {w}")))]
    Resume { resume: ApiError, work: Option<E> },
}

impl VmmApi {
    pub fn new(hypervisor: Hypervisor, api_socket: &Path) -> VmmApi {
        match hypervisor {
            Hypervisor::CloudHypervisor => {
                VmmApi::CloudHypervisor(CloudHypervisor::new(api_socket))
            }
            Hypervisor::Firecracker => VmmApi::Firecracker(Firecracker::new(api_socket)),
        }
    }

    /// Pausing a paused VM is success on both VMMs.
    pub async fn pause(&self) -> Result<Transition, ApiError> {
        match self {
            VmmApi::CloudHypervisor(c) => c.pause().await,
            VmmApi::Firecracker(c) => c.pause().await,
        }
    }

    /// Resuming a running VM is success on both VMMs.
    pub async fn resume(&self) -> Result<Transition, ApiError> {
        match self {
            VmmApi::CloudHypervisor(c) => c.resume().await,
            VmmApi::Firecracker(c) => c.resume().await,
        }
    }

    /// Pauses the VM, runs `work`, and resumes it whatever `work` returned. A
    /// VM that was already paused (left so by a command that died) is handled
    /// like a running one: this is what un-wedges it. The caller must let the
    /// future finish (no cancellation in the middle), and records an intent so
    /// a crash inside the window is resumed by the reconciler.
    pub async fn while_paused<T, E, F, Fut>(&self, work: F) -> Result<T, PauseError<E>>
    where
        E: std::error::Error + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.pause().await.map_err(PauseError::Pause)?;
        let result = work().await;
        match (self.resume().await, result) {
            (Ok(_), Ok(value)) => Ok(value),
            (Ok(_), Err(e)) => Err(PauseError::Work(e)),
            (Err(resume), result) => Err(PauseError::Resume {
                resume,
                work: result.err(),
            }),
        }
    }
}
