//! The `cocoon` binary: parses the command line, loads configuration, calls the
//! engine and renders its answers. No engine logic lives here.

pub mod cli;
mod commands;
mod output;

use std::process::ExitCode;

use clap::Parser;
use cocoon_engine::config::{Config, DEFAULT_CONFIG_PATH, LoadOptions};

use crate::cli::Cli;

/// Exit codes, documented in the README and `cocoon --help`.
pub const EXIT_OK: u8 = 0;
pub const EXIT_ERROR: u8 = 1;
pub const EXIT_USAGE: u8 = 2;

pub fn main() -> ExitCode {
    // The console relay a VM start spawns: not a user command, no config.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .is_some_and(|a| a == cocoon_engine::ops::vm_launch::RELAY_SUBCOMMAND)
    {
        return relay(&args[2..]);
    }
    // The sealer a snapshot save starts (cocoon_engine::snapshot::seal).
    if args
        .get(1)
        .is_some_and(|a| a == cocoon_engine::snapshot::seal::SEAL_SUBCOMMAND)
    {
        return seal(&args[2..]);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors to stderr (exit 2).
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { EXIT_OK });
        }
    };
    let env = LoadOptions::process_env();
    let config = Config::load(LoadOptions {
        config_path: cli.global.config.clone(),
        env: &env,
        flags: cli.global.config_flags(),
        default_path: DEFAULT_CONFIG_PATH.into(),
    });
    let config = match config {
        Ok(config) => config,
        Err(e) => {
            let e = cocoon_engine::Error::from(e);
            eprintln!("Error: {e}");
            return ExitCode::from(if e.is_usage() { EXIT_USAGE } else { EXIT_ERROR });
        }
    };
    init_logging(&config.log.level);
    for key in cocoon_engine::config::KEYS {
        tracing::debug!(
            "config {} = {} (from {})",
            key.name,
            config.get(key.name).unwrap_or_default(),
            config.source_of(key.name)
        );
    }
    match commands::run(cli.command, config) {
        Ok(commands::Outcome::Success) => ExitCode::from(EXIT_OK),
        Ok(commands::Outcome::Exit(code)) => ExitCode::from(code),
        Ok(commands::Outcome::Failure(summary)) => {
            eprintln!("Error: {summary}");
            ExitCode::from(EXIT_ERROR)
        }
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::from(if e.is_usage() { EXIT_USAGE } else { EXIT_ERROR })
        }
    }
}

fn relay(args: &[std::ffi::OsString]) -> ExitCode {
    let spec = match cocoon_engine::console::relay_spec_from_args(args) {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("console relay: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match cocoon_engine::console::run_relay(spec) {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(e) => {
            eprintln!("console relay: {e}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn seal(args: &[std::ffi::OsString]) -> ExitCode {
    let [dir] = args else {
        eprintln!("snapshot sealer: expected one snapshot directory");
        return ExitCode::from(EXIT_USAGE);
    };
    match cocoon_engine::snapshot::seal::run_sealer(std::path::Path::new(dir)) {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(e) => {
            eprintln!("snapshot sealer: {e}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Logs go to stderr so stdout carries data only. `RUST_LOG` refines the level.
fn init_logging(level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("warn,cocoon={level},cocoon_engine={level}")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .try_init();
}
