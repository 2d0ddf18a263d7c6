//! The client against a scripted QMP server: each test's server says what a
//! QEMU would (or would not) say, line by line.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::UnixListener;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::task::JoinHandle;

use super::*;
use crate::ch::models::VmState;

const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "Debian 1:10.0.2+ds-2+deb13u1~bpo12+1"}, "capabilities": ["oob"]}}"#;

/// The server side of one connection.
struct Fake {
    lines: Lines<BufReader<OwnedReadHalf>>,
    write: OwnedWriteHalf,
}

impl Fake {
    async fn send_raw(&mut self, text: &str) {
        self.write.write_all(text.as_bytes()).await.unwrap();
    }

    async fn send(&mut self, value: Value) {
        self.send_raw(&format!("{value}\n")).await;
    }

    /// The next command, which must be `name`; returns its id and arguments.
    async fn expect(&mut self, name: &str) -> (Value, Value) {
        let line = self.lines.next_line().await.unwrap().expect("a command");
        let command: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(command["execute"], name, "{line}");
        (command["id"].clone(), command["arguments"].clone())
    }

    /// The next command, whatever it is: ((id, name)).
    async fn expect_any(&mut self) -> ((Value, String), Value) {
        let line = self.lines.next_line().await.unwrap().expect("a command");
        let command: Value = serde_json::from_str(&line).unwrap();
        let name = command["execute"].as_str().unwrap().to_string();
        ((command["id"].clone(), name), command["arguments"].clone())
    }

    async fn reply(&mut self, id: &Value, value: Value) {
        self.send(json!({"return": value, "id": id})).await;
    }

    /// Expects `name` and answers `value`; returns the arguments.
    async fn answer(&mut self, name: &str, value: Value) -> Value {
        let (id, arguments) = self.expect(name).await;
        self.reply(&id, value).await;
        arguments
    }

    async fn event(&mut self, name: &str, data: Value) {
        let ts = json!({"seconds": 1796587180, "microseconds": 593415});
        self.send(json!({"event": name, "data": data, "timestamp": ts}))
            .await;
    }
}

struct Server {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    task: JoinHandle<()>,
}

impl Server {
    /// Serves one connection: `script` runs right after accepting it.
    fn raw<F, Fut>(script: F) -> Server
    where
        F: FnOnce(Fake) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let task = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, write) = stream.into_split();
            let lines = BufReader::new(read).lines();
            script(Fake { lines, write }).await;
        });
        Server {
            _dir: dir,
            socket,
            task,
        }
    }

    /// Greets, negotiates, then runs `script`.
    fn start<F, Fut>(script: F) -> Server
    where
        F: FnOnce(Fake) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Server::raw(|mut fake| async move {
            fake.send_raw(&format!("{GREETING}\n")).await;
            assert_eq!(
                fake.answer("qmp_capabilities", json!({})).await,
                Value::Null
            );
            script(fake).await;
        })
    }

    async fn connect(&self) -> Qmp {
        Qmp::connect_within(&self.socket, Duration::from_secs(5))
            .await
            .unwrap()
    }

    /// Waits for the script to finish, so that its assertions count.
    async fn done(self) {
        self.task.await.unwrap();
    }
}

#[tokio::test]
async fn greeting_then_capabilities_then_commands() {
    let server = Server::start(|mut fake| async move {
        fake.answer(
            "query-status",
            json!({"status": "running", "running": true}),
        )
        .await;
    });
    let mut qmp = server.connect().await;
    assert_eq!(qmp.greeting().version.qemu.to_string(), "10.0.2");
    assert_eq!(qmp.greeting().capabilities, ["oob"]);
    let status = qmp.status().await.unwrap();
    assert_eq!(status.status, RunState::Running);
    assert_eq!(status.vm_state(), VmState::Running);
    server.done().await;
}

#[tokio::test]
async fn answers_are_matched_by_id_and_events_kept_in_order() {
    let server = Server::start(|mut fake| async move {
        let (id, _) = fake.expect("stop").await;
        fake.event("STOP", Value::Null).await;
        // The answer to a command some earlier caller gave up on.
        fake.send(json!({"return": {"status": "paused"}, "id": 999}))
            .await;
        fake.event("MIGRATION", json!({"status": "setup"})).await;
        fake.reply(&id, json!({})).await;
        // An event that arrives between commands is read with the next answer.
        fake.event("RESUME", Value::Null).await;
        fake.answer(
            "query-status",
            json!({"status": "running", "running": true}),
        )
        .await;
    });
    let mut qmp = server.connect().await;
    qmp.execute(&Stop).await.unwrap();
    let events = qmp.take_events();
    let names: Vec<_> = events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["STOP", "MIGRATION"]);
    assert_eq!(events[0].kind(), EventKind::Stop);
    assert_eq!(events[0].timestamp.seconds, 1796587180);
    assert!(matches!(
        events[1].kind(),
        EventKind::Migration(MigrationEvent {
            status: MigrationStatus::Setup,
            ..
        })
    ));
    assert!(qmp.take_events().is_empty(), "taken events are gone");
    assert!(qmp.status().await.unwrap().running);
    assert_eq!(qmp.take_events()[0].name, "RESUME");
    server.done().await;
}

