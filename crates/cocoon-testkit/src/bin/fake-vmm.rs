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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::Mutex;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Flavor {
    CloudHypervisor,
    Firecracker,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// CH: no VM; FC: "Not started".
    NotCreated,
    Created,
    Running,
    Paused,
    Shutdown,
}

struct Vm {
    state: State,
    /// CH: the VmConfig; FC: the pre-boot configuration by resource.
    config: Value,
}

struct Fake {
    flavor: Flavor,
    id: String,
    vm: Mutex<Vm>,
    faults: Option<PathBuf>,
    requests: Option<PathBuf>,
    bodies: Option<PathBuf>,
    exits_on_poweroff: bool,
}

/// CH's serial port in socket mode: a unix socket the console connects to.
/// The fake guest greets each connection with `banner` and echoes its input.
/// Binding fails on an existing path, as CH's does.
fn serve_serial_socket(path: PathBuf, banner: &'static str) {
    let listener = match tokio::net::UnixListener::bind(&path) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!(
                "fake-vmm: cannot bind the serial socket {}: {e}",
                path.display()
            );
            std::process::exit(1);
        }
    };
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = stream.write_all(format!("{banner}\r\n").as_bytes()).await;
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// A PTY master and its slave's path.
fn open_pty() -> (libc::c_int, String) {
    // SAFETY: plain libc PTY calls on a fd we own; ptsname's buffer is copied at once.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(master >= 0, "posix_openpt");
        assert_eq!(libc::grantpt(master), 0);
        assert_eq!(libc::unlockpt(master), 0);
        let name = std::ffi::CStr::from_ptr(libc::ptsname(master));
        (master, name.to_string_lossy().into_owned())
    }
}

fn arg_value(args: &[String], names: &[&str]) -> Option<String> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        for name in names {
            if arg == name {
                return iter.next().cloned();
            }
            if let Some(value) = arg.strip_prefix(&format!("{name}=")) {
                return Some(value.to_string());
            }
        }
    }
    None
}

/// Every value after `--name` up to the next option (`--disk a b c`).
fn arg_values(args: &[String], name: &str) -> Vec<String> {
    args.iter()
        .skip_while(|a| *a != name)
        .skip(1)
        .take_while(|a| !a.starts_with("--"))
        .cloned()
        .collect()
}

/// CH's `key=value,key=value` option syntax: the value of `key` (or the whole
/// option when it has no keys, e.g. `--api-socket /path`).
fn ch_option(option: &str, key: &str) -> Option<String> {
    if !option.contains('=') {
        return Some(option.to_string());
    }
    option
        .split(',')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string))
}

/// How CH v53 converts one `key=value` of its option syntax.
#[derive(Clone, Copy)]
enum Kind {
    /// Any text.
    Text,
    /// An unsigned integer.
    Int,
    /// `on`, `off`, `true` or `false`.
    Toggle,
    /// An integer with an optional `K`, `M` or `G` suffix.
    Bytes,
    /// `xx:xx:xx:xx:xx:xx`.
    Mac,
}

/// The keys CH v53 knows per option (`cloud-hypervisor --help`).
fn ch_keys(option: &str) -> &'static [(&'static str, Kind)] {
    use Kind::*;
    const RATE: [(&str, Kind); 6] = [
        ("bw_size", Int),
        ("bw_one_time_burst", Int),
        ("bw_refill_time", Int),
        ("ops_size", Int),
        ("ops_one_time_burst", Int),
        ("ops_refill_time", Int),
    ];
    const DISK: &[(&str, Kind)] = &[
        ("path", Text),
        ("readonly", Toggle),
        ("direct", Toggle),
        ("iommu", Toggle),
        ("num_queues", Int),
        ("queue_size", Int),
        ("vhost_user", Toggle),
        ("socket", Text),
        RATE[0],
        RATE[1],
        RATE[2],
        RATE[3],
        RATE[4],
        RATE[5],
        ("id", Text),
        ("pci_segment", Int),
        ("pci_device_id", Int),
        ("rate_limit_group", Text),
        ("queue_affinity", Text),
        ("serial", Text),
        ("backing_files", Toggle),
        ("sparse", Toggle),
        ("image_type", Text),
        ("lock_granularity", Text),
    ];
    const NET: &[(&str, Kind)] = &[
        ("tap", Text),
        ("ip", Text),
        ("mask", Text),
        ("mac", Mac),
        ("host_mac", Mac),
        ("fd", Text),
        ("iommu", Toggle),
        ("num_queues", Int),
        ("queue_size", Int),
        ("id", Text),
        ("vhost_user", Toggle),
        ("socket", Text),
        ("vhost_mode", Text),
        RATE[0],
        RATE[1],
        RATE[2],
        RATE[3],
        RATE[4],
        RATE[5],
        ("pci_segment", Int),
        ("pci_device_id", Int),
        ("offload_tso", Toggle),
        ("offload_ufo", Toggle),
        ("offload_csum", Toggle),
    ];
    match option {
        "--cpus" => &[
            ("boot", Int),
            ("max", Int),
            ("topology", Text),
            ("kvm_hyperv", Toggle),
            ("max_phys_bits", Int),
            ("affinity", Text),
            ("features", Text),
            ("nested", Toggle),
            ("core_scheduling", Text),
        ],
        "--memory" => &[
            ("size", Bytes),
            ("mergeable", Toggle),
            ("shared", Toggle),
            ("hugepages", Toggle),
            ("hugepage_size", Bytes),
            ("hotplug_method", Text),
            ("hotplug_size", Bytes),
            ("hotplugged_size", Bytes),
            ("prefault", Toggle),
            ("reserve", Toggle),
            ("thp", Toggle),
        ],
        "--disk" => DISK,
        "--net" => NET,
        "--balloon" => &[
            ("size", Bytes),
            ("deflate_on_oom", Toggle),
            ("free_page_reporting", Toggle),
            ("iommu", Toggle),
            ("id", Text),
            ("pci_segment", Int),
            ("pci_device_id", Int),
        ],
        "--serial" => &[("file", Text), ("socket", Text)],
        "--console" => &[
            ("file", Text),
            ("socket", Text),
            ("iommu", Toggle),
            ("id", Text),
            ("pci_segment", Int),
            ("pci_device_id", Int),
        ],
        "--rng" => &[
            ("src", Text),
            ("iommu", Toggle),
            ("pci_segment", Int),
            ("pci_device_id", Int),
        ],
        _ => &[],
    }
}

