//! End-to-end test harness: real `bgproxy` and `bgctl` binaries, real HTTP
//! backends, everything on 127.0.0.1 with ports the OS picks.
//!
//! - [`Backend`]: a small threaded HTTP/1.1 server (keep-alive) that answers
//!   `/health` with a status the test controls (or hangs), and any other path
//!   with a JSON echo of what it received plus its color.
//! - [`Daemon`]: writes a config into a temp dir, runs `bgproxy`, waits for
//!   its control API, kills it on drop.
//! - [`wait_until`]: readiness by polling with a deadline, never a bare sleep.
//!
//! The binaries are found next to the test executable (`target/<profile>/`);
//! `cargo test --workspace` builds them.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Path of a workspace binary, built by `cargo test --workspace`.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: run the tests with `cargo test --workspace` so the binaries are built",
        path.display()
    );
    path
}

/// Whether this process may lower a thread's nice value to -10 (what the
/// daemon started from it inherits): `CAP_SYS_NICE`, or an `RLIMIT_NICE`
/// soft limit of at least 20 - (-10) = 30.
pub fn may_lower_nice_to_minus_10() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    const CAP_SYS_NICE: u32 = 23;
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let rlimit_nice = limits
        .lines()
        .find(|l| l.starts_with("Max nice priority"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|soft| soft.parse::<u64>().ok())
        .unwrap_or(0);
    cap_eff & (1 << CAP_SYS_NICE) != 0 || rlimit_nice >= 30
}

/// The nice values of the threads of process `pid` named `name`, one per
/// thread; panics when no thread has that name.
pub fn thread_nices(pid: u32, name: &str) -> Vec<i32> {
    let mut all = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("stat")),
        ) else {
            continue; // the thread ended meanwhile
        };
        // Fields after the parenthesised name: state is field 3, nice field 19.
        let after = stat.rsplit_once(')').unwrap().1;
        let nice: i32 = after.split_whitespace().nth(16).unwrap().parse().unwrap();
        all.push((comm.trim().to_string(), nice));
    }
    let found: Vec<i32> = all
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| *v)
        .collect();
    assert!(!found.is_empty(), "no thread named {name:?}: {all:?}");
    found
}

/// Polls `f` every 20ms until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A port that was free a moment ago (bind 127.0.0.1:0, then release).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct BackendState {
    color: String,
    health_status: AtomicU16,
    health_hangs: AtomicBool,
    stopped: AtomicBool,
    hits: AtomicU64,
    conns: Mutex<Vec<TcpStream>>,
}

/// A real HTTP backend on 127.0.0.1.
pub struct Backend {
    pub addr: SocketAddr,
    state: Arc<BackendState>,
}

impl Backend {
    /// Starts a backend of `color` (the name it answers with).
    pub fn start(color: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(BackendState {
            color: color.to_string(),
            health_status: AtomicU16::new(200),
            health_hangs: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            hits: AtomicU64::new(0),
            conns: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        thread::spawn(move || loop {
            if st.stopped.load(Ordering::SeqCst) {
                return; // drops the listener: new connections are refused
            }
            match listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    if let Ok(c) = s.try_clone() {
                        st.conns.lock().unwrap().push(c);
                    }
                    let st = st.clone();
                    thread::spawn(move || serve(s, st));
                }
                Err(_) => thread::sleep(Duration::from_millis(2)),
            }
        });
        Backend { addr, state }
    }

    /// Makes `/health` answer `status`.
    pub fn set_health(&self, status: u16) {
        self.state.health_status.store(status, Ordering::SeqCst);
    }

    /// Makes `/health` never answer (the check stays in flight).
    pub fn hang_health(&self) {
        self.state.health_hangs.store(true, Ordering::SeqCst);
    }

