//! Metrics, access logs and the audit trail, scraped and read from the real
//! daemon after real traffic.

use std::time::Duration;

use bgproxy_e2e::{wait_until, AppSpec, Backend, Daemon, Options};
use serde_json::Value;

const T: Duration = Duration::from_secs(10);

fn series(d: &Daemon) -> Vec<String> {
    d.scrape()
        .lines()
        .filter(|l| l.starts_with("bgproxy_"))
        .map(|l| l.rsplit_once(' ').unwrap().0.to_string())
        .collect()
}

/// The label values of a series `name{k="v",...}`.
fn label_values(series: &str) -> Vec<&str> {
    let Some((_, labels)) = series.split_once('{') else {
        return Vec::new();
    };
    labels
        .trim_end_matches('}')
        .split("\",")
        .filter_map(|kv| kv.split_once("=\"").map(|(_, v)| v.trim_end_matches('"')))
        .collect()
}

/// Counters by color, the live-color gauge flipping, the histogram, and the
/// health gauge following a backend going down and up.
#[test]
fn metrics_follow_traffic_switches_and_health() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g])]);
    assert!(d.wait_health("web", "green", "up", T));
    let live = |c: &str| d.metric(&format!("bgproxy_live_color{{app=\"web\",color=\"{c}\"}}"));
    let ok = |c: &str| {
        d.metric(&format!(
            "bgproxy_requests_total{{app=\"web\",code_class=\"2xx\",color=\"{c}\"}}"
        ))
    };
    assert_eq!((live("blue"), live("green")), (Some(1.0), Some(0.0)));
    assert_eq!(
        d.metric("bgproxy_switches_total{app=\"web\",kind=\"switch\"}"),
        Some(0.0)
    );

    for _ in 0..7 {
        d.get("x", "/");
    }
    assert!(d.wait_health("web", "green", "up", T));
    assert_eq!(d.switch("web", "green").0, 200);
    for _ in 0..5 {
        d.get("x", "/");
    }
    assert_eq!((ok("blue"), ok("green")), (Some(7.0), Some(5.0)));
    assert_eq!((live("blue"), live("green")), (Some(0.0), Some(1.0)));
    assert_eq!(
        d.metric("bgproxy_switches_total{app=\"web\",kind=\"switch\"}"),
        Some(1.0)
    );
    assert_eq!(
        d.metric("bgproxy_request_duration_seconds_count{app=\"web\",color=\"green\"}"),
        Some(5.0)
    );
    assert!(
        d.metric(
            "bgproxy_request_duration_seconds_bucket{app=\"web\",color=\"green\",le=\"+Inf\"}"
        ) == Some(5.0)
    );
    assert!(
        d.metric("bgproxy_state_write_duration_seconds_count")
            .unwrap()
            >= 2.0
    );
    assert!(d.metric("process_resident_memory_bytes").unwrap() > 0.0);

    let healthy = |c: &str, u: &Backend| {
        d.metric(&format!(
            "bgproxy_upstream_healthy{{app=\"web\",color=\"{c}\",route=\"\",upstream=\"{}\"}}",
            u.addr
        ))
    };
    assert_eq!(healthy("blue", &b), Some(1.0));
    b.set_health(500);
    assert!(wait_until(T, || healthy("blue", &b) == Some(0.0)));
    b.set_health(200);
    assert!(wait_until(T, || healthy("blue", &b) == Some(1.0)));
}

/// Hostile Host headers and paths do not create series.
#[test]
fn hostile_requests_do_not_grow_series() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g]).hosts(&["web.example"])]);
    d.get("web.example", "/");
    let before = series(&d);
    let c = reqwest::blocking::Client::new();
    for i in 0..50 {
        let r = c
            .get(format!("http://{}/{i}/%2e%2e/{}", d.proxy, "x".repeat(i)))
            .header("Host", format!("attacker-{i}.example"))
            .send()
            .unwrap();
        assert_eq!(r.status(), 404);
        d.get("web.example", &format!("/random/{i}?q={i}"));
    }
    let after = series(&d);
    assert_eq!(before, after, "the set of series is fixed by the config");
    assert_eq!(d.metric("bgproxy_unrouted_requests_total"), Some(50.0));
    assert_eq!(
        d.metric("bgproxy_requests_total{app=\"web\",code_class=\"2xx\",color=\"blue\"}"),
        Some(51.0)
    );
}

