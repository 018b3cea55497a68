//! Configuration: `bgproxy.toml -> FileConfig -> validate() -> Config`.
//!
//! 1. [`file`]: the TOML schema as serde types, `deny_unknown_fields` on every
//!    table, with [`toml::Spanned`] on the values that are checked later so
//!    every error can name its line and column.
//! 2. [`validate`]: pure functions from `FileConfig` to the typed [`Config`]
//!    (`SocketAddr`, `Duration`, `NonZeroU32`), collecting *every* error, each
//!    with the key, the file, the line and the column.
//! 3. [`Config`]: what the rest of the daemon uses. Nothing downstream parses
//!    strings again.
//!
//! Beside the pipeline: [`defaults`] holds the value of every optional key
//! (the validator applies them, the docs below name them), and
//! [`RestartSettings`] is the part of a `Config` a reload cannot apply to a
//! running process, compared as a whole to say which keys need a restart.
//!
//! `bgproxy --check` runs steps 1 and 2 (plus the state file and token file
//! checks) and prints the errors.

pub mod cluster;
pub mod defaults;
mod file;
mod key_path;
pub mod preview;
mod restart;
pub mod rollout;
pub mod routes;
mod validate;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bgproxy_control::api::Color;

pub use bgproxy_control::duration::parse_duration;
pub use cluster::{ClusterConfig, ClusterTls};
pub use preview::{MirrorConfig, PreviewConfig, Secret, VerifyCheck};
pub use restart::RestartSettings;
pub use rollout::{AnalysisConfig, RolloutConfig, Sticky};
pub use routes::{RateLimitConfig, RateLimitKey, RouteConfig};
pub use validate::{from_str, pem_certificates};

/// The validated configuration of the daemon.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it was read from (for messages and reloads).
    pub path: PathBuf,
    pub proxy: ProxyConfig,
    pub control: ControlConfig,
    pub metrics: Option<MetricsConfig>,
    pub state: StateConfig,
    pub log: LogConfig,
    /// `[cluster]`: the state shared through etcd; `None`: the local file.
    pub cluster: Option<ClusterConfig>,
    pub apps: Vec<AppConfig>,
}

/// `[log]`: the daemon's logs and the access log.
#[derive(Clone, Debug, PartialEq)]
pub struct LogConfig {
    /// A tracing filter (`info`, `warn,bgproxy=debug`); `RUST_LOG` wins.
    /// Default [`defaults::LOG_LEVEL`].
    pub level: String,
    /// Default [`defaults::LOG_FORMAT`]; `--log-format` wins.
    pub format: LogFormat,
    /// One line per request at target `access`. Default
    /// [`defaults::LOG_ACCESS`].
    pub access: bool,
    /// The fraction of requests logged, 0.0 to 1.0. Default
    /// [`defaults::LOG_ACCESS_SAMPLE`].
    pub access_sample: f64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: defaults::LOG_LEVEL.into(),
            format: defaults::LOG_FORMAT,
            access: defaults::LOG_ACCESS,
            access_sample: defaults::LOG_ACCESS_SAMPLE,
        }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// For people.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format '{other}': expected 'text' or 'json'"
            )),
        }
    }
}

/// `[proxy]`: the front door.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Plain HTTP listeners.
    pub listen: Vec<SocketAddr>,
    /// Worker threads of the proxy service. Default [`defaults::threads`]
    /// (one per CPU).
    pub threads: usize,
    /// pingora's work-stealing runtime (true) or one single-threaded
    /// runtime per worker thread (false). Default
    /// [`defaults::WORK_STEALING`].
    pub work_stealing: bool,
    pub tls: Option<TlsConfig>,
    /// On SIGTERM (or the old process of an upgrade): the longest the
    /// requests in flight may take to finish once accepting has stopped. The
    /// process exits as soon as they are done. Default
    /// [`defaults::GRACE_PERIOD`].
    pub grace_period: Duration,
    /// After the grace period: how long to wait for worker threads to stop.
    /// Default [`defaults::SHUTDOWN_TIMEOUT`].
    pub shutdown_timeout: Duration,
    /// Largest request header block (request line and headers); bigger gets
    /// 431. Default [`defaults::MAX_HEADER_SIZE`].
    pub max_header_size: usize,
    /// Most request headers; more gets 431. Default [`defaults::MAX_HEADERS`].
    pub max_headers: usize,
    /// The read buffer of each client connection (plain HTTP listeners).
    /// Default [`defaults::READ_BUFFER`], unbuffered: reads go straight into
    /// the request's own buffer (pingora's default is a 64 KiB buffer per
    /// connection; 0 costs no throughput and saves 15 KB per idle connection
    /// against 16 KiB, benches/README.md).
    pub read_buffer: usize,
    /// How long a client may take to send the rest of a request body
    /// between reads; slower gets 408. Default [`defaults::CLIENT_TIMEOUT`].
    pub client_timeout: Duration,
    /// How long a keep-alive client connection (HTTP/1.1 or HTTP/2) may sit
    /// idle between two requests before it is closed (HTTP/1.1: whole
    /// seconds). Default [`defaults::CLIENT_IDLE_TIMEOUT`].
    pub client_idle_timeout: Duration,
    /// How long a client may take to send a whole request head (request
    /// line and headers), counted from its first byte; slower gets 408 and
    /// the connection is closed. Default [`defaults::REQUEST_HEADER_TIMEOUT`].
    pub request_header_timeout: Duration,
    /// Client connections open at once; more are closed as they come.
    /// Default [`defaults::MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// Client connections open at once from one address; more are closed
    /// as they come. Default [`defaults::MAX_CONNECTIONS_PER_IP`].
    pub max_connections_per_ip: usize,
}

