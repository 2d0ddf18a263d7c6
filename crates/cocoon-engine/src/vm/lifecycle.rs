//! create, start, stop, rm: the sequence every backend shares.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;
use vmm_api::ch::CloudHypervisor;
use vmm_api::fc::Firecracker;

use super::disks::{self, DiskPrep};
use super::launch::{LaunchOptions, VmPaths};
use super::overlay::{self, OverlayPrep};
use super::{VmError, ch, fc};
use crate::console::{self, RelayPort, RelaySpec};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::guest::cmdline::{self, CmdlineSpec, GuestNic};
use crate::image::store::ImageDirs;
use crate::image::vmlinux;
use crate::lock::create_private_dir;
use crate::model::{
    BootConfig, Empty, Hypervisor, Image, ImageType, StorageConfig, StorageRole, Vm, VmConfig,
    VmState, VmmProcess,
};
use crate::net::{self, NetContext, NetRequest};
use crate::spec::{DataDiskSpec, DirectIo, FsType};
use crate::store::ObjectKind;
use crate::supervise::{self, LaunchSpec, Stdin, StopTimeouts};

/// The console log rotates at this size (one older file is kept).
const CONSOLE_LOG_BYTES: u64 = 4 << 20;
/// The hidden CLI subcommand that runs a console relay.
pub const RELAY_SUBCOMMAND: &str = "console-relay";

/// How a launched VMM gets its guest.
#[derive(Debug, Clone)]
pub(crate) enum Boot {
    /// A cold boot from the record's kernel and disks.
    Fresh,
    /// A snapshot's state: CH reads `source/config.json` (patched for this
    /// VM); FC loads `source/vmstate` and `source/mem`.
    Restore {
        source: PathBuf,
        on_demand: bool,
        /// FC: the snapshot's disk paths shown as this VM's disks.
        binds: Vec<(PathBuf, PathBuf)>,
    },
}

/// What `vm create` asks for.
#[derive(Debug, Clone)]
pub struct CreateVm {
    pub config: VmConfig,
    pub hypervisor: Hypervisor,
    pub nics: u32,
    pub data_disks: Vec<DataDiskSpec>,
    /// `--bridge DEV`: TAPs on this host bridge instead of CNI.
    pub bridge: Option<String>,
    /// `--user` / `--password`: the login cloud-init sets up (cloud images).
    pub user: String,
    pub password: String,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct StopOptions {
    /// Skip the graceful guest shutdown.
    pub force: bool,
    /// Wait this long for the guest instead of `stop_timeout_seconds`.
    pub timeout: Option<Duration>,
}

/// The result of one VM in a batch command.
#[derive(Debug)]
pub struct BatchOutcome {
    pub id: String,
    pub name: String,
    pub result: Result<Vm>,
}

/// What `vm debug` prints: the disk preparation and the launch, built by the
/// functions create and start use.
#[derive(Debug, Clone, Serialize)]
pub struct DebugPlan {
    pub hypervisor: Hypervisor,
    pub prepare: Vec<Vec<String>>,
    pub binary: String,
    pub args: Vec<String>,
    /// Firecracker's API calls before boot: (method, path, body).
    pub api_calls: Vec<(String, String, serde_json::Value)>,
}

/// A VM record built from a request, plus the disks it needs: no side effects.
pub(super) struct Plan {
    pub(super) vm: Vm,
    pub(super) disks: Vec<DiskPrep>,
    /// A cloud image's qcow2 overlay.
    pub(super) overlay: Option<OverlayPrep>,
}

impl Engine {
    pub(crate) fn vm_paths(&self, id: &str) -> VmPaths {
        VmPaths {
            run_dir: self.config().run_dir.join("vms").join(id),
            log_dir: self.config().log_dir.join("vms").join(id),
        }
    }

    fn binary(&self, hypervisor: Hypervisor) -> PathBuf {
        PathBuf::from(match hypervisor {
            Hypervisor::CloudHypervisor => &self.config().ch_binary,
            Hypervisor::Firecracker => &self.config().fc_binary,
        })
    }

