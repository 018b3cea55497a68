//! Backends the tests start themselves, on 127.0.0.1 with a port the OS
//! picks; the port stays reserved for the backend's life, also after
//! [`Backend::stop`] (connections are then refused, and no other test's
//! listener can appear on it).
//!
//! - [`Backend`]: a small threaded HTTP/1.1 server (keep-alive). `/health`
//!   answers a status the test controls (or hangs); `/slow/<ms>` answers
//!   after a pause; `/hold/...` answers once the test releases it;
//!   `/status/<code>` answers that status; `/stream/<n>/<ms>` answers a
//!   chunked body of `n` chunks (`"<color> <i>\n"`), `ms` apart (the head
//!   first, at once; `?te=<coding>` names that coding before `chunked`); a
//!   WebSocket upgrade gets an echo;
//!   anything else a JSON echo of what it received (every header line, in
//!   order) plus its color.
//! - [`H2Backend`]: cleartext HTTP/2 only, for apps with `h2 = true`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::ports::Port;
use crate::wait_until;

/// How long a `/hold/...` request waits for [`Backend::release_held`] at
/// most, so that a failing test cannot leave threads behind for ever.
const HOLD_LIMIT: Duration = Duration::from_secs(60);

struct BackendState {
    color: String,
    health_status: AtomicU16,
    health_hangs: AtomicBool,
    /// Every `/health` answer: when it was written, and its status.
    health_answers: Mutex<Vec<(Instant, u16)>>,
    stopped: AtomicBool,
    hits: AtomicU64,
    /// Requests other than `/health` whose head was read (body or not).
    heads: AtomicU64,
    /// Requests other than `/health` read but not answered yet.
    in_flight: AtomicU64,
    /// Whether `/hold/...` requests may answer; with its condition variable.
    released: Mutex<bool>,
    release: Condvar,
    /// Every accepted connection, with the lock its thread holds while it
    /// serves a request (from its first line to its answer).
    conns: Mutex<Vec<(TcpStream, Arc<Mutex<()>>)>>,
}

/// A real HTTP backend on 127.0.0.1.
pub struct Backend {
    pub addr: SocketAddr,
    state: Arc<BackendState>,
    /// Keeps the port after [`Backend::stop`] drops the listener.
    _port: Port,
}

impl Backend {
    /// Starts a backend of `color` (the name it answers with).
    pub fn start(color: &str) -> Backend {
        let port = Port::reserve();
        // std binds with SO_REUSEADDR: it shares the reservation's port.
        let listener = TcpListener::bind(port.addr()).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(BackendState {
            color: color.to_string(),
            health_status: AtomicU16::new(200),
            health_hangs: AtomicBool::new(false),
            health_answers: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
            hits: AtomicU64::new(0),
            heads: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            released: Mutex::new(false),
            release: Condvar::new(),
            conns: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        thread::spawn(move || loop {
            if st.stopped.load(Ordering::SeqCst) {
                return; // drops the listener: new connections are refused
            }
            match listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    let busy = Arc::new(Mutex::new(()));
                    if let Ok(c) = s.try_clone() {
                        st.conns.lock().unwrap().push((c, busy.clone()));
                    }
                    let st = st.clone();
                    thread::spawn(move || serve(s, st, busy));
                }
                Err(_) => thread::sleep(Duration::from_millis(2)),
            }
        });
        Backend {
            addr,
            state,
            _port: port,
        }
    }

    /// Makes `/health` answer `status`.
    pub fn set_health(&self, status: u16) {
        self.state.health_status.store(status, Ordering::SeqCst);
    }

    /// Makes `/health` never answer (the check stays in flight).
    pub fn hang_health(&self) {
        self.state.health_hangs.store(true, Ordering::SeqCst);
    }

    /// How many `/health` answers had `status` so far.
    pub fn health_answers(&self, status: u16) -> usize {
        let answers = self.state.health_answers.lock().unwrap();
        answers.iter().filter(|(_, s)| *s == status).count()
    }

