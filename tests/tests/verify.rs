//! `[[app.verify]]` end to end: checks run against the standby through the
//! proxy itself, name the check that failed, and gate a switch or canary
//! unless emergency.

use std::time::Duration;

use bgproxy_e2e::{AppSpec, Backend, Daemon};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(10);

const CHECKS: &str = r#"
[[app.verify]]
name = "home page"
path = "/"
expect_body = "green"
[[app.verify]]
name = "orders"
path = "/status/200?q=orders"
"#;

fn start(checks: &str) -> (Daemon, Backend, Backend) {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g])
        .hosts(&["web.test"])
        .extra(checks)]);
    assert!(d.wait_health("web", "green", "up", T), "{}", d.log());
    assert!(d.wait_health("web", "blue", "up", T), "{}", d.log());
    (d, b, g)
}

fn names(report: &Value) -> Vec<(String, bool)> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["ok"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// The checks reach the standby, and only the standby, through the front
/// door with the app's host name; every one passes.
#[test]
fn checks_run_against_the_standby_through_the_proxy() {
    let (d, b, g) = start(CHECKS);
    let (blue_before, green_before) = (b.hits(), g.hits());
    let (status, report) = d.api("POST", "/v1/apps/web/verify", None);
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["color"], "green", "{report}");
    assert_eq!(report["passed"], true, "{report}");
    assert_eq!(
        names(&report),
        [
            ("home page".to_string(), true),
            ("orders".to_string(), true)
        ]
    );
    assert_eq!(report["checks"][1]["status"], 200);
    assert_eq!(g.hits() - green_before, 2, "each check reached green once");
    assert_eq!(b.hits(), blue_before, "no check reached the live color");
    // Verifying changes nothing.
    assert_eq!(d.app("web")["live"], "blue");

    // bgctl verify prints each check and exits 0.
    let (code, out, err) = d.bgctl(&["verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("home page") && out.contains("orders"), "{out}");
}

/// A failing check is named with why; a switch and a canary are refused
/// with 409 verify_failed naming it and change nothing; emergency skips the
/// checks.
#[test]
fn a_failing_check_is_named_and_gates_a_switch_unless_emergency() {
    let failing = CHECKS.replace("/status/200?q=orders", "/status/503");
    let (d, _b, g) = start(&failing);
    let (status, report) = d.api("POST", "/v1/apps/web/verify", None);
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["passed"], false, "{report}");
    assert_eq!(
        names(&report),
        [
            ("home page".to_string(), true),
            ("orders".to_string(), false)
        ]
    );
    let why = report["checks"][1]["error"].as_str().unwrap();
    assert!(why.contains("status 503, expected 200"), "{why}");
    let (code, out, err) = d.bgctl(&["verify"]);
    assert_eq!(code, 1, "{out}{err}");

    let before = d.app("web");
    for (path, body) in [
        ("/v1/apps/web/switch", json!({"to": "green"})),
        (
            "/v1/apps/web/canary",
            json!({"to": "green", "steps": [50, 100]}),
        ),
    ] {
        let (status, answer) = d.api("POST", path, Some(body));
        assert_eq!(status, 409, "{path}: {answer}");
        assert_eq!(answer["code"], "verify_failed", "{answer}");
        let message = answer["error"].as_str().unwrap();
        assert!(
            message.contains("'orders'") && message.contains("503"),
            "{message}"
        );
    }
    let after = d.app("web");
    assert_eq!(
        (&after["live"], &after["switch_count"], &after["rollout"]),
        (&before["live"], &before["switch_count"], &before["rollout"])
    );

    // The checks hit green, so fixing it is seen: with every check passing
    // the switch goes through.
    let hits = g.hits();
    let (status, answer) = d.api(
        "POST",
        "/v1/apps/web/switch",
        Some(json!({"to": "green", "emergency": true})),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["kind"], "emergency");
    assert_eq!(g.hits(), hits, "an emergency switch runs no check");
}

/// An app without checks switches as before, and its verify call reports
/// nothing to check.
#[test]
fn without_checks_nothing_is_gated() {
    let (d, _b, _g) = start("");
    let (status, report) = d.api("POST", "/v1/apps/web/verify", None);
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        (
            &report["passed"],
            report["checks"].as_array().unwrap().len()
        ),
        (&json!(true), 0)
    );
    assert_eq!(d.switch("web", "green").0, 200);
    let (status, answer) = d.api("POST", "/v1/apps/nope/verify", None);
    assert_eq!(
        (status, answer["code"].as_str()),
        (404, Some("unknown_app"))
    );
}
