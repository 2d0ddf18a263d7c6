//! A fake Cloud Hypervisor / Firecracker for tests: launched exactly like the
//! real binary (`--api-socket PATH` makes it Cloud Hypervisor, `--api-sock PATH`
//! Firecracker), it serves their API on a unix socket with the same paths,
//! methods, status codes and error bodies (recorded from CH v53.0 and FC
//! v1.16.1), keeps the VM state machine, writes and reads real snapshot files,
//! and injects faults on demand.
//!
//! Faults: `COCOON_FAKE_VMM_FAULTS=<file>` names a JSON file re-read on every
//! request: `[{"method": "PUT", "path": "/api/v1/vm.pause", "action": "...",
//! "ms": 100, "status": 500, "body": "...", "times": 1}]`. Actions: `delay`
//! (then answer normally), `error` (answer `status` with `body`), `die` (exit
//! without answering), `hang` (never answer), `apply_then_hang` (change state,
//! never answer), `apply_then_die`. `times` counts down; 0 or absent = always.
//! `COCOON_FAKE_VMM_REQUESTS=<file>` appends every request line to that file;
//! `COCOON_FAKE_VMM_BODIES=<file>` appends `METHOD PATH BODY` lines (compact JSON).
//! Firecracker's `--config-file` is built as its pre-boot calls would be
//! (each section logged, checked and open to faults as that call).
//! `COCOON_FAKE_VMM_IGNORE_SIGTERM=1` makes the process ignore SIGTERM (a wedged VMM).
//! `COCOON_FAKE_VMM_BOOT_DELAY_MS=N`: a CH booting from its command line is
//! "not created" for N ms, then Created for N ms, then Running (CH's race).
//!
//! Consoles: like the real VMMs, a Cloud Hypervisor launched with `--serial
//! pty` / `--console pty` allocates PTYs and names them in `vm.info`
//! (`config.serial.file`, `config.console.file`); with `--serial tty`, and on
//! Firecracker, the serial console is stdout; with `--serial socket=PATH`
//! (UEFI boot with `--firmware`) it is a unix socket at PATH. The fake guest
//! prints `FAKE-GUEST BOOTED on <port>` on each. A UEFI VM booted from the
//! command line powers off on `vm.power-button`, and the process exits, as CH does.
//!
//! Layout: `args` reads command lines, `ch_cli` validates CH's, `console`
//! makes the guest's consoles, `state` holds the VM, `server` logs, injects
//! faults and checks bodies, `ch` and `fc` answer each VMM's API, `bodies`
//! and `reply` hold their request and answer shapes.

mod args;
mod bodies;
mod ch;
mod ch_cli;
mod console;
mod fc;
mod reply;
mod server;
mod state;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{Method, Uri};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use args::{arg_value, arg_values, ch_option};
use console::{open_pty, serve_serial_socket, write_pty};
use state::{Fake, Flavor, State, Vm};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--version") {
        println!("fake-vmm 0.0.0");
        return;
    }
    if std::env::var_os("COCOON_FAKE_VMM_IGNORE_SIGTERM").is_some_and(|v| v == "1") {
        // SAFETY: setting a signal disposition at startup, before any thread runs.
        unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    }
    let (flavor, socket) = flavor_and_socket(&args);
    let mut vm = Vm {
        state: State::NotCreated,
        config: json!({}),
    };
    // Like CH, a UEFI guest booted from the command line powers off on the
    // ACPI button and takes the VMM down with it. (Direct-kernel fake guests
    // stay in Shutdown with the VMM up, which the endpoint tests rely on.)
    let mut exits_on_poweroff = false;
    if flavor == Flavor::CloudHypervisor {
        exits_on_poweroff = ch_boot_from_command_line(&args, &mut vm);
        ch_restore_from_command_line(&args, &mut vm);
    }
    let boot_delay = boot_delay(&mut vm);
    let fake = Arc::new(Fake {
        flavor,
        id: arg_value(&args, &["--id"]).unwrap_or_else(|| "anonymous-instance".into()),
        vm: Mutex::new(vm),
        faults: std::env::var_os("COCOON_FAKE_VMM_FAULTS").map(PathBuf::from),
        requests: std::env::var_os("COCOON_FAKE_VMM_REQUESTS").map(PathBuf::from),
        exits_on_poweroff,
        bodies: std::env::var_os("COCOON_FAKE_VMM_BODIES").map(PathBuf::from),
    });
    if let Some(ms) = boot_delay {
        let fake = fake.clone();
        tokio::spawn(async move {
            for state in [State::Created, State::Running] {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                fake.vm.lock().await.state = state;
            }
        });
    }
    let config_file = (flavor == Flavor::Firecracker)
        .then(|| arg_value(&args, &["--config-file"]))
        .flatten();
    serve(fake, &socket, config_file.map(PathBuf::from)).await;
}

