//! Plans that cannot go stale, pending requests a human approves, and the
//! requester role, end to end against the real daemon.

use std::time::Duration;

use bgproxy_e2e::{AppSpec, Backend, Daemon, Options};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(10);
const OPERATOR: &str = "operator-token";
const REQUESTER: &str = "requester-token";

/// A daemon with both tokens (the requester's in a file of the test's own)
/// and both colors healthy.
fn start() -> (Daemon, Backend, Backend, tempfile::TempDir) {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let tokens = tempfile::tempdir().unwrap();
    let requester = tokens.path().join("requester.token");
    std::fs::write(&requester, format!("{REQUESTER}\n")).unwrap();
    let d = Daemon::start_opts(
        &[AppSpec::new("web", &[&b], &[&g])],
        Options {
            token: Some(OPERATOR.into()),
            control: format!(
                "requester_token_file = \"{}\"\nrequest_ttl = \"1h\"\n",
                requester.display()
            ),
            ..Options::default()
        },
    );
    assert!(d.wait_health("web", "green", "up", T), "{}", d.log());
    assert!(d.wait_health("web", "blue", "up", T), "{}", d.log());
    (d, b, g, tokens)
}

/// A call with `token` (the daemon's own calls use the operator's).
fn call(d: &Daemon, token: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let http = reqwest::blocking::Client::new();
    let mut req = http
        .request(method.parse().unwrap(), d.url(path))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

fn generation(d: &Daemon) -> u64 {
    d.api("GET", "/v1/status", None).1["generation"]
        .as_u64()
        .unwrap()
}

#[test]
fn a_plan_made_before_another_change_is_refused_as_stale() {
    let (d, _b, _g, _t) = start();
    let seen = generation(&d);
    // Someone else switches after our plan was shown.
    assert_eq!(d.switch("web", "green").0, 200);
    assert!(generation(&d) > seen);
    let (status, answer) = d.api(
        "POST",
        "/v1/apps/web/rollback",
        Some(json!({"expect_generation": seen})),
    );
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["code"], "plan_stale");
    assert_eq!(d.app("web")["live"], "green", "nothing changed");
    // With the generation now in force it goes through.
    let (status, answer) = d.api(
        "POST",
        "/v1/apps/web/rollback",
        Some(json!({"expect_generation": generation(&d)})),
    );
    assert_eq!(status, 200, "{answer}");
}

