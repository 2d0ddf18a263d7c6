//! Firecracker: the launch command line and the VM it builds as it starts,
//! from a `--config-file` (docs/reference/cocoon-v0.3.8.md §5.3, §5.4 make
//! the same configuration by API calls). The configuration is one value, so
//! `vm debug` prints exactly the file a start writes.

use std::path::Path;

use serde_json::Value;
use vmm_api::fc::models::{
    Balloon, BootSource, Drive, EntropyDevice, MachineConfiguration, NetworkInterface, Vsock,
};

use crate::backend::LaunchOptions;
use crate::layout::{VmPaths, display};
use crate::model::Vm;

/// The command line: a fresh boot (`config_file`) builds and boots its VM
/// from that file as the process starts, with the API up beside it for
/// what comes later; a restore starts bare and loads its snapshot by API.
pub fn args(vm: &Vm, config_file: Option<&Path>) -> Vec<String> {
    let paths = VmPaths::of(vm);
    let mut args = vec![
        "--api-sock".into(),
        display(&paths.api_socket()),
        "--id".into(),
        vm.id.clone(),
        "--log-path".into(),
        display(&paths.fc_log()),
        "--level".into(),
        "Warning".into(),
    ];
    // `--pci`: virtio-pci instead of MMIO, for the process's lifetime (a
    // snapshot's restore relaunches on the transport it was taken with).
    if vm.config.devices.pci {
        args.push("--enable-pci".into());
    }
    if let Some(file) = config_file {
        args.extend(["--config-file".into(), display(file)]);
    }
    args
}

/// Everything Firecracker builds the VM from.
#[derive(Debug, Clone, PartialEq)]
pub struct BootPlan {
    pub machine: MachineConfiguration,
    pub boot: BootSource,
    pub drives: Vec<Drive>,
    pub nics: Vec<NetworkInterface>,
    pub balloon: Option<Balloon>,
    pub entropy: EntropyDevice,
    /// The hybrid vsock (none with `--no-agent`).
    pub vsock: Option<Vsock>,
}

impl BootPlan {
    pub fn of(vm: &Vm, opts: &LaunchOptions) -> BootPlan {
        let boot = vm.boot_config.clone().unwrap_or_default();
        BootPlan {
            machine: MachineConfiguration {
                vcpu_count: vm.config.cpu,
                mem_size_mib: vm.config.memory >> 20,
                smt: None,
                track_dirty_pages: None,
                // Never huge pages (the backend refuses `--hugepages`).
                huge_pages: Some("None".into()),
                extra: Default::default(),
            },
            boot: BootSource {
                kernel_image_path: boot.kernel_path.as_deref().map(display).unwrap_or_default(),
                initrd_path: boot.initrd_path.as_deref().map(display),
                boot_args: Some(boot.cmdline.clone()),
                extra: Default::default(),
            },
            drives: vm
                .storage_configs
                .iter()
                .enumerate()
                .map(|(i, d)| Drive {
                    drive_id: format!("drive_{i}"),
                    is_root_device: false,
                    path_on_host: Some(display(&d.path)),
                    is_read_only: Some(d.ro),
                    cache_type: None,
                    // io_uring for the disks the guest writes.
                    io_engine: (!d.ro).then(|| "Async".to_string()),
                    extra: Default::default(),
                })
                .collect(),
            nics: vm
                .network_configs
                .iter()
                .enumerate()
                .map(|(i, n)| NetworkInterface {
                    iface_id: format!("eth{i}"),
                    host_dev_name: n.tap.clone(),
                    guest_mac: Some(n.mac.clone()),
                    extra: Default::default(),
                })
                .collect(),
            balloon: opts.balloon(vm).map(|bytes| Balloon {
                amount_mib: bytes >> 20,
                deflate_on_oom: true,
                stats_polling_interval_s: None,
                free_page_reporting: Some(true),
                extra: Default::default(),
            }),
            entropy: EntropyDevice::default(),
            vsock: (!vm.config.no_agent).then(|| vsock(vm)),
        }
    }

    /// The `--config-file` document Firecracker builds and boots the VM
    /// from as it starts: the same bodies the pre-boot API takes, by
    /// resource, so no call is made before the guest runs.
    pub fn config_document(&self) -> Value {
        let json = |v: &dyn erased::Json| v.to_value();
        let mut doc = serde_json::json!({
            "machine-config": json(&self.machine),
            "boot-source": json(&self.boot),
            "drives": self.drives.iter().map(|d| json(d)).collect::<Vec<_>>(),
            "network-interfaces": self.nics.iter().map(|n| json(n)).collect::<Vec<_>>(),
            "entropy": json(&self.entropy),
        });
        if let Some(b) = &self.balloon {
            doc["balloon"] = json(b);
        }
        if let Some(v) = &self.vsock {
            doc["vsock"] = json(v);
        }
        doc
    }
}

/// The VM's vsock device on its own socket.
pub fn vsock(vm: &Vm) -> Vsock {
    Vsock {
        guest_cid: crate::backend::GUEST_CID,
        uds_path: display(&VmPaths::of(vm).vsock_socket()),
        extra: Default::default(),
    }
}

mod erased {
    /// Serialises any of the plan's bodies to a JSON value.
    pub trait Json {
        fn to_value(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_value(&self) -> serde_json::Value {
            serde_json::to_value(self).expect("API bodies serialise")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Hypervisor, ImageType, VmConfig};

    fn fc_vm() -> Vm {
        let config = VmConfig::new("v".parse().unwrap(), "img", ImageType::Oci);
        Vm::new(
            "ID",
            Hypervisor::Firecracker,
            config,
            "/run/vms/ID".into(),
            "/log/vms/ID".into(),
        )
    }

    #[test]
    fn the_vsock_is_in_the_config_file_unless_no_agent() {
        let mut vm = fc_vm();
        let opts = LaunchOptions::for_host("fc".into());
        let doc = BootPlan::of(&vm, &opts).config_document();
        assert_eq!(
            doc["vsock"],
            serde_json::json!({"guest_cid": 3, "uds_path": "/run/vms/ID/vsock.sock"})
        );
        vm.config.no_agent = true;
        let doc = BootPlan::of(&vm, &opts).config_document();
        assert!(doc.get("vsock").is_none(), "{doc:#}");
    }

    /// Firecracker reads its config file into a struct that has these
    /// keys (v1.16.1's `VmmConfig`, which refuses unknown ones); `drives`
    /// is required even when empty.
    #[test]
    fn the_config_file_has_only_firecrackers_keys() {
        let mut vm = fc_vm();
        vm.config.memory = 512 << 20;
        let doc = BootPlan::of(&vm, &LaunchOptions::for_host("fc".into())).config_document();
        let mut keys: Vec<&str> = doc
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "balloon",
                "boot-source",
                "drives",
                "entropy",
                "machine-config",
                "network-interfaces",
                "vsock"
            ]
        );
        assert_eq!(doc["machine-config"]["mem_size_mib"], 512);
        assert!(doc["drives"].is_array());
    }
}
