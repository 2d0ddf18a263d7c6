use cocoon_engine::units::BinarySize;
use cocoon_engine::{Config, Engine, Result};

use std::path::{Path, PathBuf};

use cocoon_engine::Error;
use cocoon_engine::model::Snapshot;
use cocoon_engine::name::SnapshotName;
use cocoon_engine::snapshot::archive::Compression;

use super::io;
use crate::cli::{CompressionArg, FormatArg, SnapshotCommand};
use crate::output::{local_time, print_json, print_line, print_table};

pub fn run(command: SnapshotCommand, config: Config) -> Result<()> {
    let mut engine = super::open(config)?;
    let engine = &mut engine;
    match command {
        SnapshotCommand::Save {
            name,
            description,
            output,
            vm,
        } => save(engine, &vm, name, &description, output),
        SnapshotCommand::List { output, vm } => list(engine, output, vm.as_deref()),
        SnapshotCommand::Inspect { snapshot, .. } => inspect(engine, &snapshot),
        SnapshotCommand::Rm { snapshots } => {
            for snapshot in engine.remove_snapshots(&snapshots)? {
                tracing::info!("deleted: {}", snapshot.id);
            }
            Ok(())
        }
        SnapshotCommand::Export {
            to_dir: Some(dir),
            snapshot,
            ..
        } => {
            let s = engine.export_snapshot_to_dir(&snapshot, &dir)?;
            eprintln!("exported: {} → {}", s.id, dir.display());
            Ok(())
        }
        SnapshotCommand::Export {
            output,
            gzip,
            compression,
            to_dir: None,
            snapshot,
        } => export(engine, &snapshot, output, gzip, compression),
        SnapshotCommand::Import {
            name,
            description,
            file,
        } => import(engine, name.as_ref(), &description, file.as_deref()),
        SnapshotCommand::Push {
            output,
            layout,
            snapshot,
            reference,
        } => super::snapshot_registry::push(engine, &snapshot, &reference, layout, output),
        SnapshotCommand::Pull {
            name,
            output,
            reference,
        } => super::snapshot_registry::pull(engine, &reference, name.as_ref(), output),
    }
}

/// `snapshot save`.
fn save(
    engine: &mut Engine,
    vm: &str,
    name: Option<SnapshotName>,
    description: &str,
    output: FormatArg,
) -> Result<()> {
    let saved = engine.save_snapshot(vm, name, description)?;
    if output.json() {
        return print_json(&saved).map_err(io);
    }
    eprintln!(
        "snapshot saved: {} (paused {:.1} ms, {:.0} ms in all)",
        saved.snapshot.id, saved.pause_ms, saved.total_ms
    );
    print_line(&saved.snapshot.id).map_err(io)
}

