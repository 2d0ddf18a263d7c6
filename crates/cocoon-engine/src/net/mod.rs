//! VM networking (docs/reference/cocoon-v0.3.8.md §8): per VM a named namespace `cocoon-<id>`, per
//! NIC a CNI ADD on `eth<i>` and a TAP joined to it by tc redirects; or, with
//! `--bridge`, a TAP on an existing host bridge.

mod attach;
mod bridge;
pub mod cni;
pub mod netns;
mod release;
pub mod resize;
mod start_stop;
pub mod tap;
pub mod wire;

pub use attach::attach;
pub use release::{detach, release_orphan};
pub use start_stop::{prepare_start, quiesce};

use std::io;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::model::{Hypervisor, NetBackend, NetworkConfig, NetworkLease, Vm};

/// Debian installs the plugins here, not in /opt/cni/bin.
pub const DEBIAN_CNI_DIR: &str = "/usr/lib/cni";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot read the CNI configuration directory {}: {source}", dir.display())]
    ConfDir { dir: PathBuf, source: io::Error },
    #[error("bad CNI network list {}: {reason}", path.display())]
    BadConfList { path: PathBuf, reason: String },
    #[error("no CNI network (*.conflist) in {}; add one, or use --nics 0 or --bridge", dir.display())]
    NoNetworks { dir: PathBuf },
    #[error("no CNI network named {name:?}; available: {available}")]
    UnknownNetwork { name: String, available: String },
    #[error(
        "CNI plugin {plugin:?} not found in {dirs}; install containernetworking-plugins or set cni_bin_dir"
    )]
    PluginNotFound { plugin: String, dirs: String },
    #[error("CNI plugin {plugin} failed on {command} for {ifname}: {msg}")]
    Plugin {
        plugin: String,
        command: String,
        ifname: String,
        msg: String,
    },
    #[error("network namespace {}: {source}", path.display())]
    Namespace { path: PathBuf, source: io::Error },
    #[error("cannot wire NIC {nic}: {source}")]
    Wire { nic: String, source: io::Error },
    #[error("bridge {dev}: {reason}")]
    Bridge { dev: String, reason: String },
}

/// Where CNI lives, from the configuration.
#[derive(Debug, Clone)]
pub struct NetContext {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    /// One marker file per VM with network resources (`<run_dir>/net/<id>`):
    /// how `gc` knows which namespaces and TAPs on this shared host are this
    /// installation's when the VM's record is gone.
    pub marker_dir: PathBuf,
    /// `net_scope` (upstream #196): names this installation's namespaces
    /// and bridge TAPs; empty for the unscoped names.
    pub scope: String,
}

/// What a VM's marker records.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Marker {
    #[serde(default)]
    pub netns: Option<PathBuf>,
    #[serde(default)]
    pub taps: Vec<String>,
}

impl NetContext {
    fn mark(&self, vm_id: &str, marker: &Marker) {
        let _ = crate::lock::create_private_dir(&self.marker_dir);
        if let Err(e) = std::fs::write(
            self.marker_dir.join(vm_id),
            serde_json::to_vec(marker).expect("marker serialises"),
        ) {
            tracing::warn!("cannot record the network resources of {vm_id}: {e}");
        }
    }

    fn unmark(&self, vm_id: &str) {
        let _ = std::fs::remove_file(self.marker_dir.join(vm_id));
    }

