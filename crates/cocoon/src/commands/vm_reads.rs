//! The VM commands whose upstream semantics vk-cocoon reads: `vm logs`
//! (`--tail`), `vm status` (one-shot, `--watch`, `--event`) and
//! `vm reconcile-stale-create`.

use std::path::Path;

use cocoon_engine::{Engine, Error, Result};

use super::io;
use crate::cli::{FormatArg, VmCommand};
use crate::output::{print_json, print_line};

pub(super) fn run(engine: &mut Engine, command: VmCommand) -> Result<()> {
    match command {
        VmCommand::Logs {
            follow,
            vmm,
            tail,
            vm,
        } => logs(engine, &vm, follow, vmm, tail),
        VmCommand::Status {
            interval,
            watch,
            event,
            output,
            vms,
        } => {
            let mode = super::status::Mode::of(watch, event);
            super::status::run(engine, interval, mode, output.json(), &vms)
        }
        VmCommand::ReconcileStaleCreate { output, vm } => {
            reconcile_stale_create(engine, &vm, output)
        }
        _ => unreachable!("vm::run hands only vm logs, status and reconcile-stale-create here"),
    }
}

/// `vm reconcile-stale-create` (upstream #173): `{"id", "outcome"}`.
fn reconcile_stale_create(engine: &mut Engine, reference: &str, output: FormatArg) -> Result<()> {
    let outcome = engine.reconcile_stale_create(reference)?;
    if output.json() {
        return print_json(&outcome).map_err(io);
    }
    print_line(&format!("{}: {}", outcome.id, outcome.outcome)).map_err(io)
}

pub(crate) fn logs(
    engine: &mut Engine,
    reference: &str,
    follow: bool,
    vmm: bool,
    tail: usize,
) -> Result<()> {
    let (vm, log) = if vmm {
        engine.vmm_log(reference)?
    } else {
        engine.console_log(reference)?
    };
    let mut out = std::io::stdout().lock();
    if follow {
        let mut out = TailFirst::new(&mut out, tail);
        let running = cocoon_engine::ops::vm_query::is_running;
        let initially = running(&vm);
        // Follows until the VM stops (or forever for a stopped VM: like tail -f).
        let stop = || initially && !running(&vm);
        return cocoon_engine::console::follow_log(&log, &mut out, &stop)
            .map_err(|e| Error::io(format!("cannot read {}", log.display()), e));
    }
    let bytes = read_whole_log(&log, vmm)?;
    let shown = if tail > 0 {
        last_lines(&bytes, tail)
    } else {
        &bytes
    };
    use std::io::Write;
    out.write_all(shown).and_then(|()| out.flush()).map_err(io)
}

/// `--tail N` with `-f`: what the follower prints before its first flush
/// (the log as it was) is cut to its last N lines; then everything passes.
struct TailFirst<'a, W: std::io::Write> {
    inner: &'a mut W,
    tail: usize,
    first: Option<Vec<u8>>,
}

impl<'a, W: std::io::Write> TailFirst<'a, W> {
    fn new(inner: &'a mut W, tail: usize) -> Self {
        let first = (tail > 0).then(Vec::new);
        TailFirst { inner, tail, first }
    }
}

impl<W: std::io::Write> std::io::Write for TailFirst<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.first.as_mut() {
            Some(first) => {
                first.extend_from_slice(buf);
                Ok(buf.len())
            }
            None => self.inner.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if let Some(first) = self.first.take() {
            self.inner.write_all(last_lines(&first, self.tail))?;
        }
        self.inner.flush()
    }
}

/// A VM's log as it is now; no log yet (never started, or no output so
/// far) is empty output.
fn read_whole_log(log: &Path, vmm: bool) -> Result<Vec<u8>> {
    let read = if vmm {
        std::fs::read(log)
    } else {
        cocoon_engine::console::read_log(log)
    };
    match read {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        other => other.map_err(|e| Error::io(format!("cannot read {}", log.display()), e)),
    }
}

/// The last `n` lines of `bytes` (`--tail`, as `tail -n`): a last line
/// without its newline counts as a line.
pub(crate) fn last_lines(bytes: &[u8], n: usize) -> &[u8] {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let start = body
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, b)| **b == b'\n')
        .nth(n - 1)
        .map_or(0, |(i, _)| i + 1);
    &bytes[start..]
}

#[cfg(test)]
mod tests {
    use super::last_lines;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(last_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(last_lines(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(last_lines(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(last_lines(b"", 3), b"");
        assert_eq!(last_lines(b"\n\n\n", 1), b"\n");
    }
}
