use std::path::Path;

use clap_complete::Shell;
use cocoon_engine::{Error, Result};

use super::io;

pub fn version() -> Result<()> {
    println!("Version: {}", env!("CARGO_PKG_VERSION"));
    println!("Git hash: {}", env!("COCOON_GIT_HASH"));
    println!("Built: {}", env!("COCOON_BUILT_AT"));
    println!("Rust version: {}", env!("COCOON_RUSTC_VERSION"));
    println!(
        "OS/Arch: {}/{}",
        std::env::consts::OS,
        std::env::consts::ARCH
    );
    if cfg!(feature = "failpoints") {
        // Test builds only: the crash-consistency matrix drives these.
        println!("Features: failpoints");
    }
    Ok(())
}

pub fn completion(shell: Shell) -> Result<()> {
    let mut command = crate::cli::full_command();
    clap_complete::generate(shell, &mut command, "cocoon", &mut std::io::stdout());
    Ok(())
}

/// One page per command: cocoon(1), cocoon-vm(1), cocoon-vm-run(1), ...
pub fn man_pages(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    clap_mangen::generate_to(crate::cli::full_command(), dir).map_err(io)?;
    Ok(())
}
