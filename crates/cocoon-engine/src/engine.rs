//! The engine facade: the one door to every operation. Each method hands
//! its request to the operation's file in `ops/`, over one context
//! (configuration, store, layout, runtime). Opening the engine runs crash
//! recovery, so every command starts from a converged state.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::backend::LaunchOptions;
use crate::config::Config;
use crate::context::Ctx;
use crate::error::Result;
use crate::image::cloud::{CloudProgress, NoCloudProgress};
use crate::image::oci::PullProgress;
use crate::lock::VmLock;
use crate::model::{Image, Snapshot, Vm, VmListing, VmView};
use crate::name::{SnapshotName, VmName};
use crate::ops::gc::GcReport;
use crate::ops::image_pull::{CloudPullOutcome, PullOutcome};
use crate::ops::kernel;
use crate::ops::recover::Repair;
use crate::ops::snapshot_save::SaveOutcome;
use crate::ops::vm_cgroup;
use crate::ops::vm_clone::CloneRequest;
use crate::ops::vm_create::CreateVm;
use crate::ops::vm_debug::DebugPlan;
use crate::ops::vm_restore::RestoreRequest;
use crate::ops::vm_stop::StopOptions;
use crate::ops::watch::{Update, Watcher};
use crate::ops::*;
use crate::snapshot::archive::Compression;
use crate::store::{Intent, Store};

pub use crate::context::VM_LOCK_TIMEOUT;
pub(crate) use crate::state_dirs::writable_by_others;

#[derive(Debug)]
pub struct Engine {
    ctx: Ctx,
    /// What crash recovery converged when the engine was opened.
    recovered: Vec<Repair>,
}

/// The result of one VM in a batch command.
#[derive(Debug)]
pub struct BatchOutcome {
    pub id: String,
    pub name: VmName,
    pub result: Result<Vm>,
}

impl Engine {
    /// Creates the root directory if needed (refusing state directories
    /// another user could have planted), opens (migrating) the state
    /// database, and converges whatever a dead command left half-done (a
    /// failure there is logged, never blocks this command).
    pub fn open(config: Config) -> Result<Engine> {
        let mut engine = Engine::open_without_recovery(config)?;
        match recover::run(&mut engine.ctx) {
            Ok(repairs) => engine.recovered = repairs,
            Err(e) => tracing::warn!("crash recovery: {e}"),
        }
        Ok(engine)
    }

    /// `open` without crash recovery: for a second engine in a process
    /// whose first already recovered (a batch's workers).
    fn open_without_recovery(config: Config) -> Result<Engine> {
        crate::state_dirs::prepare(&config)?;
        let store = Store::open(&config.db_path())?;
        Ok(Engine {
            ctx: Ctx::new(config, store),
            recovered: Vec::new(),
        })
    }

    /// What crash recovery converged when this engine was opened.
    pub fn recovered(&self) -> &[Repair] {
        &self.recovered
    }

    /// Converges every intent whose owner is dead (as `open` does).
    pub fn reconcile(&mut self) -> Result<Vec<Repair>> {
        recover::run(&mut self.ctx)
    }

    /// Operations in flight (or left by dead commands until recovered).
    pub fn intents(&mut self) -> Result<Vec<Intent>> {
        Ok(self.ctx.store().intents()?)
    }

    /// The executable started as a VM's console relay and as a snapshot's
    /// sealer (both hidden subcommands of the `cocoon` CLI): the running
    /// program by default, settable for embedders.
    pub fn helper_exe(&self) -> PathBuf {
        self.ctx.helper_exe()
    }

    pub fn set_helper_exe(&mut self, exe: PathBuf) {
        self.ctx.set_helper_exe(exe);
    }

    pub fn config(&self) -> &Config {
        self.ctx.config()
    }

    /// Serialises operations on one VM across processes.
    pub fn lock_vm(&self, id: &str) -> Result<VmLock> {
        self.ctx.lock_vm(id)
    }

    // --- images ---

    pub fn pull_image(
        &mut self,
        reference: &str,
        progress: &dyn PullProgress,
    ) -> Result<PullOutcome> {
        image_pull::oci(&mut self.ctx, reference, progress)
    }