/// `[proxy.tls]`: the HTTPS listeners and their certificates.
#[derive(Clone, Debug, PartialEq)]
pub struct TlsConfig {
    pub listen: Vec<SocketAddr>,
    /// The default certificate (chain and key, PEM): for clients without SNI
    /// or with a name neither a `certs` entry nor ACME has. Optional only
    /// with `acme` (without one, such handshakes fail).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// More certificates, chosen by SNI.
    pub certs: Vec<SniCert>,
    /// `[proxy.tls.acme]`: certificates bgproxy obtains and renews itself.
    pub acme: Option<AcmeConfig>,
}

/// `[proxy.tls.acme]`: an ACME (RFC 8555) CA that issues the certificates
/// of `hosts`; see `controlplane/acme.rs`.
#[derive(Clone, Debug, PartialEq)]
pub struct AcmeConfig {
    /// The CA's directory URL (https; http only on loopback).
    pub directory: String,
    /// The account's contact; `None`: no contact.
    pub email: Option<String>,
    /// The names to order, one certificate each: the `hosts` key, or every
    /// host of every app (wildcards left out). Names a `[[proxy.tls.certs]]`
    /// entry serves are served from that file, not ordered.
    pub hosts: Vec<String>,
    /// How the CA validates a name. Default [`defaults::ACME_CHALLENGE`].
    pub challenge: AcmeChallenge,
    /// An extra root the CA's own HTTPS is trusted with (besides the
    /// public roots), PEM.
    pub ca_file: Option<PathBuf>,
    /// Renew this long before a certificate expires. Default
    /// [`defaults::ACME_RENEW_BEFORE`].
    pub renew_before: Duration,
}

/// The ACME challenge bgproxy answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// `http-01`: on the plain listeners, `/.well-known/acme-challenge/`.
    Http01,
    /// `tls-alpn-01`: on the TLS listeners, ALPN `acme-tls/1`.
    TlsAlpn01,
}

