//! One handler per command: call the engine, render the result.

mod console;
mod doctor;
mod exec;
mod image;
mod kernel;
mod other;
mod snapshot;
mod status;
mod vm;
mod vm_lifecycle;
mod vm_run;

use cocoon_engine::{Config, Engine, Error, Result};

use crate::cli::{Command, FormatArg};

/// How a command that ran to its end came out. `doctor` does all its work and
/// can still have to exit 1: that is no error to show, only a summary line.
pub enum Outcome {
    Success,
    Failure(String),
    /// Exit with this status, printing nothing: the guest's (`vm run --rm`,
    /// `vm exec`).
    Exit(u8),
}

pub fn run(command: Command, config: Config) -> Result<Outcome> {
    let done = |result: Result<()>| result.map(|()| Outcome::Success);
    match command {
        Command::Image(cmd) => done(image::run(cmd, config)),
        Command::Vm(cmd) => match *cmd {
            crate::cli::VmCommand::Agent(cmd) => exec::run(cmd, config),
            cmd => vm::run(cmd, config),
        },
        Command::Kernel(cmd) => done(kernel::run(cmd, config)),
        Command::Snapshot(cmd) => done(snapshot::run(cmd, config)),
        Command::Gc { dry_run, output } => done(gc(dry_run, output, config)),
        Command::Doctor { output } => doctor::run(&config, output),
        Command::Version => done(other::version()),
        Command::Completion { shell } => done(other::completion(shell)),
        Command::ManPages { dir } => done(other::man_pages(&dir)),
    }
}

fn gc(dry_run: bool, output: FormatArg, config: Config) -> Result<()> {
    let report = open(config)?.gc(dry_run)?;
    if output.json() {
        return crate::output::print_json(&report).map_err(io);
    }
    for r in &report.recovered {
        eprintln!("recovered {} of {}: {}", r.op, r.object, r.action);
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    for item in &report.removed {
        crate::output::print_line(&format!("{verb} {} {}", item.kind, item.path)).map_err(io)?;
    }
    eprintln!(
        "{verb} {} item(s), {} freed",
        report.removed.len(),
        cocoon_engine::units::BinarySize(report.bytes_freed)
    );
    Ok(())
}

/// Opens the engine (which first converges whatever a dead command left
/// half-done).
pub(crate) fn open(config: Config) -> Result<Engine> {
    Engine::open(config)
}

pub(crate) fn io(e: std::io::Error) -> Error {
    Error::io("cannot write output", e)
}
