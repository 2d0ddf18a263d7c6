//! `vm console`: the local terminal in raw mode, bridged to the VM's console relay.

use std::os::fd::AsFd;

use cocoon_engine::console::{self, Detached};
use cocoon_engine::spec::format_escape_char;
use cocoon_engine::{Engine, Error, Result};
use rustix::termios::{self, OptionalActions, Termios};

/// Restores the terminal's settings however the session ends.
pub(super) struct RawMode {
    saved: Termios,
}

impl RawMode {
    pub(super) fn enter(tty: std::os::fd::BorrowedFd<'_>) -> std::io::Result<RawMode> {
        let saved = termios::tcgetattr(tty)?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(tty, OptionalActions::Flush, &raw)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(
            std::io::stdin().as_fd(),
            OptionalActions::Flush,
            &self.saved,
        );
    }
}

pub fn attach(engine: &mut Engine, reference: &str, escape: u8) -> Result<()> {
    let stdin = std::io::stdin();
    if !termios::isatty(stdin.as_fd()) {
        return Err(Error::Invalid("stdin is not a terminal; `vm console` needs one (use `cocoon vm logs` to read the output)".into()));
    }
    let socket = engine.console_socket(reference)?;
    let escape_text = format_escape_char(escape);
    eprint!("Connected to {reference} (escape sequence: {escape_text}.)\r\n");
    let result = {
        let _raw = RawMode::enter(stdin.as_fd())
            .map_err(|e| Error::io("cannot put the terminal in raw mode", e))?;
        let stdout = std::io::stdout();
        console::attach(
            &socket,
            escape,
            stdin.as_fd(),
            stdout.as_fd(),
            Some(stdin.as_fd()),
        )
    };
    match result {
        Ok(Detached::Escape) => eprintln!("\nDisconnected from {reference}."),
        Ok(Detached::RemoteClosed) => {
            eprintln!("\nConnection to {reference} closed (the VM stopped).")
        }
        Err(e) => return Err(Error::Invalid(format!("console of {reference}: {e}"))),
    }
    Ok(())
}