fn converts(kind: Kind, value: &str) -> bool {
    if value.is_empty() {
        // CH takes an empty value as the default.
        return true;
    }
    match kind {
        Kind::Text => true,
        Kind::Int => value.parse::<u64>().is_ok(),
        Kind::Toggle => matches!(value, "on" | "off" | "true" | "false"),
        Kind::Bytes => {
            let digits = value.strip_suffix(['K', 'M', 'G']).unwrap_or(value);
            digits.parse::<u64>().is_ok()
        }
        Kind::Mac => {
            let parts: Vec<&str> = value.split(':').collect();
            parts.len() == 6
                && parts
                    .iter()
                    .all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok())
        }
    }
}

/// Parses one CH option value as CH v53 does: the error it gives, if any.
fn ch_parse(option: &str, value: &str) -> Result<(), String> {
    let keys = ch_keys(option);
    let port = matches!(option, "--serial" | "--console");
    for (i, item) in value.split(',').enumerate() {
        let Some((key, v)) = item.split_once('=') else {
            if port && i == 0 && matches!(item, "off" | "null" | "pty" | "tty") {
                continue;
            }
            if port && keys.iter().any(|(k, _)| *k == item) {
                return Err(format!("invalid syntax: {value}"));
            }
            return Err(format!("unknown option: {item}"));
        };
        let Some((_, kind)) = keys.iter().find(|(k, _)| *k == key) else {
            return Err(format!("unknown option: {key}"));
        };
        if !converts(*kind, v) {
            return Err(format!("unable to convert {v} for {key}"));
        }
    }
    Ok(())
}

/// CH's exit on a command line it cannot parse: its error chain on stderr, status 1.
fn ch_exit(chain: &[&str]) -> ! {
    eprintln!("Error: Cloud Hypervisor exited with the following chain of errors:");
    for (i, e) in chain.iter().enumerate() {
        eprintln!("  {i}: {e}");
    }
    std::process::exit(1)
}

/// Every value CH's command line gives `option` (repeatable options take
/// several values after one flag, and the flag may repeat).
fn all_values(args: &[String], option: &str) -> Vec<String> {
    let multi = matches!(option, "--disk" | "--net");
    let mut values = Vec::new();
    let mut iter = args.iter().peekable();
    while let Some(arg) = iter.next() {
        if let Some(v) = arg.strip_prefix(&format!("{option}=")) {
            values.push(v.to_string());
        } else if arg == option {
            while let Some(v) = iter.next_if(|v| !v.starts_with("--")) {
                values.push(v.clone());
                if !multi {
                    break;
                }
            }
        }
    }
    values
}

