//! The QMP client against a real QEMU: the handshake, pause and resume (each
//! twice), a refusal, quit; a QEMU that is killed or whose socket another
//! client holds; and a VM saved to a file with `mapped-ram` and loaded into
//! a second QEMU started with `-incoming defer`.
//!
//! Software emulation only (`-M none`, or `microvm` under TCG with 16 MiB
//! and no kernel): no KVM needed. Runs when `qemu-system-x86_64` is on PATH
//! or named by COCOON_QEMU_BINARY; otherwise each test prints a SKIPPED
//! notice, and fails under COCOON_TEST_REQUIRE=1.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmm_api::qmp::*;
use vmm_api::{ApiError, Transition, transfer_timeout};

/// The fixture's version, which the live QEMU is compared with.
const FIXTURE_VERSION: &str = "10.0.2";

fn qemu_binary(test: &str) -> Option<PathBuf> {
    let found = match std::env::var_os("COCOON_QEMU_BINARY").filter(|p| !p.is_empty()) {
        Some(path) => Some(PathBuf::from(path)),
        None => std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("qemu-system-x86_64"))
                .find(|candidate| candidate.is_file())
        }),
    };
    match found {
        Some(path) if path.is_file() => Some(path),
        _ => {
            cocoon_test_skip::skip(
                test,
                "qemu-system-x86_64 not found (apt-get install qemu-system-x86, or set COCOON_QEMU_BINARY)",
            );
            None
        }
    }
}

/// A QEMU this test started, killed when the test ends however it ends.
struct Qemu {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Qemu {
    fn start(binary: &Path, dir: &Path, name: &str, machine: &[&str]) -> Qemu {
        let socket = dir.join(format!("{name}.sock"));
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(binary)
            .args(machine)
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", socket.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Qemu { child, socket, log }
    }

    /// A tiny microvm under TCG: guest RAM to migrate, no kernel needed.
    fn microvm(binary: &Path, dir: &Path, name: &str, extra: &[&str]) -> Qemu {
        let mut args = vec!["-M", "microvm,accel=tcg", "-m", "16"];
        args.extend_from_slice(extra);
        Qemu::start(binary, dir, name, &args)
    }