    pub fn pull_cloud_image(
        &mut self,
        url: &str,
        force: bool,
        progress: &dyn CloudProgress,
    ) -> Result<CloudPullOutcome> {
        image_pull::cloud(&mut self.ctx, url, force, progress)
    }

    pub fn import_image(&mut self, name: &str, files: &[PathBuf]) -> Result<Image> {
        self.import_image_with_progress(name, files, &NoCloudProgress)
    }

    pub fn import_image_with_progress(
        &mut self,
        name: &str,
        files: &[PathBuf],
        progress: &dyn CloudProgress,
    ) -> Result<Image> {
        image_import::run(&mut self.ctx, name, files, progress)
    }

    pub fn list_images(&mut self) -> Result<Vec<Image>> {
        image_query::list(&mut self.ctx)
    }

    pub fn inspect_image(&mut self, reference: &str) -> Result<Image> {
        image_query::inspect(&mut self.ctx, reference)
    }

    pub fn remove_images(&mut self, references: &[String]) -> Result<Vec<Image>> {
        image_query::remove(&mut self.ctx, references)
    }

    // --- VMs ---

    pub fn install_kernel(
        &mut self,
        source: kernel::Source<'_>,
    ) -> Result<crate::kernel::Installed> {
        kernel::install(&mut self.ctx, source)
    }

    pub fn list_kernels(&mut self) -> Result<Vec<kernel::KernelView>> {
        kernel::list(&mut self.ctx)
    }

    pub fn remove_kernel(&mut self, release: &str) -> Result<()> {
        kernel::remove(&mut self.ctx, release)
    }

    /// The CPUs `--cpuset-cpus auto` gives a new VM: the host's cache
    /// domain the fewest VMs were given (see [`crate::cgroup::topology`]).
    pub fn auto_cpus(&mut self) -> Result<crate::cgroup::CpuList> {
        vm_cgroup::auto_cpus(&mut self.ctx)
    }

    /// A VM cgroup's CPU figures (None: it has no group now).
    pub fn cpu_stat(&self, vm_id: &str) -> Option<crate::cgroup::CpuStat> {
        vm_cgroup::stat(&self.ctx, vm_id)
    }

    /// The CPU control files of a VM's group as the kernel reads them back.
    pub fn cgroup_settings(&self, vm_id: &str) -> Vec<(String, String)> {
        vm_cgroup::settings(&self.ctx, vm_id)
    }

    pub fn create_vm(&mut self, request: CreateVm) -> Result<Vm> {
        vm_create::run(&mut self.ctx, request)
    }

    pub fn debug_vm(
        &mut self,
        request: &CreateVm,
        opts: &LaunchOptions,
        cow: Option<&Path>,
    ) -> Result<DebugPlan> {
        vm_debug::run(&mut self.ctx, request, opts, cow)
    }

    pub fn start_vm(&mut self, id: &str) -> Result<Vm> {
        vm_start::run(&mut self.ctx, id)
    }

    /// `vm run`: creates and starts the VM; the created VM and the start's
    /// outcome. Nothing is synced to disk on the way to the VMM: the state
    /// is synced once, after the start (whatever its outcome), before this
    /// returns, so what `vm run` reports survives a power loss as a `vm
    /// create` would (see `vm_create::run_unsynced` for a loss before).
    pub fn run_vm(&mut self, request: CreateVm) -> Result<(Vm, Result<Vm>)> {
        let vm = vm_create::run_unsynced(&mut self.ctx, request)?;
        let started = vm_start::run(&mut self.ctx, &vm.id);
        self.ctx.store().sync()?;
        Ok((vm, started))
    }

    pub fn stop_vm(&mut self, id: &str, options: StopOptions) -> Result<Vm> {
        vm_stop::run(&mut self.ctx, id, options)
    }

    /// `vm resize`: a running VM through its VMM, a stopped one's record.
    pub fn resize_vm(&mut self, reference: &str, request: vm_resize::VmResize) -> Result<Vm> {
        vm_resize::run(&mut self.ctx, reference, request)
    }

    /// `vm net --nics N`: grows or shrinks a running VM's NICs.
    pub fn resize_vm_nics(&mut self, reference: &str, nics: u32) -> Result<vm_net::NetResize> {
        vm_net::resize(&mut self.ctx, reference, nics)
    }

