//! The data plane end to end: cutover under load, multi-app routing by Host,
//! forwarding, retries and the 502 that never falls back to the standby.

use std::collections::BTreeSet;
use std::thread;
use std::time::{Duration, Instant};

use bgproxy_e2e::{close_wait_to, wait_until, AppSpec, Backend, Daemon, H2Backend, Load, Sample};
use serde_json::Value;

const T: Duration = Duration::from_secs(10);

/// Several keep-alive clients send requests while the live color is switched
/// dozens of times: zero failures (the clients never retry), kept-alive
/// connections follow the switches, and every request sent after the last
/// switch was answered, on every connection, goes to the final color.
#[test]
fn flip_under_load_loses_nothing() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g])]);
    assert!(d.wait_health("web", "green", "up", T) && d.wait_health("web", "blue", "up", T));

    const CLIENTS: usize = 4;
    let load = Load::start(&d, "any", CLIENTS);
    assert!(
        load.wait_each_answered_since(Instant::now(), 5, T),
        "every client is served before the switches"
    );
    let mut to = "green";
    for _ in 0..39 {
        let (s, v) = d.switch("web", to);
        assert_eq!(s, 200, "{v}");
        to = if to == "green" { "blue" } else { "green" };
        // Pacing, so that requests land between the switches.
        thread::sleep(Duration::from_millis(25));
    }
    // 39 switches from blue end on green. Settle on blue, with every
    // connection served by it, so that a request still routed by an older
    // table after the final switch shows as blue, never green by chance.
    let (s, v) = d.switch("web", "blue");
    assert_eq!(s, 200, "{v}");
    assert!(
        load.wait_each(Instant::now(), 3, T, |s| s.color() == Some("blue")),
        "every client is served by blue"
    );
    let (s, v) = d.switch("web", "green");
    assert_eq!(s, 200, "{v}");
    let switched = Instant::now();
    assert!(
        load.wait_each_answered_since(switched, 20, T),
        "every client goes on being served after the last switch"
    );
    let report = load.finish();
    assert_eq!(report.colors().len(), 2, "both colors served");

    for client in 0..CLIENTS {
        let mine: Vec<&Sample> = report
            .samples
            .iter()
            .filter(|s| s.client == client)
            .collect();
        // Kept-alive connections were exercised: one of this client's
        // connections was answered by both colors, and one carried requests
        // from before the last switch to after it.
        let conns: BTreeSet<u64> = mine.iter().map(|s| s.conn).collect();
        let saw = |conn: u64, pred: &dyn Fn(&Sample) -> bool| {
            mine.iter().any(|s| s.conn == conn && pred(s))
        };
        assert!(
            conns.iter().any(|&c| saw(c, &|s| s.color() == Some("blue"))
                && saw(c, &|s| s.color() == Some("green"))),
            "client {client}: no connection followed a switch ({} connections)",
            conns.len()
        );
        assert!(
            conns
                .iter()
                .any(|&c| saw(c, &|s| s.sent < switched) && saw(c, &|s| s.sent >= switched)),
            "client {client}: no connection lived across the last switch"
        );
        // After the last switch's answer, only the final color.
        let late: Vec<&&Sample> = mine.iter().filter(|s| s.sent >= switched).collect();
        let stale: Vec<&&&Sample> = late.iter().filter(|s| s.color() != Some("green")).collect();
        assert!(
            stale.is_empty(),
            "client {client}: {} of {} requests sent after the last switch was answered \
             went to the old color: {:?}",
            stale.len(),
            late.len(),
            &stale[..stale.len().min(3)]
        );
    }
    // Fresh connections too.
    for _ in 0..5 {
        let r = reqwest::blocking::get(format!("http://{}/fresh", d.proxy)).unwrap();
        assert_eq!(r.headers()["x-color"], "green");
    }
    assert_eq!(d.app("web")["switch_count"], 41);
}

