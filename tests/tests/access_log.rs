//! The access log as the daemon writes it: lines arrive without more
//! traffic (the writer's timer), after a reload and at shutdown; and a log
//! sink that takes nothing (a pipe nobody reads) costs requests nothing:
//! lines are dropped and counted in `bgproxy_access_log_dropped_total`, and
//! every line is either written or counted. No timings are asserted.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bgproxy_e2e::{bin, wait_until, AppSpec, Backend, Daemon, Port};

const T: Duration = Duration::from_secs(10);

/// A line for every request: the first with no traffic after it, one after
/// a SIGHUP reload, and one sent just before SIGTERM (written on the way
/// out).
#[test]
fn lines_arrive_without_more_traffic_after_a_reload_and_at_shutdown() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let mut d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g])]);
    assert_eq!(d.get("x", "/first").0, 200);
    let log = d.log_with(&["path=\"/first\""]);
    let line = log
        .lines()
        .find(|l| l.contains("path=\"/first\""))
        .expect("the line of a request with no traffic after it");
    assert!(
        line.contains(" INFO access: request app=\"web\" color=\"blue\" ")
            && line.contains(" status=200 "),
        "{line}"
    );

    let reloads = r#"bgproxy_config_reloads_total{result="success"}"#;
    d.signal("SIGHUP");
    assert!(wait_until(T, || d.metric(reloads).unwrap_or(0.0) >= 1.0));
    assert_eq!(d.get("x", "/after-reload").0, 200);
    assert!(d
        .log_with(&["path=\"/after-reload\""])
        .contains("path=\"/after-reload\""));

    assert_eq!(d.get("x", "/last").0, 200);
    d.signal("SIGTERM");
    assert!(d.wait_exit(T).is_some(), "bgproxy did not exit");
    assert!(d.log().contains("path=\"/last\""), "{}", d.log());
}

/// bgproxy's stderr is a pipe nobody reads: once it is full, requests are
/// still answered, lines beyond the buffer are dropped and counted, and
/// when the pipe is read again every line is accounted for (written or
/// counted) and new lines arrive.
#[test]
fn a_log_pipe_nobody_reads_drops_and_counts_lines_and_holds_no_request() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let dir = tempfile::tempdir().unwrap();
    let ports = [Port::reserve(), Port::reserve(), Port::reserve()];
    let [proxy, control, metrics] = [0, 1, 2].map(|i| ports[i].addr());
    let config = dir.path().join("bgproxy.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = [\"{proxy}\"]\nthreads = 1\n\
             [metrics]\nlisten = \"{metrics}\"\n[control]\nlisten = \"{control}\"\n\
             [state]\npath = \"state/state.json\"\n\
             [[app]]\nname = \"web\"\n[app.blue]\nupstreams = [\"{}\"]\n\
             [app.green]\nupstreams = [\"{}\"]\n",
            b.addr, g.addr
        ),
    )
    .unwrap();
    let mut child = Command::new(bin("bgproxy"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().expect("a pipe");
    let http = reqwest::blocking::Client::builder()
        .timeout(T)
        .build()
        .unwrap();
    let scrape = || {
        http.get(format!("http://{metrics}/metrics"))
            .send()
            .and_then(|r| r.text())
            .ok()
    };
    let dropped = || {
        scrape().and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("bgproxy_access_log_dropped_total "))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
    };
    let up = wait_until(Duration::from_secs(20), || {
        dropped().is_some() && std::net::TcpStream::connect(proxy).is_ok()
    });
    assert!(up, "bgproxy did not come up");

    // ~4 KB a line: 1,500 lines are several times what the pipe (64 KiB),
    // the writer's batch in hand and the worker's buffer (1 MiB) hold.
    let path = format!("/{}", "a".repeat(4000));
    let n = 1500;
    for i in 0..n {
        let r = http
            .get(format!("http://{proxy}{path}?n={i}"))
            .send()
            .expect("answered although nothing reads the log");
        assert_eq!(r.status(), 200);
    }
    assert!(dropped().expect("metrics") > 0, "a full pipe drops lines");

    // Read the pipe from now on: what was kept arrives, and so do new lines.
    let read = Arc::new(Mutex::new(String::new()));
    let reader = {
        let read = read.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok(n @ 1..) = stderr.read(&mut buf) {
                read.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let mut i = 0;
    // Answered probes: each has a line, written or (the first ones, while
    // the buffer still drains) dropped and counted with the long ones.
    let mut answered = 0;
    let recovered = wait_until(T, || {
        i += 1;
        let after = format!("/after-{i}");
        let ok = http
            .get(format!("http://{proxy}{after}"))
            .send()
            .is_ok_and(|r| r.status() == 200);
        answered += u64::from(ok);
        ok && wait_until(Duration::from_secs(3), || {
            read.lock().unwrap().contains(&format!("path=\"{after}\""))
        })
    });
    assert!(recovered, "new lines arrive once the pipe is read");
    // Every long line has been written or dropped by now (the worker's
    // buffer was taken to let the new lines through).
    let lost = dropped().expect("metrics");
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let exited = wait_until(T, || child.try_wait().is_ok_and(|s| s.is_some()));
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
    reader.join().unwrap();
    let log = read.lock().unwrap().clone();
    let access = |part: &str| {
        log.lines()
            .filter(|l| l.contains(" access: ") && l.contains(part))
            .count() as u64
    };
    let (written, probes_written) = (access(&path), access("path=\"/after-"));
    assert_eq!(
        written + probes_written + lost,
        n + answered,
        "every line written or counted: {written} written, {probes_written} of \
         {answered} probes written, {lost} dropped"
    );
}
