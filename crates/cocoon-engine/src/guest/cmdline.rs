//! Kernel command lines and disk names of the guest contract
//! (reference/guest-contract.md): the image's initramfs parses exactly these,
//! so every byte is fixed by the contract.

use crate::model::{Hypervisor, IpConfig};

/// Virtio-blk serial of layer `j` (0 = bottom layer) on Cloud Hypervisor.
pub fn layer_serial(j: usize) -> String {
    format!("cocoon-layer{j}")
}

pub const COW_SERIAL: &str = "cocoon-cow";

/// Firecracker's name for the `index`-th attached disk: vda..vdz, vdaa, vdab…
/// (the kernel's `sd_format_disk_name` scheme, bijective base 26).
pub fn vd_name(index: usize) -> String {
    let mut n = index + 1;
    let mut letters = Vec::new();
    while n > 0 {
        n -= 1;
        letters.push(b"abcdefghijklmnopqrstuvwxyz"[n % 26]);
        n /= 26;
    }
    letters.reverse();
    format!("vd{}", String::from_utf8(letters).expect("ascii"))
}

/// One NIC as the guest should configure it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNic {
    /// None on a DHCP network: no `ip=` argument.
    pub address: Option<IpConfig>,
}

/// Everything the command line depends on.
#[derive(Debug, Clone)]
pub struct CmdlineSpec<'a> {
    pub hypervisor: Hypervisor,
    /// Number of image layers.
    pub layers: usize,
    pub vm_name: &'a str,
    pub nics: &'a [GuestNic],
    pub dns: &'a [std::net::IpAddr],
    /// A container image's VM (cocoon-init is PID 1): it always gets its
    /// hostname, NICs or not.
    pub container: bool,
    /// The VMM's virtio-pci transport is on (Firecracker `--pci`): no
    /// `pci=off`, which would hide every device (upstream #217).
    pub pci: bool,
    /// The VMM has PCIe root ports for hot-plug (QEMU): the guest drives
    /// them itself (`pcie_ports=native`), as QEMU's `microvm` ACPI tables
    /// leave it no `_OSC` control and its hot-plug service would stay off.
    pub hotplug_ports: bool,
}

/// How a VMM presents devices to the guest, which decides the console and
/// how the guest finds its disks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// virtio-pci with a virtio console (hvc0); disks named by serial.
    VirtioPci,
    /// virtio-mmio, the serial port as console (ttyS0), no PCI; disks in order.
    Mmio,
}

/// The direct-boot kernel command line for an OCI image.
pub fn build(spec: &CmdlineSpec<'_>) -> String {
    let mut args: Vec<String> = Vec::new();
    let (layers, cow) = match crate::backend::of(spec.hypervisor).cmdline_style() {
        Style::VirtioPci => {
            args.extend(["console=hvc0", "loglevel=3"].map(String::from));
            (
                (0..spec.layers).rev().map(layer_serial).collect::<Vec<_>>(),
                COW_SERIAL.to_string(),
            )
        }
        Style::Mmio => {
            args.extend(
                [
                    "console=ttyS0",
                    "reboot=k",
                    "loglevel=3",
                    "pci=off",
                    "i8042.noaux",
                    "8250.nr_uarts=1",
                ]
                .into_iter()
                .filter(|a| !(spec.pci && *a == "pci=off"))
                .map(String::from),
            );
            if spec.hotplug_ports {
                args.push("pcie_ports=native".into());
            }
            (
                (0..spec.layers)
                    .rev()
                    .map(|j| format!("/dev/{}", vd_name(j)))
                    .collect(),
                format!("/dev/{}", vd_name(spec.layers)),
            )
        }
    };
    args.push("boot=cocoon-overlay".into());
    args.push(format!("cocoon.layers={}", layers.join(",")));
    args.push(format!("cocoon.cow={cow}"));
    args.push("clocksource=kvm-clock".into());
    args.push("rw".into());
    if !spec.nics.is_empty() || spec.container {
        args.push("net.ifnames=0".into());
        args.push(format!("cocoon.hostname={}", spec.vm_name));
        let dns: Vec<String> = spec.dns.iter().take(2).map(|d| d.to_string()).collect();
        for (i, nic) in spec.nics.iter().enumerate() {
            let Some(ip) = &nic.address else { continue };
            let mut arg = format!(
                "ip={}::{}:{}:{}:eth{i}:off",
                ip.ip,
                ip.gateway,
                netmask(ip.prefix),
                spec.vm_name
            );
            for server in &dns {
                arg.push(':');
                arg.push_str(server);
            }
            args.push(arg);
        }
    }
    args.join(" ")
}

