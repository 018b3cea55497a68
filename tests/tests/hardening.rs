//! The front door against hostile and careless clients (issue #17, the data
//! plane's part), with raw sockets against the real binaries:
//!
//! - upgrade requests keep the request timeouts until the upstream answered
//!   101 (`client_timeout` 408, `read_timeout` 504), the tunnel's after;
//! - a request head must arrive whole within `request_header_timeout` (408)
//!   and is read only up to `max_header_size` (431), on both paths, while
//!   keep-alive idle time stays `client_idle_timeout`'s;
//! - `max_connections` and `max_connections_per_ip` close what is past them
//!   and serve everyone else;
//! - HTTP/1.1 without Host, or with a Host that is not a host, gets 400 on
//!   both paths; a 101 nobody asked for gets 502 on both paths;
//! - clients that go away are not errors in the log (counted instead), and
//!   the access log prints plain values.
//!
//! "Both paths": a plain GET is served by the lean loop, a POST with a body
//! by pingora-proxy (see proxy/src/dataplane/front_door.rs).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bgproxy_e2e::{wait_until, AppSpec, Backend, Daemon, Options, Port};

const T: Duration = Duration::from_secs(10);

/// A raw connection to `addr` with a read timeout of [`T`].
fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s
}

/// A raw connection to `to` from the loopback address `from` (127.0.0.x),
/// so that tests can be several clients.
fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((from, 0)).into()).unwrap();
    socket.connect(&to.into()).unwrap();
    let s: TcpStream = socket.into();
    s.set_read_timeout(Some(T)).unwrap();
    s
}

/// One response read off `s`: status and body (by Content-Length; else to
/// the end). `None` when the connection ended without a status line.
fn response(s: &mut TcpStream) -> Option<(u16, String)> {
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let status = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut length = None;
    for _ in 0..100 {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse::<usize>().ok();
            }
        }
    }
    let mut body = Vec::new();
    match length {
        Some(n) => {
            body.resize(n, 0);
            r.read_exact(&mut body).ok()?;
        }
        None => {
            let _ = r.take(1 << 20).read_to_end(&mut body);
        }
    }
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Sends `request` on a new connection and reads the response.
fn exchange(addr: SocketAddr, request: &str) -> Option<(u16, String)> {
    let mut s = connect(addr);
    s.write_all(request.as_bytes()).unwrap();
    response(&mut s)
}

