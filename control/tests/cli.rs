//! bgctl's command line without a daemon: usage errors, unreachable API and
//! completions. (Being an integration test of this package, it also makes
//! `cargo test --workspace` build the `bgctl` binary for the e2e tests.)

use std::net::TcpListener;
use std::process::{Command, Output};

fn bgctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bgctl"))
        .args(args)
        .env_remove("BGCTL_ADDR")
        .env_remove("BGCTL_TOKEN")
        .output()
        .unwrap()
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["switch", "purple"][..],
        &["frobnicate"],
        &["status", "--timeout", "soon"],
        &["switch"],
    ] {
        let out = bgctl(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = bgctl(&["switch", "purple"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected 'blue' or 'green'"));
}

#[test]
fn unreachable_daemon_exits_4_naming_the_address() {
    // A port that was just free: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("http://127.0.0.1:{port}");
    for args in [&["status"][..], &["switch", "green", "--yes"], &["history"]] {
        let mut all = vec!["--addr", &addr];
        all.extend_from_slice(args);
        let out = bgctl(&all);
        assert_eq!(out.status.code(), Some(4), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cannot reach") && err.contains(&addr), "{err}");
    }
}

#[test]
fn completions_for_bash() {
    let out = bgctl(&["completions", "bash"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("rollback"));
}
