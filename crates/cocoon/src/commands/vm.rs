use cocoon_engine::model::VmView;
use cocoon_engine::spec::{self, DataDiskSpec};
use cocoon_engine::units::BinarySize;
use cocoon_engine::{Config, Engine, Error, Result};

use super::{io, not_implemented, status};
use crate::cli::{VmCommand, VmFlags};
use crate::output::{local_time, print_json, print_line, print_table};

const LIFECYCLE: &str = "VM lifecycle";

pub fn run(command: VmCommand, config: Config) -> Result<()> {
    // Input is validated before the engine opens, so a refused command leaves no trace.
    match &command {
        VmCommand::Create { flags, .. } | VmCommand::Run { flags, .. } => {
            validate_vm_flags(flags)?;
        }
        VmCommand::Debug { flags, .. } if !flags.data_disks.is_empty() => {
            tracing::warn!("--data-disk is ignored by vm debug");
        }
        _ => {}
    }
    let mut engine = Engine::open(config)?;
    match command {
        VmCommand::Create { .. } => not_implemented("vm create", LIFECYCLE),
        VmCommand::Run { .. } => not_implemented("vm run", LIFECYCLE),
        VmCommand::Debug { .. } => not_implemented("vm debug", LIFECYCLE),
        VmCommand::Clone { snapshot, .. } => {
            engine.store().resolve_snapshot(&snapshot)?;
            not_implemented("vm clone", "snapshots")
        }
        VmCommand::Start { vms, .. } => {
            engine.store().resolve_vms(&vms)?;
            not_implemented("vm start", LIFECYCLE)
        }
        VmCommand::Stop { vms, .. } => {
            engine.store().resolve_vms(&vms)?;
            not_implemented("vm stop", LIFECYCLE)
        }
        VmCommand::Rm { vms, .. } => {
            engine.store().resolve_vms(&vms)?;
            not_implemented("vm rm", LIFECYCLE)
        }
        VmCommand::Console { vm, .. } => {
            engine.store().resolve_vm(&vm)?;
            not_implemented("vm console", LIFECYCLE)
        }
        VmCommand::Restore { vm, snapshot, .. } => {
            let vm = engine.store().resolve_vm(&vm)?;
            let snapshot = engine.store().resolve_snapshot(&snapshot)?;
            if snapshot.vm_id.as_deref() != Some(vm.id.as_str()) {
                return Err(Error::Invalid(format!(
                    "snapshot {} was not taken from VM {} ({}); restore only accepts the VM's own snapshots, use `cocoon vm clone {}` to start a new VM from it",
                    snapshot.id, vm.id, vm.config.name, snapshot.id
                )));
            }
            not_implemented("vm restore", "snapshots")
        }
        VmCommand::List { output } => {
            let vms = engine.list_vms()?;
            if output.json() {
                return print_json(&vms).map_err(io);
            }
            if vms.is_empty() {
                return print_line("No VMs found.").map_err(io);
            }
            print_table(LIST_HEADERS, vms.iter().map(list_row).collect()).map_err(io)
        }
        VmCommand::Inspect { vm } => print_json(&engine.inspect_vm(&vm)?).map_err(io),
        VmCommand::Status {
            interval,
            event,
            output,
            vms,
        } => status::run(&mut engine, interval, event, output.json(), &vms),
    }
}

/// Cross-flag checks clap cannot express; each value was validated when parsed.
fn validate_vm_flags(flags: &VmFlags) -> Result<Vec<DataDiskSpec>> {
    Ok(spec::normalize_data_disks(flags.data_disks.clone())?)
}

pub const LIST_HEADERS: &[&str] = &[
    "ID", "NAME", "STATE", "CPU", "MEMORY", "STORAGE", "IP", "IMAGE", "CREATED",
];

pub fn list_row(view: &VmView) -> Vec<String> {
    let vm = &view.vm;
    let ips = vm.ips();
    vec![
        vm.id.clone(),
        vm.config.name.clone(),
        view.state_label(),
        vm.config.cpu.to_string(),
        BinarySize(vm.config.memory).to_string(),
        BinarySize(vm.config.storage).to_string(),
        if ips.is_empty() {
            "-".into()
        } else {
            ips.join(",")
        },
        vm.config.image.clone(),
        local_time(vm.created_at),
    ]
}
