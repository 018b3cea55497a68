//! `bgctl deploy` end to end: real shell steps (writing marker files) run by
//! the real daemon against the STANDBY color only.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use bgproxy_e2e::{
    may_lower_nice_to_minus_10, thread_nices, wait_until, AppSpec, Backend, Daemon, Options,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(10);

/// A `[[app.deploy.steps]]` table.
fn step(name: &str, run: &str, extra: &str) -> String {
    format!("\n[[app.deploy.steps]]\nname = \"{name}\"\nrun = '''{run}'''\n{extra}\n")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Only the standby is targeted, placeholders and BG_* variables are right,
/// --migrate gates the migrate steps, and after a switch the next deploy
/// targets the new standby. The live color never changes.
#[test]
fn deploys_to_standby_with_placeholders_and_migrate_gate() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let marks = tempfile::tempdir().unwrap();
    let m = marks.path().display();
    let steps = [
        step("pull", &format!("echo \"{{app}} {{color}} {{host}} {{port}} $BG_APP $BG_COLOR $BG_HOST $BG_PORT $BG_UPSTREAMS $EXTRA\" >> {m}/pull"), "env = { EXTRA = \"x1\" }"),
        step("migrate", &format!("echo {{color}} >> {m}/migrate"), "migrate = true"),
        step("restart", &format!("echo restarted {{color}} | tee -a {m}/restart; echo to-stderr >&2"), "timeout = \"5s\""),
    ]
    .concat();
    let d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g]).extra(&steps)]);
    assert!(d.wait_health("web", "green", "up", T));

    let (code, out, err) = d.bgctl(&["deploy"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("to GREEN (the STANDBY; live is blue)"),
        "{out}"
    );
    assert!(
        out.contains("skipping migrate (no --migrate)") && out.contains("green is healthy"),
        "{out}"
    );
    let gp = g.addr.port();
    assert_eq!(
        read(&marks.path().join("pull")),
        format!("web green 127.0.0.1 {gp} web green 127.0.0.1 {gp} 127.0.0.1:{gp} x1\n")
    );
    assert_eq!(
        read(&marks.path().join("migrate")),
        "",
        "migrate steps need --migrate"
    );
    assert_eq!(d.app("web")["live"], "blue", "the live color never changes");

    let (code, out, err) = d.bgctl(&["deploy", "--migrate", "--verbose"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("| restarted green") && out.contains("! to-stderr"),
        "verbose shows output: {out}"
    );
    assert_eq!(read(&marks.path().join("migrate")), "green\n");

    // After a switch, the next deploy targets the new standby.
    assert_eq!(d.switch("web", "green").0, 200);
    let (code, out, err) = d.bgctl(&["deploy", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON only"))
        .collect();
    assert_eq!(events[0]["event"], "started");
    assert_eq!(events[0]["color"], "blue");
    assert_eq!(events.last().unwrap()["event"], "done");
    assert_eq!(events.last().unwrap()["result"], "success");
    assert!(read(&marks.path().join("restart")).ends_with("restarted blue\n"));
    assert_eq!(d.app("web")["live"], "green");

    // Recorded: history with steps, and a log file with the full output.
    let (_, h) = d.api("GET", "/v1/apps/web/history", None);
    let deploys = h["deploys"].as_array().unwrap();
    assert_eq!(deploys.len(), 3);
    assert_eq!(
        (deploys[0]["color"].as_str(), deploys[0]["result"].as_str()),
        (Some("green"), Some("success"))
    );
    assert_eq!(deploys[0]["steps"][1]["skipped"], true);
    assert!(deploys[0]["actor"].as_str().unwrap().contains('@'));
    let log = read(Path::new(deploys[1]["log"].as_str().unwrap()));
    assert!(
        log.contains("stdout| restarted green") && log.contains("stderr| to-stderr"),
        "{log}"
    );
    let logs: std::collections::HashSet<&str> =
        deploys.iter().map(|d| d["log"].as_str().unwrap()).collect();
    assert_eq!(logs.len(), 3, "one log file per run");
    let (code, out, _) = d.bgctl(&["history"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("DEPLOYED") && out.contains("migrate (skipped)"),
        "{out}"
    );
    assert_eq!(
        d.metric("bgproxy_deploys_total{app=\"web\",color=\"green\",result=\"success\"}"),
        Some(2.0)
    );
}

/// A failing step stops the rest and is named; exit 1; live untouched.
#[test]
fn failing_step_stops_the_deploy() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let marks = tempfile::tempdir().unwrap();
    let m = marks.path().display();
    let steps = [
        step("one", &format!("touch {m}/one"), ""),
        step(
            "build",
            "echo compiling; echo 'error: it broke' >&2; exit 3",
            "",
        ),
        step("three", &format!("touch {m}/three"), ""),
    ]
    .concat();
    let d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g]).extra(&steps)]);
    let (code, out, err) = d.bgctl(&["deploy"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL [2/3] build") && out.contains("exit status 3"),
        "{out}"
    );
    assert!(
        out.contains("! error: it broke"),
        "a failing step's output is shown: {out}"
    );
    assert!(err.contains("step 'build' failed"), "{err}");
    assert!(marks.path().join("one").exists() && !marks.path().join("three").exists());
    let (_, h) = d.api("GET", "/v1/apps/web/history", None);
    let rec = &h["deploys"][0];
    assert_eq!(
        (
            rec["result"].as_str(),
            rec["steps"][1]["exit_code"].as_i64()
        ),
        (Some("failed"), Some(3))
    );
    assert_eq!(rec["steps"][2]["skipped"], true);
    assert_eq!(d.app("web")["live"], "blue");
    assert_eq!(d.app("web")["switch_count"], 0);
}

