//! Typed API errors.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// What the VMM said when it refused a request, parsed from its error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmError {
    /// Cloud Hypervisor refused a state change: `InvalidStateTransition(from, to)`
    /// (or its newer wording, `invalid VM state transition: from to to`).
    InvalidStateTransition {
        from: String,
        to: String,
        messages: Vec<String>,
    },
    /// Cloud Hypervisor could not read the vCPU's nested-virtualisation state,
    /// which snapshots need; KVM on PVM hosts refuses it.
    NestedStateUnavailable { messages: Vec<String> },
    /// Cloud Hypervisor has no running VM (never booted, or already shut down).
    VmNotRunning { messages: Vec<String> },
    /// Firecracker's `{"fault_message": "..."}`.
    Fault { message: String },
    /// Any other body: Cloud Hypervisor's error chain, or raw text.
    Other { messages: Vec<String> },
}

impl VmmError {
    /// Parses an error body of either VMM.
    pub fn parse(body: &[u8]) -> VmmError {
        let text = String::from_utf8_lossy(body).trim().to_string();
        if let Ok(serde_json::Value::Object(map)) = serde_json::from_str(&text)
            && let Some(message) = map.get("fault_message").and_then(|m| m.as_str())
        {
            return VmmError::Fault {
                message: message.to_string(),
            };
        }
        // Cloud Hypervisor answers with the error chain as a JSON array of strings.
        let messages: Vec<String> = match serde_json::from_str::<Vec<String>>(&text) {
            // Some messages carry a Rust backtrace; it helps nobody reading an error.
            Ok(chain) => chain
                .into_iter()
                .map(|m| {
                    m.split("\n\nStack backtrace")
                        .next()
                        .unwrap_or_default()
                        .trim_end()
                        .to_string()
                })
                .collect(),
            Err(_) if text.is_empty() => vec![],
            Err(_) => vec![text],
        };
        for message in &messages {
            if let Some((from, to)) = parse_transition(message) {
                return VmmError::InvalidStateTransition { from, to, messages };
            }
        }
        if messages
            .iter()
            .any(|m| m.contains("GetNestedState") || m.contains("nested state"))
        {
            return VmmError::NestedStateUnavailable { messages };
        }
        if messages.iter().any(|m| m == "VM is not running") {
            return VmmError::VmNotRunning { messages };
        }
        VmmError::Other { messages }
    }
}

/// `InvalidStateTransition(Paused, Paused)` or `invalid VM state transition: Paused to Paused`.
fn parse_transition(message: &str) -> Option<(String, String)> {
    if let Some(start) = message.find("InvalidStateTransition(") {
        let rest = &message[start + "InvalidStateTransition(".len()..];
        let inner = &rest[..rest.find(')')?];
        let (from, to) = inner.split_once(',')?;
        return Some((from.trim().to_string(), to.trim().to_string()));
    }
    let lower = "invalid vm state transition: ";
    let start = message.to_ascii_lowercase().find(lower)?;
    let rest = &message[start + lower.len()..];
    let (from, to) = rest.split_once(" to ")?;
    let to = to.split(|c: char| !c.is_ascii_alphanumeric()).next()?;
    Some((from.trim().to_string(), to.to_string()))
}

