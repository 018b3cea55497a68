//! Operations end to end: config reload (API, SIGHUP, file change) under
//! load, a bad reload, SIGTERM with requests in flight, and the state lock
//! that keeps a second daemon off a live state file.

use std::thread;
use std::time::{Duration, Instant};

use bgproxy_e2e::{unix_socket_listens, wait_until, AppSpec, Backend, Daemon, Load, Port};
use serde_json::Value;

const T: Duration = Duration::from_secs(10);

/// Under keep-alive load, a reload that adds an upstream and an app: zero
/// failed requests, the new app served, the new upstream used, live colors
/// kept.
#[test]
fn reload_under_load_adds_upstream_and_app() {
    let (b, g1, g2) = (
        Backend::start("blue"),
        Backend::start("green"),
        Backend::start("green"),
    );
    let (ab, ag) = (Backend::start("api-blue"), Backend::start("api-green"));
    let web = AppSpec::new("web", &[&b], &[&g1]);
    let d = Daemon::start(std::slice::from_ref(&web));
    assert!(d.wait_health("web", "green", "up", T));
    assert_eq!(d.switch("web", "green").0, 200);

    let load = Load::start(&d, "anything", 3);
    assert!(
        load.wait_each_answered_since(Instant::now(), 5, T),
        "load flows before the reload"
    );
    let web2 = AppSpec::new("web", &[&b], &[&g1, &g2]);
    let api = AppSpec::new("api", &[&ab], &[&ag]).hosts(&["api.example"]);
    // Written in place: the file watcher may reload it too, which is fine.
    d.rewrite_config(&d.render(&[web2, api]));
    let (code, out, err) = d.bgctl(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("configuration reloaded"), "{out}");
    let reloaded = Instant::now();
    assert!(
        wait_until(T, || g2.hits() > 0),
        "the added upstream takes traffic"
    );
    assert!(
        load.wait_each_answered_since(reloaded, 20, T),
        "load goes on after the reload"
    );
    let report = load.finish();

    assert_eq!(
        d.color_of("api.example"),
        "api-blue",
        "new app served on its initial color"
    );
    assert_eq!(d.app("web")["live"], "green", "live color kept");
    assert_eq!(d.app("web")["switch_count"], 1);
    assert_eq!(
        report.colors(),
        ["green".to_string()].into(),
        "live color kept"
    );
    assert!(
        d.wait_health("api", "green", "up", T),
        "new upstreams are health-checked"
    );
    assert_eq!(
        d.metric("bgproxy_config_reloads_total{result=\"success\"}")
            .map(|v| v >= 1.0),
        Some(true)
    );
}

