//! The control plane end to end: the health gate, the control API's input
//! handling and `bgproxy --check`.

use std::process::Command;
use std::time::{Duration, Instant};

use bgproxy_e2e::{
    bin, may_lower_nice_to_minus_10, own_nice, thp_enabled, thread_nices, wait_until, AppSpec,
    Backend, Daemon, Options,
};
use serde_json::json;

const T: Duration = Duration::from_secs(10);

/// Watches the health of `app`'s first `color` upstream (served by `b`)
/// go from `from` to `to` while `b` answers its checks with `status`:
/// returns the most checks answered `status` before a reading that still
/// said `from`, and the checks answered `status` after the first reading
/// that said `to`. Checks are sequential, so a reading of `from` taken after
/// n such answers proves the checker held on after n - 1 of them at least,
/// and after n once the next check is due.
fn watch_transition(
    d: &Daemon,
    b: &Backend,
    app: &str,
    color: &str,
    status: u16,
    (from, to): (&str, &str),
    base: usize,
) -> (usize, usize) {
    let (mut held_after, mut changed_after) = (0, None);
    let done = wait_until(T, || {
        let before = b.health_answers(status) - base;
        let a = d.app(app);
        let health = a["colors"][color]["upstreams"][0]["health"].clone();
        let after = b.health_answers(status) - base;
        if health == from {
            held_after = held_after.max(before);
            false
        } else {
            assert_eq!(health, to, "{a}");
            changed_after = Some(after);
            true
        }
    });
    assert!(done, "{app} {color} never went {to}: {}", d.app(app));
    (held_after, changed_after.unwrap())
}

/// An upstream whose /health fails is marked down after exactly `fall`
/// failed checks in a row (up after the first and the second failure,
/// down from the third); a switch to it is refused with 409; `emergency`
/// overrides and is recorded; it is up again after exactly `rise` passes.
#[test]
fn health_gate_refuses_unhealthy_target_unless_emergency() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let health = "interval = \"300ms\"\ntimeout = \"1s\"\nrise = 2\nfall = 3\n";
    let d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g]).health(health)]);
    assert!(d.wait_health("web", "green", "up", T));
    g.set_health(503);
    let since = Instant::now();
    let (held, fell) = watch_transition(&d, &g, "web", "green", 503, ("up", "down"), 0);
    assert!(
        held >= 2,
        "still up with 2 failed checks answered (fall = 3); seen up after {held} at most"
    );
    assert!(
        fell >= 3,
        "down only after 3 failed checks (fall = 3); seen down after {fell}"
    );
    // fall = 3 checks 300ms apart, plus one interval of phase and slack.
    assert!(
        since.elapsed() < Duration::from_millis(3 * 300 + 300 + 800),
        "{:?}",
        since.elapsed()
    );

    let (s, v) = d.switch("web", "green");
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("target_unhealthy")),
        "{v}"
    );
    assert!(v["error"].as_str().unwrap().contains("is down"), "{v}");
    assert_eq!(d.app("web")["live"], "blue", "refusal changed nothing");

    let (s, v) = d.api(
        "POST",
        "/v1/apps/web/switch",
        Some(json!({"to": "green", "emergency": true, "reason": "blue is on fire"})),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["kind"], "emergency");
    // Every green upstream is down: panic routing still serves them.
    assert_eq!(d.color_of("x"), "green");
    let (_, h) = d.api("GET", "/v1/apps/web/history", None);
    assert_eq!(h["history"][0]["reason"], "blue is on fire");
    assert_eq!(h["history"][0]["kind"], "emergency");

    // Back up after `rise` passes; rollback is then a normal gated change.
    // (No check answers 200 while /health answers 503: the base is stable.)
    let base = g.health_answers(200);
    g.set_health(200);
    let (held, rose) = watch_transition(&d, &g, "web", "green", 200, ("down", "up"), base);
    assert!(
        held >= 1,
        "still down with 1 passed check answered (rise = 2); seen down after {held} at most"
    );
    assert!(
        rose >= 2,
        "up only after 2 passed checks (rise = 2); seen up after {rose}"
    );
    let (s, v) = d.api("POST", "/v1/apps/web/rollback", None);
    assert_eq!(
        (s, &v["live"], &v["kind"]),
        (200, &json!("blue"), &json!("rollback")),
        "{v}"
    );
}