/// Whether the proxy closed `s` without answering (end of stream or reset).
fn closed_unanswered(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => panic!("answered: {:?}", String::from_utf8_lossy(&buf[..n])),
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Asserts that `waited` is about `limit`: not before it, not long after.
fn about(waited: Duration, limit: Duration, what: &str) {
    assert!(
        waited >= limit.mul_f64(0.9) && waited < limit + Duration::from_secs(3),
        "{what} after {waited:?}, the limit is {limit:?}"
    );
}

/// The sum of the samples of `name` whose labels contain `label`.
fn counted(d: &Daemon, name: &str, label: &str) -> f64 {
    d.scrape()
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// An upstream that answers `/health` with 200 and anything else with a
/// 101, asked for or not. It stops when dropped (and after a minute at
/// most).
struct Switcher {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Switcher {
    fn start() -> Switcher {
        let port = Port::reserve();
        // std binds with SO_REUSEADDR: it shares the reservation's port.
        let listener = TcpListener::bind(port.addr()).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        thread::spawn(move || {
            let _port = port;
            let until = Instant::now() + Duration::from_secs(60);
            while !stopped.load(Ordering::SeqCst) && Instant::now() < until {
                match listener.accept() {
                    Ok((s, _)) => {
                        thread::spawn(move || switch_protocols(s));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Switcher { addr, stop }
    }
}

impl Drop for Switcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn switch_protocols(s: TcpStream) {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let mut out = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    for _ in 0..100 {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0;
        for _ in 0..100 {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end().to_ascii_lowercase();
            if h.is_empty() {
                break;
            }
            if let Some(v) = h.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        if line.contains(" /health ") {
            let _ = out.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        } else {
            let _ = out.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\nswitched",
            );
            thread::sleep(Duration::from_millis(500));
            return;
        }
    }
}

/// Upgrade requests are ordinary requests until the upstream answers 101:
/// a client stalling in the body gets 408 after `client_timeout`, a slow
/// upstream 504 after `read_timeout` (before: `tunnel_timeout`, 1h, for
/// both). A real WebSocket still lives by `tunnel_timeout` once upgraded.
#[test]
fn upgrade_requests_have_request_timeouts_until_upgraded() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let start = |client: &str, read: &str| {
        Daemon::start_opts(
            &[AppSpec::new("web", &[&b], &[&g]).keys(&format!("read_timeout = \"{read}\""))],
            Options {
                proxy: format!("client_timeout = \"{client}\""),
                ..Options::default()
            },
        )
    };
    // A client that stalls in the body of an upgrade request.
    let d = start("1s", "5s");
    let mut s = connect(d.proxy);
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nUpgrade: foo\r\nConnection: Upgrade\r\nContent-Length: 10\r\n\r\n012",
    )
    .unwrap();
    let sent = Instant::now();
    let (status, body) = response(&mut s).expect("an answer");
    assert_eq!(status, 408, "{body}");
    about(sent.elapsed(), Duration::from_secs(1), "408");

    // An upstream that answers an upgrade request slowly.
    let d = start("5s", "1s");
    let sent = Instant::now();
    let (status, body) = exchange(
        d.proxy,
        "GET /slow/3000 HTTP/1.1\r\nHost: x\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\n",
    )
    .expect("an answer");
    assert_eq!(status, 504, "{body}");
    about(sent.elapsed(), Duration::from_secs(1), "504");

    // Upgraded, idle past both request timeouts: still open.
    let d = start("1s", "1s");
    let (mut ws, _) = tungstenite::connect(format!("ws://{}/chat", d.proxy)).unwrap();
    ws.send(tungstenite::Message::text("a")).unwrap();
    assert_eq!(ws.read().unwrap().into_text().unwrap().as_str(), "blue: a");
    thread::sleep(Duration::from_millis(2500));
    ws.send(tungstenite::Message::text("b")).unwrap();
    assert_eq!(ws.read().unwrap().into_text().unwrap().as_str(), "blue: b");
}

/// Writes `first` at once, then `rest` one byte every 300ms (a head that
/// never ends), until the proxy closes or `rest` runs out.
fn trickle(mut s: TcpStream, first: String, rest: &'static [u8]) {
    if s.write_all(first.as_bytes()).is_err() {
        return;
    }
    for b in rest {
        thread::sleep(Duration::from_millis(300));
        if s.write_all(&[*b]).is_err() {
            return;
        }
    }
}

/// Slow request heads (one byte every 300ms: no single read waits long)
/// get 408 once `request_header_timeout` has passed since their first byte,
/// and the connection is closed: plain GETs (lean loop), POSTs, heads with
/// more headers than the lean loop looks at and targets pingora escapes
/// (pingora-proxy). Meanwhile others are served.
#[test]
fn slow_request_heads_get_408_on_both_paths() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start_opts(
        &[AppSpec::new("web", &[&b], &[&g])],
        Options {
            proxy: "request_header_timeout = \"2s\"\nclient_timeout = \"30s\"\nclient_idle_timeout = \"30s\"".into(),
            ..Options::default()
        },
    );
    let many: String = (0..70).map(|i| format!("X-H{i}: v\r\n")).collect();
    let heads = [
        "GET / HTTP/1.1\r\nHost: x\r\n".to_string(),
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n".to_string(),
        format!("GET / HTTP/1.1\r\nHost: x\r\n{many}"),
        "GET /a b HTTP/1.1\r\nHost: x\r\n".to_string(),
    ];
    const REST: &[u8] = b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    thread::scope(|scope| {
        let slow: Vec<_> = (0..20)
            .map(|i| {
                let head = heads[i % heads.len()].clone();
                let s = connect(d.proxy);
                let writer = s.try_clone().unwrap();
                scope.spawn(move || trickle(writer, head, REST));
                (i, s, Instant::now())
            })
            .collect();
        // Served meanwhile, on both paths.
        for _ in 0..3 {
            let got = exchange(
                d.proxy,
                "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            );
            assert_eq!(got.map(|g| g.0), Some(200));
            let got = exchange(
                d.proxy,
                "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
            );
            assert_eq!(got.map(|g| g.0), Some(200));
        }
        for (i, mut s, sent) in slow {
            let (status, body) = response(&mut s).unwrap_or_else(|| panic!("head {i}: no answer"));
            assert_eq!(status, 408, "head {i}: {body}");
            assert!(body.contains("did not arrive within 2s"), "{body}");
            about(
                sent.elapsed(),
                Duration::from_secs(2),
                &format!("head {i}: 408"),
            );
            assert!(closed_unanswered(&mut s), "head {i}: closed after the 408");
        }
    });
    assert!(counted(&d, "bgproxy_benign_errors_total", "client_timeout") >= 20.0);
}

/// Before the first byte of a request a kept-alive connection waits
/// `client_idle_timeout`, not `request_header_timeout`.
#[test]
fn keepalive_idle_is_not_a_slow_head() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start_opts(
        &[AppSpec::new("web", &[&b], &[&g])],
        Options {
            proxy: "request_header_timeout = \"1s\"\nclient_idle_timeout = \"10s\"".into(),
            ..Options::default()
        },
    );
    let mut s = connect(d.proxy);
    for round in 0..2 {
        if round > 0 {
            // Idle, twice the head timeout, well inside the idle timeout.
            thread::sleep(Duration::from_secs(2));
        }
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(response(&mut s).map(|r| r.0), Some(200), "round {round}");
    }
}

/// Heads over `max_header_size` get 431 as soon as the limit is passed,
/// without waiting for their end, on both paths; the connection is closed.
/// (Before, pingora-proxy read up to 1 MiB of an unfinished head first.)
#[test]
fn oversized_heads_get_431_while_reading() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start_opts(
        &[AppSpec::new("web", &[&b], &[&g])],
        Options {
            proxy: "max_header_size = \"4KiB\"\nclient_idle_timeout = \"30s\"".into(),
            ..Options::default()
        },
    );
    let starts = [
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: ",
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nX-Big: ",
    ];
    thread::scope(|scope| {
        let mut sent = Vec::new();
        for start in starts {
            // 5 KB and 20 KB (past the front door's old 16 KiB hand-over),
            // and 1 MB, with no end of head.
            for size in [5_000, 20_000, 1_000_000] {
                let mut s = connect(d.proxy);
                let mut writer = s.try_clone().unwrap();
                let mut head = start.as_bytes().to_vec();
                head.resize(head.len() + size, b'a');
                let at = Instant::now();
                scope.spawn(move || {
                    // The proxy stops reading: the rest may fail to go.
                    let _ = writer.write_all(&head);
                });
                let (status, body) =
                    response(&mut s).unwrap_or_else(|| panic!("{start:?} + {size}: no answer"));
                sent.push((status, body, at.elapsed(), start, size, s));
            }
        }
        for (status, body, waited, start, size, mut s) in sent {
            assert_eq!(status, 431, "{start:?} + {size}: {body}");
            assert!(body.contains("limit of 4096 bytes"), "{body}");
            assert!(waited < Duration::from_secs(2), "431 after {waited:?}");
            assert!(closed_unanswered(&mut s));
        }
    });
    // A head just under the limit is served.
    let ok = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Ok: {}\r\n\r\n",
        "a".repeat(3900)
    );
    assert_eq!(exchange(d.proxy, &ok).map(|r| r.0), Some(200));
}

/// Connections past `max_connections_per_ip` from one address, or past
/// `max_connections` in all, are closed at once and counted; the held ones
/// and other addresses are served.
#[test]
fn connection_limits_refuse_the_excess_and_serve_the_rest() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start_opts(
        &[AppSpec::new("web", &[&b], &[&g])],
        Options {
            proxy: "max_connections = 6\nmax_connections_per_ip = 3".into(),
            ..Options::default()
        },
    );
    let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    // A connection from `from` that has been served (so it is counted).
    let held = |from: [u8; 4]| {
        let mut held = None;
        // The harness's own probe of the port may still be counted for a
        // moment: retry until served.
        wait_until(T, || {
            let mut s = connect_from(from, d.proxy);
            s.write_all(request).unwrap();
            let served = response(&mut s).is_some_and(|r| r.0 == 200);
            held = served.then_some(s);
            served
        });
        held.expect("served")
    };
    let refused = |from: [u8; 4]| {
        let mut s = connect_from(from, d.proxy);
        let _ = s.write_all(request);
        closed_unanswered(&mut s)
    };
    let mut one: Vec<_> = (0..3).map(|_| held([127, 0, 0, 1])).collect();
    assert!(refused([127, 0, 0, 1]), "a 4th from 127.0.0.1");
    assert_eq!(
        d.metric(r#"bgproxy_connections_refused_total{reason="max_connections_per_ip"}"#),
        Some(1.0)
    );
    // Everyone else is served, and so are the held ones.
    let _others: Vec<_> = [2, 3, 3].map(|x| held([127, 0, 0, x])).into();
    for s in &mut one {
        s.write_all(request).unwrap();
        assert_eq!(response(s).map(|r| r.0), Some(200));
    }
    // Six open: the next is refused whoever it is from.
    assert!(refused([127, 0, 0, 4]), "a 7th connection");
    assert_eq!(
        d.metric(r#"bgproxy_connections_refused_total{reason="max_connections"}"#),
        Some(1.0)
    );
    // One closes: a place is free again.
    one.pop().unwrap().shutdown(Shutdown::Both).unwrap();
    drop(one);
    held([127, 0, 0, 4]);
}

/// A daemon with a TLS listener serving a self-signed certificate for
/// `a.example` (its DER in `der`), and `proxy` keys. Dropped in order: the
/// daemon, then its certificate and backends.
struct TlsDaemon {
    d: Daemon,
    port: Port,
    der: Vec<u8>,
    _dir: tempfile::TempDir,
    _backends: (Backend, Backend),
}

fn tls_daemon(proxy: &str) -> TlsDaemon {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let dir = tempfile::tempdir().unwrap();
    let (pem, key, der) = cert("a.example");
    std::fs::write(dir.path().join("a.pem"), pem).unwrap();
    std::fs::write(dir.path().join("a.key"), key).unwrap();
    let port = Port::reserve();
    let d = Daemon::start_opts(
        &[AppSpec::new("web", &[&b], &[&g])],
        Options {
            proxy: proxy.into(),
            toml: format!(
                "[proxy.tls]\nlisten = [\"{}\"]\ncert = \"{}/a.pem\"\nkey = \"{}/a.key\"\n",
                port.addr(),
                dir.path().display(),
                dir.path().display()
            ),
            ..Options::default()
        },
    );
    TlsDaemon {
        d,
        port,
        der,
        _dir: dir,
        _backends: (b, g),
    }
}

/// A TLS client of `a.example` trusting `der`, offering `alpn`.
fn tls_client(der: &[u8], alpn: &[&[u8]]) -> rustls::ClientConnection {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(der.to_vec()))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from("a.example").unwrap();
    rustls::ClientConnection::new(Arc::new(config), name).unwrap()
}

/// A GET over TLS from `from` to `port` trusting `der`: the status, or
/// `None` when the connection closed before an answer (in the handshake).
fn tls_get(from: [u8; 4], port: SocketAddr, der: &[u8]) -> Option<u16> {
    let conn = tls_client(der, &[]);
    let mut tls = rustls::StreamOwned::new(conn, connect_from(from, port));
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    answer.split_whitespace().nth(1)?.parse().ok()
}

/// A TLS connection holds its place in the connection limits from its
/// accept, through its handshake: connections that never finish their
/// handshake use up their address's share (the next one from there is
/// closed before a handshake and counted), and no one else's.
#[test]
fn tls_handshakes_count_against_the_connection_limits() {
    let TlsDaemon { d, port, der, .. } = &tls_daemon("max_connections_per_ip = 2");
    let der = der.as_slice();
    // (From another address: a connection just served may still be counted
    // for a moment.)
    assert_eq!(tls_get([127, 0, 0, 6], port.addr(), der), Some(200));
    // Two connections that never send a ClientHello, both held: the
    // daemon may admit connections in another order than they came, so one
    // it refused (closed at once) is replaced until two stay open.
    let open = |s: &mut TcpStream| {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        matches!(s.read(&mut [0u8; 1]), Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
    };
    let mut stalled: Vec<TcpStream> = Vec::new();
    assert!(wait_until(T, || {
        stalled.retain_mut(|s| open(s));
        while stalled.len() < 2 {
            stalled.push(connect_from([127, 0, 0, 5], port.addr()));
        }
        thread::sleep(Duration::from_millis(300));
        stalled.iter_mut().all(&open)
    }));
    let refused = r#"bgproxy_connections_refused_total{reason="max_connections_per_ip"}"#;
    let before = d.metric(refused).unwrap_or(0.0);
    assert_eq!(
        tls_get([127, 0, 0, 5], port.addr(), der),
        None,
        "a third from 127.0.0.5 while two sit in their handshakes"
    );
    assert_eq!(d.metric(refused), Some(before + 1.0));
    // Another address is served; so is this one once the stalled are gone.
    assert_eq!(tls_get([127, 0, 0, 6], port.addr(), der), Some(200));
    drop(stalled);
    assert!(wait_until(T, || tls_get([127, 0, 0, 5], port.addr(), der) == Some(200)));
}

/// A client that chose HTTP/2 (ALPN h2) and never sends its connection
/// preface is closed after `client_timeout`, as an HTTP/1 client that sends
/// no first byte, and counted as `client_timeout`; one that sends it is
/// served over HTTP/2 on the same listener.
#[test]
fn an_http2_client_without_its_preface_is_closed_after_client_timeout() {
    let TlsDaemon { d, port, der, .. } = &tls_daemon("client_timeout = \"1s\"");
    let mut conn = tls_client(der, &[b"h2"]);
    let mut tcp = connect(port.addr());
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).unwrap();
    }
    assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
    let at = Instant::now();
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    let mut buf = [0u8; 256];
    let closed = loop {
        match tls.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break false
            }
            Err(_) => break true,
        }
    };
    assert!(closed, "still open after {:?}", at.elapsed());
    about(at.elapsed(), Duration::from_secs(1), "closed");
    assert!(
        wait_until(T, || counted(
            d,
            "bgproxy_benign_errors_total",
            "client_timeout"
        ) >= 1.0),
        "{}",
        d.scrape()
    );
    // With its preface: an HTTP/2 request is answered.
    let http = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_der(der).unwrap())
        .resolve("a.example", port.addr())
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = http
        .get(format!("https://a.example:{}/", port.addr().port()))
        .send()
        .unwrap();
    assert_eq!(
        (resp.status().as_u16(), resp.version()),
        (200, reqwest::Version::HTTP_2)
    );
}