#[tokio::test]
async fn refusals_are_typed_with_class_and_desc() {
    let server = Server::start(|mut fake| async move {
        let (id, _) = fake.expect("query-balloon").await;
        let error =
            json!({"class": "DeviceNotActive", "desc": "No balloon device has been activated"});
        fake.send(json!({"id": id, "error": error})).await;
        fake.answer(
            "query-status",
            json!({"status": "paused", "running": false}),
        )
        .await;
    });
    let mut qmp = server.connect().await;
    let err = qmp.query_balloon().await.unwrap_err();
    let qmp_error = err.qmp_error().expect("a QMP error");
    assert_eq!(qmp_error.class, "DeviceNotActive");
    assert_eq!(qmp_error.desc, "No balloon device has been activated");
    assert!(!err.is_transient());
    assert!(err.to_string().contains("query-balloon"), "{err}");
    // A refusal leaves the session usable.
    assert_eq!(qmp.status().await.unwrap().vm_state(), VmState::Paused);
    server.done().await;
}

#[tokio::test]
async fn a_call_past_its_deadline_times_out_and_its_late_answer_is_dropped() {
    let server = Server::start(|mut fake| async move {
        let (late, _) = fake.expect("query-status").await;
        // Half of the late answer before the deadline, the rest after it.
        fake.send_raw(r#"{"return": {"status": "paused", "#).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        fake.send_raw(&format!("\"running\": false}}, \"id\": {late}}}\n"))
            .await;
        fake.answer(
            "query-status",
            json!({"status": "running", "running": true}),
        )
        .await;
    });
    let mut qmp = server.connect().await;
    let started = std::time::Instant::now();
    let err = qmp
        .execute_within(&QueryStatus, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ApiError::Timeout { op, after } if op == "query-status" && *after == Duration::from_millis(100)),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_millis(290));
    // The late answer (`paused`) is not taken for the next call's (`running`).
    assert!(qmp.status().await.unwrap().running);
    server.done().await;
}

#[tokio::test]
async fn a_qemu_that_dies_mid_call_ends_the_call_and_the_session() {
    let server = Server::start(|mut fake| async move {
        fake.expect("migrate-set-capabilities").await;
        // Dropping `fake` closes the connection, as a QEMU that is killed.
    });
    let mut qmp = server.connect().await;
    let started = std::time::Instant::now();
    let err = qmp
        .set_migration_capabilities(&[(MigrationCapability::MappedRam, true)])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ApiError::Closed { op, .. } if op == "migrate-set-capabilities"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "not left to the deadline"
    );
    let again = qmp.status().await.unwrap_err();
    assert!(matches!(again, ApiError::Closed { .. }), "{again}");
    server.done().await;
}

#[tokio::test]
async fn a_qemu_gone_before_the_call_ends_it_as_closed() {
    let server = Server::start(|fake| async move { drop(fake) });
    let mut qmp = server.connect().await;
    server.done().await;
    // Whether the write meets the closed socket (EPIPE) or the read meets
    // its end, the answer is the same.
    let err = qmp.execute(&Stop).await.unwrap_err();
    assert!(
        matches!(&err, ApiError::Closed { op, reason, .. } if op == "stop" && reason.contains("exited")),
        "{err}"
    );
}

#[tokio::test]
async fn a_socket_held_by_another_client_times_out_at_connect() {
    // QEMU accepts a second client but greets it only when the first leaves.
    let server = Server::raw(|fake| async move {
        let _held = fake;
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
    let err = Qmp::connect_within(&server.socket, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ApiError::Timeout { op, .. } if op == "connect"),
        "{err}"
    );
    server.done().await;
}

#[tokio::test]
async fn no_socket_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = Qmp::connect(&dir.path().join("absent.sock"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ApiError::Io { op, .. } if op == "connect"),
        "{err}"
    );
    assert!(err.is_transient(), "QEMU may not have made its socket yet");
}

#[tokio::test]
async fn something_else_than_qmp_breaks_the_session() {
    let server = Server::raw(|mut fake| async move {
        fake.send_raw("HTTP/1.1 400 Bad Request\n").await;
    });
    let err = Qmp::connect_within(&server.socket, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Protocol { .. }), "{err}");
    server.done().await;
}

