//! `vm status`: the VMs as they change. Store changes are noticed through
//! the event log's sequence number (polled cheaply every 200 ms); VMM
//! deaths, which change no record, through a liveness check every
//! `interval`. A failed read is retried, never taken as "every VM was
//! deleted" (cocoon emitted spurious DELETED events).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use crate::context::Ctx;
use crate::model::VmView;

const POLL: Duration = Duration::from_millis(200);

/// What happened to a VM between two looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmEvent {
    Added,
    Modified,
    Deleted,
}

impl fmt::Display for VmEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmEvent::Added => "ADDED",
            VmEvent::Modified => "MODIFIED",
            VmEvent::Deleted => "DELETED",
        })
    }
}

#[derive(Debug, Clone)]
pub struct Change {
    pub event: VmEvent,
    pub vm: VmView,
}

/// One look that found something new (or the first look).
#[derive(Debug, Clone)]
pub struct Update {
    /// Added (oldest first), then modified, then deleted.
    pub changes: Vec<Change>,
    /// Every watched VM now, oldest first.
    pub vms: Vec<VmView>,
}

/// What a watcher sees of a VM; a change in any of it is a MODIFIED event.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    name: crate::name::VmName,
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

type Seens = BTreeMap<String, (Seen, VmView)>;

/// Watches the VMs `filters` name (all when empty).
#[derive(Debug)]
pub struct Watcher {
    filters: Vec<String>,
    interval: Duration,
    seen: Seens,
    first: bool,
    last_seq: i64,
    last_check: Instant,
}

impl Watcher {
    pub fn new(filters: Vec<String>, interval: Duration) -> Watcher {
        Watcher {
            filters,
            interval,
            seen: BTreeMap::new(),
            first: true,
            last_seq: -1,
            last_check: Instant::now(),
        }
    }

    /// Waits for the first look, or for the next one that sees a change.
    pub(crate) fn next(&mut self, ctx: &mut Ctx) -> Update {
        let mut wait = !self.first;
        loop {
            if wait {
                std::thread::sleep(POLL);
            }
            wait = true;
            let seq = match ctx.store().last_event_seq() {
                Ok(seq) => seq,
                Err(e) => {
                    tracing::warn!("cannot read VM state, retrying: {e}");
                    continue;
                }
            };
            let due =
                self.first || seq != self.last_seq || self.last_check.elapsed() >= self.interval;
            if !due {
                continue;
            }
            let views = match super::vm_query::list(ctx) {
                Ok(views) => views,
                Err(e) => {
                    tracing::warn!("cannot list VMs, retrying: {e}");
                    continue;
                }
            };
            self.last_seq = seq;
            self.last_check = Instant::now();
            if let Some(update) = self.look(views) {
                return update;
            }
        }
    }

    /// Compares a listing with the last; an update if it is the first or differs.
    fn look(&mut self, views: Vec<VmView>) -> Option<Update> {
        let current: Seens = views
            .into_iter()
            .filter(|v| matches(v, &self.filters))
            .map(|v| (v.vm.id.clone(), (Seen::of(&v), v)))
            .collect();
        let changes = diff(&self.seen, &current);
        let first = std::mem::replace(&mut self.first, false);
        let mut vms: Vec<VmView> = current.values().map(|(_, v)| v.clone()).collect();
        vms.sort_by_key(|v| v.vm.created_at);
        self.seen = current;
        (first || !changes.is_empty()).then_some(Update { changes, vms })
    }
}

fn diff(before: &Seens, now: &Seens) -> Vec<Change> {
    let change = |event, vm: &VmView| Change {
        event,
        vm: vm.clone(),
    };
    let mut added: Vec<&VmView> = now
        .iter()
        .filter(|(id, _)| !before.contains_key(*id))
        .map(|(_, (_, v))| v)
        .collect();
    added.sort_by_key(|v| v.vm.created_at);
    let mut changes: Vec<Change> = added
        .into_iter()
        .map(|v| change(VmEvent::Added, v))
        .collect();
    for (id, (seen, view)) in now {
        if before.get(id).is_some_and(|(was, _)| was != seen) {
            changes.push(change(VmEvent::Modified, view));
        }
    }
    for (id, (_, view)) in before {
        if !now.contains_key(id) {
            changes.push(change(VmEvent::Deleted, view));
        }
    }
    changes
}

/// A filter names a VM by ID, name, or an ID prefix of 3 or more characters.
fn matches(view: &VmView, filters: &[String]) -> bool {
    filters.is_empty()
        || filters.iter().any(|f| {
            view.vm.id == *f
                || view.vm.config.name.as_str() == f.as_str()
                || (f.len() >= 3
                    && view
                        .vm
                        .id
                        .to_ascii_uppercase()
                        .starts_with(&f.to_ascii_uppercase()))
        })
}