/// A bad config: the reload is refused with the problem named, nothing
/// changes; SIGHUP reloads a good one. (File watching is off here so that
/// only the API and the signal reload.)
#[test]
fn bad_reload_changes_nothing_then_sighup_reloads() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let (xb, xg) = (Backend::start("x-blue"), Backend::start("x-green"));
    let web = AppSpec::new("web", &[&b], &[&g]);
    let mut d = Daemon::start(std::slice::from_ref(&web));
    let text = std::fs::read_to_string(&d.config)
        .unwrap()
        .replace("[control]", "[control]\nwatch_config = false");
    std::fs::write(&d.config, text).unwrap();
    d.kill9_and_restart();
    let before = d.app("web");

    let good = d
        .render(&[
            web.clone(),
            AppSpec::new("x", &[&xb], &[&xg]).hosts(&["x.example"]),
        ])
        .replace("[control]", "[control]\nwatch_config = false");
    d.rewrite_config(&good.replace("[state]", "[state]\nfsync = true"));
    let (s, v) = d.api("POST", "/v1/reload", None);
    assert_eq!(
        (s, v["code"].as_str()),
        (400, Some("invalid_config")),
        "{v}"
    );
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("unknown field `fsync`"),
        "{v}"
    );
    let (code, _, err) = d.bgctl(&["reload"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown field `fsync`"), "{err}");
    assert_eq!(
        d.get("x.example", "/").0,
        200,
        "still the old routing: x.example goes to the default app"
    );
    assert_eq!(d.color_of("x.example"), "blue");
    let after = d.app("web");
    assert_eq!(
        (before["live"].clone(), before["switch_count"].clone()),
        (after["live"].clone(), after["switch_count"].clone())
    );
    assert!(
        d.metric("bgproxy_config_reloads_total{result=\"failure\"}")
            .unwrap()
            >= 2.0
    );
    let (_, status) = d.api("GET", "/v1/status", None);
    assert_eq!(status["apps"].as_array().unwrap().len(), 1);

    // SIGHUP with the good file.
    std::fs::write(&d.config, &good).unwrap();
    d.signal("HUP");
    assert!(
        wait_until(T, || d.api("GET", "/v1/apps/x", None).0 == 200),
        "{}",
        d.log()
    );
    assert_eq!(d.color_of("x.example"), "x-blue");

    let audit = std::fs::read_to_string(d.state_dir().join("audit.log")).unwrap();
    let reloads: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["action"] == "reload")
        .collect();
    assert!(reloads.iter().any(|r| r["result"] == "invalid_config"));
    assert!(
        reloads
            .iter()
            .any(|r| r["actor"] == "SIGHUP" && r["result"] == "ok"),
        "{audit}"
    );
    assert!(
        !reloads.iter().any(|r| r["actor"] == "config file change"),
        "watching is off: {audit}"
    );
}

/// With watching on (the default), a change of the file alone reloads it,
/// and a file that did not change is not reloaded.
#[test]
fn config_file_change_reloads() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let (xb, xg) = (Backend::start("x-blue"), Backend::start("x-green"));
    let web = AppSpec::new("web", &[&b], &[&g]);
    let d = Daemon::start(std::slice::from_ref(&web));
    d.rewrite_config(&d.render(&[
        web.clone(),
        AppSpec::new("x", &[&xb], &[&xg]).hosts(&["x.example"]),
    ]));
    assert!(
        wait_until(T, || d.api("GET", "/v1/apps/x", None).0 == 200),
        "{}",
        d.log()
    );
    assert_eq!(d.color_of("x.example"), "x-blue");
    d.rewrite_config(&d.render(std::slice::from_ref(&web)));
    assert!(
        wait_until(T, || d.api("GET", "/v1/apps/x", None).0 == 404),
        "{}",
        d.log()
    );
    let reloads = || {
        d.metric("bgproxy_config_reloads_total{result=\"success\"}")
            .unwrap()
    };
    let before = reloads();

    // Same bytes again: read, and not reloaded. Watch the daemon's read of
    // the file (it reads once the change has been quiet for its debounce
    // period), then make a real change: it must be the only reload. Had the
    // same bytes been reloaded, that reload would come on top.
    let same = std::fs::read_to_string(&d.config).unwrap();
    let (tx, opened) = std::sync::mpsc::channel();
    let name = d.config.file_name().unwrap().to_owned();
    let mut watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
        if let Ok(e) = e {
            if matches!(e.kind, notify::EventKind::Access(_))
                && e.paths.iter().any(|p| p.file_name() == Some(&name))
            {
                let _ = tx.send(());
            }
        }
    })
    .unwrap();
    notify::Watcher::watch(
        &mut watcher,
        d.dir.path(),
        notify::RecursiveMode::NonRecursive,
    )
    .unwrap();
    d.rewrite_config(&same);
    assert!(
        opened.recv_timeout(T).is_ok(),
        "the daemon read the rewritten file:\n{}",
        d.log()
    );
    drop(watcher);
    let (yb, yg) = (Backend::start("y-blue"), Backend::start("y-green"));
    d.rewrite_config(&d.render(&[
        web.clone(),
        AppSpec::new("y", &[&yb], &[&yg]).hosts(&["y.example"]),
    ]));
    assert!(
        wait_until(T, || d.api("GET", "/v1/apps/y", None).0 == 200),
        "{}",
        d.log()
    );
    assert_eq!(
        reloads(),
        before + 1.0,
        "only the real change was reloaded:\n{}",
        d.log()
    );
}

