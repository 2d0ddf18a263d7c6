//! What a backend needs to know about the host and the launch, beyond the VM record.

use std::path::{Path, PathBuf};

use crate::model::Vm;

/// Host facts and overrides that shape a launch. `vm debug` fills the same
/// struct (with its own flags), so both print and run one code path.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    pub binary: PathBuf,
    /// vCPU hotplug ceiling (CH `max=`): the host's CPUs.
    pub max_cpus: u32,
    /// Back guest memory with huge pages (the host has some reserved).
    pub hugepages: bool,
    /// Balloon size override in bytes; None = a quarter of memory.
    pub balloon_bytes: Option<u64>,
}

impl LaunchOptions {
    pub fn for_host(binary: PathBuf) -> LaunchOptions {
        LaunchOptions {
            binary,
            max_cpus: crate::spec::host_cpus(),
            hugepages: host_has_hugepages(),
            balloon_bytes: None,
        }
    }

    /// The balloon cocoon gives a VM: a quarter of memory from 256 MiB up,
    /// none for Windows (the virtio-win deflate storm, docs/reference/cocoon-v0.3.8.md §4.12).
    pub fn balloon(&self, vm: &Vm) -> Option<u64> {
        if vm.config.windows || vm.config.memory < 256 << 20 {
            return None;
        }
        Some(self.balloon_bytes.unwrap_or(vm.config.memory / 4))
    }
}

/// cocoon's rule: huge pages when the host reserved any.
pub fn host_has_hugepages() -> bool {
    std::fs::read_to_string("/proc/sys/vm/nr_hugepages")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 0)
}

/// The files of a VM's run and log directories.
#[derive(Debug, Clone)]
pub struct VmPaths {
    pub run_dir: PathBuf,
    pub log_dir: PathBuf,
}

impl VmPaths {
    pub fn of(vm: &Vm) -> VmPaths {
        VmPaths {
            run_dir: vm.run_dir.clone(),
            log_dir: vm.log_dir.clone(),
        }
    }
    pub fn api_socket(&self) -> PathBuf {
        self.run_dir.join("api.sock")
    }
    pub fn console_socket(&self) -> PathBuf {
        self.run_dir.join("console.sock")
    }
    pub fn cow(&self) -> PathBuf {
        self.run_dir.join("cow.raw")
    }
    /// A cloud image's writable disk: qcow2 over the image's blob.
    pub fn overlay(&self) -> PathBuf {
        self.run_dir.join("overlay.qcow2")
    }
    /// The cloud-init NoCloud disk of a cloud image.
    pub fn cidata(&self) -> PathBuf {
        self.run_dir.join(crate::guest::cidata::FILE_NAME)
    }
    /// Cloud Hypervisor's serial port in socket mode (UEFI boot). Not
    /// `console.sock`: that is the console relay's, which connects here.
    pub fn serial_socket(&self) -> PathBuf {
        self.run_dir.join("serial.sock")
    }
    pub fn data_disk(&self, name: &str) -> PathBuf {
        self.run_dir.join(format!("data-{name}.raw"))
    }
    /// The VMM's own stdout/stderr.
    pub fn vmm_log(&self) -> PathBuf {
        self.log_dir.join("vmm.log")
    }
    /// Firecracker's `--log-path` file.
    pub fn fc_log(&self) -> PathBuf {
        self.log_dir.join("firecracker.log")
    }
    /// The guest's console and serial output (bounded, rotated once).
    pub fn console_log(&self) -> PathBuf {
        self.log_dir.join("console.log")
    }
    /// Files that only mean something while a VMM runs.
    pub fn runtime_files(&self) -> Vec<PathBuf> {
        vec![
            self.api_socket(),
            self.console_socket(),
            self.serial_socket(),
        ]
    }
}

pub(crate) fn display(path: &Path) -> String {
    path.display().to_string()
}
