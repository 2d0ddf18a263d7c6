//! The QMP wire: one JSON object per line over a unix stream, the greeting
//! first, then answers matched to commands by `id`, with events in between.
//!
//! Everything here runs under a caller's deadline and survives being cut off
//! by it: a partly read line is kept for the next read (`read_until` into a
//! buffer that outlives the call), the answer to a command whose caller gave
//! up is recognised by its `id` and dropped when it arrives, and a command
//! cut off while being written (the stream now holds half a line) breaks the
//! session for good instead of garbling the next command.

use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

use super::types::{Event, Greeting};
use crate::error::{ApiError, QmpError};

/// Events kept between two `take_events`: enough for every event a
/// migration or a shutdown sends, bounded so that a client nobody drains
/// cannot grow without end.
pub const EVENT_BUFFER: usize = 1024;

/// A line longer than this is not QMP this client asked for (the largest
/// answer it reads, `query-migrate`, is a few hundred bytes; QEMU's whole
/// schema is 250 KB).
const MAX_LINE: u64 = 16 << 20;

const CLOSED_BY_QEMU: &str = "QEMU closed the connection (it exited or was killed)";

/// What one line from QEMU was.
enum Message {
    Greeting(Greeting),
    Reply {
        id: Option<Value>,
        result: Result<Value, QmpError>,
    },
    Event(Event),
}

pub(crate) struct Session {
    socket: PathBuf,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// The line being read, kept when a deadline cuts a read short.
    line: Vec<u8>,
    next_id: u64,
    events: VecDeque<Event>,
    dropped_events: u64,
    /// Why the session can no longer be used, once it cannot.
    broken: Option<String>,
}

impl Session {
    /// Connects and reads the greeting, both before `deadline`.
    pub(crate) async fn open(
        socket: &Path,
        deadline: Deadline,
    ) -> Result<(Session, Greeting), ApiError> {
        const OP: &str = "connect";
        let stream = deadline
            .run(OP, UnixStream::connect(socket))
            .await?
            .map_err(|source| ApiError::Io {
                op: OP.into(),
                socket: socket.to_path_buf(),
                source,
            })?;
        let (read, write) = stream.into_split();
        let mut session = Session {
            socket: socket.to_path_buf(),
            reader: BufReader::new(read),
            writer: write,
            line: Vec::new(),
            next_id: 1,
            events: VecDeque::new(),
            dropped_events: 0,
            broken: None,
        };
        // QEMU serves one QMP client per socket at a time: a second one is
        // accepted by the kernel but greeted only once the first has gone.
        match session.read_message(OP, deadline).await? {
            Message::Greeting(greeting) => Ok((session, greeting)),
            _ => Err(ApiError::Protocol {
                op: OP.into(),
                detail: "the first line was not the QMP greeting".into(),
            }),
        }
    }

    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends `name` with `arguments` (none if `Null` or `{}`) and returns its
    /// `return`, or QEMU's refusal as [`ApiError::Qmp`].
    pub(crate) async fn execute(
        &mut self,
        name: &str,
        arguments: Value,
        deadline: Deadline,
    ) -> Result<Value, ApiError> {
        self.check_usable(name)?;
        let id = self.next_id;
        self.next_id += 1;
        let mut command = Map::new();
        command.insert("execute".into(), json!(name));
        let empty = arguments.as_object().is_some_and(Map::is_empty);
        if !arguments.is_null() && !empty {
            command.insert("arguments".into(), arguments);
        }
        command.insert("id".into(), json!(id));
        let mut line = serde_json::to_vec(&command).expect("a JSON map serialises");
        line.push(b'\n');
        tracing::trace!(command = %String::from_utf8_lossy(&line).trim_end(), "QMP");
        self.write_line(name, &line, deadline).await?;
        loop {
            match self.read_message(name, deadline).await? {
                Message::Reply { id: Some(got), .. } if got != json!(id) => {
                    tracing::debug!(op = name, %got, "QMP answer to an abandoned command dropped");
                }
                // QEMU answers without an id only what it could not parse,
                // and it handles commands in order: that is this one.
                Message::Reply { result, .. } => {
                    return result.map_err(|error| ApiError::Qmp {
                        op: name.into(),
                        error,
                    });
                }
                Message::Event(event) => self.keep(event),
                Message::Greeting(_) => {
                    return Err(self.broken_by(name, "a second greeting"));
                }
            }
        }
    }

    /// Reads until an event `wanted` accepts arrives (keeping the others) or
    /// `deadline` passes. Already kept events are looked at first.
    pub(crate) async fn wait_event(
        &mut self,
        op: &str,
        wanted: &mut dyn FnMut(&Event) -> bool,
        deadline: Deadline,
    ) -> Result<Event, ApiError> {
        if let Some(at) = self.events.iter().position(&mut *wanted) {
            return Ok(self.events.remove(at).expect("position is in range"));
        }
        self.check_usable(op)?;
        loop {
            match self.read_message(op, deadline).await? {
                Message::Event(event) if wanted(&event) => return Ok(event),
                Message::Event(event) => self.keep(event),
                Message::Reply { id, .. } => {
                    tracing::debug!(op, ?id, "QMP answer to an abandoned command dropped");
                }
                Message::Greeting(_) => return Err(self.broken_by(op, "a second greeting")),
            }
        }
    }