impl fmt::Display for VmmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmmError::InvalidStateTransition { from, to, .. } => {
                write!(f, "invalid state transition from {from} to {to}")
            }
            VmmError::NestedStateUnavailable { messages } => write!(
                f,
                "the host's KVM refuses to report nested-virtualisation state (GetNestedState), which Cloud Hypervisor needs to snapshot a VM; this happens on PVM hosts (kvm_pvm) and KVM without nested support: snapshot on a VMX/SVM host, or with Firecracker ({})",
                messages.join(": ")
            ),
            VmmError::VmNotRunning { .. } => f.write_str("the VM is not running"),
            VmmError::Fault { message } => f.write_str(message),
            VmmError::Other { messages } if messages.is_empty() => f.write_str("no error details"),
            VmmError::Other { messages } => f.write_str(&messages.join(": ")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket could not be reached or the connection broke (VMM not
    /// running, or died during the call).
    #[error("{op}: cannot talk to the VMM at {}: {source}", socket.display())]
    Transport {
        op: String,
        socket: PathBuf,
        #[source]
        source: reqwest::Error,
    },
    #[error("{op}: the VMM did not answer within {}s", after.as_secs_f64())]
    Timeout { op: String, after: Duration },
    #[error("{op}: the VMM refused (HTTP {status}): {error}")]
    Vmm {
        op: String,
        status: u16,
        error: VmmError,
    },
    #[error("{op}: unexpected response body: {source}")]
    Decode {
        op: String,
        body: String,
        #[source]
        source: serde_json::Error,
    },
    /// A QMP socket could not be reached, or reading or writing it failed.
    #[error("{op}: cannot talk to QEMU at {}: {source}", socket.display())]
    Io {
        op: String,
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The QMP session is over: QEMU closed the connection (it exited:
    /// `quit`, a crash, a kill), or an earlier failure broke the session.
    #[error("{op}: the QMP session with QEMU at {} is over: {reason}", socket.display())]
    Closed {
        op: String,
        socket: PathBuf,
        reason: String,
    },
    /// QEMU sent something that is not QMP (no greeting, a line that is not
    /// a JSON object, an answer of neither `return` nor `error`).
    #[error("{op}: not a QMP answer from QEMU: {detail}")]
    Protocol { op: String, detail: String },
    /// QEMU refused a QMP command: `{"error": {"class", "desc"}}`.
    #[error("{op}: QEMU refused: {error}")]
    Qmp { op: String, error: QmpError },
    /// A migration (to or from a file) ended in `failed` or `cancelled`.
    #[error("{op}: migration {status}: {}", desc.as_deref().unwrap_or("QEMU gave no reason"))]
    Migration {
        op: String,
        status: String,
        desc: Option<String>,
    },
}

/// QEMU's refusal of a QMP command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpError {
    /// `GenericError` for almost everything; `CommandNotFound`,
    /// `DeviceNotActive`, `DeviceNotFound`, `KVMMissingCap` otherwise.
    pub class: String,
    /// The human-readable reason.
    pub desc: String,
}

impl fmt::Display for QmpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.desc, self.class)
    }
}

impl ApiError {
    /// The parsed VMM error, if the VMM answered with one.
    pub fn vmm_error(&self) -> Option<&VmmError> {
        match self {
            ApiError::Vmm { error, .. } => Some(error),
            _ => None,
        }
    }

    /// QEMU's refusal, if QEMU answered a QMP command with one.
    pub fn qmp_error(&self) -> Option<&QmpError> {
        match self {
            ApiError::Qmp { error, .. } => Some(error),
            _ => None,
        }
    }

    /// True when the VMM refused because the VM already is in `state`: a
    /// same-state transition, which callers treat as success.
    pub fn is_same_state(&self, state: &str) -> bool {
        match self.vmm_error() {
            Some(VmmError::InvalidStateTransition { from, to, .. }) => {
                from.eq_ignore_ascii_case(state) && to.eq_ignore_ascii_case(state)
            }
            // Cloud Hypervisor drops the VM on shutdown: a second shutdown finds none.
            Some(VmmError::VmNotRunning { .. }) => state.eq_ignore_ascii_case("Shutdown"),
            _ => false,
        }
    }

