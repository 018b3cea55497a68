//! The default of every optional key of `bgproxy.toml`, in one place.
//!
//! The validator (`validate.rs`) applies these when a key is absent, the doc
//! comments of [`Config`](super::Config) and its parts name them instead of
//! repeating the numbers, and code that needs a value before a `Config`
//! exists (a `DataPlane` built in a test, say) uses them too. Changing a value
//! here changes the daemon's behaviour: update `conf/bgproxy.toml` and the
//! README in the same commit.
//!
//! Keys without a default (`proxy.listen`, `app.name`, the upstreams) are
//! required; keys whose absence means "off" (`proxy.tls`, `[metrics]`,
//! `control.token_file`, `control.nice`) have no constant here.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::num::NonZeroU32;
use std::time::Duration;

use bgproxy_control::api::Color;

use super::LogFormat;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// `NonZeroU32` from a literal, checked when the constant is evaluated (at
/// compile time), so a zero here fails the build rather than the daemon.
const fn non_zero(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(n) => n,
        None => panic!("a NonZeroU32 default must not be zero"),
    }
}

// [proxy]

/// `proxy.threads`: one worker thread per CPU the process may use, or 1 when
/// that cannot be read. Not a constant: it depends on the machine.
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
/// `proxy.work_stealing`: one single-threaded runtime per worker thread
/// (measured faster, benches/README.md).
pub const WORK_STEALING: bool = false;
/// `proxy.grace_period`.
pub const GRACE_PERIOD: Duration = Duration::from_secs(30);
/// `proxy.shutdown_timeout`.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// `proxy.max_header_size`, in bytes (32 KiB).
pub const MAX_HEADER_SIZE: usize = 32 * KIB;
/// `proxy.max_headers`.
pub const MAX_HEADERS: usize = 100;
/// `proxy.read_buffer`, in bytes: 0 is unbuffered, reads go straight into
/// the request's own buffer.
pub const READ_BUFFER: usize = 0;
/// `proxy.client_timeout`.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// `proxy.client_idle_timeout`.
pub const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// `proxy.request_header_timeout`: like HAProxy's `timeout http-request`.
pub const REQUEST_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// `proxy.max_connections`: client connections open at once.
pub const MAX_CONNECTIONS: usize = 20_000;
/// `proxy.max_connections_per_ip`: client connections open at once from
/// one address.
pub const MAX_CONNECTIONS_PER_IP: usize = 1_000;

// [proxy.tls.acme]

/// `proxy.tls.acme.challenge`: answered on the plain listeners.
pub const ACME_CHALLENGE: super::AcmeChallenge = super::AcmeChallenge::Http01;
/// `proxy.tls.acme.renew_before`: a third of a 90-day certificate's life.
pub const ACME_RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);

// [control]

/// `control.listen`: loopback only.
pub const CONTROL_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 9900));
/// `control.watch_config`.
pub const WATCH_CONFIG: bool = true;

// [state]

/// `state.path`.
pub const STATE_PATH: &str = "/var/lib/bgproxy/state.json";

// [log]

/// `log.level`.
pub const LOG_LEVEL: &str = "info";
/// `log.format`.
pub const LOG_FORMAT: LogFormat = LogFormat::Text;
/// `log.access`.
pub const LOG_ACCESS: bool = true;
/// `log.access_sample`: every request.
pub const LOG_ACCESS_SAMPLE: f64 = 1.0;

// [[app]]

/// `app.initial_live`.
pub const INITIAL_LIVE: Color = Color::Blue;
/// `app.redirect_https`.
pub const REDIRECT_HTTPS: bool = false;
/// `app.max_body`, in bytes (100 MiB).
pub const MAX_BODY: u64 = 100 * MIB as u64;
/// `app.connect_timeout`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// `app.read_timeout`.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// `app.h2`: HTTP/1.1 to the upstreams.
pub const H2: bool = false;
/// `app.drain_timeout` (`"0"` in the file means never).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// `app.tunnel_timeout` (`"0"` in the file means no limit).
pub const TUNNEL_TIMEOUT: Duration = Duration::from_secs(3600);

