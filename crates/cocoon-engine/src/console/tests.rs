//! End-to-end tests of the relay and the client over real PTYs. The test
//! holds the side of each PTY the VMM would hold (the slave, for a master port).

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;

use crate::model::VmmProcess;

use super::*;

const WAIT: Duration = Duration::from_secs(3);

struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
}

fn pty() -> Pty {
    let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
    let master = rustix::pty::openpt(flags).unwrap();
    rustix::pty::grantpt(&master).unwrap();
    rustix::pty::unlockpt(&master).unwrap();
    let name = rustix::pty::ptsname(&master, Vec::new()).unwrap();
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    // Raw before the relay runs too, so the bytes we write are not translated.
    make_raw(&slave).unwrap();
    Pty { master, slave }
}

fn port(name: &str, fd: OwnedFd) -> RelayPort {
    RelayPort {
        name: name.to_string(),
        fd,
    }
}

struct Running {
    socket: PathBuf,
    log: PathBuf,
    exited: mpsc::Receiver<io::Result<()>>,
    _dir: tempfile::TempDir,
}

fn start_relay(ports: Vec<RelayPort>, log_max_bytes: u64) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("console.sock");
    let log = dir.path().join("console.log");
    let spec = RelaySpec {
        socket: socket.clone(),
        log: log.clone(),
        log_max_bytes,
        ports,
        watch: None,
        reap: None,
        more_ports: None,
    };
    let (tx, exited) = mpsc::channel();
    std::thread::spawn(move || tx.send(run_relay(spec)));
    wait_until("the relay listens", || UnixStream::connect(&socket).is_ok());
    Running {
        socket,
        log,
        exited,
        _dir: dir,
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn client(socket: &Path) -> UnixStream {
    let stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
}

fn read_n(stream: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    stream.read_exact(&mut buf).unwrap();
    buf
}

fn send_input(stream: &mut UnixStream, bytes: &[u8]) {
    let mut frames = Vec::new();
    frame::encode_input(bytes, &mut frames);
    stream.write_all(&frames).unwrap();
}

fn write_fd(fd: impl AsFd, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let n = rustix::io::write(&fd, bytes).unwrap();
        bytes = &bytes[n..];
    }
}

/// Reads exactly `n` bytes from a PTY end, failing after [`WAIT`].
fn read_fd(fd: impl AsFd, n: usize) -> Vec<u8> {
    let mut out = vec![0; n];
    let mut got = 0;
    let deadline = Instant::now() + WAIT;
    while got < n {
        assert!(
            readable(&fd, deadline.saturating_duration_since(Instant::now())),
            "read {got} of {n} bytes"
        );
        got += rustix::io::read(&fd, &mut out[got..]).unwrap();
    }
    out
}

fn readable(fd: impl AsFd, within: Duration) -> bool {
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    let timeout = Timespec::try_from(within).unwrap();
    rustix::event::poll(&mut fds, Some(&timeout)).unwrap() > 0
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| u8::try_from(i % 251).unwrap()).collect()
}