    /// Connects once QEMU has made its socket.
    async fn connect(&mut self) -> Qmp {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match Qmp::connect_within(&self.socket, Duration::from_secs(10)).await {
                Ok(qmp) => return qmp,
                Err(ApiError::Io { .. }) if Instant::now() < deadline => {
                    if let Some(status) = self.child.try_wait().unwrap() {
                        panic!("QEMU exited ({status}): {}", self.log());
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("{e}: {}", self.log()),
            }
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for QEMU to exit on its own; true if it exited successfully.
    fn exited_ok(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn handshake_pause_twice_resume_twice_refusal_and_quit() {
    let Some(binary) = qemu_binary("handshake_pause_twice_resume_twice_refusal_and_quit") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut qemu = Qemu::start(&binary, dir.path(), "qemu", &["-M", "none"]);
    let mut qmp = qemu.connect().await;

    let version = qmp.version().await.unwrap();
    assert_eq!(version.qemu, qmp.greeting().version.qemu);
    if version.qemu.to_string() != FIXTURE_VERSION {
        eprintln!(
            "note: QEMU {} here, the schema fixture is {FIXTURE_VERSION}: spec/qemu/regen.sh",
            version.qemu
        );
    }
    let status = qmp.status().await.unwrap();
    assert!(status.running, "{status:?}");
    assert_eq!(status.status, RunState::Running);

    assert_eq!(qmp.pause().await.unwrap(), Transition::Applied);
    assert_eq!(qmp.pause().await.unwrap(), Transition::AlreadyInState);
    let status = qmp.status().await.unwrap();
    assert_eq!((status.running, status.status), (false, RunState::Paused));
    assert_eq!(qmp.resume().await.unwrap(), Transition::Applied);
    assert_eq!(qmp.resume().await.unwrap(), Transition::AlreadyInState);
    assert!(qmp.status().await.unwrap().running);
    let names: Vec<String> = qmp.take_events().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["STOP", "RESUME"], "one event per real change");

    let err = qmp.query_balloon().await.unwrap_err();
    let refusal = err.qmp_error().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(refusal.class, "DeviceNotActive", "{err}");

    qmp.quit().await.unwrap();
    let shutdown = qmp
        .wait_event("SHUTDOWN", Duration::from_secs(5))
        .await
        .unwrap();
    let EventKind::Shutdown(data) = shutdown.kind() else {
        panic!("{shutdown:?}")
    };
    assert_eq!((data.guest, data.reason.as_str()), (false, "host-qmp-quit"));
    assert!(qemu.exited_ok(Duration::from_secs(10)), "{}", qemu.log());
    let after = qmp.status().await.unwrap_err();
    assert!(matches!(after, ApiError::Closed { .. }), "{after}");
}

#[tokio::test]
async fn a_killed_qemu_ends_the_call_and_a_held_socket_times_out_at_connect() {
    let Some(binary) =
        qemu_binary("a_killed_qemu_ends_the_call_and_a_held_socket_times_out_at_connect")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut qemu = Qemu::start(&binary, dir.path(), "qemu", &["-M", "none"]);
    let first = qemu.connect().await;
    // QEMU greets a second client only once the first has gone.
    let err = Qmp::connect_within(&qemu.socket, Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ApiError::Timeout { op, .. } if op == "connect"),
        "{err}"
    );
    drop(first);
    let mut second = qemu.connect().await;
    assert!(second.status().await.unwrap().running);

    qemu.child.kill().unwrap();
    qemu.child.wait().unwrap();
    let started = Instant::now();
    let err = second.status().await.unwrap_err();
    assert!(matches!(err, ApiError::Closed { .. }), "{err}");
    eprintln!("as expected: {err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "not left to the deadline"
    );
    // The socket file stays, with nobody behind it.
    let err = Qmp::connect(&qemu.socket).await.unwrap_err();
    assert!(matches!(err, ApiError::Io { .. }), "{err}");
}

/// Saves a microvm (running, or paused first) and loads it into a second
/// QEMU (paused first, or not); returns the loaded VM's status.
async fn save_and_load(
    binary: &Path,
    dir: &Path,
    pause_source: bool,
    pause_target: bool,
) -> StatusInfo {
    // A name a `file:` URI would misread (`,offset=`): channels take it as is.
    let file = dir.join("vm,offset=4096.mem");
    let timeout = transfer_timeout(16 << 20);
    let mut source = Qemu::microvm(binary, dir, "source", &[]);
    let mut qmp = source.connect().await;
    if pause_source {
        assert_eq!(qmp.pause().await.unwrap(), Transition::Applied);
    }
    let info = qmp
        .save_to_file(&file, timeout)
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", source.log()));
    assert_eq!(info.status, Some(MigrationStatus::Completed));
    assert!(info.total_time.is_some(), "{info:?}");
    let ram = info.ram.expect("ram statistics");
    assert!(ram.total >= 16 << 20, "{ram:?}");
    let status = qmp.status().await.unwrap();
    assert_eq!(
        (status.running, &status.status),
        (false, &RunState::PostMigrate)
    );
    assert!(
        std::fs::metadata(&file).unwrap().len() >= 16 << 20,
        "mapped-ram: a page per page of RAM"
    );
    qmp.quit().await.unwrap();
    assert!(
        source.exited_ok(Duration::from_secs(10)),
        "{}",
        source.log()
    );

    let mut target = Qemu::microvm(binary, dir, "target", &["-incoming", "defer"]);
    let mut qmp = target.connect().await;
    assert_eq!(qmp.status().await.unwrap().status, RunState::InMigrate);
    if pause_target {
        // `stop` while awaiting the migration: nothing ran, nothing changed.
        assert_eq!(qmp.pause().await.unwrap(), Transition::AlreadyInState);
    }
    let loaded = qmp
        .load_from_file(&file, timeout)
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", target.log()));
    assert_eq!(
        qmp.query_migrate().await.unwrap().status,
        Some(MigrationStatus::Completed)
    );
    if !loaded.running {
        assert_eq!(qmp.resume().await.unwrap(), Transition::Applied);
        assert!(qmp.status().await.unwrap().running);
    }
    qmp.quit().await.unwrap();
    assert!(
        target.exited_ok(Duration::from_secs(10)),
        "{}",
        target.log()
    );
    loaded
}

#[tokio::test]
async fn a_paused_vm_saved_to_a_file_loads_paused_into_another_qemu() {
    let Some(binary) = qemu_binary("a_paused_vm_saved_to_a_file_loads_paused_into_another_qemu")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let loaded = save_and_load(&binary, dir.path(), true, false).await;
    assert_eq!((loaded.running, loaded.status), (false, RunState::Paused));
}

#[tokio::test]
async fn a_running_vm_saved_to_a_file_loads_running_into_another_qemu() {
    let Some(binary) = qemu_binary("a_running_vm_saved_to_a_file_loads_running_into_another_qemu")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let loaded = save_and_load(&binary, dir.path(), false, false).await;
    assert_eq!((loaded.running, loaded.status), (true, RunState::Running));
}

#[tokio::test]
async fn a_running_vm_loads_paused_into_a_qemu_told_to_stop_before() {
    let Some(binary) = qemu_binary("a_running_vm_loads_paused_into_a_qemu_told_to_stop_before")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let loaded = save_and_load(&binary, dir.path(), false, true).await;
    assert_eq!((loaded.running, loaded.status), (false, RunState::Paused));
}

#[tokio::test]
async fn a_load_that_fails_says_why_and_leaves_a_qemu_that_loads_nothing_more() {
    let test = "a_load_that_fails_says_why_and_leaves_a_qemu_that_loads_nothing_more";
    let Some(binary) = qemu_binary(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let timeout = Duration::from_secs(30);
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, vec![0x5a; 1 << 20]).unwrap();

    // A file that is not there: `migrate-incoming` itself refuses.
    let mut first = Qemu::microvm(&binary, dir.path(), "first", &["-incoming", "defer"]);
    let mut qmp = first.connect().await;
    let absent = dir.path().join("absent");
    let err = qmp.load_from_file(&absent, timeout).await.unwrap_err();
    assert!(
        err.qmp_error()
            .is_some_and(|e| e.desc.contains("No such file")),
        "{err}"
    );
    eprintln!("as expected: {err}");
    let err = qmp.load_from_file(&garbage, timeout).await.unwrap_err();
    assert!(
        err.qmp_error()
            .is_some_and(|e| e.desc.contains("incoming state")),
        "{err}"
    );
    eprintln!("as expected, then: {err}");
    qmp.quit().await.unwrap();

    // A file that is not a migration stream: the load fails, QEMU stays.
    let mut second = Qemu::microvm(&binary, dir.path(), "second", &["-incoming", "defer"]);
    let mut qmp = second.connect().await;
    let err = qmp.load_from_file(&garbage, timeout).await.unwrap_err();
    let ApiError::Migration { status, desc, .. } = &err else {
        panic!("{err}: {}", second.log())
    };
    assert_eq!(status, "failed");
    assert!(desc.is_some(), "{err}");
    eprintln!("as expected: {err}");
    assert_eq!(qmp.status().await.unwrap().status, RunState::InMigrate);
    let err = qmp.load_from_file(&garbage, timeout).await.unwrap_err();
    assert!(
        err.qmp_error()
            .is_some_and(|e| e.desc.contains("already been started")),
        "{err}"
    );
    eprintln!("as expected, then: {err}");
    qmp.quit().await.unwrap();
}