#[tokio::test]
async fn wait_event_takes_a_kept_one_first_then_reads_until_its_deadline() {
    let server = Server::start(|mut fake| async move {
        let (id, _) = fake.expect("system_powerdown").await;
        fake.event("POWERDOWN", Value::Null).await;
        fake.reply(&id, json!({})).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        fake.event("STOP", Value::Null).await;
        let data = json!({"guest": true, "reason": "guest-shutdown"});
        fake.event("SHUTDOWN", data).await;
        // Holds the connection open past the client's last wait.
        tokio::time::sleep(Duration::from_millis(400)).await;
    });
    let mut qmp = server.connect().await;
    qmp.system_powerdown().await.unwrap();
    let powerdown = qmp
        .wait_event("POWERDOWN", Duration::from_millis(1))
        .await
        .unwrap();
    assert_eq!(powerdown.kind(), EventKind::Powerdown);
    let shutdown = qmp
        .wait_event("SHUTDOWN", Duration::from_secs(5))
        .await
        .unwrap();
    let EventKind::Shutdown(data) = shutdown.kind() else {
        panic!("{shutdown:?}")
    };
    assert!(data.guest);
    assert_eq!(data.reason, "guest-shutdown");
    // The STOP read on the way is kept.
    assert_eq!(qmp.take_events()[0].name, "STOP");
    let err = qmp
        .wait_event("RESET", Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ApiError::Timeout { op, .. } if op == "RESET"),
        "{err}"
    );
    server.done().await;
}

#[tokio::test]
async fn the_event_buffer_is_bounded_and_counts_what_it_dropped() {
    let extra = 5;
    let server = Server::start(move |mut fake| async move {
        let (id, _) = fake.expect("cont").await;
        for i in 0..EVENT_BUFFER + extra {
            fake.event("BALLOON_CHANGE", json!({"actual": i})).await;
        }
        fake.reply(&id, json!({})).await;
    });
    let mut qmp = server.connect().await;
    qmp.execute(&Cont).await.unwrap();
    let events = qmp.take_events();
    assert_eq!(events.len(), EVENT_BUFFER);
    assert_eq!(events[0].data["actual"], extra, "the oldest went first");
    assert_eq!(qmp.dropped_events(), extra as u64);
    server.done().await;
}