#[test]
fn output_reaches_the_client_and_the_rotating_log() {
    let pty = pty();
    let relay = start_relay(vec![port("serial", pty.master)], 1000);
    let mode = std::fs::metadata(&relay.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the socket is private");
    let mut c = client(&relay.socket);
    let data = pattern(2500);
    write_fd(&pty.slave, &data);

    assert_eq!(read_n(&mut c, data.len()), data);
    wait_until("the log has rotated", || log::file_len(&relay.log) == 500);
    assert_eq!(
        std::fs::read(rotated_log(&relay.log)).unwrap(),
        &data[1000..2000]
    );
    assert_eq!(std::fs::read(&relay.log).unwrap(), &data[2000..]);
    assert_eq!(read_log(&relay.log).unwrap(), &data[1000..]);
}

#[test]
fn a_late_client_gets_the_last_64k_then_live_output() {
    let pty = pty();
    let relay = start_relay(vec![port("serial", pty.master)], 10 << 20);
    let data = pattern(RING_BYTES + 40_000);
    write_fd(&pty.slave, &data);
    wait_until("the relay has read everything", || {
        log::file_len(&relay.log) == data.len() as u64
    });

    let mut c = client(&relay.socket);
    assert_eq!(read_n(&mut c, RING_BYTES), &data[data.len() - RING_BYTES..]);
    write_fd(&pty.slave, b"live");
    assert_eq!(read_n(&mut c, 4), b"live");
}

#[test]
fn input_goes_to_the_port_that_last_produced_output() {
    let (serial, console) = (pty(), pty());
    let relay = start_relay(
        vec![
            port("serial", serial.master),
            port("console", console.master),
        ],
        1 << 20,
    );
    let mut c = client(&relay.socket);

    send_input(&mut c, b"first");
    assert_eq!(
        read_fd(&serial.slave, 5),
        b"first",
        "before any output: ports[0]"
    );

    write_fd(&console.slave, b"login: ");
    assert_eq!(read_n(&mut c, 7), b"login: ");
    send_input(&mut c, b"root");
    assert_eq!(read_fd(&console.slave, 4), b"root");
    assert!(!readable(&serial.slave, Duration::from_millis(100)));

    write_fd(&serial.slave, b"panic");
    assert_eq!(read_n(&mut c, 5), b"panic");
    send_input(&mut c, b"again");
    assert_eq!(read_fd(&serial.slave, 5), b"again");
    assert!(!readable(&console.slave, Duration::from_millis(100)));
}

#[test]
fn clients_share_the_output_and_a_stalled_one_blocks_nobody() {
    let pty = pty();
    let relay = start_relay(vec![port("serial", pty.master)], 64 << 20);
    let mut stalled = client(&relay.socket);
    let mut readers = [client(&relay.socket), client(&relay.socket)];
    // Once a client has read this, the relay has accepted it.
    write_fd(&pty.slave, b"ready");
    assert_eq!(read_n(&mut stalled, 5), b"ready");
    for reader in &mut readers {
        assert_eq!(read_n(reader, 5), b"ready");
    }

    // In steps the readers keep up with: only the stalled client falls behind.
    let data = pattern(4 << 20);
    for chunk in data.chunks(64 << 10) {
        write_fd(&pty.slave, chunk);
        for reader in &mut readers {
            assert!(
                read_n(reader, chunk.len()) == chunk,
                "a reader got different bytes"
            );
        }
    }

    // The stalled client was disconnected: it gets what was in flight, then EOF.
    let mut rest = Vec::new();
    match stalled.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
    }
    assert!(
        rest.len() < data.len() / 2,
        "stalled client got {} bytes",
        rest.len()
    );
}

#[test]
fn the_relay_exits_and_removes_its_socket_when_the_vmm_side_closes() {
    let pty = pty();
    let relay = start_relay(vec![port("serial", pty.master)], 1 << 20);
    let mut c = client(&relay.socket);
    write_fd(&pty.slave, b"bye");
    drop(pty.slave);

    let result = relay.exited.recv_timeout(WAIT).expect("the relay exits");
    result.unwrap();
    assert!(!relay.socket.exists(), "the socket is removed");
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert_eq!(
        rest, b"bye",
        "output before the hang-up still reaches the client"
    );
}

#[test]
fn a_window_size_frame_resizes_every_port() {
    let (serial, console) = (pty(), pty());
    let relay = start_relay(
        vec![
            port("serial", serial.master),
            port("console", console.master),
        ],
        1 << 20,
    );
    let mut c = client(&relay.socket);
    let mut frames = Vec::new();
    frame::encode_winsize(33, 111, &mut frames);
    c.write_all(&frames).unwrap();
    wait_until("both ports are 33x111", || {
        [&serial.slave, &console.slave]
            .iter()
            .all(|fd| tty::window_size(fd).unwrap() == (33, 111))
    });
}

#[test]
fn ports_are_put_in_raw_mode() {
    let pty = pty();
    let mut cooked = rustix::termios::tcgetattr(&pty.slave).unwrap();
    cooked.local_modes |= rustix::termios::LocalModes::ECHO | rustix::termios::LocalModes::ICANON;
    rustix::termios::tcsetattr(&pty.slave, rustix::termios::OptionalActions::Now, &cooked).unwrap();
    let _relay = start_relay(vec![port("serial", pty.master)], 1 << 20);
    let modes = rustix::termios::tcgetattr(&pty.slave).unwrap().local_modes;
    assert!(
        !modes.intersects(rustix::termios::LocalModes::ECHO | rustix::termios::LocalModes::ICANON)
    );
}

/// `attach` in a thread with pipes for the user's terminal.
struct Attached {
    keyboard: OwnedFd,
    screen: OwnedFd,
    done: mpsc::Receiver<Result<Detached, ConsoleError>>,
}

