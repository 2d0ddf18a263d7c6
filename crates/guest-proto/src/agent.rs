//! The guest agent's wire protocol (docs/agent.md): upstream cocoon-agent's
//! line-delimited JSON on vsock port 1024, plus this project's extensions.
//!
//! Every line is one [`Frame`], a flat union like upstream's `agent.Message`:
//! only the fields of its `type` are set, every other one is left out, so a
//! frame serialises to the same bytes as upstream's Go encoder produces
//! ([`wire::encode`]). The typed views ([`Request`], [`Input`], [`Reply`])
//! are what both sides work with; converting a frame into one validates it.
//!
//! Extensions (never sent by upstream, and harmless to an upstream agent,
//! which ignores unknown fields and unknown frames after the first): a PTY
//! (`tty`, `rows`, `cols` on `exec`, the `resize` frame), `cwd` and `user`
//! on `exec`, the `signal` frame, and the `identity` session.

mod wire;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use wire::{FrameReader, MAX_LINE, ProtoError, encode};

/// The vsock port the agent listens on (upstream's `agent.DefaultPort`).
pub const PORT: u32 = 1024;

/// Upstream's frame types, then ours.
pub mod kind {
    pub const EXEC: &str = "exec";
    pub const RESEED: &str = "reseed";
    pub const STDIN: &str = "stdin";
    pub const STDIN_CLOSE: &str = "stdin_close";
    pub const STARTED: &str = "started";
    pub const STDOUT: &str = "stdout";
    pub const STDERR: &str = "stderr";
    pub const EXIT: &str = "exit";
    pub const ERROR: &str = "error";
    /// Extension: a PTY's new window size.
    pub const RESIZE: &str = "resize";
    /// Extension: a signal for the command's process group.
    pub const SIGNAL: &str = "signal";
    /// Extension: a fresh identity after a clone or restore.
    pub const IDENTITY: &str = "identity";
}

/// Upstream caps the entropy it mixes in at 512 bytes; so does the agent.
pub const MAX_RESEED_BYTES: usize = 512;
/// Bounds on what an exec request may carry (beyond the line length).
pub const MAX_ARGS: usize = 4096;
pub const MAX_ENV: usize = 4096;
pub const MAX_NICS: usize = 64;

/// One line of the protocol. Field order and omission follow upstream's
/// Go struct (`omitempty` everywhere), then the extension fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "wire::null_default"
    )]
    pub argv: Vec<String>,
    /// Sorted, as Go's encoder writes map keys.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "wire::null_default"
    )]
    pub env: BTreeMap<String, String>,
    /// Go's `[]byte`: standard base64 with padding.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "wire::base64_bytes"
    )]
    pub data: Vec<u8>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pid: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub exit_code: i64,
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "wire::null_default"
    )]
    pub message: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub regen_machine_id: bool,
    // --- extensions ---
    #[serde(default, skip_serializing_if = "is_false")]
    pub tty: bool,
    #[serde(default, skip_serializing_if = "is_zero_u16")]
    pub rows: u16,
    #[serde(default, skip_serializing_if = "is_zero_u16")]
    pub cols: u16,
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "wire::null_default"
    )]
    pub cwd: String,
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "wire::null_default"
    )]
    pub user: String,
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub signal: i32,
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "wire::null_default"
    )]
    pub hostname: String,
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "wire::null_default"
    )]
    pub machine_id: String,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "wire::null_default"
    )]
    pub nics: Vec<Nic>,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}
fn is_zero_u16(v: &u16) -> bool {
    *v == 0
}
fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}
fn is_false(v: &bool) -> bool {
    !*v
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WinSize {
    pub rows: u16,
    pub cols: u16,
}

/// Extension: one NIC of an `identity` request, what the guest contract's
/// `ip=` argument says for a fresh boot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    /// The guest's interface (`eth<i>`, as `net.ifnames=0` names them).
    pub name: String,
    /// The MAC the interface must carry, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// `a.b.c.d/prefix`; absent for a DHCP network (the NIC then only
    /// gets its MAC and is brought up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
}

/// The first frame of a session: what the session is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Exec(ExecRequest),
    Reseed(ReseedRequest),
    Identity(IdentityRequest),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    /// Layered over the agent's own environment, these winning.
    pub env: BTreeMap<String, String>,
    /// Extension: run on a PTY of this size (output all on `stdout`).
    pub tty: Option<WinSize>,
    /// Extension: working directory; empty means the agent's (`/`).
    pub cwd: String,
    /// Extension: `uid[:gid]` or a name from the guest's `/etc/passwd`;
    /// empty means the agent's user (root).
    pub user: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReseedRequest {
    /// Host entropy; the agent mixes in at most [`MAX_RESEED_BYTES`].
    pub entropy: Vec<u8>,
    pub regen_machine_id: bool,
}

