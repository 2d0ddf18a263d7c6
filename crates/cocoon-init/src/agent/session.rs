//! One connection: read the first frame, run that session, reply.

use std::io::{self, BufReader, Read, Write};
use std::sync::{Arc, Mutex};

use cocoon_guest_proto::agent::{FrameReader, Reply, Request, encode};

use super::{Root, exec, identity, reseed};

/// Serves one session over any byte stream (vsock in a guest, a unix
/// socket in tests); returns when the session has ended.
pub fn serve<R, W>(reader: R, writer: W, root: &Root)
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    let out = Arc::new(Out::new(writer));
    let mut frames = FrameReader::new(BufReader::with_capacity(64 * 1024, reader));
    let first = match frames.next_frame() {
        Ok(Some(frame)) => frame,
        Ok(None) => return,
        // As upstream: a first line that is no frame gets no answer.
        Err(e) => {
            eprintln!("cocoon-init agent: initial frame: {e}");
            return;
        }
    };
    let result = match Request::try_from(first) {
        Ok(Request::Exec(request)) => {
            exec::run(request, frames, Arc::clone(&out), root);
            return;
        }
        Ok(Request::Reseed(request)) => {
            reseed::run(request, root).map_err(|e| format!("reseed: {e}"))
        }
        Ok(Request::Identity(request)) => {
            identity::run(&request, root).map_err(|e| format!("identity: {e}"))
        }
        Err(e) => Err(e.to_string()),
    };
    let reply = match result {
        Ok(()) => Reply::Exit(0),
        Err(message) => Reply::Error(message),
    };
    let _ = out.send(&reply);
}

/// The session's writer, shared by the threads that answer: each frame goes
/// out whole, and nothing after a terminal one (`exit`, `error`).
pub struct Out<W> {
    state: Mutex<(W, bool)>,
}

impl<W: Write> Out<W> {
    pub fn new(writer: W) -> Out<W> {
        Out {
            state: Mutex::new((writer, false)),
        }
    }

    pub fn send(&self, reply: &Reply) -> io::Result<()> {
        let line = encode(&reply.into());
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (writer, terminal) = &mut *state;
        if *terminal {
            return Err(io::Error::other("terminal frame already sent"));
        }
        writer.write_all(&line)?;
        writer.flush()?;
        *terminal = matches!(reply, Reply::Exit(_) | Reply::Error(_));
        Ok(())
    }
}
