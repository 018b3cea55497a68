//! bgproxy under systemd, with the test playing systemd: it holds the
//! listening sockets (front door and control API; metrics is left for the
//! daemon to bind) and starts each bgproxy with them as fd 3 and 4
//! (`LISTEN_FDS`, `LISTEN_PID` of the process itself, `LISTEN_FDNAMES`), and
//! reads the `NOTIFY_SOCKET` datagrams the daemon sends.
//!
//! - READY=1 comes only once the daemon answers (front door, control API,
//!   every upstream checked); a SIGHUP reload is RELOADING=1 (with
//!   MONOTONIC_USEC) then READY=1; WATCHDOG=1 when WATCHDOG_USEC is set;
//!   STOPPING=1 on SIGTERM.
//! - restart (SIGTERM, start again on the same sockets) under keep-alive and
//!   new-connection-per-request load: no connection refused, no request
//!   failed.
//! - upgrade as the unit's ExecReload does it (`bgproxy upgrade --pid
//!   $MAINPID`): MAINPID= of the new process, READY=1 from it, the old one
//!   exits 0, no STOPPING=1, zero failed requests under both kinds of load.
//! - a failed upgrade (a broken configuration) starts nothing and leaves
//!   the running process serving.
//! - an inherited socket that matches no listener stops the start, naming
//!   its address; LISTEN_PID of another process: the sockets are ignored.
//! - a single start through Debian's `systemd-socket-activate`.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bgproxy_e2e::{bin, wait_until, Backend, Load, Port};
use command_fds::{CommandFdExt, FdMapping};
use serde_json::Value;

const T: Duration = Duration::from_secs(10);

/// The datagrams the daemon sent to `NOTIFY_SOCKET`, in order.
struct Notifications {
    path: PathBuf,
    got: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Notifications {
    fn bind(dir: &Path) -> Notifications {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (got.clone(), stop.clone());
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while !s.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    g.lock().unwrap().push((Instant::now(), text));
                }
            }
        });
        Notifications {
            path,
            got,
            stop,
            reader: Some(reader),
        }
    }

    fn all(&self) -> Vec<(Instant, String)> {
        self.got.lock().unwrap().clone()
    }

    /// How many datagrams so far.
    fn len(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    /// Waits for a datagram after the first `from` that has the line `line`;
    /// returns its index and text.
    fn wait_line(&self, from: usize, line: &str) -> Option<(usize, String)> {
        let mut found = None;
        wait_until(Duration::from_secs(20), || {
            found = self
                .all()
                .into_iter()
                .enumerate()
                .skip(from)
                .find(|(_, (_, m))| m.lines().any(|l| l == line))
                .map(|(i, (_, m))| (i, m));
            found.is_some()
        });
        found
    }

    /// Every line sent after the first `from` datagrams.
    fn lines_since(&self, from: usize) -> Vec<String> {
        self.all()
            .into_iter()
            .skip(from)
            .flat_map(|(_, m)| m.lines().map(String::from).collect::<Vec<_>>())
            .collect()
    }
}

impl Drop for Notifications {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// systemd's part: the sockets, the notification socket, the config, and
/// the processes started with them (killed on drop).
struct Systemd {
    dir: tempfile::TempDir,
    config: PathBuf,
    front: TcpListener,
    control: TcpListener,
    /// Bound by the daemon itself (not inherited).
    _metrics: Port,
    notify: Notifications,
    pids: Mutex<Vec<u32>>,
}

impl Systemd {
    fn new(b: &Backend, g: &Backend) -> Systemd {
        let dir = tempfile::tempdir().unwrap();
        let front = TcpListener::bind("127.0.0.1:0").unwrap();
        let control = TcpListener::bind("127.0.0.1:0").unwrap();
        let metrics = Port::reserve();
        let config = dir.path().join("bgproxy.toml");
        std::fs::write(
            &config,
            format!(
                "[proxy]\nlisten = [\"{}\"]\nthreads = 2\ngrace_period = \"5s\"\nshutdown_timeout = \"1s\"\n\
                 [metrics]\nlisten = \"{}\"\n[control]\nlisten = \"{}\"\n[state]\npath = \"state/state.json\"\n\
                 [[app]]\nname = \"web\"\n[app.health]\ninterval = \"100ms\"\ntimeout = \"1s\"\nrise = 1\nfall = 2\n\
                 [app.blue]\nupstreams = [\"{}\"]\n[app.green]\nupstreams = [\"{}\"]\n",
                front.local_addr().unwrap(),
                metrics.addr(),
                control.local_addr().unwrap(),
                b.addr,
                g.addr
            ),
        )
        .unwrap();
        let notify = Notifications::bind(dir.path());
        Systemd {
            dir,
            config,
            front,
            control,
            _metrics: metrics,
            notify,
            pids: Mutex::new(Vec::new()),
        }
    }