/// HTTP/1.1 without Host gets 400 (RFC 9112 3.2), and so does a Host that
/// is not a `host[:port]`, on both paths; HTTP/1.0 needs none.
#[test]
fn host_rules_400_on_both_paths() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g])]);
    let lean = |host: &str| format!("GET / HTTP/1.1\r\n{host}\r\n");
    let proxied =
        |host: &str| format!("POST /upload HTTP/1.1\r\n{host}Content-Length: 2\r\n\r\nok");
    for host in [
        "",
        "Host: shop.test:80@evil.test\r\n",
        "Host: user@shop.test\r\n",
        "Host: shop.test/admin\r\n",
        "Host: shop.test:8o\r\n",
    ] {
        for request in [lean(host), proxied(host)] {
            let got = exchange(d.proxy, &request);
            assert_eq!(got.as_ref().map(|r| r.0), Some(400), "{request:?}: {got:?}");
        }
    }
    assert_eq!(
        exchange(d.proxy, "GET / HTTP/1.0\r\n\r\n").map(|r| r.0),
        Some(200)
    );
    assert_eq!(
        exchange(d.proxy, &lean("Host: shop.test:8080\r\n")).map(|r| r.0),
        Some(200)
    );
    assert_eq!(b.hits(), 2, "no refused request reached the upstream");
}