// [app.health]

/// `app.health.path`.
pub const HEALTH_PATH: &str = "/health";
/// `app.health.interval`.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// `app.health.timeout`.
pub const HEALTH_TIMEOUT: Duration = Duration::from_millis(500);
/// `app.health.rise`.
pub const HEALTH_RISE: NonZeroU32 = non_zero(2);
/// `app.health.fall`.
pub const HEALTH_FALL: NonZeroU32 = non_zero(3);
/// `app.health.expect_status`.
pub const HEALTH_EXPECT_STATUS: u16 = 200;

// [app.deploy]

/// `app.deploy.health_timeout`.
pub const DEPLOY_HEALTH_TIMEOUT: Duration = Duration::from_secs(60);
/// `app.deploy.steps[].timeout`.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(300);
/// `app.deploy.steps[].migrate`: the step runs on every deploy.
pub const STEP_MIGRATE: bool = false;

// [app.rollout]

/// `app.rollout.steps`: the new color's share at each step of a canary.
pub const ROLLOUT_STEPS: [u8; 4] = [10, 25, 50, 100];
/// `app.rollout.step_interval`.
pub const STEP_INTERVAL: Duration = Duration::from_secs(60);
/// `app.rollout.sticky`.
pub const STICKY: super::Sticky = super::Sticky::Cookie;

// [app.analysis]

/// `app.analysis.interval`: the window of the watch after a switch.
pub const ANALYSIS_INTERVAL: Duration = Duration::from_secs(60);
/// `app.analysis.min_requests`: fewer in a window is inconclusive.
pub const MIN_REQUESTS: u64 = 50;
/// `app.analysis.max_error_ratio`.
pub const MAX_ERROR_RATIO: f64 = 0.05;
/// `app.analysis.max_latency_ratio`.
pub const MAX_LATENCY_RATIO: f64 = 2.0;
/// `app.analysis.max_inconclusive`.
pub const MAX_INCONCLUSIVE: u32 = 3;
/// `app.analysis.watch`: off.
pub const WATCH: Duration = Duration::ZERO;
/// `app.analysis.auto_rollback`.
pub const AUTO_ROLLBACK: bool = false;

// [app.mirror], [[app.verify]]

/// `app.mirror.percent`: no copies.
pub const MIRROR_PERCENT: u8 = 0;
/// `app.mirror.methods`.
pub const MIRROR_METHODS: [&str; 2] = ["GET", "HEAD"];
/// `app.mirror.max_body`.
pub const MIRROR_MAX_BODY: u64 = 64 * 1024;
/// `app.mirror.max_in_flight`.
pub const MIRROR_MAX_IN_FLIGHT: usize = 100;
/// `app.verify[].expect_status`.
pub const VERIFY_EXPECT_STATUS: u16 = 200;

// [[app.routes]], [app.rate_limit]

/// `app.routes[].strip_prefix`: the path goes upstream as it came.
pub const ROUTE_STRIP_PREFIX: bool = false;
/// `app.rate_limit.key`: the client address.
pub const RATE_LIMIT_KEY: super::RateLimitKey = super::RateLimitKey::ClientIp;
/// `app.rate_limit.max_keys`: keys tracked at once (about 40 bytes each).
pub const RATE_LIMIT_MAX_KEYS: usize = 100_000;

// [control]

/// `control.request_ttl`: a pending request expires after this.
pub const REQUEST_TTL: Duration = Duration::from_secs(3600);

/// `cluster.prefix`: the etcd keys of this site start with it.
pub const CLUSTER_PREFIX: &str = "/bgproxy";
/// `cluster.ack_timeout`: how long the answer to a change waits for the
/// other instances to say they applied it.
pub const CLUSTER_ACK_TIMEOUT: Duration = Duration::from_secs(1);