/// Settings that need a restart are reported as such, not silently ignored.
#[test]
fn reload_reports_restart_required_settings() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g])]);
    let text = std::fs::read_to_string(&d.config)
        .unwrap()
        .replace("threads = 2", "threads = 3");
    d.rewrite_config(&text);
    let (s, v) = d.api("POST", "/v1/reload", None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["restart_required"], serde_json::json!(["proxy.threads"]));
    let (code, out, _) = d.bgctl(&["reload"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("needs a restart") && out.contains("proxy.threads"),
        "{out}"
    );
}

/// SIGTERM with requests in flight: the daemon waits for them (held by the
/// backend until well after the signal), they complete, then it exits 0.
#[test]
fn sigterm_lets_in_flight_requests_finish() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let mut d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g])]);
    let url = format!("http://{}/hold/term", d.proxy);
    let inflight: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            thread::spawn(move || {
                reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .unwrap()
                    .get(url)
                    .send()
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    assert!(
        wait_until(T, || b.in_flight() == 3),
        "the requests reach the backend"
    );
    d.signal("TERM");
    // The backend holds them for a second after the signal (grace_period
    // is 5s): the daemon must still be there, waiting.
    assert_eq!(
        d.wait_exit(Duration::from_secs(1)),
        None,
        "exited with requests in flight:\n{}",
        d.log()
    );
    assert_eq!(b.in_flight(), 3, "none was cut short");
    b.release_held();
    for t in inflight {
        assert_eq!(t.join().unwrap().expect("completed"), 200);
    }
    assert_eq!(d.wait_exit(Duration::from_secs(15)), Some(0), "{}", d.log());
    // Logs pass through a writer thread, stopped at the exit: threads still
    // logging after that write directly, with no "Unable to write" errors.
    let log = d.log();
    assert!(log.contains("exiting"), "{log}");
    assert!(!log.contains("Unable to write"), "{log}");
}

/// A second bgproxy on the same config refuses to start (its ports are
/// taken), and one on other ports but the same state file refuses too (the
/// state lock), naming the pid that holds it; the first keeps serving.
#[test]
fn second_daemon_on_same_state_refuses_to_start() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g])]);
    let exit_of = |mut child: std::process::Child| {
        let mut status = None;
        assert!(wait_until(T, || {
            status = child.try_wait().unwrap();
            status.is_some()
        }));
        status.unwrap()
    };
    assert!(!exit_of(d.spawn_another(&[])).success());
    assert!(d.log().contains("in use"), "{}", d.log());

    let ports = [Port::reserve(), Port::reserve(), Port::reserve()];
    let other = std::fs::read_to_string(&d.config)
        .unwrap()
        .replace(&d.proxy.to_string(), &ports[0].addr().to_string())
        .replace(&d.control.to_string(), &ports[1].addr().to_string())
        .replace(&d.metrics.to_string(), &ports[2].addr().to_string());
    let other_path = d.dir.path().join("other.toml");
    std::fs::write(&other_path, other).unwrap();
    let out = std::process::Command::new(bgproxy_e2e::bin("bgproxy"))
        .arg("--config")
        .arg(&other_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is in use by another bgproxy") && err.contains(&format!("pid {}", d.pid())),
        "{err}"
    );
    assert_eq!(d.color_of("x"), "blue");
}

