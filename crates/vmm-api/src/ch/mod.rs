//! Cloud Hypervisor API client.

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
    ("GET", "/vmm.ping"),
    ("PUT", "/vmm.shutdown"),
    ("GET", "/vm.info"),
    ("GET", "/vm.counters"),
    ("PUT", "/vm.boot"),
    ("PUT", "/vm.shutdown"),
    ("PUT", "/vm.power-button"),
    ("PUT", "/vm.pause"),
    ("PUT", "/vm.resume"),
    ("PUT", "/vm.snapshot"),
    ("PUT", "/vm.restore"),
    ("PUT", "/vm.add-disk"),
    ("PUT", "/vm.add-fs"),
    ("PUT", "/vm.add-device"),
    ("PUT", "/vm.add-net"),
    ("PUT", "/vm.remove-device"),
    ("PUT", "/vm.resize"),
];

#[derive(Debug, Clone)]
pub struct CloudHypervisor {
    transport: Transport,
    retry: RetryPolicy,
    timeout: Duration,
}

const NO_BODY: Option<&()> = None;

impl CloudHypervisor {
    pub fn new(api_socket: &Path) -> CloudHypervisor {
        CloudHypervisor {
            transport: Transport::new(api_socket, "http://localhost/api/v1"),
            retry: RetryPolicy::default(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Deadline for ordinary calls (not memory transfers, which take theirs per call).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn socket(&self) -> &Path {
        self.transport.socket()
    }

    async fn put<B: Serialize + ?Sized>(
        &self,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<Vec<u8>, ApiError> {
        self.transport
            .call(&path[1..], Method::PUT, path, body, timeout)
            .await
    }

    async fn get(&self, path: &str) -> Result<Vec<u8>, ApiError> {
        self.transport
            .call(&path[1..], Method::GET, path, NO_BODY, self.timeout)
            .await
    }

    /// Idempotent PUT without a response body, retried on transient failures.
    async fn put_idempotent<B: Serialize + ?Sized>(
        &self,
        path: &str,
        body: Option<&B>,
    ) -> Result<(), ApiError> {
        self.retry
            .run(|| async { self.put(path, body, self.timeout).await.map(drop) })
            .await
    }

    pub async fn ping(&self) -> Result<VmmPingResponse, ApiError> {
        let bytes = self.retry.run(|| self.get("/vmm.ping")).await?;
        Transport::decode("vmm.ping", &bytes)
    }

    pub async fn info(&self) -> Result<VmInfo, ApiError> {
        let bytes = self.retry.run(|| self.get("/vm.info")).await?;
        Transport::decode("vm.info", &bytes)
    }

    pub async fn counters(&self) -> Result<VmCounters, ApiError> {
        let bytes = self.retry.run(|| self.get("/vm.counters")).await?;
        Transport::decode("vm.counters", &bytes)
    }

    /// Boots a created VM. Not retried: a lost answer must be checked with `info`.
    pub async fn boot(&self) -> Result<(), ApiError> {
        self.put("/vm.boot", NO_BODY, self.timeout).await.map(drop)
    }

    /// Shuts the VM down (direct-boot guests); a VM already shut down is success.
    pub async fn shutdown(&self) -> Result<Transition, ApiError> {
        self.retry
            .transition(VmState::Shutdown.as_str(), || async {
                self.put("/vm.shutdown", NO_BODY, self.timeout)
                    .await
                    .map(drop)
            })
            .await
    }

    /// Presses the ACPI power button (UEFI guests shut down gracefully).
    pub async fn power_button(&self) -> Result<(), ApiError> {
        self.put("/vm.power-button", NO_BODY, self.timeout)
            .await
            .map(drop)
    }

    /// Stops the VMM process itself.
    pub async fn shutdown_vmm(&self) -> Result<(), ApiError> {
        self.put("/vmm.shutdown", NO_BODY, self.timeout)
            .await
            .map(drop)
    }

    /// Pauses the VM; pausing a paused VM is success (`AlreadyInState`).
    pub async fn pause(&self) -> Result<Transition, ApiError> {
        self.retry
            .transition(VmState::Paused.as_str(), || async {
                self.put("/vm.pause", NO_BODY, self.timeout).await.map(drop)
            })
            .await
    }

    /// Resumes the VM; resuming a running VM is success (`AlreadyInState`).
    pub async fn resume(&self) -> Result<Transition, ApiError> {
        self.retry
            .transition(VmState::Running.as_str(), || async {
                self.put("/vm.resume", NO_BODY, self.timeout)
                    .await
                    .map(drop)
            })
            .await
    }

    /// Writes a snapshot of the paused VM into `destination_url`. Never retried.
    pub async fn snapshot(
        &self,
        config: &VmSnapshotConfig,
        timeout: Duration,
    ) -> Result<(), ApiError> {
        self.put("/vm.snapshot", Some(config), timeout)
            .await
            .map(drop)
    }

    /// Restores a VM into a VMM started without one. Never retried.
    pub async fn restore(&self, config: &RestoreConfig, timeout: Duration) -> Result<(), ApiError> {
        self.put("/vm.restore", Some(config), timeout)
            .await
            .map(drop)
    }

    /// Hot-plugs a disk. Not retried: a second add would add a second disk.
    pub async fn add_disk(&self, disk: &DiskConfig) -> Result<PciDeviceInfo, ApiError> {
        let bytes = self.put("/vm.add-disk", Some(disk), self.timeout).await?;
        Transport::decode("vm.add-disk", &bytes)
    }

    /// Hot-plugs a NIC. Not retried, like `add_disk`.
    pub async fn add_net(&self, net: &NetConfig) -> Result<PciDeviceInfo, ApiError> {
        let bytes = self.put("/vm.add-net", Some(net), self.timeout).await?;
        Transport::decode("vm.add-net", &bytes)
    }

    /// Hot-plugs a vhost-user-fs device. Not retried, like `add_disk`.
    pub async fn add_fs(&self, fs: &FsConfig) -> Result<PciDeviceInfo, ApiError> {
        let bytes = self.put("/vm.add-fs", Some(fs), self.timeout).await?;
        Transport::decode("vm.add-fs", &bytes)
    }

    /// Hot-plugs a VFIO device. Not retried, like `add_disk`.
    pub async fn add_device(&self, device: &DeviceConfig) -> Result<PciDeviceInfo, ApiError> {
        let bytes = self
            .put("/vm.add-device", Some(device), self.timeout)
            .await?;
        Transport::decode("vm.add-device", &bytes)
    }

    pub async fn remove_device(&self, id: &str) -> Result<(), ApiError> {
        let body = VmRemoveDevice {
            id: id.to_string(),
            extra: Default::default(),
        };
        self.put("/vm.remove-device", Some(&body), self.timeout)
            .await
            .map(drop)
    }

    /// Resizing to an absolute target is idempotent.
    pub async fn resize(&self, resize: &VmResize) -> Result<(), ApiError> {
        self.put_idempotent("/vm.resize", Some(resize)).await
    }
}
