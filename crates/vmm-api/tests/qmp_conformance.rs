//! The QMP client against the QAPI schema that QEMU itself reports
//! (`spec/qemu/`, written by `spec/qemu/regen.sh`).
//!
//! For every command the client can send (`qmp::COMMANDS`): the command
//! exists; its arguments, as the client serialises them with every field
//! set and with only the required ones, name only members of the schema,
//! with values of their types, and include every member the schema requires.
//! For every result and typed event: every field the client names exists,
//! with a value of its type (checked on an instance with every field set:
//! the struct literals below must name each field, so a new field cannot
//! skip the check); what the schema requires is enough to parse; and an
//! instance with every member the schema has parses and writes back
//! unchanged. The enums know exactly the schema's values. A negative test
//! checks the checker.

mod qmp_schema;

use std::collections::BTreeSet;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use vmm_api::qmp::*;

use qmp_schema::{Problems, Schema};

const FIXTURE: &str = "qmp-schema-10.0.2.json";

/// Arguments of `C` as sent: a unit struct sends none, that is `{}`.
fn arguments<C: Serialize>(command: &C) -> Value {
    match serde_json::to_value(command).unwrap() {
        Value::Null => json!({}),
        other => other,
    }
}

/// Problems of command `C` sent as each of `instances`.
fn command_problems<C: Command>(schema: &Schema, instances: &[C]) -> Problems {
    let Some(command) = schema.lookup("command", C::NAME) else {
        return vec![format!("{}: no such command in the schema", C::NAME)];
    };
    let arg_type = command["arg-type"].as_str().unwrap();
    instances
        .iter()
        .flat_map(|c| schema.check(arg_type, &arguments(c), C::NAME, true))
        .collect()
}

/// Problems of `T` as the instance of schema type `ty` named `what`;
/// `filled` names every field `T` has.
fn result_problems<T>(schema: &Schema, ty: &str, what: &str, filled: &T) -> Problems
where
    T: Serialize + DeserializeOwned,
{
    let mut problems = schema.check(ty, &serde_json::to_value(filled).unwrap(), what, false);
    let minimal = schema.sample(ty, false, 0);
    if let Err(e) = serde_json::from_value::<T>(minimal.clone()) {
        problems.push(format!(
            "{what}: needs more than the schema requires ({e}): {minimal}"
        ));
    }
    let full = schema.sample(ty, true, 0);
    match serde_json::from_value::<T>(full.clone()) {
        Ok(parsed) if serde_json::to_value(&parsed).unwrap() == full => {}
        Ok(_) => problems.push(format!(
            "{what}: a round trip lost or changed data of {full}"
        )),
        Err(e) => problems.push(format!(
            "{what}: the schema's instance does not parse ({e}): {full}"
        )),
    }
    problems
}

/// Problems of `C`'s result type, `filled` naming every field.
fn output_problems<C: Command>(schema: &Schema, filled: &C::Output) -> Problems
where
    C::Output: Serialize,
{
    match schema.lookup("command", C::NAME) {
        Some(command) => {
            let ret_type = command["ret-type"].as_str().unwrap();
            result_problems(schema, ret_type, &format!("{} result", C::NAME), filled)
        }
        None => vec![format!("{}: no such command in the schema", C::NAME)],
    }
}

fn event_problems<T: Serialize + DeserializeOwned>(
    schema: &Schema,
    name: &str,
    filled: &T,
) -> Problems {
    match schema.lookup("event", name) {
        Some(event) => result_problems(schema, event["arg-type"].as_str().unwrap(), name, filled),
        None => vec![format!("{name}: no such event in the schema")],
    }
}

fn channel() -> Vec<MigrationChannel> {
    vec![MigrationChannel::file(Path::new("/var/lib/vm/mem"))]
}

