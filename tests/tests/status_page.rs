//! The status page and live events (#23) end to end, against the real
//! daemon and real backends on loopback:
//! - `GET /v1/events` sends a switch, a rollout step (with its analysis) and
//!   a health change, in order, with generations that never go back, and a
//!   reconnect with `Last-Event-ID` resumes after the last one seen;
//! - 50 SSE clients that never read do not delay switches (latency with
//!   and without them is printed), and are dropped and counted;
//! - `GET /` is `text/html` with no external URL;
//! - headless Chromium (Debian's `chromium`, driven over the DevTools
//!   protocol with tungstenite) shows the live color, then the new one
//!   after a switch made with bgctl, without a reload; screenshots go to
//!   `target/test-artifacts/`;
//! - `bgctl watch` prints one line per event;
//! - reads from another host (a network namespace with a veth pair made
//!   by the test, addresses on this machine only) need a token, unless
//!   `control.public_read = true`.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bgproxy_control::client::{ServerEvent, SseParser};
use bgproxy_e2e::{bin, wait_until, AppSpec, Backend, Daemon, Options, Port};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(10);

/// A reader of `GET /v1/events` on a thread of its own: events arrive on
/// a channel, so a test waits for them with a deadline.
struct Events {
    rx: mpsc::Receiver<ServerEvent>,
}

impl Events {
    fn open(d: &Daemon, last_event_id: Option<&str>) -> Events {
        let (tx, rx) = mpsc::channel();
        let url = d.url("/v1/events");
        let last = last_event_id.map(str::to_string);
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let http = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap();
            let mut req = http.get(url);
            if let Some(id) = last {
                req = req.header("Last-Event-ID", id);
            }
            let resp = req.send().expect("GET /v1/events");
            let _ = ready_tx.send((
                resp.status().as_u16(),
                resp.headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string(),
            ));
            let mut parser = SseParser::default();
            for line in BufReader::new(resp).lines() {
                let Ok(line) = line else { return };
                if let Some(e) = parser.line(&line) {
                    if tx.send(e).is_err() {
                        return;
                    }
                }
            }
        });
        let (status, ctype) = ready_rx.recv_timeout(T).expect("the events answer");
        assert_eq!(status, 200);
        assert_eq!(ctype, "text/event-stream");
        Events { rx }
    }

    /// The next event, within `timeout`.
    fn next(&self, timeout: Duration) -> Option<ServerEvent> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Events until one satisfies `done` (included), within `timeout`.
    fn until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&Value) -> bool,
    ) -> Vec<(ServerEvent, Value)> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Some(e) = self.next(left) else { break };
            let v: Value = serde_json::from_str(&e.data).unwrap_or(Value::Null);
            let stop = done(&v);
            seen.push((e, v));
            if stop {
                return seen;
            }
        }
        panic!(
            "no awaited event within {timeout:?}; saw: {:#?}",
            seen.iter().map(|(_, v)| v).collect::<Vec<_>>()
        );
    }
}

fn app_with_rollout(b: &Backend, g: &Backend) -> AppSpec {
    AppSpec::new("web", &[b], &[g]).extra(
        "[app.rollout]\nsticky = \"none\"\n\
         [app.analysis]\nmin_requests = 5\nmax_latency_ratio = 1000.0\nmax_error_ratio = 0.5\n",
    )
}

