//! The engine's error type: every failure a caller can get, typed, with a
//! message that names the object, what went wrong and what to do next.

use crate::config::ConfigError;
use crate::lock::LockError;
use crate::spec::SpecError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Bad user input: the CLI reports these as usage errors.
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Pull(#[from] crate::image::oci::PullError),
    #[error(transparent)]
    Import(#[from] crate::image::import::ImportError),
    #[error(transparent)]
    Cloud(#[from] crate::image::cloud::CloudError),
    #[error(transparent)]
    Kernel(#[from] crate::kernel::KernelError),
    /// Boxed: the launch errors carry log tails and would bloat every Result.
    #[error(transparent)]
    Vm(Box<crate::vm::VmError>),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    /// The guest agent (`vm exec`, `vm reseed`).
    #[error(transparent)]
    Agent(#[from] crate::agent::AgentError),
    /// A VM's cgroup: a flag the host cannot honour, a value out of range,
    /// a control file that would not take it.
    #[error("VM {vm}: {source}")]
    Cgroup {
        vm: String,
        #[source]
        source: crate::cgroup::CgroupError,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl From<crate::vm::VmError> for Error {
    fn from(e: crate::vm::VmError) -> Error {
        Error::Vm(Box::new(e))
    }
}

impl Error {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// True for errors caused by what the user typed (exit code 2 in the CLI).
    pub fn is_usage(&self) -> bool {
        match self {
            Error::Spec(_) => true,
            Error::Cgroup { source, .. } => source.is_usage(),
            Error::Config(ConfigError::Value { origin, .. }) => {
                matches!(origin, crate::config::Source::Flag(_))
            }
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
