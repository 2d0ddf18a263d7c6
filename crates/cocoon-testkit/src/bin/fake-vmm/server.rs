//! The path every API request takes before the VMM-specific handlers: the
//! request logs tests read, the fault injection they configure
//! (`COCOON_FAKE_VMM_FAULTS`), and the body checks both VMMs make before
//! they look at a request.

use std::path::Path;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Value, json};

use crate::bodies;
use crate::reply::{fc_fault, json_body};
use crate::state::{Fake, Flavor};

enum Fault {
    None,
    Delay(u64),
    Error(u16, String),
    Die,
    Hang,
    ApplyThenHang,
    ApplyThenDie,
}

impl Fault {
    /// The fault a matching rule of the faults file names.
    fn from_rule(rule: &Value) -> Fault {
        match rule["action"].as_str() {
            Some("delay") => Fault::Delay(rule["ms"].as_u64().unwrap_or(0)),
            Some("error") => Fault::Error(
                rule["status"].as_u64().map_or(500, |status| {
                    u16::try_from(status).expect("a fault's status is an HTTP status")
                }),
                rule["body"].as_str().unwrap_or("").to_string(),
            ),
            Some("die") => Fault::Die,
            Some("hang") => Fault::Hang,
            Some("apply_then_hang") => Fault::ApplyThenHang,
            Some("apply_then_die") => Fault::ApplyThenDie,
            _ => Fault::None,
        }
    }
}

/// Appends one line to a test's log file, if it can.
fn append_line(log: &Path, line: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = writeln!(f, "{line}");
    }
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
            return Fault::from_rule(&rule);
        }
        Fault::None
    }

    fn log_request(&self, method: &Method, path: &str, body: &[u8]) {
        if let Some(log) = &self.requests {
            append_line(log, &format!("{method} {path}"));
        }
        if let Some(log) = &self.bodies {
            let compact = serde_json::from_slice::<Value>(body)
                .map(|v| v.to_string())
                .unwrap_or_default();
            append_line(log, &format!("{method} {path} {compact}"));
        }
    }

    pub async fn handle(&self, method: Method, uri: Uri, body: Bytes) -> Response {
        let path = uri.path().to_string();
        self.log_request(&method, &path, &body);
        match self.next_fault(&method, &path) {
            Fault::None => {}
            Fault::Delay(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Fault::Error(status, body) => {
                return json_body(StatusCode::from_u16(status).unwrap(), body);
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

    /// Bodies are deserialized first, as the real VMMs do: FC refuses
    /// unknown and mistyped fields, CH mistyped ones. The refusal, if any.
    fn refuse_body(&self, method: &Method, path: &str, body: &[u8]) -> Option<Response> {
        match self.flavor {
            Flavor::Firecracker => bodies::fc(method.as_str(), path, body).err().map(|e| {
                fc_fault(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "An error occurred when deserializing the json body of a request: {e}."
                    ),
                )
            }),
            Flavor::CloudHypervisor => bodies::ch(method.as_str(), path, body).err().map(|e| {
                json_body(
                    StatusCode::BAD_REQUEST,
                    serde_json::to_string(&["Failed to deserialize JSON", &e.to_string()]).unwrap(),
                )
            }),
        }
    }

    async fn dispatch(&self, method: &Method, path: &str, body: &[u8]) -> Response {
        if !body.is_empty()
            && let Some(refusal) = self.refuse_body(method, path, body)
        {
            return refusal;
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
}