/// Two apps by Host switch independently; an unknown Host gets 404 when no
/// app is the default.
#[test]
fn apps_are_routed_by_host_and_switch_independently() {
    let (b1, g1, b2, g2) = (
        Backend::start("a-blue"),
        Backend::start("a-green"),
        Backend::start("b-blue"),
        Backend::start("b-green"),
    );
    let d = Daemon::start(&[
        AppSpec::new("a", &[&b1], &[&g1]).hosts(&["a.example.net"]),
        AppSpec::new("b", &[&b2], &[&g2]).hosts(&["b.example.net", "www.b.example.net"]),
    ]);
    assert_eq!(d.color_of("a.example.net"), "a-blue");
    assert_eq!(d.color_of("B.Example.NET:8080"), "b-blue");
    assert!(d.wait_health("b", "green", "up", T));
    assert_eq!(d.switch("b", "green").0, 200);
    assert_eq!(d.color_of("www.b.example.net"), "b-green");
    assert_eq!(d.color_of("a.example.net"), "a-blue");
    assert_eq!(d.app("a")["live"], "blue");

    let (s, body) = d.get("evil.example.org", "/");
    assert_eq!(s, 404);
    assert!(
        body.contains("no app is configured for this host"),
        "{body}"
    );
    assert!(!body.contains("evil"), "the Host is not echoed");
}

/// Method, path, query, headers and body reach the upstream unchanged, with
/// X-Forwarded-For/Proto/Host added (every X-Forwarded-For line the client
/// sent is kept, in order, before the client's own address).
#[test]
fn forwards_unchanged_with_x_forwarded_headers() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g]).hosts(&["shop.example.net"])]);
    let resp = reqwest::blocking::Client::new()
        .put(format!("http://{}/cart/items?id=42&q=a%20b", d.proxy))
        .header("Host", "shop.example.net")
        .header("X-Custom", "kept")
        .header("X-Forwarded-For", "203.0.113.9")
        .header("X-Forwarded-For", "198.51.100.7")
        .body("the body")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: Value = resp.json().unwrap();
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["target"], "/cart/items?id=42&q=a%20b");
    assert_eq!(echo["body"], "the body");
    // Every header line the upstream got, in order: each of these exactly
    // once (a second X-Forwarded-For line would be a second hop's claim).
    let lines: Vec<(String, String)> =
        serde_json::from_value(echo["header_lines"].clone()).unwrap();
    let named = |name: &str| -> Vec<&str> {
        lines
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(named("host"), ["shop.example.net"], "{lines:?}");
    assert_eq!(named("x-custom"), ["kept"], "{lines:?}");
    assert_eq!(
        named("x-forwarded-for"),
        ["203.0.113.9, 198.51.100.7, 127.0.0.1"],
        "{lines:?}"
    );
    assert_eq!(named("x-forwarded-proto"), ["http"], "{lines:?}");
    assert_eq!(named("x-forwarded-host"), ["shop.example.net"], "{lines:?}");
}

/// An upstream that refuses connections: idempotent requests are retried on
/// another upstream of the same color; when no upstream of the live color can
/// take the request the client gets a 502 and the standby is never used.
#[test]
fn refused_upstream_is_retried_then_502_never_standby() {
    let (b1, b2, g) = (
        Backend::start("blue"),
        Backend::start("blue"),
        Backend::start("green"),
    );
    // Checks so rare that the stopped upstream still counts as up.
    let slow = "interval = \"1h\"\ntimeout = \"1s\"\n";
    let d = Daemon::start(&[AppSpec::new("web", &[&b1, &b2], &[&g]).health(slow)]);
    assert!(d.wait_health("web", "blue", "up", T));
    b1.stop();
    for _ in 0..10 {
        let (s, body) = d.get("x", "/");
        assert_eq!(s, 200, "GET retried on the other blue upstream: {body}");
    }
    // A POST is not retried: some of them hit the dead upstream and get 502.
    let c = reqwest::blocking::Client::new();
    let statuses: Vec<u16> = (0..6)
        .map(|_| {
            c.post(format!("http://{}/order", d.proxy))
                .body("x")
                .send()
                .unwrap()
                .status()
                .as_u16()
        })
        .collect();
    assert!(
        statuses.contains(&502) && statuses.contains(&200),
        "{statuses:?}"
    );

    b2.stop();
    let (s, body) = d.get("x", "/");
    assert_eq!(s, 502);
    assert!(body.contains("no upstream of web (blue)"), "{body}");
    assert_eq!(g.hits(), 0, "the standby never took traffic");
}

