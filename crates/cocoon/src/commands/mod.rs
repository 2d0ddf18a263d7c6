//! One handler per command: call the engine, render the result.

mod console;
mod image;
mod other;
mod snapshot;
mod status;
mod vm;

use cocoon_engine::{Config, Engine, Error, Result};

use crate::cli::Command;

pub fn run(command: Command, config: Config) -> Result<()> {
    match command {
        Command::Image(cmd) => image::run(cmd, config),
        Command::Vm(cmd) => vm::run(cmd, config),
        Command::Snapshot(cmd) => snapshot::run(cmd, config),
        Command::Gc { dry_run, output } => {
            let report = open(config)?.gc(dry_run)?;
            if output.json() {
                return crate::output::print_json(&report).map_err(io);
            }
            for r in &report.recovered {
                eprintln!("recovered {} of {}: {}", r.op, r.object, r.action);
            }
            let verb = if dry_run { "would remove" } else { "removed" };
            for item in &report.removed {
                crate::output::print_line(&format!("{verb} {} {}", item.kind, item.path))
                    .map_err(io)?;
            }
            eprintln!(
                "{verb} {} item(s), {} freed",
                report.removed.len(),
                cocoon_engine::units::BinarySize(report.bytes_freed)
            );
            Ok(())
        }
        Command::Version => other::version(),
        Command::Completion { shell } => other::completion(shell),
        Command::ManPages { dir } => other::man_pages(&dir),
    }
}

/// Opens the engine and first converges whatever a dead command left
/// half-done (a failure there is logged, never blocks this command).
pub(crate) fn open(config: Config) -> Result<Engine> {
    let mut engine = Engine::open(config)?;
    if let Err(e) = engine.reconcile() {
        tracing::warn!("crash recovery: {e}");
    }
    Ok(engine)
}

pub(crate) fn io(e: std::io::Error) -> Error {
    Error::io("cannot write output", e)
}
