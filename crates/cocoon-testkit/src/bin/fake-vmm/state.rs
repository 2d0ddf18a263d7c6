//! What the fake VMM knows about itself: which VMM it plays, the VM's state
//! machine and configuration, and where its test hooks (faults, request
//! logs) live. Shared by the launch, the fault injection and both APIs.

use std::path::PathBuf;

use serde_json::Value;
use tokio::sync::Mutex;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Flavor {
    CloudHypervisor,
    Firecracker,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum State {
    /// CH: no VM; FC: "Not started".
    NotCreated,
    Created,
    Running,
    Paused,
    Shutdown,
}

pub struct Vm {
    pub state: State,
    /// CH: the VmConfig; FC: the pre-boot configuration by resource.
    pub config: Value,
}

pub struct Fake {
    pub flavor: Flavor,
    pub id: String,
    pub vm: Mutex<Vm>,
    pub faults: Option<PathBuf>,
    pub requests: Option<PathBuf>,
    pub bodies: Option<PathBuf>,
    pub exits_on_poweroff: bool,
}

/// Exits the process `ms` milliseconds from now, after the current answer
/// has gone out (a VMM that shuts down, or whose guest reset or powered off).
pub fn exit_soon(ms: u64) {
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        std::process::exit(0)
    });
}

/// The array under `key` of a VM configuration, made empty first if absent.
pub fn array_mut<'a>(config: &'a mut Value, key: &str) -> &'a mut Vec<Value> {
    if !config[key].is_array() {
        config[key] = Value::Array(Vec::new());
    }
    config[key].as_array_mut().expect("just made an array")
}