    /// Requests served other than `/health`.
    pub fn hits(&self) -> u64 {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Closes the port and every open connection: the backend is gone.
    pub fn stop(&self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        for c in self.state.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        wait_until(Duration::from_secs(2), || {
            TcpStream::connect(self.addr).is_err()
        });
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(stream: TcpStream, st: Arc<BackendState>) {
    let mut out = match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        if headers
            .get("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
        {
            return websocket_echo(reader, &headers, &st);
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if let Some(ms) = target
            .strip_prefix("/slow/")
            .and_then(|ms| ms.parse::<u64>().ok())
        {
            thread::sleep(Duration::from_millis(ms));
        }
        let (status, payload) = if target == "/health" {
            if st.health_hangs.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_secs(3600));
            }
            (
                st.health_status.load(Ordering::SeqCst),
                b"health\n".to_vec(),
            )
        } else {
            st.hits.fetch_add(1, Ordering::SeqCst);
            let echo = json!({
                "color": st.color,
                "method": method,
                "target": target,
                "headers": headers,
                "body": String::from_utf8_lossy(&body),
            });
            (200, serde_json::to_vec(&echo).unwrap())
        };
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: application/json\r\nX-Color: {}\r\n\r\n",
            payload.len(),
            st.color
        );
        if out
            .write_all(head.as_bytes())
            .and_then(|_| out.write_all(&payload))
            .is_err()
        {
            return;
        }
        if headers
            .get("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"))
        {
            return;
        }
    }
}

/// Completes a WebSocket handshake and echoes every text message back as
/// `"<color>: <text>"` until the peer closes.
fn websocket_echo(
    reader: BufReader<TcpStream>,
    headers: &BTreeMap<String, String>,
    st: &BackendState,
) {
    let key = headers
        .get("sec-websocket-key")
        .cloned()
        .unwrap_or_default();
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut stream = reader.into_inner();
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nX-Color: {}\r\n\r\n",
        st.color
    );
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    st.hits.fetch_add(1, Ordering::SeqCst);
    let mut ws =
        tungstenite::WebSocket::from_raw_socket(stream, tungstenite::protocol::Role::Server, None);
    while let Ok(msg) = ws.read() {
        let reply = match msg {
            tungstenite::Message::Text(t) => format!("{}: {}", st.color, t.as_str()),
            tungstenite::Message::Close(_) => {
                // tungstenite queued the close reply: send it, then end.
                let _ = ws.flush();
                return;
            }
            _ => continue,
        };
        if ws.send(tungstenite::Message::text(reply)).is_err() {
            return;
        }
    }
}

/// One `[[app]]` of a test config.
#[derive(Clone, Debug)]
pub struct AppSpec {
    pub name: String,
    pub hosts: Vec<String>,
    pub blue: Vec<SocketAddr>,
    pub green: Vec<SocketAddr>,
    /// Lines of `[app.health]`; defaults to a fast check.
    pub health: String,
    /// More TOML of this app after its pools (e.g. `[[app.deploy.steps]]`).
    pub extra: String,
    /// Keys of the `[[app]]` table itself (e.g. `max_body = "1KiB"`).
    pub keys: String,
}

impl AppSpec {
    pub fn new(name: &str, blue: &[&Backend], green: &[&Backend]) -> AppSpec {
        AppSpec {
            name: name.into(),
            hosts: Vec::new(),
            blue: blue.iter().map(|b| b.addr).collect(),
            green: green.iter().map(|b| b.addr).collect(),
            health: "interval = \"100ms\"\ntimeout = \"1s\"\nrise = 1\nfall = 2\n".into(),
            extra: String::new(),
            keys: String::new(),
        }
    }

    /// Adds keys to the `[[app]]` table.
    pub fn keys(mut self, toml: &str) -> Self {
        self.keys.push_str(toml);
        self.keys.push('\n');
        self
    }

    /// Appends TOML to this app (after its pools).
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self
    }

    pub fn hosts(mut self, hosts: &[&str]) -> Self {
        self.hosts = hosts.iter().map(|h| h.to_string()).collect();
        self
    }

    pub fn health(mut self, lines: &str) -> Self {
        self.health = lines.into();
        self
    }
}

