//! `kernel install/ls/rm`.

use cocoon_engine::ops::kernel::Source;
use cocoon_engine::units::BinarySize;
use cocoon_engine::{Config, Result};

use super::io;
use crate::cli::KernelCommand;
use crate::output::{print_json, print_line, print_table};

pub fn run(command: KernelCommand, config: Config) -> Result<()> {
    let mut engine = super::open(config)?;
    match command {
        KernelCommand::Install { package, deb } => {
            let source = match &deb {
                Some(file) => Source::Deb(file),
                None => Source::Package(&package),
            };
            eprintln!(
                "installing the kernel of {}",
                deb.as_ref()
                    .map_or(package.clone(), |d| d.display().to_string())
            );
            let installed = engine.install_kernel(source)?;
            eprintln!(
                "installed kernel {} in {}",
                installed.release,
                installed.dir.display()
            );
            print_line(installed.release.as_str()).map_err(io)
        }
        KernelCommand::List { output } => {
            let kernels = engine.list_kernels()?;
            if output.json() {
                return print_json(&kernels).map_err(io);
            }
            if kernels.is_empty() {
                return print_line("No kernels installed (cocoon kernel install).").map_err(io);
            }
            let rows = kernels
                .iter()
                .map(|k| {
                    vec![
                        k.kernel.release.to_string(),
                        BinarySize(k.size).to_string(),
                        if k.default { "*".into() } else { String::new() },
                    ]
                })
                .collect();
            print_table(&["RELEASE", "SIZE", "DEFAULT"], rows).map_err(io)
        }
        KernelCommand::Rm { release } => {
            engine.remove_kernel(&release)?;
            print_line(&format!("removed kernel {release}")).map_err(io)
        }
    }
}
