//! End to end with the real VMMs: an OCI image carrying the test guest kernel
//! is pushed to a local registry, pulled, and booted by `cocoon vm run` on
//! Cloud Hypervisor and Firecracker; `vm logs` and an interactive `vm console`
//! see the guest; stop, start and rm leave nothing behind.
//!
//! Needs the VMMs (PATH or COCOON_CH_BINARY / COCOON_FC_BINARY), /dev/kvm and
//! Debian's docker-registry; says SKIPPED loudly otherwise.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use cocoon_engine::model::VmmProcess;
use cocoon_engine::process::ProcessIdentity;
use cocoon_testkit::guest::{COUNT_PREFIX, HEARTBEAT_PREFIX, READY_MARKER};
use cocoon_testkit::registry::Registry;
use cocoon_testkit::registry::layers::LayerBuilder;
use cocoon_testkit::{CocoonEnv, real_vmm, skip};
use serde_json::Value;

fn bin() -> String {
    env!("CARGO_BIN_EXE_fake-vmm").replace("fake-vmm", "cocoon")
}

struct Reaper(Vec<VmmProcess>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for p in &self.0 {
            cocoon_testkit::kill_if_running(p);
        }
    }
}

fn processes_of(vm: &Value) -> Vec<VmmProcess> {
    let mut found = Vec::new();
    if let Ok(vmm) = serde_json::from_value::<VmmProcess>(vm["vmm"].clone()) {
        found.push(vmm);
    }
    if let Ok(relay) = serde_json::from_value::<ProcessIdentity>(vm["console_relay"].clone()) {
        found.push(VmmProcess {
            identity: relay,
            api_socket: PathBuf::from(vm["run_dir"].as_str().unwrap()).join("console.sock"),
        });
    }
    found
}

struct Run<'a> {
    env: &'a CocoonEnv,
    ch: PathBuf,
    fc: PathBuf,
}

impl Run<'_> {
    fn cmd(&self) -> std::process::Command {
        let mut cmd = self.env.std_cmd();
        cmd.env("COCOON_CH_BINARY", &self.ch)
            .env("COCOON_FC_BINARY", &self.fc);
        cmd
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "cocoon {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn inspect(&self, vm: &str) -> Value {
        serde_json::from_str(&self.ok(&["vm", "inspect", vm])).unwrap()
    }

    fn wait_log(&self, vm: &str, what: &str, occurrences: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.ok(&["vm", "logs", vm]);
            if log.matches(what).count() >= occurrences {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "no {what:?} x{occurrences} in the log of {vm}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `cocoon vm console VM` on a fresh PTY, as a user's terminal would run it.
struct ConsoleSession {
    child: std::process::Child,
    master: std::fs::File,
    seen: Vec<u8>,
}

impl ConsoleSession {
    fn open(run: &Run<'_>, vm: &str) -> ConsoleSession {
        let (master, slave) = pty();
        let mut cmd = run.cmd();
        let io = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
        cmd.args(["vm", "console", vm])
            .stdin(io(&slave))
            .stdout(io(&slave))
            .stderr(io(&slave));
        let child = cmd.spawn().unwrap();
        drop(slave);
        // Non-blocking reads so `expect` can time out.
        unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        ConsoleSession {
            child,
            master: std::fs::File::from(master),
            seen: Vec::new(),
        }
    }

    fn expect(&mut self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&self.seen).contains(what) {
            assert!(
                Instant::now() < deadline,
                "console never showed {what:?}; saw:\n{}",
                String::from_utf8_lossy(&self.seen)
            );
            match self.master.read(&mut buf) {
                Ok(n) if n > 0 => self.seen.extend_from_slice(&buf[..n]),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).unwrap();
    }
}

fn pty() -> (OwnedFd, OwnedFd) {
    // SAFETY: plain libc PTY calls on fds we take ownership of.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(master >= 0);
        assert_eq!(libc::grantpt(master), 0);
        assert_eq!(libc::unlockpt(master), 0);
        let name = std::ffi::CStr::from_ptr(libc::ptsname(master)).to_owned();
        let slave = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
        assert!(slave >= 0);
        (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave))
    }
}

