//! `vm exec`, `vm reseed` and the identity push: sessions with a running
//! VM's guest agent. None takes the VM lock: they change nothing the
//! engine records, and an exec may run for as long as the user wants.

use crate::agent::{self, Agent, ExecRequest, ExecSession, IdentityRequest};
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::layout::VmPaths;
use crate::vm::VmError;

use super::vm_query::is_running;

/// Upstream's host entropy per reseed.
const RESEED_BYTES: usize = 32;

/// The agent of a running VM, connected.
fn connect(ctx: &mut Ctx, reference: &str) -> Result<Agent> {
    let vm = ctx.store().resolve_vm(reference)?;
    if !is_running(&vm) {
        return Err(VmError::NotRunning {
            id: vm.id,
            name: vm.config.name,
        }
        .into());
    }
    let socket = VmPaths::of(&vm).vsock_socket();
    Ok(agent::connect(
        &socket,
        vm.config.name.as_ref(),
        agent::HANDSHAKE_TIMEOUT,
    )?)
}

pub(crate) fn exec(ctx: &mut Ctx, reference: &str, request: &ExecRequest) -> Result<ExecSession> {
    Ok(connect(ctx, reference)?.exec(request)?)
}

pub(crate) fn reseed(ctx: &mut Ctx, reference: &str, regen_machine_id: bool) -> Result<()> {
    let agent = connect(ctx, reference)?;
    let mut entropy = vec![0u8; RESEED_BYTES];
    getrandom::fill(&mut entropy).map_err(|e| {
        Error::io(
            "cannot draw entropy for the reseed",
            std::io::Error::other(e),
        )
    })?;
    Ok(agent.reseed(entropy, regen_machine_id)?)
}

pub(crate) fn set_identity(
    ctx: &mut Ctx,
    reference: &str,
    request: &IdentityRequest,
) -> Result<()> {
    Ok(connect(ctx, reference)?.identity(request)?)
}

/// Whether the VM runs a guest agent the engine knows of: a container
/// image's (cocoon-init starts it) not created with `--no-agent`. Other VMs
/// may run one of their own; the engine does not wait on those.
pub(crate) fn has_agent(ctx: &Ctx, vm: &crate::model::Vm) -> bool {
    !vm.config.no_agent && super::vm_query::boots_cocoon_init(ctx, vm)
}

/// How long a restored guest's agent may take to answer again (its vsock
/// transport is reset by the restore).
const RESTORED_AGENT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// After a clone or restore: reseed the guest's CRNG (a restored guest
/// replays the snapshot's random state) and, for a clone (`identity`), give
/// it its own hostname, machine-id and NIC addresses. False when the VM
/// has no agent the engine knows of (nothing was done).
pub(crate) fn refresh(ctx: &mut Ctx, reference: &str, identity: bool) -> Result<bool> {
    let vm = ctx.store().resolve_vm(reference)?;
    if !has_agent(ctx, &vm) {
        return Ok(false);
    }
    let deadline = std::time::Instant::now() + RESTORED_AGENT_WAIT;
    loop {
        match reseed(ctx, &vm.id, false) {
            Ok(()) => break,
            Err(Error::Agent(agent::AgentError::NoAgent { .. }))
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
    if identity {
        let request = identity_of(&vm, &ctx.config().dns);
        set_identity(ctx, &vm.id, &request)?;
    }
    Ok(true)
}

/// The VM's identity as its record says: name, NICs (the guest's `eth<i>`
/// in order, as the kernel names them with `net.ifnames=0`), DNS servers.
fn identity_of(vm: &crate::model::Vm, dns: &[std::net::IpAddr]) -> IdentityRequest {
    let dns: Vec<String> = dns.iter().take(2).map(ToString::to_string).collect();
    let nics = vm
        .network_configs
        .iter()
        .enumerate()
        .map(|(i, n)| cocoon_guest_proto::agent::Nic {
            name: format!("eth{i}"),
            mac: n.mac.clone(),
            address: n
                .network
                .as_ref()
                .map(|ip| format!("{}/{}", ip.ip, ip.prefix)),
            gateway: n
                .network
                .as_ref()
                .map(|ip| ip.gateway.clone())
                .filter(|g| !g.is_empty()),
            dns: if n.network.is_some() {
                dns.clone()
            } else {
                Vec::new()
            },
        })
        .collect();
    IdentityRequest {
        hostname: vm.config.name.to_string(),
        machine_id: String::new(),
        nics,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Hypervisor, ImageType, IpConfig, NetBackend, NetworkConfig, Vm, VmConfig};

    #[test]
    fn a_clones_identity_is_its_name_and_its_nics_in_order() {
        let config = VmConfig::new("web-2".parse().unwrap(), "img", ImageType::Oci);
        let mut vm = Vm::new("ID", Hypervisor::Qemu, config, "/r".into(), "/l".into());
        let nic = |mac: &str, network| NetworkConfig {
            tap: "t".into(),
            mac: mac.into(),
            num_queues: 2,
            queue_size: 256,
            backend: NetBackend::Cni,
            slot: None,
            bridge_dev: String::new(),
            netns_path: String::new(),
            network,
        };
        vm.network_configs = vec![
            nic(
                "02:00:00:00:00:01",
                Some(IpConfig {
                    ip: "10.88.0.7".into(),
                    gateway: "10.88.0.1".into(),
                    prefix: 16,
                }),
            ),
            nic("02:00:00:00:00:02", None),
        ];
        let dns = [
            "1.1.1.1".parse().unwrap(),
            "8.8.8.8".parse().unwrap(),
            "9.9.9.9".parse().unwrap(),
        ];
        let request = identity_of(&vm, &dns);
        assert_eq!(request.hostname, "web-2");
        assert_eq!(request.machine_id, "", "the agent draws a fresh one");
        assert_eq!(request.nics.len(), 2);
        let first = &request.nics[0];
        assert_eq!(
            (first.name.as_str(), first.mac.as_str()),
            ("eth0", "02:00:00:00:00:01")
        );
        assert_eq!(first.address.as_deref(), Some("10.88.0.7/16"));
        assert_eq!(first.gateway.as_deref(), Some("10.88.0.1"));
        assert_eq!(first.dns, ["1.1.1.1", "8.8.8.8"]);
        let second = &request.nics[1];
        assert_eq!(second.name, "eth1");
        assert_eq!(
            (second.address.clone(), second.gateway.clone()),
            (None, None)
        );
        assert!(second.dns.is_empty());
    }
}
