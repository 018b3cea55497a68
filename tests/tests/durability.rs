//! Durability of the state: an answered switch survives kill -9, and a
//! corrupt state file never keeps the front door down.

use std::time::Duration;

use bgproxy_e2e::{AppSpec, Backend, Daemon};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(10);

/// Switch, kill -9 the daemon as soon as the switch was answered, restart:
/// the live color and the switch count are there. Repeated.
#[test]
fn answered_switch_survives_kill_9() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let mut d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g])]);
    let mut to = "green";
    for round in 1..=5u64 {
        assert!(d.wait_health("web", to, "up", T), "round {round}");
        let (s, v) = d.switch("web", to);
        assert_eq!(s, 200, "{v}");
        d.kill9();
        d.spawn();
        let app = d.app("web");
        assert_eq!(app["live"], to, "round {round}");
        assert_eq!(app["switch_count"], round);
        assert_eq!(d.color_of("x"), to);
        to = if to == "green" { "blue" } else { "green" };
    }
    let (_, h) = d.api("GET", "/v1/apps/web/history", None);
    assert_eq!(h["history"].as_array().unwrap().len(), 5);
    assert!(d.state_dir().join("state.json.prev").exists());
}

/// A corrupt state file: the daemon comes up, keeps the bad file aside under
/// a new name, says so, and recovers from the previous good copy: a state
/// that differs both from the corrupt file's and from `initial_live`.
#[test]
fn corrupt_state_file_is_kept_aside_and_recovered() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let mut d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g])]);
    assert!(d.wait_health("web", "green", "up", T));
    let (s, v) = d.api(
        "POST",
        "/v1/apps/web/switch",
        Some(json!({"to": "green", "reason": "first"})),
    );
    assert_eq!(s, 200, "{v}");
    assert!(d.wait_health("web", "blue", "up", T));
    assert_eq!(d.switch("web", "blue").0, 200);
    d.kill9();

    // state.json: blue after 2 switches; state.json.prev: green after 1.
    let state = d.state_dir().join("state.json");
    let prev: Value =
        serde_json::from_slice(&std::fs::read(d.state_dir().join("state.json.prev")).unwrap())
            .unwrap();
    assert_eq!(
        (
            &prev["apps"]["web"]["live"],
            &prev["apps"]["web"]["switch_count"]
        ),
        (&json!("green"), &json!(1)),
        "the test's premise: .prev is the state after the first switch"
    );
    let garbage = b"{\"version\": 1, \"apps\": {\"web\": {\"live\": \"bl";
    std::fs::write(&state, garbage).unwrap();
    d.spawn();
    // Up on the previous good copy: green, 1 switch, its history.
    let app = d.app("web");
    assert_eq!(
        (app["live"].as_str(), app["switch_count"].as_u64()),
        (Some("green"), Some(1)),
        "{app}"
    );
    assert_eq!(d.color_of("x"), "green");
    let (_, h) = d.api("GET", "/v1/apps/web/history", None);
    assert_eq!(h["history"].as_array().map(Vec::len), Some(1), "{h}");
    assert_eq!(h["history"][0]["reason"], "first", "{h}");
    let aside: Vec<_> = std::fs::read_dir(d.state_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("state.json.corrupt-")
        })
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(
        std::fs::read(aside[0].path()).unwrap(),
        garbage,
        "kept, not deleted"
    );
    let log = d.log_with(&["is not valid", "moved it aside", "recovered from"]);
    assert!(
        log.contains("is not valid")
            && log.contains("moved it aside")
            && log.contains("recovered from"),
        "{log}"
    );

    // No good copy at all: initial_live, and still serving.
    d.kill9();
    std::fs::write(&state, b"not json").unwrap();
    std::fs::remove_file(d.state_dir().join("state.json.prev")).unwrap();
    d.spawn();
    assert_eq!(d.app("web")["live"], "blue");
    assert_eq!(d.color_of("x"), "blue");
    let log = d.log_with(&["starting from initial_live"]);
    assert!(log.contains("starting from initial_live"), "{log}");
}

/// The history keeps the newest `HISTORY_LIMIT` (200) switches: after 210,
/// the 10 oldest are the ones gone, in memory and on disk; the switch count
/// still counts all.
#[test]
fn history_keeps_the_newest_entries() {
    const LIMIT: usize = 200;
    const SWITCHES: usize = LIMIT + 10;
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let mut d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g])]);
    assert!(d.wait_health("web", "green", "up", T) && d.wait_health("web", "blue", "up", T));
    for i in 0..SWITCHES {
        let to = if i % 2 == 0 { "green" } else { "blue" };
        let (s, v) = d.api(
            "POST",
            "/v1/apps/web/switch",
            Some(json!({"to": to, "reason": format!("switch {i}")})),
        );
        assert_eq!(s, 200, "switch {i}: {v}");
    }
    let reasons = |d: &Daemon| -> Vec<String> {
        let (_, h) = d.api("GET", "/v1/apps/web/history", None);
        h["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["reason"].as_str().unwrap().to_string())
            .collect()
    };
    // Oldest first, as stored.
    let kept: Vec<String> = (SWITCHES - LIMIT..SWITCHES)
        .map(|i| format!("switch {i}"))
        .collect();
    assert_eq!(reasons(&d), kept);
    assert_eq!(d.app("web")["switch_count"], SWITCHES);
    d.kill9_and_restart();
    assert_eq!(reasons(&d), kept, "the same after a restart");
    assert_eq!(d.app("web")["switch_count"], SWITCHES);
}
