//! The real `bgctl` against the real daemon: every outcome has its exit code.

use std::time::Duration;

use bgproxy_e2e::{bin, AppSpec, Backend, Daemon};
use serde_json::Value;

const T: Duration = Duration::from_secs(10);

fn start() -> (Backend, Backend, Daemon) {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start_with(&[AppSpec::new("web", &[&b], &[&g])], Some("tok-123"));
    assert!(d.wait_health("web", "green", "up", T) && d.wait_health("web", "blue", "up", T));
    (b, g, d)
}

#[test]
fn status_text_and_json() {
    let (_b, _g, d) = start();
    let (code, out, err) = d.bgctl(&["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("APP web") && out.contains("LIVE BLUE") && out.contains("STANDBY green"),
        "{out}"
    );
    assert!(
        out.contains("switches 0") && out.contains("last switch never"),
        "{out}"
    );
    assert!(
        out.lines().filter(|l| l.contains(" up ")).count() == 2,
        "{out}"
    );
    assert!(!out.contains('\x1b'), "no ANSI codes when piped");

    let (code, out, _) = d.bgctl(&["status", "--json"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).expect("only JSON on stdout");
    assert_eq!(v["apps"][0]["live"], "blue");
    assert_eq!(
        v["apps"][0]["colors"]["green"]["upstreams"][0]["health"],
        "up"
    );
}

#[test]
fn switch_needs_approval_without_tty_then_yes_switches() {
    let (_b, _g, d) = start();
    let (code, out, err) = d.bgctl(&["switch", "green"]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        out.contains("current live: BLUE") && out.contains("new live:     GREEN"),
        "{out}"
    );
    assert!(err.contains("--yes"), "{err}");
    assert_eq!(d.app("web")["live"], "blue", "nothing changed");

    let (code, out, err) = d.bgctl(&["switch", "green", "--yes", "--reason", "release 42"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("GREEN is now LIVE") && out.contains("#1"),
        "{out}"
    );
    assert_eq!(d.color_of("x"), "green");

    // Options before or after the subcommand.
    let (code, out, _) = d.bgctl(&["--app", "web", "history", "--json"]);
    assert_eq!(code, 0);
    let h: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(h["history"][0]["reason"], "release 42");
    assert!(
        h["history"][0]["actor"].as_str().unwrap().contains('@'),
        "actor is user@host: {h}"
    );

    let (code, out, _) = d.bgctl(&["history", "--limit", "5"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("blue   -> green") && out.contains("release 42"),
        "{out}"
    );

    // Already live: refused, exit 1, reason on stderr.
    let (code, _, err) = d.bgctl(&["switch", "green", "--yes"]);
    assert_eq!(code, 1);
    assert!(err.contains("already live"), "{err}");
}

#[test]
fn refused_emergency_and_rollback() {
    let (_b, g, d) = start();
    g.set_health(500);
    assert!(d.wait_health("web", "green", "down", T));
    let (code, _, err) = d.bgctl(&["switch", "green", "--yes"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("not healthy") && err.contains("--emergency"),
        "{err}"
    );
    assert_eq!(d.app("web")["switch_count"], 0);

    let (code, out, err) = d.bgctl(&[
        "switch",
        "green",
        "--yes",
        "--emergency",
        "--reason",
        "blue broken",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("emergency #1"), "{out}");
    // The plan says loudly that the gate is skipped.
    let (code, out, _) = d.bgctl(&["rollback", "--emergency"]);
    assert_eq!(code, 3);
    assert!(
        out.contains("EMERGENCY") && out.contains("ROLLBACK"),
        "{out}"
    );

    let (code, out, err) = d.bgctl(&["rollback", "--yes", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("only JSON");
    assert_eq!(
        (v["live"].as_str(), v["kind"].as_str()),
        (Some("blue"), Some("rollback"))
    );
    assert_eq!(d.color_of("x"), "blue");
}

#[test]
fn bad_token_exits_4() {
    let (_b, _g, mut d) = start();
    d.token = Some("wrong".into());
    let (code, _, err) = d.bgctl(&["switch", "green", "--yes"]);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("refused the token") && err.contains(&d.control.to_string()),
        "{err}"
    );
    d.token = None;
    let (code, _, _) = d.bgctl(&["rollback", "--yes", "--emergency"]);
    assert_eq!(
        code, 1,
        "nothing to roll back is checked before auth matters"
    );
    let (code, _, err) = d.bgctl(&["switch", "green", "--yes"]);
    assert_eq!(code, 4, "{err}");
    d.token = Some("tok-123".into());
    assert_eq!(d.app("web")["live"], "blue");
}

#[test]
fn two_apps_need_app_flag() {
    let (b1, g1, b2, g2) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
        Backend::start("d"),
    );
    let d = Daemon::start(&[
        AppSpec::new("shop", &[&b1], &[&g1]).hosts(&["shop.example"]),
        AppSpec::new("blog", &[&b2], &[&g2]).hosts(&["blog.example"]),
    ]);
    let (code, _, err) = d.bgctl(&["switch", "green", "--yes"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--app") && err.contains("shop") && err.contains("blog"),
        "{err}"
    );
    let (code, _, err) = d.bgctl(&["history", "--app", "nope"]);
    assert_eq!(code, 2, "{err}");
    assert!(d.wait_health("blog", "green", "up", T));
    let (code, _, err) = d.bgctl(&["switch", "green", "--yes", "--app", "blog"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(d.app("blog")["live"], "green");
    assert_eq!(d.app("shop")["live"], "blue");
    let (code, out, _) = d.bgctl(&["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("APP shop") && out.contains("APP blog"));
}

/// Runs the real `bgctl` without a daemon; returns its stdout.
fn bgctl_out(args: &[&str]) -> String {
    let out = std::process::Command::new(bin("bgctl"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "bgctl {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The first words of the lines of `section` ("Commands:", "Options:") of
/// a `--help` text, as listed there.
fn help_section(help: &str, section: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != section)
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| !w.starts_with('-') || w.starts_with("--"))
        })
        .map(|w| w.trim_end_matches(',').to_string())
        .collect()
}

/// The bash completions, loaded into a real bash, complete every command
/// `bgctl --help` lists, a command from its first letters, and every long
/// option each command's `--help` lists.
#[test]
fn completions_for_bash_complete_every_command_and_option() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("bgctl.bash");
    std::fs::write(&script, bgctl_out(&["completions", "bash"])).unwrap();
    let commands = help_section(&bgctl_out(&["--help"]), "Commands:");
    assert!(
        commands.len() >= 7 && commands.contains(&"rollback".to_string()),
        "{commands:?}"
    );

    // Each case: the words typed so far (the last one being completed).
    let mut cases: Vec<(Vec<String>, Vec<String>)> =
        vec![(vec!["bgctl".into(), String::new()], commands.clone())];
    for cmd in commands.iter().filter(|c| *c != "help") {
        // The shortest prefix no other command shares completes to it alone.
        let prefix = (1..=cmd.len())
            .map(|n| &cmd[..n])
            .find(|p| commands.iter().filter(|c| c.starts_with(p)).count() == 1)
            .unwrap();
        cases.push((vec!["bgctl".into(), prefix.to_string()], vec![cmd.clone()]));
        // `-h`: one line per option (a command with a long description
        // gets a multi-line `--help`).
        let options: Vec<String> = help_section(&bgctl_out(&[cmd, "-h"]), "Options:")
            .into_iter()
            .filter(|o| o.starts_with("--"))
            .collect();
        assert!(
            options.contains(&"--help".to_string()),
            "{cmd}: {options:?}"
        );
        cases.push((vec!["bgctl".into(), cmd.clone(), "--".into()], options));
    }
    let mut program = format!(
        "source {}\ncomplete -p bgctl | grep -q -- '-F _bgctl' || echo NOT-REGISTERED\n",
        script.display()
    );
    for (i, (words, _)) in cases.iter().enumerate() {
        let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        program.push_str(&format!(
            "COMP_WORDS=({}); COMP_CWORD={}; COMPREPLY=(); _bgctl bgctl '{}' '{}'; echo \"{i}: ${{COMPREPLY[*]}}\"\n",
            quoted.join(" "),
            words.len() - 1,
            words[words.len() - 1],
            words[words.len() - 2],
        ));
    }
    let out = std::process::Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !stdout.contains("NOT-REGISTERED"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replies: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| {
            l.split_once(": ")
                .map_or("", |(_, r)| r)
                .split_whitespace()
                .collect()
        })
        .collect();
    assert_eq!(replies.len(), cases.len(), "{stdout}");
    for ((words, expected), got) in cases.iter().zip(&replies) {
        if words.last().unwrap().is_empty() || words.last().unwrap() == "--" {
            for e in expected {
                assert!(
                    got.contains(&e.as_str()),
                    "{words:?}: {e} missing from {got:?}"
                );
            }
        } else {
            assert_eq!(got, expected, "{words:?}");
        }
    }
}

/// A rollout by hand with bgctl: approval first, then canary, pause, resume,
/// weight and abort, each with its end state and exit code; bad input and
/// a promote without a rollout are refused and change nothing.
#[test]
fn canary_pause_resume_weight_abort() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    // Without traffic every window is inconclusive: the step holds (and
    // never pauses on its own here), so only bgctl moves the rollout.
    let spec = AppSpec::new("web", &[&b], &[&g]).extra("[app.analysis]\nmax_inconclusive = 1000\n");
    let d = Daemon::start_with(&[spec], Some("tok-123"));
    assert!(d.wait_health("web", "green", "up", T) && d.wait_health("web", "blue", "up", T));
    let rollout = || {
        let (code, out, err) = d.bgctl(&["status", "--json"]);
        assert_eq!(code, 0, "{err}");
        let v: Value = serde_json::from_str(&out).expect("only JSON");
        v["apps"][0].clone()
    };

    // No TTY, no --yes: the plan, exit 3, nothing changed.
    let (code, out, err) = d.bgctl(&["canary", "green", "--steps", "50,100", "--interval", "1s"]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        out.contains("CANARY of app 'web'")
            && out.contains("split now:  blue 100% / green 0%")
            && out.contains("50% -> 100%")
            && out.contains("every upstream up"),
        "{out}"
    );
    assert!(err.contains("--yes"), "{err}");
    let a = rollout();
    assert!(a["rollout"].is_null(), "{a}");
    assert_eq!(
        (&a["weights"]["blue"], &a["live"]),
        (&Value::from(100), &Value::from("blue"))
    );

    let (code, out, err) = d.bgctl(&[
        "canary",
        "green",
        "--yes",
        "--steps",
        "50,100",
        "--interval",
        "1s",
        "--reason",
        "release 43",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("rollout of GREEN started") && out.contains("step 1/2 at 50%"),
        "{out}"
    );
    let a = rollout();
    assert_eq!(a["rollout"]["to"], "green", "{a}");
    assert_eq!(a["rollout"]["state"], "running", "{a}");
    assert_eq!(a["rollout"]["percent"], 50, "{a}");
    assert_eq!(a["rollout"]["steps"], serde_json::json!([50, 100]), "{a}");
    assert_eq!(a["rollout"]["reason"], "release 43", "{a}");
    assert_eq!(a["weights"]["green"], 50, "{a}");
    assert_eq!(a["live"], "blue");

    // The split at a glance.
    let (code, out, _) = d.bgctl(&["status"]);
    assert_eq!(code, 0);
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("split"))
        .unwrap_or_default();
    assert!(
        line.contains("split  blue 50% / green 50%   rollout green step 1/2 (50%) running"),
        "{out}"
    );

    // One rollout at a time.
    let (code, _, err) = d.bgctl(&["canary", "green", "--yes"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("rollout of app 'web' is running"), "{err}");

    let (code, out, err) = d.bgctl(&["pause", "--yes"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("paused"), "{out}");
    assert_eq!(rollout()["rollout"]["state"], "paused");
    let (code, _, err) = d.bgctl(&["pause", "--yes"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("paused already"), "{err}");
    assert!(d.bgctl(&["status"]).1.contains("(50%) PAUSED"));

    let (code, _, err) = d.bgctl(&["resume"]);
    assert_eq!(code, 3, "asks first: {err}");
    assert_eq!(rollout()["rollout"]["state"], "paused");
    let (code, _, err) = d.bgctl(&["resume", "--yes"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(rollout()["rollout"]["state"], "running");

    let (code, out, err) = d.bgctl(&["weight", "green", "30", "--yes"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("blue 70% / green 30%"), "{out}");
    let a = rollout();
    assert_eq!(
        (&a["rollout"]["percent"], &a["rollout"]["state"]),
        (&Value::from(30), &Value::from("paused")),
        "{a}"
    );
    assert_eq!(a["weights"]["green"], 30, "{a}");

    // A share outside 0-100 is a usage error, and nothing changes.
    let (code, _, err) = d.bgctl(&["weight", "green", "150", "--yes"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("between 0 and 100"), "{err}");
    let (code, _, err) = d.bgctl(&["canary", "green", "--yes", "--steps", "50,25"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("must increase"), "{err}");
    assert_eq!(rollout()["rollout"]["percent"], 30);

    let (code, out, err) = d.bgctl(&["abort", "--yes", "--reason", "enough", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("only JSON");
    assert!(v["rollout"].is_null(), "{v}");
    assert_eq!(v["weights"], serde_json::json!({"blue": 100, "green": 0}));
    let a = rollout();
    assert!(a["rollout"].is_null() && a["live"] == "blue", "{a}");
    assert_eq!(a["switch_count"], 0, "an abort is no switch");
    assert!(
        !d.bgctl(&["status"]).1.contains("split"),
        "no split, no line"
    );

    let (code, out, _) = d.bgctl(&["history", "--json"]);
    assert_eq!(code, 0);
    let h: Value = serde_json::from_str(&out).unwrap();
    let last = h["history"]
        .as_array()
        .unwrap()
        .last()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (&last["kind"], &last["reason"]),
        (&Value::from("abort"), &Value::from("enough")),
        "{h}"
    );
    let (_, out, _) = d.bgctl(&["history"]);
    assert!(
        out.contains("green  -> blue   abort") && out.contains("enough"),
        "{out}"
    );

    // Nothing left to promote: no_rollout's words, exit 1.
    let (code, _, err) = d.bgctl(&["promote", "--yes"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("app 'web' has no rollout"), "{err}");
    let (code, _, err) = d.bgctl(&["abort", "--yes"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("has no rollout"), "{err}");
}

/// `canary --wait` follows the rollout to its end: exit 0 when the new color
/// went live under traffic, 1 when the rollout paused (too little traffic)
/// or was aborted by someone else.
#[test]
fn canary_wait_follows_to_the_end() {
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    use bgproxy_e2e::{wait_until, Load};

    /// `bgctl` in the background, like `Daemon::bgctl`.
    fn spawn(d: &Daemon, args: &[&str]) -> Child {
        Command::new(bin("bgctl"))
            .args(args)
            .env("BGCTL_ADDR", format!("http://{}", d.control))
            .env("BGCTL_TOKEN", d.token.clone().unwrap_or_default())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
    /// Waits at most `timeout` for `child`; its exit code, stdout, stderr.
    fn finish(mut child: Child, timeout: Duration) -> (i32, String, String) {
        let ended = wait_until(timeout, || child.try_wait().unwrap().is_some());
        if !ended {
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            ended,
            "bgctl --wait still running after {timeout:?}: {out:?}"
        );
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    // With traffic, every window passes (latency is not what is tested).
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let spec = AppSpec::new("web", &[&b], &[&g])
        .extra("[app.analysis]\nmin_requests = 5\nmax_latency_ratio = 1000.0\n");
    let d = Daemon::start_with(&[spec], Some("tok-123"));
    assert!(d.wait_health("web", "green", "up", T) && d.wait_health("web", "blue", "up", T));
    let load = Load::start(&d, "x", 2);
    let started = Instant::now();
    let child = spawn(
        &d,
        &[
            "canary",
            "green",
            "--yes",
            "--steps",
            "30,60,100",
            "--interval",
            "1s",
            "--wait",
        ],
    );
    let (code, out, err) = finish(child, Duration::from_secs(30));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("rollout of GREEN started")
            && out.contains("analysis: pass")
            && out.contains("step 2/3: green at 60%")
            && out.contains("GREEN is now LIVE")
            && out.contains("canary at")
            && out.contains("every step passed"),
        "{out}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "returned before the step ended"
    );
    assert_eq!(d.app("web")["live"], "green");
    load.finish();

    // Too little traffic: the first inconclusive window pauses it: exit 1.
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let spec = AppSpec::new("web", &[&b], &[&g]).extra("[app.analysis]\nmax_inconclusive = 1\n");
    let d = Daemon::start_with(&[spec], Some("tok-123"));
    assert!(d.wait_health("web", "green", "up", T) && d.wait_health("web", "blue", "up", T));
    let child = spawn(
        &d,
        &[
            "canary",
            "green",
            "--yes",
            "--steps",
            "10,100",
            "--interval",
            "1s",
            "--wait",
        ],
    );
    let (code, out, err) = finish(child, Duration::from_secs(30));
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("analysis: inconclusive"), "{out}");
    assert!(
        err.contains("paused at 10%") && err.contains("promote, resume or abort"),
        "{err}"
    );
    assert_eq!(d.app("web")["rollout"]["state"], "paused");

    // Aborted by someone else while waiting: exit 1, with who and why.
    let (code, _, err) = d.bgctl(&["abort", "--yes"]);
    assert_eq!(code, 0, "{err}");
    let child = spawn(
        &d,
        &[
            "canary",
            "green",
            "--yes",
            "--steps",
            "10,100",
            "--interval",
            "1m",
            "--wait",
            "--json",
        ],
    );
    assert!(wait_until(T, || !d.app("web")["rollout"].is_null()));
    let (code, _, err) = d.bgctl(&["abort", "--yes", "--reason", "bad smell"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = finish(child, T);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("was aborted (abort by") && err.contains("bad smell"),
        "{err}"
    );
    let first: Value =
        serde_json::from_str(out.lines().next().unwrap_or_default()).expect("JSON lines");
    assert_eq!(first["rollout"]["percent"], 10, "{out}");
    assert!(
        out.lines()
            .all(|l| serde_json::from_str::<Value>(l).is_ok()),
        "{out}"
    );
}

/// The `generation` of `GET /v1/status`.
fn generation(d: &Daemon) -> u64 {
    let (status, v) = d.api("GET", "/v1/status", None);
    assert_eq!(status, 200, "{v}");
    v["generation"].as_u64().expect("status has a generation")
}

/// A change is bound to the generation it was decided on: with
/// `--expect-generation` of a state someone has changed since, it is
/// refused (plan_stale, exit 1, saying to run it again) and changes
/// nothing; with the generation in force it goes through.
#[test]
fn a_change_bound_to_an_old_generation_is_refused() {
    let (_b, _g, d) = start();
    let seen = generation(&d);
    // Someone else switches after we looked.
    assert_eq!(d.switch("web", "green").0, 200);
    let now = generation(&d);
    assert!(now > seen, "a switch moves the generation");
    let old = seen.to_string();
    for args in [
        vec!["rollback", "--yes", "--expect-generation", &old],
        vec!["switch", "blue", "--yes", "--expect-generation", &old],
        vec!["canary", "blue", "--yes", "--expect-generation", &old],
    ] {
        let (code, out, err) = d.bgctl(&args);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(
            err.contains("the state changed while you were deciding")
                && err.contains(&format!("generation {seen}"))
                && err.contains("run the command again"),
            "{args:?}: {err}"
        );
    }
    let app = d.app("web");
    assert_eq!(
        (&app["live"], &app["switch_count"]),
        (&"green".into(), &1.into())
    );
    assert!(app["rollout"].is_null(), "{app}");
    assert_eq!(generation(&d), now, "nothing changed");

    let (code, out, err) = d.bgctl(&["rollback", "--yes", "--expect-generation", &now.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(d.app("web")["live"], "blue");
}

/// `Proceed? [y/N]` on a real terminal (script(1) from util-linux gives
/// bgctl one): someone switches away and back while the operator reads the
/// plan - the live color is the one the plan shows, but the state moved -
/// and the `y` that follows is refused as stale; nothing changes.
#[test]
fn a_plan_answered_after_someone_else_changed_things_is_refused() {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    use std::sync::{Arc, Mutex};

    use bgproxy_e2e::wait_until;

    let (_b, _g, d) = start();
    let cmdline = format!(
        "'{}' switch green --reason 'release 43'",
        bin("bgctl").display()
    );
    let mut child = Command::new("script")
        .args(["-qefc", &cmdline, "/dev/null"])
        .env("BGCTL_ADDR", format!("http://{}", d.control))
        .env("BGCTL_TOKEN", d.token.clone().unwrap_or_default())
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script(1) from util-linux runs bgctl on a terminal");
    let seen = Arc::new(Mutex::new(String::new()));
    let reader = {
        let (seen, mut out) = (seen.clone(), child.stdout.take().unwrap());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let asked = wait_until(T, || seen.lock().unwrap().contains("Proceed? [y/N]"));
    if !asked {
        let _ = child.kill();
    }
    assert!(
        asked,
        "no question on the terminal: {}",
        seen.lock().unwrap()
    );
    assert!(seen.lock().unwrap().contains("new live:     GREEN"));

    // Meanwhile: green and back to blue.
    assert_eq!(d.switch("web", "green").0, 200);
    assert_eq!(d.switch("web", "blue").0, 200);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"y\n").unwrap();
    let ended = wait_until(T, || child.try_wait().unwrap().is_some());
    if !ended {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    drop(stdin);
    reader.join().unwrap();
    let out = seen.lock().unwrap().clone();
    assert!(ended, "bgctl still running after the answer: {out}");
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains("the state changed while you were deciding")
            && out.contains("run the command again"),
        "{out}"
    );
    let app = d.app("web");
    assert_eq!(
        (&app["live"], &app["switch_count"]),
        (&"blue".into(), &2.into())
    );
    let (_, h) = d.api("GET", "/v1/apps/web/history", None);
    assert!(
        !h.to_string().contains("release 43"),
        "the stale switch is not in the history: {h}"
    );
}

/// A daemon with the operator's token `tok-123` and a requester's token
/// `req-456`, both colors healthy; the dir holds the requester's file.
fn start_with_requester() -> (Backend, Backend, Daemon, tempfile::TempDir) {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let tokens = tempfile::tempdir().unwrap();
    let requester = tokens.path().join("requester.token");
    std::fs::write(&requester, "req-456\n").unwrap();
    let d = Daemon::start_opts(
        &[AppSpec::new("web", &[&b], &[&g])],
        bgproxy_e2e::Options {
            token: Some("tok-123".into()),
            control: format!("requester_token_file = \"{}\"\n", requester.display()),
            ..Default::default()
        },
    );
    assert!(d.wait_health("web", "green", "up", T) && d.wait_health("web", "blue", "up", T));
    (b, g, d, tokens)
}

/// `bgctl` with `token` in `BGCTL_TOKEN` instead of the operator's.
fn bgctl_as(d: &mut Daemon, token: &str, args: &[&str]) -> (i32, String, String) {
    let operator = d.token.replace(token.to_string());
    let out = d.bgctl(args);
    d.token = operator;
    out
}

/// A requester asks (`bgctl ask`), nothing moves; `bgctl requests`
/// lists it; the requester cannot approve it; without a terminal approve
/// shows the request and its plan and exits 3; `approve --yes` moves the
/// traffic once; approving again is refused as closed.
#[test]
fn request_then_approve_moves_traffic_once() {
    let (_b, _g, mut d, _t) = start_with_requester();
    let (code, out, err) = bgctl_as(
        &mut d,
        "req-456",
        &["ask", "switch", "--reason", "release 44"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("switch app 'web' from blue to green"),
        "the plan: {out}"
    );
    let id = out
        .split("bgctl approve ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the approve command is printed")
        .to_string();
    assert_eq!(d.app("web")["live"], "blue", "a request moves nothing");
    assert_eq!(d.color_of("x"), "blue");

    let (code, out, err) = d.bgctl(&["requests"]);
    assert_eq!(code, 0, "{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with(&format!("{id} ")))
        .unwrap_or_else(|| panic!("request {id} listed: {out}"));
    assert!(
        row.contains("switch to green") && row.contains("release 44"),
        "{row}"
    );
    let (code, out, _) = d.bgctl(&["requests", "--json"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).expect("only JSON");
    assert_eq!(v["requests"][0]["id"], id.as_str());
    assert_eq!(v["requests"][0]["to"], "green");

    // The requester's token may ask, not decide.
    let (code, _, err) = bgctl_as(&mut d, "req-456", &["approve", &id, "--yes"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("requester"), "{err}");
    // No terminal, no --yes: the request and what it would do now; exit 3.
    let (code, out, err) = d.bgctl(&["approve", &id]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        out.contains(&format!(
            "APPROVE request {id} of app 'web': switch to green"
        )) && out.contains("reason: release 44")
            && out.contains("new live:     GREEN")
            && out.contains("every upstream up"),
        "{out}"
    );
    assert!(err.contains("--yes"), "{err}");
    assert_eq!(d.app("web")["live"], "blue", "nothing changed");

    let (code, out, err) = d.bgctl(&["approve", &id, "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("request {id} approved")) && out.contains("GREEN is now LIVE"),
        "{out}"
    );
    assert_eq!(d.color_of("x"), "green");
    let app = d.app("web");
    assert_eq!(app["switch_count"], 1);
    let (code, out, _) = d.bgctl(&["requests"]);
    assert_eq!((code, out.as_str()), (0, "no pending requests\n"));

    // Twice: closed, nothing changes; without --yes it is refused here.
    let (code, out, err) = d.bgctl(&["approve", &id, "--yes"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("request {id} was approved already")),
        "{err}"
    );
    let (code, _, err) = d.bgctl(&["approve", &id]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not pending"), "{err}");
    let (code, _, err) = d.bgctl(&["approve", "999", "--yes"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no request '999'"), "{err}");
    let (code, _, err) = d.bgctl(&["approve", "../status"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(d.app("web")["switch_count"], 1);
    let (_, h) = d.api("GET", "/v1/apps/web/history", None);
    let last = &h["history"][0];
    assert!(
        last["reason"].as_str().unwrap().contains("release 44")
            && last["reason"].as_str().unwrap().contains("requested by"),
        "{h}"
    );
}

/// deny drops a request and changes nothing; a request made before someone
/// else changed things is refused before anyone is asked (its plan is
/// stale), and can still be denied; a rollback request names no color.
#[test]
fn deny_and_a_stale_request() {
    let (_b, _g, mut d, _t) = start_with_requester();
    let create = |d: &mut Daemon, args: &[&str]| -> String {
        let (code, out, err) = bgctl_as(d, "req-456", args);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        let (_, v) = d.api("GET", "/v1/requests", None);
        v["requests"].as_array().unwrap().last().unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let id = create(&mut d, &["ask", "canary", "green"]);
    let (code, out, err) = d.bgctl(&["deny", &id]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        out.contains(&format!("DENY request {id} of app 'web': canary of green")),
        "{out}"
    );
    let (code, out, err) = d.bgctl(&["deny", &id, "--yes", "--reason", "not today"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("request {id} denied")), "{out}");
    let (code, _, err) = d.bgctl(&["approve", &id, "--yes"]);
    assert_eq!(code, 1);
    assert!(err.contains("was denied already"), "{err}");
    let app = d.app("web");
    assert_eq!(
        (&app["live"], &app["rollout"]),
        (&"blue".into(), &Value::Null)
    );

    // Made, then someone switches: approving it is refused up front.
    let id = create(&mut d, &["ask", "switch", "green", "--json"]);
    assert_eq!(d.switch("web", "green").0, 200);
    let (code, out, err) = d.bgctl(&["approve", &id, "--yes"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("plan_stale") && err.contains(&format!("bgctl deny {id}")),
        "{err}"
    );
    // ... and the daemon refuses it too, when asked without bgctl's check.
    let (status, answer) = d.api("POST", &format!("/v1/requests/{id}/approve"), None);
    assert_eq!((status, answer["code"].as_str()), (409, Some("plan_stale")));
    let (code, _, err) = d.bgctl(&["deny", &id, "--yes"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(d.app("web")["switch_count"], 1);

    let (code, _, err) = bgctl_as(&mut d, "req-456", &["ask", "rollback", "blue"]);
    assert_eq!(code, 2, "{err}");
    let id = create(&mut d, &["ask", "rollback", "--reason", "slow"]);
    let (code, out, err) = d.bgctl(&["approve", &id, "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(d.color_of("x"), "blue");
}

/// The next steps bgctl points at: after a deploy, `bgctl verify` then the
/// switch; in `bgctl status`, the pending requests and how to decide.
#[test]
fn deploy_and_status_say_what_comes_next() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let spec = AppSpec::new("web", &[&b], &[&g])
        .extra("\n[[app.deploy.steps]]\nname = \"build\"\nrun = \"true\"\n");
    let d = Daemon::start_with(&[spec], Some("tok-123"));
    assert!(d.wait_health("web", "green", "up", T) && d.wait_health("web", "blue", "up", T));
    let (code, out, err) = d.bgctl(&["deploy"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("Next: bgctl verify") && out.contains("then bgctl switch green"),
        "{out}"
    );
    let (code, out, _) = d.bgctl(&["status"]);
    assert_eq!(code, 0);
    assert!(!out.contains("pending requests"), "{out}");
    let (code, _, err) = d.bgctl(&["ask", "switch"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = d.bgctl(&["status"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("pending requests: 1 (switch of web)") && out.contains("bgctl approve <id>"),
        "{out}"
    );
    let (code, out, _) = d.bgctl(&["status", "--json"]);
    assert_eq!(code, 0);
    serde_json::from_str::<Value>(&out).expect("--json stays the API's JSON only");
}