/// Extension: what a clone or a restored VM must change to stop looking like
/// its source (docs/agent.md, "identity").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityRequest {
    /// New hostname; empty keeps the current one.
    pub hostname: String,
    /// 32 lowercase hex digits; empty makes the agent draw a random one.
    pub machine_id: String,
    pub nics: Vec<Nic>,
}

/// Frames the host sends after an `exec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Stdin(Vec<u8>),
    StdinClose,
    Resize(WinSize),
    Signal(i32),
    /// A frame type this side does not know: upstream's agent skips those,
    /// and so does ours (a newer host may send more).
    Unknown(String),
}

/// Frames the agent sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Started {
        pid: i64,
    },
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// Terminal. 0-255, or upstream's -1 for a signal death (ours reports
    /// 128 + the signal).
    Exit(i32),
    /// Terminal; never followed by `Exit`.
    Error(String),
}

impl Frame {
    fn of(kind: &str) -> Frame {
        Frame {
            kind: kind.to_owned(),
            ..Frame::default()
        }
    }
}

impl From<&Request> for Frame {
    fn from(request: &Request) -> Frame {
        match request {
            Request::Exec(r) => {
                let mut f = Frame::of(kind::EXEC);
                f.argv.clone_from(&r.argv);
                f.env.clone_from(&r.env);
                if let Some(size) = r.tty {
                    (f.tty, f.rows, f.cols) = (true, size.rows, size.cols);
                }
                f.cwd.clone_from(&r.cwd);
                f.user.clone_from(&r.user);
                f
            }
            Request::Reseed(r) => Frame {
                data: r.entropy.clone(),
                regen_machine_id: r.regen_machine_id,
                ..Frame::of(kind::RESEED)
            },
            Request::Identity(r) => Frame {
                hostname: r.hostname.clone(),
                machine_id: r.machine_id.clone(),
                nics: r.nics.clone(),
                ..Frame::of(kind::IDENTITY)
            },
        }
    }
}

impl From<&Input> for Frame {
    fn from(input: &Input) -> Frame {
        match input {
            Input::Stdin(data) => Frame {
                data: data.clone(),
                ..Frame::of(kind::STDIN)
            },
            Input::StdinClose => Frame::of(kind::STDIN_CLOSE),
            Input::Resize(size) => Frame {
                rows: size.rows,
                cols: size.cols,
                ..Frame::of(kind::RESIZE)
            },
            Input::Signal(signal) => Frame {
                signal: *signal,
                ..Frame::of(kind::SIGNAL)
            },
            Input::Unknown(kind) => Frame::of(kind),
        }
    }
}

impl From<&Reply> for Frame {
    fn from(reply: &Reply) -> Frame {
        match reply {
            Reply::Started { pid } => Frame {
                pid: *pid,
                ..Frame::of(kind::STARTED)
            },
            Reply::Stdout(data) => Frame {
                data: data.clone(),
                ..Frame::of(kind::STDOUT)
            },
            Reply::Stderr(data) => Frame {
                data: data.clone(),
                ..Frame::of(kind::STDERR)
            },
            Reply::Exit(code) => Frame {
                exit_code: i64::from(*code),
                ..Frame::of(kind::EXIT)
            },
            Reply::Error(message) => Frame {
                message: message.clone(),
                ..Frame::of(kind::ERROR)
            },
        }
    }
}

/// Why a frame was refused. The texts of the first two are upstream's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("expected first frame type \"exec\" or \"reseed\", got {0:?}")]
    FirstFrame(String),
    #[error("exec: argv is empty")]
    EmptyArgv,
    #[error("{0}")]
    Field(String),
    #[error("unexpected frame type {0:?} from the agent")]
    ReplyKind(String),
}

fn field(what: impl Into<String>) -> Invalid {
    Invalid::Field(what.into())
}

impl TryFrom<Frame> for Request {
    type Error = Invalid;
    fn try_from(f: Frame) -> Result<Request, Invalid> {
        match f.kind.as_str() {
            kind::EXEC => exec_request(f).map(Request::Exec),
            kind::RESEED => Ok(Request::Reseed(ReseedRequest {
                entropy: f.data,
                regen_machine_id: f.regen_machine_id,
            })),
            kind::IDENTITY => identity_request(f).map(Request::Identity),
            _ => Err(Invalid::FirstFrame(f.kind)),
        }
    }
}

