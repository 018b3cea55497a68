//! The daemon under test: [`Daemon`] writes a config ([`AppSpec`],
//! [`Options`]) into a temp dir, runs the real `bgproxy`, waits for its
//! control API and front door, talks to it (control API, front door,
//! metrics, the real `bgctl`) and kills it on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::backends::Backend;
use crate::ports::Port;
use crate::wait_until;

/// The environment variable naming another directory to take the binaries
/// from (e.g. `BGPROXY_BIN_DIR=/elsewhere/target/debug`, to run the tests
/// against a build with a deliberate bug).
pub const BIN_DIR_VAR: &str = "BGPROXY_BIN_DIR";

/// Path of a workspace binary: in `$BGPROXY_BIN_DIR` if set, else next to
/// the test executable (`target/<profile>/`, built by
/// `cargo test --workspace`). Panics if it is not there.
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os(BIN_DIR_VAR) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("test executable path");
            // target/<profile>/deps/<test> -> target/<profile>/<name>
            exe.parent()
                .and_then(Path::parent)
                .expect("target dir")
                .to_path_buf()
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: run the tests with `cargo test --workspace` so the binaries are built \
         (or point {BIN_DIR_VAR} at a directory that has them)",
        path.display()
    );
    path
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

/// `bgproxy --check --config path`: whether it passed, and what it wrote
/// to stderr.
pub fn check_file(path: &Path) -> (bool, String) {
    let out = std::process::Command::new(bin("bgproxy"))
        .arg("--check")
        .arg("--config")
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `bgproxy --check` of `toml` (written to a temp file): whether it passed,
/// and its stderr with the file's path written `F`.
pub fn check_text(toml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bgproxy.toml");
    std::fs::write(&path, toml).unwrap();
    let (ok, err) = check_file(&path);
    (ok, err.replace(&path.display().to_string(), "F"))
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
    /// Write the config but do not start the process: the test calls
    /// [`Daemon::spawn`] (once a service it starts knows the daemon's ports).
    pub deferred: bool,
}

/// A running `bgproxy` with its own temp dir, ports and config.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub proxy: SocketAddr,
    pub control: SocketAddr,
    pub metrics: SocketAddr,
    pub token: Option<String>,
    /// The reservations of `proxy`, `control` and `metrics`, held until the
    /// daemon is dropped (after it is killed): see [`crate::ports`].
    _ports: [Port; 3],
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
        let ports = [Port::reserve(), Port::reserve(), Port::reserve()];
        let [proxy, control, metrics] = [0, 1, 2].map(|i| ports[i].addr());
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
            _ports: ports,
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
        if !d.opts.deferred {
            d.spawn();
        }
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
