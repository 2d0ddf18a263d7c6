use cocoon_engine::image::oci::{PullProgress, PulledLayer};
use cocoon_engine::units::DecimalSize;
use cocoon_engine::{Config, Engine, Result};

use super::{io, not_implemented};
use crate::cli::ImageCommand;
use crate::output::{local_time, print_json, print_line, print_table};

pub fn run(command: ImageCommand, config: Config) -> Result<()> {
    let mut engine = Engine::open(config)?;
    match command {
        ImageCommand::Pull { images, force: _ } => {
            // Arguments are pulled in order; the first failure stops the command.
            for reference in &images {
                if reference.starts_with("http://") || reference.starts_with("https://") {
                    return not_implemented("image pull <URL> (cloud images)", "cloud images");
                }
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
            }
            Ok(())
        }
        ImageCommand::Import { name, files } => {
            let image = engine.import_image(&name, &files)?;
            tracing::info!(
                "imported: {} ({}, {} layers)",
                image.name,
                short(&image.id),
                image.layers.len()
            );
            Ok(())
        }
        ImageCommand::List { output } => {
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
        ImageCommand::Rm { images } => {
            for image in engine.remove_images(&images)? {
                tracing::info!("deleted: {}", image.name);
            }
            Ok(())
        }
        ImageCommand::Inspect { image } => print_json(&engine.inspect_image(&image)?).map_err(io),
    }
}

fn short(digest: &str) -> String {
    digest.chars().take(19).collect()
}

/// Pull progress on stderr: a bar when stderr is a terminal, cocoon's log
/// lines otherwise (so logs and CI output stay readable).
struct PullReporter {
    bar: Option<indicatif::ProgressBar>,
}

impl PullReporter {
    fn new() -> PullReporter {
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

    fn finish(&self) {
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