#[test]
fn a_request_moves_traffic_once_when_approved_and_survives_a_restart() {
    let (mut d, _b, _g, _t) = start();
    let before = generation(&d);
    let (status, created) = call(
        &d,
        REQUESTER,
        "POST",
        "/v1/apps/web/requests",
        Some(
            json!({"action": "switch", "to": "green", "reason": "release 44", "actor": "assistant"}),
        ),
    );
    assert_eq!(status, 200, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["approve_with"], format!("bgctl approve {id}"));
    assert!(
        created["plan"]
            .as_str()
            .unwrap()
            .contains("from blue to green"),
        "{created}"
    );
    assert_eq!(d.app("web")["live"], "blue", "a request moves nothing");
    assert_eq!(generation(&d), before, "a request is not a routing change");

    // It survives kill -9.
    d.kill9_and_restart();
    assert!(d.wait_health("web", "green", "up", T), "{}", d.log());
    let (_, list) = d.api("GET", "/v1/requests", None);
    let ids: Vec<&str> = list["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id.as_str()]);

    let path = format!("/v1/requests/{id}/approve");
    let (status, done) = d.api("POST", &path, Some(json!({"actor": "ann"})));
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["live"], "green");
    let history = d.api("GET", "/v1/apps/web/history", None).1;
    let last = history["history"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["actor"], "ann");
    assert!(
        last["reason"]
            .as_str()
            .unwrap()
            .contains("requested by assistant"),
        "{last}"
    );
    // Twice: refused, nothing moves.
    let (status, answer) = d.api("POST", &path, None);
    assert_eq!(
        (status, answer["code"].as_str()),
        (409, Some("request_closed")),
        "{answer}"
    );
    assert_eq!(d.app("web")["switch_count"], 1);
    assert!(d.api("GET", "/v1/requests", None).1["requests"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn a_request_is_bound_to_the_state_it_was_made_against_and_deny_drops_it() {
    let (d, _b, _g, _t) = start();
    let make = |body: Value| {
        let (status, created) = call(&d, REQUESTER, "POST", "/v1/apps/web/requests", Some(body));
        assert_eq!(status, 200, "{created}");
        created["id"].as_str().unwrap().to_string()
    };
    let stale = make(json!({"action": "switch", "to": "green"}));
    assert_eq!(d.switch("web", "green").0, 200);
    let (status, answer) = d.api("POST", &format!("/v1/requests/{stale}/approve"), None);
    assert_eq!(
        (status, answer["code"].as_str()),
        (409, Some("plan_stale")),
        "{answer}"
    );

    let denied = make(json!({"action": "rollback"}));
    let (status, answer) = d.api("POST", &format!("/v1/requests/{denied}/deny"), None);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "denied");
    let (status, answer) = d.api("POST", &format!("/v1/requests/{denied}/approve"), None);
    assert_eq!(
        (status, answer["code"].as_str()),
        (409, Some("request_closed")),
        "{answer}"
    );
    assert_eq!(d.app("web")["live"], "green");

    let (status, answer) = d.api("POST", "/v1/requests/999/approve", None);
    assert_eq!(
        (status, answer["code"].as_str()),
        (404, Some("unknown_request"))
    );
}

#[test]
fn the_requester_token_may_deploy_and_ask_but_never_move_traffic() {
    let (d, _b, _g, _t) = start();
    // A canary to have something to promote, abort, pause.
    let (status, answer) = d.api(
        "POST",
        "/v1/apps/web/canary",
        Some(json!({"to": "green", "steps": [10, 100], "step_interval": "1h"})),
    );
    assert_eq!(status, 200, "{answer}");
    let (_, created) = call(
        &d,
        REQUESTER,
        "POST",
        "/v1/apps/web/requests",
        Some(json!({"action": "promote"})),
    );
    let id = created["id"].as_str().unwrap().to_string();
    let before = d.app("web");
    for (path, body) in [
        (
            "/v1/apps/web/switch",
            json!({"to": "green", "emergency": true}),
        ),
        ("/v1/apps/web/rollback", json!({"emergency": true})),
        ("/v1/apps/web/weight", json!({"to": "green", "percent": 50})),
        ("/v1/apps/web/promote", json!({})),
        ("/v1/apps/web/abort", json!({})),
        ("/v1/apps/web/pause", json!({})),
        ("/v1/reload", json!({})),
        (&*format!("/v1/requests/{id}/approve"), json!({})),
        (&*format!("/v1/requests/{id}/deny"), json!({})),
    ] {
        let (status, answer) = call(&d, REQUESTER, "POST", path, Some(body));
        assert_eq!(status, 403, "{path}: {answer}");
        assert_eq!(answer["code"], "forbidden_for_role", "{path}: {answer}");
    }
    let after = d.app("web");
    assert_eq!(
        (
            &after["live"],
            &after["weights"],
            &after["rollout"]["state"]
        ),
        (
            &before["live"],
            &before["weights"],
            &before["rollout"]["state"]
        )
    );
    // Reading and verifying are allowed; a wrong token is still 401.
    assert_eq!(call(&d, REQUESTER, "GET", "/v1/requests", None).0, 200);
    assert_eq!(
        call(&d, REQUESTER, "POST", "/v1/apps/web/verify", None).0,
        200
    );
    assert_eq!(
        call(
            &d,
            "nope",
            "POST",
            "/v1/apps/web/requests",
            Some(json!({"action": "rollback"}))
        )
        .0,
        401
    );
    // The operator approves the requester's promote.
    let (status, done) = d.api("POST", &format!("/v1/requests/{id}/approve"), None);
    assert_eq!(status, 200, "{done}");
    assert_eq!(d.app("web")["live"], "green");
}