    pub(crate) fn runtime(&self) -> Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("cannot start the async runtime", e))
    }

    /// The record and disks of a new VM. `cow_override` replaces the COW path (debug).
    fn plan_vm(
        &mut self,
        request: &CreateVm,
        id: &str,
        cow_override: Option<&Path>,
    ) -> Result<Plan> {
        crate::spec::validate_cpu(request.config.cpu, crate::spec::host_cpus())?;
        let image = self.inspect_image(&request.config.image)?;
        if image.kind == ImageType::Cloudimg {
            return self.plan_cloud_vm(request, id, image, cow_override);
        }
        if request.config.windows {
            return Err(VmError::WindowsNeedsCloudImage { image: image.name }.into());
        }
        let dirs = ImageDirs::new(&self.config().root_dir);
        let missing = |what| VmError::MissingBootFile {
            image: image.name.clone(),
            what,
        };
        let kernel_layer = image
            .kernel_layer
            .clone()
            .ok_or_else(|| missing("kernel"))?;
        let initrd_layer = image
            .initrd_layer
            .clone()
            .ok_or_else(|| missing("initrd"))?;
        let paths = self.vm_paths(id);
        let mut config = request.config.clone();
        config.image = image.name.clone();
        config.image_digest = image.id.to_string();
        config.image_type = ImageType::Oci;
        let mut vm = Vm::new(
            id,
            request.hypervisor,
            config,
            paths.run_dir.clone(),
            paths.log_dir.clone(),
        );
        vm.image_blob_ids = image
            .layers
            .iter()
            .map(|d| (d.to_string(), Empty {}))
            .collect();

        let direct_ok = direct_io_ok(&vm.config, &paths);
        let mut storage = layer_disks(&image, &dirs, request.hypervisor);
        let cow = cow_override.map_or_else(|| paths.cow(), Path::to_path_buf);
        let mut prep = vec![DiskPrep {
            path: cow.clone(),
            size: vm.config.storage,
            ext4: true,
        }];
        storage.push(StorageConfig {
            path: cow,
            ro: false,
            serial: cmdline::COW_SERIAL.into(),
            role: StorageRole::Cow,
            mount_point: String::new(),
            fstype: None,
            direct_io: (request.hypervisor == Hypervisor::CloudHypervisor).then_some(direct_ok),
            directio_mode: None,
        });
        let (data_prep, data) = data_disks(request, &paths, direct_ok);
        prep.extend(data_prep);
        storage.extend(data);
        vm.storage_configs = storage;
        let cmdline = cmdline::build(&CmdlineSpec {
            hypervisor: request.hypervisor,
            layers: image.layers.len(),
            vm_name: &vm.config.name,
            nics: &[] as &[GuestNic],
            dns: &self.config().dns,
        });
        let kernel = match request.hypervisor {
            Hypervisor::CloudHypervisor => dirs.kernel(&kernel_layer),
            // Firecracker loads only an uncompressed ELF; converted once per kernel.
            Hypervisor::Firecracker => {
                vmlinux::ensure(&dirs, &kernel_layer).map_err(VmError::from)?
            }
        };
        vm.boot_config = Some(BootConfig {
            kernel_path: Some(kernel),
            initrd_path: Some(dirs.initrd(&initrd_layer)),
            cmdline,
            firmware_path: None,
        });
        Ok(Plan {
            vm,
            disks: prep,
            overlay: None,
        })
    }

    /// The kernel command line of a VM as it is now (layers, name, NICs).
    pub(crate) fn cmdline_of(&self, vm: &Vm) -> String {
        let nics: Vec<GuestNic> = vm
            .network_configs
            .iter()
            .map(|c| GuestNic {
                address: c.network.clone(),
            })
            .collect();
        cmdline::build(&CmdlineSpec {
            hypervisor: vm.hypervisor,
            layers: vm
                .storage_configs
                .iter()
                .filter(|d| d.role == StorageRole::Layer)
                .count(),
            vm_name: &vm.config.name,
            nics: &nics,
            dns: &self.config().dns,
        })
    }

    /// The VM's record now pins its image's blobs; each must still be here.
    /// The image was read before the pin: an `image rm` plus gc in between
    /// could have removed one. gc removes a blob only under its digest lock
    /// after a fresh look at the pins, so a blob seen under that lock after
    /// our pin is committed stays.
    fn check_pinned_blobs(&self, vm: &Vm) -> Result<()> {
        let dirs = ImageDirs::new(&self.config().root_dir);
        for digest in vm.image_blob_ids.keys() {
            let digest = crate::digest::Digest::parse(digest)
                .map_err(|e| Error::Invalid(format!("VM {}: {e}", vm.config.name)))?;
            let digest = &digest;
            let lock_path = dirs.lock(digest);
            let lock = std::fs::File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .and_then(|f| f.lock().map(|()| f))
                .map_err(|e| Error::io(format!("cannot lock {}", lock_path.display()), e))?;
            let (layer, cloud) = (
                dirs.blob(digest),
                crate::image::cloud::blob_path(&dirs, digest),
            );
            let present = layer.is_file() || cloud.is_file();
            drop(lock);
            if !present {
                let path = if vm.config.image_type == crate::model::ImageType::Cloudimg {
                    cloud
                } else {
                    layer
                };
                return Err(Error::Invalid(format!(
                    "image {} is missing {}; pull or import the image again",
                    vm.config.image,
                    path.display()
                )));
            }
        }
        Ok(())
    }

    /// Creates a VM: record first (name reserved), then directories and disks,
    /// then state `created`. Any failure removes what was made, record included.
    pub fn create_vm(&mut self, request: CreateVm) -> Result<Vm> {
        let id = crate::id::generate_id();
        let Plan {
            mut vm,
            disks,
            overlay,
        } = self.plan_vm(&request, &id, None)?;
        let wants_cidata = vm
            .storage_configs
            .iter()
            .any(|d| d.role == StorageRole::Cidata);
        if wants_cidata {
            crate::spec::validate_user(&request.user)?;
            crate::spec::validate_password(&request.password)?;
        }
        let intent = self.store().begin_intent(
            "vm.create",
            ObjectKind::Vm,
            &id,
            &serde_json::json!({"run_dir": vm.run_dir, "log_dir": vm.log_dir}),
        )?;
        if let Err(e) = self.store().insert_vm(&vm) {
            intent.finish(self.store())?;
            return Err(e.into());
        }
        let net_ctx = NetContext::from_config(self.config());
        let mut attached: Option<net::Attached> = None;
        let built = (|| -> Result<()> {
            crate::failpoint::hit("vm.create.recorded")?;
            self.check_pinned_blobs(&vm)?;
            for dir in [&vm.run_dir, &vm.log_dir] {
                create_private_dir(dir)
                    .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
            }
            if request.nics > 0 {
                let a = net::attach(
                    &net_ctx,
                    &NetRequest {
                        vm_id: &id,
                        nics: request.nics,
                        network: &request.config.network,
                        bridge: request.bridge.as_deref(),
                        hypervisor: request.hypervisor,
                        cpu: request.config.cpu,
                        queue_size: request.config.queue_size,
                    },
                )
                .map_err(VmError::from)?;
                attached = Some(a.clone());
                for lease in &a.leases {
                    self.store().put_lease(lease)?;
                }
                vm.config.network = a.network.clone();
                vm.network_configs = a.configs.clone();
                let cmdline = self.cmdline_of(&vm);
                // UEFI guests take no command line from us.
                if let Some(boot) = vm.boot_config.as_mut().filter(|b| b.kernel_path.is_some()) {
                    boot.cmdline = cmdline;
                }
            }
            if let Some(overlay) = &overlay {
                overlay::prepare(overlay).map_err(VmError::from)?;
            }
            crate::failpoint::hit("vm.create.network")?;
            for disk in &disks {
                disks::prepare(disk).map_err(VmError::from)?;
            }
            if wants_cidata {
                self.write_cidata(
                    &vm,
                    &VmPaths::of(&vm).cidata(),
                    Some(crate::guest::cidata::Credentials {
                        user: request.user.clone(),
                        password: request.password.clone(),
                    }),
                )?;
            }
            crate::failpoint::hit("vm.create.disks")?;
            Ok(())
        })();
        match built {
            Ok(()) => {
                let done = vm.clone();
                (vm, _) = self.store().update_vm(&id, "created", |v| {
                    v.state = VmState::Created;
                    v.config.network = done.config.network;
                    v.network_configs = done.network_configs;
                    v.storage_configs = done.storage_configs;
                    v.boot_config = done.boot_config;
                })?;
                intent.finish(self.store())?;
                Ok(vm)
            }
            Err(e) => {
                if let Some(a) = &attached {
                    let mut with_nics = vm.clone();
                    with_nics.network_configs = a.configs.clone();
                    if let Err(e) = net::detach(&net_ctx, &with_nics, &a.leases) {
                        tracing::warn!("rollback of the network of {id}: {e}");
                    }
                }
                let _ = remove_tree(&vm.run_dir);
                let _ = remove_tree(&vm.log_dir);
                let _ = self.store().delete_vm(&id);
                intent.finish(self.store())?;
                Err(e)
            }
        }
    }

    /// What `vm debug` prints, from the same planning and launch builders.
    pub fn debug_vm(
        &mut self,
        request: &CreateVm,
        opts: &LaunchOptions,
        cow: Option<&Path>,
    ) -> Result<DebugPlan> {
        let id = crate::id::generate_id();
        let Plan { vm, disks, overlay } = self.plan_vm(request, &id, cow)?;
        let mut commands = match &overlay {
            Some(overlay) => overlay::commands(overlay).map_err(VmError::from)?,
            None => vec![],
        };
        commands.extend(disks.iter().flat_map(disks::prep_commands));
        let prepare = commands
            .iter()
            .map(|argv| {
                argv.iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect()
            })
            .collect();
        let (args, api_calls) = match vm.hypervisor {
            Hypervisor::CloudHypervisor => (ch::args(&vm, opts), vec![]),
            Hypervisor::Firecracker => (
                fc::args(&vm),
                fc::BootPlan::of(&vm, opts)
                    .calls()
                    .into_iter()
                    .map(|(m, p, b)| (m.to_string(), p, b))
                    .collect(),
            ),
        };
        Ok(DebugPlan {
            hypervisor: vm.hypervisor,
            prepare,
            binary: opts.binary.display().to_string(),
            args,
            api_calls,
        })
    }

    /// Starts a created or stopped VM (or one left `running` by a host
    /// reboot). Starting a running VM is success.
    pub fn start_vm(&mut self, id: &str) -> Result<Vm> {
        let _lock = self.lock_vm(id)?;
        let vm = self.store().resolve_vm(id)?;
        let runtime = self.runtime()?;
        runtime.block_on(self.start_locked(vm))
    }

    async fn start_locked(&mut self, vm: Vm) -> Result<Vm> {
        if vm.vmm.as_ref().is_some_and(supervise::is_running) {
            if vm.state == VmState::Running {
                return Ok(vm);
            }
            let (vm, _) = self
                .store()
                .update_vm(&vm.id, "started", |v| v.state = VmState::Running)?;
            return Ok(vm);
        }
        let paths = VmPaths::of(&vm);
        self.clear_runtime(&vm).await?;
        let vm = self.drop_cidata_after_first_boot(vm)?;
        create_private_dir(&paths.log_dir)
            .map_err(|e| Error::io(format!("cannot create {}", paths.log_dir.display()), e))?;
        let intent = self.store().begin_intent(
            "vm.start",
            ObjectKind::Vm,
            &vm.id,
            &serde_json::json!({}),
        )?;
        let leases = self.store().leases(&vm.id)?;
        let ready = net::prepare_start(&NetContext::from_config(self.config()), &vm, &leases)
            .map_err(|e| Error::from(VmError::from(e)));
        let result = match ready {
            Ok(()) => self.launch_and_boot(&vm, &paths, &Boot::Fresh).await,
            Err(e) => Err(e),
        };
        match result {
            Ok((vmm, relay)) => {
                let (vm, _) = self.store().update_vm(&vm.id, "started", |v| {
                    v.state = VmState::Running;
                    v.pid = vmm.identity.pid;
                    v.socket_path = paths.api_socket().display().to_string();
                    v.vmm = Some(vmm);
                    v.console_relay = relay;
                    v.started_at = Some(Timestamp::now());
                    v.first_booted = true;
                })?;
                intent.finish(self.store())?;
                Ok(vm)
            }
            Err(e) => {
                let _ = self.clear_runtime(&vm).await;
                self.store().update_vm(&vm.id, "error", |v| {
                    v.state = VmState::Error;
                    v.pid = 0;
                    v.vmm = None;
                    v.console_relay = None;
                })?;
                intent.finish(self.store())?;
                Err(e)
            }
        }
    }

    /// Launches the VMM, boots the guest and attaches the console relay. On
    /// error, whatever was started is left for `clear_runtime` to kill.
    pub(crate) async fn launch_and_boot(
        &mut self,
        vm: &Vm,
        paths: &VmPaths,
        boot: &Boot,
    ) -> Result<(VmmProcess, Option<crate::process::ProcessIdentity>)> {
        let opts = LaunchOptions::for_host(self.binary(vm.hypervisor));
        let name = || (vm.id.clone(), vm.config.name.clone());
        // The serial port is the VMM's stdin/stdout: a terminal whose master
        // the relay takes over, so no output is ever held back or lost.
        let (serial_master, serial_slave) = open_pty()
            .map_err(|e| Error::io("cannot allocate a terminal for the serial console", e))?;
        let direct_boot = vm
            .boot_config
            .as_ref()
            .is_some_and(|b| b.kernel_path.is_some());
        let args = match vm.hypervisor {
            // A restore takes everything from the snapshot's config.json.
            Hypervisor::CloudHypervisor if matches!(boot, Boot::Restore { .. }) => vec![
                "--api-socket".to_string(),
                paths.api_socket().display().to_string(),
            ],
            Hypervisor::CloudHypervisor => ch::args(vm, &opts),
            Hypervisor::Firecracker => {
                // Firecracker refuses to create its log file itself.
                std::fs::File::create(paths.fc_log()).map_err(|e| {
                    Error::io(format!("cannot create {}", paths.fc_log().display()), e)
                })?;
                fc::args(vm)
            }
        };
        let stdin = if vm.hypervisor == Hypervisor::Firecracker || direct_boot {
            Stdin::Terminal(Arc::new(serial_slave))
        } else {
            Stdin::Null
        };
        let spec = LaunchSpec {
            binary: opts.binary.clone(),
            args: args.into_iter().map(OsString::from).collect(),
            api_socket: paths.api_socket(),
            log_file: paths.vmm_log(),
            stdin,
            netns: net::vmm_netns(vm),
            socket_timeout: Duration::from_secs(self.config().socket_wait_timeout_seconds.max(1)),
            bind_mounts: match boot {
                Boot::Restore { binds, .. } => binds.clone(),
                Boot::Fresh => vec![],
            },
        };
        let vmm = supervise::launch(&spec).await.map_err(|source| {
            let (id, name) = name();
            VmError::Launch { id, name, source }
        })?;
        // Recorded at once: from here on a crash leaves a VMM the record names.
        let recorded = vmm.clone();
        self.store().update_vm(&vm.id, "launched", |v| {
            v.vmm = Some(recorded.clone());
            v.pid = recorded.identity.pid;
        })?;
        crate::failpoint::hit("vm.launch.recorded")?;
        let boot_failed = |reason: String| {
            let (id, name) = name();
            VmError::Boot {
                id,
                name,
                reason,
                log: read_tail(&paths.vmm_log()),
            }
        };
        let ports = match vm.hypervisor {
            Hypervisor::CloudHypervisor => {
                let api = CloudHypervisor::new(&paths.api_socket());
                if let Boot::Restore {
                    source, on_demand, ..
                } = boot
                {
                    super::restore::ch_restore(&api, vm, source, *on_demand)
                        .await
                        .map_err(|e| boot_failed(e.to_string()))?;
                }
                // CH boots from its command line (or resumed the restored VM);
                // the boot was accepted once the VM reports Running. Its PTYs
                // are named in vm.info.
                let info = wait_running(&api, &vmm, spec.socket_timeout)
                    .await
                    .map_err(boot_failed)?;
                let mut ports = Vec::new();
                if let Some(pty) = info.config["console"]["file"].as_str() {
                    let fd = open_tty(Path::new(pty)).map_err(|e| {
                        boot_failed(format!("cannot open the console terminal {pty}: {e}"))
                    })?;
                    ports.push(RelayPort {
                        name: "console".into(),
                        fd,
                    });
                }
                if direct_boot {
                    ports.push(RelayPort {
                        name: "serial".into(),
                        fd: serial_master,
                    });
                } else {
                    // UEFI: the guest's ttyS0 is CH's serial socket.
                    match super::cloudimg::connect_serial(paths).await {
                        Ok(fd) => ports.push(RelayPort {
                            name: "serial".into(),
                            fd,
                        }),
                        Err(e) => tracing::warn!(
                            "VM {}: cannot connect to the serial socket {}: {e}",
                            vm.id,
                            paths.serial_socket().display()
                        ),
                    }
                }
                ports
            }
            Hypervisor::Firecracker => {
                let api = Firecracker::new(&paths.api_socket());
                match boot {
                    Boot::Fresh => fc::BootPlan::of(vm, &opts).apply(&api).await,
                    Boot::Restore { source, .. } => {
                        super::restore::fc_restore(&api, vm, source).await
                    }
                }
                .map_err(|e| boot_failed(e.to_string()))?;
                vec![RelayPort {
                    name: "serial".into(),
                    fd: serial_master,
                }]
            }
        };
        if ports.is_empty() {
            tracing::warn!(
                "VM {}: the VMM exposes no console terminal; `vm console` and `vm logs` will be empty",
                vm.id
            );
            return Ok((vmm, None));
        }
        let relay_spec = RelaySpec {
            socket: paths.console_socket(),
            log: paths.console_log(),
            log_max_bytes: CONSOLE_LOG_BYTES,
            ports,
            watch: Some(vmm.identity),
        };
        crate::failpoint::hit("vm.launch.booted")?;
        let relay_log = paths.log_dir.join("console-relay.log");
        let relay = console::spawn_relay(
            &self.helper_exe(),
            &[RELAY_SUBCOMMAND],
            &relay_spec,
            Some(&relay_log),
        )
        .map_err(|source| {
            let (id, name) = name();
            VmError::Relay { id, name, source }
        })?;
        Ok((vmm, Some(relay)))
    }

    /// Kills whatever a previous run of this VM left: its recorded VMM and
    /// relay, and any process still naming its sockets (an orphan whose record
    /// was lost to a crash). Removes the sockets.
    pub(crate) async fn clear_runtime(&mut self, vm: &Vm) -> Result<()> {
        let paths = VmPaths::of(vm);
        let quick = StopTimeouts {
            graceful: Duration::ZERO,
            term: Duration::from_secs(self.config().terminate_grace_period_seconds.max(1)),
            kill: Duration::from_secs(5),
        };
        let stop_err = |source| VmError::Stop {
            id: vm.id.clone(),
            name: vm.config.name.clone(),
            source,
        };
        for socket in [paths.api_socket(), paths.console_socket()] {
            supervise::terminate_all_by_socket(&socket, quick)
                .await
                .map_err(stop_err)?;
        }
        if let Some(vmm) = &vm.vmm {
            supervise::terminate(vmm, None::<fn() -> std::future::Ready<()>>, quick)
                .await
                .map_err(stop_err)?;
        }
        if let Some(relay) = vm.console_relay {
            let relay = VmmProcess {
                identity: relay,
                api_socket: paths.console_socket(),
            };
            supervise::terminate(&relay, None::<fn() -> std::future::Ready<()>>, quick)
                .await
                .map_err(stop_err)?;
        }
        for file in paths.runtime_files() {
            let _ = std::fs::remove_file(file);
        }
        Ok(())
    }

    /// Stops a VM: the backend's graceful step, then SIGTERM, then SIGKILL.
    /// Stopping a stopped VM is success.
    pub fn stop_vm(&mut self, id: &str, options: StopOptions) -> Result<Vm> {
        let _lock = self.lock_vm(id)?;
        let vm = self.store().resolve_vm(id)?;
        let runtime = self.runtime()?;
        runtime.block_on(self.stop_locked(vm, options))
    }

    async fn stop_locked(&mut self, vm: Vm, options: StopOptions) -> Result<Vm> {
        let live = vm.vmm.clone().filter(supervise::is_running);
        let intent =
            self.store()
                .begin_intent("vm.stop", ObjectKind::Vm, &vm.id, &serde_json::json!({}))?;
        if let Some(vmm) = live {
            let config = self.config();
            let direct_boot = vm
                .boot_config
                .as_ref()
                .is_some_and(|b| b.kernel_path.is_some());
            let guest_wait = options
                .timeout
                .unwrap_or(Duration::from_secs(config.stop_timeout_seconds));
            let term = Duration::from_secs(config.terminate_grace_period_seconds.max(1));
            let timeouts = StopTimeouts {
                // CH's vm.shutdown is immediate: only the VMM's exit is waited for.
                graceful: if vm.hypervisor == Hypervisor::CloudHypervisor && direct_boot {
                    term
                } else {
                    guest_wait
                },
                term,
                kill: Duration::from_secs(5),
            };
            let socket = vmm.api_socket.clone();
            let hypervisor = vm.hypervisor;
            let graceful =
                (!options.force).then_some(move || graceful_stop(hypervisor, direct_boot, socket));
            let stopped = supervise::terminate(&vmm, graceful, timeouts).await;
            if let Err(source) = stopped {
                self.store()
                    .update_vm(&vm.id, "error", |v| v.state = VmState::Error)?;
                intent.finish(self.store())?;
                return Err(VmError::Stop {
                    id: vm.id.clone(),
                    name: vm.config.name.clone(),
                    source,
                }
                .into());
            }
            tracing::debug!(vm = %vm.id, outcome = ?stopped, "VMM stopped");
            if let Err(e) = crate::failpoint::hit("vm.stop.stopped") {
                intent.finish(self.store())?;
                return Err(e);
            }
        }
        if let Err(e) = self.clear_runtime(&vm).await {
            intent.finish(self.store())?;
            return Err(e);
        }
        if let Err(e) = net::quiesce(&vm) {
            tracing::warn!("VM {}: cannot quiesce its NICs: {e}", vm.id);
        }
        let was_running = matches!(vm.state, VmState::Running);
        let (vm, _) = self.store().update_vm(&vm.id, "stopped", |v| {
            if was_running || v.state == VmState::Error {
                v.state = VmState::Stopped;
                v.stopped_at = Some(Timestamp::now());
            }
            v.pid = 0;
            v.vmm = None;
            v.console_relay = None;
        })?;
        intent.finish(self.store())?;
        Ok(vm)
    }

    /// Removes a VM: its VMM (with `force`), disks, directories, then the
    /// record. Directories go first, so a failure leaves a record to retry.
    pub fn remove_vm(&mut self, id: &str, force: bool) -> Result<Vm> {
        let lock = self.lock_vm(id)?;
        let vm = self.store().resolve_vm(id)?;
        let runtime = self.runtime()?;
        if vm.vmm.as_ref().is_some_and(supervise::is_running) {
            if !force {
                return Err(VmError::Running {
                    id: vm.id,
                    name: vm.config.name,
                }
                .into());
            }
            runtime.block_on(self.stop_locked(
                vm.clone(),
                StopOptions {
                    force: true,
                    timeout: None,
                },
            ))?;
        }
        let intent = self.store().begin_intent(
            "vm.rm",
            ObjectKind::Vm,
            &vm.id,
            &serde_json::json!({"run_dir": vm.run_dir, "log_dir": vm.log_dir}),
        )?;
        runtime.block_on(self.clear_runtime(&vm))?;
        let leases = self.store().leases(&vm.id)?;
        if let Err(e) = net::detach(&NetContext::from_config(self.config()), &vm, &leases) {
            intent.finish(self.store())?;
            return Err(VmError::from(e).into());
        }
        let removed = remove_run_dir(&vm.run_dir, lock.path()).and_then(|()| {
            remove_tree(&vm.log_dir).map_err(|e| ("log directory", vm.log_dir.clone(), e))
        });
        if let Err((what, path, source)) = removed {
            intent.finish(self.store())?;
            return Err(VmError::Remove {
                id: vm.id.clone(),
                name: vm.config.name.clone(),
                what,
                path,
                source,
            }
            .into());
        }
        if let Err(e) = crate::failpoint::hit("vm.rm.dirs") {
            intent.finish(self.store())?;
            return Err(e);
        }
        let vm = self.store().delete_vm(&vm.id)?;
        intent.finish(self.store())?;
        // Last: the lock file (a waiter holding it finds no record and says so).
        let _ = std::fs::remove_file(lock.path());
        let _ = std::fs::remove_dir(&vm.run_dir);
        drop(lock);
        Ok(vm)
    }

    /// The console socket of a running VM.
    pub fn console_socket(&mut self, reference: &str) -> Result<PathBuf> {
        let vm = self.store().resolve_vm(reference)?;
        if !vm.vmm.as_ref().is_some_and(supervise::is_running) {
            return Err(VmError::NotRunning {
                id: vm.id,
                name: vm.config.name,
            }
            .into());
        }
        Ok(VmPaths::of(&vm).console_socket())
    }

    /// The captured guest output file of a VM (running or not).
    pub fn console_log(&mut self, reference: &str) -> Result<(Vm, PathBuf)> {
        let vm = self.store().resolve_vm(reference)?;
        let log = VmPaths::of(&vm).console_log();
        Ok((vm, log))
    }

    /// Runs `op` on every VM, `pool_size` at a time, each with its own engine
    /// (its own database connection). References are resolved first: one that
    /// matches nothing fails the batch before any VM is touched.
    pub fn for_each_vm(
        &mut self,
        references: &[String],
        op: impl Fn(&mut Engine, &str) -> Result<Vm> + Sync,
    ) -> Result<Vec<BatchOutcome>> {
        let vms = self.store().resolve_vms(references)?;
        let pool = self.config().pool_size.max(1);
        let config = self.config().clone();
        let helper = self.helper_exe();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..pool.min(vms.len()) {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(vm) = vms.get(i) else { break };
                        let result = Engine::open(config.clone()).and_then(|mut engine| {
                            engine.set_helper_exe(helper.clone());
                            op(&mut engine, &vm.id)
                        });
                        results.lock().expect("results").push((
                            i,
                            BatchOutcome {
                                id: vm.id.clone(),
                                name: vm.config.name.clone(),
                                result,
                            },
                        ));
                    }
                });
            }
        });
        let mut results = results.into_inner().expect("results");
        results.sort_by_key(|(i, _)| *i);
        Ok(results.into_iter().map(|(_, r)| r).collect())
    }
}

