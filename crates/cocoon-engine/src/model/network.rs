//! A VM's NICs and their CNI leases.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    pub ip: String,
    #[serde(default)]
    pub gateway: String,
    pub prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetBackend {
    Cni,
    Bridge,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    pub tap: String,
    pub mac: String,
    pub num_queues: u32,
    pub queue_size: u32,
    pub backend: NetBackend,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bridge_dev: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub netns_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<IpConfig>,
    /// The hot-plug slot (QEMU's PCIe root port) a NIC `vm net` added
    /// took, shared with attached disks; None for NICs made at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
}

/// One NIC's CNI lease (`networks.json` record in cocoon).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkLease {
    pub id: String,
    pub vm_id: String,
    pub if_name: String,
    /// The CNI conflist name.
    #[serde(rename = "type")]
    pub network_name: String,
    pub network: IpConfig,
    /// The ADD result, kept so DEL and CHECK get what ADD returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_result: Option<serde_json::Value>,
}