/// Refuses, as CH v53 does and with its message, a command line whose
/// `--cpus`, `--memory`, `--disk`, `--net`, `--balloon`, `--serial`,
/// `--console` or `--rng` it cannot parse or validate.
fn ch_check_command_line(args: &[String]) {
    for option in [
        "--cpus",
        "--memory",
        "--disk",
        "--net",
        "--rng",
        "--balloon",
        "--serial",
        "--console",
    ] {
        for value in all_values(args, option) {
            if let Err(e) = ch_parse(option, &value) {
                ch_exit(&[
                    "Error parsing config",
                    &format!("Error parsing {option}"),
                    &e,
                ]);
            }
        }
    }
    if let Some(cpus) = all_values(args, "--cpus").first() {
        let get = |k: &str| {
            ch_option(cpus, k)
                .filter(|v| !v.is_empty())
                .and_then(|v| v.parse::<u64>().ok())
        };
        let boot = get("boot").unwrap_or(1);
        if let Some(max) = get("max").filter(|m| *m < boot) {
            ch_exit(&[
                "Error parsing config",
                "Error validating configuration",
                &format!("Max CPUs ({max}) lower than boot CPUs ({boot})"),
            ]);
        }
    }
    // (Checked on the serial port; CH checks the console's socket later.)
    if all_values(args, "--serial")
        .iter()
        .any(|v| v.split(',').any(|kv| kv == "socket="))
    {
        ch_exit(&[
            "Error parsing config",
            "Error validating configuration",
            "Path missing when using socket console mode",
        ]);
    }
}

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
    let (flavor, socket) = if let Some(s) = arg_value(&args, &["--api-socket"]) {
        ch_check_command_line(&args);
        (
            Flavor::CloudHypervisor,
            PathBuf::from(ch_option(&s, "path").expect("api socket path")),
        )
    } else if let Some(s) = arg_value(&args, &["--api-sock"]) {
        (Flavor::Firecracker, PathBuf::from(s))
    } else {
        eprintln!("fake-vmm: need --api-socket (Cloud Hypervisor) or --api-sock (Firecracker)");
        std::process::exit(2);
    };
    let mut vm = Vm {
        state: State::NotCreated,
        config: json!({}),
    };
    // Like CH, a UEFI guest booted from the command line powers off on the
    // ACPI button and takes the VMM down with it. (Direct-kernel fake guests
    // stay in Shutdown with the VMM up, which the endpoint tests rely on.)
    let mut exits_on_poweroff = false;
    if flavor == Flavor::CloudHypervisor {
        let payload = match (
            arg_value(&args, &["--kernel"]),
            arg_value(&args, &["--firmware"]),
        ) {
            (Some(kernel), _) => Some(json!({"kernel": kernel})),
            (None, Some(firmware)) => Some(json!({"firmware": firmware})),
            (None, None) => None,
        };
        if let Some(payload) = payload {
            // CH boots the VM given on its command line right away.
            let disks: Vec<Value> = arg_values(&args, "--disk")
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    json!({"path": ch_option(d, "path"), "readonly": ch_option(d, "readonly").as_deref() == Some("on"),
                           "serial": ch_option(d, "serial"), "num_queues": 1, "id": format!("_disk{i}")})
                })
                .collect();
            let nets: Vec<Value> = arg_values(&args, "--net")
                .iter()
                .enumerate()
                .map(|(i, n)| json!({"tap": ch_option(n, "tap"), "mac": ch_option(n, "mac"), "id": format!("_net{i}")}))
                .collect();
            vm.config = json!({
                "payload": payload,
                "cpus": {"boot_vcpus": arg_value(&args, &["--cpus"]).and_then(|c| ch_option(&c, "boot")).and_then(|b| b.parse::<u32>().ok()).unwrap_or(1)},
                "memory": {"size": 134217728},
                "disks": disks,
                "net": nets,
                "serial": {"mode": "Off"},
                "console": {"mode": "Off"},
            });
            vm.state = State::Running;
            if arg_value(&args, &["--serial"]).as_deref() == Some("tty") {
                println!("FAKE-GUEST BOOTED on serial\r");
            }
            for port in ["serial", "console"] {
                if arg_value(&args, &[&format!("--{port}")]).as_deref() == Some("pty") {
                    let (master, path) = open_pty();
                    vm.config[port] = json!({"file": path, "mode": "Pty"});
                    // SAFETY: writing a buffer we own to a fd we own.
                    let line = format!("FAKE-GUEST BOOTED on {port}\r\n");
                    unsafe { libc::write(master, line.as_ptr().cast(), line.len()) };
                    // The master stays open for the life of the process, as CH's does.
                }
            }
            if let Some(socket) = arg_value(&args, &["--serial"])
                .as_deref()
                .and_then(|s| s.strip_prefix("socket="))
            {
                vm.config["serial"] = json!({"mode": "Socket", "socket": socket});
                serve_serial_socket(PathBuf::from(socket), "FAKE-GUEST BOOTED on serial");
            }
            exits_on_poweroff = vm.config["payload"]["firmware"].is_string();
        }
        if let Some(restore) = arg_value(&args, &["--restore"]) {
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
    }
    // Like the real CH, whose API socket answers before it has created and
    // booted the VM of its command line: "not created", then Created, then
    // Running, each for this long.
    let boot_delay = std::env::var("COCOON_FAKE_VMM_BOOT_DELAY_MS")
        .ok()
        .and_then(|ms| ms.parse::<u64>().ok())
        .filter(|_| vm.state == State::Running);
    if boot_delay.is_some() {
        vm.state = State::NotCreated;
    }
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
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket).expect("bind API socket");
    eprintln!("fake-vmm: {flavor:?} listening on {}", socket.display());
    let app = axum::Router::new().fallback({
        let fake = fake.clone();
        move |method: Method, uri: Uri, body: Bytes| {
            let fake = fake.clone();
            async move { fake.handle(method, uri, body).await }
        }
    });
    axum::serve(listener, app).await.expect("serve");
}

enum Fault {
    None,
    Delay(u64),
    Error(u16, String),
    Die,
    Hang,
    ApplyThenHang,
    ApplyThenDie,
}

