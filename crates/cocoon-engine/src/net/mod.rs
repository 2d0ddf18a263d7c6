//! VM networking (docs/reference/cocoon-v0.3.8.md §8): per VM a named namespace `cocoon-<id>`, per
//! NIC a CNI ADD on `eth<i>` and a TAP joined to it by tc redirects; or, with
//! `--bridge`, a TAP on an existing host bridge.

pub mod cni;
pub mod netns;
pub mod tap;
pub mod wire;

use std::io;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::model::{Hypervisor, IpConfig, NetBackend, NetworkConfig, NetworkLease, Vm};

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
            let _ = delete_links(marker.taps.clone());
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

/// Queues per NIC as the VMM sees them: CH a pair per vCPU (at least one
/// pair), Firecracker one pair.
fn queues(hypervisor: Hypervisor, cpu: u32) -> u32 {
    match hypervisor {
        Hypervisor::CloudHypervisor => (2 * cpu).max(2),
        Hypervisor::Firecracker => 2,
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

/// Creates the VM's NICs. On failure everything made so far is released.
pub fn attach(ctx: &NetContext, request: &NetRequest<'_>) -> Result<Attached, NetError> {
    if let Some(bridge) = request.bridge {
        return attach_bridge(ctx, request, bridge);
    }
    let list = cni::pick(cni::load(&ctx.conf_dir)?, request.network, &ctx.conf_dir)?;
    let ns_path = netns::path_for(request.vm_id);
    // Marked before anything is made, so even a crash right after leaves a trace.
    ctx.mark(
        request.vm_id,
        &Marker {
            netns: Some(ns_path.clone()),
            taps: vec![],
        },
    );
    netns::create(&ns_path).map_err(|source| NetError::Namespace {
        path: ns_path.clone(),
        source,
    })?;
    let mut results: Vec<serde_json::Value> = Vec::new();
    let rollback = |added: usize, results: &[serde_json::Value]| {
        for i in (0..added).rev() {
            let ifname = format!("eth{i}");
            let call = cni::Call {
                container_id: request.vm_id,
                netns: &ns_path,
                ifname: &ifname,
                args: None,
                bin_dirs: &ctx.bin_dirs,
            };
            if let Err(e) = cni::del(&list, &call, results.get(i)) {
                tracing::warn!("rollback of eth{i}: {e}");
            }
        }
        match netns::delete(&ns_path) {
            Ok(()) => ctx.unmark(request.vm_id),
            Err(e) => tracing::warn!("rollback: cannot remove {}: {e}", ns_path.display()),
        }
    };
    for i in 0..request.nics as usize {
        let ifname = format!("eth{i}");
        let call = cni::Call {
            container_id: request.vm_id,
            netns: &ns_path,
            ifname: &ifname,
            args: None,
            bin_dirs: &ctx.bin_dirs,
        };
        match cni::add(&list, &call) {
            Ok(result) => results.push(result),
            Err(e) => {
                // A failed ADD may have half-configured this NIC too.
                rollback(i + 1, &results);
                return Err(e);
            }
        }
    }
    let n_queues = queues(request.hypervisor, request.cpu);
    let queue_size = if request.queue_size == 0 {
        512
    } else {
        request.queue_size
    };
    let mut configs: Vec<NetworkConfig> = (0..request.nics as usize)
        .map(|i| NetworkConfig {
            tap: tap_name("tap", request.vm_id, i),
            mac: String::new(),
            num_queues: n_queues,
            queue_size,
            backend: NetBackend::Cni,
            bridge_dev: String::new(),
            netns_path: ns_path.display().to_string(),
            network: cni::ipv4_of(&results[i]),
        })
        .collect();
    let nics: Vec<wire::Nic> = configs
        .iter()
        .enumerate()
        .map(|(i, c)| wire_nic(c, i, None))
        .collect();
    let wired = in_namespace(Some(&ns_path), async |handle| {
        let mut out = Vec::new();
        for nic in &nics {
            out.push(
                wire::wire(handle, nic)
                    .await
                    .map_err(|e| io::Error::other(format!("{}: {e}", nic.tap)))?,
            );
        }
        Ok(out)
    });
    let wired = match wired {
        Ok(w) => w,
        Err(source) => {
            rollback(results.len(), &results);
            return Err(NetError::Wire {
                nic: format!("of VM {}", request.vm_id),
                source,
            });
        }
    };
    for (config, w) in configs.iter_mut().zip(&wired) {
        config.mac = w.mac.clone();
    }
    let leases = configs
        .iter()
        .zip(&results)
        .enumerate()
        .map(|(i, (c, result))| NetworkLease {
            id: format!("{}-eth{i}", request.vm_id),
            vm_id: request.vm_id.to_string(),
            if_name: format!("eth{i}"),
            network_name: list.name.clone(),
            network: c.network.clone().unwrap_or(IpConfig {
                ip: String::new(),
                gateway: String::new(),
                prefix: 0,
            }),
            cni_result: Some(result.clone()),
        })
        .collect();
    Ok(Attached {
        configs,
        leases,
        network: list.name,
    })
}

fn attach_bridge(
    ctx: &NetContext,
    request: &NetRequest<'_>,
    bridge: &str,
) -> Result<Attached, NetError> {
    let bad = |reason: String| NetError::Bridge {
        dev: bridge.to_string(),
        reason,
    };
    let n_queues = queues(request.hypervisor, request.cpu);
    let configs: Vec<NetworkConfig> = (0..request.nics as usize)
        .map(|i| NetworkConfig {
            tap: tap_name("bt", request.vm_id, i),
            mac: random_mac(),
            num_queues: n_queues,
            queue_size: if request.queue_size == 0 {
                512
            } else {
                request.queue_size
            },
            backend: NetBackend::Bridge,
            bridge_dev: bridge.to_string(),
            netns_path: String::new(),
            network: None,
        })
        .collect();
    ctx.mark(
        request.vm_id,
        &Marker {
            netns: None,
            taps: configs.iter().map(|c| c.tap.clone()).collect(),
        },
    );
    let made = in_namespace(None, async |handle| {
        // Checked over netlink: /sys shows the namespace sysfs was mounted in.
        let br = wire::link(handle, bridge)
            .await?
            .filter(is_bridge)
            .ok_or_else(|| io::Error::other("no such bridge in this network namespace"))?;
        let mtu = br
            .attributes
            .iter()
            .find_map(|a| match a {
                netlink_packet_route::link::LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
            .unwrap_or(1500);
        for c in &configs {
            tap::create_persistent(&c.tap, c.num_queues > 2)?;
            let tap = wire::link(handle, &c.tap)
                .await?
                .ok_or_else(|| io::Error::other("TAP vanished"))?;
            handle
                .link()
                .set(
                    rtnetlink::LinkUnspec::new_with_index(tap.header.index)
                        .controller(br.header.index)
                        .mtu(mtu)
                        .txqueuelen(10_000)
                        .up()
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| io::Error::other(format!("cannot attach {}: {e}", c.tap)))?;
        }
        Ok(())
    });
    if let Err(e) = made {
        if delete_links(configs.iter().map(|c| c.tap.clone()).collect()).is_ok() {
            ctx.unmark(request.vm_id);
        }
        return Err(bad(e.to_string()));
    }
    Ok(Attached {
        configs,
        leases: vec![],
        network: String::new(),
    })
}

fn is_bridge(link: &netlink_packet_route::link::LinkMessage) -> bool {
    use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo};
    link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge))),
        _ => false,
    })
}