/// A step over its timeout is killed together with its children.
#[test]
fn step_timeout_kills_the_process_group() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let marks = tempfile::tempdir().unwrap();
    let pidfile = marks.path().join("child.pid");
    let steps = step(
        "hang",
        &format!("sleep 300 & echo $! > {}; wait", pidfile.display()),
        "timeout = \"1s\"",
    );
    let d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g]).extra(&steps)]);
    let (code, out, _) = d.bgctl(&["deploy"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("timed out after 1s"), "{out}");
    let pid = read(&pidfile).trim().to_string();
    assert!(!pid.is_empty());
    assert!(
        wait_until(T, || !Path::new(&format!("/proc/{pid}")).exists()),
        "the step's child {pid} was killed"
    );
}

/// One deploy per app (409 for a second); a switch to the color under deploy
/// is refused (409) unless emergency, which aborts the deploy; a client that
/// disconnects does not stop the deploy, and status shows it.
#[test]
fn concurrent_deploy_and_switch_gates_and_disconnect() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let marks = tempfile::tempdir().unwrap();
    let m = marks.path().display();
    let steps = [
        step("slow", &format!("sleep 2 && touch {m}/slow-done"), ""),
        step("after", &format!("touch {m}/after"), ""),
    ]
    .concat();
    let d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g]).extra(&steps)]);
    assert!(d.wait_health("web", "green", "up", T));

    // Start a deploy and walk away from it after the first event.
    {
        let mut resp = reqwest::blocking::Client::new()
            .post(d.url("/v1/apps/web/deploy"))
            .header("Content-Type", "application/json")
            .body("{}")
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut first = [0u8; 16];
        std::io::Read::read(&mut resp, &mut first).unwrap();
    }
    assert!(wait_until(T, || !d.app("web")["deploy"].is_null()));
    let running = d.app("web")["deploy"].clone();
    assert_eq!(running["color"], "green");

    let (s, v) = d.api("POST", "/v1/apps/web/deploy", Some(serde_json::json!({})));
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("deploy_running")),
        "{v}"
    );
    let (code, _, err) = d.bgctl(&["switch", "green", "--yes"]);
    assert_eq!(code, 1);
    assert!(err.contains("deploy to green"), "{err}");
    assert_eq!(d.app("web")["live"], "blue");

    // The disconnected deploy runs to its end.
    assert!(wait_until(T, || d.app("web")["deploy"].is_null()));
    assert!(marks.path().join("after").exists());
    let (_, h) = d.api("GET", "/v1/apps/web/history", None);
    assert_eq!(h["deploys"][0]["result"], "success");

    // An emergency switch onto the color under deploy aborts it.
    std::fs::remove_file(marks.path().join("after")).unwrap();
    std::fs::remove_file(marks.path().join("slow-done")).unwrap();
    let runner = {
        let (addr, _) = (d.url(""), ());
        thread::spawn(move || {
            reqwest::blocking::Client::new()
                .post(format!("{addr}/v1/apps/web/deploy"))
                .send()
                .and_then(|r| r.text())
                .unwrap()
        })
    };
    assert!(wait_until(T, || !d.app("web")["deploy"].is_null()));
    let started = Instant::now();
    let (s, v) = d.api(
        "POST",
        "/v1/apps/web/switch",
        Some(serde_json::json!({"to": "green", "emergency": true})),
    );
    assert_eq!(s, 200, "{v}");
    let stream = runner.join().unwrap();
    let done: Value = serde_json::from_str(stream.lines().last().unwrap()).unwrap();
    assert_eq!(done["result"], "aborted", "{stream}");
    // Nothing of the deploy goes on: past the moment the slow step would
    // have finished (2s after it started) and the next one run, with a
    // margin, neither left a mark.
    let would_have_run = Duration::from_millis(2000 + 1500);
    assert!(
        !wait_until(would_have_run.saturating_sub(started.elapsed()), || {
            marks.path().join("slow-done").exists() || marks.path().join("after").exists()
        }),
        "the step under way was killed and no step ran after the abort"
    );
    assert_eq!(d.app("web")["live"], "green");
}

