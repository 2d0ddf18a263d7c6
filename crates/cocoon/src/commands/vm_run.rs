//! `vm run`: create and start; with `--rm` or `-it`, stay with the VM until
//! it stops (on its console with `-it`, following its output otherwise),
//! then exit with the status its main process reported, as `docker run`.

use std::time::{Duration, Instant};

use cocoon_engine::model::VmView;
use cocoon_engine::{Engine, Result};

use super::{Outcome, io};
use crate::cli::{FormatArg, VmFlags};
use crate::output::{print_json, print_line};

/// `--rm`, `-i`, `-t`.
#[derive(Debug, Clone, Copy)]
pub struct Attach {
    pub rm: bool,
    pub interactive: bool,
    pub tty: bool,
}

/// `^]`, the console's default escape.
const ESCAPE: u8 = 0x1d;

pub fn run(
    engine: &mut Engine,
    flags: &VmFlags,
    output: FormatArg,
    image: &str,
    command: Vec<String>,
    attach: Attach,
) -> Result<Outcome> {
    let console = attach.interactive || attach.tty;
    let request = super::vm::create_request(engine, flags, image, command)?;
    let (vm, started) = engine.run_vm(request)?;
    let vm = match started {
        Ok(vm) => vm,
        Err(e) => {
            if attach.rm {
                let _ = engine.remove_vm(&vm.id, true);
            }
            return Err(e);
        }
    };
    if !attach.rm && !console {
        if output.json() {
            print_json(&VmView::reconcile(vm)).map_err(io)?;
        } else {
            eprintln!("started: {} (name: {})", vm.id, vm.config.name);
            print_line(&vm.id).map_err(io)?;
        }
        return Ok(Outcome::Success);
    }
    let id = vm.id.clone();
    if console {
        super::console::attach(engine, &id, ESCAPE)?;
    } else {
        super::vm_reads::logs(engine, &id, true, false, 0)?;
    }
    let view = wait_stopped(engine, &id)?;
    if view.vm.state == cocoon_engine::model::VmState::Running {
        eprintln!(
            "{} keeps running{}; `cocoon vm console {}` to return",
            view.vm.config.name,
            if attach.rm {
                " (so it is not removed)"
            } else {
                ""
            },
            view.vm.config.name
        );
        return Ok(Outcome::Success);
    }
    if attach.rm {
        engine.remove_vm(&id, true)?;
    }
    Ok(match view.exit_code {
        Some(code) => Outcome::Exit(code),
        None => {
            eprintln!(
                "{} stopped without reporting an exit status",
                view.vm.config.name
            );
            Outcome::Success
        }
    })
}

/// The VM once its VMM has exited: the console closes as the guest powers
/// off, a moment before the VMM process ends. A VM still running after
/// that moment was detached from, not stopped.
fn wait_stopped(engine: &mut Engine, id: &str) -> Result<VmView> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let view = engine.inspect_vm(id)?;
        if view.vm.state != cocoon_engine::model::VmState::Running || Instant::now() > deadline {
            return Ok(view);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