#[test]
fn events_for_a_switch_a_rollout_step_and_a_health_change_in_order() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start(&[app_with_rollout(&b, &g)]);
    assert!(d.wait_health("web", "blue", "up", T));
    assert!(d.wait_health("web", "green", "up", T));
    let events = Events::open(&d, None);

    // 1. A switch.
    let (s, v) = d.switch("web", "green");
    assert_eq!(s, 200, "{v}");
    // 2. A rollout back to blue: its start, then a step ended by its
    //    analysis under a little traffic (the last step makes blue live).
    let (s, v) = d.api(
        "POST",
        "/v1/apps/web/canary",
        Some(json!({"to": "blue", "steps": [50, 100], "step_interval": "1s", "actor": "e2e"})),
    );
    assert_eq!(s, 200, "{v}");
    let traffic_until = Instant::now() + Duration::from_secs(20);
    let mut sent = 0;
    while Instant::now() < traffic_until && sent < 2000 {
        let _ = d.get("any", "/");
        sent += 1;
        if d.app("web")["live"] == "blue" {
            break;
        }
    }
    // 3. A health change: the green backend goes away.
    g.stop();

    let seen = events.until(Duration::from_secs(30), |v| {
        v["type"] == "health" && v["color"] == "green" && v["health"] == "down"
    });
    let kinds: Vec<&str> = seen
        .iter()
        .map(|(_, v)| v["type"].as_str().unwrap())
        .collect();
    eprintln!("events: {kinds:?}");
    for (e, v) in &seen {
        eprintln!("  {} {}", e.id.as_deref().unwrap_or("-"), v);
    }
    let position = |pred: &dyn Fn(&Value) -> bool| {
        seen.iter()
            .position(|(_, v)| pred(v))
            .unwrap_or_else(|| panic!("missing event in {kinds:?}"))
    };
    let switch =
        position(&|v| v["type"] == "switch" && v["to"] == "green" && v["kind"] == "switch");
    let started = position(&|v| v["type"] == "rollout" && v["rollout"]["step"] == 0);
    let analysis = position(&|v| v["type"] == "analysis" && v["result"] == "pass");
    let promoted =
        position(&|v| v["type"] == "switch" && v["to"] == "blue" && v["kind"] == "canary");
    let health = seen.len() - 1;
    assert!(
        switch < started && started < analysis && analysis < promoted && promoted < health,
        "{kinds:?}"
    );
    // Generations: the current one with each event, never going back, and
    // moved by every routing change.
    let gens: Vec<u64> = seen
        .iter()
        .map(|(_, v)| v["generation"].as_u64().unwrap())
        .collect();
    assert!(gens.windows(2).all(|w| w[0] <= w[1]), "{gens:?}");
    assert!(
        gens[switch] < gens[started] && gens[started] < gens[promoted],
        "{gens:?}"
    );
    assert_eq!(
        gens[health], gens[promoted],
        "health does not move the generation"
    );
    assert_eq!(seen[switch].1["app"], "web");
    assert_eq!(seen[switch].1["actor"], "e2e");
    // Ids: one per event, increasing.
    let seqs: Vec<u64> = seen
        .iter()
        .map(|(_, v)| v["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(seen.iter().all(|(e, _)| e.id.is_some()));

    // A reconnect with Last-Event-ID resumes right after that event.
    let after = seen[started].0.id.clone().unwrap();
    let resumed = Events::open(&d, Some(&after));
    let first = resumed.next(T).expect("kept events are sent again");
    let v: Value = serde_json::from_str(&first.data).unwrap();
    assert_eq!(v["seq"], seqs[started] + 1, "{v}");
    // An id from another process: resync.
    let other = Events::open(&d, Some("1-1"));
    let e = other.next(T).expect("a resync");
    assert_eq!(e.event, "resync", "{e:?}");
}

/// A pending request that runs out of `control.request_ttl` is announced
/// once (`request`, `"action": "expired"`), so a page drops it then, and
/// `/v1/requests` no longer lists it.
#[test]
fn an_expired_request_is_announced_once() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start_opts(
        &[AppSpec::new("web", &[&b], &[&g])],
        Options {
            control: "request_ttl = \"2s\"\n".into(),
            ..Options::default()
        },
    );
    assert!(d.wait_health("web", "green", "up", T));
    let events = Events::open(&d, None);
    let (s, created) = d.api(
        "POST",
        "/v1/apps/web/requests",
        Some(json!({"action": "switch", "to": "green", "actor": "e2e"})),
    );
    assert_eq!(s, 200, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let seen = events.until(T, |v| {
        v["type"] == "request" && v["action"] == "expired" && v["id"] == id.as_str()
    });
    let created_at = seen
        .iter()
        .position(|(_, v)| v["type"] == "request" && v["action"] == "created")
        .expect("the request's creation came first");
    assert!(created_at < seen.len() - 1);
    let (_, last) = seen.last().unwrap();
    assert_eq!(last["app"], "web");
    assert_eq!(last["request"]["action"], "switch");
    let (_, list) = d.api("GET", "/v1/requests", None);
    assert_eq!(list["requests"], json!([]), "{list}");
    // Once: no second announcement.
    let deadline = Instant::now() + Duration::from_millis(1500);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Some(e) = events.next(left) else { break };
        let v: Value = serde_json::from_str(&e.data).unwrap_or(Value::Null);
        assert!(v["action"] != "expired", "announced again: {v}");
    }
    assert_eq!(
        d.app("web")["live"],
        "blue",
        "an expired request moves nothing"
    );
}

