//! The guest agent end to end on the host: the real `cocoon-init agent`
//! (in its unix-socket test mode) behind a fake hybrid vsock front that
//! answers `CONNECT 1024` as Cloud Hypervisor and Firecracker do, driven by
//! the engine's client. Hostile and absent agents are played by the test.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cocoon_engine::agent::{self, AgentError, ExecRequest, IdentityRequest, Nic, Output, WinSize};

/// Builds cocoon-init into this test's target directory (a no-op when it
/// is fresh) and returns its path.
fn agent_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(Path::parent).unwrap();
        let target = profile_dir.parent().unwrap();
        let profile = profile_dir.file_name().unwrap().to_str().unwrap();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let profile_arg = if profile == "debug" { "dev" } else { profile };
        let status = Command::new(cargo)
            .args([
                "build",
                "-q",
                "-p",
                "cocoon-init",
                "--bin",
                "cocoon-init",
                "--profile",
                profile_arg,
            ])
            .arg("--target-dir")
            .arg(target)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building cocoon-init failed");
        profile_dir.join("cocoon-init")
    })
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A running agent and its fake VMM front.
struct Guest {
    _dir: tempfile::TempDir,
    root: PathBuf,
    vsock: PathBuf,
    agent: Child,
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.agent.kill();
        let _ = self.agent.wait();
    }
}

impl Guest {
    fn start() -> Guest {
        Guest::start_with(|bin, socket, root| {
            let mut cmd = Command::new(bin);
            cmd.arg("agent")
                .arg("--unix")
                .arg(socket)
                .arg("--root")
                .arg(root);
            cmd
        })
    }

    fn start_with(command: impl FnOnce(&Path, &Path, &Path) -> Command) -> Guest {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        let socket = dir.path().join("agent.sock");
        let agent = command(agent_bin(), &socket, &root)
            .spawn()
            .expect("start cocoon-init agent");
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "the agent never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        let vsock = dir.path().join("vsock.sock");
        front(&vsock, socket);
        Guest {
            _dir: dir,
            root,
            vsock,
            agent,
        }
    }

    fn connect(&self) -> agent::Agent {
        agent::connect(&self.vsock, "test", agent::HANDSHAKE_TIMEOUT).expect("connect to the agent")
    }

    /// The raw stream after the handshake, for byte-exact exchanges.
    fn raw(&self) -> UnixStream {
        let mut s = UnixStream::connect(&self.vsock).unwrap();
        s.write_all(b"CONNECT 1024\n").unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8];
        while byte[0] != b'\n' {
            s.read_exact(&mut byte).unwrap();
            line.push(byte[0]);
        }
        assert!(line.starts_with(b"OK "));
        s
    }
}

/// Cloud Hypervisor's hybrid vsock, played: `CONNECT <port>\n` is answered
/// `OK <host port>\n`, then bytes flow to the guest's port.
fn front(path: &Path, agent: PathBuf) {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let agent = agent.clone();
            std::thread::spawn(move || {
                let mut line = String::new();
                BufReader::new(&mut conn).read_line(&mut line).unwrap();
                assert_eq!(line, "CONNECT 1024\n");
                let guest = UnixStream::connect(&agent).unwrap();
                conn.write_all(b"OK 1073741824\n").unwrap();
                splice(conn, guest);
            });
        }
    });
}

fn splice(host: UnixStream, guest: UnixStream) {
    let (mut h2, mut g2) = (host.try_clone().unwrap(), guest.try_clone().unwrap());
    let (mut h, mut g) = (host, guest);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut h2, &mut g2);
        let _ = g2.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut g, &mut h);
    let _ = h.shutdown(std::net::Shutdown::Both);
}

fn exec_request(argv: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..ExecRequest::default()
    }
}

/// Runs a command to its end: (exit code, stdout, stderr).
fn run(guest: &Guest, request: &ExecRequest, stdin: Option<&[u8]>) -> (i32, Vec<u8>, Vec<u8>) {
    let session = guest.connect().exec(request).unwrap();
    let input = session.input();
    let stdin = stdin.map(<[u8]>::to_vec);
    std::thread::spawn(move || {
        if let Some(data) = stdin {
            for chunk in data.chunks(32 * 1024) {
                input.stdin(chunk).unwrap();
            }
        }
        input.close_stdin().unwrap();
    });
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = session
        .wait(|o| {
            match o {
                Output::Stdout(d) => out.extend_from_slice(d),
                Output::Stderr(d) => err.extend_from_slice(d),
            }
            Ok(())
        })
        .unwrap();
    (code, out, err)
}

