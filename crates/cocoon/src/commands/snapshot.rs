use cocoon_engine::units::BinarySize;
use cocoon_engine::{Config, Engine, Result};

use super::{io, not_implemented};
use crate::cli::SnapshotCommand;
use crate::output::{local_time, print_json, print_line, print_table};

pub fn run(command: SnapshotCommand, config: Config) -> Result<()> {
    let mut engine = Engine::open(config)?;
    match command {
        SnapshotCommand::Save { name, vm, .. } => {
            engine.store().resolve_vm(&vm)?;
            if let Some(name) = name
                && let Ok(existing) = engine.store().resolve_snapshot(&name)
                && existing.name == name
            {
                return Err(cocoon_engine::Error::Invalid(format!(
                    "snapshot name {name:?} is already used by {}; pick another name or remove it first",
                    existing.id
                )));
            }
            not_implemented("snapshot save", "snapshots")
        }
        SnapshotCommand::List { output, vm } => {
            let snapshots = engine.list_snapshots(vm.as_deref())?;
            if output.json() {
                return print_json(&snapshots).map_err(io);
            }
            if snapshots.is_empty() {
                return print_line("No snapshots found.").map_err(io);
            }
            let rows = snapshots
                .iter()
                .map(|s| {
                    vec![
                        s.id.clone(),
                        s.name.clone(),
                        s.cpu.to_string(),
                        BinarySize(s.memory).to_string(),
                        s.description.clone(),
                        local_time(s.created_at),
                    ]
                })
                .collect();
            print_table(
                &["ID", "NAME", "CPU", "MEMORY", "DESCRIPTION", "CREATED"],
                rows,
            )
            .map_err(io)
        }
        SnapshotCommand::Inspect { snapshot } => {
            print_json(&engine.inspect_snapshot(&snapshot)?).map_err(io)
        }
        SnapshotCommand::Rm { snapshots } => {
            for snapshot in engine.remove_snapshots(&snapshots)? {
                tracing::info!("deleted: {}", snapshot.id);
            }
            Ok(())
        }
        SnapshotCommand::Export { snapshot, .. } => {
            engine.store().resolve_snapshot(&snapshot)?;
            not_implemented("snapshot export", "snapshots")
        }
        SnapshotCommand::Import { file, .. } => {
            if let Some(file) = &file
                && !file.exists()
            {
                return Err(cocoon_engine::Error::Invalid(format!(
                    "cannot import {}: no such file",
                    file.display()
                )));
            }
            not_implemented("snapshot import", "snapshots")
        }
    }
}