/// Hostile input on routed requests does not create series either: Hosts
/// that vary (to the default app, and to a named app in odd case and with
/// ports), odd methods, and 4xx/5xx answers from the upstream and from the
/// proxy itself. After a first round of it, a second round with all-new
/// Hosts, methods, paths and status codes adds no series, and no label
/// value is one a client or an upstream chose.
#[test]
fn hostile_routed_requests_do_not_grow_series() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let (ab, ag) = (Backend::start("any-blue"), Backend::start("any-green"));
    let dead = Backend::start("dead-blue");
    let dead_addr = dead.addr;
    drop(dead); // stopped, its port kept: connections are refused
    let mut dead_app = AppSpec::new("dead", &[], &[&g]).hosts(&["dead.example"]);
    dead_app.blue = vec![dead_addr];
    let d = Daemon::start(&[
        AppSpec::new("web", &[&b], &[&g]).hosts(&["web.example"]),
        AppSpec::new("any", &[&ab], &[&ag]),
        dead_app,
    ]);
    let c = reqwest::blocking::Client::new();
    let send = |method: &str, host: &str, path: &str| -> u16 {
        c.request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("http://{}{path}", d.proxy),
        )
        .header("Host", host)
        .send()
        .unwrap()
        .status()
        .as_u16()
    };
    let round = |r: usize, codes: &[u16], methods: &[&str]| {
        for i in 0..20 {
            let junk = format!("/r{r}/{i}/%2e%2e/{}", "x".repeat(i));
            // Routed to the default app by any Host.
            assert_eq!(
                send("GET", &format!("attacker-{r}-{i}.example"), &junk),
                200
            );
            // Routed to web whatever the case and port.
            let host = format!("WeB.ExAmPlE:{}", 1000 + r * 100 + i);
            assert_eq!(send("GET", &host, &junk), 200);
            let method = methods[i % methods.len()];
            assert_eq!(send(method, "web.example", &junk), 200, "{method}");
            let code = codes[i % codes.len()];
            assert_eq!(send("GET", "web.example", &format!("/status/{code}")), code);
            assert_eq!(send("GET", "dead.example", &junk), 502);
        }
    };
    round(1, &[404, 418, 500], &["PROPFIND", "X-ROUND1", "BREW"]);
    let first = series(&d);
    round(2, &[400, 451, 503, 299], &["M-SEARCH", "X-ROUND2", "PURGE"]);
    let second = series(&d);
    assert_eq!(first, second, "the set of series is fixed by the config");
    for s in &second {
        for value in label_values(s) {
            let v = value.to_ascii_lowercase();
            assert!(
                ["attacker", "round", "example:", "propfind", "search", "/r1/"]
                    .iter()
                    .all(|chosen| !v.contains(chosen))
                    && !["418", "451", "299", "400"].contains(&v.as_str()),
                "a label carries what a client or upstream chose: {s}"
            );
        }
    }
    let total = |app: &str, class: &str, color: &str| {
        d.metric(&format!(
            "bgproxy_requests_total{{app=\"{app}\",code_class=\"{class}\",color=\"{color}\"}}"
        ))
    };
    assert_eq!(total("any", "2xx", "blue"), Some(40.0));
    assert_eq!(total("dead", "5xx", "blue"), Some(40.0));
    // web: 40 varied Hosts, 40 odd methods, 5 answers of 299 (2xx), and the
    // other 35 upstream answers, 4xx and 5xx.
    assert_eq!(total("web", "2xx", "blue"), Some(85.0));
    assert_eq!(
        total("web", "4xx", "blue").unwrap_or(0.0) + total("web", "5xx", "blue").unwrap_or(0.0),
        35.0
    );
}

