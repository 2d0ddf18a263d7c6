//! Crash recovery: converge what an operation left half-done when the
//! process running it died (SIGKILL, OOM, power loss). Every multi-step
//! operation records an intent before its first side effect; an intent whose
//! owner is dead is claimed here and rolled forward or back by its step.
//! Run at the start of every command: with nothing to do it is one query.

use std::path::PathBuf;
use std::time::Duration;

use crate::engine::Engine;
use crate::error::Result;
use crate::model::{Vm, VmState, VmmProcess};
use crate::net::{self, NetContext};
use crate::store::Intent;
use crate::supervise::{self, StopTimeouts};
use crate::vm::launch::VmPaths;
use crate::vmm::VmmApi;

/// One thing the reconciler did, for logs and `gc -o json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Repair {
    pub op: String,
    pub object: String,
    pub action: String,
}

const QUICK: StopTimeouts = StopTimeouts {
    graceful: Duration::ZERO,
    term: Duration::from_secs(2),
    kill: Duration::from_secs(5),
};

impl Engine {
    /// Converges every intent whose owner is dead.
    pub fn reconcile(&mut self) -> Result<Vec<Repair>> {
        let orphans = self.store().orphaned_intents()?;
        let mut repairs = Vec::new();
        for intent in orphans {
            let Some(claim) = self.store().claim_intent(&intent)? else {
                continue; // another process took it
            };
            let action = match self.converge(&intent) {
                Ok(action) => action,
                Err(e) => {
                    // Left claimed by us; once we exit it is orphaned again.
                    tracing::warn!(
                        "could not converge {} of {} left by pid {}: {e}",
                        intent.op,
                        intent.object_id,
                        intent.owner.pid
                    );
                    continue;
                }
            };
            tracing::warn!(
                "recovered from a dead `{}` of {} (pid {} at step {}): {action}",
                intent.op,
                intent.object_id,
                intent.owner.pid,
                intent.step
            );
            claim.finish_recovered(self.store(), &intent, &action)?;
            repairs.push(Repair {
                op: intent.op.clone(),
                object: intent.object_id.clone(),
                action,
            });
        }
        Ok(repairs)
    }

