//! Every path and lock name the engine uses, in one place: a reader finds
//! here what lives where, and no operation spells a file name itself.
//!
//! ```text
//! <root_dir>/cocoon.db                  the state store
//! <root_dir>/images/…                   image blobs (image::store::ImageDirs)
//! <root_dir>/kernels/<release>/         a default kernel, its modules and initramfs images
//! <root_dir>/snapshots/<id>/            a snapshot's files
//! <root_dir>/snapshots/.import-<id>/    an import being extracted and verified
//! <run_dir>/vms/<id>/lock               the VM's operation lock (flock)
//! <run_dir>/vms/<id>/api.sock           the VMM's API socket
//! <run_dir>/vms/<id>/console.sock       the console relay's socket
//! <run_dir>/vms/<id>/serial.sock        CH's serial port (UEFI guests)
//! <run_dir>/vms/<id>/vsock.sock         the VM's hybrid vsock (`CONNECT <port>`)
//! <run_dir>/vms/<id>/vhost-vsock.sock   QEMU's vhost-user link to vhost-device-vsock
//! <run_dir>/vms/<id>/efivars.fd         a QEMU UEFI guest's variable store (pflash)
//! <run_dir>/vms/<id>/cow.raw, data-<name>.raw, overlay.qcow2, cidata.img
//! <run_dir>/vms/<id>/restore/           CH's patched snapshot state during a restore
//! <log_dir>/vms/<id>/vmm.log            the VMM's own output
//! <log_dir>/vms/<id>/firecracker.log    Firecracker's --log-path file
//! <log_dir>/vms/<id>/vhost-vsock.log    QEMU's vhost-device-vsock output
//! <log_dir>/vms/<id>/console.log        the guest's console (rotated once)
//! <log_dir>/vms/<id>/console-relay.log  the console relay's own output
//! ```

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::image::store::ImageDirs;
use crate::model::Vm;

/// The engine's directories, from its configuration.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root_dir: PathBuf,
    pub run_dir: PathBuf,
    pub log_dir: PathBuf,
}

/// The prefix of a snapshot import's hidden staging directory.
pub const IMPORT_PREFIX: &str = ".import-";

impl Layout {
    pub fn of(config: &Config) -> Layout {
        Layout {
            root_dir: config.root_dir.clone(),
            run_dir: config.run_dir.clone(),
            log_dir: config.log_dir.clone(),
        }
    }

    pub fn db(&self) -> PathBuf {
        self.root_dir.join("cocoon.db")
    }

    pub fn images(&self) -> ImageDirs {
        ImageDirs::new(&self.root_dir)
    }
    /// The default kernels container images boot (see [`crate::kernel`]).
    pub fn kernels(&self) -> crate::kernel::Kernels {
        crate::kernel::Kernels::new(self.root_dir.join("kernels"))
    }

    /// Where snapshots keep their files: `<root_dir>/snapshots/<id>`.
    pub fn snapshots(&self) -> PathBuf {
        self.root_dir.join("snapshots")
    }

    pub fn snapshot(&self, id: &str) -> PathBuf {
        self.snapshots().join(id)
    }

    /// Where `snapshot pull` keeps the blocks it fetched, one directory per
    /// artifact (`<root_dir>/pulls/<manifest hex>`), until the snapshot is
    /// in place: a pull killed half-way fetches only what is missing.
    pub fn snapshot_pull(&self, manifest: &crate::digest::Digest) -> PathBuf {
        self.snapshot_pulls().join(manifest.hex())
    }

    pub fn snapshot_pulls(&self) -> PathBuf {
        self.root_dir.join("pulls")
    }

    /// The hidden directory an import is extracted into.
    pub fn snapshot_import(&self, id: &str) -> PathBuf {
        self.snapshots().join(format!("{IMPORT_PREFIX}{id}"))
    }

    /// `<run_dir>/vms`: one directory per VM.
    pub fn vm_runs(&self) -> PathBuf {
        self.run_dir.join("vms")
    }

    /// `<log_dir>/vms`: one directory per VM.
    pub fn vm_logs(&self) -> PathBuf {
        self.log_dir.join("vms")
    }

    pub fn vm(&self, id: &str) -> VmPaths {
        VmPaths {
            run_dir: self.vm_runs().join(id),
            log_dir: self.vm_logs().join(id),
        }
    }
}