/// Zero-downtime binary upgrade under load, three times in a row: start
/// the new process with --upgrade, send SIGQUIT to the old one. Keep-alive
/// clients and clients that open a new connection for every request run
/// throughout. Zero failed requests; each old process exits 0; the new one
/// serves and holds the state (a switch after the handovers is kept). The
/// load never retries, so a connection the old process accepted in its
/// last moments and closed unread fails it (one run in about twelve before
/// the front door's LAST_CALL; with new-connection clients, 3 upgrades in 9
/// as #28 reported).
#[test]
fn graceful_upgrade_under_load_loses_nothing() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let mut d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g])]);
    assert!(d.wait_health("web", "green", "up", T));
    assert_eq!(d.switch("web", "green").0, 200);

    let load = Load::mixed(d.proxy, "x", 3, 3);
    assert!(
        load.wait_each_answered_since(Instant::now(), 5, T),
        "load flows before the upgrade"
    );
    for round in 0..3 {
        let old_pid = d.pid();
        let new = d.spawn_another(&["--upgrade"]);
        let new_pid = new.id();
        // The new process waits on the upgrade socket for the listeners.
        let sock = d.state_dir().join("bgproxy-upgrade.sock");
        assert!(
            wait_until(T, || unix_socket_listens(&sock)),
            "round {round}: the new process listens on {}:\n{}",
            sock.display(),
            d.log()
        );
        d.signal("QUIT");
        assert_eq!(
            d.wait_exit(Duration::from_secs(30)),
            Some(0),
            "round {round}: old process exits cleanly:\n{}",
            d.log()
        );
        let old_gone = Instant::now();
        d.adopt(new);
        assert!(
            load.wait_each_answered_since(old_gone, 20, T),
            "round {round}: traffic flows to the new process alone"
        );
        assert_eq!(d.pid(), new_pid);
        assert_ne!(old_pid, new_pid);
    }
    let report = load.finish();
    let fresh = report.samples.iter().filter(|s| s.client >= 3).count();
    eprintln!(
        "3 upgrades: {} requests, {fresh} of them on a new connection each, 0 failed",
        report.sent()
    );

    let app = d.app("web");
    assert_eq!(
        (app["live"].as_str(), app["switch_count"].as_u64()),
        (Some("green"), Some(1)),
        "state carried over"
    );
    assert_eq!(d.color_of("x"), "green");
    assert!(d.wait_health("web", "blue", "up", T));
    assert_eq!(
        d.switch("web", "blue").0,
        200,
        "the new process is the writer"
    );
    assert_eq!(d.color_of("x"), "blue");
    let log = d.log();
    assert!(
        log.contains("listener sockets sent") && log.contains("state file released"),
        "{log}"
    );
}

/// A taken port or an unusable state directory stops the start at once,
/// with a message naming what is wrong; nothing keeps running half-started.
#[test]
fn refuses_to_start_on_taken_port_or_bad_state_dir() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let run = |toml: String| {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).unwrap();
        let mut child = std::process::Command::new(bgproxy_e2e::bin("bgproxy"))
            .arg("--config")
            .arg(&path)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut status = None;
        let exited = wait_until(T, || {
            status = child.try_wait().unwrap();
            status.is_some()
        });
        if !exited {
            let _ = child.kill();
        }
        assert!(exited, "bgproxy kept running");
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        (status.unwrap().success(), err)
    };
    let control_port = Port::reserve();
    let control = control_port.number();
    let config = |listen: u16, state: &str| {
        format!(
            "[proxy]\nlisten = [\"127.0.0.1:{listen}\"]\n[control]\nlisten = \"127.0.0.1:{control}\"\n[state]\npath = \"{state}\"\n\
             [[app]]\nname = \"web\"\n[app.blue]\nupstreams = [\"127.0.0.1:1\"]\n[app.green]\nupstreams = [\"127.0.0.1:2\"]\n"
        )
    };
    let (ok, err) = run(config(port, "s/state.json"));
    assert!(!ok);
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port} (proxy.listen)"))
            && err.contains("in use"),
        "{err}"
    );

    std::fs::write(dir.path().join("plainfile"), "x").unwrap();
    let listen = Port::reserve();
    let (ok, err) = run(config(listen.number(), "plainfile/state.json"));
    assert!(!ok);
    assert!(err.contains("cannot create state directory"), "{err}");
}
