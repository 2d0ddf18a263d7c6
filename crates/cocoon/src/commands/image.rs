use cocoon_engine::units::DecimalSize;
use cocoon_engine::{Config, Engine, Result};

use super::{io, not_implemented};
use crate::cli::ImageCommand;
use crate::output::{local_time, print_json, print_line, print_table};

pub fn run(command: ImageCommand, config: Config) -> Result<()> {
    let mut engine = Engine::open(config)?;
    match command {
        ImageCommand::Pull { .. } => not_implemented("image pull", "images"),
        ImageCommand::Import { files, .. } => {
            for file in &files {
                if !file.exists() {
                    return Err(cocoon_engine::Error::Invalid(format!(
                        "cannot import {}: no such file",
                        file.display()
                    )));
                }
            }
            not_implemented("image import", "images")
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