/// The graceful step of a stop (docs/reference/cocoon-v0.3.8.md §4.6, §5.5). Errors are ignored: a
/// guest that does not react is escalated by the caller.
async fn graceful_stop(hypervisor: Hypervisor, direct_boot: bool, socket: PathBuf) {
    let result = match hypervisor {
        Hypervisor::CloudHypervisor => {
            let api = CloudHypervisor::new(&socket);
            if direct_boot {
                let _ = api.shutdown().await;
                // The VM is down; let the VMM process exit on its own terms.
                api.shutdown_vmm().await
            } else {
                api.power_button().await
            }
        }
        Hypervisor::Firecracker => Firecracker::new(&socket).send_ctrl_alt_del().await,
    };
    if let Err(e) = result {
        tracing::debug!("graceful stop request failed, escalating: {e}");
    }
}

/// Writable disks use O_DIRECT unless the user or the filesystem says no.
pub(super) fn direct_io_ok(config: &VmConfig, paths: &VmPaths) -> bool {
    !config.no_direct_io && {
        let probe_dir = paths.run_dir.parent().unwrap_or(&paths.run_dir);
        create_private_dir(probe_dir).is_ok() && disks::supports_direct_io(probe_dir)
    }
}

/// The `--data-disk` disks: what to create and how the VM sees them.
pub(super) fn data_disks(
    request: &CreateVm,
    paths: &VmPaths,
    direct_ok: bool,
) -> (Vec<DiskPrep>, Vec<StorageConfig>) {
    let mut prep = Vec::new();
    let mut storage = Vec::new();
    for disk in &request.data_disks {
        let path = paths.data_disk(&disk.name);
        prep.push(DiskPrep {
            path: path.clone(),
            size: disk.size,
            ext4: disk.fstype == FsType::Ext4,
        });
        let direct = match disk.directio {
            DirectIo::On => true,
            DirectIo::Off => false,
            DirectIo::Auto => direct_ok,
        };
        if request.hypervisor == Hypervisor::Firecracker && disk.directio != DirectIo::Auto {
            tracing::warn!(
                "data disk {}: Firecracker has no direct I/O switch; directio={:?} is ignored",
                disk.name,
                disk.directio
            );
        }
        storage.push(StorageConfig {
            path,
            ro: false,
            serial: disk.name.clone(),
            role: StorageRole::Data,
            mount_point: disk.mount.clone(),
            fstype: Some(disk.fstype),
            direct_io: (request.hypervisor == Hypervisor::CloudHypervisor).then_some(direct),
            directio_mode: Some(disk.directio),
        });
    }
    (prep, storage)
}