    /// Markers by VM ID.
    pub fn markers(&self) -> Vec<(String, Marker)> {
        std::fs::read_dir(&self.marker_dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let id = e.file_name().into_string().ok()?;
                        let marker = std::fs::read(e.path())
                            .ok()
                            .and_then(|b| serde_json::from_slice(&b).ok())
                            .unwrap_or_default();
                        Some((id, marker))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Releases the network of a VM whose record is gone (see [`release_orphan`]).
    pub fn release_marked(&self, vm_id: &str, marker: &Marker) {
        if let Some(ns) = &marker.netns {
            release_orphan(self, vm_id, ns);
        }
        if !marker.taps.is_empty() {
            let _ = bridge::delete_links(marker.taps.clone());
        }
        self.unmark(vm_id);
    }
}

impl NetContext {
    pub fn from_config(config: &Config) -> NetContext {
        let mut bin_dirs = vec![config.cni_bin_dir.clone()];
        if config.cni_bin_dir != Path::new(DEBIAN_CNI_DIR) {
            bin_dirs.push(DEBIAN_CNI_DIR.into());
        }
        NetContext {
            conf_dir: config.cni_conf_dir.clone(),
            bin_dirs,
            marker_dir: config.run_dir.join("net"),
            scope: config.net_scope.clone(),
        }
    }

    /// Bridge TAPs are `<scope><id8>-<n>` as upstream, `bt<id8>-<n>` unscoped.
    fn bridge_tap_prefix(&self) -> &str {
        if self.scope.is_empty() {
            "bt"
        } else {
            &self.scope
        }
    }

    /// A CNI call for `ifname` of `vm_id`'s namespace `netns`, without
    /// `CNI_ARGS`.
    fn call<'a>(&'a self, vm_id: &'a str, netns: &'a Path, ifname: &'a str) -> cni::Call<'a> {
        cni::Call {
            container_id: vm_id,
            netns,
            ifname,
            args: None,
            bin_dirs: &self.bin_dirs,
        }
    }
}

/// What a VM asks of the network.
#[derive(Debug, Clone)]
pub struct NetRequest<'a> {
    pub vm_id: &'a str,
    pub nics: u32,
    /// CNI network name; empty = the first conflist.
    pub network: &'a str,
    pub bridge: Option<&'a str>,
    pub hypervisor: Hypervisor,
    pub cpu: u32,
    pub queue_size: u32,
}

/// The NICs of a VM once attached.
#[derive(Debug, Clone)]
pub struct Attached {
    pub configs: Vec<NetworkConfig>,
    pub leases: Vec<NetworkLease>,
    /// The resolved CNI network name (empty in bridge mode).
    pub network: String,
}

fn tap_name(prefix: &str, vm_id: &str, i: usize) -> String {
    format!("{prefix}{}-{i}", &vm_id[..8.min(vm_id.len())])
}

/// Queues per NIC as the VMM sees them (the backend's rule: CH a pair per
/// vCPU, at least one pair; Firecracker one pair).
fn queues(hypervisor: Hypervisor, cpu: u32) -> u32 {
    crate::backend::of(hypervisor).nic_queues(cpu)
}

/// The virtio queue depth asked for, or the default of 512.
fn queue_size(request: &NetRequest<'_>) -> u32 {
    if request.queue_size == 0 {
        512
    } else {
        request.queue_size
    }
}

fn wire_nic(config: &NetworkConfig, i: usize, mac: Option<String>) -> wire::Nic {
    wire::Nic {
        veth: format!("eth{i}"),
        tap: config.tap.clone(),
        multi_queue: config.num_queues > 2,
        mac,
    }
}

/// Runs netlink work on a thread inside `netns` (or the current namespace).
fn in_namespace<T: Send>(
    netns: Option<&Path>,
    work: impl AsyncFnOnce(&rtnetlink::Handle) -> io::Result<T> + Send,
) -> io::Result<T> {
    let run = || -> io::Result<T> {
        let runtime = wire::runtime()?;
        runtime.block_on(async {
            let handle = wire::connect().await?;
            work(&handle).await
        })
    };
    match netns {
        Some(path) => netns::run_in(path, run)?,
        None => std::thread::scope(|s| s.spawn(run).join())
            .unwrap_or_else(|_| Err(io::Error::other("network thread panicked"))),
    }
}

/// The namespace the VMM runs in, if any (a VM `vm net --nics 0` left
/// without NICs keeps its own).
pub fn vmm_netns(vm: &Vm) -> Option<PathBuf> {
    vm.network_configs
        .iter()
        .chain(vm.net_home.iter())
        .find(|c| c.backend == NetBackend::Cni)
        .map(|c| PathBuf::from(&c.netns_path))
}

/// Creates the namespace at `path`.
fn create_netns(path: &Path) -> Result<(), NetError> {
    netns::create(path).map_err(|source| NetError::Namespace {
        path: path.to_path_buf(),
        source,
    })
}

/// The error of wiring (or quiescing) the NICs of VM `vm_id`.
fn wire_error(vm_id: &str) -> impl FnOnce(io::Error) -> NetError {
    move |source| NetError::Wire {
        nic: format!("of VM {vm_id}"),
        source,
    }
}

#[cfg(test)]
mod scope_tests {
    use super::*;

    #[test]
    fn net_scope_names_bridge_taps_as_upstream() {
        let mut config = Config::default();
        let id = "ABCDEFGHJKMNPQRSTVWXYZ0123";
        let ctx = NetContext::from_config(&config);
        assert_eq!(tap_name(ctx.bridge_tap_prefix(), id, 1), "btABCDEFGH-1");
        config.net_scope = "a1".into();
        let ctx = NetContext::from_config(&config);
        assert_eq!(tap_name(ctx.bridge_tap_prefix(), id, 1), "a1ABCDEFGH-1");
        assert_eq!(
            netns::path_in(&ctx.scope, id),
            Path::new("/run/netns/a1-ABCDEFGHJKMNPQRSTVWXYZ0123")
        );
    }
}