    fn converge(&mut self, intent: &Intent) -> Result<String> {
        let data = &intent.data;
        let path = |key: &str| data[key].as_str().map(PathBuf::from);
        match intent.op.as_str() {
            "snapshot.save" => {
                // The VM may be paused inside the dead save's window: resume
                // it (a no-op on a running VM), then drop the half-made snapshot.
                let mut resumed = "";
                if let (Some(socket), Some(vm_id)) = (path("api_socket"), data["vm_id"].as_str()) {
                    let _lock = self.lock_vm(vm_id)?;
                    let runtime = self.runtime()?;
                    let hypervisor = self.store().get_vm(vm_id)?.map(|v| v.hypervisor);
                    if let Some(h) = hypervisor
                        && socket.exists()
                    {
                        match runtime.block_on(VmmApi::new(h, &socket).resume()) {
                            Ok(_) => resumed = "resumed the VM, ",
                            Err(e) => tracing::warn!("cannot resume VM {vm_id}: {e}"),
                        }
                    }
                }
                let snapshot = self.store().get_snapshot(&intent.object_id)?;
                if snapshot.as_ref().is_some_and(|s| s.pending) {
                    if let Some(dir) = path("data_dir") {
                        let _ = std::fs::remove_dir_all(dir);
                    }
                    self.store().delete_snapshot(&intent.object_id)?;
                    return Ok(format!("{resumed}removed the unfinished snapshot"));
                }
                Ok(format!("{resumed}the snapshot was complete"))
            }
            "vm.create" | "vm.clone" => {
                let _lock = self.lock_vm(&intent.object_id)?;
                let Some(vm) = self.store().get_vm(&intent.object_id)? else {
                    for key in ["run_dir", "log_dir"] {
                        if let Some(dir) = path(key) {
                            let _ = std::fs::remove_dir_all(dir);
                        }
                    }
                    return Ok("nothing was recorded; removed its directories".into());
                };
                if vm.state == VmState::Running
                    && vm.vmm.as_ref().is_some_and(supervise::is_running)
                {
                    return Ok("the VM had finished starting; kept".into());
                }
                self.discard_vm(&vm)?;
                Ok("rolled back the half-created VM (processes, network, disks, record)".into())
            }
            "vm.start" | "vm.restore" => {
                let _lock = self.lock_vm(&intent.object_id)?;
                let Some(vm) = self.store().get_vm(&intent.object_id)? else {
                    return Ok("the VM is gone".into());
                };
                // A start records `running` only once it is done; a restore
                // replaces a VM that was already `running`, so for it the
                // record proves nothing and an unfinished restore is undone.
                if intent.op == "vm.start"
                    && vm.state == VmState::Running
                    && vm.vmm.as_ref().is_some_and(supervise::is_running)
                {
                    return Ok("the VM is running; kept".into());
                }
                self.settle_without_vmm(&vm, VmState::Error, "error")?;
                if intent.op == "vm.restore" {
                    // Disks: all old or all new, never a mix. Before the
                    // restore committed, the old ones come back.
                    if intent.step == "committing" {
                        crate::vm::finish_disk_swap(&vm.storage_configs);
                    } else {
                        crate::vm::roll_back_disk_swap(&vm.storage_configs);
                        return Ok("killed the half-started VMM and put the VM's old disks back; the VM is marked error (start it again)".into());
                    }
                }
                Ok("killed the half-started VMM; the VM is marked error (start it again)".into())
            }
            "vm.stop" => {
                let _lock = self.lock_vm(&intent.object_id)?;
                let Some(vm) = self.store().get_vm(&intent.object_id)? else {
                    return Ok("the VM is gone".into());
                };
                self.settle_without_vmm(&vm, VmState::Stopped, "stopped")?;
                Ok("finished the stop".into())
            }
            "vm.rm" => {
                let _lock = self.lock_vm(&intent.object_id)?;
                let Some(vm) = self.store().get_vm(&intent.object_id)? else {
                    return Ok("the VM was already removed".into());
                };
                self.discard_vm(&vm)?;
                Ok("finished the removal".into())
            }
            "image.pull" | "image.import" => {
                // Layers and cloud blobs appear by one rename each and the
                // image record by one transaction: nothing half-made is
                // visible. Stored blobs stay as cache (gc takes unpinned ones);
                // the dead owner's work files go now.
                let removed = crate::image::store::remove_work_of(
                    &crate::image::store::ImageDirs::new(&self.config().root_dir),
                    intent.owner.pid,
                );
                Ok(format!(
                    "no image was recorded half-way; removed {removed} work file(s) it left"
                ))
            }
            "snapshot.import" => {
                if let Some(staging) = path("staging") {
                    let _ = std::fs::remove_dir_all(staging);
                }
                if self.store().get_snapshot(&intent.object_id)?.is_some() {
                    return Ok("the import had finished; kept".into());
                }
                // Renamed into place but never recorded: not visible, drop it.
                if let Some(dir) = path("data_dir") {
                    let _ = std::fs::remove_dir_all(dir);
                }
                Ok("removed the unfinished import".into())
            }
            other => Ok(format!("no recovery for `{other}`; dropped its intent")),
        }
    }

    /// Kills the VM's processes and records it in `state` with none.
    fn settle_without_vmm(&mut self, vm: &Vm, state: VmState, action: &str) -> Result<()> {
        self.kill_vm_processes(&vm.run_dir, vm.vmm.as_ref())?;
        self.store().update_vm(&vm.id, action, |v| {
            v.state = state;
            v.pid = 0;
            v.vmm = None;
            v.console_relay = None;
        })?;
        Ok(())
    }

    /// Kills the VM's processes, releases its network, removes its
    /// directories and then its record.
    fn discard_vm(&mut self, vm: &Vm) -> Result<()> {
        self.kill_vm_processes(&vm.run_dir, vm.vmm.as_ref())?;
        let leases = self.store().leases(&vm.id)?;
        net::detach(&NetContext::from_config(self.config()), vm, &leases)
            .map_err(crate::vm::VmError::from)?;
        let _ = std::fs::remove_dir_all(&vm.run_dir);
        let _ = std::fs::remove_dir_all(&vm.log_dir);
        self.store().delete_vm(&vm.id)?;
        Ok(())
    }

    /// Kills a VM's VMM and console relay: the recorded one and anything
    /// else naming its sockets (an orphan whose record was lost).
    fn kill_vm_processes(
        &mut self,
        run_dir: &std::path::Path,
        vmm: Option<&VmmProcess>,
    ) -> Result<()> {
        let paths = VmPaths {
            run_dir: run_dir.to_path_buf(),
            log_dir: PathBuf::new(),
        };
        let runtime = self.runtime()?;
        runtime.block_on(async {
            if let Some(vmm) = vmm {
                let _ =
                    supervise::terminate(vmm, None::<fn() -> std::future::Ready<()>>, QUICK).await;
            }
            for socket in [paths.api_socket(), paths.console_socket()] {
                let _ = supervise::terminate_all_by_socket(&socket, QUICK).await;
            }
        });
        for file in paths.runtime_files() {
            let _ = std::fs::remove_file(file);
        }
        Ok(())
    }
}