#[test]
fn stdout_and_stderr_stay_apart_and_exit_codes_come_back() {
    let guest = Guest::start();
    let script = "printf 'to out\\n'; printf 'to err\\n' >&2; printf 'more out'; exit 3";
    let (code, out, err) = run(&guest, &exec_request(&["sh", "-c", script]), None);
    assert_eq!(
        (code, out.as_slice(), err.as_slice()),
        (3, &b"to out\nmore out"[..], &b"to err\n"[..])
    );
    assert_eq!(run(&guest, &exec_request(&["true"]), None).0, 0);
    // Killed by a signal: 128 + n, as a shell reports it.
    assert_eq!(
        run(&guest, &exec_request(&["sh", "-c", "kill -KILL $$"]), None).0,
        137
    );
}

#[test]
fn ten_mib_of_stdin_come_back_byte_exact() {
    let guest = Guest::start();
    let mut data = vec![0u8; 10 << 20];
    let mut x: u32 = 0x9e37_79b9;
    for b in &mut data {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x.to_le_bytes()[0];
    }
    let (code, out, err) = run(&guest, &exec_request(&["cat"]), Some(&data));
    assert_eq!((code, err.len()), (0, 0));
    assert_eq!(out.len(), data.len());
    assert!(out == data, "the bytes differ");
}

#[test]
fn env_cwd_and_user_reach_the_command() {
    let guest = Guest::start();
    std::fs::write(
        guest.root.join("etc/passwd"),
        "alice:x:1000:1001::/home/alice:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        guest.root.join("etc/group"),
        "alice:x:1001:\nstaff:x:50:alice\n",
    )
    .unwrap();
    let mut request = exec_request(&[
        "sh",
        "-c",
        "echo $FOO; pwd; id -u; id -g; id -G; echo $HOME",
    ]);
    request.env.insert("FOO".into(), "bar baz".into());
    request.cwd = "/tmp".into();
    if !is_root() {
        cocoon_test_skip::skip(
            "env_cwd_and_user_reach_the_command",
            "root (to switch users)",
        );
        return;
    }
    request.user = "alice".into();
    let (code, out, _) = run(&guest, &request, None);
    assert_eq!(code, 0);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "bar baz\n/tmp\n1000\n1001\n1001 50\n/home/alice\n"
    );
    request.user = "nobody-here".into();
    let err = guest
        .connect()
        .exec(&request)
        .unwrap()
        .wait(|_| Ok(()))
        .unwrap_err();
    assert!(
        err.to_string().contains("unable to find user nobody-here"),
        "{err}"
    );
}

#[test]
fn a_tty_has_the_size_sent_and_follows_resizes() {
    let guest = Guest::start();
    let mut request = exec_request(&["sh", "-c", "tty; stty size; read line; stty size"]);
    request.tty = Some(WinSize {
        rows: 33,
        cols: 120,
    });
    let session = guest.connect().exec(&request).unwrap();
    let input = session.input();
    let mut out = Vec::new();
    let mut resized = false;
    let code = session
        .wait(|o| {
            let Output::Stdout(d) = o else {
                panic!("stderr on a tty")
            };
            out.extend_from_slice(d);
            if !resized && String::from_utf8_lossy(&out).contains("33 120") {
                resized = true;
                input.resize(WinSize {
                    rows: 50,
                    cols: 200,
                })?;
                input.stdin(b"\n")?;
            }
            Ok(())
        })
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert_eq!(code, 0, "{text}");
    assert!(text.starts_with("/dev/pts/"), "{text}");
    assert!(text.contains("33 120\r\n"), "{text}");
    assert!(text.ends_with("50 200\r\n"), "{text}");
}

