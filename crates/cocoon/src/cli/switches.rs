//! The device and memory switches of `vm create/run/debug` (and of `vm
//! clone/restore`, where each must be its snapshot's already).

use clap::Args;
use cocoon_engine::model::DeviceSwitches;

#[derive(Debug, Args, Clone, Default)]
pub struct SwitchFlags {
    /// Back guest memory with huge pages (Cloud Hypervisor and QEMU; the host must have them reserved)
    #[arg(long)]
    pub hugepages: bool,
    /// No virtio-balloon device (the host cannot reclaim guest memory)
    #[arg(long)]
    pub no_balloon: bool,
    /// No virtio-watchdog device (Cloud Hypervisor; the others have none)
    #[arg(long)]
    pub no_watchdog: bool,
    /// Let KSM merge identical guest pages (Cloud Hypervisor mergeable=on, QEMU mem-merge=on)
    #[arg(long)]
    pub mergeable: bool,
    /// Guest memory mapped shared, as vhost-user devices need (Cloud Hypervisor shared=on, QEMU memfd share=on; fixed for the VM's lifetime)
    #[arg(long)]
    pub shared_memory: bool,
    /// Firecracker: virtio-pci transport instead of MMIO (--enable-pci); the others' is fixed
    #[arg(long)]
    pub pci: bool,
    /// QEMU: no hot-plug slots (no PCIe root ports: ~30 ms faster boots where KVM is PVM; `vm disk/fs/device attach` and `vm net` are then refused)
    #[arg(long)]
    pub no_hotplug: bool,
}

impl SwitchFlags {
    pub fn switches(&self) -> DeviceSwitches {
        DeviceSwitches {
            hugepages: self.hugepages,
            no_balloon: self.no_balloon,
            no_watchdog: self.no_watchdog,
            mergeable: self.mergeable,
            shared_memory: self.shared_memory,
            pci: self.pci,
            no_hotplug: self.no_hotplug,
        }
    }
}
