//! The limits that protect the front door: each returns its status, and the
//! proxy keeps serving other requests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bgproxy_e2e::{AppSpec, Backend, Daemon, Options};

fn daemon(b: &Backend, g: &Backend) -> Daemon {
    let app = AppSpec::new("web", &[b], &[g]).keys("max_body = \"1KiB\"\nread_timeout = \"700ms\"");
    let opts = Options {
        proxy: "max_headers = 20\nmax_header_size = \"4KiB\"\nclient_timeout = \"200ms\"\nclient_idle_timeout = \"1s\"".into(),
        ..Options::default()
    };
    Daemon::start_opts(&[app], opts)
}

/// Sends raw bytes, returns the status line's code.
fn raw(d: &Daemon, request: &[u8], then_wait: bool) -> u16 {
    let mut s = TcpStream::connect(d.proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    if then_wait {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"))
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

#[test]
fn slow_client_body_408() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = daemon(&b, &g);
    // Promises 100 bytes, sends 10, then stalls past client_timeout.
    let code = raw(
        &d,
        b"POST /slow-client HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",
        true,
    );
    assert_eq!(code, 408);
    still_serving(&d);
}

#[test]
fn slow_upstream_504() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = daemon(&b, &g);
    let (s, body) = d.get("x", "/slow/1500");
    assert_eq!(s, 504, "{body}");
    assert!(body.contains("did not answer in time"));
    assert_eq!(d.get("x", "/slow/10").0, 200);
    still_serving(&d);
}

#[test]
fn idle_keepalive_connection_is_closed() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = daemon(&b, &g);
    let mut s = TcpStream::connect(d.proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n";
    // A request well inside the idle timeout keeps the connection...
    for _ in 0..2 {
        s.write_all(request).unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // ...then, idle past client_idle_timeout (1s), the proxy closes it.
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    assert_eq!(
        s.read(&mut buf).unwrap(),
        0,
        "expected the proxy to close the idle connection"
    );
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "closed only after {waited:?}"
    );
    still_serving(&d);
}
