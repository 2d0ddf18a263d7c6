//! `vm disk attach|detach`, `vm net`.

use cocoon_engine::ops::vm_disk::{DiskAttach, DiskChange};
use cocoon_engine::{Config, Engine, Result};

use super::io;
use crate::cli::{DiskCommand, FormatArg};
use crate::output::print_json;

pub fn disk(command: DiskCommand, config: Config) -> Result<()> {
    let mut engine = super::open(config)?;
    match command {
        DiskCommand::Attach {
            path,
            name,
            readonly,
            directio,
            output,
            vm,
        } => {
            let request = DiskAttach {
                path,
                name,
                readonly,
                directio: directio.into(),
            };
            let done = engine.attach_disk(&vm, &request)?;
            report("attached", &done, output)
        }
        DiskCommand::Detach { name, output, vm } => {
            let done = engine.detach_disk(&vm, &name)?;
            report("detached", &done, output)
        }
    }
}

/// `-o json`: upstream's `{"vm", "name"[, "id"]}`; else a line on stderr.
fn report(what: &str, done: &DiskChange, output: FormatArg) -> Result<()> {
    if output.json() {
        return print_json(done).map_err(io);
    }
    match &done.id {
        Some(id) => eprintln!("{what} disk {} (id {id}) to VM {}", done.name, done.vm),
        None => eprintln!("{what} disk {} from VM {}", done.name, done.vm),
    }
    Ok(())
}

/// `vm net --nics N`: upstream's `{"before", "after", "added", "removed",
/// "warnings"}` with `-o json`; else its line on stderr.
pub(super) fn net(engine: &mut Engine, vm: &str, nics: u32, output: FormatArg) -> Result<()> {
    let done = engine.resize_vm_nics(vm, nics)?;
    if output.json() {
        return print_json(&done).map_err(io);
    }
    eprintln!(
        "resized {vm}: before={} after={} added={} removed={}",
        done.before,
        done.after,
        done.added.len(),
        done.removed.len()
    );
    for warning in &done.warnings {
        eprintln!("warning: {vm}: {warning}");
    }
    Ok(())
}
