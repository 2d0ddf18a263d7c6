//! Firecracker's REST API (recorded from FC v1.16.1): pre-boot
//! configuration by resource, actions, pause/resume and snapshots, with
//! FC's state checks and `fault_message` texts, over the shared VM state.

use std::path::Path;

use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use crate::reply::{fc_fault, no_content, ok_json};
use crate::state::{Fake, State, Vm, array_mut, exit_soon};

const AFTER: &str = "The requested operation is not supported after starting the microVM.";
const BEFORE: &str = "The requested operation is not supported before starting the microVM.";

fn fault(msg: &str) -> Response {
    fc_fault(StatusCode::BAD_REQUEST, msg)
}

fn state_name(s: State) -> &'static str {
    match s {
        State::Running => "Running",
        State::Paused => "Paused",
        _ => "Not started",
    }
}

fn configure(vm: &mut Vm, key: &str, value: Value) -> Response {
    vm.config[key] = value;
    no_content()
}

/// A running VM's new balloon target (`BalloonUpdate`).
fn patch_balloon(vm: &mut Vm, started: bool, body: Value) -> Response {
    if !started {
        return fault("The requested operation is not supported before starting the microVM.");
    }
    if vm.config["balloon"].is_null() {
        return fault("Balloon device not found.");
    }
    vm.config["balloon"]["amount_mib"] = body["amount_mib"].clone();
    no_content()
}

impl Fake {
    pub async fn firecracker(&self, method: &Method, path: &str, body: Value) -> Response {
        let mut vm = self.vm.lock().await;
        let vm: &mut Vm = &mut vm;
        let started = matches!(vm.state, State::Running | State::Paused);
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
            | ("PUT", "/vsock")
                if started =>
            {
                fault(AFTER)
            }
            ("PUT", "/machine-config") => machine_config(vm, body),
            ("PUT", "/boot-source") => boot_source(vm, body),
            ("PUT", "/balloon") => configure(vm, "balloon", body),
            ("PUT", "/entropy") => configure(vm, "entropy", body),
            ("PUT", "/vsock") => configure(vm, "vsock", body),
            ("PUT", p) if p.starts_with("/drives/") || p.starts_with("/network-interfaces/") => {
                if started {
                    return fault(AFTER);
                }
                put_device(vm, p, body)
            }
            ("PUT", "/actions") => action(vm, started, &body),
            ("PATCH", "/vm") => patch_vm(vm, started, &body),
            ("PATCH", "/balloon") => patch_balloon(vm, started, body),
            ("PUT", "/snapshot/create") => self.snapshot_create(vm, &body),
            ("PUT", "/snapshot/load") => snapshot_load(vm, started, &body),
            _ => fault(&format!(
                "Invalid request method and/or path: {method} {path}."
            )),
        }
    }

    fn snapshot_create(&self, vm: &Vm, body: &Value) -> Response {
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
}

fn machine_config(vm: &mut Vm, body: Value) -> Response {
    if body["vcpu_count"].as_u64().is_none() || body["mem_size_mib"].as_u64().is_none() {
        return fault(
            "An error occurred when deserializing the json body of a request: missing field `vcpu_count` or `mem_size_mib`.",
        );
    }
    configure(vm, "machine-config", body)
}

fn boot_source(vm: &mut Vm, body: Value) -> Response {
    let kernel = body["kernel_image_path"].as_str().unwrap_or("");
    if !Path::new(kernel).exists() {
        return fault(&format!(
            "Invalid kernel path: No such file or directory (os error 2): {kernel}"
        ));
    }
    configure(vm, "boot-source", body)
}

/// `PUT /drives/ID` and `PUT /network-interfaces/ID` before the start.
fn put_device(vm: &mut Vm, path: &str, body: Value) -> Response {
    let (key, id_field) = if path.starts_with("/drives/") {
        ("drives", "drive_id")
    } else {
        ("network-interfaces", "iface_id")
    };
    let id = path.rsplit('/').next().unwrap_or("");
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
    let list = array_mut(&mut vm.config, key);
    list.retain(|d| d[id_field].as_str() != Some(id));
    list.push(body);
    no_content()
}

/// `PUT /actions`: start, Ctrl-Alt-Del, metrics.
fn action(vm: &mut Vm, started: bool, body: &Value) -> Response {
    match body["action_type"].as_str() {
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
            exit_soon(20);
            no_content()
        }
        Some("FlushMetrics") => no_content(),
        _ => fault(
            "An error occurred when deserializing the json body of a request: unknown action_type.",
        ),
    }
}