/// A random locally administered unicast MAC.
fn random_mac() -> String {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).expect("random bytes");
    bytes[0] = (bytes[0] | 0x02) & 0xfe;
    wire::format_mac(&bytes)
}

fn delete_links(names: Vec<String>) -> io::Result<()> {
    in_namespace(None, async |handle| {
        for name in &names {
            if let Some(l) = wire::link(handle, name).await? {
                let _ = handle.link().del(l.header.index).execute().await;
            }
        }
        Ok(())
    })
}

/// Releases every NIC of a VM: CNI DEL with the cached results, then the
/// namespace (which takes the TAPs and veths with it); bridge TAPs are deleted.
pub fn detach(ctx: &NetContext, vm: &Vm, leases: &[NetworkLease]) -> Result<(), NetError> {
    let bridge_taps: Vec<String> = vm
        .network_configs
        .iter()
        .filter(|c| c.backend == NetBackend::Bridge)
        .map(|c| c.tap.clone())
        .collect();
    if !bridge_taps.is_empty() {
        delete_links(bridge_taps).map_err(|e| NetError::Bridge {
            dev: vm.network_configs[0].bridge_dev.clone(),
            reason: e.to_string(),
        })?;
    }
    let Some(ns) = vm
        .network_configs
        .iter()
        .find(|c| c.backend == NetBackend::Cni)
        .map(|c| PathBuf::from(&c.netns_path))
    else {
        ctx.unmark(&vm.id);
        return Ok(());
    };
    let lists = cni::load(&ctx.conf_dir).unwrap_or_default();
    let mut first_error = None;
    for lease in leases {
        let Some(list) = lists.iter().find(|l| l.name == lease.network_name) else {
            tracing::warn!(
                "CNI network {:?} of {} is gone; its lease cannot be released by DEL",
                lease.network_name,
                lease.if_name
            );
            continue;
        };
        let call = cni::Call {
            container_id: &vm.id,
            netns: &ns,
            ifname: &lease.if_name,
            args: None,
            bin_dirs: &ctx.bin_dirs,
        };
        if let Err(e) = cni::del(list, &call, lease.cni_result.as_ref()) {
            first_error.get_or_insert(e);
        }
    }
    netns::delete(&ns).map_err(|source| NetError::Namespace {
        path: ns.clone(),
        source,
    })?;
    ctx.unmark(&vm.id);
    first_error.map_or(Ok(()), Err)
}

