//! The few system calls PID 1 makes that rustix does not wrap (with the
//! workspace's features): module loading, `reboot`, `sethostname`, `sync`,
//! and the console as the standard streams.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::mount::{MountFlags, mount};

/// Whether fds 0-2 are the console: until then a message goes to the
/// kernel log too, which replays it once a console registers (hvc0 only
/// appears when virtio_console is loaded).
static CONSOLE_OPEN: AtomicBool = AtomicBool::new(false);

/// Prints a `cocoon-init:` line on the console (and the kernel log while
/// there is no console yet).
pub fn log(message: &str) {
    let line = format!("cocoon-init: {message}\n");
    if !CONSOLE_OPEN.load(Ordering::Relaxed) {
        // <2> (critical) passes the loglevel=3 the engine sets.
        if let Ok(mut kmsg) = File::options().write(true).open("/dev/kmsg") {
            let _ = kmsg.write_all(format!("<2>{line}").as_bytes());
        }
    }
    let _ = io::stderr().write_all(line.as_bytes());
}

/// Prints `text` on a line of its own on the console, for the engine.
pub fn announce(text: &str) {
    // A leading newline ends whatever partial line the kernel or a process
    // left, so the marker starts its own line.
    let _ = io::stdout().write_all(format!("\n{text}\n").as_bytes());
    let _ = io::stdout().flush();
}

/// Makes /dev/console fds 0, 1 and 2. False if the console cannot be opened
/// (yet).
pub fn open_console() -> bool {
    let Ok(console) = File::options().read(true).write(true).open("/dev/console") else {
        return false;
    };
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard fds, which this process owns; the
        // source fd is open for the duration of the call.
        unsafe { libc::dup2(console.as_raw_fd(), fd) };
    }
    CONSOLE_OPEN.store(true, Ordering::Relaxed);
    true
}

pub fn mount_fs(
    fstype: &str,
    source: &str,
    target: &str,
    flags: MountFlags,
    data: &str,
) -> Result<(), String> {
    let data = CString::new(data).map_err(|_| format!("mount options of {target} hold a NUL"))?;
    mount(source, target, fstype, flags, Some(data.as_c_str())).map_err(|e| {
        format!(
            "cannot mount {fstype} {source} on {target} ({}): {e}",
            data.to_string_lossy()
        )
    })
}

/// Loads one kernel module; already loaded (built in, or loaded before)
/// counts as loaded.
pub fn load_module(path: &Path) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // SAFETY: finit_module reads the open fd and the NUL-terminated empty
    // parameter string, both valid for the call.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), c"".as_ptr(), 0) };
    if rc == 0 {
        return Ok(());
    }
    match io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        e => Err(format!("cannot load module {}: {e}", path.display())),
    }
}

pub fn set_hostname(name: &str) -> Result<(), String> {
    // SAFETY: the pointer and length describe `name`'s bytes, valid for the call.
    let rc = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "cannot set the hostname to {name}: {}",
            io::Error::last_os_error()
        ))
    }
}

pub fn sync() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// Ends the VM: a reboot where the VMM ends on one (Firecracker's `reboot=k`),
/// else a power-off. PID 1 must never return (the kernel panics when it
/// exits), so a refused request parks it.
pub fn end_vm(reboot: bool) -> ! {
    sync();
    let command = if reboot {
        libc::RB_AUTOBOOT
    } else {
        libc::RB_POWER_OFF
    };
    // SAFETY: reboot(2) with a valid command; on success it does not return.
    unsafe { libc::reboot(command) };
    log(&format!(
        "cannot end the VM: {}",
        io::Error::last_os_error()
    ));
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
