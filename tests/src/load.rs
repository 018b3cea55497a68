//! Keep-alive load through the front door, bounded in count and time, with
//! a record of every request.
//!
//! Each client is a thread with its own connection, speaking HTTP/1.1 on a
//! raw socket: it never retries. A general-purpose client (reqwest, hyper)
//! silently resends a request when a kept-alive connection turns out to be
//! closed, which hides exactly the failures a cutover or an upgrade could
//! cause. Here a request that gets no whole answer is a failure; the client
//! then opens a new connection for the next one. A response with
//! `Connection: close` ends the connection after it, as HTTP says.
//!
//! A client may instead open a new connection for every request
//! ([`Load::mixed`], with `Connection: close`), the way a script or a
//! health checker does: its connections are always fresh, so a server that
//! closes a connection it accepted but has not read yet fails it.
//!
//! Every request is recorded as a [`Sample`]: client, connection, when it
//! was sent and answered, its status and the color that answered
//! (`X-Color`), so a test can ask what each connection saw after a given
//! instant, not only which colors were seen at all.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::daemon::Daemon;
use crate::wait_until;

/// Requests per client at most.
const MAX_REQUESTS: usize = 50_000;
/// How long a client sends at most.
const MAX_TIME: Duration = Duration::from_secs(60);
/// How long a client waits for an answer.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// One request of a [`Load`].
#[derive(Clone, Debug)]
pub struct Sample {
    /// Which client (thread) sent it, from 0.
    pub client: usize,
    /// Which of that client's connections carried it, from 0.
    pub conn: u64,
    /// When its first byte was about to be written.
    pub sent: Instant,
    /// When its answer was read whole, or the failure seen.
    pub done: Instant,
    /// Status and `X-Color` of the answer, or what went wrong.
    pub outcome: Result<(u16, String), String>,
}

impl Sample {
    /// The color that answered with a 200, if any.
    pub fn color(&self) -> Option<&str> {
        match &self.outcome {
            Ok((200, color)) => Some(color),
            _ => None,
        }
    }
}

/// Keep-alive load: `clients` threads, each with its own connection, send
/// GETs with a Host header until [`Load::finish`] (at most 50,000 requests
/// and 60 s per client). Every request is kept as a [`Sample`].
pub struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    clients: usize,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    /// Starts `clients` keep-alive clients against `d`'s front door.
    pub fn start(d: &Daemon, host: &str, clients: usize) -> Load {
        Self::mixed(d.proxy, host, clients, 0)
    }

    /// Starts `keep_alive` keep-alive clients and then `fresh` clients that
    /// open a new connection for every request (numbered after the
    /// keep-alive ones), against the front door at `addr`.
    pub fn mixed(addr: SocketAddr, host: &str, keep_alive: usize, fresh: usize) -> Load {
        let clients = keep_alive + fresh;
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|client| {
                let (stop, samples) = (stop.clone(), samples.clone());
                let host = host.to_string();
                let new_each_time = client >= keep_alive;
                thread::spawn(move || run(client, addr, &host, new_each_time, &stop, &samples))
            })
            .collect();
        Load {
            stop,
            samples,
            clients,
            threads,
        }
    }

    /// The samples recorded so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    /// Waits up to `timeout` until every client has had at least `n`
    /// requests answered with a 200 that were sent at or after `since`.
    pub fn wait_each_answered_since(&self, since: Instant, n: usize, timeout: Duration) -> bool {
        self.wait_each(since, n, timeout, |s| s.color().is_some())
    }

    /// Waits up to `timeout` until every client has had at least `n`
    /// requests sent at or after `since` for which `pred` holds.
    pub fn wait_each(
        &self,
        since: Instant,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&Sample) -> bool,
    ) -> bool {
        wait_until(timeout, || {
            let samples = self.samples.lock().unwrap();
            (0..self.clients).all(|c| {
                samples
                    .iter()
                    .filter(|s| s.client == c && s.sent >= since && pred(s))
                    .count()
                    >= n
            })
        })
    }

    /// Stops the clients; asserts nothing failed and enough was sent.
    pub fn finish(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let samples = std::mem::take(&mut *self.samples.lock().unwrap());
        let failures: Vec<&Sample> = samples
            .iter()
            .filter(|s| !matches!(s.outcome, Ok((200, _))))
            .collect();
        assert!(
            failures.is_empty(),
            "{} of {} requests failed: {:?}",
            failures.len(),
            samples.len(),
            &failures[..failures.len().min(5)]
        );
        assert!(
            samples.len() > 50,
            "too little load to mean anything: {}",
            samples.len()
        );
        Report { samples }
    }
}