/// Every command with its arguments every way the client sends them.
fn all_command_problems(schema: &Schema, checked: &mut BTreeSet<&'static str>) -> Problems {
    let mut problems = Vec::new();
    let mut add = |name: &'static str, found: Problems| {
        checked.insert(name);
        problems.extend(found);
    };
    let enable = Some(vec!["oob".to_string()]);
    add(
        QmpCapabilities::NAME,
        command_problems(
            schema,
            &[QmpCapabilities { enable }, QmpCapabilities { enable: None }],
        ),
    );
    add(QueryStatus::NAME, command_problems(schema, &[QueryStatus]));
    add(Stop::NAME, command_problems(schema, &[Stop]));
    add(Cont::NAME, command_problems(schema, &[Cont]));
    add(
        SystemPowerdown::NAME,
        command_problems(schema, &[SystemPowerdown]),
    );
    add(Quit::NAME, command_problems(schema, &[Quit]));
    add(
        QueryVersion::NAME,
        command_problems(schema, &[QueryVersion]),
    );
    let capabilities = MigrationCapability::KNOWN
        .iter()
        .map(|c| CapabilityState {
            capability: MigrationCapability::from(*c),
            state: true,
        })
        .collect();
    add(
        MigrateSetCapabilities::NAME,
        command_problems(schema, &[MigrateSetCapabilities { capabilities }]),
    );
    let every = MigrateSetParameters {
        max_bandwidth: Some(1 << 40),
        direct_io: Some(true),
        multifd_channels: Some(4),
    };
    add(
        MigrateSetParameters::NAME,
        command_problems(schema, &[every, MigrateSetParameters::default()]),
    );
    add(
        Migrate::NAME,
        command_problems(
            schema,
            &[Migrate {
                channels: channel(),
            }],
        ),
    );
    let incoming = |exit_on_error| MigrateIncoming {
        channels: channel(),
        exit_on_error,
    };
    add(
        MigrateIncoming::NAME,
        command_problems(schema, &[incoming(Some(false)), incoming(None)]),
    );
    add(
        QueryMigrate::NAME,
        command_problems(schema, &[QueryMigrate]),
    );
    add(
        MigrateCancel::NAME,
        command_problems(schema, &[MigrateCancel]),
    );
    add(
        Balloon::NAME,
        command_problems(schema, &[Balloon { value: 1 << 30 }]),
    );
    add(
        QueryBalloon::NAME,
        command_problems(schema, &[QueryBalloon]),
    );
    add(
        QueryCpusFast::NAME,
        command_problems(schema, &[QueryCpusFast]),
    );
    add(
        QueryMemorySizeSummary::NAME,
        command_problems(schema, &[QueryMemorySizeSummary]),
    );
    hot_plug_command_problems(schema, &mut add);
    problems
}

