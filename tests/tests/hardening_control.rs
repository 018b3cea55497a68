//! Hardening of the control side (#17 items 7, 8, 9, 11, 12), against the
//! real binaries on loopback: the control API refuses cross-site and
//! mislabelled changes and cannot be used to flood the audit log; the
//! state directory is private and no file in it is opened through a link;
//! `--check` names the key of every bad value; bgctl names its user when
//! the environment does not; and no request body, however mangled, makes
//! the daemon panic or change anything.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bgproxy_e2e::{bin, wait_until, AppSpec, Backend, Daemon};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(10);

/// The audit log's lines, parsed.
fn audit(d: &Daemon) -> Vec<Value> {
    std::fs::read_to_string(d.state_dir().join("audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// A raw POST to the control API: status and JSON body.
fn post(d: &Daemon, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, Value) {
    let mut r = reqwest::blocking::Client::new()
        .post(d.url(path))
        .body(body.to_string());
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().expect("control API reachable");
    let s = r.status().as_u16();
    let text = r.text().unwrap_or_default();
    (
        s,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Waits up to `T` for `child` to exit; its exit code (`None`: still
/// running, then killed).
fn exit_of(mut child: Child) -> Option<i32> {
    let mut code = None;
    wait_until(T, || match child.try_wait() {
        Ok(Some(s)) => {
            code = Some(s.code().unwrap_or(-1));
            true
        }
        _ => false,
    });
    if code.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    code
}

/// Item 7: a client without the token, hammering with 60 KB app names,
/// gets at most 10 lines written in full a minute, each field capped and
/// marked; the rest is one summary line, written before the next line.
/// Client-given text never brings control characters into the log.
#[test]
fn refused_attempts_are_capped_and_rate_limited_in_the_audit() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start_with(&[AppSpec::new("web", &[&b], &[&g])], Some("tok"));
    assert!(d.wait_health("web", "green", "up", T));
    let long = "a".repeat(60_000);
    let started = Instant::now();
    for _ in 0..200 {
        let (s, v) = post(
            &d,
            &format!("/v1/apps/{long}/switch"),
            &[("Content-Type", "application/json")],
            r#"{"to":"green"}"#,
        );
        assert_eq!((s, v["code"].as_str()), (401, Some("unauthorized")));
    }
    assert!(started.elapsed() < Duration::from_secs(60), "one window");
    let lines = audit(&d);
    assert_eq!(lines.len(), 10, "10 in full, the rest counted");
    for l in &lines {
        assert_eq!(l["result"], "unauthorized");
        assert!(l["app"].as_str().unwrap().len() <= 256 + 3, "app capped");
        assert_eq!(l["truncated"], json!(["app"]));
    }
    let size = std::fs::metadata(d.state_dir().join("audit.log"))
        .unwrap()
        .len();
    assert!(size < 10 * 1024, "{size} bytes for 200 refusals");

    // The next line written is preceded by the count.
    let (s, v) = d.api(
        "POST",
        "/v1/apps/web/switch",
        Some(json!({"to": "green", "actor": "ann\u{1b}[2J", "reason": "r\u{202e}\n1"})),
    );
    assert_eq!(s, 200, "{v}");
    let lines = audit(&d);
    assert_eq!(lines.len(), 12, "{lines:?}");
    let summary = &lines[10];
    assert_eq!(
        (
            summary["result"].as_str(),
            summary["count"].as_u64(),
            summary["client"].as_str()
        ),
        (Some("rate_limited"), Some(190), Some("127.0.0.1"))
    );
    assert!(summary["error"]
        .as_str()
        .unwrap()
        .starts_with("190 refused from 127.0.0.1 since "));
    let ok = &lines[11];
    assert_eq!(ok["result"], "ok");
    assert_eq!(ok["actor"], "ann\u{fffd}[2J");
    assert_eq!(ok["reason"], "r\u{fffd}\u{fffd}1");
}

/// Item 7: without a token, changes come from loopback only; an IPv4
/// client of a dual-stack listener (`[::]`, seen as `::ffff:127.0.0.1`) is
/// loopback too, and is recorded as 127.0.0.1.
#[test]
fn ipv4_mapped_loopback_is_loopback() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let mut d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g])]);
    let text = std::fs::read_to_string(&d.config).unwrap();
    let own = format!("listen = \"{}\"", d.control);
    assert_eq!(text.matches(&own).count(), 1, "{text}");
    d.rewrite_config(&text.replace(&own, &format!("listen = \"[::]:{}\"", d.control.port())));
    d.kill9_and_restart();
    assert!(d.wait_health("web", "green", "up", T));
    let (s, v) = d.switch("web", "green");
    assert_eq!(s, 200, "{v}");
    let last = audit(&d).pop().unwrap();
    assert_eq!(
        (last["result"].as_str(), last["client"].as_str()),
        (Some("ok"), Some("127.0.0.1"))
    );
}

