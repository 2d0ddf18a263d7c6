//! The relay's event loop: one thread and poll(2), so the relay is small and
//! its behaviour on PTY hang-ups (EIO, POLLHUP) is explicit.
//!
//! Nothing in the loop may block: ports, clients and the listener are
//! non-blocking, and every backlog is bounded (a client that does not keep up
//! is disconnected; input the guest does not read stops being accepted).

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags, SocketFlags};

use super::frame::{self, Frame};
use super::listener::Listener;
use super::log::RotatingLog;
use super::ring::Ring;
use super::watch::{self, Watch};
use super::{RING_BYTES, RelaySpec, tty};
use crate::process::ProcessIdentity;

/// A client further behind than this is dropped rather than buffered without bound.
const CLIENT_BACKLOG_MAX: usize = 1024 * 1024;
/// Input the guest has not read yet; beyond this, clients are not read from.
const INPUT_BACKLOG_MAX: usize = 64 * 1024;
const READ_CHUNK: usize = 64 * 1024;
/// Reads per port per wakeup, so one chatty port cannot starve the rest.
const READS_PER_WAKEUP: usize = 16;
/// How long clients get to receive the last output when the relay exits.
const FINAL_FLUSH: Duration = Duration::from_millis(500);
/// Events after which a read makes progress (data, end of file or an error).
const READABLE: PollFlags = PollFlags::IN.union(PollFlags::HUP).union(PollFlags::ERR);

/// Runs the relay until every port has hung up or the watched process is gone.
/// Blocking; meant to be the whole life of the relay process.
pub fn run_relay(spec: RelaySpec) -> io::Result<()> {
    ignore_hangup_signals();
    let RelaySpec {
        socket,
        log,
        log_max_bytes,
        ports,
        watch,
        reap,
        more_ports,
    } = spec;
    if ports.is_empty() && more_ports.is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a console relay needs at least one port",
        ));
    }
    if let Some(channel) = &more_ports {
        tty::set_nonblocking(channel)?;
    }
    let relay_ports = ports
        .into_iter()
        .map(Port::adopt)
        .collect::<io::Result<_>>()?;
    let watched = watch;
    let mut watch = Watch::open(watch);
    let listener = Listener::bind(&socket)?;
    let mut relay = Relay {
        ports: relay_ports,
        clients: Vec::new(),
        ring: Ring::new(RING_BYTES),
        log: RotatingLog::new(log, log_max_bytes),
        input: Vec::new(),
        last_output: None,
        buf: vec![0; READ_CHUNK],
        more_ports,
    };
    let result = relay.run(&listener, &mut watch);
    relay.drain_ports();
    relay.flush_clients_until(Instant::now() + FINAL_FLUSH);
    listener.remove();
    // The relay ends when the VMM is gone or its terminals hung up (the
    // VMM exiting closes them first): the helper goes once the VMM has.
    if let Some(process) = reap
        && vmm_gone(watched)
    {
        reap_helper(&process);
    }
    result
}