/// `PATCH /vm`: pause and resume.
fn patch_vm(vm: &mut Vm, started: bool, body: &Value) -> Response {
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

fn snapshot_load(vm: &mut Vm, started: bool, body: &Value) -> Response {
    if started || !vm.config.as_object().is_none_or(|c| c.is_empty()) {
        return fault(
            "Loading a microVM snapshot not allowed after configuring boot-specific resources.",
        );
    }
    match loaded_config(body) {
        Ok(config) => vm.config = config,
        Err(message) => return fault(&message),
    }
    println!("FAKE-GUEST RESTORED on serial\r");
    vm.state = if body["resume_vm"].as_bool() == Some(true) {
        State::Running
    } else {
        State::Paused
    };
    no_content()
}

/// The configuration a snapshot load brings back: the state file's, with
/// the network overrides applied, once its memory file and drives open;
/// else FC's message.
fn loaded_config(body: &Value) -> Result<Value, String> {
    let state_path = body["snapshot_path"].as_str().unwrap_or("");
    let mem_path = body["mem_backend"]["backend_path"]
        .as_str()
        .or(body["mem_file_path"].as_str())
        .unwrap_or("");
    let doc = match std::fs::read(state_path).map(|b| serde_json::from_slice::<Value>(&b)) {
        Ok(Ok(doc)) => doc,
        _ => {
            return Err(format!(
                "Load microVM snapshot error: Cannot restore microvm state: cannot read {state_path}"
            ));
        }
    };
    if !Path::new(mem_path).exists() {
        return Err(format!(
            "Load microVM snapshot error: Cannot restore microvm memory: cannot open {mem_path}"
        ));
    }
    let mut config = doc["config"].clone();
    apply_network_overrides(&mut config, body)?;
    check_drives(&config)?;
    Ok(config)
}

fn apply_network_overrides(config: &mut Value, body: &Value) -> Result<(), String> {
    for o in body["network_overrides"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let iface = o["iface_id"].as_str().unwrap_or("");
        let interface = config["network-interfaces"]
            .as_array_mut()
            .and_then(|list| {
                list.iter_mut()
                    .find(|n| n["iface_id"].as_str() == Some(iface))
            });
        let Some(n) = interface else {
            return Err(format!(
                "Load microVM snapshot error: Invalid network override: no interface {iface}"
            ));
        };
        n["host_dev_name"] = o["host_dev_name"].clone();
    }
    Ok(())
}

/// Firecracker reopens every drive at the path its state names.
fn check_drives(config: &Value) -> Result<(), String> {
    for drive in config["drives"].as_array().cloned().unwrap_or_default() {
        let path = drive["path_on_host"].as_str().unwrap_or("");
        if std::fs::File::open(path).is_err() {
            return Err(format!(
                "Load microVM snapshot error: Cannot restore devices: Block(BackingFile(Os {{ code: 2, kind: NotFound, message: \"No such file or directory\" }}, \"{path}\"))"
            ));
        }
    }
    Ok(())
}

/// `--config-file`: Firecracker builds and boots the VM of the file as it
/// starts, with the API socket already bound. Each section goes through the
/// same handler, faults and body checks as its pre-boot call, then
/// `InstanceStart` ([`cocoon_testkit::fc_config::calls`]). FC's error on a
/// refusal.
pub async fn build_from_config_file(fake: &Fake, file: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("ReadConfigFile({e})"))?;
    let doc: Value =
        serde_json::from_str(&text).map_err(|e| format!("ParseFromJson(InvalidJson({e}))"))?;
    let calls = cocoon_testkit::fc_config::calls(&doc)
        .map_err(|e| format!("ParseFromJson(InvalidJson({e}))"))?;
    for (path, body) in calls {
        let uri: axum::http::Uri = path.parse().expect("a config section's path");
        let answer = fake.handle(Method::PUT, uri, body.to_string().into()).await;
        if !answer.status().is_success() {
            let body = axum::body::to_bytes(answer.into_body(), usize::MAX)
                .await
                .unwrap_or_default();
            let fault: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let message = fault["fault_message"].as_str().unwrap_or("refused");
            return Err(format!("BuildFromJson({path}: {message})"));
        }
    }
    Ok(())
}