/// Makes a VM's NICs ready for its VMM: rebuilds a namespace a host reboot
/// destroyed (CNI DEL of the stale lease, ADD asking for the recorded IP,
/// recorded MAC restored), and restores the wiring a stop quiesced.
pub fn prepare_start(ctx: &NetContext, vm: &Vm, leases: &[NetworkLease]) -> Result<(), NetError> {
    let cni_nics: Vec<(usize, &NetworkConfig)> = vm
        .network_configs
        .iter()
        .enumerate()
        .filter(|(_, c)| c.backend == NetBackend::Cni)
        .collect();
    if cni_nics.is_empty() {
        return Ok(());
    }
    let ns = PathBuf::from(&cni_nics[0].1.netns_path);
    if !netns::exists(&ns) {
        tracing::info!(
            "VM {}: rebuilding its network namespace {}",
            vm.id,
            ns.display()
        );
        let lists = cni::load(&ctx.conf_dir)?;
        netns::create(&ns).map_err(|source| NetError::Namespace {
            path: ns.clone(),
            source,
        })?;
        for (i, config) in &cni_nics {
            let lease = leases.iter().find(|l| l.if_name == format!("eth{i}"));
            let name = lease.map_or(vm.config.network.as_str(), |l| l.network_name.as_str());
            let list = cni::pick(lists.clone(), name, &ctx.conf_dir)?;
            let ifname = format!("eth{i}");
            let mut call = cni::Call {
                container_id: &vm.id,
                netns: &ns,
                ifname: &ifname,
                args: None,
                bin_dirs: &ctx.bin_dirs,
            };
            // The old lease is still held in IPAM; release it, then ask for it back.
            let _ = cni::del(&list, &call, lease.and_then(|l| l.cni_result.as_ref()));
            if let Some(ip) = &config.network {
                call.args = Some(format!("IgnoreUnknown=1;IP={}", ip.ip));
            }
            cni::add(&list, &call)?;
        }
    }
    let nics: Vec<wire::Nic> = cni_nics
        .iter()
        .map(|(i, c)| wire_nic(c, *i, Some(c.mac.clone())))
        .collect();
    in_namespace(Some(&ns), async |handle| {
        for nic in &nics {
            wire::wire(handle, nic).await?;
        }
        Ok(())
    })
    .map_err(|source| NetError::Wire {
        nic: format!("of VM {}", vm.id),
        source,
    })?;
    Ok(())
}

/// Quiesces the NICs of a stopped VM (see [`wire::quiesce`]).
pub fn quiesce(vm: &Vm) -> Result<(), NetError> {
    let Some(ns) = vm
        .network_configs
        .iter()
        .find(|c| c.backend == NetBackend::Cni)
        .map(|c| PathBuf::from(&c.netns_path))
    else {
        return Ok(());
    };
    if !netns::exists(&ns) {
        return Ok(());
    }
    let nics: Vec<wire::Nic> = vm
        .network_configs
        .iter()
        .enumerate()
        .map(|(i, c)| wire_nic(c, i, None))
        .collect();
    in_namespace(Some(&ns), async |handle| {
        for nic in &nics {
            wire::quiesce(handle, nic).await?;
        }
        Ok(())
    })
    .map_err(|source| NetError::Wire {
        nic: format!("of VM {}", vm.id),
        source,
    })
}

/// The namespace the VMM runs in, if any.
pub fn vmm_netns(vm: &Vm) -> Option<PathBuf> {
    vm.network_configs
        .iter()
        .find(|c| c.backend == NetBackend::Cni)
        .map(|c| PathBuf::from(&c.netns_path))
}

/// Releases the namespace of a VM that has no record any more (a crash
/// lost it): CNI DEL of every `eth*` in it against every configured network
/// (DEL of something a plugin does not know is a no-op), then the namespace.
pub fn release_orphan(ctx: &NetContext, vm_id: &str, ns: &Path) {
    let ifnames: Vec<String> = in_namespace(Some(ns), async |handle| {
        use futures_util::TryStreamExt;
        let links: Vec<netlink_packet_route::link::LinkMessage> = handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(links
            .iter()
            .filter_map(|l| {
                l.attributes.iter().find_map(|a| match a {
                    netlink_packet_route::link::LinkAttribute::IfName(n)
                        if n.starts_with("eth") =>
                    {
                        Some(n.clone())
                    }
                    _ => None,
                })
            })
            .collect())
    })
    .unwrap_or_default();
    for list in cni::load(&ctx.conf_dir).unwrap_or_default() {
        for ifname in &ifnames {
            let call = cni::Call {
                container_id: vm_id,
                netns: ns,
                ifname,
                args: None,
                bin_dirs: &ctx.bin_dirs,
            };
            let _ = cni::del(&list, &call, None);
        }
    }
    if let Err(e) = netns::delete(ns) {
        tracing::warn!("gc: cannot remove {}: {e}", ns.display());
    }
}