/// Whether the watched VMM has exited (waiting a moment: its terminals
/// close just before it does).
fn vmm_gone(watched: Option<ProcessIdentity>) -> bool {
    let Some(vmm) = watched else {
        return false;
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while vmm.is_alive() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Stops the VMM's helper once the VMM is gone (SIGTERM, then SIGKILL),
/// through the supervisor's identity-checked pidfd signalling.
fn reap_helper(process: &crate::model::VmmProcess) {
    let timeouts = crate::supervise::StopTimeouts {
        graceful: Duration::ZERO,
        term: Duration::from_secs(2),
        kill: Duration::from_secs(2),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let stopped = runtime.map(|rt| {
        rt.block_on(crate::supervise::terminate(
            process,
            None::<fn() -> std::future::Ready<()>>,
            timeouts,
        ))
    });
    match stopped {
        Ok(Ok(outcome)) => tracing::debug!(?outcome, "stopped the VMM's helper"),
        Ok(Err(error)) => tracing::warn!(%error, "cannot stop the VMM's helper"),
        Err(error) => tracing::warn!(%error, "cannot stop the VMM's helper"),
    }
}

/// The relay is detached from any terminal; a stray SIGHUP must not kill the
/// console, and a vanished client must be an EPIPE, not a SIGPIPE.
fn ignore_hangup_signals() {
    // SAFETY: SIG_IGN installs no handler code; only the disposition changes.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

struct Port {
    name: String,
    fd: OwnedFd,
    /// False once the other side hung up; the port is no longer polled.
    open: bool,
}

impl Port {
    fn adopt(port: super::RelayPort) -> io::Result<Port> {
        tty::set_nonblocking(&port.fd)
            .map_err(|e| io::Error::new(e.kind(), format!("console port {}: {e}", port.name)))?;
        // A port may also be a socket (CH's serial in socket mode): no line discipline.
        if rustix::termios::isatty(&port.fd)
            && let Err(error) = tty::make_raw(&port.fd)
        {
            tracing::warn!(port = %port.name, %error, "cannot put the console port in raw mode");
        }
        Ok(Port {
            name: port.name,
            fd: port.fd,
            open: true,
        })
    }
}

struct Client {
    stream: OwnedFd,
    out: VecDeque<u8>,
    /// Bytes of an incomplete frame.
    inbuf: Vec<u8>,
    closed: bool,
}

struct Relay {
    ports: Vec<Port>,
    clients: Vec<Client>,
    ring: Ring,
    log: RotatingLog,
    /// Client input not yet written to the input port.
    input: Vec<u8>,
    last_output: Option<usize>,
    buf: Vec<u8>,
    /// Where ports still to come arrive ([`super::handoff`]); None once
    /// the CLI closed it.
    more_ports: Option<OwnedFd>,
}

#[derive(Clone, Copy)]
enum Slot {
    Listener,
    Watch,
    MorePorts,
    Port(usize),
    Client(usize),
}

impl Relay {
    fn run(&mut self, listener: &Listener, watch: &mut Watch) -> io::Result<()> {
        loop {
            watch.check();
            let ports_left = self.ports.iter().any(|p| p.open) || self.more_ports.is_some();
            if matches!(watch, Watch::Gone) || !ports_left {
                return Ok(());
            }
            let ready = match self.wait(listener, watch) {
                Ok(ready) => ready,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            };
            for (slot, events) in ready {
                match slot {
                    Slot::Port(i) => self.read_port(i, events),
                    Slot::Client(i) if events.intersects(READABLE) => self.read_client(i),
                    Slot::Client(_) => {}
                    Slot::Listener => self.accept(listener),
                    Slot::Watch => *watch = Watch::Gone,
                    Slot::MorePorts => self.receive_ports(),
                }
            }
            self.flush_input();
            self.flush_clients();
        }
    }

    /// Polls everything that can make progress; returns the ready slots.
    fn wait(&self, listener: &Listener, watch: &Watch) -> Result<Vec<(Slot, PollFlags)>, Errno> {
        let mut slots = vec![Slot::Listener];
        let mut fds = vec![PollFd::new(&listener.fd, PollFlags::IN)];
        let mut timeout = None;
        match watch {
            Watch::Pidfd(fd) => {
                slots.push(Slot::Watch);
                fds.push(PollFd::new(fd, PollFlags::IN));
            }
            Watch::Polling(_) => timeout = Some(timespec(watch::POLL_INTERVAL)),
            Watch::Nothing | Watch::Gone => {}
        }
        if let Some(channel) = &self.more_ports {
            slots.push(Slot::MorePorts);
            fds.push(PollFd::new(channel, PollFlags::IN));
        }
        let input_port = self.input_port();
        for (i, port) in self.ports.iter().enumerate() {
            // A hung-up port would report POLLHUP forever: leave it out.
            if port.open {
                let mut events = PollFlags::IN;
                if input_port == Some(i) && !self.input.is_empty() {
                    events |= PollFlags::OUT;
                }
                slots.push(Slot::Port(i));
                fds.push(PollFd::new(&port.fd, events));
            }
        }
        // Back-pressure: a client whose input the guest does not read stalls
        // in its own write. A hung-up client is still read (POLLHUP is always
        // reported), so it cannot make this loop spin.
        let accept_input = self.input.len() < INPUT_BACKLOG_MAX;
        for (i, client) in self.clients.iter().enumerate() {
            let mut events = PollFlags::empty();
            if accept_input {
                events |= PollFlags::IN;
            }
            if !client.out.is_empty() {
                events |= PollFlags::OUT;
            }
            slots.push(Slot::Client(i));
            fds.push(PollFd::new(&client.stream, events));
        }
        rustix::event::poll(&mut fds, timeout.as_ref())?;
        Ok(slots
            .into_iter()
            .zip(fds.iter().map(PollFd::revents))
            .filter(|(_, events)| !events.is_empty())
            .collect())
    }

    /// Input follows the port the guest last talked on (a direct-boot guest
    /// uses hvc0, a bare test kernel only the serial port); ports[0] first.
    fn input_port(&self) -> Option<usize> {
        let preferred = self.last_output.unwrap_or(0);
        if self.ports.get(preferred).is_some_and(|p| p.open) {
            Some(preferred)
        } else {
            self.ports.iter().position(|p| p.open)
        }
    }

    fn read_port(&mut self, i: usize, events: PollFlags) {
        // Only the write side is ready: reading now would just say EAGAIN.
        if !events.intersects(READABLE) {
            return;
        }
        let mut buf = std::mem::take(&mut self.buf);
        for _ in 0..READS_PER_WAKEUP {
            match rustix::io::read(&self.ports[i].fd, &mut buf[..]) {
                Ok(0) | Err(Errno::IO) => {
                    self.hang_up(i, None);
                    break;
                }
                Ok(n) => self.output(i, &buf[..n]),
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => {
                    // Nothing left to read and the other side is gone.
                    if events.intersects(PollFlags::HUP | PollFlags::ERR) {
                        self.hang_up(i, None);
                    }
                    break;
                }
                Err(e) => {
                    self.hang_up(i, Some(e));
                    break;
                }
            }
        }
        self.buf = buf;
    }

    /// Takes the ports the CLI has sent; its close ends the channel (as
    /// does an error: the ports already here are served on).
    fn receive_ports(&mut self) {
        let Some(channel) = &self.more_ports else {
            return;
        };
        let end = loop {
            match super::handoff::receive(channel) {
                Ok(super::handoff::Received::Port(port)) => match Port::adopt(port) {
                    Ok(port) => self.ports.push(port),
                    Err(error) => tracing::warn!(%error, "cannot take a console port"),
                },
                Ok(super::handoff::Received::Nothing) => break false,
                Ok(super::handoff::Received::Closed) => break true,
                Err(error) => {
                    tracing::warn!(%error, "console port channel failed");
                    break true;
                }
            }
        };
        if end {
            self.more_ports = None;
        }
    }

    fn hang_up(&mut self, i: usize, error: Option<Errno>) {
        let port = &mut self.ports[i];
        port.open = false;
        match error {
            Some(error) => tracing::warn!(port = %port.name, %error, "console port failed"),
            None => tracing::debug!(port = %port.name, "console port hung up"),
        }
    }

    fn output(&mut self, port: usize, data: &[u8]) {
        self.last_output = Some(port);
        self.ring.push(data);
        self.log.write(data);
        for client in self.clients.iter_mut().filter(|c| !c.closed) {
            client.out.extend(data);
            if client.out.len() > CLIENT_BACKLOG_MAX {
                tracing::debug!("disconnecting a console client that does not keep up");
                client.closed = true;
            }
        }
    }

    fn read_client(&mut self, i: usize) {
        let mut buf = std::mem::take(&mut self.buf);
        let mut inbuf = std::mem::take(&mut self.clients[i].inbuf);
        loop {
            match rustix::net::recv(&self.clients[i].stream, &mut buf[..], RecvFlags::DONTWAIT) {
                Ok((0, _)) => {
                    self.clients[i].closed = true;
                    break;
                }
                Ok((n, _)) => {
                    inbuf.extend_from_slice(&buf[..n]);
                    let used = self.apply_frames(&inbuf);
                    inbuf.drain(..used);
                }
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => break,
                Err(_) => {
                    self.clients[i].closed = true;
                    break;
                }
            }
        }
        self.clients[i].inbuf = inbuf;
        self.buf = buf;
    }

    /// Applies the complete frames at the start of `bytes`; returns their length.
    fn apply_frames(&mut self, bytes: &[u8]) -> usize {
        let mut used = 0;
        while let Some((frame, len)) = frame::decode(&bytes[used..]) {
            match frame {
                Frame::Input(input) => self.input.extend_from_slice(input),
                Frame::WindowSize { rows, cols } => self.resize(rows, cols),
                Frame::Unknown => {}
            }
            used += len;
        }
        used
    }

    fn resize(&self, rows: u16, cols: u16) {
        for port in self.ports.iter().filter(|p| p.open) {
            if let Err(error) = tty::set_window_size(&port.fd, rows, cols) {
                tracing::debug!(port = %port.name, %error, "cannot set the console window size");
            }
        }
    }

    fn accept(&mut self, listener: &Listener) {
        loop {
            match rustix::net::accept_with(
                &listener.fd,
                SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            ) {
                Ok(stream) => {
                    let mut out = VecDeque::with_capacity(RING_BYTES);
                    self.ring.copy_into(&mut out);
                    self.clients.push(Client {
                        stream,
                        out,
                        inbuf: Vec::new(),
                        closed: false,
                    });
                }
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => break,
                Err(error) => {
                    tracing::warn!(%error, "cannot accept a console client");
                    break;
                }
            }
        }
    }

    fn flush_input(&mut self) {
        while !self.input.is_empty() {
            let Some(port) = self.input_port() else {
                self.input.clear();
                return;
            };
            match rustix::io::write(&self.ports[port].fd, &self.input) {
                Ok(n) => {
                    self.input.drain(..n);
                }
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => return,
                Err(error) => {
                    // The read side notices the hang-up; this input has nowhere to go.
                    tracing::debug!(port = %self.ports[port].name, %error, "console input dropped");
                    self.input.clear();
                }
            }
        }
    }

    /// Sends what each client can take now; drops closed clients.
    fn flush_clients(&mut self) {
        for client in self.clients.iter_mut().filter(|c| !c.closed) {
            while !client.out.is_empty() {
                let (pending, _) = client.out.as_slices();
                match rustix::net::send(
                    &client.stream,
                    pending,
                    SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
                ) {
                    Ok(n) => {
                        client.out.drain(..n);
                    }
                    Err(Errno::INTR) => {}
                    Err(Errno::AGAIN) => break,
                    Err(_) => {
                        client.closed = true;
                        break;
                    }
                }
            }
        }
        self.clients.retain(|c| !c.closed);
    }

    /// Output still in the PTYs when the watched VMM died goes to the log too.
    fn drain_ports(&mut self) {
        for i in 0..self.ports.len() {
            if self.ports[i].open {
                self.read_port(i, PollFlags::IN);
            }
        }
    }

    fn flush_clients_until(&mut self, deadline: Instant) {
        loop {
            self.flush_clients();
            let now = Instant::now();
            if self.clients.iter().all(|c| c.out.is_empty()) || now >= deadline {
                return;
            }
            let mut fds: Vec<PollFd<'_>> = self
                .clients
                .iter()
                .map(|c| PollFd::new(&c.stream, PollFlags::OUT))
                .collect();
            let _ = rustix::event::poll(&mut fds, Some(&timespec(deadline - now)));
        }
    }
}

fn timespec(duration: Duration) -> Timespec {
    Timespec::try_from(duration).unwrap_or(Timespec {
        tv_sec: 1,
        tv_nsec: 0,
    })
}