fn boot_on(fc: bool) {
    let test = if fc {
        "vm_run_firecracker"
    } else {
        "vm_run_cloud_hypervisor"
    };
    if !Path::new(&bin()).exists() {
        return skip(test, "the cocoon binary is not built (build the workspace)");
    }
    let ch = real_vmm("COCOON_CH_BINARY", "cloud-hypervisor").unwrap_or_default();
    let fcb = real_vmm("COCOON_FC_BINARY", "firecracker").unwrap_or_default();
    let binary = if fc { &fcb } else { &ch };
    if !binary.is_file() {
        let var = if fc {
            "COCOON_FC_BINARY"
        } else {
            "COCOON_CH_BINARY"
        };
        return skip(
            test,
            &format!("the VMM is not on PATH and {var} is not set"),
        );
    }
    if !Path::new("/dev/kvm").exists() {
        return skip(test, "/dev/kvm is missing");
    }
    let Some(registry) = Registry::start() else {
        return skip(test, "docker-registry is not installed");
    };
    let layer = LayerBuilder::new()
        .file(
            "boot/vmlinuz-test",
            &std::fs::read(cocoon_testkit::guest::kernel_path()).unwrap(),
        )
        .file("boot/initrd.img-test", b"not used by the test kernel")
        .file("sbin/init", b"#!/bin/sh\n")
        .build();
    registry.push("guest/test:1", &[layer], "amd64");
    let reference = registry.reference("guest/test:1");
    let env = CocoonEnv::new(bin());
    let run = Run {
        env: &env,
        ch: ch.clone(),
        fc: fcb.clone(),
    };
    run.ok(&["image", "pull", &reference]);

    let mut args = vec![
        "vm", "run", "--nics", "0", "--memory", "512M", "--cpu", "1", "--name", "g",
    ];
    if fc {
        args.push("--fc");
    }
    args.push(&reference);
    run.ok(&args);
    let vm = run.inspect("g");
    let procs = processes_of(&vm);
    let _reaper = Reaper(procs.clone());
    assert_eq!(vm["state"], "running");
    assert_eq!(procs.len(), 2, "VMM and relay");
    let log = run.wait_log("g", READY_MARKER, 1);
    run.wait_log("g", &format!("{HEARTBEAT_PREFIX}2"), 1);
    assert!(!log.is_empty());

    // The console replays the boot (attached after it) and carries input.
    let mut console = ConsoleSession::open(&run, "g");
    console.expect("Connected to g");
    console.expect(READY_MARKER);
    console.send(b"?");
    console.expect(COUNT_PREFIX);
    // A second attach shares the session and does not hang.
    let mut second = ConsoleSession::open(&run, "g");
    second.expect(READY_MARKER);
    second.send(&[0x1d, b'.']);
    second.expect("Disconnected from g");
    assert!(second.child.wait().unwrap().success());
    console.send(&[0x1d, b'.']);
    console.expect("Disconnected from g");
    assert!(console.child.wait().unwrap().success());

    run.ok(&["vm", "stop", "g"]);
    let vm = run.inspect("g");
    assert_eq!(vm["state"], "stopped");
    assert!(!procs.iter().any(cocoon_engine::supervise::is_running));

    run.ok(&["vm", "start", "g"]);
    let procs2 = processes_of(&run.inspect("g"));
    let _reaper2 = Reaper(procs2.clone());
    run.wait_log("g", READY_MARKER, 2);

    let run_dir = PathBuf::from(vm["run_dir"].as_str().unwrap());
    let log_dir = PathBuf::from(vm["log_dir"].as_str().unwrap());
    run.ok(&["vm", "rm", "--force", "g"]);
    assert!(!procs2.iter().any(cocoon_engine::supervise::is_running));
    assert!(cocoon_engine::supervise::find_by_socket(&run_dir.join("api.sock")).is_empty());
    assert!(!run_dir.exists() && !log_dir.exists());
}

#[test]
fn vm_run_cloud_hypervisor() {
    boot_on(false);
}

#[test]
fn vm_run_firecracker() {
    boot_on(true);
}
