//! PID 1: boots the container image (see docs/reference/guest-contract.md).
//!
//! Mounts the image's layers and the VM's COW disk as the root, configures
//! the network and the VM's identity, switches into the root and runs the
//! run config's command as the main process (or execs the image's
//! `/sbin/init`), then reaps, forwards signals, and ends the VM when the
//! main process exits, printing its status for the engine. Every failure is
//! a `cocoon-init: ...` line on the console, an exit status and a power-off:
//! PID 1 never exits (the kernel would panic) and never waits forever.

mod cmdline;
mod disks;
mod identity;
mod net;
mod power;
mod reaper;
mod spawn;
mod switch;
mod sys;
pub(crate) mod user;

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cocoon_guest_proto::run::{BOOT_MARKER, EXIT_MARKER, RunConfig};
use rustix::mount::{MountFlags, UnmountFlags, unmount};

use cmdline::BootArgs;
use sys::{announce, log, mount_fs};

/// The status of a VM that could not start its command, as docker reports
/// a failure of its own (`docker run` exits 125).
const BOOT_FAILED: u8 = 125;

/// Why the boot stopped, and the status the engine is told.
struct Fatal {
    message: String,
    status: u8,
}

impl From<String> for Fatal {
    fn from(message: String) -> Fatal {
        Fatal {
            message,
            status: BOOT_FAILED,
        }
    }
}

impl From<&str> for Fatal {
    fn from(message: &str) -> Fatal {
        Fatal::from(message.to_string())
    }
}

pub fn run() -> i32 {
    let mut reboot = false;
    let status = match catch_unwind(AssertUnwindSafe(|| boot(&mut reboot))) {
        Ok(Ok(status)) => status,
        Ok(Err(fatal)) => {
            log(&fatal.message);
            fatal.status
        }
        Err(_) => {
            log("PID 1 panicked");
            BOOT_FAILED
        }
    };
    finish(status, reboot)
}

/// Everything up to the main process's exit; its status.
fn boot(reboot: &mut bool) -> Result<u8, Fatal> {
    mount_api_filesystems()?;
    let console_at_boot = sys::open_console();
    if console_at_boot {
        announce(BOOT_MARKER);
    }
    let line = fs::read_to_string("/proc/cmdline")
        .map_err(|e| format!("cannot read /proc/cmdline: {e}"))?;
    *reboot = line
        .split_ascii_whitespace()
        .any(|word| word.starts_with("reboot=k"));
    let args = cmdline::parse(&line).map_err(|e| format!("bad kernel command line: {e}"))?;
    load_modules(Path::new("/modules"))?;
    if !console_at_boot {
        wait_for_console(args.timeout);
        announce(BOOT_MARKER);
    }
    let (layers, cow) = disks::wait_for_disks(Path::new("/sys/class/block"), &args)?;
    disks::mount_root(&layers, &cow)?;
    let config = disks::read_run_config(Path::new("/cow"))?;
    net::configure(&args.ips, args.timeout)?;
    let hostname = args.effective_hostname();
    if let Some(name) = hostname {
        sys::set_hostname(name)?;
    }
    write_identity(&args)?;
    switch::switch_root("/newroot")?;
    switch::mount_container_fs()?;
    if config.args.is_empty() {
        return exec_image_init(&config, hostname);
    }
    run_main(&config, hostname)
}

fn mount_api_filesystems() -> Result<(), String> {
    let safe = MountFlags::NOSUID | MountFlags::NOEXEC | MountFlags::NODEV;
    mount_fs(
        "devtmpfs",
        "devtmpfs",
        "/dev",
        MountFlags::NOSUID,
        "mode=0755",
    )?;
    mount_fs("proc", "proc", "/proc", safe, "")?;
    mount_fs("sysfs", "sysfs", "/sys", safe, "")
}

/// Loads `/modules/*.ko` in file-name order (the engine numbered them in
/// dependency order).
fn load_modules(dir: &Path) -> Result<(), String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut modules: Vec<PathBuf> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "ko"))
        .collect();
    modules.sort();
    modules
        .iter()
        .try_for_each(|module| sys::load_module(module))
}

