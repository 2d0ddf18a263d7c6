//! The models and clients against the API specs kept in `spec/` (where each
//! came from, at which version: `spec/README.md`).
//!
//! The specs carry almost no examples, so each schema's example is built from
//! the spec itself: every property filled with its `example`, `default`, first
//! `enum` value, or a value of its type, `$ref`s followed. Every model must
//! read that document and write it back unchanged (unknown fields kept), and
//! every field a model names must exist in the spec.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use vmm_api::{ch, fc};

fn reference(file: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("spec")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap()
}

struct Spec {
    doc: Value,
    /// `#/components/schemas/` (OpenAPI 3) or `#/definitions/` (Swagger 2).
    schemas: &'static str,
}

impl Spec {
    fn ch() -> Spec {
        Spec {
            doc: reference("cloud-hypervisor-v53.0-openapi.yaml"),
            schemas: "#/components/schemas/",
        }
    }

    fn fc() -> Spec {
        Spec {
            doc: reference("firecracker-v1.16.1-swagger.yaml"),
            schemas: "#/definitions/",
        }
    }

    fn schema(&self, name: &str) -> &Value {
        let path = self
            .schemas
            .trim_start_matches("#/")
            .split('/')
            .filter(|s| !s.is_empty());
        let mut node = &self.doc;
        for part in path {
            node = &node[part];
        }
        let schema = &node[name];
        assert!(!schema.is_null(), "schema {name} not in the spec");
        schema
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => self.resolve(self.schema(r.trim_start_matches(self.schemas))),
            None => schema,
        }
    }

    /// A document with every property of `schema` set.
    fn sample(&self, schema: &Value, depth: usize) -> Value {
        let schema = self.resolve(schema);
        if let Some(example) = schema.get("example") {
            return example.clone();
        }
        if let Some(values) = schema.get("enum").and_then(Value::as_array) {
            return values[0].clone();
        }
        if let Some(default) = schema.get("default") {
            return default.clone();
        }
        match schema.get("type").and_then(Value::as_str) {
            Some("string") => json!("sample"),
            Some("integer") => json!(7),
            Some("number") => json!(1.5),
            Some("boolean") => json!(true),
            Some("array") if depth < 4 => json!([self.sample(&schema["items"], depth + 1)]),
            Some("array") => json!([]),
            _ => {
                let mut map = Map::new();
                if depth < 4
                    && let Some(props) = schema.get("properties").and_then(Value::as_object)
                {
                    for (key, prop) in props {
                        map.insert(key.clone(), self.sample(prop, depth + 1));
                    }
                }
                Value::Object(map)
            }
        }
    }

    fn properties(&self, name: &str) -> BTreeSet<String> {
        self.resolve(self.schema(name))
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn has_operation(&self, method: &str, path: &str) -> bool {
        !self.doc["paths"][path][method.to_ascii_lowercase()].is_null()
    }
}

/// Round trip of the spec sample, and every named field is a spec property.
fn conforms<T: Serialize + DeserializeOwned>(
    spec: &Spec,
    name: &str,
    strip_extra: impl Fn(&mut T),
) {
    let sample = spec.sample(spec.schema(name), 0);
    let mut model: T = serde_json::from_value(sample.clone())
        .unwrap_or_else(|e| panic!("{name}: the spec's sample does not parse: {e}\n{sample:#}"));
    assert_eq!(
        serde_json::to_value(&model).unwrap(),
        sample,
        "{name}: a round trip lost or changed data"
    );
    strip_extra(&mut model);
    let named = serde_json::to_value(&model).unwrap();
    let props = spec.properties(name);
    for key in named.as_object().unwrap().keys() {
        assert!(
            props.contains(key),
            "{name}.{key} is not a property of the spec (typo?)"
        );
    }
}

#[test]
fn cloud_hypervisor_models_match_the_spec() {
    let spec = Spec::ch();
    conforms::<ch::models::VmmPingResponse>(&spec, "VmmPingResponse", |m| m.extra.clear());
    conforms::<ch::models::VmInfo>(&spec, "VmInfo", |m| m.extra.clear());
    conforms::<ch::models::PciDeviceInfo>(&spec, "PciDeviceInfo", |m| m.extra.clear());
    conforms::<ch::models::DiskConfig>(&spec, "DiskConfig", |m| m.extra.clear());
    conforms::<ch::models::NetConfig>(&spec, "NetConfig", |m| m.extra.clear());
    conforms::<ch::models::FsConfig>(&spec, "FsConfig", |m| m.extra.clear());
    conforms::<ch::models::DeviceConfig>(&spec, "DeviceConfig", |m| m.extra.clear());
    conforms::<ch::models::VmResize>(&spec, "VmResize", |m| m.extra.clear());
    conforms::<ch::models::VmRemoveDevice>(&spec, "VmRemoveDevice", |m| m.extra.clear());
    conforms::<ch::models::VmSnapshotConfig>(&spec, "VmSnapshotConfig", |m| m.extra.clear());
    conforms::<ch::models::RestoreConfig>(&spec, "RestoreConfig", |m| m.extra.clear());
    conforms::<ch::models::VmCounters>(&spec, "VmCounters", |_| {});
    for state in ["Created", "Running", "Shutdown", "Paused"] {
        let parsed: ch::models::VmState = serde_json::from_value(json!(state)).unwrap();
        assert_eq!(parsed.as_str(), state);
    }
    let modes = spec.schema("MemoryRestoreMode")["enum"]
        .as_array()
        .unwrap()
        .clone();
    for mode in modes {
        serde_json::from_value::<ch::models::MemoryRestoreMode>(mode).unwrap();
    }
}

