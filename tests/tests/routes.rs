//! Apps made of several services (#26): `[[app.routes]]` end to end.
//!
//! The app `web` has a frontend (its own `[app.blue]`/`[app.green]`) and an
//! API route (`/api/`) with upstreams of its own per color. Every backend
//! answers with its name in `X-Color`: `blue` and `green` for the frontend,
//! `blue-api` and `green-api` for the API, so a page and the API call that
//! goes with it tell whether they came from the same color.
//!
//! [`Visitors`] are browsers under load: each sends a page (`/`) then an
//! API call (`/api/data`) on a kept-alive connection that never retries,
//! keeping the `bgproxy_bucket` cookie a response sets, and starting over
//! as a new visitor (no cookie) every few pairs. Every pair is recorded
//! with when it was sent and answered, so a pair can be placed before,
//! during or after a change (the change's API call, from sending to its
//! answer), and the few that straddle a change are told apart.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bgproxy_e2e::{wait_until, AppSpec, Backend, Daemon};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(10);

/// `web` with frontend `blue`/`green` and the route `api` on `/api/` with
/// `api_blue`/`api_green`, plus `more` TOML (more routes, deploy steps).
fn app(
    blue: &Backend,
    green: &Backend,
    api_blue: &Backend,
    api_green: &Backend,
    more: &str,
) -> AppSpec {
    AppSpec::new("web", &[blue], &[green]).extra(&format!(
        "[[app.routes]]\nname = \"api\"\npath_prefix = \"/api/\"\n\
         [app.routes.blue]\nupstreams = [\"{}\"]\n[app.routes.green]\nupstreams = [\"{}\"]\n{more}",
        api_blue.addr, api_green.addr
    ))
}

/// Waits until every pool of `color` of `web` (the frontend's and every
/// route's) is observed up: the app's `colors.<color>.healthy`.
fn wait_color_healthy(d: &Daemon, color: &str) -> bool {
    wait_until(T, || d.app("web")["colors"][color]["healthy"] == true)
}

/// One answer on a raw connection.
#[derive(Clone, Debug)]
struct Answer {
    status: u16,
    /// `X-Color`: the backend that answered.
    color: String,
    /// The bucket of a `bgproxy_bucket` `Set-Cookie`, if any.
    bucket: Option<u16>,
}

/// Sends `GET path` with the bucket cookie (if any) and reads one answer.
/// Never retries: an error is a failed request.
fn get(r: &mut BufReader<TcpStream>, path: &str, bucket: Option<u16>) -> Result<Answer, String> {
    let cookie = bucket.map_or(String::new(), |b| {
        format!("Cookie: theme=dark; bgproxy_bucket={b}\r\n")
    });
    let req = format!("GET {path} HTTP/1.1\r\nHost: web.test\r\n{cookie}\r\n");
    r.get_mut()
        .write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let line = read_line(r)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let (mut len, mut color, mut set_bucket) = (0usize, String::new(), None);
    loop {
        let h = read_line(r)?;
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').ok_or(format!("bad header {h:?}"))?;
        let v = v.trim();
        match k.to_ascii_lowercase().as_str() {
            "content-length" => len = v.parse().map_err(|_| format!("bad length {v:?}"))?,
            "transfer-encoding" => return Err(format!("unexpected {h:?}")),
            "x-color" => color = v.to_string(),
            "set-cookie" => {
                if let Some(b) = v.strip_prefix("bgproxy_bucket=") {
                    set_bucket = b.split(';').next().and_then(|b| b.parse().ok());
                }
            }
            _ => {}
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).map_err(|e| format!("body: {e}"))?;
    Ok(Answer {
        status,
        color,
        bucket: set_bucket,
    })
}

fn read_line(r: &mut BufReader<TcpStream>) -> Result<String, String> {
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(0) => Err("connection closed".into()),
        Ok(_) => Ok(line.trim_end_matches(['\r', '\n']).to_string()),
        Err(e) => Err(format!("read: {e}")),
    }
}

