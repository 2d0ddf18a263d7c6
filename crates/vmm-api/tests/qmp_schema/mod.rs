//! QEMU's QAPI introspection (the `return` of `query-qmp-schema`, kept in
//! `spec/qemu/`), read as a type checker for JSON values.
//!
//! Every entity has a `meta-type`: `command` and `event` name their
//! argument (and result) types; types are `builtin` (`str`, `int`, ...),
//! `enum`, `array` (`element-type`), `alternate` (one of several types) or
//! `object`, whose members are optional when they carry a `default` key and
//! which may be a union (a `tag` member whose value picks `variants`, whose
//! members are added). Type names other than builtins are numbers, numbered
//! per build: they are only ever resolved, never written down.

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::{Map, Value, json};

pub struct Schema {
    entities: HashMap<String, Value>,
}

/// Problems found, each with the path of the value it is about.
pub type Problems = Vec<String>;

impl Schema {
    pub fn load(file: &str) -> Schema {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("spec/qemu")
            .join(file);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let all: Vec<Value> = serde_json::from_str(&text).unwrap();
        let entities = all
            .into_iter()
            .map(|e| (e["name"].as_str().unwrap().to_string(), e))
            .collect();
        Schema { entities }
    }

    fn entity(&self, name: &str) -> &Value {
        self.entities
            .get(name)
            .unwrap_or_else(|| panic!("type {name} is not in the schema"))
    }

    /// A command or event entity, if the schema has one by that name.
    pub fn lookup(&self, meta_type: &str, name: &str) -> Option<&Value> {
        self.entities
            .get(name)
            .filter(|e| e["meta-type"] == meta_type)
    }

    /// The type of `member` of object type `ty` (no variants).
    pub fn member_type(&self, ty: &str, member: &str) -> String {
        self.entity(ty)["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == member)
            .and_then(|m| m["type"].as_str())
            .unwrap_or_else(|| panic!("{ty} has no member {member}"))
            .to_string()
    }

    /// The values of enum type `ty`.
    pub fn enum_values(&self, ty: &str) -> Vec<String> {
        let entity = self.entity(ty);
        assert_eq!(entity["meta-type"], "enum", "{ty}");
        entity["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// The members of object type `ty` as they apply to `value`: its own,
    /// and those of the variant its tag member picks.
    fn members(&self, ty: &str, value: &Map<String, Value>) -> Vec<Value> {
        let entity = self.entity(ty);
        let mut members = entity["members"].as_array().cloned().unwrap_or_default();
        if let Some(tag) = entity["tag"].as_str() {
            let case = value.get(tag).and_then(Value::as_str);
            let variant = entity["variants"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| Some(v["case"].as_str().unwrap()) == case);
            if let Some(variant) = variant {
                members.extend(self.members(variant["type"].as_str().unwrap(), value));
            }
        }
        members
    }

    /// Checks `value` as an instance of type `ty`. With `complete`, every
    /// required member of every object must be there (what a command sends);
    /// without, only what is there is checked (the fields a result names).
    pub fn check(&self, ty: &str, value: &Value, path: &str, complete: bool) -> Problems {
        let mut problems = Vec::new();
        self.check_into(ty, value, path, complete, &mut problems);
        problems
    }

    fn check_into(&self, ty: &str, value: &Value, path: &str, complete: bool, out: &mut Problems) {
        let entity = self.entity(ty);
        let mut wrong = |expected: &str| out.push(format!("{path}: {value} is not {expected}"));
        match entity["meta-type"].as_str().unwrap() {
            "builtin" => {
                let json_type = entity["json-type"].as_str().unwrap();
                let fits = match json_type {
                    "string" => value.is_string(),
                    "int" => value.is_i64() || value.is_u64(),
                    "number" => value.is_number(),
                    "boolean" => value.is_boolean(),
                    "null" => value.is_null(),
                    "value" => true,
                    other => panic!("unknown builtin json-type {other}"),
                };
                if !fits {
                    wrong(&format!("a {json_type}"));
                }
            }
            "enum" => {
                let values = self.enum_values(ty);
                if !value
                    .as_str()
                    .is_some_and(|v| values.iter().any(|x| x == v))
                {
                    wrong(&format!("one of {values:?}"));
                }
            }
            "array" => match value.as_array() {
                Some(items) => {
                    let element = entity["element-type"].as_str().unwrap();
                    for (i, item) in items.iter().enumerate() {
                        self.check_into(element, item, &format!("{path}[{i}]"), complete, out);
                    }
                }
                None => wrong("an array"),
            },
            "alternate" => {
                let fits = entity["members"].as_array().unwrap().iter().any(|m| {
                    self.check(m["type"].as_str().unwrap(), value, path, complete)
                        .is_empty()
                });
                if !fits {
                    wrong(&format!("any type of alternate {ty}"));
                }
            }
            "object" => match value.as_object() {
                Some(map) => self.check_object(ty, map, path, complete, out),
                None => wrong("an object"),
            },
            other => panic!("{ty} is a {other}, not a type"),
        }
    }

    fn check_object(
        &self,
        ty: &str,
        map: &Map<String, Value>,
        path: &str,
        complete: bool,
        out: &mut Problems,
    ) {
        let members = self.members(ty, map);
        for (key, item) in map {
            match members.iter().find(|m| m["name"] == key.as_str()) {
                Some(member) => self.check_into(
                    member["type"].as_str().unwrap(),
                    item,
                    &format!("{path}.{key}"),
                    complete,
                    out,
                ),
                None => out.push(format!("{path}.{key}: no such member in the schema")),
            }
        }
        if complete {
            for member in members.iter().filter(|m| m.get("default").is_none()) {
                let name = member["name"].as_str().unwrap();
                if !map.contains_key(name) {
                    out.push(format!("{path}.{name}: required by the schema, not sent"));
                }
            }
        }
    }

    /// An instance of type `ty`: every member (`full`) or only the required
    /// ones, each a value of its type (enums and unions take their first).
    pub fn sample(&self, ty: &str, full: bool, depth: usize) -> Value {
        let entity = self.entity(ty);
        match entity["meta-type"].as_str().unwrap() {
            "builtin" => match entity["json-type"].as_str().unwrap() {
                "string" => json!("sample"),
                "int" => json!(7),
                "number" => json!(1.5),
                "boolean" => json!(true),
                "null" => Value::Null,
                _ => json!({}),
            },
            "enum" => json!(self.enum_values(ty)[0]),
            "array" if depth > 6 => json!([]),
            "array" => {
                json!([self.sample(entity["element-type"].as_str().unwrap(), full, depth + 1)])
            }
            "alternate" => {
                let first = entity["members"][0]["type"].as_str().unwrap();
                self.sample(first, full, depth + 1)
            }
            "object" => self.sample_object(ty, full, depth),
            other => panic!("{ty} is a {other}, not a type"),
        }
    }

    fn sample_object(&self, ty: &str, full: bool, depth: usize) -> Value {
        let entity = self.entity(ty);
        let mut map = Map::new();
        if let Some(tag) = entity["tag"].as_str() {
            map.insert(tag.into(), entity["variants"][0]["case"].clone());
        }
        if depth > 6 {
            return Value::Object(map);
        }
        for member in self.members(ty, &map.clone()) {
            let name = member["name"].as_str().unwrap();
            if (full || member.get("default").is_none()) && !map.contains_key(name) {
                let sample = self.sample(member["type"].as_str().unwrap(), full, depth + 1);
                map.insert(name.into(), sample);
            }
        }
        Value::Object(map)
    }
}