    fn front(&self) -> SocketAddr {
        self.front.local_addr().unwrap()
    }

    fn control(&self) -> SocketAddr {
        self.control.local_addr().unwrap()
    }

    fn log_file(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("bgproxy.log"))
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bgproxy.log")).unwrap_or_default()
    }

    /// The command systemd runs for the service, without the sockets: the
    /// notification socket, the log.
    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("NOTIFY_SOCKET", &self.notify.path)
            .env("RUST_LOG", "info")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::from(self.log_file()))
            .stderr(Stdio::from(self.log_file()));
        cmd
    }

    /// Starts bgproxy as socket activation does: `sockets` at fd 3, 4, ...
    /// with their names, LISTEN_PID set to the process itself (the shell
    /// execs bgproxy: the pid stays), `env` added.
    fn start_with(&self, sockets: &[(&TcpListener, &str)], env: &[(&str, &str)]) -> Child {
        let mut cmd = self.command(Path::new("/bin/sh"));
        cmd.arg("-c")
            .arg("LISTEN_PID=$$; export LISTEN_PID; exec \"$0\" \"$@\"")
            .arg(bin("bgproxy"))
            .arg("--config")
            .arg(&self.config)
            .env("LISTEN_FDS", sockets.len().to_string())
            .env(
                "LISTEN_FDNAMES",
                sockets
                    .iter()
                    .map(|(_, n)| *n)
                    .collect::<Vec<_>>()
                    .join(":"),
            );
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mappings = sockets
            .iter()
            .enumerate()
            .map(|(i, (l, _))| FdMapping {
                parent_fd: OwnedFd::from(l.try_clone().unwrap()),
                child_fd: 3 + i as i32,
            })
            .collect();
        cmd.fd_mappings(mappings).unwrap();
        let child = cmd.spawn().unwrap();
        self.pids.lock().unwrap().push(child.id());
        child
    }

    /// Starts bgproxy with the front door and control sockets.
    fn start(&self, env: &[(&str, &str)]) -> Child {
        self.start_with(&[(&self.front, "http"), (&self.control, "control")], env)
    }

    /// What the unit's ExecReload runs: `bgproxy upgrade --pid MAINPID`,
    /// with NOTIFY_SOCKET (systemd gives it to control processes with
    /// NotifyAccess=all). Returns its exit code and the new process's pid.
    fn exec_reload(&self, main_pid: u32) -> (i32, Option<u32>) {
        // Its stderr to a file of its own: the new process inherits it (as
        // it inherits the journal's stream under systemd), so a pipe would
        // stay open as long as the new process runs.
        let err_path = self.dir.path().join(format!("upgrade-{main_pid}.err"));
        let status = self
            .command(&bin("bgproxy"))
            .arg("--config")
            .arg(&self.config)
            .arg("upgrade")
            .arg("--pid")
            .arg(main_pid.to_string())
            .stderr(Stdio::from(std::fs::File::create(&err_path).unwrap()))
            .status()
            .unwrap();
        let err = std::fs::read_to_string(&err_path).unwrap_or_default();
        let _ = self.log_file().write_all(err.as_bytes());
        let new = err
            .split("started pid ")
            .nth(1)
            .and_then(|r| r.split(';').next())
            .and_then(|p| p.trim().parse().ok());
        if let Some(p) = new {
            self.pids.lock().unwrap().push(p);
        }
        (status.code().unwrap_or(-1), new)
    }

    fn http(&self) -> reqwest::blocking::Client {
        reqwest::blocking::Client::builder()
            .timeout(T)
            .build()
            .unwrap()
    }

    /// `GET /v1/apps/web` from the control API, or None.
    fn app(&self) -> Option<Value> {
        self.http()
            .get(format!("http://{}/v1/apps/web", self.control()))
            .send()
            .ok()
            .filter(|r| r.status() == 200)
            .and_then(|r| r.json().ok())
    }

    /// Status and color of a GET through the front door.
    fn get(&self) -> Option<(u16, String)> {
        let r = self
            .http()
            .get(format!("http://{}/", self.front()))
            .header("Host", "x")
            .send()
            .ok()?;
        let status = r.status().as_u16();
        let body: Value = r.json().ok()?;
        Some((status, body["color"].as_str().unwrap_or("").to_string()))
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        for pid in self.pids.lock().unwrap().iter() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Waits up to `timeout` for `child` to exit; its exit code.
fn wait_exit(child: &mut Child, timeout: Duration) -> Option<i32> {
    let mut code = None;
    wait_until(timeout, || match child.try_wait() {
        Ok(Some(s)) => {
            code = Some(s.code().unwrap_or(-1));
            true
        }
        _ => false,
    });
    code
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Whether process `pid` runs (and is no zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

/// READY=1 only once the daemon answers: at that moment the front door
/// serves from the inherited socket, the control API answers and no
/// upstream is unknown. Then a SIGHUP reload is RELOADING=1 with
/// MONOTONIC_USEC, then READY=1; WATCHDOG=1 comes at half WATCHDOG_USEC;
/// SIGTERM sends STOPPING=1 and the daemon exits 0.
#[test]
fn ready_only_once_answering_reloading_watchdog_and_stopping() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let sd = Systemd::new(&b, &g);
    let mut child = sd.start(&[("WATCHDOG_USEC", "400000")]);
    let (at, _) = sd
        .notify
        .wait_line(0, "READY=1")
        .unwrap_or_else(|| panic!("no READY=1:\n{}", sd.log()));
    // Right away, before anything else can have started later.
    let app = sd.app().expect("the control API answers at READY=1");
    let upstreams: Vec<&Value> = ["blue", "green"]
        .iter()
        .flat_map(|c| app["colors"][c]["upstreams"].as_array().unwrap())
        .collect();
    assert!(
        upstreams.iter().all(|u| u["health"] != "unknown"),
        "every upstream checked at READY=1: {app}"
    );
    assert_eq!(
        sd.get(),
        Some((200, "blue".into())),
        "the front door serves"
    );
    let before_ready: Vec<String> = sd.notify.lines_since(0)[..].to_vec();
    assert!(
        !before_ready.iter().take(at).any(|l| l == "STOPPING=1"),
        "{before_ready:?}"
    );
    let log = sd.log();
    assert!(
        log.contains("listening socket from systemd")
            && log.contains("socket=http")
            && log.contains("socket=control"),
        "{log}"
    );

    // WATCHDOG=1 at half of WATCHDOG_USEC.
    let n = sd.notify.len();
    assert!(sd.notify.wait_line(n, "WATCHDOG=1").is_some());

    let n = sd.notify.len();
    signal(child.id(), "HUP");
    let (i, reloading) = sd
        .notify
        .wait_line(n, "RELOADING=1")
        .expect("RELOADING=1 on SIGHUP");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading:?}");
    assert!(sd.notify.wait_line(i + 1, "READY=1").is_some());

    let n = sd.notify.len();
    signal(child.id(), "TERM");
    assert!(
        sd.notify.wait_line(n, "STOPPING=1").is_some(),
        "STOPPING=1 on SIGTERM"
    );
    assert_eq!(wait_exit(&mut child, T), Some(0), "{}", sd.log());
}

/// Restart with the sockets held (what `systemctl restart` does with
/// bgproxy.socket), three times: SIGTERM, wait for the exit, start again on
/// the same sockets. Under load from keep-alive clients and clients that open a new
/// connection per request: no connection refused, no request failed (the
/// load never retries; a refused connect is a failure).
#[test]
fn restart_with_held_sockets_refuses_nothing() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let sd = Systemd::new(&b, &g);
    let mut child = sd.start(&[]);
    assert!(sd.notify.wait_line(0, "READY=1").is_some(), "{}", sd.log());

    let load = Load::mixed(sd.front(), "x", 3, 3);
    assert!(load.wait_each_answered_since(Instant::now(), 5, T));
    let mut restarts = Vec::new();
    for round in 0..3 {
        let n = sd.notify.len();
        let stop = Instant::now();
        signal(child.id(), "TERM");
        assert!(sd.notify.wait_line(n, "STOPPING=1").is_some());
        assert_eq!(
            wait_exit(&mut child, Duration::from_secs(30)),
            Some(0),
            "round {round}: {}",
            sd.log()
        );
        let n = sd.notify.len();
        child = sd.start(&[]);
        assert!(
            sd.notify.wait_line(n, "READY=1").is_some(),
            "round {round}: {}",
            sd.log()
        );
        restarts.push(stop.elapsed());
        assert!(
            load.wait_each_answered_since(Instant::now(), 50, T),
            "round {round}: load flows again"
        );
    }
    let report = load.finish();
    eprintln!(
        "3 restarts (SIGTERM to READY=1: {restarts:?}): {} requests, {} on new connections, 0 failed",
        report.sent(),
        report.samples.iter().filter(|s| s.client >= 3).count()
    );
    signal(child.id(), "TERM");
    assert_eq!(wait_exit(&mut child, T), Some(0));
}