#[test]
fn firecracker_models_match_the_spec() {
    let spec = Spec::fc();
    conforms::<fc::models::InstanceInfo>(&spec, "InstanceInfo", |m| m.extra.clear());
    conforms::<fc::models::MachineConfiguration>(&spec, "MachineConfiguration", |m| {
        m.extra.clear()
    });
    conforms::<fc::models::BootSource>(&spec, "BootSource", |m| m.extra.clear());
    conforms::<fc::models::Drive>(&spec, "Drive", |m| m.extra.clear());
    conforms::<fc::models::NetworkInterface>(&spec, "NetworkInterface", |m| m.extra.clear());
    conforms::<fc::models::Balloon>(&spec, "Balloon", |m| m.extra.clear());
    conforms::<fc::models::BalloonUpdate>(&spec, "BalloonUpdate", |m| m.extra.clear());
    conforms::<fc::models::EntropyDevice>(&spec, "EntropyDevice", |m| m.extra.clear());
    conforms::<fc::models::Vsock>(&spec, "Vsock", |m| m.extra.clear());
    conforms::<fc::models::VsockOverride>(&spec, "VsockOverride", |m| m.extra.clear());
    conforms::<fc::models::InstanceActionInfo>(&spec, "InstanceActionInfo", |m| m.extra.clear());
    conforms::<fc::models::Vm>(&spec, "Vm", |m| m.extra.clear());
    conforms::<fc::models::SnapshotCreateParams>(&spec, "SnapshotCreateParams", |m| {
        m.extra.clear()
    });
    conforms::<fc::models::SnapshotLoadParams>(&spec, "SnapshotLoadParams", |m| m.extra.clear());
    conforms::<fc::models::MemoryBackend>(&spec, "MemoryBackend", |m| m.extra.clear());
    conforms::<fc::models::NetworkOverride>(&spec, "NetworkOverride", |m| m.extra.clear());
    conforms::<fc::models::FullVmConfiguration>(&spec, "FullVmConfiguration", |m| m.extra.clear());
    for action in spec.schema("InstanceActionInfo")["properties"]["action_type"]["enum"]
        .as_array()
        .unwrap()
    {
        serde_json::from_value::<fc::models::ActionType>(action.clone()).unwrap();
    }
}

/// The endpoints the engine needs (the VMM control issue's list).
const CH_REQUIRED: &[(&str, &str)] = &[
    ("GET", "/vmm.ping"),
    ("GET", "/vm.info"),
    ("PUT", "/vm.boot"),
    ("PUT", "/vm.shutdown"),
    ("PUT", "/vm.power-button"),
    ("PUT", "/vm.pause"),
    ("PUT", "/vm.resume"),
    ("PUT", "/vm.snapshot"),
    ("PUT", "/vm.restore"),
    ("PUT", "/vm.add-disk"),
    ("PUT", "/vm.add-net"),
    ("PUT", "/vm.add-fs"),
    ("PUT", "/vm.add-device"),
    ("PUT", "/vm.remove-device"),
    ("PUT", "/vm.resize"),
    ("GET", "/vm.counters"),
];

const FC_REQUIRED: &[(&str, &str)] = &[
    ("PUT", "/machine-config"),
    ("PUT", "/boot-source"),
    ("PUT", "/drives/{drive_id}"),
    ("PUT", "/network-interfaces/{iface_id}"),
    ("PUT", "/balloon"),
    ("PUT", "/entropy"),
    ("PUT", "/vsock"),
    ("PUT", "/actions"),
    ("PATCH", "/vm"),
    ("PUT", "/snapshot/create"),
    ("PUT", "/snapshot/load"),
    ("GET", "/"),
    ("GET", "/vm/config"),
];

#[test]
fn clients_cover_every_endpoint_the_engine_uses_and_only_spec_endpoints() {
    let (ch_spec, fc_spec) = (Spec::ch(), Spec::fc());
    for endpoint in CH_REQUIRED {
        assert!(
            ch::ENDPOINTS.contains(endpoint),
            "Cloud Hypervisor client lacks {endpoint:?}"
        );
    }
    for (method, path) in ch::ENDPOINTS {
        assert!(
            ch_spec.has_operation(method, path),
            "{method} {path} is not in the CH spec"
        );
    }
    for endpoint in FC_REQUIRED {
        assert!(
            fc::ENDPOINTS.contains(endpoint),
            "Firecracker client lacks {endpoint:?}"
        );
    }
    for (method, path) in fc::ENDPOINTS {
        assert!(
            fc_spec.has_operation(method, path),
            "{method} {path} is not in the FC spec"
        );
    }
}