/// A page and its API call, by one visitor.
#[derive(Clone, Debug)]
struct Pair {
    sent: Instant,
    done: Instant,
    page: Result<Answer, String>,
    api: Result<Answer, String>,
}

impl Pair {
    /// The color of both answers when both were 200s: `Ok(Some(color))`
    /// when they agree, `Ok(None)` when they are mixed, `Err` for a failed
    /// request.
    fn color(&self) -> Result<Option<String>, String> {
        let (page, api) = match (&self.page, &self.api) {
            (Ok(p), Ok(a)) if p.status == 200 && a.status == 200 => (p, a),
            other => return Err(format!("{other:?}")),
        };
        Ok((api.color == format!("{}-api", page.color)).then(|| page.color.clone()))
    }

    /// Whether it was in flight while `change` was being made.
    fn straddles(&self, change: &Change) -> bool {
        self.sent <= change.end && self.done >= change.start
    }
}

/// A change made through the control API: from sending it to its answer.
#[derive(Clone, Copy, Debug)]
struct Change {
    start: Instant,
    end: Instant,
}

/// Makes a change with `call` and records when.
fn change(call: impl FnOnce() -> (u16, Value)) -> Change {
    let start = Instant::now();
    let (s, v) = call();
    let end = Instant::now();
    assert_eq!(s, 200, "{v}");
    Change { start, end }
}

/// Visitors under load: `n` threads, each a browser on its own kept-alive
/// connection (a new one after a failure), a new visitor every 5 pairs; at
/// most 20,000 pairs and 60 s each.
struct Visitors {
    stop: Arc<AtomicBool>,
    pairs: Arc<Mutex<Vec<Pair>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Visitors {
    fn start(addr: SocketAddr, n: usize) -> Visitors {
        let stop = Arc::new(AtomicBool::new(false));
        let pairs = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..n)
            .map(|_| {
                let (stop, pairs) = (stop.clone(), pairs.clone());
                thread::spawn(move || visit(addr, &stop, &pairs))
            })
            .collect();
        Visitors {
            stop,
            pairs,
            threads,
        }
    }

    /// Waits until at least `n` pairs were sent after `since` and answered.
    fn wait_pairs_since(&self, since: Instant, n: usize) -> bool {
        wait_until(T, || {
            self.pairs
                .lock()
                .unwrap()
                .iter()
                .filter(|p| p.sent > since)
                .count()
                >= n
        })
    }

    fn finish(mut self) -> Vec<Pair> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.pairs.lock().unwrap())
    }
}

fn visit(addr: SocketAddr, stop: &AtomicBool, out: &Mutex<Vec<Pair>>) {
    let started = Instant::now();
    let mut conn: Option<BufReader<TcpStream>> = None;
    let mut bucket = None;
    for n in 0..20_000 {
        if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(60) {
            return;
        }
        if n % 5 == 0 {
            bucket = None; // a new visitor
        }
        let sent = Instant::now();
        let mut one = |path: &str, bucket: Option<u16>| {
            if conn.is_none() {
                let s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
                s.set_read_timeout(Some(T)).unwrap();
                s.set_nodelay(true).unwrap();
                conn = Some(BufReader::new(s));
            }
            let r = get(conn.as_mut().unwrap(), path, bucket);
            if r.is_err() {
                conn = None;
            }
            r
        };
        let page = one("/", bucket);
        if let Ok(Answer {
            bucket: Some(b), ..
        }) = &page
        {
            bucket = Some(*b); // the browser keeps the cookie
        }
        let api = one("/api/data", bucket);
        out.lock().unwrap().push(Pair {
            sent,
            done: Instant::now(),
            page,
            api,
        });
    }
}

