//! Cloud Hypervisor's REST API (`/api/v1/…`, recorded from CH v53.0): one
//! function per endpoint, with CH's state checks, error chains and status
//! codes, over the shared VM state.

use std::path::Path;

use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use crate::console::{open_pty, serve_serial_socket};
use crate::reply::{ch_error, no_content, ok_json};
use crate::state::{Fake, State, Vm, array_mut, exit_soon};

impl Fake {
    pub async fn cloud_hypervisor(&self, method: &Method, path: &str, body: Value) -> Response {
        let Some(op) = path.strip_prefix("/api/v1/") else {
            return ch_error(StatusCode::NOT_FOUND, &[]);
        };
        let mut vm = self.vm.lock().await;
        let vm: &mut Vm = &mut vm;
        match (method.as_str(), op) {
            ("GET", "vmm.ping") => ok_json(
                json!({"build_version": "v53.0.0-fake", "version": "53.0.0", "pid": std::process::id(), "features": ["kvm"]}),
            ),
            ("PUT", "vmm.shutdown") => {
                exit_soon(10);
                no_content()
            }
            ("GET", "vm.info") => info(vm),
            ("GET", "vm.counters") => match vm.state {
                State::Running | State::Paused => {
                    ok_json(json!({"_disk0": {"read_bytes": 0, "write_bytes": 0}}))
                }
                _ => not_running("The VM counters are not available"),
            },
            ("PUT", "vm.create") => create(vm, body),
            ("PUT", "vm.boot") => boot(vm),
            ("PUT", "vm.pause") => switch(
                vm,
                State::Running,
                State::Paused,
                "The VM could not be paused",
                "pause",
            ),
            ("PUT", "vm.resume") => switch(
                vm,
                State::Paused,
                State::Running,
                "The VM could not resume",
                "resume",
            ),
            ("PUT", "vm.shutdown") => match vm.state {
                State::Running | State::Paused | State::Created => {
                    vm.state = State::Shutdown;
                    no_content()
                }
                _ => not_running("The VM could not shutdown"),
            },
            ("PUT", "vm.power-button") => self.power_button(vm),
            ("PUT", "vm.snapshot") => snapshot(vm, &body),
            ("PUT", "vm.restore") => restore(vm, &body),
            ("PUT", "vm.add-disk") | ("PUT", "vm.add-net") => add_device(vm, op, body),
            ("PUT", "vm.add-fs") => add_fs(vm, body),
            ("PUT", "vm.add-device") => add_vfio(vm, body),
            ("PUT", "vm.remove-device") => remove_device(vm, &body),
            ("PUT", "vm.resize") => resize(vm, &body),
            _ => ch_error(StatusCode::NOT_FOUND, &[]),
        }
    }

    fn power_button(&self, vm: &mut Vm) -> Response {
        match vm.state {
            // The fake guest honours the button at once, as an ACPI-aware guest would.
            State::Running => {
                vm.state = State::Shutdown;
                if self.exits_on_poweroff {
                    exit_soon(20);
                }
                no_content()
            }
            _ => not_running("Error triggering power button"),
        }
    }
}

fn state_name(s: State) -> &'static str {
    match s {
        State::NotCreated | State::Created => "Created",
        State::Running => "Running",
        State::Paused => "Paused",
        State::Shutdown => "Shutdown",
    }
}

/// CH's refusal of a state change its state machine does not allow.
fn transition(top: &str, verb: &str, from: State, to: &str) -> Response {
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
}

fn not_running(top: &str) -> Response {
    ch_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        &[top, "VM is not running"],
    )
}

fn info(vm: &Vm) -> Response {
    match vm.state {
        State::NotCreated => ch_error(
            StatusCode::NOT_FOUND,
            &["The VM info is not available", "VM is not created"],
        ),
        s => ok_json(
            json!({"config": vm.config, "state": state_name(s), "memory_actual_size": vm.config["memory"]["size"]}),
        ),
    }
}

