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
        let options: Vec<String> = help_section(&bgctl_out(&[cmd, "--help"]), "Options:")
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