/// Which VMM the command line asks for, and its API socket.
fn flavor_and_socket(args: &[String]) -> (Flavor, PathBuf) {
    if let Some(s) = arg_value(args, &["--api-socket"]) {
        ch_cli::ch_check_command_line(args);
        (
            Flavor::CloudHypervisor,
            PathBuf::from(ch_option(&s, "path").expect("api socket path")),
        )
    } else if let Some(s) = arg_value(args, &["--api-sock"]) {
        (Flavor::Firecracker, PathBuf::from(s))
    } else {
        eprintln!("fake-vmm: need --api-socket (Cloud Hypervisor) or --api-sock (Firecracker)");
        std::process::exit(2);
    }
}

/// CH boots the VM given on its command line right away: its config, its
/// consoles. Returns whether the VM is a UEFI one (it exits on power-off).
fn ch_boot_from_command_line(args: &[String], vm: &mut Vm) -> bool {
    let payload = match (
        arg_value(args, &["--kernel"]),
        arg_value(args, &["--firmware"]),
    ) {
        (Some(kernel), _) => json!({"kernel": kernel}),
        (None, Some(firmware)) => json!({"firmware": firmware}),
        (None, None) => return false,
    };
    vm.config = ch_config_from_command_line(args, payload);
    vm.state = State::Running;
    ch_open_consoles(args, vm);
    vm.config["payload"]["firmware"].is_string()
}

/// The VmConfig CH makes of its command line, as `vm.info` shows it.
fn ch_config_from_command_line(args: &[String], payload: Value) -> Value {
    let disks: Vec<Value> = arg_values(args, "--disk")
        .iter()
        .enumerate()
        .map(|(i, d)| {
            json!({"path": ch_option(d, "path"), "readonly": ch_option(d, "readonly").as_deref() == Some("on"),
                   "serial": ch_option(d, "serial"), "num_queues": 1, "id": format!("_disk{i}")})
        })
        .collect();
    let nets: Vec<Value> = arg_values(args, "--net")
        .iter()
        .enumerate()
        .map(|(i, n)| json!({"tap": ch_option(n, "tap"), "mac": ch_option(n, "mac"), "id": format!("_net{i}")}))
        .collect();
    let number = |flag: &str, key: &str| {
        arg_value(args, &[flag])
            .and_then(|c| ch_option(&c, key))
            .and_then(|b| b.parse::<u64>().ok())
    };
    let cpus = |key: &str| number("--cpus", key);
    let memory = |key: &str| number("--memory", key);
    let memory_on = |key: &str| {
        arg_value(args, &["--memory"])
            .and_then(|c| ch_option(&c, key))
            .is_some_and(|v| v == "on" || v == "true")
    };
    let mut config = json!({
        "payload": payload,
        "cpus": {"boot_vcpus": cpus("boot").unwrap_or(1), "max_vcpus": cpus("max").or(cpus("boot")).unwrap_or(1)},
        "memory": {"size": memory("size").unwrap_or(134217728), "hotplug_size": memory("hotplug_size"),
                   "shared": memory_on("shared"), "hugepages": memory_on("hugepages")},
        "disks": disks,
        "net": nets,
        "serial": {"mode": "Off"},
        "console": {"mode": "Off"},
    });
    // CH keeps the device in its config (and so in a snapshot's config.json).
    if let Some(vsock) = arg_value(args, &["--vsock"]) {
        config["vsock"] = json!({
            "cid": ch_option(&vsock, "cid").and_then(|c| c.parse::<u64>().ok()).unwrap_or(3),
            "socket": ch_option(&vsock, "socket"),
            "iommu": false,
            "id": "_vsock0",
            "pci_segment": 0,
        });
    }
    config
}

