//! Firecracker: the launch command line and the pre-boot API sequence
//! (docs/reference/cocoon-v0.3.8.md §5.3, §5.4). The sequence is one value, so `vm debug` prints
//! exactly the calls a start makes.

use serde_json::Value;
use vmm_api::ApiError;
use vmm_api::fc::Firecracker;
use vmm_api::fc::models::{
    Balloon, BootSource, Drive, EntropyDevice, MachineConfiguration, NetworkInterface, Vsock,
};

use crate::backend::LaunchOptions;
use crate::layout::{VmPaths, display};
use crate::model::Vm;

pub fn args(vm: &Vm) -> Vec<String> {
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
    args
}

/// Everything Firecracker is told before `InstanceStart`, in order.
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

    /// The calls as (method, path, body), in the order `apply` makes them.
    pub fn calls(&self) -> Vec<(&'static str, String, Value)> {
        let json = |v: &dyn erased::Json| v.to_value();
        let mut calls = vec![
            ("PUT", "/machine-config".to_string(), json(&self.machine)),
            ("PUT", "/boot-source".to_string(), json(&self.boot)),
        ];
        for d in &self.drives {
            calls.push(("PUT", format!("/drives/{}", d.drive_id), json(d)));
        }
        for n in &self.nics {
            calls.push((
                "PUT",
                format!("/network-interfaces/{}", n.iface_id),
                json(n),
            ));
        }
        if let Some(b) = &self.balloon {
            calls.push(("PUT", "/balloon".to_string(), json(b)));
        }
        calls.push(("PUT", "/entropy".to_string(), json(&self.entropy)));
        if let Some(v) = &self.vsock {
            calls.push(("PUT", "/vsock".to_string(), json(v)));
        }
        calls.push((
            "PUT",
            "/actions".to_string(),
            serde_json::json!({"action_type": "InstanceStart"}),
        ));
        calls
    }

    /// Configures the VM and boots it.
    pub async fn apply(&self, api: &Firecracker) -> Result<(), ApiError> {
        api.put_machine_config(&self.machine).await?;
        api.put_boot_source(&self.boot).await?;
        for d in &self.drives {
            api.put_drive(d).await?;
        }
        for n in &self.nics {
            api.put_network_interface(n).await?;
        }
        if let Some(b) = &self.balloon {
            api.put_balloon(b).await?;
        }
        api.put_entropy(&self.entropy).await?;
        if let Some(v) = &self.vsock {
            api.put_vsock(v).await?;
        }
        api.instance_start().await
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

    #[test]
    fn the_vsock_is_configured_before_the_start_unless_no_agent() {
        let config = VmConfig::new("v".parse().unwrap(), "img", ImageType::Oci);
        let mut vm = Vm::new(
            "ID",
            Hypervisor::Firecracker,
            config,
            "/run/vms/ID".into(),
            "/log/vms/ID".into(),
        );
        let opts = LaunchOptions::for_host("fc".into());
        let calls = BootPlan::of(&vm, &opts).calls();
        let paths: Vec<&str> = calls.iter().map(|(_, p, _)| p.as_str()).collect();
        let vsock = paths.iter().position(|p| *p == "/vsock").unwrap();
        assert_eq!(paths[vsock + 1], "/actions");
        assert_eq!(
            calls[vsock].2,
            serde_json::json!({"guest_cid": 3, "uds_path": "/run/vms/ID/vsock.sock"})
        );
        vm.config.no_agent = true;
        let calls = BootPlan::of(&vm, &opts).calls();
        assert!(!calls.iter().any(|(_, p, _)| p == "/vsock"));
    }
}