    /// Requests served other than `/health`.
    pub fn hits(&self) -> u64 {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Requests other than `/health` whose head arrived, whether or not
    /// their body did.
    pub fn heads(&self) -> u64 {
        self.state.heads.load(Ordering::SeqCst)
    }

    /// Requests other than `/health` received and not answered yet (held,
    /// slow, or being answered).
    pub fn in_flight(&self) -> u64 {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// Lets every `/hold/...` request answer, those waiting and those to
    /// come.
    pub fn release_held(&self) {
        *self.state.released.lock().unwrap() = true;
        self.state.release.notify_all();
    }

    /// Closes every open connection that is not serving a request (as a
    /// server's keep-alive timeout does), and goes on accepting new ones.
    pub fn close_idle_connections(&self) {
        self.state
            .conns
            .lock()
            .unwrap()
            .retain(|(c, busy)| match busy.try_lock() {
                Ok(_idle) => {
                    let _ = c.shutdown(Shutdown::Both);
                    false
                }
                Err(_) => true,
            });
    }

    /// Closes the port and every open connection: the backend is gone.
    pub fn stop(&self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        self.release_held();
        for (c, _) in self.state.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        wait_until(Duration::from_secs(2), || {
            TcpStream::connect(self.addr).is_err()
        });
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The value of the first header line named `name` (lower case).
fn header<'a>(lines: &'a [(String, String)], name: &str) -> Option<&'a str> {
    lines
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The echo's `headers`: a name that came on one line maps to its value, a
/// name that came on several maps to the array of their values, so that a
/// test comparing a header with one string fails on a duplicated line.
fn headers_json(lines: &[(String, String)]) -> Value {
    let mut map = Map::new();
    for (k, v) in lines {
        match map.get_mut(k) {
            None => {
                map.insert(k.clone(), Value::String(v.clone()));
            }
            Some(Value::Array(all)) => all.push(Value::String(v.clone())),
            Some(first) => *first = json!([first.clone(), v]),
        }
    }
    Value::Object(map)
}

fn serve(stream: TcpStream, st: Arc<BackendState>, busy: Arc<Mutex<()>>) {
    let mut out = match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        // Serving: not idle until answered.
        let _busy = busy.lock().unwrap_or_else(|e| e.into_inner());
        let mut parts = line.split_whitespace();
        let (method, target) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        // Every header line, in order, names in lower case.
        let mut lines = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                lines.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        if header(&lines, "upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
            return websocket_echo(reader, &lines, &st);
        }
        let health = target == "/health";
        if !health {
            st.heads.fetch_add(1, Ordering::SeqCst);
        }
        let len: usize = header(&lines, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if !health {
            st.in_flight.fetch_add(1, Ordering::SeqCst);
        }
        if let Some(ms) = target
            .strip_prefix("/slow/")
            .and_then(|ms| ms.parse::<u64>().ok())
        {
            thread::sleep(Duration::from_millis(ms));
        }
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        if let Some((n, ms)) = path
            .strip_prefix("/stream/")
            .and_then(|rest| rest.split_once('/'))
            .and_then(|(n, ms)| Some((n.parse::<u32>().ok()?, ms.parse::<u64>().ok()?)))
        {
            st.hits.fetch_add(1, Ordering::SeqCst);
            let codings = match query.strip_prefix("te=") {
                Some(first) => format!("{first}, chunked"),
                None => "chunked".to_string(),
            };
            let pause = Duration::from_millis(ms);
            let streamed = stream_chunks(&mut out, &st.color, &codings, n, pause);
            st.in_flight.fetch_sub(1, Ordering::SeqCst);
            if streamed.is_err() {
                return;
            }
            continue;
        }
        if target.starts_with("/hold/") {
            let released = st.released.lock().unwrap();
            let _ = st
                .release
                .wait_timeout_while(released, HOLD_LIMIT, |r| !*r)
                .unwrap();
        }
        let (status, payload) = if health {
            if st.health_hangs.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_secs(3600));
            }
            (
                st.health_status.load(Ordering::SeqCst),
                b"health\n".to_vec(),
            )
        } else {
            st.hits.fetch_add(1, Ordering::SeqCst);
            let status = target
                .strip_prefix("/status/")
                .and_then(|c| c.parse::<u16>().ok())
                .unwrap_or(200);
            let echo = json!({
                "color": st.color,
                "method": method,
                "target": target,
                "headers": headers_json(&lines),
                "header_lines": lines,
                "body": String::from_utf8_lossy(&body),
            });
            (status, serde_json::to_vec(&echo).unwrap())
        };
        // Head and body in one write: two small writes would wait for the
        // peer's delayed ACK (Nagle), 40ms per request.
        let mut response = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: application/json\r\nX-Color: {}\r\n\r\n",
            payload.len(),
            st.color
        )
        .into_bytes();
        response.extend_from_slice(&payload);
        if health {
            // Recorded before the answer leaves: the checker cannot have
            // seen an answer that is not counted yet.
            let mut answers = st.health_answers.lock().unwrap();
            answers.push((Instant::now(), status));
        }
        let written = out.write_all(&response);
        if !health {
            st.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
        if written.is_err() {
            return;
        }
        if header(&lines, "connection").is_some_and(|c| c.eq_ignore_ascii_case("close")) {
            return;
        }
    }
}

/// A chunked response of `n` chunks, `pause` apart, the head at once (each
/// write on its own, as an event stream sends them).
fn stream_chunks(
    out: &mut TcpStream,
    color: &str,
    codings: &str,
    n: u32,
    pause: Duration,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: {codings}\r\nContent-Type: text/plain\r\n\r\n"
    );
    out.write_all(head.as_bytes())?;
    for i in 0..n {
        thread::sleep(pause);
        let line = format!("{color} {i}\n");
        out.write_all(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes())?;
    }
    out.write_all(b"0\r\n\r\n")
}