/// Every control action is in the audit log, refused ones too.
#[test]
fn audit_log_has_every_action_including_refused() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start_with(&[AppSpec::new("web", &[&b], &[&g])], Some("tok"));
    assert!(d.wait_health("web", "green", "up", T));
    let c = reqwest::blocking::Client::new();
    let post = |path: &str, token: &str, body: &str| {
        c.post(d.url(path))
            .bearer_auth(token)
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(
        post("/v1/apps/web/switch", "nope", r#"{"to":"green"}"#),
        401
    );
    assert_eq!(post("/v1/apps/web/switch", "tok", r#"{"to":"#), 400);
    assert_eq!(
        post(
            "/v1/apps/web/switch",
            "tok",
            r#"{"to":"green","reason":"r1","actor":"ann@lb"}"#
        ),
        200
    );
    assert_eq!(post("/v1/apps/web/switch", "tok", r#"{"to":"green"}"#), 409);
    g.set_health(500);
    b.set_health(500);
    assert!(d.wait_health("web", "blue", "down", T));
    assert_eq!(post("/v1/apps/web/rollback", "tok", ""), 409);
    assert_eq!(
        post(
            "/v1/apps/web/rollback",
            "tok",
            r#"{"emergency":true,"reason":"fire"}"#
        ),
        200
    );

    // The audit line is written just after the answer.
    let path = d.state_dir().join("audit.log");
    let read = || std::fs::read_to_string(&path).unwrap_or_default();
    assert!(wait_until(T, || read().lines().count() >= 6), "{}", read());
    let text = read();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<(&str, &str, u64)> = lines
        .iter()
        .map(|l| {
            (
                l["action"].as_str().unwrap(),
                l["result"].as_str().unwrap(),
                l["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("switch", "unauthorized", 401),
            ("switch", "bad_request", 400),
            ("switch", "ok", 200),
            ("switch", "already_live", 409),
            ("rollback", "target_unhealthy", 409),
            ("rollback", "ok", 200),
        ]
    );
    assert_eq!(
        (
            lines[2]["actor"].as_str(),
            lines[2]["reason"].as_str(),
            lines[2]["to"].as_str()
        ),
        (Some("ann@lb"), Some("r1"), Some("green"))
    );
    assert_eq!(
        (lines[5]["emergency"].as_bool(), lines[5]["to"].as_str()),
        (Some(true), Some("blue"))
    );
    assert!(lines
        .iter()
        .all(|l| l["client"] == "127.0.0.1" && l["time"].is_string()));
}

/// Access log lines, as JSON with --log-format json; and they can be turned off.
#[test]
fn access_log_json_and_off() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let opts = Options {
        args: vec!["--log-format".into(), "json".into()],
        ..Options::default()
    };
    let d = Daemon::start_opts(&[AppSpec::new("web", &[&b], &[&g])], opts);
    d.get("x", "/hello?n=1");
    assert!(wait_until(T, || d.log().contains("/hello?n=1")));
    let line: Value = d
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["target"] == "access")
        .expect("a JSON access line");
    assert_eq!(
        (
            line["app"].as_str(),
            line["color"].as_str(),
            line["status"].as_u64()
        ),
        (Some("web"), Some("blue"), Some(200))
    );
    assert_eq!(line["method"], "GET");
    assert_eq!(line["upstream"], b.addr.to_string());
    assert!(line["duration_ms"].as_f64().is_some() && line["bytes"].as_u64().unwrap() > 0);

    let off = Options {
        toml: "[log]\naccess = false\n".into(),
        ..Options::default()
    };
    let d = Daemon::start_opts(&[AppSpec::new("web", &[&b], &[&g])], off);
    d.get("x", "/quiet");
    d.get("x", "/quiet");
    // A line logged after the requests: once it is in the file, an access
    // line for them would be too.
    assert!(d.wait_health("web", "green", "up", T));
    assert_eq!(d.switch("web", "green").0, 200);
    let log = d.log_with(&["green is now LIVE"]);
    assert!(
        log.contains("green is now LIVE") && !log.contains("/quiet"),
        "{log}"
    );
}
