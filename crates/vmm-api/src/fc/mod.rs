//! Firecracker API client.

pub mod models;

use std::path::Path;
use std::time::Duration;

use reqwest::Method;
use serde::Serialize;

use crate::Transition;
use crate::error::ApiError;
use crate::retry::RetryPolicy;
use crate::transport::{DEFAULT_TIMEOUT, Transport};
use models::*;

/// Every endpoint this client calls, as (method, path) of the spec.
pub const ENDPOINTS: &[(&str, &str)] = &[
    ("GET", "/"),
    ("PUT", "/machine-config"),
    ("PUT", "/boot-source"),
    ("PUT", "/drives/{drive_id}"),
    ("PUT", "/network-interfaces/{iface_id}"),
    ("PUT", "/balloon"),
    ("PATCH", "/balloon"),
    ("PUT", "/entropy"),
    ("PUT", "/vsock"),
    ("PUT", "/actions"),
    ("PATCH", "/vm"),
    ("PUT", "/snapshot/create"),
    ("PUT", "/snapshot/load"),
    ("GET", "/vm/config"),
];

#[derive(Debug, Clone)]
pub struct Firecracker {
    transport: Transport,
    retry: RetryPolicy,
    timeout: Duration,
}

const NO_BODY: Option<&()> = None;

impl Firecracker {
    pub fn new(api_socket: &Path) -> Firecracker {
        Firecracker {
            transport: Transport::new(api_socket, "http://localhost"),
            retry: RetryPolicy::default(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn socket(&self) -> &Path {
        self.transport.socket()
    }

    async fn call<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<Vec<u8>, ApiError> {
        let op = format!("{method} {path}");
        self.transport.call(&op, method, path, body, timeout).await
    }

    /// Pre-boot configuration PUTs set absolute values: retrying them is safe.
    async fn configure<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> Result<(), ApiError> {
        self.retry
            .run(|| async {
                self.call(Method::PUT, path, Some(body), self.timeout)
                    .await
                    .map(drop)
            })
            .await
    }

    pub async fn describe_instance(&self) -> Result<InstanceInfo, ApiError> {
        let bytes = self
            .retry
            .run(|| self.call(Method::GET, "/", NO_BODY, self.timeout))
            .await?;
        Transport::decode("GET /", &bytes)
    }

    pub async fn vm_config(&self) -> Result<FullVmConfiguration, ApiError> {
        let bytes = self
            .retry
            .run(|| self.call(Method::GET, "/vm/config", NO_BODY, self.timeout))
            .await?;
        Transport::decode("GET /vm/config", &bytes)
    }

    pub async fn put_machine_config(&self, config: &MachineConfiguration) -> Result<(), ApiError> {
        self.configure("/machine-config", config).await
    }

    pub async fn put_boot_source(&self, boot: &BootSource) -> Result<(), ApiError> {
        self.configure("/boot-source", boot).await
    }

    pub async fn put_drive(&self, drive: &Drive) -> Result<(), ApiError> {
        self.configure(&format!("/drives/{}", drive.drive_id), drive)
            .await
    }

    pub async fn put_network_interface(&self, iface: &NetworkInterface) -> Result<(), ApiError> {
        self.configure(&format!("/network-interfaces/{}", iface.iface_id), iface)
            .await
    }

    pub async fn put_balloon(&self, balloon: &Balloon) -> Result<(), ApiError> {
        self.configure("/balloon", balloon).await
    }

    /// Sets a running VM's balloon target (an absolute target: repeating
    /// it changes nothing).
    pub async fn update_balloon(&self, amount_mib: u64) -> Result<(), ApiError> {
        let body = BalloonUpdate {
            amount_mib,
            extra: Default::default(),
        };
        self.call(Method::PATCH, "/balloon", Some(&body), self.timeout)
            .await
            .map(drop)
    }

    pub async fn put_entropy(&self, entropy: &EntropyDevice) -> Result<(), ApiError> {
        self.configure("/entropy", entropy).await
    }

    pub async fn put_vsock(&self, vsock: &Vsock) -> Result<(), ApiError> {
        self.configure("/vsock", vsock).await
    }

    /// Boots the configured VM. Not retried: a lost answer must be checked with `describe_instance`.
    pub async fn instance_start(&self) -> Result<(), ApiError> {
        self.action(ActionType::InstanceStart).await
    }

    /// Asks the guest to shut down (Firecracker's i8042 keyboard reset).
    pub async fn send_ctrl_alt_del(&self) -> Result<(), ApiError> {
        self.action(ActionType::SendCtrlAltDel).await
    }

    async fn action(&self, action_type: ActionType) -> Result<(), ApiError> {
        let body = InstanceActionInfo {
            action_type,
            extra: Default::default(),
        };
        self.call(Method::PUT, "/actions", Some(&body), self.timeout)
            .await
            .map(drop)
    }

    /// Pauses the VM. Firecracker accepts pausing a paused VM, and a
    /// same-state refusal (should a version add one) is success too.
    pub async fn pause(&self) -> Result<Transition, ApiError> {
        self.patch_vm(VmStateChange::Paused, "Paused").await
    }

    /// Resumes the VM; resuming a running VM is success.
    pub async fn resume(&self) -> Result<Transition, ApiError> {
        self.patch_vm(VmStateChange::Resumed, "Running").await
    }

    async fn patch_vm(&self, state: VmStateChange, target: &str) -> Result<Transition, ApiError> {
        let body = Vm {
            state,
            extra: Default::default(),
        };
        self.retry
            .transition(target, || async {
                self.call(Method::PATCH, "/vm", Some(&body), self.timeout)
                    .await
                    .map(drop)
            })
            .await
    }

    /// Writes the paused VM's state and memory. Never retried.
    pub async fn snapshot_create(
        &self,
        params: &SnapshotCreateParams,
        timeout: Duration,
    ) -> Result<(), ApiError> {
        self.call(Method::PUT, "/snapshot/create", Some(params), timeout)
            .await
            .map(drop)
    }

    /// Loads a snapshot into a fresh Firecracker. Never retried.
    pub async fn snapshot_load(
        &self,
        params: &SnapshotLoadParams,
        timeout: Duration,
    ) -> Result<(), ApiError> {
        self.call(Method::PUT, "/snapshot/load", Some(params), timeout)
            .await
            .map(drop)
    }
}