/// Completes a WebSocket handshake and echoes every text message back as
/// `"<color>: <text>"` until the peer closes.
fn websocket_echo(reader: BufReader<TcpStream>, lines: &[(String, String)], st: &BackendState) {
    let key = header(lines, "sec-websocket-key").unwrap_or_default();
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut stream = reader.into_inner();
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nX-Color: {}\r\n\r\n",
        st.color
    );
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    st.hits.fetch_add(1, Ordering::SeqCst);
    let mut ws =
        tungstenite::WebSocket::from_raw_socket(stream, tungstenite::protocol::Role::Server, None);
    while let Ok(msg) = ws.read() {
        let reply = match msg {
            tungstenite::Message::Text(t) => format!("{}: {}", st.color, t.as_str()),
            tungstenite::Message::Close(_) => {
                // tungstenite queued the close reply: send it, then end.
                let _ = ws.flush();
                return;
            }
            _ => continue,
        };
        if ws.send(tungstenite::Message::text(reply)).is_err() {
            return;
        }
    }
}

/// A backend that speaks only cleartext HTTP/2 (h2c, prior knowledge), for
/// apps with `h2 = true`. Answers `/health` with 200 and anything else with
/// a JSON echo that includes the HTTP version it was asked with.
pub struct H2Backend {
    pub addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl H2Backend {
    pub fn start(color: &str) -> H2Backend {
        use http_body_util::{BodyExt, Full};
        use hyper::service::service_fn;

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let color: Arc<str> = color.into();
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let color = color.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let color = color.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await?.to_bytes();
                            let payload = if parts.uri.path() == "/health" {
                                b"health\n".to_vec()
                            } else {
                                serde_json::to_vec(&json!({
                                    "color": &*color,
                                    "version": format!("{:?}", parts.version),
                                    "method": parts.method.as_str(),
                                    "target": parts.uri.path_and_query().map_or("/", |p| p.as_str()),
                                    "body": String::from_utf8_lossy(&body),
                                }))
                                .unwrap()
                            };
                            Ok::<_, hyper::Error>(hyper::Response::new(Full::new(
                                bytes::Bytes::from(payload),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                });
            }
        });
        H2Backend {
            addr,
            runtime: Some(runtime),
        }
    }
}

impl Drop for H2Backend {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