fn create(vm: &mut Vm, body: Value) -> Response {
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

fn boot(vm: &mut Vm) -> Response {
    match vm.state {
        State::NotCreated => ch_error(
            StatusCode::NOT_FOUND,
            &["The VM could not boot", "VM is not created"],
        ),
        State::Created | State::Shutdown => {
            vm.state = State::Running;
            no_content()
        }
        s => transition("The VM could not boot", "boot", s, "Running"),
    }
}

/// Pause and resume: `from` → `to`, refused as CH refuses them otherwise.
fn switch(vm: &mut Vm, from: State, to: State, top: &str, verb: &str) -> Response {
    match vm.state {
        s if s == from => {
            vm.state = to;
            no_content()
        }
        State::NotCreated | State::Shutdown => not_running(top),
        s => transition(top, verb, s, state_name(to)),
    }
}

fn snapshot(vm: &Vm, body: &Value) -> Response {
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

fn restore(vm: &mut Vm, body: &Value) -> Response {
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
            reopen_consoles(&mut vm.config);
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

/// Consoles come back as a fresh process opens them.
fn reopen_consoles(config: &mut Value) {
    if config["console"]["mode"] == "Pty" {
        let (_master, path) = open_pty();
        config["console"]["file"] = json!(path);
    }
    if config["serial"]["mode"] == "Tty" {
        println!("FAKE-GUEST RESTORED on serial\r");
    }
    if let Some(socket) = config["serial"]["socket"]
        .as_str()
        .filter(|_| config["serial"]["mode"] == "Socket")
    {
        serve_serial_socket(socket.into(), "FAKE-GUEST RESTORED on serial");
    }
}

fn add_device(vm: &mut Vm, op: &str, body: Value) -> Response {
    match vm.state {
        State::Running | State::Paused => {
            let kind = if op == "vm.add-disk" { "disks" } else { "net" };
            let list = vm.config[kind].as_array().map_or(0, Vec::len);
            let id = body["id"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("_{kind}{list}"));
            let mut device = body;
            device["id"] = json!(id);
            array_mut(&mut vm.config, kind).push(device);
            ok_json(json!({"id": id, "bdf": format!("0000:00:{:02x}.0", 6 + list)}))
        }
        _ => not_running(if op == "vm.add-disk" {
            "The disk could not be added to the VM"
        } else {
            "The network device could not be added to the VM"
        }),
    }
}

/// `vm.add-fs` as CH v53 does it: the new configuration must validate
/// (vhost-user needs shared memory or huge pages; ids are unique), then the
/// device connects to the vhost-user socket (virtiofsd's).
fn add_fs(vm: &mut Vm, body: Value) -> Response {
    const FAILED: &str = "The virtio-fs device could not be added to the VM";
    if !matches!(vm.state, State::Running | State::Paused) {
        return not_running(FAILED);
    }
    let memory = &vm.config["memory"];
    if memory["shared"] != true && memory["hugepages"] != true {
        return ch_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &[
                FAILED,
                "Invalid configuration",
                "Using vhost-user requires using shared memory or huge pages",
            ],
        );
    }
    let list = vm.config["fs"].as_array().map_or(0, Vec::len);
    let id = body["id"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("_fs{list}"));
    let taken = ["disks", "net", "fs", "devices"].iter().any(|kind| {
        vm.config[*kind]
            .as_array()
            .is_some_and(|l| l.iter().any(|d| d["id"] == id.as_str()))
    });
    if taken {
        return ch_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &[
                FAILED,
                "Invalid configuration",
                &format!("Duplicated device id: {id}"),
            ],
        );
    }
    let socket = body["socket"].as_str().unwrap_or_default();
    if let Err(e) = std::os::unix::net::UnixStream::connect(socket) {
        return ch_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &[
                FAILED,
                "Failed to create virtio-fs device",
                &format!("Failed connecting the backend after trying for 1 minute: {e}"),
            ],
        );
    }
    let mut device = body;
    device["id"] = json!(id);
    array_mut(&mut vm.config, "fs").push(device);
    ok_json(json!({"id": id, "bdf": format!("0000:00:{:02x}.0", 0x10 + list)}))
}

/// `vm.add-device` as CH v53 does it: the device's IOMMU group (of its
/// sysfs directory) must be there for VFIO to open it.
fn add_vfio(vm: &mut Vm, body: Value) -> Response {
    const FAILED: &str = "The device could not be added to the VM";
    if !matches!(vm.state, State::Running | State::Paused) {
        return not_running(FAILED);
    }
    let path = body["path"].as_str().unwrap_or_default();
    let group = Path::new(path).join("iommu_group");
    if let Err(e) = std::fs::read_link(&group) {
        return ch_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &[
                FAILED,
                "Failed to create VFIO device",
                &format!("Failed to open VFIO group {}: {e}", group.display()),
            ],
        );
    }
    let list = vm.config["devices"].as_array().map_or(0, Vec::len);
    let id = body["id"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("_vfio{list}"));
    let mut device = body;
    device["id"] = json!(id);
    array_mut(&mut vm.config, "devices").push(device);
    ok_json(json!({"id": id, "bdf": format!("0000:00:{:02x}.0", 0x18 + list)}))
}

fn remove_device(vm: &mut Vm, body: &Value) -> Response {
    let id = body["id"].as_str().unwrap_or("").to_string();
    let mut found = false;
    for kind in ["disks", "net", "fs", "devices"] {
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

fn resize(vm: &mut Vm, body: &Value) -> Response {
    match vm.state {
        State::Running | State::Paused => {
            if let Some(n) = body["desired_vcpus"].as_u64() {
                vm.config["cpus"]["boot_vcpus"] = json!(n);
            }
            // ACPI hot-plug: the boot size stays, the rest is "hotplugged".
            if let Some(n) = body["desired_ram"].as_u64() {
                let size = vm.config["memory"]["size"].as_u64().unwrap_or(0);
                vm.config["memory"]["hotplugged_size"] = json!(n.saturating_sub(size));
            }
            if let Some(n) = body["desired_balloon"].as_u64()
                && vm.config["balloon"].is_object()
            {
                vm.config["balloon"]["size"] = json!(n);
            }
            no_content()
        }
        _ => not_running("The VM could not be resized"),
    }
}