/// Item 7: a web page cannot change anything: a request with an `Origin`
/// other than the control address is refused 403 `forbidden_origin`, a
/// body not declared JSON 415 `unsupported_media_type`, on every mutating
/// route, before anything else, audited as refused. The control address's
/// own origin, JSON bodies, empty bodies without a type, and bgctl pass.
#[test]
fn cross_site_and_mislabelled_changes_are_refused() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let step = "[[app.deploy.steps]]\nname = \"s\"\nrun = \"true\"\n";
    let d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g]).extra(step)]);
    assert!(d.wait_health("web", "green", "up", T));
    let json_type = ("Content-Type", "application/json");
    let switch = r#"{"to":"green"}"#;
    // (path, headers, body, status, code)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "/v1/apps/web/switch",
            vec![("Origin", "http://evil.test"), json_type],
            switch,
            403,
            "forbidden_origin",
        ),
        (
            "/v1/apps/web/switch",
            vec![("Origin", "null"), json_type],
            switch,
            403,
            "forbidden_origin",
        ),
        (
            "/v1/apps/web/switch",
            vec![],
            switch,
            415,
            "unsupported_media_type",
        ),
        (
            "/v1/apps/web/switch",
            vec![("Content-Type", "text/plain")],
            switch,
            415,
            "unsupported_media_type",
        ),
        (
            "/v1/apps/web/rollback",
            vec![("Content-Type", "application/x-www-form-urlencoded")],
            "emergency=true",
            415,
            "unsupported_media_type",
        ),
        (
            "/v1/apps/web/deploy",
            vec![("Content-Type", "text/plain")],
            "{}",
            415,
            "unsupported_media_type",
        ),
        (
            "/v1/apps/web/deploy",
            vec![("Origin", "http://evil.test")],
            "",
            403,
            "forbidden_origin",
        ),
        (
            "/v1/reload",
            vec![("Origin", "http://evil.test")],
            "",
            403,
            "forbidden_origin",
        ),
    ];
    for (path, headers, body, status, code) in &cases {
        let (s, v) = post(&d, path, headers, body);
        assert_eq!(
            (s, v["code"].as_str()),
            (*status, Some(*code)),
            "{path} {headers:?}: {v}"
        );
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    }
    let app = d.app("web");
    assert_eq!(
        (
            app["live"].as_str(),
            app["switch_count"].as_u64(),
            app["deploy"].is_null()
        ),
        (Some("blue"), Some(0), true),
        "nothing changed"
    );
    let (_, h) = d.api("GET", "/v1/apps/web/history", None);
    assert_eq!(
        (h["history"].clone(), h["deploys"].clone()),
        (json!([]), json!([]))
    );
    let refused: Vec<(String, String)> = audit(&d)
        .iter()
        .map(|l| {
            (
                l["action"].as_str().unwrap().into(),
                l["result"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = cases
        .iter()
        .map(|(path, _, _, _, code)| {
            let action = path.rsplit('/').next().unwrap();
            (action.to_string(), code.to_string())
        })
        .collect();
    assert_eq!(refused, expected);

    // The control address's own origin (as a page it served would send).
    let own = format!("http://{}", d.control);
    let (s, v) = post(
        &d,
        "/v1/apps/web/switch",
        &[("Origin", &own), json_type],
        switch,
    );
    assert_eq!(s, 200, "{v}");
    // An empty body needs no type.
    assert!(d.wait_health("web", "blue", "up", T));
    let (s, v) = post(&d, "/v1/apps/web/rollback", &[], "");
    assert_eq!(s, 200, "{v}");
    // bgctl (JSON bodies, no Origin) works as before.
    let (code, out, err) = d.bgctl(&["switch", "green", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(d.app("web")["live"], "green");
}

/// Item 8: the state directory bgproxy creates is 0700, and an existing
/// one that others may write to is reported. No file in it is opened
/// through a symbolic link: a link planted as the scratch file fails the
/// switch (500, named) without writing its target; as the audit log, the
/// start is refused, naming it; as the state file, it is moved aside and
/// the previous good copy used; as `deploys/`, the deploy runs without a
/// log rather than write one through it.
#[test]
fn state_dir_is_private_and_links_are_refused() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let step = "[[app.deploy.steps]]\nname = \"s\"\nrun = \"true\"\n";
    let mut d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g]).extra(step)]);
    assert!(d.wait_health("web", "green", "up", T));
    let dir = d.state_dir();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "created private");

    let victim = d.dir.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();

    // The scratch file: the write is refused, the target untouched.
    let tmp = dir.join("state.json.tmp");
    assert!(tmp.exists(), "recycled scratch file");
    std::fs::remove_file(&tmp).unwrap();
    symlink(&victim, &tmp).unwrap();
    let (s, v) = d.switch("web", "green");
    assert_eq!(
        (s, v["code"].as_str()),
        (500, Some("persist_failed")),
        "{v}"
    );
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("state.json.tmp is a symbolic link"),
        "{v}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert_eq!(d.app("web")["live"], "blue", "nothing changed");
    std::fs::remove_file(&tmp).unwrap();
    assert_eq!(d.switch("web", "green").0, 200);
    assert!(d.wait_health("web", "blue", "up", T));
    assert_eq!(d.switch("web", "blue").0, 200);

    // deploys/: no log is written through it, the deploy still runs.
    let elsewhere = d.dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let _ = std::fs::remove_dir_all(dir.join("deploys"));
    symlink(&elsewhere, dir.join("deploys")).unwrap();
    let (s, v) = d.api("POST", "/v1/apps/web/deploy", Some(json!({})));
    assert_eq!(s, 200, "{v}");
    assert!(wait_until(T, || d.app("web")["deploy"].is_null()));
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    let log = d.log_with(&["deploys is a symbolic link"]);
    assert!(log.contains("deploys is a symbolic link"), "{log}");

    // An existing directory others may write to: reported at start.
    d.kill9();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    d.spawn();
    let log = d.log_with(&["is writable by everyone"]);
    assert!(log.contains("chmod 700"), "{log}");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();

    // The audit log: the start is refused, naming the link.
    d.kill9();
    let audit_log = dir.join("audit.log");
    std::fs::rename(&audit_log, d.dir.path().join("audit.kept")).unwrap();
    symlink(&victim, &audit_log).unwrap();
    let code = exit_of(d.spawn_another(&[]));
    assert!(code.is_some_and(|c| c != 0), "refused to start: {code:?}");
    let log = d.log_with(&["audit.log is a symbolic link"]);
    assert!(log.contains("audit.log is a symbolic link"), "{log}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    std::fs::remove_file(&audit_log).unwrap();

    // The state file: a link to a state with green live is not read; the
    // previous good copy (blue) is.
    let state = dir.join("state.json");
    let mut green: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    green["apps"]["web"]["live"] = json!("green");
    std::fs::write(&victim, serde_json::to_vec(&green).unwrap()).unwrap();
    let before = std::fs::read(&victim).unwrap();
    std::fs::remove_file(&state).unwrap();
    symlink(&victim, &state).unwrap();
    d.spawn();
    assert_eq!(d.app("web")["live"], "blue", "not read through the link");
    let log = d.log_with(&["state.json is a symbolic link"]);
    assert!(log.contains("recovered from"), "{log}");
    assert_eq!(std::fs::read(&victim).unwrap(), before, "target untouched");
}

