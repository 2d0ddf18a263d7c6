//! `snapshot push` / `snapshot pull`: snapshots through OCI registries.

use cocoon_engine::name::SnapshotName;
use cocoon_engine::ops::snapshot_pull::Naming;
use cocoon_engine::ops::snapshot_push::TransferProgress;
use cocoon_engine::units::BinarySize;
use cocoon_engine::{Engine, Result};

use super::io;
use crate::cli::{FormatArg, LayoutArg};
use crate::output::{print_json, print_line};

/// A byte bar on stderr when it is a terminal, nothing otherwise.
struct Bar(Option<indicatif::ProgressBar>);

impl Bar {
    fn new(verb: &'static str) -> Bar {
        use std::io::IsTerminal;
        Bar(std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::hidden();
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
                )
                .expect("template")
                .progress_chars("=> "),
            );
            bar.set_message(verb);
            bar
        }))
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

impl TransferProgress for Bar {
    fn begin(&self, reference: &str, total: u64) {
        if let Some(bar) = &self.0 {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.set_length(total);
            bar.set_message(format!("{} {reference}", bar.message()));
        }
    }

    fn advance(&self, bytes: u64) {
        if let Some(bar) = &self.0 {
            bar.inc(bytes);
        }
    }
}

pub fn push(
    engine: &mut Engine,
    snapshot: &str,
    reference: &str,
    layout: LayoutArg,
    output: FormatArg,
) -> Result<()> {
    let bar = Bar::new("pushing");
    let result = engine.push_snapshot(snapshot, reference, layout.engine(), &bar);
    bar.finish();
    let pushed = result?;
    if output.json() {
        return print_json(&serde_json::json!({
            "snapshot": pushed.snapshot.id,
            "reference": pushed.reference,
            "digest": pushed.digest,
            "layout": pushed.layout.as_str(),
            "blocks": pushed.blocks,
            "bytes": pushed.bytes,
            "sent_blocks": pushed.sent_blocks,
            "sent_bytes": pushed.sent_bytes,
        }))
        .map_err(io);
    }
    eprintln!(
        "pushed: {} → {}@{} (sent {} of {} {}, {} of {})",
        pushed.snapshot.id,
        pushed.reference,
        pushed.digest,
        pushed.sent_blocks,
        pushed.blocks,
        match pushed.layout {
            cocoon_engine::ops::snapshot_push::Layout::Chunked => "blocks",
            cocoon_engine::ops::snapshot_push::Layout::Whole => "files",
        },
        BinarySize(pushed.sent_bytes),
        BinarySize(pushed.bytes),
    );
    print_line(pushed.digest.as_str()).map_err(io)
}

pub fn pull(
    engine: &mut Engine,
    reference: &str,
    name: Option<&SnapshotName>,
    output: FormatArg,
) -> Result<()> {
    let bar = Bar::new("pulling");
    let result = engine.pull_snapshot(reference, Naming::Named(name), &bar);
    bar.finish();
    let pulled = result?;
    if output.json() {
        return print_json(&serde_json::json!({
            "snapshot": pulled.snapshot.id,
            "name": pulled.snapshot.name,
            "reference": pulled.reference,
            "digest": pulled.digest,
            "blocks": pulled.blocks,
            "bytes": pulled.bytes,
            "fetched_blocks": pulled.fetched_blocks,
            "fetched_bytes": pulled.fetched_bytes,
        }))
        .map_err(io);
    }
    eprintln!(
        "pulled: {}@{} → {} (name: {}; fetched {} of {} blocks, {} of {})",
        pulled.reference,
        pulled.digest,
        pulled.snapshot.id,
        pulled.snapshot.name.as_deref().unwrap_or_default(),
        pulled.fetched_blocks,
        pulled.blocks,
        BinarySize(pulled.fetched_bytes),
        BinarySize(pulled.bytes),
    );
    print_line(&pulled.snapshot.id).map_err(io)
}

/// Whether a `vm clone --pull` / `vm restore --pull` snapshot argument is a
/// registry reference: snapshot names and ids never hold a `/`.
pub fn is_reference(arg: &str) -> bool {
    arg.contains('/')
}

/// Pulls `reference` as an unnamed snapshot, hands it to `use_it`, then
/// removes it (as `--from-dir` drops its import): the VM made from it keeps
/// its own copies.
pub fn with_pulled<T>(
    engine: &mut Engine,
    reference: &str,
    use_it: impl FnOnce(&mut Engine, &cocoon_engine::ops::snapshot_pull::Pulled) -> Result<T>,
) -> Result<T> {
    let bar = Bar::new("pulling");
    let pulled = engine.pull_snapshot(reference, Naming::Anonymous, &bar);
    bar.finish();
    let pulled = pulled?;
    let result = use_it(engine, &pulled);
    let id = pulled.snapshot.id.clone();
    if let Err(e) = engine.remove_snapshots(std::slice::from_ref(&id)) {
        tracing::warn!(
            "the snapshot pulled from {reference} ({id}) is kept: {e}; remove it with `cocoon snapshot rm {id}`"
        );
    }
    result
}
