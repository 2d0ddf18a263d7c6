//! Firecracker's `--config-file` as the pre-boot calls it stands for: the
//! fake Firecracker builds its VM through them (each logged, checked and
//! open to faults as that call), and tests compare them with what `vm
//! debug` prints.

use serde_json::{Value, json};

/// The (path, body) `PUT`s a config file makes, in Firecracker's pre-boot
/// order, ending with `InstanceStart`. v1.16.1 requires `boot-source` and
/// `drives` and ignores top-level keys it does not know; its error if a
/// required one is missing.
pub fn calls(doc: &Value) -> Result<Vec<(String, Value)>, String> {
    for required in ["boot-source", "drives"] {
        if doc.get(required).is_none() {
            return Err(format!("missing field `{required}`"));
        }
    }
    let mut calls = Vec::new();
    for key in ["machine-config", "boot-source"] {
        if let Some(body) = doc.get(key) {
            calls.push((format!("/{key}"), body.clone()));
        }
    }
    for (key, id) in [("drives", "drive_id"), ("network-interfaces", "iface_id")] {
        for body in doc[key].as_array().into_iter().flatten() {
            let name = body[id].as_str().unwrap_or_default();
            calls.push((format!("/{key}/{name}"), body.clone()));
        }
    }
    for key in ["balloon", "entropy", "vsock"] {
        if let Some(body) = doc.get(key) {
            calls.push((format!("/{key}"), body.clone()));
        }
    }
    calls.push(("/actions".into(), json!({"action_type": "InstanceStart"})));
    Ok(calls)
}

/// The config file a `vm debug` script writes (its `cat > … <<'EOF'`
/// here-document), parsed.
pub fn printed(script: &str) -> Value {
    let text: Vec<&str> = script
        .lines()
        .skip_while(|l| !(l.starts_with("cat > ") && l.ends_with("<<'EOF'")))
        .skip(1)
        .take_while(|l| *l != "EOF")
        .collect();
    serde_json::from_str(&text.join("\n")).expect("the script writes a JSON config file")
}