/// A client of `/v1/events` that never reads, with a small receive buffer.
fn stalled_client(control: SocketAddr) -> socket2::Socket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(1024).unwrap();
    s.connect(&control.into()).unwrap();
    let mut stream: TcpStream = s.try_clone().unwrap().into();
    write!(
        stream,
        "GET /v1/events HTTP/1.1\r\nHost: {control}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    s
}

/// `n` switches back and forth; each one's latency as the client sees it.
fn switch_latencies(d: &Daemon, n: usize, live: &mut &'static str) -> Vec<Duration> {
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let to = if *live == "blue" { "green" } else { "blue" };
        let started = Instant::now();
        let (s, v) = d.switch("web", to);
        took.push(started.elapsed());
        assert_eq!(s, 200, "{v}");
        *live = to;
    }
    took.sort();
    took
}

fn describe(took: &[Duration]) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "median {:.2} ms, p90 {:.2} ms, max {:.2} ms over {} switches",
        ms(took[took.len() / 2]),
        ms(took[took.len() * 9 / 10]),
        ms(took[took.len() - 1]),
        took.len()
    )
}

#[test]
fn fifty_stalled_event_clients_do_not_delay_a_switch() {
    const SWITCHES: usize = 200;
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g])]);
    assert!(d.wait_health("web", "green", "up", T));
    assert!(d.wait_health("web", "blue", "up", T));
    let mut live = "blue";
    // Warm up (first state writes, connections).
    switch_latencies(&d, 10, &mut live);
    let none = switch_latencies(&d, SWITCHES, &mut live);

    let stalled: Vec<_> = (0..50).map(|_| stalled_client(d.control)).collect();
    // Every one is subscribed once its answer's head has arrived (the
    // daemon subscribes before it writes it): peeked, never read.
    let subscribed = wait_until(T, || {
        stalled.iter().all(|s| {
            let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1];
            s.set_nonblocking(true).unwrap();
            let ready = s.peek(&mut buf).is_ok_and(|n| n == 1);
            s.set_nonblocking(false).unwrap();
            ready
        })
    });
    assert!(subscribed, "the 50 clients got their answer's head");
    // A client that reads, to see the events arrive.
    let reader = Events::open(&d, None);
    let started = Instant::now();
    let with = switch_latencies(&d, SWITCHES, &mut live);
    let burst = started.elapsed();
    let seen = reader.until(T, |v| {
        v["switch_count"].as_u64() == Some(10 + 2 * SWITCHES as u64)
    });
    eprintln!("no event clients:        {}", describe(&none));
    eprintln!("50 stalled event clients: {}", describe(&with));
    eprintln!(
        "{SWITCHES} switches with 50 stalled clients took {burst:?}; a reading client saw {} events",
        seen.len()
    );
    // A sanity bound, not a timing assertion: the switches completed.
    assert!(
        with.last().unwrap() < &Duration::from_secs(5),
        "{}",
        describe(&with)
    );
    assert_eq!(d.app("web")["live"], live);

    // The stalled clients fell behind (their sockets are full): each is
    // dropped and counted once a write waited too long.
    let metric = "bgproxy_events_dropped_clients_total";
    let dropped = wait_until(Duration::from_secs(40), || {
        d.metric(metric).is_some_and(|n| n >= 50.0)
    });
    eprintln!("{metric} = {:?}", d.metric(metric));
    assert!(dropped, "the stalled clients are dropped and counted");
    // The reading client was not dropped: it still gets events.
    let (s, _) = d.switch("web", if live == "blue" { "green" } else { "blue" });
    assert_eq!(s, 200);
    reader.until(T, |v| v["type"] == "switch");
    drop(stalled);
}

