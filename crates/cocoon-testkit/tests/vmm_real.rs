//! The control layer against the real Cloud Hypervisor and Firecracker, booting
//! the test guest kernel: boot to the marker, pause twice, resume twice,
//! snapshot, restore in a new process, and check the heartbeat continues (the
//! restored VM is the same running VM, not a fresh boot).
//!
//! Runs when the binaries are on PATH or named by COCOON_CH_BINARY /
//! COCOON_FC_BINARY; otherwise each test prints a SKIPPED notice.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cocoon_engine::model::VmmProcess;
use cocoon_engine::supervise::{self, LaunchSpec, Stdin, StopTimeouts, Stopped};
use cocoon_testkit::guest::{self, READY_MARKER};
use cocoon_testkit::{require_real_vmm, skip};
use vmm_api::ch::CloudHypervisor;
use vmm_api::ch::models::{RestoreConfig, VmSnapshotConfig, VmState, file_url};
use vmm_api::fc::Firecracker;
use vmm_api::fc::models::*;
use vmm_api::{Transition, VmmError};

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    assert_eq!(
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {}",
        path.display()
    );
}

fn read(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// Polls `path` until `check` accepts its content.
fn wait_for(path: &Path, what: &str, timeout: Duration, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = read(path);
        if check(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; output so far:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn send(fifo: &Path, byte: u8) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(fifo)
        .unwrap()
        .write_all(&[byte])
        .unwrap();
}

/// A pseudo-terminal: Cloud Hypervisor reads serial input from stdin only when
/// stdin is a terminal, so its stdin is the slave and the test types into the master.
struct Pty {
    master: std::fs::File,
    slave: PathBuf,
}

impl Pty {
    fn open() -> Pty {
        use std::os::fd::FromRawFd;
        let (mut master, mut slave) = (0, 0);
        // SAFETY: openpty writes the two fds into the ints passed; a null
        // name, termios and winsize are allowed.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty");
        // Raw mode: Cloud Hypervisor puts only its *stdout* in raw mode, so a
        // terminal on stdin alone would hold input back until a newline.
        // SAFETY: `slave` is the fd openpty just opened; termios is a plain C
        // struct, valid zeroed, then filled in by tcgetattr.
        unsafe {
            let mut termios: libc::termios = std::mem::zeroed();
            assert_eq!(libc::tcgetattr(slave, &mut termios), 0);
            libc::cfmakeraw(&mut termios);
            assert_eq!(libc::tcsetattr(slave, libc::TCSANOW, &termios), 0);
        }
        let path = std::fs::read_link(format!("/proc/self/fd/{slave}")).unwrap();
        // The VMM opens the slave itself; ours can go.
        // SAFETY: `slave` is our fd, closed once and not used after.
        unsafe { libc::close(slave) };
        Pty {
            // SAFETY: `master` is an open fd nothing else owns; the File takes it.
            master: unsafe { std::fs::File::from_raw_fd(master) },
            slave: path,
        }
    }

    fn send(&mut self, byte: u8) {
        self.master.write_all(&[byte]).unwrap();
    }
}

struct Vm {
    dir: PathBuf,
    n: usize,
    /// Cloud Hypervisor gets a terminal as stdin, Firecracker a FIFO.
    pty: Option<Pty>,
    /// Every VMM launched, killed when the test ends however it ends.
    launched: Vec<VmmProcess>,
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.launched
            .iter()
            .for_each(cocoon_testkit::kill_if_running);
    }
}

impl Vm {
    fn log(&self) -> PathBuf {
        self.dir.join(format!("serial-{}.log", self.n))
    }

    fn fifo(&self) -> PathBuf {
        self.dir.join(format!("serial-{}.in", self.n))
    }

    fn socket(&self) -> PathBuf {
        self.dir.join(format!("api-{}.sock", self.n))
    }

    /// The next VMM process of this test: its own socket, console log and input FIFO.
    async fn launch(&mut self, binary: &Path, args: impl Fn(&Path) -> Vec<String>) -> VmmProcess {
        self.n += 1;
        let stdin = match &mut self.pty {
            Some(pty) => {
                *pty = Pty::open();
                Stdin::Path(pty.slave.clone())
            }
            None => {
                mkfifo(&self.fifo());
                Stdin::Path(self.fifo())
            }
        };
        let spec = LaunchSpec {
            binary: binary.to_path_buf(),
            args: args(&self.socket()).into_iter().map(Into::into).collect(),
            api_socket: self.socket(),
            log_file: self.log(),
            stdin,
            netns: None,
            socket_timeout: Duration::from_secs(10),
            jail: None,
            cgroup: Vec::new(),
        };
        let vmm = supervise::launch(&spec).await.expect("real VMM starts");
        self.launched.push(vmm.clone());
        vmm
    }
}

fn timeouts() -> StopTimeouts {
    StopTimeouts {
        graceful: Duration::from_secs(5),
        term: Duration::from_secs(5),
        kill: Duration::from_secs(5),
    }
}

fn heartbeat(text: &str) -> u64 {
    guest::last_heartbeat(text).unwrap_or(0)
}

#[tokio::test]
async fn cloud_hypervisor_end_to_end() {
    let Some(binary) = require_real_vmm(
        "cloud_hypervisor_end_to_end",
        "COCOON_CH_BINARY",
        "cloud-hypervisor",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut vm = Vm {
        dir: dir.path().to_path_buf(),
        n: 0,
        pty: Some(Pty::open()),
        launched: vec![],
    };
    let kernel = guest::kernel_path().display().to_string();
    let vmm = vm
        .launch(&binary, |sock| {
            [
                "--api-socket",
                &sock.display().to_string(),
                "--kernel",
                &kernel,
                "--cpus",
                "boot=1",
                "--memory",
                "size=128M",
                "--serial",
                "tty",
                "--console",
                "off",
            ]
            .map(str::to_string)
            .to_vec()
        })
        .await;
    let ch = CloudHypervisor::new(&vm.socket());
    wait_for(
        &vm.log(),
        "the ready marker",
        Duration::from_secs(20),
        |t| t.contains(READY_MARKER),
    );
    wait_for(&vm.log(), "two heartbeats", Duration::from_secs(10), |t| {
        heartbeat(t) >= 2
    });
    assert!(
        ch.ping().await.unwrap().version.starts_with("53"),
        "tested against v53"
    );
    assert_eq!(ch.info().await.unwrap().state, VmState::Running);

    assert_eq!(ch.pause().await.unwrap(), Transition::Applied);
    assert_eq!(ch.pause().await.unwrap(), Transition::AlreadyInState);
    let paused_at = heartbeat(&read(&vm.log()));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        heartbeat(&read(&vm.log())) <= paused_at + 1,
        "a paused guest does not beat"
    );
    assert_eq!(ch.resume().await.unwrap(), Transition::Applied);
    assert_eq!(ch.resume().await.unwrap(), Transition::AlreadyInState);
    wait_for(
        &vm.log(),
        "heartbeats after resume",
        Duration::from_secs(10),
        |t| heartbeat(t) >= paused_at + 2,
    );

    // The guest answers a query on its serial port.
    vm.pty.as_mut().unwrap().send(guest::QUERY);
    wait_for(&vm.log(), "a count answer", Duration::from_secs(5), |t| {
        !guest::counts(t).is_empty()
    });

    ch.pause().await.unwrap();
    let before = heartbeat(&read(&vm.log()));
    let snap = vm.dir.join("snapshot");
    std::fs::create_dir(&snap).unwrap();
    let config = VmSnapshotConfig {
        destination_url: file_url(&snap),
        extra: Default::default(),
    };
    match ch
        .snapshot(&config, vmm_api::transfer_timeout(128 << 20))
        .await
    {
        Err(err)
            if matches!(
                err.vmm_error(),
                Some(VmmError::NestedStateUnavailable { .. })
            ) =>
        {
            // The known PVM quirk: the error must tell the user what is going on.
            let text = err.to_string();
            assert!(
                text.contains("GetNestedState") && text.contains("PVM"),
                "{text}"
            );
            assert_eq!(ch.resume().await.unwrap(), Transition::Applied);
            assert_eq!(
                supervise::terminate(&vmm, None::<fn() -> std::future::Ready<()>>, timeouts())
                    .await
                    .unwrap(),
                Stopped::Terminated
            );
            return skip(
                "cloud_hypervisor_end_to_end (snapshot/restore part)",
                &format!(
                    "this host's KVM cannot snapshot with {}: {text}",
                    binary.display()
                ),
            );
        }
        other => other.unwrap(),
    }
    for file in ["config.json", "state.json", "memory-ranges"] {
        assert!(snap.join(file).exists(), "{file} written");
    }
    assert_eq!(
        supervise::terminate(&vmm, None::<fn() -> std::future::Ready<()>>, timeouts())
            .await
            .unwrap(),
        Stopped::Terminated
    );

    // Restore in a new process: the serial console follows the new process's stdio.
    let restored = vm
        .launch(&binary, |sock| {
            vec!["--api-socket".into(), sock.display().to_string()]
        })
        .await;
    let ch = CloudHypervisor::new(&vm.socket());
    let restore = RestoreConfig {
        source_url: file_url(&snap),
        prefault: None,
        memory_restore_mode: None,
        resume: None,
        extra: Default::default(),
    };
    ch.restore(&restore, vmm_api::transfer_timeout(128 << 20))
        .await
        .unwrap();
    assert_eq!(ch.info().await.unwrap().state, VmState::Paused);
    assert_eq!(ch.resume().await.unwrap(), Transition::Applied);
    let text = wait_for(
        &vm.log(),
        "heartbeats after restore",
        Duration::from_secs(10),
        |t| heartbeat(t) >= before + 2,
    );
    assert!(
        !text.contains(READY_MARKER),
        "the restored VM did not boot again:\n{text}"
    );
    let first = text
        .lines()
        .find_map(|l| l.strip_prefix(guest::HEARTBEAT_PREFIX))
        .unwrap()
        .trim()
        .parse::<u64>()
        .unwrap();
    assert!(
        first <= before + 1,
        "the count continued from {before} (first after restore: {first})"
    );

    assert_eq!(ch.shutdown().await.unwrap(), Transition::Applied);
    assert_eq!(ch.shutdown().await.unwrap(), Transition::AlreadyInState);
    supervise::terminate(
        &restored,
        None::<fn() -> std::future::Ready<()>>,
        timeouts(),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn firecracker_end_to_end() {
    let Some(binary) =
        require_real_vmm("firecracker_end_to_end", "COCOON_FC_BINARY", "firecracker")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut vm = Vm {
        dir: dir.path().to_path_buf(),
        n: 0,
        pty: None,
        launched: vec![],
    };
    // Firecracker logs to stdout unless told otherwise, and stdout is also
    // the guest's serial console here: a log line written in the middle of
    // the guest's ready line split it ("C<log line>OCOON-TEST-GUEST READY"),
    // and the test waited for a marker that never came whole. Its log goes
    // to a file of its own (which must exist beforehand).
    let args = |sock: &Path| {
        let log = sock.with_extension("fc.log");
        std::fs::File::create(&log).unwrap();
        vec![
            "--api-sock".into(),
            sock.display().to_string(),
            "--id".into(),
            "cocoon-test".into(),
            "--log-path".into(),
            log.display().to_string(),
        ]
    };
    let vmm = vm.launch(&binary, args).await;
    let fc = Firecracker::new(&vm.socket());
    assert_eq!(fc.describe_instance().await.unwrap().state, "Not started");
    fc.put_machine_config(&MachineConfiguration {
        vcpu_count: 1,
        mem_size_mib: 128,
        smt: None,
        track_dirty_pages: None,
        huge_pages: None,
        extra: Default::default(),
    })
    .await
    .unwrap();
    fc.put_boot_source(&BootSource {
        kernel_image_path: guest::kernel_path().display().to_string(),
        initrd_path: None,
        boot_args: Some("console=ttyS0".into()),
        extra: Default::default(),
    })
    .await
    .unwrap();
    fc.put_entropy(&EntropyDevice::default()).await.unwrap();
    fc.instance_start().await.unwrap();
    wait_for(
        &vm.log(),
        "the ready marker",
        Duration::from_secs(20),
        |t| t.contains(READY_MARKER),
    );
    wait_for(&vm.log(), "two heartbeats", Duration::from_secs(10), |t| {
        heartbeat(t) >= 2
    });
    assert_eq!(
        fc.vm_config()
            .await
            .unwrap()
            .machine_config
            .unwrap()
            .mem_size_mib,
        128
    );

    // Firecracker accepts same-state PATCH /vm (recorded: 204 both times).
    assert_eq!(fc.pause().await.unwrap(), Transition::Applied);
    assert_eq!(fc.pause().await.unwrap(), Transition::Applied);
    assert_eq!(fc.describe_instance().await.unwrap().state, "Paused");
    assert_eq!(fc.resume().await.unwrap(), Transition::Applied);
    assert_eq!(fc.resume().await.unwrap(), Transition::Applied);
    assert_eq!(fc.describe_instance().await.unwrap().state, "Running");

    send(&vm.fifo(), guest::QUERY);
    wait_for(&vm.log(), "a count answer", Duration::from_secs(5), |t| {
        !guest::counts(t).is_empty()
    });

    fc.pause().await.unwrap();
    let before = heartbeat(&read(&vm.log()));
    let (state, mem) = (vm.dir.join("vmstate"), vm.dir.join("mem"));
    fc.snapshot_create(
        &SnapshotCreateParams {
            snapshot_path: state.display().to_string(),
            mem_file_path: mem.display().to_string(),
            snapshot_type: Some(SnapshotType::Full),
            extra: Default::default(),
        },
        vmm_api::transfer_timeout(128 << 20),
    )
    .await
    .unwrap();
    assert_eq!(std::fs::metadata(&mem).unwrap().len(), 128 << 20);
    assert_eq!(
        supervise::terminate(&vmm, None::<fn() -> std::future::Ready<()>>, timeouts())
            .await
            .unwrap(),
        Stopped::Terminated
    );

    let restored = vm.launch(&binary, args).await;
    let fc = Firecracker::new(&vm.socket());
    fc.snapshot_load(
        &SnapshotLoadParams {
            snapshot_path: state.display().to_string(),
            mem_backend: Some(MemoryBackend {
                backend_type: MemoryBackendType::File,
                backend_path: mem.display().to_string(),
                extra: Default::default(),
            }),
            track_dirty_pages: None,
            resume_vm: Some(true),
            vsock_override: None,
            network_overrides: vec![],
            extra: Default::default(),
        },
        vmm_api::transfer_timeout(128 << 20),
    )
    .await
    .unwrap();
    let text = wait_for(
        &vm.log(),
        "heartbeats after restore",
        Duration::from_secs(10),
        |t| heartbeat(t) >= before + 2,
    );
    assert!(
        !text.contains(READY_MARKER),
        "the restored VM did not boot again:\n{text}"
    );
    send(&vm.fifo(), guest::QUERY);
    let text = wait_for(
        &vm.log(),
        "a count after restore",
        Duration::from_secs(5),
        |t| !guest::counts(t).is_empty(),
    );
    assert!(
        guest::counts(&text)[0] > before,
        "the counter kept its value across the restore"
    );

    // Graceful stop: Ctrl-Alt-Del, the guest resets, Firecracker exits.
    let outcome = supervise::terminate(
        &restored,
        Some(|| async { fc.send_ctrl_alt_del().await.unwrap() }),
        timeouts(),
    )
    .await
    .unwrap();
    assert_eq!(outcome, Stopped::Graceful);
    assert!(read(&vm.log()).contains("ctrl-alt-del"));
}

/// Kills a VMM a test spawned directly.
struct KillChild(std::process::Child);

impl Drop for KillChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real CH still refuses the command lines the fake CH refuses
/// (cocoon_testkit::vmm_refusals), with the same error chain.
#[test]
fn real_ch_refuses_the_command_lines_the_fake_refuses() {
    use cocoon_testkit::vmm_refusals::{CH_CLI_CASES, ch_chain};
    let test = "real_ch_refuses_the_command_lines_the_fake_refuses";
    let Some(ch) = require_real_vmm(test, "COCOON_CH_BINARY", "cloud-hypervisor") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    for case in CH_CLI_CASES {
        let out = std::process::Command::new(&ch)
            .arg("--api-socket")
            .arg(&socket)
            .args(["--kernel", "/nonexistent"])
            .args(case.args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "CH with {:?}: {stderr}",
            case.args
        );
        assert_eq!(
            ch_chain(&stderr),
            case.chain,
            "CH with {:?}: {stderr}",
            case.args
        );
        let _ = std::fs::remove_file(&socket);
    }
}

/// Waits for a VMM's API socket to accept connections.
fn wait_socket(socket: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "{} never answered",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The real FC and CH answer the bodies the fakes refuse exactly as the
/// fakes do (cocoon_testkit::vmm_refusals).
#[test]
fn real_vmms_refuse_the_bodies_the_fakes_refuse() {
    use cocoon_testkit::vmm_refusals::{ApiCase, CH_API_CASES, FC_API_CASES, http};
    let test = "real_vmms_refuse_the_bodies_the_fakes_refuse";
    let Some(fc) = require_real_vmm(test, "COCOON_FC_BINARY", "firecracker") else {
        return;
    };
    let Some(ch) = require_real_vmm(test, "COCOON_CH_BINARY", "cloud-hypervisor") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for (binary, flag, cases, name) in [
        (&fc, "--api-sock", FC_API_CASES, "FC"),
        (&ch, "--api-socket", CH_API_CASES, "CH"),
    ] {
        let socket = dir.path().join(format!("{name}.sock"));
        let child = std::process::Command::new(binary)
            .arg(flag)
            .arg(&socket)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let _kill = KillChild(child);
        wait_socket(&socket);
        for case in cases {
            let ApiCase {
                method, path, body, ..
            } = case;
            let (status, answer) = http(&socket, method, path, body);
            assert_eq!(
                (status, answer.as_str()),
                (case.status, case.response),
                "{name}: {method} {path} {body}"
            );
        }
    }
}
