//! The limits that protect the front door: each returns its status, and the
//! proxy keeps serving other requests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bgproxy_e2e::{wait_until, AppSpec, Backend, Daemon, Options};

fn daemon(b: &Backend, g: &Backend) -> Daemon {
    daemon_with(b, g, "200ms", "700ms")
}

/// The limits' daemon with its own `client_timeout` and `read_timeout`.
/// The front door has 2 threads: stalling more connections than that would
/// stop everything if a stall held a thread.
fn daemon_with(b: &Backend, g: &Backend, client_timeout: &str, read_timeout: &str) -> Daemon {
    let app = AppSpec::new("web", &[b], &[g]).keys(&format!(
        "max_body = \"1KiB\"\nread_timeout = \"{read_timeout}\""
    ));
    let opts = Options {
        proxy: format!(
            "max_headers = 20\nmax_header_size = \"4KiB\"\nclient_timeout = \"{client_timeout}\"\nclient_idle_timeout = \"1s\""
        ),
        ..Options::default()
    };
    Daemon::start_opts(&[app], opts)
}

/// How many stalled connections the stall tests hold: twice the front
/// door's threads.
const STALLS: usize = 4;

/// Requests `n` times through the front door, each on a new connection,
/// each answered 200 within `within`.
fn served_promptly(d: &Daemon, n: usize, within: Duration) {
    for i in 0..n {
        let started = Instant::now();
        let r = reqwest::blocking::Client::new()
            .get(format!("http://{}/meanwhile/{i}", d.proxy))
            .timeout(Duration::from_secs(10))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            started.elapsed() < within,
            "request {i} took {:?} during the stall",
            started.elapsed()
        );
    }
}

/// Whether the proxy has answered nothing on `s` yet.
fn unanswered(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1];
    let silent = matches!(s.peek(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    s.set_nonblocking(false).unwrap();
    silent
}

/// Reads the status code of the answer on `s`.
fn status_of(s: &mut TcpStream) -> u16 {
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"))
}

/// Sends raw bytes, returns the status line's code.
fn raw(d: &Daemon, request: &[u8], then_wait: bool) -> u16 {
    let mut s = TcpStream::connect(d.proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    if then_wait {
        std::thread::sleep(Duration::from_millis(50));
    }
    status_of(&mut s)
}

fn still_serving(d: &Daemon) {
    assert_eq!(d.color_of("x"), "blue");
}

#[test]
fn body_size_413() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = daemon(&b, &g);
    let c = reqwest::blocking::Client::new();
    let url = format!("http://{}/upload", d.proxy);
    assert_eq!(
        c.post(&url).body(vec![b'x'; 1000]).send().unwrap().status(),
        200
    );
    let r = c.post(&url).body(vec![b'x'; 2000]).send().unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.text().unwrap().contains("1024"));
    // Chunked (no Content-Length): counted as it arrives.
    let chunked = b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n";
    let mut req = chunked.to_vec();
    req.extend(vec![b'y'; 0x800]);
    req.extend(b"\r\n0\r\n\r\n");
    assert_eq!(raw(&d, &req, false), 413);
    still_serving(&d);
}

#[test]
fn header_limits_431() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = daemon(&b, &g);
    let c = reqwest::blocking::Client::new();
    let url = format!("http://{}/", d.proxy);
    let mut many = c.get(&url);
    for i in 0..25 {
        many = many.header(format!("x-h{i}"), "v");
    }
    assert_eq!(many.send().unwrap().status(), 431);
    assert_eq!(
        c.get(&url)
            .header("x-big", "z".repeat(5000))
            .send()
            .unwrap()
            .status(),
        431
    );
    assert_eq!(
        c.get(&url)
            .header("x-ok", "z".repeat(1000))
            .send()
            .unwrap()
            .status(),
        200
    );
    still_serving(&d);
}

/// Clients that promise a body and stall (more of them than the front door
/// has threads) hold no thread: while they stall, others are served
/// promptly; each stalled one gets its 408 once `client_timeout` has
/// passed, not before.
#[test]
fn slow_client_body_408() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    // read_timeout above client_timeout: the upstream waits for the body too.
    let d = daemon_with(&b, &g, "2s", "5s");
    // Each promises 100 bytes and sends 10.
    let mut stalled: Vec<(TcpStream, Instant)> = (0..STALLS)
        .map(|_| {
            let mut s = TcpStream::connect(d.proxy).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(
                b"POST /slow-client HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",
            )
            .unwrap();
            (s, Instant::now())
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(10), || b.heads() >= STALLS as u64),
        "the stalled requests are under way at the upstream"
    );
    served_promptly(&d, 5, Duration::from_secs(1));
    assert!(
        stalled.iter().all(|(s, _)| unanswered(s)),
        "the others were served during the stall, not after it"
    );
    for (s, sent) in &mut stalled {
        assert_eq!(status_of(s), 408);
        let waited = sent.elapsed();
        assert!(
            waited >= Duration::from_millis(1900) && waited < Duration::from_secs(6),
            "408 after {waited:?}, client_timeout is 2s"
        );
    }
    still_serving(&d);
}

/// Upstreams that do not answer (more requests than the front door has
/// threads) hold no thread: while they hang, others are served promptly;
/// each gets its 504 once `read_timeout` has passed, not before.
#[test]
fn slow_upstream_504() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = daemon_with(&b, &g, "200ms", "2s");
    std::thread::scope(|scope| {
        let hanging: Vec<_> = (0..STALLS)
            .map(|_| {
                scope.spawn(|| {
                    let sent = Instant::now();
                    let (s, body) = d.get("x", "/slow/5000");
                    (s, body, sent.elapsed())
                })
            })
            .collect();
        assert!(
            wait_until(Duration::from_secs(10), || b.in_flight() >= STALLS as u64),
            "the requests hang at the upstream"
        );
        served_promptly(&d, 5, Duration::from_secs(1));
        assert!(
            hanging.iter().all(|h| !h.is_finished()),
            "the others were served during the stall, not after it"
        );
        for h in hanging {
            let (s, body, waited) = h.join().unwrap();
            assert_eq!(s, 504, "{body}");
            assert!(body.contains("did not answer in time"), "{body}");
            assert!(
                waited >= Duration::from_millis(1900) && waited < Duration::from_secs(5),
                "504 after {waited:?}, read_timeout is 2s"
            );
        }
    });
    assert_eq!(d.get("x", "/slow/10").0, 200);
    still_serving(&d);
}

/// A kept-alive connection idle past `client_idle_timeout` (1s) is closed,
/// and not before: measured from the last answer.
#[test]
fn idle_keepalive_connection_is_closed() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = daemon(&b, &g);
    let mut s = TcpStream::connect(d.proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n";
    // A request well inside the idle timeout keeps the connection...
    let mut answered = Instant::now();
    for round in 0..2 {
        if round > 0 {
            // Idle for a while, well inside the timeout.
            std::thread::sleep(Duration::from_millis(300));
        }
        s.write_all(request).unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        answered = Instant::now();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    // ...then, idle past client_idle_timeout (1s), the proxy closes it.
    let mut buf = [0u8; 64];
    assert_eq!(
        s.read(&mut buf).unwrap(),
        0,
        "expected the proxy to close the idle connection"
    );
    let idle = answered.elapsed();
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(5),
        "closed after {idle:?} idle, client_idle_timeout is 1s"
    );
    still_serving(&d);
}