fn attach_with_pipes(socket: &Path, winsize_tty: Option<OwnedFd>) -> Attached {
    let (input, keyboard) = rustix::pipe::pipe().unwrap();
    let (screen, output) = rustix::pipe::pipe().unwrap();
    let (tx, done) = mpsc::channel();
    let socket = socket.to_path_buf();
    std::thread::spawn(move || {
        let tty = winsize_tty.as_ref().map(|fd| fd.as_fd());
        tx.send(attach(&socket, 0x1d, input.as_fd(), output.as_fd(), tty))
    });
    Attached {
        keyboard,
        screen,
        done,
    }
}

#[test]
fn attach_relays_both_ways_and_detaches_on_escape_dot() {
    let pty = pty();
    let relay = start_relay(vec![port("serial", pty.master)], 1 << 20);
    write_fd(&pty.slave, b"boot\n");
    let user = attach_with_pipes(&relay.socket, None);
    assert_eq!(read_fd(&user.screen, 5), b"boot\n", "the ring first");

    write_fd(&user.keyboard, b"ab\x1d\x1dc\x1dx");
    assert_eq!(read_fd(&pty.slave, 6), b"ab\x1dc\x1dx");
    write_fd(&pty.slave, b"prompt$ ");
    assert_eq!(read_fd(&user.screen, 8), b"prompt$ ");

    write_fd(&user.keyboard, b"\x1d.ignored");
    let detached = user.done.recv_timeout(WAIT).expect("attach returns");
    assert_eq!(detached.unwrap(), Detached::Escape);
    assert!(
        !readable(&pty.slave, Duration::from_millis(100)),
        "nothing after ^]."
    );
}

#[test]
fn attach_returns_when_the_relay_goes_away_or_was_never_there() {
    let pty = pty();
    let relay = start_relay(vec![port("serial", pty.master)], 1 << 20);
    let user = attach_with_pipes(&relay.socket, None);
    write_fd(&pty.slave, b"x");
    assert_eq!(read_fd(&user.screen, 1), b"x");
    drop(pty.slave);
    let detached = user.done.recv_timeout(WAIT).expect("attach returns");
    assert_eq!(detached.unwrap(), Detached::RemoteClosed);

    let (input, _keyboard) = rustix::pipe::pipe().unwrap();
    let err = attach(&relay.socket, 0x1d, input.as_fd(), input.as_fd(), None).unwrap_err();
    assert!(matches!(err, ConsoleError::NotRunning { .. }), "{err:?}");
    assert!(err.to_string().contains("console relay is not running"));
}

#[test]
fn attach_sends_the_window_size_and_follows_sigwinch() {
    let (vm, user_tty) = (pty(), pty());
    tty::set_window_size(&user_tty.slave, 20, 70).unwrap();
    let relay = start_relay(vec![port("serial", vm.master)], 1 << 20);
    let user = attach_with_pipes(&relay.socket, Some(user_tty.slave.try_clone().unwrap()));
    wait_until("the VM console is 20x70", || {
        tty::window_size(&vm.slave).unwrap() == (20, 70)
    });

    tty::set_window_size(&user_tty.slave, 50, 160).unwrap();
    // The test PTY is nobody's controlling terminal: deliver the signal ourselves.
    rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::WINCH)
        .unwrap();
    wait_until("the VM console is 50x160", || {
        tty::window_size(&vm.slave).unwrap() == (50, 160)
    });
    drop(user.keyboard);
    assert_eq!(
        user.done
            .recv_timeout(WAIT)
            .expect("attach returns")
            .unwrap(),
        Detached::Escape,
        "end of input detaches"
    );
}

/// The test binary's arguments that run [`relay_process_entry`] (the relay
/// argv follows).
const RELAY_ENTRY: [&str; 4] = [
    "--exact",
    "console::tests::relay_process_entry",
    "--nocapture",
    "--",
];

/// The relay process of [`spawn_relay_runs_detached_and_follows_the_watched_process`]:
/// the test binary re-executed with this test as its only filter and the relay
/// argv after `--` (which libtest takes as more name filters, matching nothing).
#[test]
fn relay_process_entry() {
    let args: Vec<_> = std::env::args_os().collect();
    let Some(split) = args.iter().position(|a| a == "--") else {
        return; // an ordinary test run
    };
    let spec = relay_spec_from_args(&args[split + 1..]).unwrap();
    run_relay(spec).unwrap();
}