/// The acceptance test of routes: under load, every page + API pair a
/// visitor gets comes from one color before a canary (all blue), while the
/// canary holds green at 50% with sticky cookies (both colors, never
/// mixed), and after the promotion to green (all green); no request fails.
/// Pairs in flight while a change was made are left out of the phases (a
/// page before a switch and its API call after it may differ, by design:
/// each request is placed once).
#[test]
fn page_and_api_pairs_come_from_one_color_before_during_a_canary_and_after_a_switch() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let (ab, ag) = (Backend::start("blue-api"), Backend::start("green-api"));
    let d = Daemon::start(&[app(
        &b,
        &g,
        &ab,
        &ag,
        "[app.rollout]\nsticky = \"cookie\"\n",
    )]);
    assert!(wait_color_healthy(&d, "green"), "{}", d.app("web"));

    let visitors = Visitors::start(d.proxy, 4);
    let t0 = Instant::now();
    assert!(visitors.wait_pairs_since(t0, 100), "load before the canary");
    let canary = change(|| {
        d.api(
            "POST",
            "/v1/apps/web/canary",
            Some(json!({"to": "green", "steps": [50, 100], "step_interval": "1h"})),
        )
    });
    assert_eq!(d.app("web")["weights"]["green"], 50);
    assert!(
        visitors.wait_pairs_since(canary.end, 300),
        "load during the canary"
    );
    let promote = change(|| d.api("POST", "/v1/apps/web/promote", Some(json!({}))));
    assert_eq!(d.app("web")["live"], "green");
    assert!(
        visitors.wait_pairs_since(promote.end, 100),
        "load after the switch"
    );
    let pairs = visitors.finish();

    let failed: Vec<_> = pairs.iter().filter_map(|p| p.color().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} pairs had a failed request: {:?}",
        failed.len(),
        pairs.len(),
        &failed[..failed.len().min(3)]
    );
    let steady: Vec<&Pair> = pairs
        .iter()
        .filter(|p| !p.straddles(&canary) && !p.straddles(&promote))
        .collect();
    let mixed: Vec<&&Pair> = steady.iter().filter(|p| p.color() == Ok(None)).collect();
    assert!(
        mixed.is_empty(),
        "{} of {} pairs got a page and an API call of different colors: {:?}",
        mixed.len(),
        steady.len(),
        &mixed[..mixed.len().min(3)]
    );
    let colors = |keep: &dyn Fn(&Pair) -> bool| -> (usize, usize) {
        let phase: Vec<String> = steady
            .iter()
            .filter(|p| keep(p))
            .map(|p| p.color().unwrap().unwrap())
            .collect();
        let blue = phase.iter().filter(|c| *c == "blue").count();
        (blue, phase.len() - blue)
    };
    let before = colors(&|p| p.done < canary.start);
    let during = colors(&|p| p.sent > canary.end && p.done < promote.start);
    let after = colors(&|p| p.sent > promote.end);
    assert!(before.0 >= 100 && before.1 == 0, "before: {before:?}");
    // At 50% with a new visitor every 5 pairs: both colors, by the bucket
    // each visitor drew (300 pairs, about 60 visitors).
    assert!(
        during.0 >= 30 && during.1 >= 30,
        "during the canary (blue, green): {during:?}"
    );
    assert!(after.0 == 0 && after.1 >= 100, "after: {after:?}");
}

