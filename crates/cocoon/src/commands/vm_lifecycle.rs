//! `vm restore` and `vm hibernate`: the snapshot lifecycle of one VM.

use std::path::Path;

use cocoon_engine::model::VmView;
use cocoon_engine::name::SnapshotName;
use cocoon_engine::ops::vm_resize::VmResize;
use cocoon_engine::ops::vm_restore::RestoreRequest;
use cocoon_engine::{Engine, Error, Result};

use super::io;
use crate::cli::{FormatArg, Lazy, RestoreArgs, RestoreModeArg, SnapshotShape, VmCommand};
use crate::output::print_json;

/// `vm restore`, from its flags.
pub(super) fn restore_command(engine: &mut Engine, command: VmCommand) -> Result<()> {
    let VmCommand::Restore(Lazy(RestoreArgs {
        shape: SnapshotShape {
            cpu,
            memory,
            storage,
        },
        restore_mode,
        on_demand,
        cpu_control,
        switches,
        from_dir,
        force,
        pull,
        output,
        vm,
        snapshot,
    })) = command
    else {
        unreachable!("called for vm restore only")
    };

    let request = RestoreRequest {
        cpu,
        memory,
        storage,
        restore_mode: RestoreModeArg::engine(restore_mode, on_demand),
        resources: cpu_control
            .given()
            .then(|| cpu_control.limits(|| engine.auto_cpus()))
            .transpose()?,
        any_source: false,
        devices: switches.switches(),
    };
    let source = match (&from_dir, &snapshot) {
        (Some(dir), _) => RestoreFrom::Dir(dir, force),
        (None, Some(reference)) if pull => {
            if !super::snapshot_registry::is_reference(reference) {
                return Err(Error::Invalid(format!(
                    "--pull takes a registry reference (host/repository:tag), not {reference:?}; restore a stored snapshot without --pull"
                )));
            }
            RestoreFrom::Registry(reference, force)
        }
        // Upstream's words (its PreRunE).
        (None, _) if force => {
            return Err(Error::Invalid(
                "--force only applies with --from-dir".into(),
            ));
        }
        (None, Some(snapshot)) => RestoreFrom::Snapshot(snapshot),
        (None, None) => unreachable!("clap requires SNAPSHOT or --from-dir"),
    };
    restore(engine, &vm, source, request, output)
}

/// What `vm restore` restores from.
pub(super) enum RestoreFrom<'a> {
    Snapshot(&'a str),
    /// A snapshot directory, and `--force`.
    Dir(&'a Path, bool),
    /// A registry reference (`--pull`), and `--force`.
    Registry(&'a str, bool),
}

/// `vm restore`.
pub(super) fn restore(
    engine: &mut Engine,
    vm: &str,
    source: RestoreFrom<'_>,
    request: RestoreRequest,
    output: FormatArg,
) -> Result<()> {
    let vm = match source {
        RestoreFrom::Snapshot(snapshot) => engine.restore_vm(vm, snapshot, request)?,
        RestoreFrom::Dir(dir, force) => engine.restore_vm_from_dir(vm, dir, force, request)?,
        RestoreFrom::Registry(reference, force) => {
            // The VM first: nothing is pulled for a VM that is not there.
            let target = engine.inspect_vm(vm)?.vm;
            super::snapshot_registry::with_pulled(engine, reference, |engine, pulled| {
                if !force && pulled.source_vm.as_deref() != Some(target.id.as_str()) {
                    return Err(Error::Invalid(format!(
                        "snapshot {reference} was taken from VM {}, not from VM {} ({}); pass --force to restore it anyway, or use `cocoon vm clone --pull` to start a new VM from it",
                        pulled.source_vm.as_deref().unwrap_or("(none recorded)"),
                        target.config.name,
                        target.id
                    )));
                }
                let request = RestoreRequest {
                    any_source: true,
                    ..request
                };
                engine.restore_vm(vm, &pulled.snapshot.id, request)
            })?
        }
    };
    // A restored guest replays the snapshot's random state: reseed it.
    if let Err(e) = engine.refresh_guest(&vm.id, false) {
        tracing::warn!("{}: the guest's CRNG was not reseeded: {e}", vm.config.name);
    }
    if output.json() {
        return print_json(&VmView::reconcile(vm)).map_err(io);
    }
    eprintln!("restored: {} (name: {})", vm.id, vm.config.name);
    Ok(())
}

/// `vm hibernate`.
pub(super) fn hibernate(
    engine: &mut Engine,
    vm: &str,
    name: Option<SnapshotName>,
    description: &str,
    output: FormatArg,
) -> Result<()> {
    let done = engine.hibernate_vm(vm, name, description)?;
    if output.json() {
        return print_json(&done).map_err(io);
    }
    let snapshot = done
        .snapshot
        .name
        .as_ref()
        .map_or(done.snapshot.id.clone(), ToString::to_string);
    eprintln!(
        "hibernated: {} (name: {}); snapshot {snapshot} (wake: cocoon vm start {})",
        done.vm.id, done.vm.config.name, done.vm.config.name
    );
    Ok(())
}

/// `vm resize`.
pub(super) fn resize(
    engine: &mut Engine,
    vm: &str,
    request: VmResize,
    output: FormatArg,
) -> Result<()> {
    let vm = engine.resize_vm(vm, request)?;
    if output.json() {
        return print_json(&vm).map_err(io);
    }
    eprintln!(
        "resized: {} (name: {}) to {} vCPUs and {} MiB",
        vm.id,
        vm.config.name,
        vm.config.cpu,
        vm.config.memory >> 20
    );
    Ok(())
}