#[test]
fn the_page_is_html_and_loads_nothing_from_elsewhere() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g])]);
    assert!(d.wait_health("web", "blue", "up", T));
    let resp = reqwest::blocking::get(d.url("/")).unwrap();
    assert_eq!(resp.status(), 200);
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ctype.starts_with("text/html"), "{ctype}");
    let page = resp.text().unwrap();
    assert!(page.len() > 5000, "the whole page: {} bytes", page.len());
    for external in [
        "http://", "https://", "//", "src=", "href=", "url(", "@import",
    ] {
        assert!(!page.contains(external), "the page holds {external:?}");
    }
    // The numbers it refreshes: each color's last minute.
    for _ in 0..20 {
        d.get("any", "/");
    }
    // A request is counted as it ends, which may be just after its answer
    // reached the client: wait for the 20th.
    let traffic = || d.api("GET", "/v1/traffic", None);
    wait_until(T, || traffic().1["apps"][0]["blue"]["requests"] == 20);
    let (s, t) = traffic();
    assert_eq!(s, 200, "{t}");
    assert_eq!(t["apps"][0]["name"], "web");
    assert_eq!(t["apps"][0]["blue"]["requests"], 20, "{t}");
    assert_eq!(t["apps"][0]["green"]["requests"], 0, "{t}");
    assert!(t["apps"][0]["blue"]["p99_ms"].as_f64().is_some(), "{t}");
    // And rise/fall progress in the status.
    let a = d.app("web");
    let u = &a["colors"]["blue"]["upstreams"][0];
    assert_eq!(u["rise"], 1, "{u}");
    assert_eq!(u["fall"], 2, "{u}");
}

#[test]
fn bgctl_watch_prints_one_line_per_event() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g])]);
    assert!(d.wait_health("web", "green", "up", T));
    // No health event comes in between.
    assert!(d.wait_health("web", "blue", "up", T));
    let watch = |json: bool| {
        let mut cmd = Command::new(bin("bgctl"));
        cmd.args(["watch", "--count", "1"])
            .env("BGCTL_ADDR", format!("http://{}", d.control))
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if json {
            cmd.arg("--json");
        }
        cmd.spawn().unwrap()
    };
    let (mut text, mut raw) = (watch(false), watch(true));
    // A stream sends nothing before an event, so whether both watchers are
    // connected yet cannot be seen: switch back and forth until both have
    // printed their one event and exited (bounded).
    let mut live = "blue";
    for _ in 0..40 {
        let done = |c: &mut Child| c.try_wait().unwrap().is_some();
        if done(&mut text) && done(&mut raw) {
            break;
        }
        let to = if live == "blue" { "green" } else { "blue" };
        let (s, v) = d.api(
            "POST",
            "/v1/apps/web/switch",
            Some(json!({"to": to, "actor": "ann", "reason": "release 42"})),
        );
        assert_eq!(s, 200, "{v}");
        live = to;
        std::thread::sleep(Duration::from_millis(250));
    }
    let out = |c: Child| {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let text = out(text);
    let raw = out(raw);
    eprintln!("bgctl watch: {text}bgctl watch --json: {raw}");
    let line = text.trim_end();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        line.ends_with("web switch blue -> green (switch) by ann: release 42")
            || line.ends_with("web switch green -> blue (switch) by ann: release 42"),
        "{text}"
    );
    let v: Value = serde_json::from_str(raw.trim()).unwrap();
    assert_eq!(v["type"], "switch");
    assert_eq!(v["actor"], "ann");
}