/// A 101 from the upstream to a request that asked for no upgrade gets 502
/// on both paths (pingora-proxy passed it through before).
#[test]
fn unrequested_101_is_502_on_both_paths() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let switcher = Switcher::start();
    let mut app = AppSpec::new("web", &[&b], &[&g]);
    app.blue = vec![switcher.addr];
    let d = Daemon::start(&[app]);
    for request in [
        "GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok",
    ] {
        let got = exchange(d.proxy, request);
        assert_eq!(got.as_ref().map(|r| r.0), Some(502), "{request:?}: {got:?}");
    }
}

/// Clients that go away mid-request are no ERROR lines, but counted; the
/// access log prints the host and duration as plain values.
#[test]
fn clients_that_go_away_are_counted_not_errors() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g])]);
    // pingora-proxy's path (a body), then the lean loop's: the client
    // resets its connection while the upstream is still answering.
    for request in [
        "POST /slow/500 HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 2\r\n\r\nok",
        "GET /slow/500 HTTP/1.1\r\nHost: shop.test\r\n\r\n",
    ] {
        let mut s = connect(d.proxy);
        s.write_all(request.as_bytes()).unwrap();
        assert!(wait_until(T, || b.in_flight() > 0));
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
        assert!(wait_until(T, || b.in_flight() == 0));
    }
    assert!(
        wait_until(T, || counted(
            &d,
            "bgproxy_benign_errors_total",
            "client_disconnect"
        ) >= 2.0),
        "{}",
        d.scrape()
    );
    assert_eq!(
        exchange(d.proxy, "GET /x HTTP/1.1\r\nHost: shop.test:8080\r\n\r\n").map(|r| r.0),
        Some(200)
    );
    let log = d.log_with(&["path=\"/x\""]);
    let errors: Vec<_> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let line = log
        .lines()
        .find(|l| l.contains("path=\"/x\""))
        .expect("an access line");
    assert!(line.contains(" host=shop.test:8080 "), "{line}");
    let ms = line
        .split(" duration_ms=")
        .nth(1)
        .and_then(|v| v.split(' ').next())
        .expect("duration_ms");
    let decimals = ms.split('.').nth(1).map_or(0, str::len);
    assert!(ms.parse::<f64>().is_ok() && decimals <= 3, "{line}");
}

