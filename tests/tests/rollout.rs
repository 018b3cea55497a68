//! Progressive delivery end to end (#18): a canary's steps under keep-alive
//! load, sticky buckets (cookie and client address), analysis from the
//! proxy's own counters with automatic rollback (at a rollout step and in
//! the watch after a switch), a rollout that survives `kill -9`, and the
//! control API's refusals of bad input.
//!
//! Every backend answers with its color in `X-Color`. Besides the harness's
//! [`Backend`], this file has [`Flaky`], a backend told at run time to answer
//! 500 on every n-th request, and [`Traffic`], load that takes those 500s as
//! data (the harness's [`Load`] takes any non-200 as a failure).
//!
//! Status is read while things happen: a [`Seen`] holds one reading of
//! `GET /v1/apps/web` with when it was asked and answered, so a request can
//! be placed in a step only when it was sent after a reading that showed
//! the step and answered before another reading that still showed it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bgproxy_e2e::{wait_until, AppSpec, Backend, Daemon, Load, Sample};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Helpers local to this file.

/// A backend of one color that answers 500 on every n-th request (other
/// than `/health`, which always answers 200) once told to
/// ([`Flaky::fail_every`]); 200 with `{"color": ...}` otherwise. Keep-alive
/// HTTP/1.1, a thread per connection, on 127.0.0.1 with a port the OS picks
/// (the listener stays bound until the backend is dropped).
struct Flaky {
    addr: SocketAddr,
    fail_every: Arc<AtomicU64>,
    stopped: Arc<AtomicBool>,
}