/// Runs `bgproxy --check` on `toml`; (success, stderr with the path as F).
fn check(toml: &str) -> (bool, String) {
    bgproxy_e2e::check_text(toml)
}

/// Item 9: `--check` names the key of a bad enum value and of a value of
/// the wrong type, with file, line and column, like every other problem.
#[test]
fn check_names_the_key_of_every_bad_value() {
    let good = "[proxy]\nlisten = [\"127.0.0.1:18080\"]\n[state]\npath = \"s/state.json\"\n\
                [[app]]\nname = \"web\"\nhosts = [\"a.example\"]\n[app.blue]\nupstreams = [\"127.0.0.1:3001\"]\n\
                [app.green]\nupstreams = [\"127.0.0.1:3002\"]\n";
    let (ok, err) = check(good);
    assert!(ok, "{err}");
    let cases = [
        (
            good.replace(
                "name = \"web\"",
                "name = \"web\"\ninitial_live = \"purple\"",
            ),
            "F:7:16: app[0].initial_live: unknown variant `purple`, expected `blue` or `green`",
        ),
        (
            good.replace("name = \"web\"", "name = \"web\"\ninitial_live = 1"),
            "F:7:16: app[0].initial_live: ",
        ),
        (
            good.replace("[state]", "threads = \"two\"\n[state]"),
            "F:3:11: proxy.threads: invalid type: string \"two\", expected i64",
        ),
        (
            good.replace("[\"127.0.0.1:3002\"]", "[\"127.0.0.1:3002\", 7]"),
            "F:11:32: app[0].green.upstreams[1]: invalid type: integer `7`, expected a string",
        ),
        (
            good.replace("[app.green]\nupstreams = [\"127.0.0.1:3002\"]\n", ""),
            "F:5:1: app[0]: missing field `green`",
        ),
    ];
    for (toml, expected) in cases {
        let (ok, err) = check(&toml);
        assert!(!ok, "accepted:\n{toml}");
        assert!(err.contains(expected), "expected {expected:?} in:\n{err}");
    }
}