#[test]
fn h2_apps_talk_http2_to_their_upstreams() {
    let h2 = H2Backend::start("blue");
    let g = Backend::start("green");
    let mut app = AppSpec::new("api", &[], &[&g]).keys("h2 = true");
    app.blue = vec![h2.addr];
    let d = Daemon::start(&[app]);
    // Health checks speak HTTP/2 too: the h2c-only backend is up.
    assert!(d.wait_health("api", "blue", "up", T), "{}", d.app("api"));
    let c = reqwest::blocking::Client::new();
    let r = c
        .post(format!("http://{}/v1/items?x=1", d.proxy))
        .body("payload")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let echo: serde_json::Value = r.json().unwrap();
    assert_eq!(echo["version"], "HTTP/2.0", "{echo}");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["target"], "/v1/items?x=1");
    assert_eq!(echo["body"], "payload");
    // Many requests from several clients at once share the upstream.
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let url = format!("http://{}/many", d.proxy);
            std::thread::spawn(move || {
                let c = reqwest::blocking::Client::new();
                (0..25)
                    .filter(|_| c.get(&url).send().is_ok_and(|r| r.status() == 200))
                    .count()
            })
        })
        .collect();
    let ok: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(ok, 100);
}

/// Reads one HTTP/1.1 response with a Content-Length from a raw connection:
/// status and body.
fn read_response(reader: &mut std::io::BufReader<std::net::TcpStream>) -> (u16, String) {
    use std::io::{BufRead, Read};
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut len = 0;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).unwrap();
        if h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    (status, String::from_utf8(body).unwrap())
}

/// Plain requests (lean loop) and requests with bodies (pingora-proxy)
/// alternate on one keep-alive connection, a header arriving in two
/// pieces, a body in the same write as its header and in a later one: every request reaches the
/// upstream whole, with the forwarded headers, and the connection stays
/// open throughout.
#[test]
fn plain_and_body_requests_share_one_keep_alive_connection() {
    use std::io::Write;
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g])]);
    let conn = std::net::TcpStream::connect(d.proxy).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut out = conn.try_clone().unwrap();
    let mut reader = std::io::BufReader::new(conn);
    let get = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: web.example.net\r\nX-Forwarded-For: 192.0.2.1\r\n\r\n"
        )
    };
    // Writes `bytes` whole, or in two pieces split at `at` with a pause.
    let send = |out: &mut std::net::TcpStream, bytes: &str, at: Option<usize>| match at {
        Some(at) => {
            out.write_all(&bytes.as_bytes()[..at]).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            out.write_all(&bytes.as_bytes()[at..]).unwrap();
        }
        None => out.write_all(bytes.as_bytes()).unwrap(),
    };
    for round in 0..3 {
        // Round 1: a header in two pieces.
        send(
            &mut out,
            &get(&format!("/plain/{round}")),
            (round == 1).then_some(20),
        );
        let (status, body) = read_response(&mut reader);
        assert_eq!(status, 200, "{body}");
        let echo: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(echo["method"], "GET");
        assert_eq!(echo["target"], format!("/plain/{round}"));
        assert_eq!(echo["headers"]["x-forwarded-for"], "192.0.2.1, 127.0.0.1");
        assert_eq!(echo["headers"]["x-forwarded-host"], "web.example.net");

        let payload = format!("payload {round}");
        let head = format!(
            "POST /body/{round} HTTP/1.1\r\nHost: web.example.net\r\nContent-Length: {}\r\n\r\n",
            payload.len()
        );
        // The body with the header, or after it.
        let split = (round % 2 == 1).then_some(head.len());
        send(&mut out, &format!("{head}{payload}"), split);
        let (status, body) = read_response(&mut reader);
        assert_eq!(status, 200, "{body}");
        let echo: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(echo["method"], "POST");
        assert_eq!(echo["target"], format!("/body/{round}"));
        assert_eq!(echo["body"], payload);
        assert_eq!(echo["headers"]["x-forwarded-proto"], "http");
    }
    assert_eq!(b.hits(), 6, "every request reached the live color once");
}

