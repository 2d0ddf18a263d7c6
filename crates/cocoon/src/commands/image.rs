use std::cell::{Cell, RefCell};
use std::path::PathBuf;

use cocoon_engine::image::cloud::{CloudProgress, Step};
use cocoon_engine::image::oci::{PullProgress, PulledLayer};
use cocoon_engine::model::ImageType;
use cocoon_engine::ops::image_pull::Source;
use cocoon_engine::units::DecimalSize;
use cocoon_engine::{Config, Engine, Result};

use super::io;
use crate::cli::{FormatArg, ImageCommand};
use crate::output::{local_time, print_json, print_line, print_table};

pub fn run(command: ImageCommand, config: Config) -> Result<()> {
    let mut engine = super::open(config)?;
    let engine = &mut engine;
    match command {
        ImageCommand::Pull { images, force } => {
            // Arguments are pulled in order; the first failure stops the command.
            for reference in &images {
                if Source::of(reference) == Source::Url {
                    pull_cloud_image(engine, reference, force)?;
                    continue;
                }
                pull_oci_image(engine, reference)?;
            }
            Ok(())
        }
        ImageCommand::Import { name, files } => import(engine, &name, &files),
        ImageCommand::List { output } => list(engine, output),
        ImageCommand::Rm { images } => {
            for image in engine.remove_images(&images)? {
                tracing::info!("deleted: {}", image.name);
            }
            Ok(())
        }
        ImageCommand::Inspect { image, .. } => {
            print_json(&engine.inspect_image(&image)?).map_err(io)
        }
    }
}

/// `image pull` of one OCI reference.
fn pull_oci_image(engine: &mut Engine, reference: &str) -> Result<()> {
    let progress = PullReporter::new();
    let outcome = engine.pull_image(reference, &progress);
    progress.finish();
    let outcome = outcome?;
    if outcome.up_to_date {
        tracing::info!(
            "{} is up to date ({})",
            outcome.image.name,
            short(&outcome.image.id)
        );
    } else {
        tracing::info!(
            "done: {} ({}, {} of {} layers fetched)",
            outcome.image.name,
            short(&outcome.image.id),
            outcome.fetched_layers,
            outcome.image.layers.len()
        );
    }
    Ok(())
}

/// `image import`.
fn import(engine: &mut Engine, name: &str, files: &[PathBuf]) -> Result<()> {
    let progress = CloudReporter::new();
    let image = engine.import_image_with_progress(name, files, &progress);
    progress.finish();
    let image = image?;
    match image.kind {
        ImageType::Oci => tracing::info!(
            "imported: {} ({}, {} layers)",
            image.name,
            short(&image.id),
            image.layers.len()
        ),
        ImageType::Cloudimg => tracing::info!(
            "imported: {} ({}, cloud image, {})",
            image.name,
            short(&image.id),
            DecimalSize(image.size)
        ),
    }
    Ok(())
}

/// `image list`.
fn list(engine: &mut Engine, output: FormatArg) -> Result<()> {
    let images = engine.list_images()?;
    if output.json() {
        return print_json(&images).map_err(io);
    }
    if images.is_empty() {
        return print_line("No images found.").map_err(io);
    }
    let rows = images
        .iter()
        .map(|i| {
            vec![
                i.kind.to_string(),
                i.name.clone(),
                i.id.chars().take(19).collect(),
                DecimalSize(i.size).to_string(),
                local_time(i.created_at),
            ]
        })
        .collect();
    print_table(&["TYPE", "NAME", "DIGEST", "SIZE", "CREATED"], rows).map_err(io)
}

fn pull_cloud_image(engine: &mut Engine, url: &str, force: bool) -> Result<()> {
    let progress = CloudReporter::new();
    let outcome = engine.pull_cloud_image(url, force, &progress);
    progress.finish();
    let outcome = outcome?;
    match &outcome.fetched {
        None => tracing::info!("{url} is up to date ({})", short(&outcome.image.id)),
        Some(fetched) => {
            let resumed = match fetched.downloaded.resumed_from {
                0 => String::new(),
                n => format!(", resumed at {}", DecimalSize(n)),
            };
            tracing::info!(
                "done: {url} ({}, {}, {}{resumed})",
                short(&outcome.image.id),
                DecimalSize(outcome.image.size),
                fetched.stored.action
            );
        }
    }
    Ok(())
}

fn short(digest: &str) -> String {
    digest.chars().take(19).collect()
}

/// Pull progress on stderr: a bar when stderr is a terminal, cocoon's log
/// lines otherwise (so logs and CI output stay readable).
pub(super) struct PullReporter {
    bar: Option<indicatif::ProgressBar>,
}

impl PullReporter {
    pub(super) fn new() -> PullReporter {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::hidden();
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {msg} [{bar:30}] {pos}/{len} layers ({elapsed})",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar
        });
        PullReporter { bar }
    }

    pub(super) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl PullProgress for PullReporter {
    fn manifest(&self, reference: &str, layers: usize) {
        match &self.bar {
            Some(bar) => {
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                bar.set_length(layers as u64);
                bar.set_message(format!("pulling {reference}"));
                bar.enable_steady_tick(std::time::Duration::from_millis(120));
            }
            None => tracing::info!("pulling OCI image {reference} ({layers} layers)"),
        }
    }

    fn layer_done(&self, index: usize, total: usize, layer: &PulledLayer) {
        let what = if layer.fetched { "done" } else { "cached" };
        match &self.bar {
            Some(bar) => {
                bar.set_position(index as u64);
                bar.println(format!("  {} {what}", &short(&layer.digest)[7..]));
            }
            None => tracing::info!("[{index}/{total}] {} {what}", &short(&layer.digest)[7..]),
        }
    }
}