    /// Transport failures, timeouts and overload may succeed on retry. A VMM
    /// answer with a reason will not: Cloud Hypervisor reports every refusal
    /// as a 500 with its error chain, so a 5xx is transient only without one.
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::Transport { .. } | ApiError::Timeout { .. } | ApiError::Io { .. } => true,
            ApiError::Vmm { status, error, .. } => match status {
                429 | 502..=504 => true,
                500..=599 => matches!(error, VmmError::Other { messages } if messages.is_empty()),
                _ => false,
            },
            // A closed QMP session stays closed, a broken protocol stays
            // broken and QEMU's refusals and failed migrations carry a reason.
            ApiError::Decode { .. }
            | ApiError::Closed { .. }
            | ApiError::Protocol { .. }
            | ApiError::Qmp { .. }
            | ApiError::Migration { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cloud_hypervisor_same_state_pause() {
        // Recorded from Cloud Hypervisor v53.0: the answer to a second vm.pause.
        let body = br#"["Error from API","The VM could not be paused","Cannot pause VM","Failed to pause migratable component","Invalid transition: InvalidStateTransition(Paused, Paused)"]"#;
        let err = VmmError::parse(body);
        assert!(
            matches!(&err, VmmError::InvalidStateTransition { from, to, .. } if from == "Paused" && to == "Paused")
        );
        let api = ApiError::Vmm {
            op: "vm.pause".into(),
            status: 500,
            error: err,
        };
        assert!(api.is_same_state("Paused"));
        assert!(!api.is_same_state("Running"));
        assert!(
            !api.is_transient(),
            "a refusal with a reason is not retried"
        );
    }

    #[test]
    fn parses_newer_wording_and_other_transitions() {
        let err = VmmError::parse(
            br#"["Error from API","invalid VM state transition: Running to Running"]"#,
        );
        assert!(
            matches!(&err, VmmError::InvalidStateTransition { from, to, .. } if from == "Running" && to == "Running")
        );
        let err = VmmError::parse(
            br#"["Error from API","Invalid transition: InvalidStateTransition(Created, Paused)"]"#,
        );
        let api = ApiError::Vmm {
            op: "vm.pause".into(),
            status: 500,
            error: err,
        };
        assert!(
            !api.is_same_state("Paused"),
            "Created -> Paused is a real refusal"
        );
    }

    #[test]
    fn parses_firecracker_faults_and_raw_bodies() {
        assert_eq!(
            VmmError::parse(br#"{"fault_message":"The requested operation is not supported after starting the microVM."}"#),
            VmmError::Fault { message: "The requested operation is not supported after starting the microVM.".into() }
        );
        assert_eq!(
            VmmError::parse(b"oops"),
            VmmError::Other {
                messages: vec!["oops".into()]
            }
        );
        assert_eq!(VmmError::parse(b""), VmmError::Other { messages: vec![] });
    }

    #[test]
    fn nested_state_refusal_is_actionable() {
        // Recorded from Cloud Hypervisor v53.0 on a PVM host (backtrace shortened).
        let err = VmmError::parse(br#"["Error from API","The VM could not be snapshotted","Cannot snapshot VM","Failed to snapshot migratable component","Could not get vCPU state GetNestedState(Invalid argument (os error 22)\n\nStack backtrace:\n   0: <unknown>\n  10: start_thread)"]"#);
        assert!(matches!(err, VmmError::NestedStateUnavailable { .. }));
        let text = err.to_string();
        assert!(
            text.contains("PVM") && text.contains("snapshot on a VMX/SVM host"),
            "{text}"
        );
        assert!(
            !text.contains("backtrace") && !text.contains("start_thread"),
            "{text}"
        );
    }

    #[test]
    fn second_shutdown_is_same_state() {
        // Recorded from Cloud Hypervisor v53.0: vm.shutdown after vm.shutdown.
        let err = VmmError::parse(
            br#"["Error from API","The VM could not shutdown","VM is not running"]"#,
        );
        let api = ApiError::Vmm {
            op: "vm.shutdown".into(),
            status: 500,
            error: err,
        };
        assert!(api.is_same_state("Shutdown"));
        assert!(
            !api.is_same_state("Paused"),
            "pausing a VM that is not running is a real error"
        );
    }

    #[test]
    fn transient_classification() {
        let vmm = |status, error| ApiError::Vmm {
            op: "x".into(),
            status,
            error,
        };
        assert!(vmm(500, VmmError::Other { messages: vec![] }).is_transient());
        assert!(
            !vmm(
                500,
                VmmError::Other {
                    messages: vec!["VM is busy".into()]
                }
            )
            .is_transient()
        );
        assert!(
            vmm(
                503,
                VmmError::Other {
                    messages: vec!["later".into()]
                }
            )
            .is_transient()
        );
        assert!(vmm(429, VmmError::Other { messages: vec![] }).is_transient());
        assert!(
            !vmm(
                400,
                VmmError::Fault {
                    message: "bad".into()
                }
            )
            .is_transient()
        );
        assert!(!vmm(404, VmmError::Other { messages: vec![] }).is_transient());
        assert!(
            ApiError::Timeout {
                op: "x".into(),
                after: Duration::from_secs(1)
            }
            .is_transient()
        );
    }
}