    pub fn remove_vm(&mut self, id: &str, force: bool) -> Result<Vm> {
        vm_remove::run(&mut self.ctx, id, force)
    }

    pub fn list_vms(&mut self) -> Result<Vec<VmView>> {
        vm_query::list(&mut self.ctx)
    }

    /// What `vm ls` shows of every VM (its table; `-o json` prints
    /// [`Engine::list_vms`]), without reading whole records.
    pub fn list_vm_listings(&mut self) -> Result<Vec<VmListing>> {
        vm_query::listings(&mut self.ctx)
    }

    pub fn inspect_vm(&mut self, reference: &str) -> Result<VmView> {
        vm_query::inspect(&mut self.ctx, reference)
    }

    pub fn console_socket(&mut self, reference: &str) -> Result<PathBuf> {
        vm_query::console_socket(&mut self.ctx, reference)
    }

    /// Starts a command in a running VM through its guest agent.
    pub fn exec_vm(
        &mut self,
        reference: &str,
        request: &crate::agent::ExecRequest,
    ) -> Result<crate::agent::ExecSession> {
        vm_agent::exec(&mut self.ctx, reference, request)
    }

    /// Fresh host entropy into a running VM's CRNG (and a new machine-id).
    pub fn reseed_vm(&mut self, reference: &str, regen_machine_id: bool) -> Result<()> {
        vm_agent::reseed(&mut self.ctx, reference, regen_machine_id)
    }

    /// A new hostname, machine-id and NIC settings for a running VM.
    /// Whether the engine knows the VM runs a guest agent (a container
    /// image's, unless `--no-agent`).
    pub fn has_guest_agent(&self, vm: &Vm) -> bool {
        vm_agent::has_agent(&self.ctx, vm)
    }

    /// After a clone (`identity`: hostname, machine-id, NICs too) or a
    /// restore: refreshes the guest through its agent. False when the VM has
    /// no agent the engine knows of.
    pub fn refresh_guest(&mut self, reference: &str, identity: bool) -> Result<bool> {
        vm_agent::refresh(&mut self.ctx, reference, identity)
    }

    pub fn set_vm_identity(
        &mut self,
        reference: &str,
        request: &crate::agent::IdentityRequest,
    ) -> Result<()> {
        vm_agent::set_identity(&mut self.ctx, reference, request)
    }

    /// `vm reconcile-stale-create`: reclaims an ownerless `creating` record.
    pub fn reconcile_stale_create(
        &mut self,
        reference: &str,
    ) -> Result<vm_reconcile::StaleCreateOutcome> {
        vm_reconcile::run(&mut self.ctx, reference)
    }

    pub fn console_log(&mut self, reference: &str) -> Result<(Vm, PathBuf)> {
        vm_query::console_log(&mut self.ctx, reference)
    }

    pub fn vmm_log(&mut self, reference: &str) -> Result<(Vm, PathBuf)> {
        vm_query::vmm_log(&mut self.ctx, reference)
    }

    /// Waits for the first look at the VMs, or for the next change.
    pub fn watch(&mut self, watcher: &mut Watcher) -> Update {
        watcher.next(&mut self.ctx)
    }

