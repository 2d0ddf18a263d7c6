//! Sessions with a connected agent: exec (streamed), reseed, identity.

use std::io::{self, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cocoon_guest_proto::agent::{
    ExecRequest, Frame, FrameReader, IdentityRequest, Input, Reply, Request, ReseedRequest, encode,
};

use super::AgentError;

/// How long a reseed or identity request may take in the guest.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to a VM's agent, before its session starts.
#[derive(Debug)]
pub struct Agent {
    stream: UnixStream,
    vm: String,
}

/// What the command wrote, as it comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output<'a> {
    Stdout(&'a [u8]),
    Stderr(&'a [u8]),
}

/// A running `exec`: [`ExecSession::wait`] streams its output and returns
/// its exit status; [`ExecInput`] handles feed it from other threads.
pub struct ExecSession {
    frames: FrameReader<BufReader<UnixStream>>,
    input: ExecInput,
    vm: String,
}

/// Sends stdin, window sizes and signals to a running `exec`. Cloneable;
/// each frame goes out whole.
#[derive(Debug, Clone)]
pub struct ExecInput {
    writer: Arc<Mutex<UnixStream>>,
}

impl Agent {
    pub(super) fn new(stream: UnixStream, vm: &str) -> Agent {
        Agent {
            stream,
            vm: vm.to_owned(),
        }
    }

    fn io(&self, source: io::Error) -> AgentError {
        AgentError::Io {
            vm: self.vm.clone(),
            source,
        }
    }

    /// Starts the command. Without [`ExecInput::close_stdin`] (or stdin
    /// data) its stdin stays open, as upstream's does.
    pub fn exec(mut self, request: &ExecRequest) -> Result<ExecSession, AgentError> {
        let first = Frame::from(&Request::Exec(request.clone()));
        self.stream
            .write_all(&encode(&first))
            .map_err(|e| self.io(e))?;
        let reader = self.stream.try_clone().map_err(|e| self.io(e))?;
        Ok(ExecSession {
            frames: FrameReader::new(BufReader::with_capacity(64 * 1024, reader)),
            input: ExecInput {
                writer: Arc::new(Mutex::new(self.stream)),
            },
            vm: self.vm,
        })
    }

    /// Upstream's `reseed`: `entropy` mixed into the guest's CRNG, and a new
    /// `/etc/machine-id` if asked.
    pub fn reseed(self, entropy: Vec<u8>, regen_machine_id: bool) -> Result<(), AgentError> {
        self.control(&Request::Reseed(ReseedRequest {
            entropy,
            regen_machine_id,
        }))
    }

    /// The `identity` extension (an upstream agent refuses it with an error).
    pub fn identity(self, request: &IdentityRequest) -> Result<(), AgentError> {
        self.control(&Request::Identity(request.clone()))
    }

    /// A one-request session answered by `exit` (success) or `error`.
    fn control(mut self, request: &Request) -> Result<(), AgentError> {
        let write = |s: &mut UnixStream| {
            s.set_read_timeout(Some(CONTROL_TIMEOUT))?;
            s.write_all(&encode(&Frame::from(request)))
        };
        write(&mut self.stream).map_err(|e| self.io(e))?;
        let reader = self.stream.try_clone().map_err(|e| self.io(e))?;
        let mut frames = FrameReader::new(BufReader::new(reader));
        match next_reply(&mut frames, &self.vm)? {
            Reply::Exit(0) => Ok(()),
            Reply::Exit(code) => Err(protocol(
                &self.vm,
                format!("exit code {code} for a control request"),
            )),
            Reply::Error(message) => Err(AgentError::Remote {
                vm: self.vm,
                message,
            }),
            other => Err(protocol(
                &self.vm,
                format!("unexpected {other:?} for a control request"),
            )),
        }
    }
}

impl ExecSession {
    pub fn input(&self) -> ExecInput {
        self.input.clone()
    }

    /// Streams the output to `on_output` until the command ends; its exit
    /// status (0-255; 128 + n for a signal death, -1 from an upstream agent).
    /// An error from `on_output` ends the session with that error.
    pub fn wait(
        mut self,
        mut on_output: impl FnMut(Output<'_>) -> io::Result<()>,
    ) -> Result<i32, AgentError> {
        let mut started = false;
        loop {
            let reply = next_reply(&mut self.frames, &self.vm)?;
            let written = match (&reply, started) {
                (Reply::Started { .. }, false) => {
                    started = true;
                    Ok(())
                }
                (Reply::Stdout(data), true) => on_output(Output::Stdout(data)),
                (Reply::Stderr(data), true) => on_output(Output::Stderr(data)),
                (Reply::Exit(code), true) => return Ok(*code),
                (Reply::Error(message), _) => {
                    return Err(AgentError::Remote {
                        vm: self.vm,
                        message: message.clone(),
                    });
                }
                (reply, _) => {
                    let when = if started { "after" } else { "before" };
                    return Err(protocol(&self.vm, format!("{reply:?} {when} `started`")));
                }
            };
            written.map_err(|source| AgentError::Io {
                vm: self.vm.clone(),
                source,
            })?;
        }
    }
}

/// The next frame, decoded and validated; the end of the stream is
/// [`AgentError::Closed`].
fn next_reply(
    frames: &mut FrameReader<BufReader<UnixStream>>,
    vm: &str,
) -> Result<Reply, AgentError> {
    let frame = match frames.next_frame() {
        Ok(Some(frame)) => frame,
        Ok(None) => return Err(AgentError::Closed { vm: vm.to_owned() }),
        Err(cocoon_guest_proto::agent::ProtoError::Io(source)) => {
            return Err(AgentError::Io {
                vm: vm.to_owned(),
                source,
            });
        }
        Err(e) => return Err(protocol(vm, e.to_string())),
    };
    Reply::try_from(frame).map_err(|e| protocol(vm, e.to_string()))
}

fn protocol(vm: &str, reason: String) -> AgentError {
    AgentError::Protocol {
        vm: vm.to_owned(),
        reason,
    }
}

impl ExecInput {
    fn send(&self, input: &Input) -> io::Result<()> {
        let line = encode(&Frame::from(input));
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        writer.write_all(&line)
    }

    pub fn stdin(&self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.send(&Input::Stdin(data.to_vec()))
    }

    /// End of input: the command reads EOF (a PTY command sees nothing).
    pub fn close_stdin(&self) -> io::Result<()> {
        self.send(&Input::StdinClose)
    }

    pub fn resize(&self, size: super::WinSize) -> io::Result<()> {
        self.send(&Input::Resize(size))
    }

    /// Delivers `signal` to the command's process group.
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        self.send(&Input::Signal(signal))
    }
}
