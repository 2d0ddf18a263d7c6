//! `vm status`: a refreshing table, or a stream of ADDED/MODIFIED/DELETED events.
//!
//! Store changes are noticed through the event log's sequence number (polled
//! cheaply every 200 ms); VMM deaths, which change no record, through a
//! liveness check every `--interval` seconds. A failed read is retried, never
//! taken as "every VM was deleted" (cocoon emitted spurious DELETED events).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use cocoon_engine::model::VmView;
use cocoon_engine::units::BinarySize;
use cocoon_engine::{Engine, Result};
use serde::Serialize;

use super::io;
use super::vm::{LIST_HEADERS, list_row};
use crate::output::table;

const POLL: Duration = Duration::from_millis(200);

/// What a watcher sees of a VM; a change in any of it is a MODIFIED event.
#[derive(Clone, PartialEq)]
struct Seen {
    name: String,
    state: String,
    ips: Vec<String>,
    image: String,
    cpu: u32,
    memory: u64,
}

impl Seen {
    fn of(view: &VmView) -> Seen {
        Seen {
            name: view.vm.config.name.clone(),
            state: view.state_label(),
            ips: view.vm.ips(),
            image: view.vm.config.image.clone(),
            cpu: view.vm.config.cpu,
            memory: view.vm.config.memory,
        }
    }
}

#[derive(Serialize)]
struct EventLine<'a> {
    event: &'a str,
    vm: &'a VmView,
}

fn matches(view: &VmView, filters: &[String]) -> bool {
    filters.is_empty()
        || filters.iter().any(|f| {
            view.vm.id == *f
                || view.vm.config.name == *f
                || (f.len() >= 3
                    && view
                        .vm
                        .id
                        .to_ascii_uppercase()
                        .starts_with(&f.to_ascii_uppercase()))
        })
}

pub fn run(
    engine: &mut Engine,
    interval: i64,
    event: bool,
    json: bool,
    filters: &[String],
) -> Result<()> {
    let interval = Duration::from_secs(if interval <= 0 { 5 } else { interval as u64 });
    let mut out = std::io::stdout().lock();
    let tty = std::io::stdout().is_terminal();
    let mut seen: BTreeMap<String, (Seen, VmView)> = BTreeMap::new();
    let mut first = true;
    let mut last_seq = -1;
    let mut last_check = Instant::now();
    if event && !json {
        writeln!(out, "EVENT\tID\tNAME\tSTATE\tCPU\tMEMORY\tIP\tIMAGE").map_err(io)?;
    }
    loop {
        let seq = match engine.store().last_event_seq() {
            Ok(seq) => seq,
            Err(e) => {
                tracing::warn!("cannot read VM state, retrying: {e}");
                std::thread::sleep(POLL);
                continue;
            }
        };
        if first || seq != last_seq || last_check.elapsed() >= interval {
            let views = match engine.list_vms() {
                Ok(views) => views,
                Err(e) => {
                    tracing::warn!("cannot list VMs, retrying: {e}");
                    std::thread::sleep(POLL);
                    continue;
                }
            };
            last_seq = seq;
            last_check = Instant::now();
            let current: BTreeMap<String, (Seen, VmView)> = views
                .into_iter()
                .filter(|v| matches(v, filters))
                .map(|v| (v.vm.id.clone(), (Seen::of(&v), v)))
                .collect();
            if event {
                let mut emit = |kind: &str, view: &VmView| -> std::io::Result<()> {
                    if json {
                        serde_json::to_writer(
                            &mut out,
                            &EventLine {
                                event: kind,
                                vm: view,
                            },
                        )?;
                        writeln!(out)
                    } else {
                        let ips = view.vm.ips();
                        writeln!(
                            out,
                            "{kind}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
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
                };
                let mut added: Vec<&VmView> = current
                    .iter()
                    .filter(|(id, _)| !seen.contains_key(*id))
                    .map(|(_, (_, v))| v)
                    .collect();
                added.sort_by_key(|v| v.vm.created_at);
                for view in added {
                    emit("ADDED", view).map_err(io)?;
                }
                for (id, (was, _)) in &current {
                    if let Some((before, _)) = seen.get(id)
                        && before != was
                    {
                        emit("MODIFIED", &current[id].1).map_err(io)?;
                    }
                }
                for (id, (_, view)) in &seen {
                    if !current.contains_key(id) {
                        emit("DELETED", view).map_err(io)?;
                    }
                }
                out.flush().map_err(io)?;
            } else if first
                || seen
                    .iter()
                    .map(|(k, (s, _))| (k, s))
                    .ne(current.iter().map(|(k, (s, _))| (k, s)))
            {
                let now = jiff::ZonedDateTime::now();
                if tty {
                    write!(out, "\x1b[H\x1b[2J").map_err(io)?;
                }
                writeln!(
                    out,
                    "Every {} — press Ctrl+C to quit ({})\n",
                    now.strftime("%H:%M:%S"),
                    now.strftime("%Y-%m-%d")
                )
                .map_err(io)?;
                let mut views: Vec<&VmView> = current.values().map(|(_, v)| v).collect();
                views.sort_by_key(|v| v.vm.created_at);
                if views.is_empty() {
                    writeln!(out, "No VMs found.").map_err(io)?;
                } else {
                    out.write_all(
                        table(LIST_HEADERS, views.into_iter().map(list_row).collect()).as_bytes(),
                    )
                    .map_err(io)?;
                }
                out.flush().map_err(io)?;
            }
            seen = current;
            first = false;
        }
        std::thread::sleep(POLL);
    }
}