    /// Runs `op` on every VM, `pool_size` at a time, each with its own engine
    /// (its own database connection). References are resolved first: one that
    /// matches nothing fails the batch before any VM is touched.
    pub fn for_each_vm(
        &mut self,
        references: &[String],
        op: impl Fn(&mut Engine, &str) -> Result<Vm> + Sync,
    ) -> Result<Vec<BatchOutcome>> {
        let vms = self.ctx.store().resolve_vms(references)?;
        // One VM (the usual `vm start NAME`): on this engine, without a
        // second connection or a thread.
        if let [vm] = vms.as_slice() {
            return Ok(vec![BatchOutcome {
                id: vm.id.clone(),
                name: vm.config.name.clone(),
                result: op(self, &vm.id),
            }]);
        }
        let pool = self.config().pool_size.max(1);
        let config = self.config().clone();
        let helper = self.helper_exe();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results = std::sync::Mutex::new(Vec::new());
        let work = || {
            while let Some(vm) = vms.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
                let result =
                    Engine::open_without_recovery(config.clone()).and_then(|mut engine| {
                        engine.set_helper_exe(helper.clone());
                        op(&mut engine, &vm.id)
                    });
                let outcome = BatchOutcome {
                    id: vm.id.clone(),
                    name: vm.config.name.clone(),
                    result,
                };
                results
                    .lock()
                    .expect("results")
                    .push((vm.id.clone(), outcome));
            }
        };
        std::thread::scope(|scope| {
            for _ in 0..pool.min(vms.len()) {
                scope.spawn(work);
            }
        });
        let mut results = results.into_inner().expect("results");
        let order = |id: &String| vms.iter().position(|v| &v.id == id);
        results.sort_by_key(|(id, _)| order(id));
        Ok(results.into_iter().map(|(_, r)| r).collect())
    }

    // --- snapshots ---

    pub fn save_snapshot(
        &mut self,
        reference: &str,
        name: Option<SnapshotName>,
        description: &str,
    ) -> Result<SaveOutcome> {
        snapshot_save::run(&mut self.ctx, reference, name, description)
    }

    pub fn clone_vm(&mut self, reference: &str, request: CloneRequest) -> Result<Vm> {
        let vm = vm_clone::run(&mut self.ctx, reference, request)?;
        snapshot_gc::touch(&mut self.ctx, reference);
        Ok(vm)
    }

    pub fn pull_snapshot_base(
        &mut self,
        reference: &str,
        request: &CloneRequest,
        oci_progress: &dyn PullProgress,
        cloud_progress: &dyn CloudProgress,
    ) -> Result<Option<String>> {
        snapshot_pull_base::run(
            &mut self.ctx,
            reference,
            request,
            oci_progress,
            cloud_progress,
        )
    }

    /// `vm disk attach`: a host file into the running VM, recorded.
    pub fn attach_disk(
        &mut self,
        reference: &str,
        request: &vm_disk::DiskAttach,
    ) -> Result<vm_disk::DiskChange> {
        vm_disk::attach(&mut self.ctx, reference, request)
    }

    /// `vm disk detach`: an attached disk out of the running VM, forgotten.
    pub fn detach_disk(
        &mut self,
        reference: &str,
        name: &crate::name::DiskName,
    ) -> Result<vm_disk::DiskChange> {
        vm_disk::detach(&mut self.ctx, reference, name)
    }

    /// `vm fs attach`: a running virtiofsd's share into the running VM.
    pub fn attach_fs(
        &mut self,
        reference: &str,
        request: &vm_fs::FsAttach,
    ) -> Result<vm_fs::FsChange> {
        vm_fs::attach(&mut self.ctx, reference, request)
    }

    /// `vm fs detach`: a share out of the running VM.
    pub fn detach_fs(
        &mut self,
        reference: &str,
        tag: &crate::name::FsTag,
    ) -> Result<vm_fs::FsChange> {
        vm_fs::detach(&mut self.ctx, reference, tag)
    }

    /// `vm device attach`: a host PCI device (bound to vfio-pci) passed
    /// through to the running VM.
    pub fn attach_device(
        &mut self,
        reference: &str,
        pci: &crate::name::PciAddress,
        id: Option<&crate::name::DeviceId>,
    ) -> Result<vm_device::DeviceChange> {
        vm_device::attach(&mut self.ctx, reference, pci, id)
    }

    /// `vm device detach`: a passed-through device out of the running VM.
    pub fn detach_device(&mut self, reference: &str, id: &str) -> Result<vm_device::DeviceChange> {
        vm_device::detach(&mut self.ctx, reference, id)
    }

    /// `vm hibernate`: the guest into a new snapshot, the VMM stopped.
    pub fn hibernate_vm(
        &mut self,
        reference: &str,
        name: Option<SnapshotName>,
        description: &str,
    ) -> Result<vm_hibernate::Hibernated> {
        vm_hibernate::run(&mut self.ctx, reference, name, description)
    }

    pub fn restore_vm(
        &mut self,
        vm_ref: &str,
        snapshot_ref: &str,
        request: RestoreRequest,
    ) -> Result<Vm> {
        let vm = vm_restore::run(&mut self.ctx, vm_ref, snapshot_ref, request)?;
        snapshot_gc::touch(&mut self.ctx, snapshot_ref);
        Ok(vm)
    }

    pub fn list_snapshots(&mut self, vm: Option<&str>) -> Result<Vec<Snapshot>> {
        snapshot_query::list(&mut self.ctx, vm)
    }

    pub fn inspect_snapshot(&mut self, reference: &str) -> Result<Snapshot> {
        snapshot_query::inspect(&mut self.ctx, reference)
    }

    /// Whether the snapshot's manifest has every file's checksum: `snapshot
    /// save` leaves them to a detached sealer, and a use that needs them
    /// (export, push, restore) seals first. None when the manifest cannot
    /// be read.
    pub fn snapshot_sealed(&self, snapshot: &Snapshot) -> Option<bool> {
        snapshot_check::load_manifest(snapshot, false)
            .ok()
            .map(|manifest| manifest.is_sealed())
    }

    pub fn remove_snapshots(&mut self, references: &[String]) -> Result<Vec<Snapshot>> {
        snapshot_query::remove(&mut self.ctx, references)
    }

    pub fn export_snapshot(
        &mut self,
        reference: &str,
        out: &mut dyn Write,
        compression: Compression,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Snapshot> {
        let snapshot = snapshot_export::run(&mut self.ctx, reference, out, compression, progress)?;
        snapshot_gc::touch(&mut self.ctx, &snapshot.id);
        Ok(snapshot)
    }

    /// `snapshot export --to-dir`.
    pub fn export_snapshot_to_dir(&mut self, reference: &str, dir: &Path) -> Result<Snapshot> {
        snapshot_dir::export(&mut self.ctx, reference, dir)
    }

    /// `vm clone --from-dir`.
    pub fn clone_vm_from_dir(&mut self, dir: &Path, request: CloneRequest) -> Result<Vm> {
        snapshot_dir::clone(&mut self.ctx, dir, request)
    }

    /// `vm restore --from-dir [--force]`.
    pub fn restore_vm_from_dir(
        &mut self,
        vm_ref: &str,
        dir: &Path,
        force: bool,
        request: RestoreRequest,
    ) -> Result<Vm> {
        snapshot_dir::restore(&mut self.ctx, vm_ref, dir, force, request)
    }

    pub fn import_snapshot(
        &mut self,
        input: &mut dyn Read,
        name: Option<&SnapshotName>,
        description: Option<&str>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Snapshot> {
        snapshot_import::run(&mut self.ctx, input, name, description, progress)
    }

    /// `snapshot push`: the snapshot into an OCI registry, in chunks or
    /// (upstream's layout) a blob per file.
    pub fn push_snapshot(
        &mut self,
        snapshot: &str,
        reference: &str,
        layout: snapshot_push::Layout,
        progress: &dyn snapshot_push::TransferProgress,
    ) -> Result<snapshot_push::Pushed> {
        snapshot_push::run(&mut self.ctx, snapshot, reference, layout, progress)
    }

    /// `snapshot pull`: a snapshot artifact (either layout) into the store.
    pub fn pull_snapshot(
        &mut self,
        reference: &str,
        naming: snapshot_pull::Naming<'_>,
        progress: &dyn snapshot_push::TransferProgress,
    ) -> Result<snapshot_pull::Pulled> {
        snapshot_pull::run(&mut self.ctx, reference, naming, progress)
    }

    // --- housekeeping ---

    /// Removes what nothing references; reports what crash recovery
    /// converged, at open and now.
    /// `gc --snapshot`: evicts snapshots, least recently used first.
    pub fn evict_snapshots(
        &mut self,
        policy: &snapshot_gc::EvictionPolicy,
    ) -> Result<snapshot_gc::EvictionReport> {
        snapshot_gc::run(&mut self.ctx, policy)
    }

    pub fn gc(&mut self, dry_run: bool) -> Result<GcReport> {
        let mut report = gc::run(&mut self.ctx, dry_run)?;
        let mut recovered = std::mem::take(&mut self.recovered);
        recovered.append(&mut report.recovered);
        report.recovered = recovered;
        Ok(report)
    }
}