#[test]
fn a_forwarded_signal_ends_the_command() {
    let guest = Guest::start();
    let session = guest
        .connect()
        .exec(&exec_request(&["sleep", "100"]))
        .unwrap();
    let input = session.input();
    let started = Instant::now();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        input.signal(libc::SIGINT).unwrap();
    });
    assert_eq!(session.wait(|_| Ok(())).unwrap(), 128 + libc::SIGINT);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_missing_command_is_the_agents_error() {
    let guest = Guest::start();
    let err = guest
        .connect()
        .exec(&exec_request(&["/no/such/thing"]))
        .unwrap()
        .wait(|_| Ok(()));
    let err = err.unwrap_err();
    assert!(matches!(err, AgentError::Remote { .. }), "{err:?}");
    assert!(
        err.to_string().contains("exec: start /no/such/thing"),
        "{err}"
    );
}

/// A VMM front whose guest is played by `guest`.
fn fake_vm(guest: impl Fn(UnixStream) + Send + Sync + 'static) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vsock.sock");
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            guest(conn.unwrap());
        }
    });
    (dir, path)
}

/// Answers the handshake and reads the exec frame, as a VMM and an agent
/// would, before the test's misbehaviour starts.
fn answered(conn: UnixStream) -> UnixStream {
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    reader.get_mut().write_all(b"OK 5\n").unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    reader.into_inner()
}

