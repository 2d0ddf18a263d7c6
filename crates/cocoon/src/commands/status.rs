//! `vm status`: one table (or JSON list), a refreshing table, or a stream of ADDED/MODIFIED/DELETED
//! events. The engine's watcher says what changed; this renders it.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use cocoon_engine::model::VmView;
use cocoon_engine::ops::watch::{Change, Watcher};
use cocoon_engine::units::BinarySize;
use cocoon_engine::{Engine, Result};
use serde::Serialize;

use super::io;
use super::vm::{LIST_HEADERS, list_row};
use crate::output::table;

#[derive(Serialize)]
struct EventLine<'a> {
    event: String,
    vm: &'a VmView,
}

/// How `vm status` runs (upstream #50, #247).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The default: one look, printed once, then exit.
    Once,
    /// `--watch`/`-w`: redraw the table every interval.
    Watch,
    /// `--event`: stream what changes.
    Event,
}

impl Mode {
    /// From `--watch` and `--event` (clap refuses both together).
    pub fn of(watch: bool, event: bool) -> Mode {
        match (watch, event) {
            (_, true) => Mode::Event,
            (true, false) => Mode::Watch,
            (false, false) => Mode::Once,
        }
    }
}

pub fn run(
    engine: &mut Engine,
    interval: i64,
    mode: Mode,
    json: bool,
    filters: &[String],
) -> Result<()> {
    let interval =
        Duration::from_secs(u64::try_from(interval).ok().filter(|s| *s > 0).unwrap_or(5));
    let mut watcher = Watcher::new(filters.to_vec(), interval);
    let mut out = std::io::stdout().lock();
    if mode == Mode::Once {
        let update = engine.watch(&mut watcher);
        if json {
            return crate::output::print_json(&update.vms).map_err(io);
        }
        if update.vms.is_empty() {
            return writeln!(out, "No VMs found.").map_err(io);
        }
        return out
            .write_all(table(LIST_HEADERS, update.vms.iter().map(list_row).collect()).as_bytes())
            .map_err(io);
    }
    let event = mode == Mode::Event;
    let tty = std::io::stdout().is_terminal();
    if event && !json {
        writeln!(out, "EVENT\tID\tNAME\tSTATE\tCPU\tMEMORY\tIP\tIMAGE").map_err(io)?;
    }
    loop {
        let update = engine.watch(&mut watcher);
        if event {
            for change in &update.changes {
                emit(&mut out, change, json).map_err(io)?;
            }
        } else {
            redraw(&mut out, &update.vms, tty).map_err(io)?;
        }
        out.flush().map_err(io)?;
    }
}

fn emit(out: &mut impl Write, change: &Change, json: bool) -> std::io::Result<()> {
    let view = &change.vm;
    if json {
        let line = EventLine {
            event: change.event.to_string(),
            vm: view,
        };
        serde_json::to_writer(&mut *out, &line)?;
        return writeln!(out);
    }
    let ips = view.vm.ips();
    writeln!(
        out,
        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
        change.event,
        view.vm.id,
        view.vm.config.name,
        view.state_label(),
        view.vm.config.cpu,
        BinarySize(view.vm.config.memory),
        if ips.is_empty() {
            "-".into()
        } else {
            ips.join(",")
        },
        view.vm.config.image
    )
}

fn redraw(out: &mut impl Write, vms: &[VmView], tty: bool) -> std::io::Result<()> {
    let now = jiff::ZonedDateTime::now();
    if tty {
        write!(out, "\x1b[H\x1b[2J")?;
    }
    writeln!(
        out,
        "Every {} — press Ctrl+C to quit ({})\n",
        now.strftime("%H:%M:%S"),
        now.strftime("%Y-%m-%d")
    )?;
    if vms.is_empty() {
        return writeln!(out, "No VMs found.");
    }
    out.write_all(table(LIST_HEADERS, vms.iter().map(list_row).collect()).as_bytes())
}