/// Extra settings of a test daemon.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// A control token (written to a token file).
    pub token: Option<String>,
    /// Extra command-line arguments of bgproxy.
    pub args: Vec<String>,
    /// Extra top-level TOML tables (e.g. a `[log]` table).
    pub toml: String,
    /// Extra keys of the `[proxy]` table.
    pub proxy: String,
    /// Extra keys of the `[control]` table.
    pub control: String,
}

/// A running `bgproxy` with its own temp dir, ports and config.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub proxy: SocketAddr,
    pub control: SocketAddr,
    pub metrics: SocketAddr,
    pub token: Option<String>,
    args: Vec<String>,
    opts: Options,
    child: Option<Child>,
    http: reqwest::blocking::Client,
}

impl Daemon {
    /// Starts bgproxy with `apps`, no token (loopback-only control).
    pub fn start(apps: &[AppSpec]) -> Daemon {
        Self::start_with(apps, None)
    }

    /// Starts bgproxy with `apps` and, if given, a control token.
    pub fn start_with(apps: &[AppSpec], token: Option<&str>) -> Daemon {
        Self::start_opts(
            apps,
            Options {
                token: token.map(String::from),
                ..Options::default()
            },
        )
    }

    /// Starts bgproxy with `apps` and `opts`.
    pub fn start_opts(apps: &[AppSpec], opts: Options) -> Daemon {
        let token = opts.token.as_deref();
        let dir = tempfile::tempdir().unwrap();
        let proxy = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let control = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        if let Some(t) = token {
            std::fs::write(dir.path().join("token"), format!("{t}\n")).unwrap();
        }
        let config = dir.path().join("bgproxy.toml");
        let mut d = Daemon {
            dir,
            config,
            proxy,
            control,
            metrics,
            token: token.map(String::from),
            args: opts.args.clone(),
            opts,
            child: None,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        };
        std::fs::write(&d.config, d.render(apps)).unwrap();
        d.spawn();
        d
    }

    /// The config file text for `apps` on this daemon's ports and options.
    pub fn render(&self, apps: &[AppSpec]) -> String {
        let (proxy, control, metrics) = (self.proxy, self.control, self.metrics);
        let mut toml = format!(
            "[proxy]\nlisten = [\"{proxy}\"]\nthreads = 2\ngrace_period = \"5s\"\nshutdown_timeout = \"1s\"\n{}\n\
             [metrics]\nlisten = \"{metrics}\"\n\n{}\n[control]\nlisten = \"{control}\"\n",
            self.opts.proxy,
            self.opts.toml
        );
        if self.opts.token.is_some() {
            toml.push_str("token_file = \"token\"\n");
        }
        toml.push_str(&self.opts.control);
        toml.push_str("\n[state]\npath = \"state/state.json\"\n");
        let list = |v: &[String]| v.join(", ");
        let quoted = |v: &[SocketAddr]| v.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>();
        for a in apps {
            toml.push_str(&format!("\n[[app]]\nname = \"{}\"\n{}", a.name, a.keys));
            if !a.hosts.is_empty() {
                let hosts: Vec<String> = a.hosts.iter().map(|h| format!("\"{h}\"")).collect();
                toml.push_str(&format!("hosts = [{}]\n", list(&hosts)));
            }
            toml.push_str(&format!(
                "[app.health]\n{}\n[app.blue]\nupstreams = [{}]\n[app.green]\nupstreams = [{}]\n",
                a.health,
                list(&quoted(&a.blue)),
                list(&quoted(&a.green))
            ));
            toml.push_str(&a.extra);
        }
        toml
    }