#[test]
fn a_hostile_agent_gets_a_clear_error_quickly() {
    type Play = fn(UnixStream);
    let cases: [(&str, Play, &str); 4] = [
        (
            "an endless line",
            |c| {
                let mut c = answered(c);
                let junk = vec![b'a'; 1 << 20];
                while c.write_all(&junk).is_ok() {}
            },
            "does not fit",
        ),
        (
            "garbage",
            |c| {
                let _ = answered(c).write_all(b"{\"type\":\"started\"}\n{nope\n");
            },
            "decode frame",
        ),
        (
            "a bogus stream",
            |c| {
                let _ = answered(c).write_all(b"{\"type\":\"started\",\"pid\":1}\n{\"type\":\"stdshout\",\"data\":\"eA==\"}\n");
            },
            "stdshout",
        ),
        (
            "an absurd exit code",
            |c| {
                let _ = answered(c).write_all(
                    b"{\"type\":\"started\",\"pid\":1}\n{\"type\":\"exit\",\"exit_code\":99999}\n",
                );
            },
            "out of range",
        ),
    ];
    for (what, play, expected) in cases {
        let (_dir, path) = fake_vm(move |c| {
            std::thread::spawn(move || play(c));
        });
        let started = Instant::now();
        let session = agent::connect(&path, "evil", agent::HANDSHAKE_TIMEOUT).unwrap();
        let err = session
            .exec(&exec_request(&["true"]))
            .unwrap()
            .wait(|_| Ok(()))
            .unwrap_err();
        assert!(
            matches!(err, AgentError::Protocol { .. }),
            "{what}: {err:?}"
        );
        assert!(err.to_string().contains(expected), "{what}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{what}: {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn no_agent_is_reported_within_five_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("vsock.sock");
    // No socket; a VMM closing the connection (CH with no guest listener);
    // a VMM refusing; one that never answers.
    let (_d1, closes) = fake_vm(|c| {
        let mut line = String::new();
        let mut c = c;
        let _ = BufReader::new(&mut c).read_line(&mut line);
    });
    let (_d2, refuses) = fake_vm(|mut c| {
        let _ = c.write_all(b"ERR no listener\n");
    });
    let (_d3, silent) = fake_vm(|c| {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(30));
            drop(c);
        });
    });
    for path in [&missing, &closes, &refuses, &silent] {
        let started = Instant::now();
        let err = agent::connect(path, "quiet", agent::HANDSHAKE_TIMEOUT).unwrap_err();
        assert!(matches!(err, AgentError::NoAgent { .. }), "{err:?}");
        assert!(err.to_string().contains("--no-agent"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
}

/// Every upstream session of the fixture, replayed against our agent:
/// our bytes must be upstream's.
#[test]
fn upstream_sessions_replay_byte_for_byte() {
    let guest = Guest::start();
    std::fs::write(
        guest.root.join("etc/machine-id"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    let fixture = include_str!("../../guest-proto/fixtures/upstream-sessions.txt");
    for session in fixture.split("\n\n") {
        let lines: Vec<&str> = session
            .lines()
            .filter(|l| !l.starts_with('#') || l.contains("needs"))
            .collect();
        if lines.iter().all(|l| l.starts_with('#')) {
            continue;
        }
        if session.contains("# needs: root") && !is_root() {
            cocoon_test_skip::skip("upstream_sessions_replay_byte_for_byte (reseed)", "root");
            continue;
        }
        let mut conn = guest.raw();
        for line in lines.iter().filter_map(|l| l.strip_prefix("> ")) {
            conn.write_all(format!("{line}\n").as_bytes()).unwrap();
        }
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut got = String::new();
        conn.read_to_string(&mut got).unwrap();
        let want: Vec<&str> = lines.iter().filter_map(|l| l.strip_prefix("< ")).collect();
        let got: Vec<String> = got.lines().map(mask_pid).collect();
        assert_eq!(got, want, "session:\n{session}");
    }
    let id = std::fs::read_to_string(guest.root.join("etc/machine-id")).unwrap();
    if is_root() {
        assert_ne!(
            id, "0123456789abcdef0123456789abcdef\n",
            "reseed regenerates the machine-id"
        );
        assert!(id.len() == 33 && id.ends_with('\n'), "{id:?}");
    }
}

fn mask_pid(line: &str) -> String {
    match line.find("\"pid\":") {
        Some(i) => {
            let start = i + 6;
            let end = start + line[start..].find(|c: char| !c.is_ascii_digit()).unwrap();
            format!("{}<PID>{}", &line[..start], &line[end..])
        }
        None => line.to_owned(),
    }
}

/// `identity` in a private UTS and network namespace (the host's hostname
/// and NICs are never touched), on a veth named eth0.
#[test]
fn identity_sets_hostname_machine_id_and_nic() {
    let have_tools = ["unshare", "ip"].iter().all(|t| {
        Command::new(t).arg("-V").output().is_ok() || Command::new(t).arg("help").output().is_ok()
    });
    if !is_root() || !have_tools {
        cocoon_test_skip::skip(
            "identity_sets_hostname_machine_id_and_nic",
            "root (and util-linux unshare, iproute2 ip)",
        );
        return;
    }
    let guest = Guest::start_with(|bin, socket, root| {
        let mut cmd = Command::new("unshare");
        cmd.args(["--uts", "--net", "sh", "-c"])
            .arg("ip link add eth0 type veth peer name eth1 && ip link set eth1 up && exec \"$0\" agent --unix \"$1\" --root \"$2\"")
            .arg(bin)
            .arg(socket)
            .arg(root);
        cmd
    });
    let request = IdentityRequest {
        hostname: "clone-7".into(),
        machine_id: "00112233445566778899aabbccddeeff".into(),
        nics: vec![Nic {
            name: "eth0".into(),
            mac: "02:11:22:33:44:55".into(),
            address: Some("10.9.0.5/24".into()),
            gateway: Some("10.9.0.1".into()),
            dns: vec!["9.9.9.9".into()],
        }],
    };
    guest.connect().identity(&request).unwrap();
    let script = "hostname; ip -o link show eth0; ip -4 -o addr show eth0; ip route show default";
    let (code, out, _) = run(&guest, &exec_request(&["sh", "-c", script]), None);
    let text = String::from_utf8(out).unwrap();
    assert_eq!(code, 0);
    // Not /sys/class/net: sysfs shows the host's network namespace.
    assert!(text.starts_with("clone-7\n"), "{text}");
    assert!(text.contains("link/ether 02:11:22:33:44:55"), "{text}");
    assert!(text.contains("inet 10.9.0.5/24"), "{text}");
    assert!(text.contains("default via 10.9.0.1 dev eth0"), "{text}");
    let file = |p: &str| std::fs::read_to_string(guest.root.join(p)).unwrap();
    assert_eq!(file("etc/hostname"), "clone-7\n");
    assert_eq!(file("etc/machine-id"), "00112233445566778899aabbccddeeff\n");
    assert_eq!(file("etc/resolv.conf"), "nameserver 9.9.9.9\n");
    // A bad request is refused by the agent with the reason.
    let bad = IdentityRequest {
        nics: vec![Nic {
            name: "eth9".into(),
            mac: "02:00:00:00:00:01".into(),
            ..Nic::default()
        }],
        ..IdentityRequest::default()
    };
    let err = guest.connect().identity(&bad).unwrap_err();
    assert!(
        err.to_string().contains("NIC eth9: no such interface"),
        "{err}"
    );
}