    /// Reads the events QEMU sends within `window` (and those it had sent).
    pub(crate) async fn poll(&mut self, op: &str, window: Duration) -> Result<(), ApiError> {
        let mut never = |_: &Event| false;
        match self
            .wait_event(op, &mut never, Deadline::after(window))
            .await
        {
            Err(ApiError::Timeout { .. }) => Ok(()),
            Err(e) => Err(e),
            Ok(_) => unreachable!("no event is wanted"),
        }
    }

    pub(crate) fn take_events(&mut self) -> Vec<Event> {
        self.events.drain(..).collect()
    }

    pub(crate) fn dropped_events(&self) -> u64 {
        self.dropped_events
    }

    fn keep(&mut self, event: Event) {
        tracing::trace!(event = %event.name, "QMP event");
        if self.events.len() == EVENT_BUFFER {
            self.events.pop_front();
            self.dropped_events += 1;
        }
        self.events.push_back(event);
    }

    fn check_usable(&self, op: &str) -> Result<(), ApiError> {
        match &self.broken {
            Some(reason) => Err(ApiError::Closed {
                op: op.into(),
                socket: self.socket.clone(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Marks the session unusable and says why, as the error of `op`.
    fn broken_by(&mut self, op: &str, what: &str) -> ApiError {
        self.broken = Some(format!("QEMU sent {what}"));
        ApiError::Protocol {
            op: op.into(),
            detail: format!("QEMU sent {what}"),
        }
    }

    async fn write_line(
        &mut self,
        op: &str,
        line: &[u8],
        deadline: Deadline,
    ) -> Result<(), ApiError> {
        match deadline.run(op, self.writer.write_all(line)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(self.io_error(op, source)),
            Err(expired) => {
                self.broken = Some("a command was cut off while being written".into());
                Err(expired)
            }
        }
    }

    /// The next complete line, parsed.
    async fn read_message(&mut self, op: &str, deadline: Deadline) -> Result<Message, ApiError> {
        let room = MAX_LINE.saturating_sub(self.line.len() as u64);
        let mut limited = (&mut self.reader).take(room);
        let read = limited.read_until(b'\n', &mut self.line);
        let n = match deadline.run(op, read).await? {
            Err(source) => return Err(self.io_error(op, source)),
            Ok(n) => n,
        };
        if self.line.last() != Some(&b'\n') {
            if n > 0 && self.line.len() as u64 >= MAX_LINE {
                return Err(self.broken_by(op, "a line over 16 MiB"));
            }
            return Err(self.closed(op));
        }
        let line = std::mem::take(&mut self.line);
        parse(&line).map_err(|detail| self.broken_by(op, &detail))
    }

    /// QEMU hung up: the session is over.
    fn closed(&mut self, op: &str) -> ApiError {
        self.broken = Some(CLOSED_BY_QEMU.into());
        ApiError::Closed {
            op: op.into(),
            socket: self.socket.clone(),
            reason: CLOSED_BY_QEMU.into(),
        }
    }

    /// A failed read or write ends the session; one that says QEMU hung up
    /// is reported as such.
    fn io_error(&mut self, op: &str, source: std::io::Error) -> ApiError {
        use std::io::ErrorKind::{BrokenPipe, ConnectionReset, UnexpectedEof};
        if matches!(source.kind(), BrokenPipe | ConnectionReset | UnexpectedEof) {
            return self.closed(op);
        }
        self.broken = Some(format!("talking to QEMU failed: {source}"));
        ApiError::Io {
            op: op.into(),
            socket: self.socket.clone(),
            source,
        }
    }
}

/// The moment a call (or a sequence of calls) must be done by, and the
/// length it was given, which its timeout error reports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    pub(crate) at: Instant,
    pub(crate) timeout: Duration,
}

impl Deadline {
    pub(crate) fn after(timeout: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + timeout,
            timeout,
        }
    }

    /// Runs `future`, or gives up at the deadline.
    async fn run<F: Future>(self, op: &str, future: F) -> Result<F::Output, ApiError> {
        tokio::time::timeout_at(self.at, future)
            .await
            .map_err(|_| self.expired(op))
    }

    pub(crate) fn expired(self, op: &str) -> ApiError {
        ApiError::Timeout {
            op: op.into(),
            after: self.timeout,
        }
    }
}

/// One line of QMP; `Err` says what it was instead.
fn parse(line: &[u8]) -> Result<Message, String> {
    let text = String::from_utf8_lossy(line);
    let Ok(Value::Object(mut map)) = serde_json::from_str::<Value>(&text) else {
        return Err(format!(
            "a line that is not a JSON object: {}",
            text.trim_end()
        ));
    };
    if let Some(greeting) = map.remove("QMP") {
        return serde_json::from_value(greeting)
            .map(Message::Greeting)
            .map_err(|e| format!("a greeting that does not parse ({e})"));
    }
    if map.contains_key("event") {
        return serde_json::from_value(Value::Object(map))
            .map(Message::Event)
            .map_err(|e| format!("an event that does not parse ({e})"));
    }
    let id = map.remove("id");
    if let Some(value) = map.remove("return") {
        return Ok(Message::Reply {
            id,
            result: Ok(value),
        });
    }
    if let Some(error) = map.remove("error") {
        let field = |name: &str| error.get(name).and_then(Value::as_str).map(String::from);
        return match (field("class"), field("desc")) {
            (Some(class), Some(desc)) => Ok(Message::Reply {
                id,
                result: Err(QmpError { class, desc }),
            }),
            _ => Err(format!("an error without class and desc: {error}")),
        };
    }
    Err(format!("a line of no QMP kind: {}", text.trim_end()))
}
