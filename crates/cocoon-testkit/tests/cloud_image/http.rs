//! A small HTTP/1.1 file server on 127.0.0.1 for cloud image pulls, with the
//! faults a real download meets: connections dropped mid-body, servers that
//! ignore `Range`, files that change between attempts, slow links. It records
//! every request so tests can assert what the client asked for.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct Resource {
    pub body: Vec<u8>,
    pub etag: Option<String>,
    /// Honour `Range` (with `If-Range` checked against `etag`).
    pub ranges: bool,
    /// The next `drops` responses stop after `drop_after` body bytes.
    pub drop_after: usize,
    pub drops: usize,
    /// Any other status answers with a short text body.
    pub status: Option<u16>,
    /// A pause after each 64 KiB of body: a slow link.
    pub pace: Option<Duration>,
    /// A Content-Length to announce instead of the body's (a huge file).
    pub claimed_len: Option<u64>,
}

impl Resource {
    pub fn file(body: Vec<u8>, etag: &str) -> Resource {
        Resource {
            body,
            etag: Some(format!("\"{etag}\"")),
            ranges: true,
            ..Resource::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub path: String,
    pub range: Option<String>,
    pub if_range: Option<String>,
    /// The status the server answered with.
    pub status: u16,
}

#[derive(Default)]
struct State {
    resources: HashMap<String, Resource>,
    requests: Vec<Request>,
}

pub struct Server {
    port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl Server {
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &st);
                });
            }
        });
        Server { port, state, stop }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn put(&self, path: &str, resource: Resource) {
        self.state
            .lock()
            .unwrap()
            .resources
            .insert(path.to_string(), resource);
    }

    pub fn requests(&self, path: &str) -> Vec<Request> {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let range = headers.get("range").cloned();
    let if_range = headers.get("if-range").cloned();
    let (resource, drop_now) = {
        let mut state = state.lock().unwrap();
        let resource = state.resources.get_mut(&path).map(|r| {
            let drop_now = r.drops > 0;
            if drop_now {
                r.drops -= 1;
            }
            (r.clone(), drop_now)
        });
        match resource {
            Some(found) => (Some(found.0), found.1),
            None => (None, false),
        }
    };
    let mut out = stream;
    let Some(resource) = resource else {
        record(state, &path, &range, &if_range, 404);
        return respond(&mut out, 404, &[], b"not found\n", None, None);
    };
    if let Some(status) = resource.status {
        record(state, &path, &range, &if_range, status);
        return respond(&mut out, status, &[], b"no\n", None, None);
    }
    let len = resource.body.len();
    let mut extra: Vec<(&str, String)> = Vec::new();
    if let Some(etag) = &resource.etag {
        extra.push(("ETag", etag.clone()));
    }
    // `bytes=START-` or `bytes=START-END` (END inclusive).
    let bounds = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(s, e)| {
            let start = s.parse::<usize>().ok()?;
            let end = match e {
                "" => len,
                e => (e.parse::<usize>().ok()? + 1).min(len),
            };
            Some((start, end))
        });
    let validator_ok = if_range.is_none() || if_range == resource.etag;
    let (status, body) = match bounds {
        Some((start, end)) if resource.ranges && validator_ok => {
            if start >= len || start >= end {
                extra.push(("Content-Range", format!("bytes */{len}")));
                record(state, &path, &range, &if_range, 416);
                return respond(&mut out, 416, &extra, b"", None, None);
            }
            extra.push(("Content-Range", format!("bytes {start}-{}/{len}", end - 1)));
            (206, &resource.body[start..end])
        }
        _ => (200, &resource.body[..]),
    };
    if resource.ranges {
        extra.push(("Accept-Ranges", "bytes".into()));
    }
    record(state, &path, &range, &if_range, status);
    let cut = drop_now.then_some(resource.drop_after);
    if let Some(claimed) = resource.claimed_len {
        let head =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {claimed}\r\nConnection: close\r\n\r\n");
        out.write_all(head.as_bytes())?;
        out.write_all(body)?;
        return out.shutdown(Shutdown::Both);
    }
    respond(&mut out, status, &extra, body, cut, resource.pace)
}

fn record(
    state: &Mutex<State>,
    path: &str,
    range: &Option<String>,
    if_range: &Option<String>,
    status: u16,
) {
    state.lock().unwrap().requests.push(Request {
        path: path.to_string(),
        range: range.clone(),
        if_range: if_range.clone(),
        status,
    });
}

/// Sends the response; with `cut`, only that many body bytes, then the
/// connection is shut down although Content-Length promised more.
fn respond(
    out: &mut TcpStream,
    status: u16,
    extra: &[(&str, String)],
    body: &[u8],
    cut: Option<usize>,
    pace: Option<Duration>,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        500 => "Internal Server Error",
        _ => "Other",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    let sent = &body[..cut.unwrap_or(body.len()).min(body.len())];
    for chunk in sent.chunks(64 << 10) {
        out.write_all(chunk)?;
        if let Some(pace) = pace {
            std::thread::sleep(pace);
        }
    }
    out.flush()?;
    out.shutdown(Shutdown::Both)
}