/// Dotted IPv4 netmask of a prefix length (the `ip=` syntax wants a mask).
pub fn netmask(prefix: u8) -> String {
    let bits: u32 = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    };
    std::net::Ipv4Addr::from(bits).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_names_follow_the_kernel_scheme() {
        assert_eq!(vd_name(0), "vda");
        assert_eq!(vd_name(25), "vdz");
        assert_eq!(vd_name(26), "vdaa");
        assert_eq!(vd_name(27), "vdab");
        assert_eq!(vd_name(51), "vdaz");
        assert_eq!(vd_name(52), "vdba");
        assert_eq!(vd_name(701), "vdzz");
        assert_eq!(vd_name(702), "vdaaa");
    }

    #[test]
    fn cloud_hypervisor_line_is_the_contract() {
        let line = build(&CmdlineSpec {
            hypervisor: Hypervisor::CloudHypervisor,
            layers: 3,
            vm_name: "web",
            nics: &[],
            dns: &[],
            container: false,
            pci: false,
            hotplug_ports: false,
        });
        assert_eq!(
            line,
            "console=hvc0 loglevel=3 boot=cocoon-overlay cocoon.layers=cocoon-layer2,cocoon-layer1,cocoon-layer0 cocoon.cow=cocoon-cow clocksource=kvm-clock rw"
        );
    }

    #[test]
    fn firecracker_line_is_the_contract_with_nics() {
        let nics = [
            GuestNic {
                address: Some(IpConfig {
                    ip: "10.88.0.5".into(),
                    gateway: "10.88.0.1".into(),
                    prefix: 16,
                }),
            },
            GuestNic { address: None },
        ];
        let dns = [
            "1.1.1.1".parse().unwrap(),
            "8.8.8.8".parse().unwrap(),
            "9.9.9.9".parse().unwrap(),
        ];
        let line = build(&CmdlineSpec {
            hypervisor: Hypervisor::Firecracker,
            layers: 2,
            vm_name: "db",
            nics: &nics,
            dns: &dns,
            container: false,
            pci: false,
            hotplug_ports: false,
        });
        assert_eq!(
            line,
            "console=ttyS0 reboot=k loglevel=3 pci=off i8042.noaux 8250.nr_uarts=1 boot=cocoon-overlay cocoon.layers=/dev/vdb,/dev/vda cocoon.cow=/dev/vdc clocksource=kvm-clock rw net.ifnames=0 cocoon.hostname=db ip=10.88.0.5::10.88.0.1:255.255.0.0:db:eth0:off:1.1.1.1:8.8.8.8"
        );
    }

    #[test]
    fn a_container_vm_always_has_its_hostname() {
        let line = build(&CmdlineSpec {
            hypervisor: Hypervisor::Qemu,
            layers: 1,
            vm_name: "job",
            nics: &[],
            dns: &[],
            container: true,
            pci: false,
            hotplug_ports: false,
        });
        assert!(
            line.ends_with("rw net.ifnames=0 cocoon.hostname=job"),
            "{line}"
        );
    }

    #[test]
    fn netmasks() {
        assert_eq!(netmask(0), "0.0.0.0");
        assert_eq!(netmask(24), "255.255.255.0");
        assert_eq!(netmask(32), "255.255.255.255");
    }
}
