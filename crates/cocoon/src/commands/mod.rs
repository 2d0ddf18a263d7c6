//! One handler per command: call the engine, render the result.

mod console;
mod doctor;
mod exec;
mod hotplug;
mod image;
mod kernel;
mod other;
mod snapshot;
mod snapshot_registry;
mod status;
mod vm;
mod vm_lifecycle;
mod vm_reads;
mod vm_run;

use cocoon_engine::{Config, Engine, Error, Result};

use cocoon_engine::ops::snapshot_gc::EvictionPolicy;

use crate::cli::{Command, FormatArg, Lazy, SnapshotGcArgs};

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
        Command::Image(Lazy(cmd)) => done(image::run(cmd, config)),
        Command::Vm(Lazy(cmd)) => match *cmd {
            crate::cli::VmCommand::Agent(cmd) => exec::run(cmd, config),
            crate::cli::VmCommand::Disk(cmd) => done(hotplug::disk(cmd, config)),
            crate::cli::VmCommand::Fs(cmd) => done(hotplug::fs(cmd, config)),
            crate::cli::VmCommand::Device(cmd) => done(hotplug::device(cmd, config)),
            cmd => vm::run(cmd, config),
        },
        Command::Kernel(Lazy(cmd)) => done(kernel::run(cmd, config)),
        Command::Snapshot(Lazy(cmd)) => done(snapshot::run(cmd, config)),
        Command::Gc {
            dry_run,
            snapshots,
            output,
        } => done(gc(dry_run, &snapshots, output, config)),
        Command::Doctor { output } => doctor::run(&config, output),
        Command::Version => done(other::version()),
        Command::Completion { shell } => done(other::completion(shell)),
        Command::ManPages { dir } => done(other::man_pages(&dir)),
    }
}

fn gc(dry_run: bool, snapshots: &SnapshotGcArgs, output: FormatArg, config: Config) -> Result<()> {
    let mut engine = open(config)?;
    // Snapshots first: the blobs only they pinned go in the same run.
    let evicted = if snapshots.enabled {
        let policy = EvictionPolicy {
            keep: snapshots.keep,
            max_age: snapshots.age,
            max_bytes: snapshots.size,
            dry_run: snapshots.dry_run,
        };
        Some(engine.evict_snapshots(&policy)?)
    } else {
        None
    };
    let report = engine.gc(dry_run)?;
    if output.json() {
        let mut doc = serde_json::to_value(&report).map_err(|e| io(e.into()))?;
        if let Some(evicted) = &evicted {
            doc["snapshots"] = serde_json::to_value(evicted).map_err(|e| io(e.into()))?;
        }
        return crate::output::print_json(&doc).map_err(io);
    }
    if let Some(evicted) = &evicted {
        let verb = if evicted.dry_run {
            "would evict"
        } else {
            "evicted"
        };
        for s in &evicted.evicted {
            let name = if s.name.is_empty() { "-" } else { &s.name };
            crate::output::print_line(&format!("{verb} snapshot {} ({name})", s.id)).map_err(io)?;
        }
        eprintln!(
            "{verb} {} snapshot(s), {}; kept {} a VM or an operation needs",
            evicted.evicted.len(),
            cocoon_engine::units::BinarySize(evicted.bytes_freed),
            evicted.protected.len()
        );
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