/// Headless Chromium, driven over the DevTools protocol.
struct Chromium {
    child: Child,
    _dir: tempfile::TempDir,
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Chromium {
    const BINARY: &'static str = "/usr/bin/chromium";

    /// Starts it with a blank page; `None` (and says the test is skipped)
    /// when Chromium is not installed.
    fn start() -> Option<Chromium> {
        if !Path::new(Self::BINARY).exists() {
            eprintln!(
                "SKIPPED: {} is not installed (Debian package `chromium`; .ci/run installs it)",
                Self::BINARY
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(Self::BINARY)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-port=0",
                "--window-size=1280,1000",
            ])
            .arg(format!("--user-data-dir={}", dir.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium starts");
        // The port and the browser's endpoint, once it listens.
        let file = dir.path().join("DevToolsActivePort");
        let mut browser = None;
        wait_until(Duration::from_secs(30), || {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let mut lines = text.lines();
            if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                browser = Some((port.trim().to_string(), path.trim().to_string()));
            }
            browser.is_some()
        });
        let (port, path) = browser.expect("chromium wrote DevToolsActivePort");
        let mut c = Chromium {
            child,
            _dir: dir,
            ws: connect(&format!("ws://127.0.0.1:{port}{path}")),
            next_id: 1,
        };
        // A page of our own, and a connection to it.
        let target = c.call("Target.createTarget", json!({"url": "about:blank"}));
        let id = target["targetId"].as_str().unwrap().to_string();
        c.ws = connect(&format!("ws://127.0.0.1:{port}/devtools/page/{id}"));
        c.call("Page.enable", json!({}));
        c.call("Runtime.enable", json!({}));
        Some(c)
    }

    /// One command; its result (events in between are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(tungstenite::Message::text(msg)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let msg = match self.ws.read() {
                Ok(m) => m,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => panic!("DevTools connection: {e}"),
            };
            let Ok(text) = msg.to_text() else { continue };
            let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
        panic!("{method}: no answer within 30s");
    }

    /// The value of a JavaScript expression in the page.
    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        r["result"]["value"].clone()
    }

    /// Waits until `expression` is `want`; answers what it was last.
    fn wait_for(&mut self, expression: &str, want: &Value, timeout: Duration) -> Value {
        let mut last = Value::Null;
        wait_until(timeout, || {
            last = self.eval(expression);
            &last == want
        });
        last
    }

    fn screenshot(&mut self, path: &Path) {
        use base64_decode::decode;
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = decode(r["data"].as_str().unwrap());
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn connect(url: &str) -> tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>> {
    let (ws, _) = tungstenite::connect(url).expect("DevTools websocket");
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
    }
    ws
}

