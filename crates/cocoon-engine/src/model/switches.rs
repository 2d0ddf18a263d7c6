//! A VM's device and memory switches (`--hugepages`, `--no-balloon`, ...).

use serde::{Deserialize, Serialize};

/// The device and memory switches of `vm create/run/debug`. Each is off by
/// default; which VMM takes which is its backend's call
/// ([`crate::backend::Backend::refused_switch`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSwitches {
    /// Guest memory on huge pages (`--hugepages`).
    #[serde(default)]
    pub hugepages: bool,
    /// No virtio-balloon device (`--no-balloon`).
    #[serde(default)]
    pub no_balloon: bool,
    /// No virtio-watchdog device (`--no-watchdog`).
    #[serde(default)]
    pub no_watchdog: bool,
    /// Guest memory KSM may merge (`--mergeable`).
    #[serde(default)]
    pub mergeable: bool,
    /// Guest memory mapped shared (`--shared-memory`).
    #[serde(default)]
    pub shared_memory: bool,
    /// Firecracker's virtio-pci transport instead of MMIO (`--pci`).
    #[serde(default)]
    pub pci: bool,
    /// No hot-plug slots (`--no-hotplug`): QEMU makes no PCIe root ports.
    #[serde(default)]
    pub no_hotplug: bool,
}

impl DeviceSwitches {
    /// Each switch with its flag.
    pub fn flags(&self) -> [(&'static str, bool); 7] {
        [
            ("--hugepages", self.hugepages),
            ("--no-balloon", self.no_balloon),
            ("--no-watchdog", self.no_watchdog),
            ("--mergeable", self.mergeable),
            ("--shared-memory", self.shared_memory),
            ("--pci", self.pci),
            ("--no-hotplug", self.no_hotplug),
        ]
    }

    /// The first switch asked for here that `have` (a snapshot's) lacks.
    pub fn missing_from(&self, have: &DeviceSwitches) -> Option<&'static str> {
        self.flags()
            .into_iter()
            .zip(have.flags())
            .find(|((_, asked), (_, had))| *asked && !*had)
            .map(|((flag, _), _)| flag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switch_asked_of_a_snapshot_must_be_the_snapshots() {
        let snapshot = DeviceSwitches {
            no_balloon: true,
            mergeable: true,
            ..DeviceSwitches::default()
        };
        assert_eq!(DeviceSwitches::default().missing_from(&snapshot), None);
        assert_eq!(snapshot.missing_from(&snapshot), None);
        let asked = DeviceSwitches {
            no_balloon: true,
            pci: true,
            ..DeviceSwitches::default()
        };
        assert_eq!(asked.missing_from(&snapshot), Some("--pci"));
        // A record from before the switches reads as all off.
        let old: DeviceSwitches = serde_json::from_str("{}").unwrap();
        assert_eq!(old, DeviceSwitches::default());
    }
}
