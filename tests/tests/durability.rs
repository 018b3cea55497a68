//! Durability of the state: an answered switch survives kill -9, and a
//! corrupt state file never keeps the front door down.

use std::time::Duration;

use bgproxy_e2e::{AppSpec, Backend, Daemon};

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
/// a new name, says so, and recovers from the previous good copy.
#[test]
fn corrupt_state_file_is_kept_aside_and_recovered() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let mut d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g])]);
    assert!(d.wait_health("web", "green", "up", T));
    assert_eq!(d.switch("web", "green").0, 200);
    d.kill9();

    let state = d.state_dir().join("state.json");
    let garbage = b"{\"version\": 1, \"apps\": {\"web\": {\"live\": \"gr";
    std::fs::write(&state, garbage).unwrap();
    d.spawn();
    // The previous good copy is from before the switch: blue, 0 switches.
    let app = d.app("web");
    assert_eq!(app["live"], "blue");
    assert_eq!(d.color_of("x"), "blue");
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