/// An API whose green upstream fails its health check refuses a switch
/// (and a canary) to green with 409, naming the route and the upstream;
/// status, `bgctl status` and the metrics show the route's health. Once
/// the API is up, the switch goes through and moves the API too.
#[test]
fn an_unhealthy_api_in_the_target_color_refuses_the_switch_naming_the_route() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let (ab, ag) = (Backend::start("blue-api"), Backend::start("green-api"));
    ag.set_health(503);
    let d = Daemon::start(&[app(&b, &g, &ab, &ag, "")]);
    assert!(d.wait_health("web", "green", "up", T), "the frontend is up");
    let route_health =
        |color: &str| d.app("web")["routes"][0]["colors"][color]["upstreams"][0]["health"].clone();
    assert!(wait_until(T, || route_health("green") == "down"));
    assert!(wait_until(T, || route_health("blue") == "up"));

    let (s, v) = d.switch("web", "green");
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("target_unhealthy")),
        "{v}"
    );
    let why = v["error"].as_str().unwrap();
    assert!(
        why.contains(&format!("route 'api' (/api/): {} is down", ag.addr)),
        "{why}"
    );
    let (s, v) = d.api(
        "POST",
        "/v1/apps/web/canary",
        Some(json!({"to": "green", "steps": [10, 100]})),
    );
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("target_unhealthy")),
        "{v}"
    );
    assert_eq!(d.app("web")["live"], "blue", "nothing moved");

    let a = d.app("web");
    assert_eq!(a["colors"]["green"]["healthy"], false, "{a}");
    assert_eq!(a["routes"][0]["name"], "api");
    assert_eq!(a["routes"][0]["path_prefix"], "/api/");
    assert_eq!(a["routes"][0]["colors"]["green"]["healthy"], false);
    assert_eq!(a["routes"][0]["colors"]["blue"]["healthy"], true);
    let (code, out, err) = d.bgctl(&["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ROUTE api  /api/"), "{out}");
    assert!(
        out.contains(&format!("{}", ag.addr)) && out.contains("NOT HEALTHY"),
        "{out}"
    );
    let (code, _, err) = d.bgctl(&["switch", "green", "--yes"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("route 'api' (/api/)"), "{err}");
    let gauge = |color: &str, route: &str, u: &Backend| {
        d.metric(&format!(
            "bgproxy_upstream_healthy{{app=\"web\",color=\"{color}\",route=\"{route}\",upstream=\"{}\"}}",
            u.addr
        ))
    };
    assert_eq!(gauge("green", "api", &ag), Some(0.0));
    assert_eq!(gauge("blue", "api", &ab), Some(1.0));
    assert_eq!(gauge("green", "", &g), Some(1.0));

    ag.set_health(200);
    assert!(wait_color_healthy(&d, "green"));
    assert_eq!(d.switch("web", "green").0, 200);
    let (s, body) = d.get("web.test", "/api/orders");
    assert_eq!(s, 200);
    let echo: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["color"], "green-api", "the API moved with the switch");
    assert_eq!(d.color_of("web.test"), "green");
}

/// The longest prefix wins, `strip_prefix` forwards the path without it
/// (query kept, the bare prefix as `/`), a route without it forwards the
/// path as it came, and a path matching no route goes to the app's own
/// upstreams.
#[test]
fn strip_prefix_forwards_the_right_path_and_the_longest_prefix_wins() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let (ab, ag) = (Backend::start("blue-api"), Backend::start("green-api"));
    let (vb, vg) = (Backend::start("blue-v2"), Backend::start("green-v2"));
    let v2 = format!(
        "[[app.routes]]\nname = \"v2\"\npath_prefix = \"/api/v2/\"\nstrip_prefix = true\n\
         [app.routes.blue]\nupstreams = [\"{}\"]\n[app.routes.green]\nupstreams = [\"{}\"]\n",
        vb.addr, vg.addr
    );
    let d = Daemon::start(&[app(&b, &g, &ab, &ag, &v2)]);
    let target = |path: &str| -> (String, String) {
        let (s, body) = d.get("web.test", path);
        assert_eq!(s, 200, "{path}: {body}");
        let echo: Value = serde_json::from_str(&body).unwrap();
        (
            echo["color"].as_str().unwrap().to_string(),
            echo["target"].as_str().unwrap().to_string(),
        )
    };
    let pair = |c: &str, t: &str| (c.to_string(), t.to_string());
    assert_eq!(target("/api/v2/items?q=1"), pair("blue-v2", "/items?q=1"));
    assert_eq!(target("/api/v2/"), pair("blue-v2", "/"));
    assert_eq!(
        target("/api/v1/items?q=1"),
        pair("blue-api", "/api/v1/items?q=1")
    );
    assert_eq!(
        target("/api/v2"),
        pair("blue-api", "/api/v2"),
        "no trailing slash"
    );
    assert_eq!(target("/shop/cart"), pair("blue", "/shop/cart"));
    assert_eq!(target("/api"), pair("blue", "/api"));
    // A request with a body goes through pingora-proxy rather than the
    // lean loop: stripped the same way.
    let resp = reqwest::blocking::Client::new()
        .post(format!("http://{}/api/v2/orders?id=7", d.proxy))
        .header("Host", "web.test")
        .body("{\"n\":1}")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: Value = resp.json().unwrap();
    assert_eq!(
        (
            echo["color"].as_str(),
            echo["target"].as_str(),
            echo["body"].as_str()
        ),
        (Some("blue-v2"), Some("/orders?id=7"), Some("{\"n\":1}"))
    );
}