/// Cloud image progress on stderr: a byte bar per step when stderr is a
/// terminal, otherwise a log line per step and per tenth done.
pub(super) struct CloudReporter {
    terminal: bool,
    bar: RefCell<Option<indicatif::ProgressBar>>,
    /// Non-terminal mode: the step's name, its total, and the next tenth to log.
    step: RefCell<(&'static str, Option<u64>)>,
    next_tenth: Cell<u64>,
}

impl CloudReporter {
    pub(super) fn new() -> CloudReporter {
        use std::io::IsTerminal;
        CloudReporter {
            terminal: std::io::stderr().is_terminal(),
            bar: RefCell::new(None),
            step: RefCell::new(("", None)),
            next_tenth: Cell::new(1),
        }
    }

    pub(super) fn finish(&self) {
        if let Some(bar) = self.bar.borrow_mut().take() {
            bar.finish_and_clear();
        }
    }

    fn start_bar(&self, message: String, position: u64, total: Option<u64>) {
        self.finish();
        let bar = match total {
            Some(total) => {
                let bar = indicatif::ProgressBar::new(total);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                bar
            }
            None => {
                let bar = indicatif::ProgressBar::new_spinner();
                bar.set_style(
                    indicatif::ProgressStyle::with_template("{spinner} {msg} {bytes} ({elapsed})")
                        .expect("valid template"),
                );
                bar
            }
        };
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        bar.set_message(message);
        bar.set_position(position);
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        *self.bar.borrow_mut() = Some(bar);
    }

    fn log_step(&self, name: &'static str, position: u64, total: Option<u64>) {
        *self.step.borrow_mut() = (name, total);
        self.next_tenth.set(match total {
            Some(t) if t > 0 => position * 10 / t + 1,
            _ => position / UNKNOWN_STEP + 1,
        });
    }
}

/// Without a total, a non-terminal log line per this many bytes.
const UNKNOWN_STEP: u64 = 256 << 20;

fn size_of(total: Option<u64>) -> String {
    total.map_or("size unknown".to_string(), |t| DecimalSize(t).to_string())
}

impl CloudProgress for CloudReporter {
    fn begin(&self, step: Step<'_>) {
        match step {
            Step::Download {
                url,
                resumed_from,
                total,
            } => {
                if self.terminal {
                    self.start_bar("downloading".into(), resumed_from, total);
                    if let Some(bar) = self.bar.borrow().as_ref() {
                        bar.println(format!("downloading {url}"));
                    }
                } else if resumed_from > 0 {
                    tracing::info!(
                        "resuming the download of {url} at {} of {}",
                        DecimalSize(resumed_from),
                        size_of(total)
                    );
                } else {
                    tracing::info!("downloading cloud image {url} ({})", size_of(total));
                }
                self.log_step("downloaded", resumed_from, total);
            }
            Step::Read { source, total } => {
                if self.terminal {
                    self.start_bar(format!("reading {source}"), 0, total);
                } else {
                    tracing::info!("reading {source} ({})", size_of(total));
                }
                self.log_step("read", 0, total);
            }
            Step::Decompress { compression, total } => {
                if self.terminal {
                    self.start_bar(format!("decompressing ({compression})"), 0, total);
                } else {
                    tracing::info!("decompressing ({compression})");
                }
                self.log_step("decompressed", 0, total);
            }
            Step::Convert { action } => {
                if self.terminal {
                    self.finish();
                    let bar = indicatif::ProgressBar::new_spinner();
                    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                    bar.set_message(format!("{action} (qemu-img)"));
                    bar.enable_steady_tick(std::time::Duration::from_millis(120));
                    *self.bar.borrow_mut() = Some(bar);
                } else {
                    tracing::info!("{action} (qemu-img)");
                }
                self.log_step("", 0, None);
            }
        }
    }

    fn advance(&self, done: u64) {
        if let Some(bar) = self.bar.borrow().as_ref() {
            bar.set_position(done);
            return;
        }
        let (name, total) = *self.step.borrow();
        if self.terminal || name.is_empty() {
            return;
        }
        let next = self.next_tenth.get();
        match total {
            Some(total) if total > 0 && done * 10 >= next * total => {
                let tenth = (done * 10 / total).min(10);
                self.next_tenth.set(tenth + 1);
                tracing::info!(
                    "{name} {}% ({} of {})",
                    tenth * 10,
                    DecimalSize(done),
                    DecimalSize(total)
                );
            }
            None if done >= next * UNKNOWN_STEP => {
                self.next_tenth.set(done / UNKNOWN_STEP + 1);
                tracing::info!("{name} {}", DecimalSize(done));
            }
            _ => {}
        }
    }
}