/// A self-signed certificate for `name` (PEM cert, PEM key, DER).
fn cert(name: &str) -> (String, String, Vec<u8>) {
    let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let c = params.self_signed(&key).unwrap();
    (c.pem(), key.serialize_pem(), c.der().to_vec())
}

/// Clients that close a TLS or HTTP/2 connection during its handshake
/// (browsers do so with spare connections) are counted, not ERROR lines.
#[test]
fn client_handshake_resets_are_counted_not_errors() {
    let TlsDaemon { d, port, der, .. } = &tls_daemon("");
    let reset = |s: &TcpStream| {
        socket2::SockRef::from(s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    };
    // HTTP/2 negotiated (ALPN h2), then reset before the client preface.
    let mut conn = tls_client(der, &[b"h2"]);
    let mut tcp = connect(port.addr());
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).unwrap();
    }
    assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
    reset(&tcp);
    drop(tcp);
    // Reset in the middle of the TLS handshake.
    let mut tcp = connect(port.addr());
    tcp.write_all(b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03")
        .unwrap();
    reset(&tcp);
    drop(tcp);
    assert!(
        wait_until(T, || counted(
            d,
            "bgproxy_benign_errors_total",
            "client_handshake"
        ) >= 2.0),
        "{}\n{}",
        d.scrape(),
        d.log()
    );
    // Still serving HTTPS, and nothing of it was logged as an error.
    let (s, _) = d.get("x", "/");
    assert_eq!(s, 200);
    let log = d.log();
    let errors: Vec<_> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "{errors:#?}");
}
