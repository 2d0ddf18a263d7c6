//! `gc --snapshot` (upstream #53): evicts snapshots, least recently used
//! first. A snapshot survives only if it passes every bound given (keep the
//! N most recently used, used within an age, the survivors within a total
//! size); `--snapshot` alone evicts every snapshot, as upstream. Never
//! evicted: a snapshot a VM record still needs (`Vm::snapshots_needed`: its
//! hibernation or restore source), and one an operation in flight names.
//!
//! Each eviction records an intent, then hides the snapshot (pending, so no
//! clone or restore starts from it), then removes its files, then its
//! record: a crash at any step is finished by the next command.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use crate::context::Ctx;
use crate::error::Result;
use crate::intent::Op;
use crate::model::Snapshot;

/// The bounds of one eviction run; None: that bound is not applied.
#[derive(Debug, Clone, Copy, Default)]
pub struct EvictionPolicy {
    pub keep: Option<u64>,
    pub max_age: Option<Duration>,
    pub max_bytes: Option<u64>,
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvictedSnapshot {
    pub id: String,
    pub name: String,
    pub last_used_at: Timestamp,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvictionReport {
    pub dry_run: bool,
    /// Oldest use first.
    pub evicted: Vec<EvictedSnapshot>,
    /// Snapshots kept because a VM or an operation in flight needs them.
    pub protected: Vec<String>,
    pub bytes_freed: u64,
}

/// A snapshot as eviction sees it.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub id: String,
    pub last_used: Timestamp,
    pub bytes: u64,
}

/// The IDs to evict, oldest use first. Pure: the policy's whole meaning.
pub(crate) fn pick(
    mut candidates: Vec<Candidate>,
    protected: &HashSet<String>,
    policy: &EvictionPolicy,
    now: Timestamp,
) -> Vec<String> {
    // Most recently used first; ties by ID, so the order is total.
    candidates.sort_by(|a, b| b.last_used.cmp(&a.last_used).then(a.id.cmp(&b.id)));
    let bounded = policy.keep.is_some() || policy.max_age.is_some() || policy.max_bytes.is_some();
    let mut evict = Vec::new();
    let mut kept_bytes: u64 = candidates
        .iter()
        .filter(|c| protected.contains(&c.id))
        .map(|c| c.bytes)
        .sum();
    let mut kept = 0u64;
    for c in candidates.iter().filter(|c| !protected.contains(&c.id)) {
        let too_many = policy.keep.is_some_and(|n| kept >= n);
        let too_old = policy.max_age.is_some_and(|age| {
            let age = i64::try_from(age.as_secs()).unwrap_or(i64::MAX);
            now.as_second().saturating_sub(c.last_used.as_second()) > age
        });
        let too_big = policy
            .max_bytes
            .is_some_and(|max| kept_bytes.saturating_add(c.bytes) > max);
        if !bounded || too_many || too_old || too_big {
            evict.push(c.id.clone());
        } else {
            kept += 1;
            kept_bytes += c.bytes;
        }
    }
    evict.reverse();
    evict
}

/// When a snapshot was last used: cloned, restored or exported from (or made).
pub fn last_used(snapshot: &Snapshot) -> Timestamp {
    snapshot
        .last_accessed_at
        .map_or(snapshot.created_at, |t| t.max(snapshot.created_at))
}

pub(crate) fn run(ctx: &mut Ctx, policy: &EvictionPolicy) -> Result<EvictionReport> {
    let snapshots = ctx.store().list_snapshots(None)?;
    let mut protected: HashSet<String> = ctx
        .store()
        .list_vms()?
        .iter()
        .flat_map(|vm| vm.snapshots_needed())
        .collect();
    protected.extend(ctx.store().gc_view()?.busy);
    let candidates = snapshots
        .iter()
        .map(|s| Candidate {
            id: s.id.clone(),
            last_used: last_used(s),
            bytes: super::gc::disk_usage(&s.data_dir),
        })
        .collect::<Vec<_>>();
    let chosen = pick(candidates.clone(), &protected, policy, Timestamp::now());
    let mut report = EvictionReport {
        dry_run: policy.dry_run,
        evicted: Vec::new(),
        protected: snapshots
            .iter()
            .filter(|s| protected.contains(&s.id))
            .map(|s| s.id.clone())
            .collect(),
        bytes_freed: 0,
    };
    for id in chosen {
        let snapshot = snapshots
            .iter()
            .find(|s| s.id == id)
            .expect("picked from these");
        let bytes = candidates
            .iter()
            .find(|c| c.id == id)
            .map_or(0, |c| c.bytes);
        if !policy.dry_run {
            evict(ctx, snapshot)?;
        }
        report.bytes_freed += bytes;
        report.evicted.push(EvictedSnapshot {
            id: snapshot.id.clone(),
            name: snapshot
                .name
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            last_used_at: last_used(snapshot),
            bytes,
        });
    }
    Ok(report)
}

/// Records that a clone, restore or export used `reference` now. Best
/// effort: a failure to note it only makes the snapshot look older to gc.
pub(crate) fn touch(ctx: &mut Ctx, reference: &str) {
    let now = Timestamp::now();
    let result = ctx.store().resolve_snapshot(reference).and_then(|s| {
        ctx.store()
            .update_snapshot(&s.id, "used", |s| s.last_accessed_at = Some(now))
    });
    if let Err(e) = result {
        tracing::debug!("cannot record the use of snapshot {reference}: {e}");
    }
}

/// One eviction, under its intent (see the module's note).
fn evict(ctx: &mut Ctx, snapshot: &Snapshot) -> Result<()> {
    let op = Op::SnapshotEvict {
        data_dir: snapshot.data_dir.clone(),
    };
    let intent = ctx
        .store()
        .begin_intent(op.name(), op.kind(), &snapshot.id, &op.data())?;
    // On an error the intent stays: once this process is gone, the next
    // command finishes the eviction (a half-removed snapshot is never
    // put back into use).
    ctx.store()
        .update_snapshot(&snapshot.id, "evicting", |s| s.pending = true)?;
    crate::failpoint::hit("snapshot.evict.marked")?;
    finish(ctx, &snapshot.id, &snapshot.data_dir)?;
    intent.finish(ctx.store())?;
    Ok(())
}

/// Removes an evicted snapshot's files, then its record: also what recovery
/// does with a dead eviction's intent.
pub(crate) fn finish(ctx: &mut Ctx, id: &str, data_dir: &std::path::Path) -> Result<()> {
    let root: PathBuf = ctx.layout.snapshots();
    super::snapshot_query::remove_owned_dir(&root, data_dir)?;
    crate::failpoint::hit("snapshot.evict.removed")?;
    if ctx.store().get_snapshot(id)?.is_some() {
        ctx.store().delete_snapshot(id)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3600;

    fn now() -> Timestamp {
        Timestamp::from_second(1_000_000_000).unwrap()
    }

    /// Snapshots `a`..: `a` used longest ago; each `hours_ago`, 10 bytes.
    fn snaps(hours_ago: &[i64]) -> Vec<Candidate> {
        hours_ago
            .iter()
            .enumerate()
            .map(|(i, h)| Candidate {
                id: ((b'a' + u8::try_from(i).unwrap()) as char).to_string(),
                last_used: Timestamp::from_second(now().as_second() - h * HOUR).unwrap(),
                bytes: 10,
            })
            .collect()
    }

    fn pick_with(hours_ago: &[i64], protected: &[&str], policy: EvictionPolicy) -> Vec<String> {
        let protected = protected.iter().map(|s| s.to_string()).collect();
        pick(snaps(hours_ago), &protected, &policy, now())
    }

    #[test]
    fn bare_snapshot_evicts_everything_but_the_protected() {
        let policy = EvictionPolicy::default();
        assert_eq!(pick_with(&[3, 2, 1], &["b"], policy), ["a", "c"]);
    }

    #[test]
    fn keep_holds_the_most_recently_used() {
        let policy = EvictionPolicy {
            keep: Some(2),
            ..Default::default()
        };
        // d (0h) and c (1h) stay; a (3h) goes before b (2h).
        assert_eq!(pick_with(&[3, 2, 1, 0], &[], policy), ["a", "b"]);
        // A protected snapshot does not use up a place.
        assert_eq!(pick_with(&[3, 2, 1, 0], &["d"], policy), ["a"]);
    }

    #[test]
    fn age_evicts_what_was_not_used_within_it() {
        let policy = EvictionPolicy {
            max_age: Some(Duration::from_secs(2 * 3600)),
            ..Default::default()
        };
        assert_eq!(pick_with(&[5, 3, 2, 1], &[], policy), ["a", "b"]);
        assert_eq!(pick_with(&[5, 3], &["a"], policy), ["b"]);
    }

    #[test]
    fn size_keeps_the_newest_within_the_total() {
        let policy = EvictionPolicy {
            max_bytes: Some(25),
            ..Default::default()
        };
        assert_eq!(pick_with(&[4, 3, 2, 1], &[], policy), ["a", "b"]);
        // Protected bytes count against the total first.
        assert_eq!(pick_with(&[4, 3, 2, 1], &["a"], policy), ["b", "c"]);
    }

    #[test]
    fn a_snapshot_survives_only_if_it_passes_every_bound() {
        let policy = EvictionPolicy {
            keep: Some(3),
            max_age: Some(Duration::from_secs(10 * 3600)),
            max_bytes: Some(15),
            ..Default::default()
        };
        assert_eq!(pick_with(&[20, 3, 2, 1], &[], policy), ["a", "b", "c"]);
    }
}