impl Fake {
    fn next_fault(&self, method: &Method, path: &str) -> Fault {
        let Some(file) = &self.faults else {
            return Fault::None;
        };
        let Ok(text) = std::fs::read_to_string(file) else {
            return Fault::None;
        };
        let Ok(mut rules) = serde_json::from_str::<Vec<Value>>(&text) else {
            return Fault::None;
        };
        for rule in rules.iter_mut() {
            let method_ok = rule["method"]
                .as_str()
                .is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()));
            let path_ok = rule["path"].as_str().is_none_or(|p| p == path);
            let times = rule["times"].as_u64();
            if !method_ok || !path_ok || times == Some(0) && rule.get("times_used").is_some() {
                continue;
            }
            if let Some(n) = times.filter(|n| *n > 0) {
                rule["times"] = json!(n - 1);
                rule["times_used"] = json!(true);
                let _ = std::fs::write(file, serde_json::to_vec(&rules).unwrap());
            }
            let rule = rules
                .into_iter()
                .find(|r| r["path"].as_str().is_none_or(|p| p == path))
                .unwrap_or_default();
            return match rule["action"].as_str() {
                Some("delay") => Fault::Delay(rule["ms"].as_u64().unwrap_or(0)),
                Some("error") => Fault::Error(
                    rule["status"].as_u64().unwrap_or(500) as u16,
                    rule["body"].as_str().unwrap_or("").to_string(),
                ),
                Some("die") => Fault::Die,
                Some("hang") => Fault::Hang,
                Some("apply_then_hang") => Fault::ApplyThenHang,
                Some("apply_then_die") => Fault::ApplyThenDie,
                _ => Fault::None,
            };
        }
        Fault::None
    }

    async fn handle(&self, method: Method, uri: Uri, body: Bytes) -> Response {
        let path = uri.path().to_string();
        if let Some(log) = &self.requests {
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
            {
                let _ = writeln!(f, "{method} {path}");
            }
        }
        if let Some(log) = &self.bodies {
            use std::io::Write;
            let compact = serde_json::from_slice::<Value>(&body)
                .map(|v| v.to_string())
                .unwrap_or_default();
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
            {
                let _ = writeln!(f, "{method} {path} {compact}");
            }
        }
        match self.next_fault(&method, &path) {
            Fault::None => {}
            Fault::Delay(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Fault::Error(status, body) => {
                return (
                    StatusCode::from_u16(status).unwrap(),
                    [("content-type", "application/json")],
                    body,
                )
                    .into_response();
            }
            Fault::Die => std::process::exit(137),
            Fault::Hang => std::future::pending::<()>().await,
            Fault::ApplyThenHang => {
                let _ = self.dispatch(&method, &path, &body).await;
                std::future::pending::<()>().await;
            }
            Fault::ApplyThenDie => {
                let _ = self.dispatch(&method, &path, &body).await;
                std::process::exit(137);
            }
        }
        self.dispatch(&method, &path, &body).await
    }

    async fn dispatch(&self, method: &Method, path: &str, body: &[u8]) -> Response {
        // Bodies are deserialized first, as the real VMMs do: FC refuses
        // unknown and mistyped fields, CH mistyped ones.
        if !body.is_empty() {
            match self.flavor {
                Flavor::Firecracker => {
                    if let Err(e) = bodies::fc(method.as_str(), path, body) {
                        return fc_fault(
                            StatusCode::BAD_REQUEST,
                            &format!(
                                "An error occurred when deserializing the json body of a request: {e}."
                            ),
                        );
                    }
                }
                Flavor::CloudHypervisor => {
                    if let Err(e) = bodies::ch(method.as_str(), path, body) {
                        return (
                            StatusCode::BAD_REQUEST,
                            [("content-type", "application/json")],
                            serde_json::to_string(&["Failed to deserialize JSON", &e.to_string()])
                                .unwrap(),
                        )
                            .into_response();
                    }
                }
            }
        }
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(body).unwrap_or(Value::Null)
        };
        match self.flavor {
            Flavor::CloudHypervisor => self.cloud_hypervisor(method, path, body).await,
            Flavor::Firecracker => self.firecracker(method, path, body).await,
        }
    }

    async fn cloud_hypervisor(&self, method: &Method, path: &str, body: Value) -> Response {
        let Some(op) = path.strip_prefix("/api/v1/") else {
            return ch_error(StatusCode::NOT_FOUND, &[]);
        };
        let mut vm = self.vm.lock().await;
        let state_name = |s: State| match s {
            State::NotCreated | State::Created => "Created",
            State::Running => "Running",
            State::Paused => "Paused",
            State::Shutdown => "Shutdown",
        };
        let transition = |top: &str, verb: &str, from: State, to: &str| {
            ch_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &[
                    top,
                    &format!("Cannot {verb} VM"),
                    &format!("Failed to {verb} migratable component"),
                    &format!(
                        "Invalid transition: InvalidStateTransition({}, {to})",
                        state_name(from)
                    ),
                ],
            )
        };
        let not_running = |top: &str| {
            ch_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &[top, "VM is not running"],
            )
        };
        match (method.as_str(), op) {
            ("GET", "vmm.ping") => ok_json(
                json!({"build_version": "v53.0.0-fake", "version": "53.0.0", "pid": std::process::id(), "features": ["kvm"]}),
            ),
            ("PUT", "vmm.shutdown") => {
                tokio::spawn(async {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    std::process::exit(0)
                });
                no_content()
            }
            ("GET", "vm.info") => match vm.state {
                State::NotCreated => ch_error(
                    StatusCode::NOT_FOUND,
                    &["The VM info is not available", "VM is not created"],
                ),
                s => ok_json(
                    json!({"config": vm.config, "state": state_name(s), "memory_actual_size": vm.config["memory"]["size"]}),
                ),
            },
            ("GET", "vm.counters") => match vm.state {
                State::Running | State::Paused => {
                    ok_json(json!({"_disk0": {"read_bytes": 0, "write_bytes": 0}}))
                }
                _ => not_running("The VM counters are not available"),
            },
            ("PUT", "vm.create") => {
                if vm.state != State::NotCreated {
                    return ch_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &["The VM could not be created", "VM is already created"],
                    );
                }
                vm.config = body;
                vm.state = State::Created;
                no_content()
            }
            ("PUT", "vm.boot") => match vm.state {
                State::NotCreated => ch_error(
                    StatusCode::NOT_FOUND,
                    &["The VM could not boot", "VM is not created"],
                ),
                State::Created | State::Shutdown => {
                    vm.state = State::Running;
                    no_content()
                }
                s => transition("The VM could not boot", "boot", s, "Running"),
            },
            ("PUT", "vm.pause") => match vm.state {
                State::Running => {
                    vm.state = State::Paused;
                    no_content()
                }
                State::NotCreated | State::Shutdown => not_running("The VM could not be paused"),
                s => transition("The VM could not be paused", "pause", s, "Paused"),
            },
            ("PUT", "vm.resume") => match vm.state {
                State::Paused => {
                    vm.state = State::Running;
                    no_content()
                }
                State::NotCreated | State::Shutdown => not_running("The VM could not resume"),
                s => transition("The VM could not resume", "resume", s, "Running"),
            },
            ("PUT", "vm.shutdown") => match vm.state {
                State::Running | State::Paused | State::Created => {
                    vm.state = State::Shutdown;
                    no_content()
                }
                _ => not_running("The VM could not shutdown"),
            },
            ("PUT", "vm.power-button") => match vm.state {
                // The fake guest honours the button at once, as an ACPI-aware guest would.
                State::Running => {
                    vm.state = State::Shutdown;
                    if self.exits_on_poweroff {
                        tokio::spawn(async {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            std::process::exit(0)
                        });
                    }
                    no_content()
                }
                _ => not_running("Error triggering power button"),
            },
            ("PUT", "vm.snapshot") => {
                if vm.state != State::Paused {
                    return ch_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &[
                            "The VM could not be snapshotted",
                            "Cannot snapshot VM",
                            "Failed to snapshot migratable component",
                            "Trying to snapshot while VM is running",
                        ],
                    );
                }
                let Some(dir) = body["destination_url"]
                    .as_str()
                    .and_then(|u| u.strip_prefix("file://"))
                else {
                    return ch_error(StatusCode::BAD_REQUEST, &[]);
                };
                let dir = Path::new(dir);
                let written = std::fs::write(
                    dir.join("config.json"),
                    serde_json::to_vec_pretty(&vm.config).unwrap(),
                )
                .and_then(|()| std::fs::write(dir.join("state.json"), br#"{"fake":true}"#))
                .and_then(|()| std::fs::write(dir.join("memory-ranges"), vec![0u8; 4096]));
                match written {
                    Ok(()) => no_content(),
                    Err(e) => ch_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &[
                            "The VM could not be snapshotted",
                            "Cannot snapshot VM",
                            &format!("Error writing snapshot: {e}"),
                        ],
                    ),
                }
            }
            ("PUT", "vm.restore") => {
                if vm.state != State::NotCreated {
                    return ch_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &["The VM could not be restored", "VM is already created"],
                    );
                }
                let dir = body["source_url"]
                    .as_str()
                    .unwrap_or("")
                    .trim_start_matches("file://")
                    .to_string();
                match std::fs::read(Path::new(&dir).join("config.json"))
                    .map(|b| serde_json::from_slice::<Value>(&b))
                {
                    Ok(Ok(config))
                        if Path::new(&dir).join("state.json").exists()
                            && Path::new(&dir).join("memory-ranges").exists() =>
                    {
                        vm.config = config;
                        // Consoles come back as a fresh process opens them.
                        if vm.config["console"]["mode"] == "Pty" {
                            let (_master, path) = open_pty();
                            vm.config["console"]["file"] = json!(path);
                        }
                        if vm.config["serial"]["mode"] == "Tty" {
                            println!("FAKE-GUEST RESTORED on serial\r");
                        }
                        if let Some(socket) = vm.config["serial"]["socket"]
                            .as_str()
                            .filter(|_| vm.config["serial"]["mode"] == "Socket")
                        {
                            serve_serial_socket(socket.into(), "FAKE-GUEST RESTORED on serial");
                        }
                        vm.state = if body["resume"].as_bool() == Some(true) {
                            State::Running
                        } else {
                            State::Paused
                        };
                        no_content()
                    }
                    _ => ch_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &[
                            "The VM could not be restored",
                            &format!("Cannot restore VM from {dir}"),
                        ],
                    ),
                }
            }
            ("PUT", "vm.add-disk") | ("PUT", "vm.add-net") => match vm.state {
                State::Running | State::Paused => {
                    let kind = if op == "vm.add-disk" { "disks" } else { "net" };
                    let list = vm.config[kind].as_array().map_or(0, Vec::len);
                    let id = body["id"]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("_{kind}{list}"));
                    let mut device = body.clone();
                    device["id"] = json!(id);
                    if !vm.config[kind].is_array() {
                        vm.config[kind] = json!([]);
                    }
                    vm.config[kind].as_array_mut().unwrap().push(device);
                    ok_json(json!({"id": id, "bdf": format!("0000:00:{:02x}.0", 6 + list)}))
                }
                _ => not_running(if op == "vm.add-disk" {
                    "The disk could not be added to the VM"
                } else {
                    "The network device could not be added to the VM"
                }),
            },
            ("PUT", "vm.remove-device") => {
                let id = body["id"].as_str().unwrap_or("").to_string();
                let mut found = false;
                for kind in ["disks", "net"] {
                    if let Some(list) = vm.config[kind].as_array_mut() {
                        let before = list.len();
                        list.retain(|d| d["id"].as_str() != Some(&id));
                        found |= list.len() != before;
                    }
                }
                if found {
                    no_content()
                } else {
                    ch_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &[
                            "The device could not be removed from the VM",
                            &format!("No device with id {id:?} to remove"),
                        ],
                    )
                }
            }
            ("PUT", "vm.resize") => match vm.state {
                State::Running | State::Paused => {
                    if let Some(n) = body["desired_vcpus"].as_u64() {
                        vm.config["cpus"]["boot_vcpus"] = json!(n);
                    }
                    if let Some(n) = body["desired_ram"].as_u64() {
                        vm.config["memory"]["size"] = json!(n);
                    }
                    no_content()
                }
                _ => not_running("The VM could not be resized"),
            },
            _ => ch_error(StatusCode::NOT_FOUND, &[]),
        }
    }

    async fn firecracker(&self, method: &Method, path: &str, body: Value) -> Response {
        let mut vm = self.vm.lock().await;
        let started = matches!(vm.state, State::Running | State::Paused);
        let fault = |msg: &str| fc_fault(StatusCode::BAD_REQUEST, msg);
        const AFTER: &str = "The requested operation is not supported after starting the microVM.";
        const BEFORE: &str =
            "The requested operation is not supported before starting the microVM.";
        let state_name = |s: State| match s {
            State::Running => "Running",
            State::Paused => "Paused",
            _ => "Not started",
        };
        let configure = |vm: &mut Vm, key: &str, value: Value| {
            vm.config[key] = value;
            no_content()
        };
        match (method.as_str(), path) {
            ("GET", "/") => ok_json(
                json!({"id": self.id, "state": state_name(vm.state), "vmm_version": "1.16.1-fake", "app_name": "Firecracker"}),
            ),
            ("GET", "/version") => ok_json(json!({"firecracker_version": "1.16.1-fake"})),
            ("GET", "/vm/config") => ok_json(vm.config.clone()),
            ("PUT", "/machine-config")
            | ("PUT", "/boot-source")
            | ("PUT", "/balloon")
            | ("PUT", "/entropy")
                if started =>
            {
                fault(AFTER)
            }
            ("PUT", "/machine-config") => {
                if body["vcpu_count"].as_u64().is_none() || body["mem_size_mib"].as_u64().is_none()
                {
                    return fault(
                        "An error occurred when deserializing the json body of a request: missing field `vcpu_count` or `mem_size_mib`.",
                    );
                }
                configure(&mut vm, "machine-config", body)
            }
            ("PUT", "/boot-source") => {
                let kernel = body["kernel_image_path"].as_str().unwrap_or("");
                if !Path::new(kernel).exists() {
                    return fault(&format!(
                        "Invalid kernel path: No such file or directory (os error 2): {kernel}"
                    ));
                }
                configure(&mut vm, "boot-source", body)
            }
            ("PUT", "/balloon") => configure(&mut vm, "balloon", body),
            ("PUT", "/entropy") => configure(&mut vm, "entropy", body),
            ("PUT", p) if p.starts_with("/drives/") || p.starts_with("/network-interfaces/") => {
                if started {
                    return fault(AFTER);
                }
                let (key, id_field) = if p.starts_with("/drives/") {
                    ("drives", "drive_id")
                } else {
                    ("network-interfaces", "iface_id")
                };
                let id = p.rsplit('/').next().unwrap_or("");
                if body[id_field].as_str() != Some(id) {
                    return fault("The id from the path does not match the id from the body!");
                }
                // FC opens a drive's file when it is configured.
                if let Some(file) = body["path_on_host"].as_str().filter(|_| key == "drives") {
                    let writable = body["is_read_only"].as_bool() != Some(true);
                    if let Err(e) = std::fs::OpenOptions::new()
                        .read(true)
                        .write(writable)
                        .open(file)
                    {
                        return fault(&format!(
                            "Drive config error: Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file: {e} {file}"
                        ));
                    }
                }
                if !vm.config[key].is_array() {
                    vm.config[key] = json!([]);
                }
                let list = vm.config[key].as_array_mut().unwrap();
                list.retain(|d| d[id_field].as_str() != Some(id));
                list.push(body);
                no_content()
            }
            ("PUT", "/actions") => match body["action_type"].as_str() {
                Some("InstanceStart") => {
                    if started {
                        return fault(AFTER);
                    }
                    if vm.config["boot-source"].is_null() {
                        return fault("Cannot start microvm without kernel configuration.");
                    }
                    vm.state = State::Running;
                    // The serial console is stdout.
                    println!("FAKE-GUEST BOOTED on serial\r");
                    no_content()
                }
                Some("SendCtrlAltDel") => {
                    if vm.state != State::Running {
                        return fault(BEFORE);
                    }
                    // The guest reboots on Ctrl-Alt-Del, and Firecracker exits on a guest reset.
                    tokio::spawn(async {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        std::process::exit(0)
                    });
                    no_content()
                }
                Some("FlushMetrics") => no_content(),
                _ => fault(
                    "An error occurred when deserializing the json body of a request: unknown action_type.",
                ),
            },
            ("PATCH", "/vm") => {
                if !started {
                    return fault(BEFORE);
                }
                match body["state"].as_str() {
                    Some("Paused") => vm.state = State::Paused,
                    Some("Resumed") => vm.state = State::Running,
                    _ => {
                        return fault(
                            "An error occurred when deserializing the json body of a request: unknown variant.",
                        );
                    }
                }
                no_content()
            }
            ("PUT", "/snapshot/create") => {
                if vm.state != State::Paused {
                    return fault("Cannot save microvm state: the microVM must be paused.");
                }
                let (Some(state), Some(mem)) = (
                    body["snapshot_path"].as_str(),
                    body["mem_file_path"].as_str(),
                ) else {
                    return fault(
                        "An error occurred when deserializing the json body of a request: missing field.",
                    );
                };
                let doc = json!({"config": vm.config, "id": self.id});
                match std::fs::write(state, serde_json::to_vec(&doc).unwrap())
                    .and_then(|()| std::fs::write(mem, vec![0u8; 4096]))
                {
                    Ok(()) => no_content(),
                    Err(e) => fault(&format!("Cannot create snapshot: {e}")),
                }
            }
            ("PUT", "/snapshot/load") => {
                if started || !vm.config.as_object().is_none_or(|c| c.is_empty()) {
                    return fault(
                        "Loading a microVM snapshot not allowed after configuring boot-specific resources.",
                    );
                }
                let state_path = body["snapshot_path"].as_str().unwrap_or("");
                let mem_path = body["mem_backend"]["backend_path"]
                    .as_str()
                    .or(body["mem_file_path"].as_str())
                    .unwrap_or("");
                let doc = match std::fs::read(state_path)
                    .map(|b| serde_json::from_slice::<Value>(&b))
                {
                    Ok(Ok(doc)) => doc,
                    _ => {
                        return fault(&format!(
                            "Load microVM snapshot error: Cannot restore microvm state: cannot read {state_path}"
                        ));
                    }
                };
                if !Path::new(mem_path).exists() {
                    return fault(&format!(
                        "Load microVM snapshot error: Cannot restore microvm memory: cannot open {mem_path}"
                    ));
                }
                let mut config = doc["config"].clone();
                for o in body["network_overrides"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                {
                    let iface = o["iface_id"].as_str().unwrap_or("");
                    let Some(list) = config["network-interfaces"].as_array_mut() else {
                        return fault(&format!(
                            "Load microVM snapshot error: Invalid network override: no interface {iface}"
                        ));
                    };
                    match list
                        .iter_mut()
                        .find(|n| n["iface_id"].as_str() == Some(iface))
                    {
                        Some(n) => n["host_dev_name"] = o["host_dev_name"].clone(),
                        None => {
                            return fault(&format!(
                                "Load microVM snapshot error: Invalid network override: no interface {iface}"
                            ));
                        }
                    }
                }
                // Firecracker reopens every drive at the path its state names.
                for drive in config["drives"].as_array().cloned().unwrap_or_default() {
                    let path = drive["path_on_host"].as_str().unwrap_or("");
                    if std::fs::File::open(path).is_err() {
                        return fault(&format!(
                            "Load microVM snapshot error: Cannot restore devices: Block(BackingFile(Os {{ code: 2, kind: NotFound, message: \"No such file or directory\" }}, \"{path}\"))"
                        ));
                    }
                }
                vm.config = config;
                println!("FAKE-GUEST RESTORED on serial\r");
                vm.state = if body["resume_vm"].as_bool() == Some(true) {
                    State::Running
                } else {
                    State::Paused
                };
                no_content()
            }
            _ => fault(&format!(
                "Invalid request method and/or path: {method} {path}."
            )),
        }
    }
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

fn ok_json(value: Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// Cloud Hypervisor's error body: the error chain as a JSON array.
fn ch_error(status: StatusCode, chain: &[&str]) -> Response {
    let mut messages = vec!["Error from API"];
    messages.extend_from_slice(chain);
    (
        status,
        [("content-type", "application/json")],
        serde_json::to_string(&messages).unwrap(),
    )
        .into_response()
}

fn fc_fault(status: StatusCode, message: &str) -> Response {
    (
        status,
        [("content-type", "application/json")],
        json!({"fault_message": message}).to_string(),
    )
        .into_response()
}

/// The request bodies as the real VMMs deserialize them (serde, so the
/// error text is theirs, position included). FC's structs refuse unknown
/// fields (field lists and order as FC v1.16.1 reports them); CH's accept
/// them but refuse mistyped values (CH v53).
mod bodies {
    use serde::Deserialize;
    use serde_json::Value;

    type Any = Option<Value>;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Drive {
        drive_id: String,
        partuuid: Option<String>,
        is_root_device: bool,
        cache_type: Any,
        is_read_only: Option<bool>,
        path_on_host: Option<String>,
        rate_limiter: Any,
        io_engine: Any,
        socket: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct MachineConfig {
        vcpu_count: u8,
        mem_size_mib: usize,
        smt: Option<bool>,
        cpu_template: Any,
        track_dirty_pages: Option<bool>,
        huge_pages: Any,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct BootSource {
        kernel_image_path: String,
        initrd_path: Option<String>,
        boot_args: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct NetworkInterface {
        iface_id: String,
        host_dev_name: String,
        guest_mac: Option<String>,
        mtu: Option<u16>,
        rx_rate_limiter: Any,
        tx_rate_limiter: Any,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Balloon {
        amount_mib: u32,
        deflate_on_oom: bool,
        stats_polling_interval_s: Option<u16>,
        free_page_hinting: Option<bool>,
        free_page_reporting: Option<bool>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Entropy {
        rate_limiter: Any,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct VmState {
        state: String,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Action {
        action_type: String,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct SnapshotCreate {
        snapshot_type: Any,
        snapshot_path: String,
        mem_file_path: String,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct SnapshotLoad {
        snapshot_path: String,
        mem_file_path: Option<String>,
        mem_backend: Any,
        enable_diff_snapshots: Option<bool>,
        track_dirty_pages: Option<bool>,
        resume_vm: Option<bool>,
        network_overrides: Option<Vec<Value>>,
        vsock_override: Any,
        clock_realtime: Option<bool>,
    }

    fn check<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<(), serde_json::Error> {
        serde_json::from_slice::<T>(body).map(drop)
    }

    /// Firecracker: the body of `method path`, deserialized.
    pub fn fc(method: &str, path: &str, body: &[u8]) -> Result<(), serde_json::Error> {
        match (method, path) {
            ("PUT", p) if p.starts_with("/drives/") => check::<Drive>(body),
            ("PUT", p) if p.starts_with("/network-interfaces/") => check::<NetworkInterface>(body),
            ("PUT", "/machine-config") => check::<MachineConfig>(body),
            ("PUT", "/boot-source") => check::<BootSource>(body),
            ("PUT", "/balloon") => check::<Balloon>(body),
            ("PUT", "/entropy") => check::<Entropy>(body),
            ("PATCH", "/vm") => check::<VmState>(body),
            ("PUT", "/actions") => check::<Action>(body),
            ("PUT", "/snapshot/create") => check::<SnapshotCreate>(body),
            ("PUT", "/snapshot/load") => check::<SnapshotLoad>(body),
            _ => Ok(()),
        }
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Cpus {
        boot_vcpus: Option<u32>,
        max_vcpus: Option<u32>,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Memory {
        size: Option<u64>,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct VmConfig {
        cpus: Option<Cpus>,
        memory: Option<Memory>,
        disks: Option<Vec<Disk>>,
        net: Option<Vec<Net>>,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Disk {
        path: Option<String>,
        readonly: Option<bool>,
        direct: Option<bool>,
        num_queues: Option<usize>,
        queue_size: Option<u16>,
        id: Option<String>,
        serial: Option<String>,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Net {
        tap: Option<String>,
        mac: Option<String>,
        num_queues: Option<usize>,
        queue_size: Option<u16>,
        id: Option<String>,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Resize {
        desired_vcpus: Option<u32>,
        desired_ram: Option<i64>,
        desired_balloon: Option<i64>,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Restore {
        source_url: String,
        prefault: Option<bool>,
        resume: Option<bool>,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Snapshot {
        destination_url: String,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct RemoveDevice {
        id: String,
    }

    /// Cloud Hypervisor: the body of `method path`, deserialized.
    pub fn ch(method: &str, path: &str, body: &[u8]) -> Result<(), serde_json::Error> {
        match (method, path.strip_prefix("/api/v1/").unwrap_or(path)) {
            ("PUT", "vm.create") => check::<VmConfig>(body),
            ("PUT", "vm.add-disk") => check::<Disk>(body),
            ("PUT", "vm.add-net") => check::<Net>(body),
            ("PUT", "vm.resize") => check::<Resize>(body),
            ("PUT", "vm.restore") => check::<Restore>(body),
            ("PUT", "vm.snapshot") => check::<Snapshot>(body),
            ("PUT", "vm.remove-device") => check::<RemoveDevice>(body),
            _ => Ok(()),
        }
    }
}