/// A small standard base64 decoder (the screenshot's PNG).
mod base64_decode {
    pub fn decode(text: &str) -> Vec<u8> {
        let value = |c: u8| match c {
            b'A'..=b'Z' => Some(c - b'A'),
            b'a'..=b'z' => Some(c - b'a' + 26),
            b'0'..=b'9' => Some(c - b'0' + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        };
        let mut out = Vec::with_capacity(text.len() * 3 / 4);
        let (mut acc, mut bits) = (0u32, 0);
        for v in text.bytes().filter_map(value) {
            acc = (acc << 6) | u32::from(v);
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        out
    }
}

/// `target/test-artifacts`, made if needed.
fn artifacts() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe
        .ancestors()
        .nth(3)
        .expect("target dir")
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An app's other services (`[[app.routes]]`) are on the page with each
/// color's upstreams, and a route upstream going down shows without a
/// reload (its `health` event updates the page in place).
#[test]
fn chromium_shows_a_route_upstream_going_down_without_a_reload() {
    let Some(mut browser) = Chromium::start() else {
        return;
    };
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let (api_b, api_g) = (Backend::start("api-blue"), Backend::start("api-green"));
    let d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g]).extra(&format!(
        "[[app.routes]]\nname = \"api\"\npath_prefix = \"/api/\"\n\
         [app.routes.blue]\nupstreams = [\"{}\"]\n[app.routes.green]\nupstreams = [\"{}\"]\n",
        api_b.addr, api_g.addr
    ))]);
    assert!(wait_until(T, || d.app("web")["colors"]["green"]["healthy"] == true));
    browser.call(
        "Page.navigate",
        json!({"url": format!("http://{}/", d.control)}),
    );
    let health = format!(
        "(() => {{ const u = document.querySelector('[data-route=\"api\"] [data-upstream=\"{}\"]'); return u ? u.dataset.health : null; }})()",
        api_g.addr
    );
    assert_eq!(browser.wait_for(&health, &json!("up"), T), json!("up"));
    assert_eq!(
        browser.wait_for(
            "document.getElementById('conn').textContent",
            &json!("live updates"),
            T
        ),
        json!("live updates")
    );
    browser.eval("window.bgproxyTestMark = 7");
    api_g.stop();
    assert_eq!(browser.wait_for(&health, &json!("down"), T), json!("down"));
    assert_eq!(
        browser.eval("window.bgproxyTestMark"),
        json!(7),
        "no reload"
    );
    let route = browser.eval("document.querySelector('[data-route=\"api\"]').textContent");
    assert!(
        route
            .as_str()
            .is_some_and(|t| t.contains("/api/") && t.contains("not healthy")),
        "{route}"
    );
}