/// What a finished [`Load`] recorded; every request was answered with a 200.
pub struct Report {
    pub samples: Vec<Sample>,
}

impl Report {
    /// The number of requests sent.
    pub fn sent(&self) -> usize {
        self.samples.len()
    }

    /// The colors that answered.
    pub fn colors(&self) -> std::collections::BTreeSet<String> {
        self.samples
            .iter()
            .filter_map(|s| s.color().map(String::from))
            .collect()
    }
}

/// One client: requests on a kept-alive connection, a new connection after
/// a failure or a `Connection: close`, until stopped or a bound is reached.
/// With `new_each_time`, every request asks `Connection: close` and so has
/// a connection of its own.
fn run(
    client: usize,
    addr: SocketAddr,
    host: &str,
    new_each_time: bool,
    stop: &AtomicBool,
    out: &Mutex<Vec<Sample>>,
) {
    let close = if new_each_time {
        "Connection: close\r\n"
    } else {
        ""
    };
    let started = Instant::now();
    let mut conn: Option<BufReader<TcpStream>> = None;
    let mut conn_id = 0u64;
    for n in 0..MAX_REQUESTS {
        if stop.load(Ordering::Relaxed) || started.elapsed() > MAX_TIME {
            break;
        }
        let sent = Instant::now();
        let request = format!("GET /load/{client}/{n} HTTP/1.1\r\nHost: {host}\r\n{close}\r\n");
        let result = (|| {
            if conn.is_none() {
                let s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
                s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
                s.set_nodelay(true).unwrap();
                conn = Some(BufReader::new(s));
            }
            let reader = conn.as_mut().unwrap();
            reader
                .get_mut()
                .write_all(request.as_bytes())
                .map_err(|e| format!("write: {e}"))?;
            read_response(reader)
        })();
        let done = Instant::now();
        let outcome = match result {
            Ok((status, color, close)) => {
                if close {
                    conn = None;
                }
                Ok((status, color))
            }
            Err(e) => {
                conn = None;
                Err(e)
            }
        };
        let conn_of_sample = conn_id;
        if conn.is_none() {
            conn_id += 1;
        }
        out.lock().unwrap().push(Sample {
            client,
            conn: conn_of_sample,
            sent,
            done,
            outcome,
        });
    }
}

/// Reads one response: status, `X-Color` and whether the server closes the
/// connection after it. Bodies by `Content-Length` or chunked.
fn read_response(r: &mut BufReader<TcpStream>) -> Result<(u16, String, bool), String> {
    let line = read_line(r)?;
    let mut parts = line.split_whitespace();
    let version = parts.next().unwrap_or("");
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let (mut len, mut chunked, mut color) = (0usize, false, String::new());
    let mut close = version == "HTTP/1.0";
    loop {
        let h = read_line(r)?;
        if h.is_empty() {
            break;
        }
        let Some((k, v)) = h.split_once(':') else {
            return Err(format!("bad header line {h:?}"));
        };
        let v = v.trim();
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => len = v.parse().map_err(|_| format!("bad length {v:?}"))?,
            "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
            "x-color" => color = v.to_string(),
            "connection" => close = v.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    if chunked {
        loop {
            let size = read_line(r)?;
            let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size {size:?}"))?;
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk)
                .map_err(|e| format!("chunk: {e}"))?;
            if size == 0 {
                break;
            }
        }
    } else {
        let mut body = vec![0; len];
        r.read_exact(&mut body).map_err(|e| format!("body: {e}"))?;
    }
    Ok((status, color, close))
}

/// One CRLF-terminated line, without the CRLF; an error at end of stream.
fn read_line(r: &mut BufReader<TcpStream>) -> Result<String, String> {
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(0) => Err("connection closed".into()),
        Ok(_) => Ok(line.trim_end_matches(['\r', '\n']).to_string()),
        Err(e) => Err(format!("read: {e}")),
    }
}