/// The lean loop keeps its upstream connections between requests. An
/// upstream that closes them while they are idle (its keep-alive timeout)
/// fails no request: a closed one is never handed out. And once the pool
/// has looked them over, none is left half-closed (CLOSE-WAIT) in the
/// proxy, though no request came to take it.
#[test]
fn upstream_closing_idle_connections_fails_nothing_and_leaves_none_half_closed() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g])]);
    assert!(d.wait_health("web", "blue", "up", T));

    let load = Load::start(&d, "any", 8);
    for _ in 0..6 {
        assert!(load.wait_each_answered_since(Instant::now(), 20, T));
        b.close_idle_connections();
    }
    assert!(load.wait_each_answered_since(Instant::now(), 20, T));
    let report = load.finish(); // asserts that every request got its 200
    assert!(report.sent() > 8 * 20 * 7, "{} requests", report.sent());

    b.close_idle_connections();
    let port = b.addr.port();
    assert!(
        wait_until(Duration::from_secs(10), || close_wait_to(port) == 0),
        "{} upstream connections left in CLOSE-WAIT",
        close_wait_to(port)
    );
    // The pool still serves: new connections where the old ones closed.
    let (status, _) = d.get("any", "/");
    assert_eq!(status, 200);
}

/// A response whose body comes slowly (an event stream) reaches the client
/// head first, then each piece as the upstream sends it, re-chunked, and
/// the connection then serves the next request.
#[test]
fn a_slow_body_is_passed_on_piece_by_piece_head_first() {
    use std::io::{BufRead, BufReader, Write};
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g])]);
    assert!(d.wait_health("web", "blue", "up", T));

    const PAUSE: Duration = Duration::from_millis(1500);
    let mut s = std::net::TcpStream::connect(d.proxy).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let sent = Instant::now();
    s.write_all(b"GET /stream/2/1500 HTTP/1.1\r\nHost: any\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let head = read_head(&mut r);
    let head_after = sent.elapsed();
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(head.contains("Transfer-Encoding: chunked\r\n"), "{head}");
    assert!(
        head_after < PAUSE / 2,
        "the head waited for the body: {head_after:?}"
    );
    // The body, decoded: each chunk as the upstream sent it.
    let (body, chunks) = read_chunked(&mut r, sent);
    assert_eq!(body, "blue 0\nblue 1\n");
    assert!(
        chunks[1] - chunks[0] > PAUSE / 2,
        "the pieces came as they were sent: {chunks:?}"
    );
    // Kept alive: the next request on the same connection.
    s.write_all(b"GET /next HTTP/1.1\r\nHost: any\r\n\r\n")
        .unwrap();
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 200 "), "{status}");
}

/// Codings before `chunked` (`Transfer-Encoding: gzip, chunked`): the body
/// still reaches the client chunked, as its head says, and the connection
/// serves the next request.
#[test]
fn a_body_with_codings_before_chunked_reaches_the_client_chunked() {
    use std::io::{BufRead, BufReader, Write};
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g])]);
    assert!(d.wait_health("web", "blue", "up", T));

    let mut s = std::net::TcpStream::connect(d.proxy).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(b"GET /stream/2/0?te=gzip HTTP/1.1\r\nHost: any\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let head = read_head(&mut r);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        head.contains("Transfer-Encoding: gzip, chunked\r\n"),
        "{head}"
    );
    assert!(head.contains("Connection: keep-alive\r\n"), "{head}");
    let (body, _) = read_chunked(&mut r, Instant::now());
    assert_eq!(body, "blue 0\nblue 1\n");
    s.write_all(b"GET /next HTTP/1.1\r\nHost: any\r\n\r\n")
        .unwrap();
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 200 "), "{status}");
}

/// A response head read from a raw connection, up to its empty line.
fn read_head(r: &mut impl std::io::BufRead) -> String {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        head.push_str(&line);
        if line == "\r\n" || line.is_empty() {
            return head;
        }
    }
}

/// A chunked body read from a raw connection, decoded, and when each chunk
/// arrived (since `since`).
fn read_chunked(r: &mut impl std::io::BufRead, since: Instant) -> (String, Vec<Duration>) {
    let mut body = String::new();
    let mut arrived = Vec::new();
    loop {
        let mut size = String::new();
        r.read_line(&mut size).unwrap();
        let n = usize::from_str_radix(size.trim_end(), 16)
            .unwrap_or_else(|_| panic!("not a chunk size: {size:?} after {body:?}"));
        let mut data = vec![0; n + 2];
        r.read_exact(&mut data).unwrap();
        if n == 0 {
            return (body, arrived);
        }
        arrived.push(since.elapsed());
        body.push_str(std::str::from_utf8(&data[..n]).unwrap());
    }
}