/// A deploy gives each step every route's upstreams of the standby as
/// `BG_UPSTREAMS_<ROUTE>` (upper case, `-` as `_`) beside the app's own
/// `BG_UPSTREAMS`, and waits for every route of the standby to be healthy.
#[test]
fn deploy_steps_get_every_routes_upstreams() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let (ab, ag) = (Backend::start("blue-api"), Backend::start("green-api"));
    let (vb, vg) = (Backend::start("blue-v2"), Backend::start("green-v2"));
    let marks = tempfile::tempdir().unwrap();
    let out = marks.path().join("env");
    let more = format!(
        "[[app.routes]]\nname = \"api-v2\"\npath_prefix = \"/v2/\"\n\
         [app.routes.blue]\nupstreams = [\"{}\"]\n[app.routes.green]\nupstreams = [\"{}\"]\n\
         [[app.deploy.steps]]\nname = \"env\"\nrun = '''echo \"$BG_UPSTREAMS $BG_UPSTREAMS_API $BG_UPSTREAMS_API_V2\" > {}'''\n",
        vb.addr,
        vg.addr,
        out.display()
    );
    let d = Daemon::start(&[app(&b, &g, &ab, &ag, &more)]);
    assert!(wait_color_healthy(&d, "green"));
    let (code, stdout, err) = d.bgctl(&["deploy"]);
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(stdout.contains("green is healthy"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        format!("{} {} {}\n", g.addr, ag.addr, vg.addr)
    );
}

/// `--check` rejects what the config layer rejects: a duplicate route
/// name, a prefix that is not a path, an upstream of both colors.
#[test]
fn check_rejects_bad_routes_with_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bgproxy.toml");
    let text = "[proxy]\nlisten = [\"127.0.0.1:1\"]\n[state]\npath = \"s.json\"\n\
        [[app]]\nname = \"web\"\n[app.blue]\nupstreams = [\"127.0.0.1:3001\"]\n[app.green]\nupstreams = [\"127.0.0.1:3002\"]\n\
        [[app.routes]]\nname = \"api\"\npath_prefix = \"api/\"\n\
        [app.routes.blue]\nupstreams = [\"127.0.0.1:3002\"]\n[app.routes.green]\nupstreams = [\"127.0.0.1:4002\"]\n\
        [[app.routes]]\nname = \"api\"\npath_prefix = \"/v2/\"\n\
        [app.routes.blue]\nupstreams = [\"127.0.0.1:5001\"]\n[app.routes.green]\nupstreams = [\"127.0.0.1:5002\"]\n";
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(bgproxy_e2e::bin("bgproxy"))
        .args(["--check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert_ne!(out.status.code(), Some(0), "{err}");
    for needle in [
        ":13:15: app[0].routes[0].path_prefix: invalid path prefix 'api/'",
        ":15:14: app[0].routes[0].blue.upstreams[0]: upstream 127.0.0.1:3002 is also green in app[0].green.upstreams[0] (line 10)",
        ":19:8: app[0].routes[1].name: duplicate route name 'api' (also line 12)",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in\n{err}");
    }
}