/// A console that a module provides (hvc0 comes with virtio_console)
/// appears some time after the module loads.
fn wait_for_console(timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !sys::open_console() {
        if Instant::now() >= deadline {
            log(&format!(
                "no console after {}s; going on without one",
                timeout.as_secs()
            ));
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn write_identity(args: &BootArgs) -> Result<(), String> {
    let name_servers = args.name_servers();
    let identity = identity::Identity {
        hostname: args.effective_hostname(),
        name_servers: &name_servers,
        address: args.ips.first().map(|ip| ip.address),
    };
    identity::write(Path::new("/newroot"), &identity)
}

/// No command: the image's own init becomes PID 1 (the guest agent, if
/// wanted, stays as its child).
fn exec_image_init(config: &RunConfig, hostname: Option<&str>) -> Result<u8, Fatal> {
    if fs::metadata("/sbin/init").is_err() {
        return Err(Fatal {
            message: "the image has no entrypoint, no command and no /sbin/init".into(),
            status: spawn::NOT_FOUND,
        });
    }
    if config.agent {
        start_agent()?;
    }
    let env = spawn::environment(&config.env, hostname, None);
    spawn::reset_signals();
    let error = Command::new("/sbin/init").env_clear().envs(env).exec();
    Err(Fatal {
        message: format!("cannot run /sbin/init: {error}"),
        status: spawn::exec_failure_status(&error),
    })
}

fn start_agent() -> Result<(), String> {
    let console = File::options()
        .read(true)
        .write(true)
        .open("/dev/console")
        .or_else(|_| File::options().write(true).open("/dev/null"))
        .map_err(|e| format!("cannot open the console for the agent: {e}"))?;
    spawn::start_agent(&console).map_err(|e| format!("cannot start the guest agent: {e}"))?;
    Ok(())
}

/// Runs the run config's command and supervises it; its status.
fn run_main(config: &RunConfig, hostname: Option<&str>) -> Result<u8, Fatal> {
    let credentials = user::resolve(&config.user, Path::new("/etc"))?;
    let env = spawn::environment(&config.env, hostname, credentials.home.as_deref());
    let cwd = Path::new("/").join(&config.cwd);
    // docker creates a missing working directory (owned by root).
    fs::create_dir_all(&cwd)
        .map_err(|e| format!("cannot create the working directory {}: {e}", cwd.display()))?;
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or("", |(_, v)| v.as_str());
    let program = spawn::find_program(&config.args[0], path, Path::new("/"))
        .map_err(|(status, message)| Fatal { message, status })?;
    let signals = reaper::block_signals().map_err(|e| format!("cannot block signals: {e}"))?;
    let mut buttons = power::PowerButtons::open(Path::new("/dev/input"));
    if config.agent {
        start_agent()?;
    }
    let tty = console_tty();
    let main = spawn::MainProcess {
        program: &program,
        args: &config.args,
        env: &env,
        cwd: &cwd,
        credentials: &credentials,
        tty: &tty,
    };
    let pid = spawn::start_main(&main).map_err(|e| Fatal {
        message: format!("cannot run {}: {e}", program.display()),
        status: spawn::exec_failure_status(&e),
    })?;
    Ok(reaper::supervise(&signals, pid, &mut buttons))
}

/// The terminal behind /dev/console (the last of the active consoles):
/// the main process's controlling terminal must be the real device.
fn console_tty() -> PathBuf {
    let active = fs::read_to_string("/sys/class/tty/console/active").unwrap_or_default();
    active
        .split_ascii_whitespace()
        .last()
        .filter(|name| name.bytes().all(|b| b.is_ascii_alphanumeric()))
        .map(|name| Path::new("/dev").join(name))
        .filter(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from("/dev/console"))
}

/// Reports `status`, stops every other process, flushes the disks and ends
/// the VM.
fn finish(status: u8, reboot: bool) -> ! {
    announce(&format!("{EXIT_MARKER}{status}"));
    reaper::stop_everything();
    sys::sync();
    for mount in ["/dev/pts", "/dev/shm", "/tmp", "/run"] {
        let _ = unmount(mount, UnmountFlags::DETACH);
    }
    // A read-only root flushes the overlay; the COW disk's ext4 journal
    // covers the rest (sync above wrote its data).
    let _ = rustix::mount::mount_remount("/", MountFlags::RDONLY, "");
    sys::end_vm(reboot)
}