impl AcmeChallenge {
    /// As in the config: `http-01` or `tls-alpn-01`.
    pub fn as_str(self) -> &'static str {
        match self {
            AcmeChallenge::Http01 => "http-01",
            AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

/// One `[[proxy.tls.certs]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct SniCert {
    /// Lowercase names; `*.example.net` matches one label.
    pub hosts: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[control]`: the control API.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// Default [`defaults::CONTROL_LISTEN`] (loopback only).
    pub listen: SocketAddr,
    /// Bearer token for mutating calls; without it they are accepted from
    /// loopback only.
    pub token_file: Option<PathBuf>,
    /// Reload the config when its file changes. Default
    /// [`defaults::WATCH_CONFIG`].
    pub watch_config: bool,
    /// The nice value of the control API's thread (-20..=19), so a switch
    /// does not queue behind a saturated data plane; `None` (the default)
    /// leaves the priority alone. See [`crate::controlplane::priority`].
    pub nice: Option<i32>,
    /// A second token that may read, deploy to the standby and create
    /// pending requests, never move traffic or decide a request.
    pub requester_token_file: Option<PathBuf>,
    /// How long a pending request may wait for its approval. Default
    /// [`defaults::REQUEST_TTL`].
    pub request_ttl: Duration,
    /// Answer reads (`GET`, the status page's data and events) from
    /// non-loopback clients without a token. Default false: with a token
    /// configured, they need one of either role.
    pub public_read: bool,
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}

/// `[state]`: where the live colors and history are kept.
#[derive(Clone, Debug)]
pub struct StateConfig {
    /// Default [`defaults::STATE_PATH`]; relative paths are relative to the
    /// config file's directory.
    pub path: PathBuf,
}

/// One `[[app]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct AppConfig {
    pub name: String,
    /// Lowercase host names; empty for the default app.
    pub hosts: Vec<String>,
    /// The live color on first start (no state yet). Default
    /// [`defaults::INITIAL_LIVE`].
    pub initial_live: Color,
    /// Answer plain-HTTP requests with a 308 to HTTPS (needs `[proxy.tls]`).
    /// Default [`defaults::REDIRECT_HTTPS`].
    pub redirect_https: bool,
    /// Largest request body; bigger gets 413. Default [`defaults::MAX_BODY`].
    pub max_body: u64,
    /// Upstream TCP connect timeout; 504 when passed. Default
    /// [`defaults::CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// Upstream read timeout (time between reads of the response); 504 when
    /// passed before the response started. Default
    /// [`defaults::READ_TIMEOUT`].
    pub read_timeout: Duration,
    /// Speak HTTP/2 (cleartext, prior knowledge) to the upstreams, and to
    /// their health checks. WebSocket upgrades still use HTTP/1.1. Default
    /// [`defaults::H2`].
    pub h2: bool,
    /// How long upgraded (WebSocket) connections to a color may stay after
    /// it stopped being live; then they are closed. `None`: never. Default
    /// [`defaults::DRAIN_TIMEOUT`].
    pub drain_timeout: Option<Duration>,
    /// How long an upgraded (WebSocket) connection may be idle in either
    /// direction; it replaces `read_timeout` and `client_timeout` once a
    /// request asks to upgrade. `None`: no limit. Default
    /// [`defaults::TUNNEL_TIMEOUT`].
    pub tunnel_timeout: Option<Duration>,
    pub health: HealthConfig,
    /// Upstreams per color, indexed by [`Color::index`].
    pub pools: [Vec<SocketAddr>; 2],
    pub deploy: DeployConfig,
    pub rollout: RolloutConfig,
    pub analysis: AnalysisConfig,
    pub preview: PreviewConfig,
    pub mirror: MirrorConfig,
    /// `[[app.verify]]`: checks of the standby before a switch.
    pub verify: Vec<VerifyCheck>,
    /// `[[app.routes]]`: more services of the app, by path prefix, in
    /// configured order. Empty: every request goes to `pools`.
    pub routes: Vec<RouteConfig>,
    /// `[app.rate_limit]`; `None`: no limit.
    pub rate_limit: Option<RateLimitConfig>,
}

impl AppConfig {
    /// The upstreams of one color.
    pub fn upstreams(&self, color: Color) -> &[SocketAddr] {
        &self.pools[color.index()]
    }
}

/// `[app.health]`: the active health check of every upstream of the app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// Path of the GET request. Default [`defaults::HEALTH_PATH`].
    pub path: String,
    /// Time between two checks of one upstream. Default
    /// [`defaults::HEALTH_INTERVAL`].
    pub interval: Duration,
    /// A check that takes longer fails. Default [`defaults::HEALTH_TIMEOUT`].
    pub timeout: Duration,
    /// Consecutive passes to become `up`. Default [`defaults::HEALTH_RISE`].
    pub rise: NonZeroU32,
    /// Consecutive failures to become `down`. Default
    /// [`defaults::HEALTH_FALL`].
    pub fall: NonZeroU32,
    /// The status a passing check answers. Default
    /// [`defaults::HEALTH_EXPECT_STATUS`].
    pub expect_status: u16,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            path: defaults::HEALTH_PATH.into(),
            interval: defaults::HEALTH_INTERVAL,
            timeout: defaults::HEALTH_TIMEOUT,
            rise: defaults::HEALTH_RISE,
            fall: defaults::HEALTH_FALL,
            expect_status: defaults::HEALTH_EXPECT_STATUS,
        }
    }
}

/// `[app.deploy]`: the steps `bgctl deploy` runs against the standby color.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployConfig {
    pub steps: Vec<DeployStep>,
    /// How long a deploy waits for the standby to become healthy. Default
    /// [`defaults::DEPLOY_HEALTH_TIMEOUT`].
    pub health_timeout: Duration,
}

impl Default for DeployConfig {
    /// No steps, and the default health timeout.
    fn default() -> Self {
        DeployConfig {
            steps: Vec::new(),
            health_timeout: defaults::DEPLOY_HEALTH_TIMEOUT,
        }
    }
}

/// One `[[app.deploy.steps]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployStep {
    pub name: String,
    /// A shell command line with `{app}`, `{color}`, `{host}`, `{port}`.
    pub run: String,
    /// The step fails when it runs longer. Default [`defaults::STEP_TIMEOUT`].
    pub timeout: Duration,
    /// Runs only with `bgctl deploy --migrate`. Default
    /// [`defaults::STEP_MIGRATE`].
    pub migrate: bool,
    pub env: Vec<(String, String)>,
}

/// Errors of loading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// One or more problems, each naming file, line, column and key.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// One problem in a config file, at a place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// The dotted key, e.g. `app[1].blue.upstreams[0]`; empty for syntax errors.
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        from_str(&text, path)
    }

    /// Every address the daemon listens on, with its config key.
    pub fn listeners(&self) -> Vec<(SocketAddr, &'static str)> {
        let mut all: Vec<_> = self
            .proxy
            .listen
            .iter()
            .map(|a| (*a, "proxy.listen"))
            .collect();
        if let Some(t) = &self.proxy.tls {
            all.extend(t.listen.iter().map(|a| (*a, "proxy.tls.listen")));
        }
        all.push((self.control.listen, "control.listen"));
        if let Some(m) = &self.metrics {
            all.push((m.listen, "metrics.listen"));
        }
        all
    }

    /// The app named `name`.
    pub fn app(&self, name: &str) -> Option<&AppConfig> {
        self.apps.iter().find(|a| a.name == name)
    }

    /// Directory of the state file: also holds the pid file and upgrade socket.
    pub fn state_dir(&self) -> PathBuf {
        match self.state.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }
}