fn exec_request(f: Frame) -> Result<ExecRequest, Invalid> {
    if f.argv.is_empty() {
        return Err(Invalid::EmptyArgv);
    }
    if f.argv.len() > MAX_ARGS || f.env.len() > MAX_ENV {
        return Err(field("exec: too many arguments or variables"));
    }
    let has_nul = |s: &String| s.contains('\0');
    if f.argv.iter().any(has_nul) || has_nul(&f.cwd) || has_nul(&f.user) {
        return Err(field("exec: an argument contains a NUL byte"));
    }
    for (key, value) in &f.env {
        if key.is_empty() || key.contains('=') || has_nul(key) || has_nul(value) {
            return Err(field(format!(
                "exec: bad environment variable name {key:?}"
            )));
        }
    }
    let tty = f.tty.then_some(WinSize {
        rows: if f.rows == 0 { 24 } else { f.rows },
        cols: if f.cols == 0 { 80 } else { f.cols },
    });
    Ok(ExecRequest {
        argv: f.argv,
        env: f.env,
        tty,
        cwd: f.cwd,
        user: f.user,
    })
}

fn identity_request(f: Frame) -> Result<IdentityRequest, Invalid> {
    if !f.hostname.is_empty() && !valid_hostname(&f.hostname) {
        return Err(field(format!("identity: bad hostname {:?}", f.hostname)));
    }
    if !f.machine_id.is_empty() && !valid_machine_id(&f.machine_id) {
        return Err(field(
            "identity: machine_id must be 32 lowercase hex digits",
        ));
    }
    if f.nics.len() > MAX_NICS {
        return Err(field("identity: too many NICs"));
    }
    for nic in &f.nics {
        validate_nic(nic).map_err(|e| field(format!("identity: NIC {:?}: {e}", nic.name)))?;
    }
    Ok(IdentityRequest {
        hostname: f.hostname,
        machine_id: f.machine_id,
        nics: f.nics,
    })
}

/// RFC 1123 labels, at most 64 bytes (the kernel's limit).
pub fn valid_hostname(name: &str) -> bool {
    name.len() <= 64
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

pub fn valid_machine_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `aa:bb:cc:dd:ee:ff` as six bytes.
pub fn parse_mac(mac: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = mac.split(':');
    for byte in &mut out {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// `a.b.c.d/prefix`.
pub fn parse_cidr(cidr: &str) -> Option<(std::net::Ipv4Addr, u8)> {
    let (ip, prefix) = cidr.split_once('/')?;
    let prefix: u8 = prefix.parse().ok()?;
    (prefix <= 32).then_some((ip.parse().ok()?, prefix))
}

fn validate_nic(nic: &Nic) -> Result<(), String> {
    let name_ok = !nic.name.is_empty()
        && nic.name.len() < 16
        && nic
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !name_ok {
        return Err("bad interface name".into());
    }
    if parse_mac(&nic.mac).is_none() {
        return Err(format!("bad MAC {:?}", nic.mac));
    }
    if let Some(address) = &nic.address
        && parse_cidr(address).is_none()
    {
        return Err(format!("bad address {address:?} (want a.b.c.d/prefix)"));
    }
    let ip_ok = |s: &String| s.parse::<std::net::IpAddr>().is_ok();
    if nic.gateway.as_ref().is_some_and(|g| !ip_ok(g)) || !nic.dns.iter().all(ip_ok) {
        return Err("bad gateway or DNS address".into());
    }
    if nic.dns.len() > 8 {
        return Err("too many DNS servers".into());
    }
    Ok(())
}

/// Signals the host may forward: the standard and real-time ones.
pub fn valid_signal(signal: i32) -> bool {
    (1..=64).contains(&signal)
}

impl From<Frame> for Input {
    fn from(f: Frame) -> Input {
        match f.kind.as_str() {
            kind::STDIN => Input::Stdin(f.data),
            kind::STDIN_CLOSE => Input::StdinClose,
            kind::RESIZE => Input::Resize(WinSize {
                rows: f.rows,
                cols: f.cols,
            }),
            kind::SIGNAL => Input::Signal(f.signal),
            _ => Input::Unknown(f.kind),
        }
    }
}

impl TryFrom<Frame> for Reply {
    type Error = Invalid;
    /// Strict: the host knows every frame an agent may send, so anything
    /// else is a broken or hostile guest.
    fn try_from(f: Frame) -> Result<Reply, Invalid> {
        match f.kind.as_str() {
            kind::STARTED => Ok(Reply::Started { pid: f.pid }),
            kind::STDOUT => Ok(Reply::Stdout(f.data)),
            kind::STDERR => Ok(Reply::Stderr(f.data)),
            kind::EXIT => i32::try_from(f.exit_code)
                .ok()
                .filter(|c| (-1..=255).contains(c))
                .map(Reply::Exit)
                .ok_or_else(|| field(format!("exit code {} out of range", f.exit_code))),
            kind::ERROR => Ok(Reply::Error(f.message)),
            _ => Err(Invalid::ReplyKind(f.kind)),
        }
    }
}

#[cfg(test)]
mod tests;