/// The hot-plug commands (`vm disk attach`/`detach`).
fn hot_plug_command_problems(schema: &Schema, add: &mut impl FnMut(&'static str, Problems)) {
    let node = |driver: &str, full: bool| BlockdevAdd {
        driver: driver.into(),
        node_name: "cocoon-disk-a".into(),
        filename: "/srv/a.raw".into(),
        read_only: full.then_some(true),
        cache: full.then_some(BlockdevCacheOptions { direct: Some(true) }),
    };
    add(
        BlockdevAdd::NAME,
        command_problems(
            schema,
            &[
                node("file", true),
                node("host_device", true),
                node("file", false),
            ],
        ),
    );
    let del = BlockdevDel {
        node_name: "cocoon-disk-a".into(),
    };
    add(BlockdevDel::NAME, command_problems(schema, &[del]));
    // The device's own properties (`drive`, `serial`) are not in the
    // schema (device_add takes any, checked by QEMU against the device):
    // the schema's members are checked here, the rest by the real-QEMU test.
    let device = DeviceAdd {
        driver: "virtio-blk-pci".into(),
        bus: Some("cocoon-hp0".into()),
        id: Some("cocoon-disk-a".into()),
        properties: Default::default(),
    };
    add(DeviceAdd::NAME, command_problems(schema, &[device]));
    let del = DeviceDel {
        id: "cocoon-disk-a".into(),
    };
    add(DeviceDel::NAME, command_problems(schema, &[del]));
    add(QueryBlock::NAME, command_problems(schema, &[QueryBlock]));
    let netdev = NetdevAdd {
        kind: "tap".into(),
        id: "cocoon-net-0a0b0c0d0e0f".into(),
        ifname: "tapABCDEFGH-1".into(),
        script: "no".into(),
        downscript: "no".into(),
        vhost: Some(true),
        queues: Some(2),
    };
    add(NetdevAdd::NAME, command_problems(schema, &[netdev]));
    let del = NetdevDel {
        id: "cocoon-net-0a0b0c0d0e0f".into(),
    };
    add(NetdevDel::NAME, command_problems(schema, &[del]));
    // `vm fs attach`/`detach`: a vhost-user chardev and its device.
    let chardev = ChardevAdd::unix_client("cocoon-fs-t", Path::new("/run/vfs.sock"));
    add(ChardevAdd::NAME, command_problems(schema, &[chardev]));
    let remove = ChardevRemove {
        id: "cocoon-fs-t".into(),
    };
    add(ChardevRemove::NAME, command_problems(schema, &[remove]));
    add(
        QueryChardev::NAME,
        command_problems(schema, &[QueryChardev]),
    );
    let list = QomList {
        path: "/machine/peripheral".into(),
    };
    add(QomList::NAME, command_problems(schema, &[list]));
    let get = QomGet {
        path: "/objects/mem".into(),
        property: "share".into(),
    };
    add(QomGet::NAME, command_problems(schema, &[get]));
}

#[test]
fn every_command_the_client_sends_matches_the_schema() {
    let schema = Schema::load(FIXTURE);
    let mut checked = BTreeSet::new();
    let problems = all_command_problems(&schema, &mut checked);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let sent: BTreeSet<&str> = COMMANDS.iter().copied().collect();
    assert_eq!(checked, sent, "every command the client sends is checked");
}

fn version() -> VersionInfo {
    VersionInfo {
        qemu: VersionTriple {
            major: 10,
            minor: 0,
            micro: 2,
        },
        package: "Debian".into(),
        extra: Default::default(),
    }
}

fn migration_info() -> MigrationInfo {
    MigrationInfo {
        status: Some(MigrationStatus::Completed),
        ram: Some(MigrationStats {
            transferred: 1,
            remaining: 0,
            total: 1,
            extra: Default::default(),
        }),
        total_time: Some(2),
        downtime: Some(0),
        setup_time: Some(1),
        error_desc: Some("none".into()),
        extra: Default::default(),
    }
}

#[test]
fn every_result_field_the_client_parses_matches_the_schema() {
    let schema = Schema::load(FIXTURE);
    let status = StatusInfo {
        running: true,
        status: RunState::Running,
        extra: Default::default(),
    };
    let mut problems = output_problems::<QueryStatus>(&schema, &status);
    problems.extend(output_problems::<QueryVersion>(&schema, &version()));
    problems.extend(output_problems::<QueryMigrate>(&schema, &migration_info()));
    let balloon = BalloonInfo {
        actual: 1 << 30,
        extra: Default::default(),
    };
    problems.extend(output_problems::<QueryBalloon>(&schema, &balloon));
    let memory = MemoryInfo {
        base_memory: 1 << 30,
        plugged_memory: Some(0),
        extra: Default::default(),
    };
    problems.extend(output_problems::<QueryMemorySizeSummary>(&schema, &memory));
    let cpu = CpuInfoFast {
        cpu_index: 0,
        extra: Default::default(),
    };
    problems.extend(output_problems::<QueryCpusFast>(&schema, &vec![cpu]));
    let block = BlockInfo {
        device: String::new(),
        qdev: Some("/machine/peripheral/cocoon-disk-a/virtio-backend".into()),
        inserted: Some(BlockDeviceInfo {
            file: "/srv/a.raw".into(),
            node_name: Some("cocoon-disk-a".into()),
            ro: false,
            extra: Default::default(),
        }),
        extra: Default::default(),
    };
    problems.extend(output_problems::<QueryBlock>(&schema, &vec![block]));
    let chardev = ChardevReturn {
        pty: Some("/dev/pts/3".into()),
        extra: Default::default(),
    };
    problems.extend(output_problems::<ChardevAdd>(&schema, &chardev));
    let info = ChardevInfo {
        label: "cocoon-fs-t".into(),
        filename: "unix:/run/vfs.sock".into(),
        extra: Default::default(),
    };
    problems.extend(output_problems::<QueryChardev>(&schema, &vec![info]));
    let property = ObjectPropertyInfo {
        name: "cocoon-net-0a0b0c0d0e0f".into(),
        kind: "child<virtio-net-pci>".into(),
        description: Some("d".into()),
        default_value: Some(json!(1)),
    };
    problems.extend(output_problems::<QomList>(&schema, &vec![property]));
    for empty in [
        output_problems::<QmpCapabilities>(&schema, &Empty {}),
        output_problems::<Stop>(&schema, &Empty {}),
        output_problems::<Cont>(&schema, &Empty {}),
        output_problems::<SystemPowerdown>(&schema, &Empty {}),
        output_problems::<Quit>(&schema, &Empty {}),
        output_problems::<MigrateSetCapabilities>(&schema, &Empty {}),
        output_problems::<MigrateSetParameters>(&schema, &Empty {}),
        output_problems::<Migrate>(&schema, &Empty {}),
        output_problems::<MigrateIncoming>(&schema, &Empty {}),
        output_problems::<MigrateCancel>(&schema, &Empty {}),
        output_problems::<Balloon>(&schema, &Empty {}),
        output_problems::<BlockdevAdd>(&schema, &Empty {}),
        output_problems::<BlockdevDel>(&schema, &Empty {}),
        output_problems::<DeviceAdd>(&schema, &Empty {}),
        output_problems::<DeviceDel>(&schema, &Empty {}),
        output_problems::<NetdevAdd>(&schema, &Empty {}),
        output_problems::<NetdevDel>(&schema, &Empty {}),
        output_problems::<ChardevRemove>(&schema, &Empty {}),
    ] {
        problems.extend(empty);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_typed_event_matches_the_schema() {
    let schema = Schema::load(FIXTURE);
    let shutdown = ShutdownEvent {
        guest: false,
        reason: "host-qmp-quit".into(),
        extra: Default::default(),
    };
    let mut problems = event_problems(&schema, "SHUTDOWN", &shutdown);
    let migration = MigrationEvent {
        status: MigrationStatus::Completed,
        extra: Default::default(),
    };
    problems.extend(event_problems(&schema, "MIGRATION", &migration));
    for name in Event::TYPED {
        if schema.lookup("event", name).is_none() {
            problems.push(format!("{name}: no such event in the schema"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_enums_know_exactly_the_schemas_values() {
    let schema = Schema::load(FIXTURE);
    let ret = |command: &str| {
        schema.lookup("command", command).unwrap()["ret-type"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let run_states = schema.enum_values(&schema.member_type(&ret("query-status"), "status"));
    assert_eq!(run_states, RunState::KNOWN, "RunState");
    let statuses = schema.enum_values(&schema.member_type(&ret("query-migrate"), "status"));
    assert_eq!(statuses, MigrationStatus::KNOWN, "MigrationStatus");
    // The capabilities: the client sets some, not all of them.
    let arg = schema
        .lookup("command", "migrate-set-capabilities")
        .unwrap()["arg-type"]
        .as_str()
        .unwrap()
        .to_string();
    let element = schema.member_type(&arg, "capabilities");
    let element = element.trim_start_matches('[').trim_end_matches(']');
    let capabilities = schema.enum_values(&schema.member_type(element, "capability"));
    for known in MigrationCapability::KNOWN {
        assert!(
            capabilities.iter().any(|c| c == known),
            "{known} is not a MigrationCapability"
        );
    }
}

/// A `migrate` whose author misspelt `channels`.
#[derive(Serialize)]
struct MisspeltMigrate {
    channel: Vec<MigrationChannel>,
}

impl Command for MisspeltMigrate {
    const NAME: &'static str = "migrate";
    type Output = Empty;
}

/// A result whose author misspelt `total-time`.
#[derive(Serialize, serde::Deserialize)]
struct MisspeltInfo {
    #[serde(rename = "totl-time", skip_serializing_if = "Option::is_none")]
    total_time: Option<i64>,
}

#[test]
fn the_checker_finds_misspelt_wrongly_typed_and_missing_members() {
    let schema = Schema::load(FIXTURE);
    let has = |problems: &Problems, needle: &str| {
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "no {needle:?} in {problems:?}"
        );
    };
    let misspelt = command_problems(&schema, &[MisspeltMigrate { channel: channel() }]);
    has(&misspelt, "migrate.channel: no such member");
    let ret = schema.lookup("command", "query-migrate").unwrap()["ret-type"]
        .as_str()
        .unwrap()
        .to_string();
    let info = MisspeltInfo {
        total_time: Some(1),
    };
    has(
        &result_problems(&schema, &ret, "query-migrate result", &info),
        "totl-time: no such member",
    );
    let arg = |name: &str| {
        schema.lookup("command", name).unwrap()["arg-type"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let balloon = schema.check(&arg("balloon"), &json!({"value": "1G"}), "balloon", true);
    has(&balloon, "balloon.value: \"1G\" is not a int");
    has(
        &schema.check(&arg("balloon"), &json!({}), "balloon", true),
        "balloon.value: required",
    );
    let caps = json!({"capabilities": [{"capability": "mapped_ram", "state": true}]});
    has(
        &schema.check(&arg("migrate-set-capabilities"), &caps, "caps", true),
        "is not one of",
    );
    // A file address without its required offset, inside a union variant.
    let migrate = json!({"channels": [{"channel-type": "main", "addr": {"transport": "file", "filename": "/m"}}]});
    has(
        &schema.check(&arg("migrate"), &migrate, "migrate", true),
        "addr.offset: required",
    );
    let alien = json!({"channels": [{"channel-type": "main", "addr": {"transport": "file", "filename": "/m", "offset": 0, "path": "/x"}}]});
    has(
        &schema.check(&arg("migrate"), &alien, "migrate", true),
        "addr.path: no such member",
    );
    struct NoSuch;
    impl Serialize for NoSuch {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_unit()
        }
    }
    impl Command for NoSuch {
        const NAME: &'static str = "query-stauts";
        type Output = Empty;
    }
    has(
        &command_problems(&schema, &[NoSuch]),
        "query-stauts: no such command",
    );
}