#[test]
fn chromium_shows_the_new_live_color_after_a_switch_without_a_reload() {
    let Some(mut browser) = Chromium::start() else {
        return;
    };
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g]).hosts(&["web.test"])]);
    assert!(d.wait_health("web", "green", "up", T));
    assert!(d.wait_health("web", "blue", "up", T));
    for _ in 0..50 {
        d.get("web.test", "/");
    }

    let url = format!("http://{}/", d.control);
    browser.call("Page.navigate", json!({"url": url}));
    let live = "(() => { const b = document.querySelector('[data-app=\"web\"] .badge.live'); return b ? b.dataset.color : null; })()";
    let seen = browser.wait_for(live, &json!("blue"), T);
    assert_eq!(seen, json!("blue"), "the page shows blue live");
    let connected = browser.wait_for(
        "document.getElementById('conn').textContent",
        &json!("live updates"),
        T,
    );
    assert_eq!(
        connected,
        json!("live updates"),
        "the page follows /v1/events"
    );
    // A mark a reload would wipe out.
    browser.eval("window.bgproxyTestMark = 42");

    let switched = Instant::now();
    let (code, out, err) = d.bgctl(&["switch", "green", "--yes", "--reason", "status page test"]);
    assert_eq!(code, 0, "{out}{err}");
    let seen = browser.wait_for(live, &json!("green"), T);
    let shown_after = switched.elapsed();
    assert_eq!(seen, json!("green"), "the page shows green live");
    assert_eq!(
        browser.eval("window.bgproxyTestMark"),
        json!(42),
        "no reload"
    );
    let log = browser.eval("document.getElementById('events').textContent");
    assert!(log.as_str().is_some_and(|l| l.contains("switch")), "{log}");
    eprintln!("the page showed green {shown_after:?} after bgctl switch started");

    // With a token typed in, the page follows the events over a fetch
    // stream (which can send Authorization) and offers actions; a switch
    // from the page, confirmed, goes through the API's Origin and
    // Content-Type checks and shows up without a reload.
    browser.eval(
        "document.getElementById('token').value = 'any'; \
         document.getElementById('tokenform').requestSubmit(); 1",
    );
    let button =
        "document.querySelector('[data-app=\"web\"] button[data-act=\"switch\"]') ? 'shown' : null";
    assert_eq!(browser.wait_for(button, &json!("shown"), T), json!("shown"));
    let connected = browser.wait_for(
        "document.getElementById('conn').textContent",
        &json!("live updates"),
        T,
    );
    assert_eq!(connected, json!("live updates"), "the fetch stream follows");
    browser.eval(
        "window.confirm = () => true; \
         document.querySelector('[data-app=\"web\"] button[data-act=\"switch\"]').click(); 1",
    );
    assert_eq!(browser.wait_for(live, &json!("blue"), T), json!("blue"));
    assert_eq!(
        browser.eval("window.bgproxyTestMark"),
        json!(42),
        "no reload"
    );
    let app = d.app("web");
    assert_eq!(app["live"], "blue");
    let (_, h) = d.api("GET", "/v1/apps/web/history", None);
    let last = &h["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["actor"], "status-page", "{last}");
    // Back to green for the picture (events keep coming over the stream).
    let (code, out, err) = d.bgctl(&["switch", "green", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(browser.wait_for(live, &json!("green"), T), json!("green"));

    // A rollout and a pending request show up too, from their events.
    let (s, v) = d.api(
        "POST",
        "/v1/apps/web/canary",
        Some(json!({"to": "blue", "steps": [25, 100], "step_interval": "1h", "actor": "e2e"})),
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = d.api(
        "POST",
        "/v1/apps/web/requests",
        Some(json!({"action": "promote", "reason": "looks good", "actor": "bot"})),
    );
    assert_eq!(s, 200, "{v}");
    let parts = "(() => { const c = document.querySelector('[data-app=\"web\"]'); \
                 return c.querySelector('.rollout') && c.querySelector('.requests') ? \
                 c.querySelector('.rollout').textContent.includes('blue at 25%') : null; })()";
    assert_eq!(browser.wait_for(parts, &json!(true), T), json!(true));
    // Numbers, and a health change.
    for _ in 0..50 {
        d.get("web.test", "/");
    }
    b.set_health(500);
    browser.wait_for(
        "document.querySelector('[data-app=\"web\"] .color.blue li').dataset.health",
        &json!("down"),
        T,
    );
    browser.eval("document.querySelector('#apps') && 1");
    std::thread::sleep(Duration::from_millis(300));
    let dir = artifacts();
    let wide = dir.join("status-page.png");
    browser.screenshot(&wide);
    browser.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 390, "height": 1200, "deviceScaleFactor": 1, "mobile": true}),
    );
    std::thread::sleep(Duration::from_millis(300));
    let phone = dir.join("status-page-phone.png");
    browser.screenshot(&phone);
    for p in [&wide, &phone] {
        let bytes = std::fs::read(p).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{} is a PNG", p.display());
        eprintln!("screenshot: {}", p.display());
    }
}

/// A network namespace with a veth pair to the host, removed when
/// dropped. Addresses on this machine only: 10.201.N.1 (host side) and
/// 10.201.N.2 (namespace side), a /30 of their own.
struct Netns {
    name: String,
    host: Ipv4Addr,
}