/// After the steps, the standby must become healthy in time.
#[test]
fn unhealthy_standby_fails_the_deploy() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    g.set_health(503);
    let steps = format!(
        "\n[app.deploy]\nhealth_timeout = \"1s\"\n{}",
        step("noop", "true", "")
    );
    let d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g]).extra(&steps)]);
    let (code, out, err) = d.bgctl(&["deploy"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("did not become healthy within 1s") && err.contains("is down"),
        "{err}"
    );
}

/// `control.nice` raises the control API's thread, which starts the steps;
/// a process inherits the nice value of the thread that starts it, yet the
/// steps (a build, a `docker pull`) must not outrank the traffic either:
/// they run at the daemon's own priority.
#[test]
fn steps_run_at_the_daemons_priority_not_control_nice() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let marks = tempfile::tempdir().unwrap();
    let m = marks.path().display();
    // Field 19 of /proc/PID/stat is the nice value ("sh" has no spaces).
    let steps = step(
        "nice",
        &format!("cut -d' ' -f19 /proc/$$/stat > {m}/nice"),
        "",
    );
    let d = Daemon::start_opts(
        &[AppSpec::new("web", &[&b], &[&g]).extra(&steps)],
        Options {
            control: "nice = -10\n".into(),
            ..Options::default()
        },
    );
    assert!(d.wait_health("web", "green", "up", T));
    // Without the privilege the control thread stays at 0 and the steps
    // would run at 0 whatever the daemon did: nothing to tell apart.
    assert!(
        may_lower_nice_to_minus_10(),
        "this test needs CAP_SYS_NICE or an RLIMIT_NICE soft limit of at least 30 \
         (run it as root, or after `ulimit -e 30` where the hard limit allows)"
    );
    assert_eq!(
        thread_nices(d.pid(), "control api"),
        vec![-10],
        "the control thread is raised"
    );
    let (code, out, err) = d.bgctl(&["deploy"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(read(&marks.path().join("nice")).trim(), "0");
}
