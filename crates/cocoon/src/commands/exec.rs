//! `vm exec` and `vm reseed`: the local terminal and signals bridged to a
//! command the guest agent runs.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use cocoon_engine::agent::{ExecInput, ExecRequest, Output, WinSize};
use cocoon_engine::{Config, Error, Result};
use rustix::termios;

use super::console::RawMode;
use super::{Outcome, open};
use crate::cli::agent::{AgentCommand, ExecArgs};

const STDIN_CHUNK: usize = 32 * 1024;

pub fn run(command: AgentCommand, config: Config) -> Result<Outcome> {
    match command {
        AgentCommand::Exec(args) => exec(args, config),
        AgentCommand::Reseed { machine_id, vm } => {
            open(config)?.reseed_vm(&vm, machine_id)?;
            Ok(Outcome::Success)
        }
    }
}

fn exec(args: ExecArgs, config: Config) -> Result<Outcome> {
    let stdin = std::io::stdin();
    // Raw mode only where keys are typed: with -i from a terminal.
    let raw = args.tty && args.interactive && termios::isatty(stdin.as_fd());
    let request = request(&args);
    let session = open(config)?.exec_vm(&args.vm, &request)?;
    let input = session.input();
    if args.interactive {
        let input = input.clone();
        std::thread::spawn(move || pump_stdin(&input));
    } else {
        input
            .close_stdin()
            .map_err(|e| Error::io("cannot reach the guest agent", e))?;
    }
    forward_signals(&input, args.tty, !raw)?;
    let _raw = match raw {
        true => Some(
            RawMode::enter(stdin.as_fd())
                .map_err(|e| Error::io("cannot put the terminal in raw mode", e))?,
        ),
        false => None,
    };
    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    let code = session.wait(|output| match output {
        Output::Stdout(data) => stdout.write_all(data).and_then(|()| stdout.flush()),
        Output::Stderr(data) => stderr.write_all(data).and_then(|()| stderr.flush()),
    })?;
    // An exit status is 0-255; an upstream agent's -1 (signal) exits 255, as Go's would.
    Ok(Outcome::Exit((code & 0xff) as u8))
}

fn request(args: &ExecArgs) -> ExecRequest {
    let mut env: BTreeMap<String, String> = args.env.iter().cloned().collect();
    if args.tty
        && let Some(term) = std::env::var_os("TERM")
    {
        env.entry("TERM".into())
            .or_insert_with(|| term.to_string_lossy().into_owned());
    }
    ExecRequest {
        argv: args.command.clone(),
        env,
        tty: args.tty.then(local_size),
        cwd: args.workdir.clone().unwrap_or_default(),
        user: args.user.clone().unwrap_or_default(),
    }
}

/// The local terminal's size, or the classic 24x80.
fn local_size() -> WinSize {
    let size = termios::tcgetwinsize(std::io::stdout().as_fd())
        .or_else(|_| termios::tcgetwinsize(std::io::stdin().as_fd()));
    match size {
        Ok(s) if s.ws_row > 0 && s.ws_col > 0 => WinSize {
            rows: s.ws_row,
            cols: s.ws_col,
        },
        _ => WinSize { rows: 24, cols: 80 },
    }
}

/// Local stdin to the command, then its end.
fn pump_stdin(input: &ExecInput) {
    let mut stdin = std::io::stdin().lock();
    let mut buf = vec![0u8; STDIN_CHUNK];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if input.stdin(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = input.close_stdin();
}

/// SIGWINCH becomes a resize (with -t); SIGINT and SIGTERM go to the
/// command instead of ending cocoon (in raw mode Ctrl-C is a byte of input
/// and the guest's terminal makes it a signal). The handlers only write
/// the signal number to a pipe; a thread does the rest.
fn forward_signals(input: &ExecInput, tty: bool, interrupts: bool) -> Result<()> {
    let mut signals = Vec::new();
    if tty {
        signals.push(libc::SIGWINCH);
    }
    if interrupts {
        signals.extend([libc::SIGINT, libc::SIGTERM]);
    }
    if signals.is_empty() {
        return Ok(());
    }
    let (reader, writer) =
        rustix::pipe::pipe().map_err(|e| Error::io("cannot forward signals", e.into()))?;
    let writer: Arc<OwnedFd> = Arc::new(writer);
    for signal in signals {
        let writer = Arc::clone(&writer);
        let byte = u8::try_from(signal).expect("signal numbers fit in a byte");
        // SAFETY: the handler only calls write(2) on a pipe, which is
        // async-signal-safe, and allocates nothing.
        unsafe {
            signal_hook_registry::register(signal, move || {
                let _ = rustix::io::write(&*writer, &[byte]);
            })
        }
        .map_err(|e| Error::io("cannot forward signals", e))?;
    }
    let input = input.clone();
    std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        while let Ok(1) = rustix::io::read(&reader, &mut byte) {
            let sent = match i32::from(byte[0]) {
                libc::SIGWINCH => input.resize(local_size()),
                signal => input.signal(signal),
            };
            if sent.is_err() {
                return;
            }
        }
    });
    Ok(())
}