/// `systemctl reload bgproxy` = the unit's ExecReload, `bgproxy upgrade
/// --pid $MAINPID`: RELOADING=1, then MAINPID= of the new process and
/// READY=1 from it; the old process exits (the first one, the test's
/// child, with 0) and never says STOPPING=1;
/// the watchdog goes on from the new process. Zero failed requests under
/// keep-alive and new-connection-per-request load, twice in a row.
#[test]
fn upgrade_as_exec_reload_hands_over_main_pid_and_loses_nothing() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let sd = Systemd::new(&b, &g);
    let mut old = sd.start(&[("WATCHDOG_USEC", "2000000")]);
    assert!(sd.notify.wait_line(0, "READY=1").is_some(), "{}", sd.log());
    let mut main_pid = old.id();

    let load = Load::mixed(sd.front(), "x", 3, 3);
    assert!(load.wait_each_answered_since(Instant::now(), 5, T));
    for round in 0..2 {
        let n = sd.notify.len();
        let started = Instant::now();
        let (code, new) = sd.exec_reload(main_pid);
        let took = started.elapsed();
        assert_eq!(code, 0, "round {round}: {}", sd.log());
        let new = new.expect("the new pid is printed");
        assert_ne!(new, main_pid);
        let (r, reloading) = sd.notify.wait_line(n, "RELOADING=1").unwrap();
        assert!(reloading.contains("MONOTONIC_USEC="), "{reloading:?}");
        let main = format!("MAINPID={new}");
        let (m, _) = sd
            .notify
            .wait_line(r, &main)
            .unwrap_or_else(|| panic!("round {round}: {main}:\n{}", sd.log()));
        assert!(
            sd.notify.wait_line(m, "READY=1").is_some(),
            "round {round}: READY=1 after {main}"
        );
        // The old process drains and exits; MAINPID was sent before that.
        assert!(
            wait_until(Duration::from_secs(30), || !alive(main_pid)),
            "round {round}: the old process exits: {}",
            sd.log()
        );
        assert!(
            !sd.notify.lines_since(n).iter().any(|l| l == "STOPPING=1"),
            "round {round}: an upgrade is no stop: {:?}",
            sd.notify.lines_since(n)
        );
        assert!(alive(new));
        // The watchdog goes on, from the new process alone now.
        let w = sd.notify.len();
        assert!(sd.notify.wait_line(w, "WATCHDOG=1").is_some());
        assert!(
            load.wait_each_answered_since(Instant::now(), 10, T),
            "round {round}: the new process serves"
        );
        eprintln!("round {round}: bgproxy upgrade took {took:?}");
        main_pid = new;
    }
    // The first process was the test's child: it exited 0 (the later ones
    // are children of `bgproxy upgrade`, gone).
    assert_eq!(wait_exit(&mut old, T), Some(0), "{}", sd.log());
    let report = load.finish();
    eprintln!(
        "2 upgrades under the unit: {} requests, {} on new connections, 0 failed",
        report.sent(),
        report.samples.iter().filter(|s| s.client >= 3).count()
    );
    assert_eq!(sd.get(), Some((200, "blue".into())));
    signal(main_pid, "TERM");
    assert!(wait_until(T, || !alive(main_pid)));
}

