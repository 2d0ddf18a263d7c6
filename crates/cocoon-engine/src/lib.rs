//! cocoon's engine: everything the `cocoon` CLI does, as a typed library.
//!
//! The CLI is a thin layer over [`Engine`]; another program (a Kubernetes
//! provider, a server) can embed the same API.

pub mod config;
pub mod console;
pub mod digest;
pub mod doctor;
pub mod engine;
pub mod error;
pub mod failpoint;
#[cfg(test)]
mod fuzzing;
pub mod gc;
pub mod guest;
pub mod id;
pub mod image;
pub mod lock;
pub mod model;
pub mod net;
pub mod process;
pub mod reconcile;
pub mod snapshot;
pub mod spec;
pub mod store;
pub mod supervise;
pub mod units;
pub mod vm;
pub mod vmm;

pub use config::Config;
pub use engine::Engine;
pub use error::{Error, Result};