/// Layers bottom-up, read-only, with serials on CH.
fn layer_disks(image: &Image, dirs: &ImageDirs, hypervisor: Hypervisor) -> Vec<StorageConfig> {
    image
        .layers
        .iter()
        .enumerate()
        .map(|(j, digest)| StorageConfig {
            path: dirs.blob(digest),
            ro: true,
            serial: match hypervisor {
                Hypervisor::CloudHypervisor => cmdline::layer_serial(j),
                Hypervisor::Firecracker => String::new(),
            },
            role: StorageRole::Layer,
            mount_point: String::new(),
            fstype: None,
            direct_io: None,
            directio_mode: None,
        })
        .collect()
}

fn remove_tree(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Everything in the run directory but the lock file the caller holds.
fn remove_run_dir(dir: &Path, lock: &Path) -> Result<(), (&'static str, PathBuf, std::io::Error)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(("run directory", dir.to_path_buf(), e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| ("run directory", dir.to_path_buf(), e))?;
        let path = entry.path();
        if path == lock {
            continue;
        }
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| ("disk or runtime file", path.clone(), e))?;
    }
    Ok(())
}

fn read_tail(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(2048);
    String::from_utf8_lossy(&text[start..]).into_owned()
}

/// A new PTY pair (master, slave), both close-on-exec.
fn open_pty() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    use std::os::unix::ffi::OsStrExt;
    let slave = open_tty(Path::new(std::ffi::OsStr::from_bytes(name.as_bytes())))?;
    Ok((master, slave))
}