/// A reload (upgrade) that cannot happen changes nothing: with a broken
/// configuration file `bgproxy upgrade` exits 1 before starting anything,
/// the running process serves on as the main process, and no RELOADING=1
/// was said.
#[test]
fn a_failed_upgrade_leaves_the_running_process_serving() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let sd = Systemd::new(&b, &g);
    let mut child = sd.start(&[]);
    assert!(sd.notify.wait_line(0, "READY=1").is_some(), "{}", sd.log());
    let good = std::fs::read_to_string(&sd.config).unwrap();
    std::fs::write(&sd.config, good.replace("[[app]]", "[[app]]\nbogus = 1")).unwrap();
    let n = sd.notify.len();
    let (code, new) = sd.exec_reload(child.id());
    assert_eq!((code, new), (1, None), "{}", sd.log());
    assert!(sd.log().contains("not upgraded"), "{}", sd.log());
    assert!(alive(child.id()));
    assert_eq!(sd.get(), Some((200, "blue".into())));
    assert!(
        !sd.notify.lines_since(n).iter().any(|l| l == "RELOADING=1"),
        "{:?}",
        sd.notify.lines_since(n)
    );
    signal(child.id(), "TERM");
    assert_eq!(wait_exit(&mut child, T), Some(0));
}

/// An inherited socket bound where nothing is configured stops the start
/// with its name and address; sockets passed to another pid are ignored.
#[test]
fn an_unmatched_inherited_socket_stops_the_start_and_others_pids_are_ignored() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let sd = Systemd::new(&b, &g);
    let stray = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut child = sd.start_with(&[(&sd.front, "http"), (&stray, "stray")], &[]);
    assert_eq!(wait_exit(&mut child, T), Some(1), "{}", sd.log());
    let log = sd.log();
    assert!(
        log.contains(&format!(
            "inherited socket stray listens on {}, which is no listener of the configuration",
            stray.local_addr().unwrap()
        )),
        "{log}"
    );

    // LISTEN_PID of another process: not ours, ignored; bgproxy binds its
    // listeners itself.
    let n = sd.notify.len();
    let mut cmd = sd.command(&bin("bgproxy"));
    cmd.arg("--config")
        .arg(&sd.config)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDNAMES", "stray");
    cmd.fd_mappings(vec![FdMapping {
        parent_fd: OwnedFd::from(stray.try_clone().unwrap()),
        child_fd: 3,
    }])
    .unwrap();
    // The test's front door and control sockets listen: the daemon binds
    // its own on other ports, held by a Port until then.
    let front = Port::reserve();
    let control = Port::reserve();
    let text = std::fs::read_to_string(&sd.config)
        .unwrap()
        .replace(&sd.front().to_string(), &front.addr().to_string())
        .replace(&sd.control().to_string(), &control.addr().to_string());
    std::fs::write(&sd.config, text).unwrap();
    let mut child = cmd.spawn().unwrap();
    sd.pids.lock().unwrap().push(child.id());
    assert!(
        sd.notify.wait_line(n, "READY=1").is_some(),
        "starts, ignoring the sockets: {}",
        sd.log()
    );
    signal(child.id(), "TERM");
    assert_eq!(wait_exit(&mut child, T), Some(0));
}

