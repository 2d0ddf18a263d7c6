//! cocoon's engine: everything the `cocoon` CLI does, as a typed library.
//!
//! The CLI is a thin layer over [`Engine`]; another program (a Kubernetes
//! provider, a server) can embed the same API. docs/architecture.md draws
//! the layers: the `Engine` facade, the operations (`ops/`), the VMM
//! backends (`backend/`) and the domains they use.

pub mod agent;
pub mod backend;
pub mod cgroup;
pub mod config;
pub mod console;
pub(crate) mod context;
pub mod digest;
pub mod doctor;
pub mod engine;
pub mod error;
pub mod failpoint;
#[cfg(test)]
mod fuzzing;
pub mod guest;
pub mod id;
pub mod image;
pub mod intent;
pub mod jail;
pub mod kernel;
pub mod layout;
pub mod lock;
pub mod model;
pub mod name;
pub mod net;
pub mod ops;
pub mod process;
pub mod snapshot;
mod socket_watch;
pub mod spec;
mod state_dirs;
pub mod store;
pub mod supervise;
pub mod units;
pub mod vm;

pub use config::Config;
pub use engine::Engine;
pub use error::{Error, Result};