impl Netns {
    fn create() -> Result<Netns, String> {
        let id = std::process::id() % 250 + 1;
        let name = format!("bgp-sp-{}", std::process::id());
        let (host_if, ns_if) = (format!("bgph{id}"), format!("bgpn{id}"));
        let host = Ipv4Addr::new(10, 201, id as u8, 1);
        let ns = Netns {
            name: name.clone(),
            host,
        };
        let run = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        };
        // A pair left by a run of this test that was killed (its process id
        // came round again): gone with its namespace, else here.
        let _ = run(&["link", "del", &host_if]);
        run(&["netns", "add", &name])?;
        // From here on, Drop removes the namespace (and the pair with it).
        let host_cidr = format!("{host}/30");
        let ns_cidr = format!("10.201.{id}.2/30");
        run(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ])?;
        run(&["link", "set", &ns_if, "netns", &name])?;
        run(&["addr", "add", &host_cidr, "dev", &host_if])?;
        run(&["link", "set", &host_if, "up"])?;
        run(&[
            "netns", "exec", &name, "ip", "addr", "add", &ns_cidr, "dev", &ns_if,
        ])?;
        run(&["netns", "exec", &name, "ip", "link", "set", &ns_if, "up"])?;
        run(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `bgctl` run inside the namespace: exit code, stdout, stderr.
    fn bgctl(&self, addr: SocketAddr, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .arg(bin("bgctl"))
            .args(["--addr", &format!("http://{addr}"), "--timeout", "5s"])
            .args(args)
            .env_remove("BGCTL_TOKEN")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        if let Some(t) = token {
            cmd.env("BGCTL_TOKEN", t);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// bgproxy with its control API on `control` (not loopback), run by hand.
struct Remote {
    child: Child,
}

impl Remote {
    fn start(
        dir: &Path,
        control: SocketAddr,
        proxy: SocketAddr,
        app: &AppSpec,
        public_read: bool,
    ) -> Remote {
        let list = |v: &[SocketAddr]| {
            v.iter()
                .map(|a| format!("\"{a}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let config = format!(
            "[proxy]\nlisten = [\"{proxy}\"]\nthreads = 1\n\
             [control]\nlisten = \"{control}\"\ntoken_file = \"token\"\npublic_read = {public_read}\n\
             [state]\npath = \"state/state.json\"\n\
             [[app]]\nname = \"web\"\n[app.health]\n{}\n[app.blue]\nupstreams = [{}]\n[app.green]\nupstreams = [{}]\n",
            app.health,
            list(&app.blue),
            list(&app.green)
        );
        let path = dir.join("bgproxy.toml");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.join("bgproxy.log")).unwrap();
        let child = Command::new(bin("bgproxy"))
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let up = wait_until(Duration::from_secs(20), || {
            TcpStream::connect(control).is_ok()
        });
        assert!(
            up,
            "bgproxy did not listen on {control}: {}",
            std::fs::read_to_string(dir.join("bgproxy.log")).unwrap_or_default()
        );
        Remote { child }
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn reads_from_another_host_need_a_token_unless_public_read() {
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(why) => {
            // The rule itself is unit-tested (api_guard::read_needs_token).
            eprintln!("SKIPPED: cannot make a network namespace here ({why}); the rule's unit test covers it");
            return;
        }
    };
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let app = AppSpec::new("web", &[&b], &[&g]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "operator-token\n").unwrap();
    // The control port on the veth address, held like Port does on loopback.
    let held = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    held.set_reuse_address(true).unwrap();
    held.bind(&SocketAddr::from((ns.host, 0)).into()).unwrap();
    let control = held.local_addr().unwrap().as_socket().unwrap();
    let proxy = Port::reserve();

    let remote = Remote::start(dir.path(), control, proxy.addr(), &app, false);
    let (code, out, err) = ns.bgctl(control, None, &["status"]);
    eprintln!("from the namespace, no token: exit {code}: {err}");
    assert_eq!(code, 4, "refused without a token: {out}{err}");
    assert!(
        err.contains("Authorization") || err.contains("token"),
        "{err}"
    );
    let (code, _, err) = ns.bgctl(control, None, &["watch", "--count", "1"]);
    assert_eq!(code, 4, "the events too: {err}");
    let (code, _, err) = ns.bgctl(control, Some("wrong"), &["status"]);
    assert_eq!(code, 4, "a wrong token: {err}");
    let (code, out, err) = ns.bgctl(control, Some("operator-token"), &["status"]);
    assert_eq!(code, 0, "with the token: {out}{err}");
    assert!(out.contains("web"), "{out}");
    // The page itself holds no data: served to anyone who reaches it.
    drop(remote);

    let _remote = Remote::start(dir.path(), control, proxy.addr(), &app, true);
    let (code, out, err) = ns.bgctl(control, None, &["status"]);
    assert_eq!(code, 0, "public_read: {out}{err}");
    // Changes still need the token.
    let (code, _, err) = ns.bgctl(control, None, &["switch", "green", "--yes", "--emergency"]);
    assert_eq!(code, 4, "a change without a token: {err}");
    drop(held);
}