/// A color never observed (its check is still in flight) is not healthy.
#[test]
fn unknown_health_is_not_healthy() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    g.hang_health();
    let d = Daemon::start(&[
        AppSpec::new("web", &[&b], &[&g]).health("interval = \"1s\"\ntimeout = \"1m\"\n")
    ]);
    assert!(d.wait_health("web", "blue", "up", T));
    assert_eq!(
        d.app("web")["colors"]["green"]["upstreams"][0]["health"],
        "unknown"
    );
    let (s, v) = d.switch("web", "green");
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("is unknown"), "{v}");
    // Rollback before any switch has nothing to go back to.
    let (s, v) = d.api(
        "POST",
        "/v1/apps/web/rollback",
        Some(json!({"emergency": true})),
    );
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("nothing_to_roll_back")),
        "{v}"
    );
}

/// Bad control input gets the right status and a JSON error, and changes
/// nothing.
#[test]
fn control_input_is_validated_and_changes_nothing() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start_with(&[AppSpec::new("web", &[&b], &[&g])], Some("s3cret-token"));
    assert!(d.wait_health("web", "green", "up", T));
    let c = reqwest::blocking::Client::new();
    let post = |auth: Option<&str>, body: &str| {
        let mut r = c
            .post(d.url("/v1/apps/web/switch"))
            .header("Content-Type", "application/json")
            .body(body.to_string());
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        let r = r.send().unwrap();
        let s = r.status().as_u16();
        (s, r.json::<serde_json::Value>().unwrap())
    };
    let good = r#"{"to":"green"}"#;
    let cases = [
        (None, good, 401, "unauthorized"),
        (Some("Bearer wrong"), good, 401, "unauthorized"),
        (Some("Basic s3cret-token"), good, 401, "unauthorized"),
        (Some("Bearer s3cret-token"), "{\"to\": ", 400, "bad_request"),
        (
            Some("Bearer s3cret-token"),
            r#"{"to":"purple"}"#,
            400,
            "bad_request",
        ),
        (
            Some("Bearer s3cret-token"),
            r#"{"to":"green","force":true}"#,
            400,
            "bad_request",
        ),
        (Some("Bearer s3cret-token"), "", 400, "bad_request"),
    ];
    for (auth, body, status, code) in cases {
        let (s, v) = post(auth, body);
        assert_eq!(
            (s, v["code"].as_str().unwrap()),
            (status, code),
            "{auth:?} {body}: {v}"
        );
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let big = format!(r#"{{"to":"green","reason":"{}"}}"#, "x".repeat(70 * 1024));
    let (s, v) = post(Some("Bearer s3cret-token"), &big);
    assert_eq!((s, v["code"].as_str().unwrap()), (413, "body_too_large"));

    let (s, v) = d.api("POST", "/v1/apps/nope/switch", Some(json!({"to": "green"})));
    assert_eq!((s, v["code"].as_str().unwrap()), (404, "unknown_app"));
    let (s, _) = d.api("GET", "/v1/apps/nope", None);
    assert_eq!(s, 404);
    let (s, _) = d.api("DELETE", "/v1/apps/web", None);
    assert_eq!(s, 405);
    let (s, _) = d.api("GET", "/v2/anything", None);
    assert_eq!(s, 404);

    let app = d.app("web");
    assert_eq!(
        (app["live"].as_str(), app["switch_count"].as_u64()),
        (Some("blue"), Some(0)),
        "nothing changed"
    );
    let (_, h) = d.api("GET", "/v1/apps/web/history", None);
    assert_eq!(h["history"], json!([]));
    // The right token works.
    let (s, v) = post(Some("Bearer s3cret-token"), good);
    assert_eq!(s, 200, "{v}");
    // Reads need no token.
    let r = c.get(d.url("/v1/status")).send().unwrap();
    assert_eq!(r.status(), 200);
}

fn check(toml: &str) -> (bool, String) {
    bgproxy_e2e::check_text(toml)
}

/// `bgproxy --check` rejects each kind of bad config naming key and line,
/// and the daemon refuses to start on it.
#[test]
fn check_rejects_bad_configs_with_key_and_line() {
    let good = "[proxy]\nlisten = [\"127.0.0.1:18080\"]\n[state]\npath = \"s/state.json\"\n\
                [[app]]\nname = \"web\"\nhosts = [\"a.example\"]\n[app.blue]\nupstreams = [\"127.0.0.1:3001\"]\n\
                [app.green]\nupstreams = [\"127.0.0.1:3002\"]\n";
    let (ok, err) = check(good);
    assert!(ok, "{err}");
    let second = good.split("[[app]]").nth(1).unwrap();
    let cases: Vec<(String, &str)> = vec![
        (
            good.replace("[state]", "[state]\nfsync = true"),
            "F:4:1: unknown field `fsync`",
        ),
        (
            format!("{good}[app.health]\ninterval = \"fast\"\n"),
            "F:13:12: app[0].health.interval: invalid duration 'fast'",
        ),
        (
            good.replace("name = \"web\"", "name = \"web\"\ninitial_live = \"red\""),
            "F:7:16: app[0].initial_live: unknown variant `red`",
        ),
        (
            good.replace("[\"127.0.0.1:3001\"]", "[]"),
            "F:9:13: app[0].blue.upstreams: is empty",
        ),
        (
            good.replace("127.0.0.1:3002", "nohost"),
            "F:11:14: app[0].green.upstreams[0]: invalid upstream 'nohost'",
        ),
        (
            format!(
                "{good}[[app]]{}",
                second.replace("3001", "4001").replace("3002", "4002")
            ),
            "app[1].name: duplicate app name 'web'",
        ),
        (
            format!("{good}[[app]]{}", second.replace("web", "api")),
            "F:14:10: app[1].hosts[0]: host 'a.example' is already routed to app 'web'",
        ),
        (
            format!(
                "{}[[app]]{}",
                good.replace("hosts = [\"a.example\"]\n", ""),
                second
                    .replace("web", "api")
                    .replace("hosts = [\"a.example\"]\n", "")
                    .replace("300", "400")
            ),
            "app[1].hosts: app 'api' has no hosts, and neither has 'web'",
        ),
    ];
    for (toml, expected) in cases {
        let (ok, err) = check(&toml);
        assert!(!ok, "accepted:\n{toml}");
        assert!(err.contains(expected), "expected {expected:?} in:\n{err}");
    }
    // The daemon itself refuses a bad config, before opening any port.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, good.replace("[state]", "[state]\nfsync = true")).unwrap();
    let out = Command::new(bin("bgproxy"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `fsync`"));
}

/// `control.nice = -10`: the control API's thread outranks the data plane
/// for the CPU where the process may lower a nice value, so a switch does
/// not queue behind the traffic it redirects; where it may not, the daemon
/// warns and serves as before. The data plane keeps the default priority,
/// and without the key nothing is changed. A value out of range is refused
/// by `--check` with its line.
#[test]
fn control_nice_lets_the_control_api_thread_outrank_the_data_plane() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let apps = [AppSpec::new("web", &[&b], &[&g])];
    let d = Daemon::start_opts(
        &apps,
        Options {
            control: "nice = -10\n".into(),
            ..Options::default()
        },
    );
    let plain = Daemon::start(&apps);
    for daemon in [&d, &plain] {
        assert_eq!(daemon.api("GET", "/v1/status", None).0, 200);
    }
    let allowed = may_lower_nice_to_minus_10();
    // What the daemons inherit from this process (CI may run under nice).
    let base = own_nice();
    assert_eq!(
        thread_nices(d.pid(), "control api"),
        vec![if allowed { -10 } else { base }]
    );
    let front = thread_nices(d.pid(), "front door");
    assert!(
        front.iter().all(|&n| n == base),
        "{front:?}, inherited {base}"
    );
    assert_eq!(
        thread_nices(plain.pid(), "control api"),
        vec![base],
        "untouched by default"
    );
    let said = if allowed {
        "control API thread runs at control.nice"
    } else {
        "control API thread keeps the default priority"
    };
    let log = d.log_with(&[said]);
    assert!(log.contains(said), "{log}");
    assert_eq!(
        d.get("web.example.net", "/").0,
        200,
        "the data plane serves"
    );

    let bad = d.render(&apps).replace("nice = -10", "nice = -21");
    let path = d.dir.path().join("bad.toml");
    std::fs::write(&path, &bad).unwrap();
    let (ok, stderr) = bgproxy_e2e::check_file(&path);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("control.nice"), "{stderr}");
    assert!(stderr.contains("between -20 and 19"), "{stderr}");
}

/// The daemon runs on small pages (`proxy/src/daemon/memory.rs`): the
/// first touch of a transparent huge page zeroes 2 MiB inside whichever
/// switch or request touches it. `THP_enabled` in /proc/PID/status is the
/// process's own `PR_SET_THP_DISABLE` flag, whatever the system-wide policy
/// says, so the daemon's prctl shows even where huge pages are off for the
/// whole system.
#[test]
fn daemon_runs_without_transparent_huge_pages() {
    if thp_enabled("self") == 0 {
        // Inherited from whatever started the tests; the daemon would
        // inherit it too and show nothing of its own. Clear it (for this
        // test process only) so the daemon starts with huge pages allowed.
        eprintln!("this test process inherited PR_SET_THP_DISABLE: clearing it");
        rustix::thread::disable_transparent_huge_pages(false).unwrap();
    }
    assert_eq!(
        thp_enabled("self"),
        1,
        "the daemon must start with huge pages allowed"
    );
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g])]);
    assert_eq!(
        thp_enabled(&d.pid().to_string()),
        0,
        "the daemon turned them off"
    );
    assert!(d.wait_health("web", "green", "up", T));
    assert_eq!(d.switch("web", "green").0, 200);
}