impl Flaky {
    fn start(color: &'static str) -> Flaky {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let fail_every = Arc::new(AtomicU64::new(0));
        let stopped = Arc::new(AtomicBool::new(false));
        let (every, stop) = (fail_every.clone(), stopped.clone());
        thread::spawn(move || {
            let served = Arc::new(AtomicU64::new(0));
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let (every, served) = (every.clone(), served.clone());
                        thread::spawn(move || serve_flaky(s, color, &every, &served));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Flaky {
            addr,
            fail_every,
            stopped,
        }
    }

    /// From now on every `n`-th request answers 500 (1: all of them; 0:
    /// none).
    fn fail_every(&self, n: u64) {
        self.fail_every.store(n, Ordering::SeqCst);
    }
}

impl Drop for Flaky {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
    }
}

fn serve_flaky(stream: TcpStream, color: &str, every: &AtomicU64, served: &AtomicU64) {
    // A connection the daemon forgets cannot keep its thread for ever.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut len = 0usize;
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
                if k.trim().eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let status = if target == "/health" {
            200
        } else {
            let n = served.fetch_add(1, Ordering::SeqCst) + 1;
            let k = every.load(Ordering::SeqCst);
            if k > 0 && n.is_multiple_of(k) {
                500
            } else {
                200
            }
        };
        let payload = format!("{{\"color\":\"{color}\"}}");
        let response = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: application/json\r\nX-Color: {color}\r\n\r\n{payload}",
            payload.len()
        );
        if out.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// One request of [`Traffic`]: when it was sent, its status
/// (0: no answer, the error in `color`) and the color that answered.
#[derive(Clone, Debug)]
struct Hit {
    sent: Instant,
    status: u16,
    color: String,
}

/// Requests through the front door that take 5xx as data: `clients`
/// threads, each pausing `pause` between requests, at most 20,000 requests
/// and 60 s each; stopped when finished or dropped.
struct Traffic {
    stop: Arc<AtomicBool>,
    hits: Arc<Mutex<Vec<Hit>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Traffic {
    fn start(d: &Daemon, clients: usize, pause: Duration) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|c| {
                let (stop, hits, proxy) = (stop.clone(), hits.clone(), d.proxy);
                thread::spawn(move || {
                    let http = reqwest::blocking::Client::builder()
                        .timeout(Duration::from_secs(5))
                        .build()
                        .unwrap();
                    let started = Instant::now();
                    for n in 0..20_000 {
                        if stop.load(Ordering::SeqCst)
                            || started.elapsed() > Duration::from_secs(60)
                        {
                            return;
                        }
                        let sent = Instant::now();
                        let (status, color) =
                            match http.get(format!("http://{proxy}/t/{c}/{n}")).send() {
                                Ok(r) => (
                                    r.status().as_u16(),
                                    r.headers()
                                        .get("x-color")
                                        .and_then(|v| v.to_str().ok())
                                        .unwrap_or("")
                                        .to_string(),
                                ),
                                Err(e) => (0, e.to_string()),
                            };
                        hits.lock().unwrap().push(Hit {
                            sent,
                            status,
                            color,
                        });
                        thread::sleep(pause);
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            hits,
            threads,
        }
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Waits up to `timeout` until `n` responses of `color` sent at or after
    /// `since` came back.
    fn wait_color(&self, color: &str, since: Instant, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || {
            let hits = self.hits.lock().unwrap();
            hits.iter()
                .filter(|h| h.sent >= since && h.color == color && h.status != 0)
                .count()
                >= n
        })
    }

    /// Stops the clients and returns every request.
    fn finish(mut self) -> Vec<Hit> {
        self.stop_and_join();
        self.hits()
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// One reading of `GET /v1/apps/web`: asked at `before`, answered at
/// `after`.
#[derive(Clone, Debug)]
struct Seen {
    before: Instant,
    after: Instant,
    app: Value,
}

impl Seen {
    fn live(&self) -> &str {
        self.app["live"].as_str().unwrap()
    }

    /// The rollout's step and state, if a rollout is on.
    fn step(&self) -> Option<(u64, &str)> {
        let r = &self.app["rollout"];
        Some((r["step"].as_u64()?, r["state"].as_str()?))
    }

    /// The new color's share as the weights say.
    fn green(&self) -> u64 {
        self.app["weights"]["green"].as_u64().unwrap()
    }
}

fn look(d: &Daemon) -> Seen {
    let before = Instant::now();
    let app = d.app("web");
    Seen {
        before,
        after: Instant::now(),
        app,
    }
}

/// Reads status every 50ms until `done` holds for a reading (returned last)
/// or `timeout` passes (then the test fails, with the last reading).
fn look_until(d: &Daemon, timeout: Duration, done: impl Fn(&Seen) -> bool) -> Vec<Seen> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let s = look(d);
        let finished = done(&s);
        seen.push(s);
        if finished {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "not reached in {timeout:?}; last status: {}",
            seen.last().unwrap().app
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The app's history, oldest first.
fn history(d: &Daemon) -> Vec<Value> {
    let (s, h) = d.api("GET", "/v1/apps/web/history", None);
    assert_eq!(s, 200, "{h}");
    h["history"].as_array().unwrap().clone()
}

/// `web` on `blue` and `green` with `[app.rollout]` and `[app.analysis]`
/// keys, health checked every 100ms.
fn app(blue: SocketAddr, green: SocketAddr, rollout: &str, analysis: &str) -> AppSpec {
    let mut spec = AppSpec::new("web", &[], &[]);
    spec.blue = vec![blue];
    spec.green = vec![green];
    spec.extra(&format!(
        "[app.rollout]\n{rollout}\n[app.analysis]\n{analysis}\n"
    ))
}

/// `POST /v1/apps/web/{call}` with `body` (and the token, if any).
fn post(d: &Daemon, call: &str, body: Value) -> (u16, Value) {
    d.api("POST", &format!("/v1/apps/web/{call}"), Some(body))
}

/// How many `samples` there are and the percentage green answered; each
/// must have been answered 200 (the harness's load never retries, and
/// `Load::finish` already failed the test on any other outcome).
fn green_share(samples: &[&Sample]) -> (usize, f64) {
    let green = samples
        .iter()
        .filter(|s| s.color().expect("answered 200") == "green")
        .count();
    (
        samples.len(),
        100.0 * green as f64 / samples.len().max(1) as f64,
    )
}

/// The `(errors, responses)` in an analysis detail such as `error ratio
/// 0.200 (4 of 20 responses 5xx) > max_error_ratio 0.05`.
fn errors_of(reason: &str) -> Option<(u64, u64)> {
    let rest = reason.split_once("responses 5xx")?.0;
    let rest = rest.rsplit_once('(')?.1;
    let (x, y) = rest.trim().split_once(" of ")?;
    Some((x.trim().parse().ok()?, y.trim().parse().ok()?))
}

// ---------------------------------------------------------------------------
// A canary under load.

/// A canary 10/25/50/100 with a 2s step under keep-alive load that never
/// retries: no request fails; while each step holds (placed by status read
/// before and after), the share of requests green answered is the step's
/// weight within 5 points over at least 1000 requests (the weights in status
/// agree at every reading); then green is live, history's last entry is
/// `canary`, and every request sent after that answers green.
#[test]
fn canary_steps_split_keep_alive_load_then_promote() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start(&[app(
        b.addr,
        g.addr,
        // Every request draws its bucket: the load sends no cookie back.
        "sticky = \"none\"",
        // Latency is not what this test is about: a spike of one color on a
        // busy machine must not pause the rollout.
        "min_requests = 20\nmax_latency_ratio = 1000.0",
    )]);
    assert!(d.wait_health("web", "green", "up", T));

    let load = Load::start(&d, "any", 4);
    assert!(load.wait_each_answered_since(Instant::now(), 5, T));
    let (s, v) = post(
        &d,
        "canary",
        json!({"to": "green", "steps": [10, 25, 50, 100], "step_interval": "2s", "reason": "e2e"}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["rollout"]["percent"], 10, "{v}");
    assert_eq!(v["weights"], json!({"blue": 90, "green": 10}), "{v}");

    // 3 steps of 2s, then the switch.
    let seen = look_until(&d, Duration::from_secs(30), |s| {
        s.live() == "green" && s.app["rollout"].is_null()
    });
    let promoted = seen.last().unwrap().after;
    // Some traffic on green as the only color.
    assert!(load.wait_each_answered_since(promoted, 20, T));
    let report = load.finish();

    for s in &seen {
        if let Some((_, state)) = s.step() {
            assert_eq!(state, "running", "{}", s.app);
            assert_eq!(s.live(), "blue", "{}", s.app);
            let p = s.app["rollout"]["percent"].as_u64().unwrap();
            assert_eq!(s.green(), p, "{}", s.app);
            assert_eq!(s.app["weights"]["blue"], 100 - p, "{}", s.app);
        }
    }
    for (step, percent) in [(0, 10.0), (1, 25.0), (2, 50.0)] {
        let on: Vec<&Seen> = seen
            .iter()
            .filter(|s| s.step().is_some_and(|(k, _)| k == step))
            .collect();
        assert!(on.len() >= 2, "step {step} seen {} times", on.len());
        let (from, to) = (on[0].after, on[on.len() - 1].before);
        let during: Vec<&Sample> = report
            .samples
            .iter()
            .filter(|s| s.sent >= from && s.done <= to)
            .collect();
        let (n, share) = green_share(&during);
        eprintln!("step {step} at {percent}%: {share:.1}% green over {n} requests");
        // At 50%, 1000 requests put 5 points at 3 standard deviations.
        assert!(n >= 1000, "step {step}: {n} requests, too few to judge");
        assert!(
            (share - percent).abs() <= 5.0,
            "step {step} at {percent}%: {share:.1}% of {n} requests went to green"
        );
    }
    let after: Vec<&Sample> = report
        .samples
        .iter()
        .filter(|s| s.sent >= promoted)
        .collect();
    assert!(!after.is_empty());
    assert!(
        after.iter().all(|s| s.color() == Some("green")),
        "a request sent after the canary completed went to blue"
    );

    let h = history(&d);
    let last = h.last().expect("a history entry");
    assert_eq!(
        (&last["kind"], &last["from"], &last["to"]),
        (&json!("canary"), &json!("blue"), &json!("green")),
        "{last}"
    );
    assert_eq!(d.app("web")["switch_count"], 1);
    assert_eq!(
        d.metric("bgproxy_traffic_weight{app=\"web\",color=\"green\"}"),
        Some(100.0)
    );
}

// ---------------------------------------------------------------------------
// Sticky.

/// A GET of `/` with `bucket` sent back in the cookie (if any): the color
/// that answered and the bucket of a `Set-Cookie`, if the answer set one.
fn get_sticky(
    http: &reqwest::blocking::Client,
    d: &Daemon,
    bucket: Option<u16>,
) -> (String, Option<u16>) {
    let mut req = http.get(format!("http://{}/", d.proxy));
    if let Some(b) = bucket {
        req = req.header("Cookie", format!("theme=dark; bgproxy_bucket={b}"));
    }
    let r = req.send().unwrap();
    assert_eq!(r.status(), 200);
    let color = r.headers()["x-color"].to_str().unwrap().to_string();
    let set = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("bgproxy_bucket="))
        .map(|v| v.split(';').next().unwrap().parse::<u16>().unwrap());
    (color, set)
}

/// Holds green at `percent` (`POST /weight`).
fn weight(d: &Daemon, percent: u32) {
    let (s, v) = post(d, "weight", json!({"to": "green", "percent": percent}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["weights"]["green"], percent, "{v}");
}

/// With `sticky = "cookie"`: no cookie at share 0; at 20% 200 fresh
/// clients each get a bucket, land on green exactly when their bucket is
/// under 2000, and split about 20/80; sending the cookie back, each keeps
/// its color across requests (and gets no new cookie); as the share rises to
/// 50 and 80 clients only move blue -> green, and back at 20 every client
/// has its first color again.
#[test]
fn sticky_cookie_keeps_clients_and_moves_them_only_forward() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start(&[app(b.addr, g.addr, "sticky = \"cookie\"", "")]);
    assert!(d.wait_health("web", "green", "up", T));
    let http = reqwest::blocking::Client::new();
    assert_eq!(
        get_sticky(&http, &d, None),
        ("blue".to_string(), None),
        "no split, no cookie"
    );

    weight(&d, 20);
    let green_of = |bucket: u16, share: u16| bucket < share * 100;
    let mut clients: Vec<(u16, String)> = Vec::new();
    for _ in 0..200 {
        let (color, set) = get_sticky(&http, &d, None);
        let bucket = set.expect("a fresh client gets its bucket");
        assert!(bucket < 10_000, "{bucket}");
        assert_eq!(
            color == "green",
            green_of(bucket, 20),
            "bucket {bucket}: {color}"
        );
        clients.push((bucket, color));
    }
    let greens = clients.iter().filter(|(_, c)| c == "green").count();
    // Binomial(200, 0.2): 40 +- 5.7; 20..=60 is 3.5 sigma.
    assert!(
        (20..=60).contains(&greens),
        "{greens} of 200 fresh clients on green at 20%"
    );
    let first = clients.clone();

    let mut moved = 0;
    for share in [20u16, 50, 80] {
        if share != 20 {
            weight(&d, u32::from(share));
        }
        for (bucket, color) in clients.iter_mut() {
            let (a, set_a) = get_sticky(&http, &d, Some(*bucket));
            let (b, set_b) = get_sticky(&http, &d, Some(*bucket));
            assert_eq!((set_a, set_b), (None, None), "the cookie was sent back");
            assert_eq!(a, b, "bucket {bucket} changed color at {share}%");
            assert_eq!(
                a == "green",
                green_of(*bucket, share),
                "bucket {bucket} at {share}%: {a}"
            );
            assert!(
                !(color == "green" && a == "blue"),
                "bucket {bucket} moved back green -> blue as the share rose to {share}%"
            );
            if *color != a {
                moved += 1;
            }
            *color = a;
        }
    }
    // About 60% of 200 clients go from blue to green between 20% and 80%.
    assert!(moved >= 60, "only {moved} clients moved as the share rose");

    weight(&d, 20);
    for (bucket, color) in &first {
        assert_eq!(
            &get_sticky(&http, &d, Some(*bucket)).0,
            color,
            "bucket {bucket} back at 20%"
        );
    }
}

/// With `sticky = "client_ip"`: at 50% every request from 127.0.0.1, on new
/// and kept-alive connections, with or without a bucket cookie, gets one
/// color and no cookie; over shares 1..99 its color is constant at each
/// share and moves blue -> green once, never back.
#[test]
fn sticky_client_ip_gives_an_address_one_color_per_share() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start(&[app(b.addr, g.addr, "sticky = \"client_ip\"", "")]);
    assert!(d.wait_health("web", "green", "up", T));

    weight(&d, 50);
    let kept = reqwest::blocking::Client::new();
    let mut colors = Vec::new();
    for i in 0..60 {
        // Every third on a connection of its own.
        let http = if i % 3 == 0 {
            reqwest::blocking::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap()
        } else {
            kept.clone()
        };
        let bucket = (i % 2 == 0).then_some(if i % 4 == 0 { 0 } else { 9_999 });
        let (color, set) = get_sticky(&http, &d, bucket);
        assert_eq!(set, None, "no cookie with client_ip");
        colors.push(color);
    }
    assert!(
        colors.iter().all(|c| c == &colors[0]),
        "127.0.0.1 got both colors at 50%: {colors:?}"
    );

    let mut path = Vec::new();
    for share in [1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99] {
        weight(&d, share);
        let at: Vec<String> = (0..10).map(|_| get_sticky(&kept, &d, None).0).collect();
        assert!(at.iter().all(|c| c == &at[0]), "{share}%: {at:?}");
        path.push((share, at[0].clone()));
    }
    let flips = path.windows(2).filter(|w| w[0].1 != w[1].1).count();
    assert!(
        path.windows(2)
            .all(|w| !(w[0].1 == "green" && w[1].1 == "blue")),
        "moved back as the share rose: {path:?}"
    );
    // 127.0.0.1's bucket is fixed (a keyed hash with fixed keys): it is
    // between 100 and 9899, so the address changes color once on the way.
    assert_eq!(flips, 1, "{path:?}");
    assert_eq!(path.iter().find(|(s, _)| *s == 50).unwrap().1, colors[0]);
}

// ---------------------------------------------------------------------------
// Analysis at a step.

/// Green answers 500 on every 5th request; with `auto_rollback` the first
/// analysed step fails and the rollout is aborted before its third step:
/// share back to 0, history `automatic` with the numbers (about 20% of at
/// least `min_requests`), blue live all along, the rollback counted once,
/// and every request sent after it answers blue.
#[test]
fn failing_new_color_is_rolled_back_automatically_with_the_numbers() {
    let b = Backend::start("blue");
    let g = Flaky::start("green");
    let d = Daemon::start(&[app(
        b.addr,
        g.addr,
        "sticky = \"none\"",
        "min_requests = 20\nmax_error_ratio = 0.05\nmax_latency_ratio = 1000.0\nauto_rollback = true",
    )]);
    assert!(d.wait_health("web", "green", "up", T));
    g.fail_every(5);

    let traffic = Traffic::start(&d, 2, Duration::from_millis(3));
    assert!(traffic.wait_color("blue", Instant::now(), 10, T));
    let (s, v) = post(
        &d,
        "canary",
        json!({"to": "green", "steps": [10, 25, 50, 100], "step_interval": "2s"}),
    );
    assert_eq!(s, 200, "{v}");
    let seen = look_until(&d, Duration::from_secs(20), |s| s.app["rollout"].is_null());
    let aborted = seen.last().unwrap().after;
    for s in &seen {
        assert_eq!(s.live(), "blue", "the live color changed: {}", s.app);
        if let Some((step, state)) = s.step() {
            assert!(
                step <= 1,
                "reached step {step} of a failing color: {}",
                s.app
            );
            assert_eq!(state, "running", "{}", s.app);
        }
    }
    let end = &seen.last().unwrap().app;
    assert_eq!(end["weights"], json!({"blue": 100, "green": 0}), "{end}");
    assert_eq!(end["switch_count"], 0, "{end}");
    assert!(traffic.wait_color("blue", aborted, 50, T));
    let hits = traffic.finish();

    let h = history(&d);
    assert_eq!(h.len(), 1, "{h:?}");
    let entry = &h[0];
    assert_eq!(
        (&entry["kind"], &entry["from"], &entry["to"]),
        (&json!("automatic"), &json!("green"), &json!("blue")),
        "{entry}"
    );
    let reason = entry["reason"].as_str().unwrap();
    assert!(reason.contains("max_error_ratio 0.05"), "{reason}");
    let (errors, responses) = errors_of(reason).unwrap_or_else(|| panic!("{reason}"));
    let ratio = errors as f64 / responses as f64;
    assert!(responses >= 20, "{reason}");
    assert!((0.1..=0.3).contains(&ratio), "{reason}");
    assert!(
        reason.contains(&format!("error ratio {ratio:.3}")),
        "{reason}"
    );

    assert_eq!(
        d.metric("bgproxy_automatic_rollbacks_total{app=\"web\"}"),
        Some(1.0)
    );
    assert_eq!(
        d.metric("bgproxy_analysis_total{app=\"web\",result=\"fail\"}"),
        Some(1.0)
    );
    assert!(
        hits.iter().all(|h| h.status != 0),
        "no request went unanswered"
    );
    assert!(
        hits.iter().all(|h| h.status == 200 || h.color == "green"),
        "only green failed"
    );
    let late: Vec<&Hit> = hits.iter().filter(|h| h.sent >= aborted).collect();
    assert!(
        late.iter().all(|h| h.color == "blue" && h.status == 200),
        "a request sent after the abort went to green"
    );
}

/// Too little traffic for `min_requests`: the step is judged inconclusive
/// and held (same step and share, a new window), after `max_inconclusive`
/// (2) windows in a row the rollout pauses and stays paused; `promote`
/// finishes it: green live, history `canary`.
#[test]
fn too_little_traffic_holds_the_step_then_pauses_and_promote_finishes() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start(&[app(
        b.addr,
        g.addr,
        "sticky = \"none\"",
        "min_requests = 50\nmax_inconclusive = 2",
    )]);
    assert!(d.wait_health("web", "green", "up", T));
    let (s, v) = post(
        &d,
        "canary",
        json!({"to": "green", "steps": [10, 50, 100], "step_interval": "1s"}),
    );
    assert_eq!(s, 200, "{v}");
    let started = v["rollout"]["step_started"].clone();
    for _ in 0..10 {
        assert_eq!(d.get("any", "/").0, 200);
    }

    let held = look_until(&d, T, |s| s.app["rollout"]["inconclusive"] == 1);
    let r = &held.last().unwrap().app["rollout"];
    assert_eq!(
        (&r["step"], &r["percent"], &r["state"]),
        (&json!(0), &json!(10), &json!("running")),
        "{r}"
    );
    assert_ne!(
        r["step_started"], started,
        "the held step begins a new window: {r}"
    );
    let a = &r["last_analysis"];
    assert_eq!(a["result"], "inconclusive", "{r}");
    assert!(a["requests"].as_u64().unwrap() < 50, "{r}");
    assert!(
        a["detail"].as_str().unwrap().contains("min_requests 50"),
        "{r}"
    );

    let paused = look_until(&d, T, |s| s.app["rollout"]["state"] != "running");
    let app = paused.last().unwrap().app.clone();
    let r = &app["rollout"];
    assert_eq!(
        (&r["state"], &r["step"], &r["percent"], &r["inconclusive"]),
        (&json!("paused"), &json!(0), &json!(10), &json!(2)),
        "{r}"
    );
    assert_eq!(app["weights"], json!({"blue": 90, "green": 10}));
    assert_eq!(app["live"], "blue");
    // Paused waits for a human: two more step intervals change nothing.
    let moved = wait_until(Duration::from_millis(2500), || {
        d.app("web")["rollout"] != *r
    });
    assert!(!moved, "a paused rollout moved: {}", d.app("web"));
    assert_eq!(
        d.metric("bgproxy_analysis_total{app=\"web\",result=\"inconclusive\"}"),
        Some(2.0)
    );

    let (s, v) = post(&d, "promote", json!({"reason": "enough"}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["live"], "green", "{v}");
    assert_eq!(v["rollout"], Value::Null, "{v}");
    assert_eq!(v["weights"], json!({"blue": 0, "green": 100}), "{v}");
    let h = history(&d);
    let last = h.last().unwrap();
    assert_eq!(
        (&last["kind"], &last["to"]),
        (&json!("canary"), &json!("green")),
        "{last}"
    );
    for _ in 0..5 {
        assert_eq!(d.color_of("any"), "green");
    }
}

// ---------------------------------------------------------------------------
// Durability.

/// `kill -9` while a canary is on its second step (40%): after the restart
/// status shows the same step, share, state and step start; the step gets a
/// whole window again (it ends no sooner than its interval after the kill,
/// though half of it had gone by); traffic splits 40/60 within 5 points
/// meanwhile; then the rollout completes.
#[test]
fn kill9_during_a_step_resumes_at_the_same_step_and_share() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let mut d = Daemon::start(&[app(
        b.addr,
        g.addr,
        "sticky = \"none\"",
        "min_requests = 10\nmax_latency_ratio = 1000.0",
    )]);
    assert!(d.wait_health("web", "green", "up", T));
    let load = Load::start(&d, "any", 2);
    let (s, v) = post(
        &d,
        "canary",
        json!({"to": "green", "steps": [10, 40, 100], "step_interval": "3s"}),
    );
    assert_eq!(s, 200, "{v}");
    let seen = look_until(&d, T, |s| s.step().is_some_and(|(k, _)| k == 1));
    let before = seen.last().unwrap().app["rollout"].clone();
    // Half the step gone by: a restart that counted the window from
    // step_started, not anew, would end the step about 1.5s after it.
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(d.app("web")["rollout"], before, "still on step 2");
    // Nothing fails before the kill; the kill itself cuts requests.
    load.finish();

    let killed = Instant::now();
    d.kill9_and_restart();
    eprintln!("restarted in {:?}", killed.elapsed());
    let after = d.app("web");
    let r = &after["rollout"];
    for key in [
        "to",
        "state",
        "step",
        "steps",
        "percent",
        "step_started",
        "step_interval_ms",
    ] {
        assert_eq!(r[key], before[key], "{key}: before {before}, after {r}");
    }
    assert_eq!(
        after["weights"],
        json!({"blue": 60, "green": 40}),
        "{after}"
    );
    assert_eq!(after["live"], "blue");

    let load = Load::start(&d, "any", 3);
    let seen = look_until(&d, Duration::from_secs(20), |s| s.live() == "green");
    let promoted = seen.last().unwrap().after;
    assert!(load.wait_each_answered_since(promoted, 5, T));
    let report = load.finish();
    let on: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.step().is_some_and(|(k, _)| k == 1))
        .collect();
    assert!(
        on.len() >= 2,
        "step 2 seen {} times after the restart",
        on.len()
    );
    let last_on_step = on[on.len() - 1].before;
    assert!(
        last_on_step >= killed + Duration::from_millis(2900),
        "step 2 ended {:?} after the kill: a restart cut its window",
        last_on_step - killed
    );
    let during: Vec<&Sample> = report
        .samples
        .iter()
        .filter(|s| s.sent >= on[0].after && s.done <= last_on_step)
        .collect();
    let (n, share) = green_share(&during);
    eprintln!("after restart at 40%: {share:.1}% green over {n} requests");
    assert!(n >= 1000, "only {n} requests after the restart");
    assert!(
        (share - 40.0).abs() <= 5.0,
        "{share:.1}% of {n} on green at 40%"
    );
    assert_eq!(history(&d).last().unwrap()["kind"], "canary");
}

// ---------------------------------------------------------------------------
// The watch after a switch.

const WATCH: &str = "interval = \"1s\"\nwatch = \"5s\"\nmin_requests = 10\nmax_error_ratio = 0.05\nmax_latency_ratio = 1000.0\nauto_rollback = true";

/// A plain switch to green, which then answers 500 on every 2nd request:
/// within the watch bgproxy switches back to blue (kind `automatic`, the
/// numbers in `reason`, counted once), and requests sent after that answer
/// blue.
#[test]
fn watch_rolls_back_a_switch_to_a_color_that_starts_failing() {
    let b = Backend::start("blue");
    let g = Flaky::start("green");
    let d = Daemon::start(&[app(b.addr, g.addr, "", WATCH)]);
    assert!(d.wait_health("web", "green", "up", T));
    let traffic = Traffic::start(&d, 2, Duration::from_millis(5));
    assert!(traffic.wait_color("blue", Instant::now(), 20, T));

    let (s, v) = d.switch("web", "green");
    assert_eq!(s, 200, "{v}");
    let switched = Instant::now();
    g.fail_every(2);
    let seen = look_until(&d, Duration::from_secs(10), |s| s.live() == "blue");
    let back = seen.last().unwrap();
    assert!(
        back.before - switched < Duration::from_secs(5),
        "rolled back {:?} after the switch, past the 5s watch",
        back.before - switched
    );
    assert!(traffic.wait_color("blue", back.after, 20, T));
    let hits = traffic.finish();

    let h = history(&d);
    assert_eq!(h.len(), 2, "{h:?}");
    assert_eq!(h[0]["kind"], "switch");
    let entry = &h[1];
    assert_eq!(
        (
            &entry["kind"],
            &entry["from"],
            &entry["to"],
            &entry["actor"]
        ),
        (
            &json!("automatic"),
            &json!("green"),
            &json!("blue"),
            &json!("bgproxy")
        ),
        "{entry}"
    );
    let reason = entry["reason"].as_str().unwrap();
    let (errors, responses) = errors_of(reason).unwrap_or_else(|| panic!("{reason}"));
    assert!(responses >= 10 && errors * 4 >= responses, "{reason}");
    assert_eq!(d.app("web")["switch_count"], 2);
    assert_eq!(
        d.metric("bgproxy_automatic_rollbacks_total{app=\"web\"}"),
        Some(1.0)
    );
    assert!(
        hits.iter()
            .filter(|h| h.sent >= back.after)
            .all(|h| h.color == "blue" && h.status == 200),
        "a request sent after the rollback went to green"
    );
}

/// A plain switch to a healthy green: the watch judges its windows (passes
/// counted) and nothing else happens: green stays live past the watch and
/// history has the switch alone.
#[test]
fn watch_leaves_a_healthy_switch_alone() {
    let b = Backend::start("blue");
    let g = Flaky::start("green");
    let d = Daemon::start(&[app(b.addr, g.addr, "", WATCH)]);
    assert!(d.wait_health("web", "green", "up", T));
    let traffic = Traffic::start(&d, 2, Duration::from_millis(5));
    assert!(traffic.wait_color("blue", Instant::now(), 20, T));

    let (s, v) = d.switch("web", "green");
    assert_eq!(s, 200, "{v}");
    let switched = Instant::now();
    // The whole watch and a second more.
    let moved = wait_until(Duration::from_secs(6), || d.app("web")["live"] != "green");
    assert!(!moved, "a healthy switch was undone: {:?}", history(&d));
    assert!(switched.elapsed() >= Duration::from_secs(6));
    let hits = traffic.finish();

    let h = history(&d);
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h[0]["kind"], "switch");
    let passes = d
        .metric("bgproxy_analysis_total{app=\"web\",result=\"pass\"}")
        .unwrap_or(0.0);
    assert!(passes >= 2.0, "the watch judged {passes} windows");
    assert_eq!(
        d.metric("bgproxy_analysis_total{app=\"web\",result=\"fail\"}")
            .unwrap_or(0.0),
        0.0
    );
    assert_eq!(
        d.metric("bgproxy_automatic_rollbacks_total{app=\"web\"}"),
        Some(0.0)
    );
    assert!(hits.iter().all(|h| h.status == 200), "no request failed");
}

// ---------------------------------------------------------------------------
// Bad input.

/// What a refused call must not change.
fn fingerprint(d: &Daemon) -> Value {
    let a = d.app("web");
    json!({
        "live": a["live"],
        "weights": a["weights"],
        "rollout": a["rollout"],
        "switch_count": a["switch_count"],
        "last_switch": a["last_switch"],
        "history": history(d).len(),
    })
}

/// Shares outside 0-100, steps that do not increase or do not end at 100,
/// an unknown color, a bad interval, calls that need a rollout without one,
/// a second canary (409 `rollout_running`), a switch during a rollout and a
/// call without the token: each refused with its code and a message that
/// names the problem, and status unchanged after each.
#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start_with(&[app(b.addr, g.addr, "", "")], Some("s3cret"));
    assert!(d.wait_health("web", "green", "up", T));