#[tokio::test]
async fn poll_events_reads_what_arrived_without_a_command() {
    let server = Server::start(|mut fake| async move {
        fake.event("STOP", Value::Null).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    let mut qmp = server.connect().await;
    qmp.poll_events(Duration::from_millis(100)).await.unwrap();
    assert_eq!(qmp.take_events()[0].name, "STOP");
    server.done().await;
}

#[tokio::test]
async fn quit_succeeds_when_qemu_hangs_up_before_answering() {
    let server = Server::start(|mut fake| async move {
        fake.expect("quit").await;
    });
    let mut qmp = server.connect().await;
    qmp.quit().await.unwrap();
    server.done().await;
}

#[tokio::test]
async fn pause_and_resume_send_their_command_and_say_what_it_changed() {
    let server = Server::start(|mut fake| async move {
        let running = json!({"status": "running", "running": true});
        let paused = json!({"status": "paused", "running": false});
        fake.answer("query-status", running.clone()).await;
        fake.answer("stop", json!({})).await;
        fake.answer("query-status", paused.clone()).await;
        fake.answer("stop", json!({})).await;
        fake.answer("query-status", paused).await;
        fake.answer("cont", json!({})).await;
        fake.answer("query-status", running).await;
        fake.answer("cont", json!({})).await;
    });
    let mut qmp = server.connect().await;
    assert_eq!(qmp.pause().await.unwrap(), Transition::Applied);
    assert_eq!(qmp.pause().await.unwrap(), Transition::AlreadyInState);
    assert_eq!(qmp.resume().await.unwrap(), Transition::Applied);
    assert_eq!(qmp.resume().await.unwrap(), Transition::AlreadyInState);
    server.done().await;
}

#[test]
fn run_states_map_onto_the_shared_vm_state() {
    let status = |status: &str, running| StatusInfo {
        running,
        status: RunState::from(status),
        extra: Default::default(),
    };
    assert_eq!(status("running", true).vm_state(), VmState::Running);
    assert_eq!(status("prelaunch", false).vm_state(), VmState::Created);
    assert_eq!(status("inmigrate", false).vm_state(), VmState::Created);
    assert_eq!(status("postmigrate", false).vm_state(), VmState::Paused);
    assert_eq!(status("shutdown", false).vm_state(), VmState::Shutdown);
    let newer = status("hibernating", false);
    assert_eq!(newer.status, RunState::Other("hibernating".into()));
    assert_eq!(newer.vm_state(), VmState::Paused);
    let parsed: StatusInfo =
        serde_json::from_value(json!({"status": "hibernating", "running": false})).unwrap();
    assert_eq!(parsed, newer, "an unknown run state parses");
}

#[tokio::test]
async fn save_to_file_sets_mapped_ram_and_polls_until_completed() {
    let server = Server::start(|mut fake| async move {
        let caps = fake.answer("migrate-set-capabilities", json!({})).await;
        assert_eq!(
            caps,
            json!({"capabilities": [
                {"capability": "mapped-ram", "state": true},
                {"capability": "x-ignore-shared", "state": false}]})
        );
        let params = fake.answer("migrate-set-parameters", json!({})).await;
        assert_eq!(params, json!({"max-bandwidth": 1u64 << 40}));
        let migrate = fake.answer("migrate", json!({})).await;
        let addr = &migrate["channels"][0]["addr"];
        assert_eq!(migrate["channels"][0]["channel-type"], "main");
        assert_eq!(
            *addr,
            json!({"transport": "file", "filename": "/run/vm/mem,offset=1", "offset": 0})
        );
        fake.answer("query-migrate", json!({"status": "setup"}))
            .await;
        fake.answer("query-migrate", json!({"status": "active"}))
            .await;
        let done = json!({"status": "completed", "total-time": 2, "downtime": 0, "setup-time": 1,
            "ram": {"transferred": 171601, "remaining": 0, "total": 16920576, "mbps": 1372.8}});
        fake.answer("query-migrate", done).await;
    });
    let mut qmp = server.connect().await;
    let path = Path::new("/run/vm/mem,offset=1");
    let info = qmp
        .save_to_file(path, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(info.status, Some(MigrationStatus::Completed));
    assert_eq!(info.total_time, Some(2));
    assert_eq!(info.ram.unwrap().total, 16920576);
    server.done().await;
}

#[tokio::test]
async fn a_failed_save_reports_qemus_reason() {
    let server = Server::start(|mut fake| async move {
        fake.answer("migrate-set-capabilities", json!({})).await;
        fake.answer("migrate-set-parameters", json!({})).await;
        fake.answer("migrate", json!({})).await;
        let failed = json!({"status": "failed", "error-desc": "Could not create '/x/mem': No such file or directory"});
        fake.answer("query-migrate", failed).await;
    });
    let mut qmp = server.connect().await;
    let err = qmp
        .save_to_file("/x/mem".as_ref(), Duration::from_secs(5))
        .await
        .unwrap_err();
    let ApiError::Migration { status, desc, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(status, "failed");
    assert!(desc.as_deref().unwrap().contains("No such file"), "{err}");
    server.done().await;
}

#[tokio::test]
async fn a_save_past_its_deadline_is_cancelled() {
    let server = Server::start(|mut fake| async move {
        fake.answer("migrate-set-capabilities", json!({})).await;
        fake.answer("migrate-set-parameters", json!({})).await;
        fake.answer("migrate", json!({})).await;
        loop {
            let (id, _) = fake.expect_any().await;
            match id {
                (id, name) if name == "query-migrate" => {
                    fake.reply(&id, json!({"status": "active"})).await
                }
                (id, name) => {
                    assert_eq!(name, "migrate_cancel");
                    fake.reply(&id, json!({})).await;
                    break;
                }
            }
        }
    });
    let mut qmp = server.connect().await;
    let err = qmp
        .save_to_file("/m".as_ref(), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ApiError::Timeout { op, after } if op == "save to file" && *after == Duration::from_millis(200)),
        "{err}"
    );
    server.done().await;
}

#[tokio::test]
async fn load_from_file_starts_the_incoming_migration_and_reports_the_state() {
    let server = Server::start(|mut fake| async move {
        fake.answer("migrate-set-capabilities", json!({})).await;
        let incoming = fake.answer("migrate-incoming", json!({})).await;
        assert_eq!(incoming["exit-on-error"], false);
        assert_eq!(incoming["channels"][0]["addr"]["filename"], "/s/mem");
        fake.answer("query-migrate", json!({"status": "active"}))
            .await;
        fake.answer("query-migrate", json!({"status": "completed"}))
            .await;
        fake.answer(
            "query-status",
            json!({"status": "paused", "running": false}),
        )
        .await;
    });
    let mut qmp = server.connect().await;
    let status = qmp
        .load_from_file("/s/mem".as_ref(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(status.status, RunState::Paused);
    server.done().await;
}