/// By hand, as an operator would try it: Debian's systemd-socket-activate
/// binds the front door, passes it as fd 3 with its name and LISTEN_PID,
/// and execs bgproxy, which serves on it and says READY=1.
#[test]
fn a_start_through_systemd_socket_activate() {
    let tool = Path::new("/usr/bin/systemd-socket-activate");
    assert!(
        tool.exists(),
        "{} is missing: apt-get install systemd (.ci/run does)",
        tool.display()
    );
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let sd = Systemd::new(&b, &g);
    // systemd-socket-activate binds the front door itself, and bgproxy its
    // control API: both on ports held by a Port (SO_REUSEADDR, not
    // listening) rather than the test's listening sockets.
    let (reserved, control) = (Port::reserve(), Port::reserve());
    let text = std::fs::read_to_string(&sd.config)
        .unwrap()
        .replace(&sd.front().to_string(), &reserved.addr().to_string())
        .replace(&sd.control().to_string(), &control.addr().to_string());
    std::fs::write(&sd.config, text).unwrap();
    let mut cmd = sd.command(tool);
    cmd.arg("-l")
        .arg(reserved.addr().to_string())
        .arg("--fdname=http")
        .arg("-E")
        .arg(format!("NOTIFY_SOCKET={}", sd.notify.path.display()))
        .arg("-E")
        .arg("RUST_LOG=info")
        .arg(bin("bgproxy"))
        .arg("--config")
        .arg(&sd.config);
    let mut child = cmd.spawn().unwrap();
    sd.pids.lock().unwrap().push(child.id());
    // It execs bgproxy at the first connection, as systemd starts a
    // socket-activated service; that request waits, then is served.
    assert!(
        wait_until(T, || std::net::TcpStream::connect(reserved.addr()).is_ok()),
        "{}",
        sd.log()
    );
    let r = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
        .get(format!("http://{}/", reserved.addr()))
        .header("Host", "x")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(sd.notify.wait_line(0, "READY=1").is_some(), "{}", sd.log());
    let log = sd.log();
    assert!(
        log.contains("listening socket from systemd") && log.contains("socket=http"),
        "{log}"
    );
    signal(child.id(), "TERM");
    assert_eq!(wait_exit(&mut child, T), Some(0), "{}", sd.log());
}