/// The snapshot (or import) id a directory under `snapshots/` belongs to.
pub fn snapshot_id_of(name: &str) -> &str {
    name.trim_start_matches(IMPORT_PREFIX)
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
    /// A run directory alone (its log directory unknown or irrelevant).
    pub fn run_only(run_dir: &Path) -> VmPaths {
        VmPaths {
            run_dir: run_dir.to_path_buf(),
            log_dir: PathBuf::new(),
        }
    }
    /// The VM's operation lock (see `lock::VmLock`).
    pub fn lock(&self) -> PathBuf {
        self.run_dir.join("lock")
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
    /// The configuration Firecracker builds a freshly booted VM from.
    pub fn fc_config(&self) -> PathBuf {
        self.run_dir.join("fc-config.json")
    }
    /// The VM's hybrid vsock: a unix socket on which `CONNECT <port>\n`
    /// reaches a guest vsock port (CH and FC natively, QEMU through
    /// vhost-device-vsock). Shown as `vsock_socket` in `vm inspect`.
    pub fn vsock_socket(&self) -> PathBuf {
        self.run_dir.join("vsock.sock")
    }
    /// QEMU's vhost-user socket to the VM's vhost-device-vsock process.
    pub fn vhost_vsock_socket(&self) -> PathBuf {
        self.run_dir.join("vhost-vsock.sock")
    }
    /// A QEMU UEFI guest's variable store: its writable pflash, a copy of
    /// the firmware's template made before its first launch.
    pub fn efi_vars(&self) -> PathBuf {
        self.run_dir.join("efivars.fd")
    }
    pub fn data_disk(&self, name: &str) -> PathBuf {
        self.run_dir.join(format!("data-{name}.raw"))
    }
    /// The (empty) mount point of a confined VMM's root (see [`crate::jail`]).
    pub fn jail_root(&self) -> PathBuf {
        self.run_dir.join("jail")
    }
    /// Where a (possibly confined) VMM writes a snapshot's state.
    pub fn snapshot_staging(&self) -> PathBuf {
        self.run_dir.join("snapshot")
    }
    /// Where a CH restore stages the snapshot's patched state files.
    pub fn restore_staging(&self) -> PathBuf {
        self.run_dir.join("restore")
    }
    /// The VMM's own stdout/stderr.
    pub fn vmm_log(&self) -> PathBuf {
        self.log_dir.join("vmm.log")
    }
    /// The vsock helper's own output (QEMU's vhost-device-vsock).
    pub fn vsock_helper_log(&self) -> PathBuf {
        self.log_dir.join("vhost-vsock.log")
    }
    /// Firecracker's `--log-path` file.
    pub fn fc_log(&self) -> PathBuf {
        self.log_dir.join("firecracker.log")
    }
    /// The guest's console and serial output (bounded, rotated once).
    pub fn console_log(&self) -> PathBuf {
        self.log_dir.join("console.log")
    }
    /// The console relay's own output.
    pub fn relay_log(&self) -> PathBuf {
        self.log_dir.join("console-relay.log")
    }
    /// Files that only mean something while a VMM runs. A stale vsock
    /// socket would make the next VMM's bind fail.
    pub fn runtime_files(&self) -> Vec<PathBuf> {
        vec![
            self.api_socket(),
            self.console_socket(),
            self.serial_socket(),
            self.vsock_socket(),
            self.vhost_vsock_socket(),
        ]
    }
    /// The sockets the VM's processes name on their command lines (VMM,
    /// console relay, vsock helper): how one whose record was lost is found.
    pub fn process_sockets(&self) -> [PathBuf; 3] {
        [
            self.api_socket(),
            self.console_socket(),
            self.vhost_vsock_socket(),
        ]
    }
}

/// A path as a VMM argument.
pub(crate) fn display(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_files_live_in_the_vm_directories() {
        let layout = Layout {
            root_dir: "/r".into(),
            run_dir: "/run/c".into(),
            log_dir: "/log/c".into(),
        };
        let vm = layout.vm("ID");
        assert_eq!(vm.lock(), Path::new("/run/c/vms/ID/lock"));
        assert_eq!(vm.api_socket(), Path::new("/run/c/vms/ID/api.sock"));
        assert_eq!(vm.vmm_log(), Path::new("/log/c/vms/ID/vmm.log"));
        assert_eq!(layout.snapshot("S"), Path::new("/r/snapshots/S"));
        let staging = layout.snapshot_import("S");
        assert_eq!(staging, Path::new("/r/snapshots/.import-S"));
        let name = staging.file_name().unwrap().to_str().unwrap();
        assert_eq!(snapshot_id_of(name), "S");
        assert_eq!(layout.db(), Path::new("/r/cocoon.db"));
    }
}
