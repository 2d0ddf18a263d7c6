//! The engine's side of the guest contract (reference/guest-contract.md).

pub mod cidata;
pub mod cmdline;