/// Opens a terminal without making it our controlling terminal.
fn open_tty(path: &Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    Ok(std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)?
        .into())
}

/// Polls `vm.info` until CH reports the VM Running. Its API socket comes up
/// before it has created and booted the VM from its command line, so the
/// first answers can be "VM is not created" or `Created`: those are waited
/// out (while the process lives, up to `limit`); the last one is the error.
async fn wait_running(
    api: &CloudHypervisor,
    vmm: &VmmProcess,
    limit: Duration,
) -> std::result::Result<vmm_api::ch::models::VmInfo, String> {
    let deadline = std::time::Instant::now() + limit;
    let mut pause = Duration::from_millis(1);
    loop {
        use vmm_api::ch::models::VmState;
        let last = match api.info().await {
            Ok(info) if info.state == VmState::Running => return Ok(info),
            // Still being created or booted from the command line: wait.
            Ok(info) if info.state == VmState::Created => {
                format!("the VM is {:?}, not running", info.state)
            }
            Err(e) if e.to_string().contains("not created") => e.to_string(),
            // Anything else (Shutdown, Paused, a refusal) will not change.
            Ok(info) => return Err(format!("the VM is {:?}, not running", info.state)),
            Err(e) => return Err(e.to_string()),
        };
        if !supervise::is_running(vmm) {
            return Err(format!("the VMM exited ({last})"));
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!("{last} after {} s", limit.as_secs()));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}