#[test]
fn spawn_relay_runs_detached_and_follows_the_watched_process() {
    let pty = pty();
    let mut vmm = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The VMM's helper (QEMU's vhost-device-vsock): named by its socket,
    // stopped by the relay once the VMM is gone.
    let helper_socket = dir.path().join("vhost-vsock.sock");
    let mut helper = std::process::Command::new("sh")
        .args(["-c", "while :; do sleep 1; done", "helper"])
        .arg(&helper_socket)
        .spawn()
        .unwrap();
    let spec = RelaySpec {
        socket: dir.path().join("console.sock"),
        log: dir.path().join("console.log"),
        log_max_bytes: 1 << 20,
        ports: vec![port("serial", pty.master)],
        watch: Some(ProcessIdentity::of(vmm.id()).unwrap()),
        reap: Some(VmmProcess {
            identity: ProcessIdentity::of(helper.id()).unwrap(),
            api_socket: helper_socket.clone(),
        }),
        more_ports: None,
    };
    let exe = std::env::current_exe().unwrap();
    let prefix = RELAY_ENTRY;
    let stderr = dir.path().join("relay.stderr");
    let relay = spawn_relay(&exe, &prefix, &spec, Some(&stderr)).unwrap();
    drop(spec.ports); // the relay process holds its own copy
    assert!(relay.is_alive());

    // Detached: a hang-up signal does not end it.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(relay.pid as i32).unwrap(),
        rustix::process::Signal::HUP,
    )
    .unwrap();
    let mut c = client(&spec.socket);
    write_fd(&pty.slave, b"hello from the guest");
    assert_eq!(read_n(&mut c, 20), b"hello from the guest");
    assert!(relay.is_alive());

    // The VMM dies while its PTY stays open (here: held by the test): the watch ends the relay.
    vmm.kill().unwrap();
    vmm.wait().unwrap();
    wait_until("the relay exits", || !relay.is_alive());
    assert!(
        helper.try_wait().unwrap().is_some(),
        "the relay stopped the VMM's helper"
    );
    assert!(!spec.socket.exists(), "the socket is removed");
    assert_eq!(read_log(&spec.log).unwrap(), b"hello from the guest");
    let stderr = std::fs::read_to_string(&stderr).unwrap();
    assert!(!stderr.contains("panicked"), "relay stderr: {stderr}");
}

/// A relay started ahead of its ports ([`spawn_relay_ahead`]): it listens at
/// once, serves the output written before the hand-over (held in the
/// terminal), and one that never gets its ports exits by itself.
#[test]
fn a_relay_started_ahead_serves_the_ports_handed_over_later() {
    let exe = std::env::current_exe().unwrap();
    let prefix = RELAY_ENTRY;
    let dir = tempfile::tempdir().unwrap();
    let spec = |name: &str| RelaySpec {
        socket: dir.path().join(format!("{name}.sock")),
        log: dir.path().join(format!("{name}.log")),
        log_max_bytes: 1 << 20,
        ports: Vec::new(),
        watch: None,
        reap: None,
        more_ports: None,
    };
    let served = spec("served");
    let pending = spawn_relay_ahead(&exe, &prefix, &served, None).unwrap();
    wait_until("the relay listens before it has a port", || {
        UnixStream::connect(&served.socket).is_ok()
    });
    let pty = pty();
    write_fd(&pty.slave, b"written before the hand-over;");
    let relay = pending.hand_over(&[port("console", pty.master)]).unwrap();
    let mut c = client(&served.socket);
    write_fd(&pty.slave, b"and after");
    wait_until("the log has both", || {
        read_log(&served.log).unwrap_or_default() == b"written before the hand-over;and after"
    });
    // A client gets what came before it connected too (the relay's ring).
    let both = b"written before the hand-over;and after";
    assert_eq!(read_n(&mut c, both.len()), both);
    // The terminal's other side goes: the relay has no port left and ends.
    drop(pty.slave);
    wait_until("the relay exits", || !relay.is_alive());

    // Never handed its ports (the boot failed): it ends when the CLI's end closes.
    let orphan = spec("orphan");
    let pending = spawn_relay_ahead(&exe, &prefix, &orphan, None).unwrap();
    let pid = pending.pid();
    wait_until("the relay listens", || {
        UnixStream::connect(&orphan.socket).is_ok()
    });
    let identity = ProcessIdentity::of(pid).unwrap();
    drop(pending);
    wait_until("the relay without ports exits", || !identity.is_alive());
    assert!(!orphan.socket.exists(), "the socket is removed");
}