    /// Rewrites the config file (atomically, by rename) with `apps`.
    pub fn rewrite_config(&self, text: &str) {
        let tmp = self.dir.path().join("bgproxy.toml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }

    /// The state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bgproxy.log")).unwrap_or_default()
    }

    /// The log once it holds every one of `needles` (logs reach the file
    /// through bgproxy's writer thread, a moment after the event), or after
    /// 10 s without them: the caller asserts on it.
    pub fn log_with(&self, needles: &[&str]) -> String {
        wait_until(Duration::from_secs(10), || {
            let log = self.log();
            needles.iter().all(|n| log.contains(n))
        });
        self.log()
    }

    /// Starts the process and waits until the control API answers.
    pub fn spawn(&mut self) {
        self.child = Some(self.spawn_another(&[]));
        // The control API and the front door are separate services that
        // start independently: wait for both.
        let up = wait_until(Duration::from_secs(20), || {
            self.http
                .get(self.url("/v1/status"))
                .send()
                .is_ok_and(|r| r.status() == 200)
                && std::net::TcpStream::connect(self.proxy).is_ok()
        });
        assert!(up, "bgproxy did not come up; log:\n{}", self.log());
    }

    /// The process id of the running daemon.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends `signal` (e.g. `SIGTERM`, `SIGHUP`) to the daemon with kill(1).
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits up to `timeout` for the daemon to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let mut code = None;
        wait_until(timeout, || match child.try_wait() {
            Ok(Some(status)) => {
                code = Some(status.code().unwrap_or(-1));
                true
            }
            _ => false,
        });
        if code.is_some() {
            self.child = None;
        }
        code
    }