/// The name of the user running this test, and the host name, as bgctl
/// should find them.
fn me() -> (String, String) {
    let out = Command::new("id").arg("-un").output().unwrap();
    let user = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    (user, host)
}

/// Item 11: the actor bgctl sends is the user behind sudo, else `$USER`,
/// else the user name of the uid (cron, systemd and tmux may set no
/// variable at all), with `@host`.
#[test]
fn bgctl_actor_without_user_in_the_environment() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g])]);
    assert!(d.wait_health("web", "green", "up", T) && d.wait_health("web", "blue", "up", T));
    let (user, host) = me();
    assert!(!user.is_empty());
    let runs: [(&[(&str, &str)], String); 3] = [
        (&[], format!("{user}@{host}")),
        (
            &[("USER", "bob"), ("LOGNAME", "carl")],
            format!("bob@{host}"),
        ),
        (
            &[("SUDO_USER", "ann"), ("USER", "root")],
            format!("ann@{host}"),
        ),
    ];
    for (i, (env, expected)) in runs.iter().enumerate() {
        let to = if i % 2 == 0 { "green" } else { "blue" };
        let out = Command::new(bin("bgctl"))
            .env_clear()
            .envs(env.iter().copied())
            .env("BGCTL_ADDR", format!("http://{}", d.control))
            .args(["switch", to, "--yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (_, h) = d.api("GET", "/v1/apps/web/history", None);
        let last = h["history"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(
            last["actor"].as_str(),
            Some(expected.as_str()),
            "env {env:?}"
        );
    }
}

/// A body that is valid JSON for `route` (and so could change something).
fn valid_for(route: &str, body: &[u8]) -> bool {
    use bgproxy_control::api::{DeployRequest, RollbackRequest, SwitchRequest};
    let blank = body.iter().all(u8::is_ascii_whitespace);
    match route {
        "switch" => serde_json::from_slice::<SwitchRequest>(body).is_ok(),
        "rollback" => blank || serde_json::from_slice::<RollbackRequest>(body).is_ok(),
        _ => blank || serde_json::from_slice::<DeployRequest>(body).is_ok(),
    }
}

/// Bodies: arbitrary bytes, and valid bodies mangled (cut, spliced, with
/// values of every type in place of the real ones).
fn bodies() -> impl Strategy<Value = Vec<u8>> {
    let valid = prop::sample::select(vec![
        r#"{"to":"green","emergency":false,"reason":"r","actor":"a"}"#,
        r#"{"emergency":true,"reason":"r","actor":"a"}"#,
        r#"{"migrate":true,"actor":"a"}"#,
    ]);
    let mangled = (
        valid,
        0..60usize,
        0..20usize,
        prop::sample::select(vec![
            "",
            "\"",
            "{",
            "}",
            "null",
            "1e999",
            "-0",
            "[]",
            "{\"to\":",
            "\"purple\"",
            "\u{0}",
            "\\ud800",
            "\"to\":\"green\"",
            ",",
            "true",
        ]),
    )
        .prop_map(|(v, at, len, insert)| {
            let mut b = v.as_bytes().to_vec();
            let at = at.min(b.len());
            let end = (at + len).min(b.len());
            b.splice(at..end, insert.bytes());
            b
        });
    prop_oneof![prop::collection::vec(any::<u8>(), 0..200), mangled]
}

/// Item 12: no body of a switch, rollback or deploy, however mangled,
/// makes the daemon panic or change anything: each invalid one is a 400
/// `bad_request`, and the app is as it was.
#[test]
fn mangled_control_bodies_are_400_and_change_nothing() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let step = "[[app.deploy.steps]]\nname = \"s\"\nrun = \"true\"\n";
    let d = Daemon::start_with(
        &[AppSpec::new("web", &[&b], &[&g]).extra(step)],
        Some("tok"),
    );
    assert!(d.wait_health("web", "green", "up", T));
    let http = reqwest::blocking::Client::new();
    let sent = std::cell::Cell::new(0);
    let mut runner = TestRunner::new(Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    });
    let routes = prop::sample::select(vec!["switch", "rollback", "deploy"]);
    runner
        .run(&(routes, bodies()), |(route, body)| {
            if valid_for(route, &body) {
                return Ok(());
            }
            sent.set(sent.get() + 1);
            let r = http
                .post(d.url(&format!("/v1/apps/web/{route}")))
                .bearer_auth("tok")
                .header("Content-Type", "application/json")
                .body(body.clone())
                .send()
                .map_err(|e| TestCaseError::fail(format!("daemon unreachable: {e}")))?;
            let status = r.status().as_u16();
            let v: Value = r.json().unwrap_or(Value::Null);
            prop_assert_eq!(
                (status, v["code"].as_str()),
                (400, Some("bad_request")),
                "{} {:?}: {}",
                route,
                String::from_utf8_lossy(&body),
                v
            );
            Ok(())
        })
        .unwrap();
    assert!(sent.get() >= 150, "only {} invalid bodies sent", sent.get());
    let app = d.app("web");
    assert_eq!(
        (
            app["live"].as_str(),
            app["switch_count"].as_u64(),
            app["deploy"].is_null()
        ),
        (Some("blue"), Some(0), true)
    );
    let (_, h) = d.api("GET", "/v1/apps/web/history", None);
    assert_eq!(
        (h["history"].clone(), h["deploys"].clone()),
        (json!([]), json!([]))
    );
}
