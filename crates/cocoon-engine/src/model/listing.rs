//! What `vm ls` shows of a VM: a few fields of its record, read without
//! the rest of the document (with 1,000 VMs recorded, building every full
//! record was most of the command's time).

use jiff::Timestamp;
use serde::Deserialize;

use super::{VmState, VmView, VmmProcess};
use crate::cgroup::CpuStat;
use crate::name::VmName;

/// One row of `vm ls`: the record's fields the table shows, its state
/// reconciled with its VMM process as [`VmView::reconcile`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmListing {
    pub id: String,
    pub name: VmName,
    pub state: VmState,
    /// True when the record said running but the VMM is dead; `state` then says stopped.
    pub stale: bool,
    pub cpu: u32,
    pub memory: u64,
    pub storage: u64,
    pub ips: Vec<String>,
    pub image: String,
    pub created_at: Timestamp,
    /// The recorded VMM (the record's, before reconciling).
    pub vmm: Option<VmmProcess>,
    /// The CPU figures of the VM's cgroup while it runs.
    pub cpu_stat: Option<CpuStat>,
}

impl VmListing {
    /// Stale when the record says running and its VMM is gone (as
    /// [`super::Vm::is_stale`]): then it reads as stopped.
    pub fn reconcile(&mut self) {
        if self.state == VmState::Running
            && !self.vmm.as_ref().is_some_and(crate::supervise::is_running)
        {
            self.stale = true;
            self.state = VmState::Stopped;
        }
    }

    /// `stopped (stale)` as cocoon's tables show it.
    pub fn state_label(&self) -> String {
        if self.stale {
            format!("{} (stale)", self.state)
        } else {
            self.state.to_string()
        }
    }
}

impl From<&VmView> for VmListing {
    fn from(view: &VmView) -> VmListing {
        let vm = &view.vm;
        VmListing {
            id: vm.id.clone(),
            name: vm.config.name.clone(),
            state: vm.state,
            stale: view.stale,
            cpu: vm.config.cpu,
            memory: vm.config.memory,
            storage: vm.config.storage,
            ips: vm.ips(),
            image: vm.config.image.clone(),
            created_at: vm.created_at,
            vmm: vm.vmm.clone(),
            cpu_stat: view.cpu_stat,
        }
    }
}

/// The part of a stored VM document [`VmListing`] reads; serde skips the
/// rest without building it. The field types are the full record's, so
/// what is read is validated as a full read would.
#[derive(Deserialize)]
pub(crate) struct ListedDoc {
    id: String,
    state: VmState,
    config: ListedConfig,
    #[serde(default)]
    network_configs: Vec<ListedNic>,
    created_at: Timestamp,
    #[serde(default)]
    vmm: Option<VmmProcess>,
}

#[derive(Deserialize)]
struct ListedConfig {
    name: VmName,
    cpu: u32,
    memory: u64,
    storage: u64,
    image: String,
}

#[derive(Deserialize)]
struct ListedNic {
    #[serde(default)]
    network: Option<ListedIp>,
}

#[derive(Deserialize)]
struct ListedIp {
    ip: String,
}

impl ListedDoc {
    pub(crate) fn into_listing(self) -> VmListing {
        VmListing {
            id: self.id,
            name: self.config.name,
            state: self.state,
            stale: false,
            cpu: self.config.cpu,
            memory: self.config.memory,
            storage: self.config.storage,
            ips: self
                .network_configs
                .into_iter()
                .filter_map(|n| n.network.map(|ip| ip.ip))
                .collect(),
            image: self.config.image,
            created_at: self.created_at,
            vmm: self.vmm,
            cpu_stat: None,
        }
    }
}