/// The consoles of `--serial` and `--console` (tty, pty or socket), each
/// greeted by the booting guest.
fn ch_open_consoles(args: &[String], vm: &mut Vm) {
    if arg_value(args, &["--serial"]).as_deref() == Some("tty") {
        println!("FAKE-GUEST BOOTED on serial\r");
    }
    for port in ["serial", "console"] {
        if arg_value(args, &[&format!("--{port}")]).as_deref() == Some("pty") {
            let (master, path) = open_pty();
            vm.config[port] = json!({"file": path, "mode": "Pty"});
            write_pty(master, &format!("FAKE-GUEST BOOTED on {port}\r\n"));
            // The master stays open for the life of the process, as CH's does.
        }
    }
    if let Some(socket) = arg_value(args, &["--serial"])
        .as_deref()
        .and_then(|s| s.strip_prefix("socket="))
    {
        vm.config["serial"] = json!({"mode": "Socket", "socket": socket});
        serve_serial_socket(PathBuf::from(socket), "FAKE-GUEST BOOTED on serial");
    }
}

/// `--restore source_url=file://DIR`: the VM of a snapshot, paused.
fn ch_restore_from_command_line(args: &[String], vm: &mut Vm) {
    let Some(restore) = arg_value(args, &["--restore"]) else {
        return;
    };
    let dir = ch_option(&restore, "source_url")
        .expect("source_url")
        .trim_start_matches("file://")
        .to_string();
    match std::fs::read_to_string(Path::new(&dir).join("config.json")) {
        Ok(text) => {
            vm.config = serde_json::from_str(&text).expect("config.json");
            vm.state = State::Paused;
        }
        Err(e) => {
            eprintln!("fake-vmm: cannot restore from {dir}: {e}");
            std::process::exit(1);
        }
    }
}

/// Like the real CH, whose API socket answers before it has created and
/// booted the VM of its command line: "not created", then Created, then
/// Running, each for this long (`COCOON_FAKE_VMM_BOOT_DELAY_MS`).
fn boot_delay(vm: &mut Vm) -> Option<u64> {
    let delay = std::env::var("COCOON_FAKE_VMM_BOOT_DELAY_MS")
        .ok()
        .and_then(|ms| ms.parse::<u64>().ok())
        .filter(|_| vm.state == State::Running);
    if delay.is_some() {
        vm.state = State::NotCreated;
    }
    delay
}

/// Serves the API on `socket` until the process exits. Firecracker with
/// a config file builds its VM first, with the socket bound (requests wait
/// in its backlog, as FC's wait for its build), and exits 1 with FC's
/// error if the build is refused, its socket left behind as FC leaves it.
async fn serve(fake: Arc<Fake>, socket: &Path, config_file: Option<PathBuf>) {
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket).expect("bind API socket");
    eprintln!(
        "fake-vmm: {:?} listening on {}",
        fake.flavor,
        socket.display()
    );
    if let Some(file) = config_file
        && let Err(e) = fc::build_from_config_file(&fake, &file).await
    {
        eprintln!("Error: RunWithApi({e})");
        // A client that connected meanwhile sees the connection close.
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::process::exit(1);
    }
    let app = axum::Router::new().fallback(move |method: Method, uri: Uri, body: Bytes| {
        let fake = fake.clone();
        async move { fake.handle(method, uri, body).await }
    });
    axum::serve(listener, app).await.expect("serve");
}