/// `snapshot list`.
fn list(engine: &mut Engine, output: FormatArg, vm: Option<&str>) -> Result<()> {
    let snapshots = engine.list_snapshots(vm)?;
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
                s.name.as_deref().unwrap_or_default().to_string(),
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

/// `snapshot export`: to `output`, to stdout for `-`, or to a file named after
/// the snapshot.
fn export(
    engine: &mut Engine,
    snapshot: &str,
    output: Option<PathBuf>,
    gzip: bool,
    compression: CompressionArg,
) -> Result<()> {
    let compression = match (gzip, compression) {
        (true, _) | (_, CompressionArg::Gzip) => Compression::Gzip,
        (_, CompressionArg::Zstd) => Compression::Zstd,
        (_, CompressionArg::None) => Compression::None,
    };
    let target = match output {
        Some(path) => path,
        None => default_export_path(engine, snapshot, compression)?,
    };
    let progress = Progress::new("exporting");
    let mut tick = |n: u64| progress.set(n);
    let written = if target == Path::new("-") {
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
        let r = engine.export_snapshot(snapshot, &mut out, compression, &mut tick);
        use std::io::Write;
        r.and_then(|s| out.flush().map(|()| s).map_err(io))
    } else {
        let partial = create_partial(&target)?;
        export_to_partial(engine, snapshot, partial, &target, compression, &mut tick)
    };
    progress.finish();
    let s = written?;
    eprintln!("exported: {} → {}", s.id, target.display());
    Ok(())
}

/// The file `snapshot export` writes when given no output: the snapshot's
/// name (or id) with the archive's extension, in the working directory.
/// Either is a validated name, so the file name is always a plain one.
fn default_export_path(
    engine: &mut Engine,
    snapshot: &str,
    compression: Compression,
) -> Result<PathBuf> {
    let s = engine.inspect_snapshot(snapshot)?;
    let base: SnapshotName = match s.name {
        Some(name) => name,
        // An ID is a valid name; one that is not was not made here.
        None => s.id.parse().map_err(|_| {
            Error::Invalid(format!(
                "snapshot {:?} has no name and its ID is no plain file name; pass -o",
                s.id
            ))
        })?,
    };
    let ext = match compression {
        Compression::Zstd => "tar.zst",
        Compression::Gzip => "tar.gz",
        Compression::None => "tar",
    };
    Ok(PathBuf::from(format!("{base}.{ext}")))
}

/// `snapshot export` writes to a new private file beside the target (O_EXCL,
/// mode 0600: it holds guest memory; never through a link someone planted),
/// then renames it: a failed export leaves nothing, a reader never sees half
/// an archive.
fn create_partial(target: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    tempfile::Builder::new()
        .prefix(".cocoon-export-")
        .suffix(".partial")
        .tempfile_in(dir)
        .map_err(|e| Error::io(format!("cannot create a file in {}", dir.display()), e))
}

/// Exports into `partial`, then renames it to `target`.
fn export_to_partial(
    engine: &mut Engine,
    snapshot: &str,
    partial: tempfile::NamedTempFile,
    target: &Path,
    compression: Compression,
    tick: &mut dyn FnMut(u64),
) -> Result<Snapshot> {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, partial);
    engine
        .export_snapshot(snapshot, &mut out, compression, tick)
        .and_then(|s| {
            let partial = out.into_inner().map_err(|e| io(e.into_error()))?;
            partial
                .persist(target)
                .map_err(|e| Error::io(format!("cannot write {}", target.display()), e.error))?;
            Ok(s)
        })
}

/// `snapshot import`: from `file`, or from stdin for none or `-`.
fn import(
    engine: &mut Engine,
    name: Option<&SnapshotName>,
    description: &str,
    file: Option<&Path>,
) -> Result<()> {
    let progress = Progress::new("importing");
    let mut tick = |n: u64| progress.set(n);
    let description = (!description.is_empty()).then_some(description);
    let result = match file {
        None => engine.import_snapshot(&mut std::io::stdin().lock(), name, description, &mut tick),
        Some(p) if p == Path::new("-") => {
            engine.import_snapshot(&mut std::io::stdin().lock(), name, description, &mut tick)
        }
        Some(path) => {
            let mut f = std::fs::File::open(path)
                .map_err(|e| Error::io(format!("cannot import {}", path.display()), e))?;
            engine.import_snapshot(&mut f, name, description, &mut tick)
        }
    };
    progress.finish();
    let snapshot = result?;
    let name = snapshot.name.as_deref().unwrap_or_default();
    eprintln!("imported: {} (name: {name})", snapshot.id);
    print_line(&snapshot.id).map_err(io)
}

/// Bytes moved, on stderr: a live counter on a terminal, nothing otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(what: &str) -> Progress {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {msg} {bytes} ({bytes_per_sec})",
                )
                .expect("template"),
            );
            bar.set_message(what.to_string());
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        });
        Progress { bar }
    }

    fn set(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(bytes);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The record, and whether its checksums are in yet (`"sealed"`, not
/// upstream's: its saves hash on their own path).
fn inspect(engine: &mut Engine, reference: &str) -> Result<()> {
    let snapshot = engine.inspect_snapshot(reference)?;
    let mut doc = serde_json::to_value(&snapshot).map_err(|e| io(std::io::Error::other(e)))?;
    if let (Some(fields), Some(sealed)) = (doc.as_object_mut(), engine.snapshot_sealed(&snapshot)) {
        fields.insert("sealed".into(), sealed.into());
    }
    print_json(&doc).map_err(io)
}