    // Each case: call, body, status and code expected, words the message
    // must have.
    type Case = (&'static str, Value, u16, &'static str, &'static str);
    let check = |cases: &[Case]| {
        let before = fingerprint(&d);
        for (call, body, status, code, says) in cases {
            let (s, v) = post(&d, call, body.clone());
            assert_eq!(
                (s, v["code"].as_str().unwrap_or("")),
                (*status, *code),
                "{call} {body}: {v}"
            );
            let msg = v["error"].as_str().unwrap_or("");
            assert!(
                msg.contains(says),
                "{call} {body}: {msg:?} does not say {says:?}"
            );
            assert_eq!(fingerprint(&d), before, "{call} {body} changed the app");
        }
    };
    let canary = |steps: Value| json!({"to": "green", "steps": steps, "step_interval": "1h"});
    let bad = "bad_request";
    #[rustfmt::skip]
    let without_rollout = [
        ("weight", json!({"to": "green", "percent": 101}), 400, bad, "between 0 and 100"),
        ("weight", json!({"to": "green", "percent": -5}), 400, bad, "invalid"),
        ("weight", json!({"to": "purple", "percent": 10}), 400, bad, "purple"),
        ("weight", json!({"to": "blue", "percent": 10}), 400, bad, "blue is live"),
        ("canary", canary(json!([10, 5, 100])), 400, bad, "5 comes after 10"),
        ("canary", canary(json!([10, 10, 100])), 400, bad, "must increase"),
        ("canary", canary(json!([10, 50])), 400, bad, "last step must be 100"),
        ("canary", canary(json!([0, 100])), 400, bad, "step 0"),
        ("canary", canary(json!([10, 150])), 400, bad, "step 150"),
        ("canary", canary(json!([])), 400, bad, "at least one"),
        ("canary", json!({"to": "purple"}), 400, bad, "purple"),
        ("canary", json!({"to": "green", "step_interval": "soon"}), 400, bad, "step_interval"),
        ("canary", json!({"to": "green", "step_interval": "0s"}), 400, bad, "more than 0"),
        ("promote", json!({}), 409, "no_rollout", "web"),
        ("abort", json!({}), 409, "no_rollout", "web"),
        ("pause", json!({}), 409, "no_rollout", "web"),
    ];
    check(&without_rollout);

    let (s, v) = post(&d, "canary", canary(json!([10, 25, 50, 100])));
    assert_eq!(s, 200, "{v}");
    assert_eq!(d.app("web")["weights"], json!({"blue": 90, "green": 10}));
    #[rustfmt::skip]
    let during_rollout = [
        ("canary", canary(json!([20, 100])), 409, "rollout_running", "green at 10%"),
        ("canary", json!({"to": "green"}), 409, "rollout_running", "step 1/4"),
        ("switch", json!({"to": "green"}), 409, "rollout_running", "green at 10%"),
        ("weight", json!({"to": "green", "percent": 101}), 400, bad, "between 0 and 100"),
        ("weight", json!({"to": "purple", "percent": 10}), 400, bad, "purple"),
        ("canary", canary(json!([10, 50])), 409, "rollout_running", "green at 10%"),
        ("resume", json!({}), 409, "rollout_state", "running"),
    ];
    check(&during_rollout);

    // Without the token.
    let before = fingerprint(&d);
    let r = reqwest::blocking::Client::new()
        .post(d.url("/v1/apps/web/abort"))
        .json(&json!({}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        fingerprint(&d),
        before,
        "an abort without the token changed the app"
    );
}
