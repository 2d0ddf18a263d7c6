//! `vm resize` of a running VM, per VMM. Cloud Hypervisor hot-plugs vCPUs
//! (up to `max_vcpus`, the host's CPUs) and memory (ACPI, up to the
//! `hotplug_size` its launch reserved); the others keep the CPUs and RAM
//! they started with. Memory below the VMM's RAM is the balloon's, on every
//! VMM that has one: unplugging RAM needs the guest's help (virtio-mem or
//! ACPI eject), and none of the guests this engine boots can be relied on
//! for it.

use std::path::Path;

use vmm_api::ApiError;
use vmm_api::ch::CloudHypervisor;
use vmm_api::ch::models::VmResize;
use vmm_api::fc::Firecracker;
use vmm_api::qmp::Qmp;

/// What `vm resize` asks of a running VMM: absolute targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResizeRequest {
    /// The vCPU count asked for (None: unchanged).
    pub cpu: Option<u32>,
    /// The guest memory asked for in bytes (None: unchanged).
    pub memory: Option<u64>,
    /// The vCPUs the guest has now.
    pub current_cpu: u32,
    /// The RAM the VMM has now (more than the guest's when ballooned).
    pub ram: u64,
    /// Whether the VM has a balloon device.
    pub balloon: bool,
}

/// What a resize left: the RAM the VMM has now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resized {
    pub ram: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ResizeError {
    /// The VMM cannot do it; the reason.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Api(#[from] ApiError),
}

const MIB: u64 = 1 << 20;

/// The balloon a VM gets by default at `ram` (`launch::balloon`): a quarter.
fn default_balloon(ram: u64) -> u64 {
    if ram < 256 * MIB { 0 } else { ram / 4 }
}

/// The balloon that holds the guest at `memory` of `ram` (at `ram`
/// itself: the default balloon, as a fresh start has).
fn balloon_for(request: &ResizeRequest, memory: u64) -> Result<u64, ResizeError> {
    if memory == request.ram {
        return Ok(if request.balloon {
            default_balloon(memory)
        } else {
            0
        });
    }
    if !request.balloon {
        return Err(ResizeError::Refused(format!(
            "it runs with {} MiB and no balloon device (--no-balloon, Windows, or under 256 MiB), so its memory cannot shrink while it runs; stop it, resize it, and start it",
            request.ram / MIB
        )));
    }
    Ok(request.ram - memory)
}

fn cpu_changes(request: &ResizeRequest) -> bool {
    request.cpu.is_some_and(|c| c != request.current_cpu)
}

fn number(value: &serde_json::Value) -> u64 {
    value.as_u64().unwrap_or(0)
}

/// Cloud Hypervisor: one `vm.resize`, checked against the room `vm.info`
/// says the VM was started with.
pub async fn cloud_hypervisor(
    socket: &Path,
    request: ResizeRequest,
) -> Result<Resized, ResizeError> {
    let api = CloudHypervisor::new(socket);
    let info = api.info().await?;
    let memory = &info.config["memory"];
    let size = number(&memory["size"]);
    let room = size + number(&memory["hotplug_size"]);
    let ram = size + number(&memory["hotplugged_size"]);
    let max_vcpus = number(&info.config["cpus"]["max_vcpus"]);
    let request = ResizeRequest {
        ram,
        balloon: !info.config["balloon"].is_null(),
        ..request
    };
    let mut body = VmResize {
        desired_vcpus: None,
        desired_ram: None,
        desired_balloon: None,
        extra: Default::default(),
    };
    if let Some(cpu) = request.cpu.filter(|_| cpu_changes(&request)) {
        if u64::from(cpu) > max_vcpus {
            return Err(ResizeError::Refused(format!(
                "it was started with room for {max_vcpus} vCPUs (the host's CPUs when it started)"
            )));
        }
        body.desired_vcpus = Some(cpu);
    }
    let mut after = ram;
    if let Some(target) = request.memory {
        if target > ram {
            if target > room {
                return Err(ResizeError::Refused(format!(
                    "it was started with room for {} MiB of memory; stop and start it to grow further",
                    room / MIB
                )));
            }
            body.desired_ram = Some(as_i64(target));
            // The balloon a fresh start at the new size has.
            if request.balloon {
                body.desired_balloon = Some(as_i64(default_balloon(target)));
            }
            after = target;
        } else {
            body.desired_balloon = Some(as_i64(balloon_for(&request, target)?));
        }
    }
    if body.desired_vcpus.is_some() || body.desired_ram.is_some() || body.desired_balloon.is_some()
    {
        api.resize(&body).await?;
    }
    Ok(Resized { ram: after })
}

fn as_i64(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// The refusal of a growth past the RAM a VMM without memory hot-plug
/// started with.
fn no_hotplug(title: &str, request: &ResizeRequest) -> ResizeError {
    ResizeError::Refused(format!(
        "{title} VMs start without memory hot-plug: its balloon can give the guest back up to the {} MiB it started with; stop it, resize it, and start it to grow further",
        request.ram / MIB
    ))
}

/// QEMU: the balloon only. Its VMs boot on `microvm` (direct boot), which
/// has no CPU or memory hot-plug.
pub async fn qemu(socket: &Path, request: ResizeRequest) -> Result<Resized, ResizeError> {
    if cpu_changes(&request) {
        return Err(ResizeError::Refused(
            "QEMU VMs start without hot-pluggable vCPUs; stop it, resize it, and start it".into(),
        ));
    }
    if let Some(target) = request.memory {
        if target > request.ram {
            return Err(no_hotplug("QEMU", &request));
        }
        let balloon = balloon_for(&request, target)?;
        let mut qmp = Qmp::connect(socket).await?;
        qmp.balloon(as_i64(request.ram - balloon)).await?;
    }
    Ok(Resized { ram: request.ram })
}

/// Firecracker: the balloon only (its API cannot change a running VM's
/// vCPUs or RAM).
pub async fn firecracker(socket: &Path, request: ResizeRequest) -> Result<Resized, ResizeError> {
    if cpu_changes(&request) {
        return Err(ResizeError::Refused(
            "Firecracker cannot change a running VM's vCPUs; stop it, resize it, and start it"
                .into(),
        ));
    }
    if let Some(target) = request.memory {
        if target > request.ram {
            return Err(no_hotplug("Firecracker", &request));
        }
        let balloon = balloon_for(&request, target)?;
        Firecracker::new(socket)
            .update_balloon(balloon / MIB)
            .await?;
    }
    Ok(Resized { ram: request.ram })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(balloon: bool) -> ResizeRequest {
        ResizeRequest {
            cpu: None,
            memory: None,
            current_cpu: 2,
            ram: 1024 * MIB,
            balloon,
        }
    }

    #[test]
    fn the_balloon_holds_the_guest_below_its_ram() {
        assert_eq!(balloon_for(&request(true), 768 * MIB).unwrap(), 256 * MIB);
        // Back at its RAM: the default quarter, as a fresh start.
        assert_eq!(balloon_for(&request(true), 1024 * MIB).unwrap(), 256 * MIB);
        assert_eq!(balloon_for(&request(false), 1024 * MIB).unwrap(), 0);
        let err = balloon_for(&request(false), 512 * MIB).unwrap_err();
        assert!(err.to_string().contains("no balloon device"), "{err}");
    }
}