    /// Starts another bgproxy process on this daemon's config with `args`
    /// (e.g. `--upgrade`), logging to the same file; returns it unsupervised.
    pub fn spawn_another(&self, args: &[&str]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("bgproxy.log"))
            .unwrap();
        Command::new(bin("bgproxy"))
            .arg("--config")
            .arg(&self.config)
            .args(&self.args)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap()
    }

    /// Replaces the supervised process (after an upgrade).
    pub fn adopt(&mut self, child: Child) {
        self.kill9();
        self.child = Some(child);
    }

    /// `kill -9`, then start again on the same config and state.
    pub fn kill9_and_restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.control, path)
    }

    /// The text of `GET /metrics`.
    pub fn scrape(&self) -> String {
        self.http
            .get(format!("http://{}/metrics", self.metrics))
            .send()
            .and_then(|r| r.text())
            .expect("metrics endpoint reachable")
    }

    /// The value of one sample line (`name{labels}`) of `/metrics`, or None.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let text = self.scrape();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .and_then(|v| v.trim().parse().ok())
    }

    /// A control API call; returns status and JSON body.
    pub fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method.parse().unwrap(), self.url(path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().expect("control API reachable");
        let status = resp.status().as_u16();
        let text = resp.text().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// `POST /v1/apps/{app}/switch`.
    pub fn switch(&self, app: &str, to: &str) -> (u16, Value) {
        self.api(
            "POST",
            &format!("/v1/apps/{app}/switch"),
            Some(json!({"to": to, "actor": "e2e"})),
        )
    }

    /// `GET /v1/apps/{app}`.
    pub fn app(&self, app: &str) -> Value {
        let (s, v) = self.api("GET", &format!("/v1/apps/{app}"), None);
        assert_eq!(s, 200, "{v}");
        v
    }

    /// Waits until every upstream of `color` of `app` is observed `health`.
    pub fn wait_health(&self, app: &str, color: &str, health: &str, timeout: Duration) -> bool {
        wait_until(timeout, || {
            let a = self.app(app);
            a["colors"][color]["upstreams"]
                .as_array()
                .is_some_and(|u| u.iter().all(|u| u["health"] == health))
        })
    }

    /// A GET through the front door with `host`; returns status and body.
    pub fn get(&self, host: &str, path: &str) -> (u16, String) {
        let resp = self
            .http
            .get(format!("http://{}{}", self.proxy, path))
            .header("Host", host)
            .send()
            .expect("front door reachable");
        (resp.status().as_u16(), resp.text().unwrap_or_default())
    }

    /// Runs the real `bgctl` against this daemon, without a TTY: returns exit
    /// code, stdout and stderr. The token, if any, comes from `BGCTL_TOKEN`.
    pub fn bgctl(&self, args: &[&str]) -> (i32, String, String) {
        let mut cmd = Command::new(bin("bgctl"));
        cmd.args(args)
            .env("BGCTL_ADDR", format!("http://{}", self.control))
            .env_remove("BGCTL_TOKEN")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        if let Some(t) = &self.token {
            cmd.env("BGCTL_TOKEN", t);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The color that answered a GET of `/` for `host`.
    pub fn color_of(&self, host: &str) -> String {
        let (s, body) = self.get(host, "/");
        assert_eq!(s, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()["color"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Keep-alive load: `clients` threads, each with its own connection, send
/// GETs with a Host header until [`Load::finish`] (bounded in count and
/// time). Failures and the colors that answered (`X-Color`) are collected.
pub struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    colors: Arc<Mutex<std::collections::BTreeSet<String>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    /// Starts `clients` keep-alive clients against `d`'s front door.
    pub fn start(d: &Daemon, host: &str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let colors = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
        let url = format!("http://{}/load", d.proxy);
        let threads = (0..clients)
            .map(|_| {
                let (stop, sent, failures, colors) =
                    (stop.clone(), sent.clone(), failures.clone(), colors.clone());
                let (url, host) = (url.clone(), host.to_string());
                thread::spawn(move || {
                    let c = reqwest::blocking::Client::new();
                    let started = Instant::now();
                    for _ in 0..50_000 {
                        if stop.load(Ordering::Relaxed)
                            || started.elapsed() > Duration::from_secs(60)
                        {
                            break;
                        }
                        sent.fetch_add(1, Ordering::Relaxed);
                        match c.get(&url).header("Host", &host).send() {
                            Ok(r) if r.status() == 200 => {
                                if let Some(color) =
                                    r.headers().get("x-color").and_then(|v| v.to_str().ok())
                                {
                                    colors.lock().unwrap().insert(color.to_string());
                                }
                            }
                            Ok(r) => failures
                                .lock()
                                .unwrap()
                                .push(format!("status {}", r.status())),
                            Err(e) => failures.lock().unwrap().push(format!("{e:?}")),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            sent,
            failures,
            colors,
            threads,
        }
    }

    /// Stops the clients; asserts nothing failed and enough was sent.
    /// Returns the number of requests and the colors that answered.
    pub fn finish(self) -> (u64, std::collections::BTreeSet<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let failures = self.failures.lock().unwrap();
        let sent = self.sent.load(Ordering::Relaxed);
        assert!(
            failures.is_empty(),
            "{} of {sent} requests failed: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        assert!(sent > 50, "too little load to mean anything: {sent}");
        let colors = self.colors.lock().unwrap().clone();
        (sent, colors)
    }
}

/// A backend that speaks only cleartext HTTP/2 (h2c, prior knowledge), for
/// apps with `h2 = true`. Answers `/health` with 200 and anything else with
/// a JSON echo that includes the HTTP version it was asked with.
pub struct H2Backend {
    pub addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl H2Backend {
    pub fn start(color: &str) -> H2Backend {
        use http_body_util::{BodyExt, Full};
        use hyper::service::service_fn;

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let color: Arc<str> = color.into();
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let color = color.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let color = color.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await?.to_bytes();
                            let payload = if parts.uri.path() == "/health" {
                                b"health\n".to_vec()
                            } else {
                                serde_json::to_vec(&json!({
                                    "color": &*color,
                                    "version": format!("{:?}", parts.version),
                                    "method": parts.method.as_str(),
                                    "target": parts.uri.path_and_query().map_or("/", |p| p.as_str()),
                                    "body": String::from_utf8_lossy(&body),
                                }))
                                .unwrap()
                            };
                            Ok::<_, hyper::Error>(hyper::Response::new(Full::new(
                                bytes::Bytes::from(payload),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                });
            }
        });
        H2Backend {
            addr,
            runtime: Some(runtime),
        }
    }
}

impl Drop for H2Backend {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
