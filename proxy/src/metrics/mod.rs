//! Prometheus metrics: every name in [`names`], one [`Metrics`] registry per
//! daemon, and pre-resolved handles for the hot path.
//!
//! Label values come only from the config (app names, colors, upstream
//! addresses) and from fixed enums (status class, switch kind, result),
//! never from client input: a client cannot grow the number of series.
//! The data plane never looks a label up: each [`Pool`](crate::dataplane::routing::Pool)
//! carries its [`PoolMetrics`] handles, resolved when the pool is built, so
//! recording a request is a few atomic adds.

pub mod http;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use bgproxy_control::api::{Color, SwitchKind, Weights};

/// Metric names: call sites never repeat a name literal.
pub mod names {
    pub const REQUESTS_TOTAL: &str = "bgproxy_requests_total";
    pub const REQUEST_DURATION_SECONDS: &str = "bgproxy_request_duration_seconds";
    pub const UPSTREAM_HEALTHY: &str = "bgproxy_upstream_healthy";
    pub const LIVE_COLOR: &str = "bgproxy_live_color";
    pub const SWITCHES_TOTAL: &str = "bgproxy_switches_total";
    pub const DEPLOYS_TOTAL: &str = "bgproxy_deploys_total";
    pub const ACTIVE_CONNECTIONS: &str = "bgproxy_active_connections";
    pub const CONFIG_RELOADS_TOTAL: &str = "bgproxy_config_reloads_total";
    pub const STATE_WRITE_DURATION_SECONDS: &str = "bgproxy_state_write_duration_seconds";
    pub const STATE_WRITE_FAILURES_TOTAL: &str = "bgproxy_state_write_failures_total";
    pub const CLUSTER_CONNECTED: &str = "bgproxy_cluster_connected";
    pub const CLUSTER_LEADER: &str = "bgproxy_cluster_leader";
    pub const PANIC_ROUTED_TOTAL: &str = "bgproxy_panic_routed_requests_total";
    pub const UPSTREAM_RETRIES_TOTAL: &str = "bgproxy_upstream_retries_total";
    pub const UNROUTED_TOTAL: &str = "bgproxy_unrouted_requests_total";
    pub const CONNECTIONS_REFUSED_TOTAL: &str = "bgproxy_connections_refused_total";
    pub const BENIGN_ERRORS_TOTAL: &str = "bgproxy_benign_errors_total";
    pub const DRAINED_CONNECTIONS_TOTAL: &str = "bgproxy_drained_connections_total";
    pub const TRAFFIC_WEIGHT: &str = "bgproxy_traffic_weight";
    pub const ANALYSIS_TOTAL: &str = "bgproxy_analysis_total";
    pub const AUTOMATIC_ROLLBACKS_TOTAL: &str = "bgproxy_automatic_rollbacks_total";
    pub const PREVIEW_REQUESTS_TOTAL: &str = "bgproxy_preview_requests_total";
    pub const MIRRORED_REQUESTS_TOTAL: &str = "bgproxy_mirrored_requests_total";
    pub const RATE_LIMITED_TOTAL: &str = "bgproxy_rate_limited_total";
    pub const RATE_LIMIT_KEYS: &str = "bgproxy_rate_limit_keys";
    pub const ACCESS_LOG_DROPPED_TOTAL: &str = "bgproxy_access_log_dropped_total";
    pub const EVENTS_DROPPED_CLIENTS_TOTAL: &str = "bgproxy_events_dropped_clients_total";
    pub const CERTIFICATE_EXPIRY: &str = "bgproxy_certificate_expiry_timestamp_seconds";

    /// Every name above.
    pub const ALL: &[&str] = &[
        REQUESTS_TOTAL,
        REQUEST_DURATION_SECONDS,
        UPSTREAM_HEALTHY,
        LIVE_COLOR,
        SWITCHES_TOTAL,
        DEPLOYS_TOTAL,
        ACTIVE_CONNECTIONS,
        CONFIG_RELOADS_TOTAL,
        STATE_WRITE_DURATION_SECONDS,
        STATE_WRITE_FAILURES_TOTAL,
        CLUSTER_CONNECTED,
        CLUSTER_LEADER,
        PANIC_ROUTED_TOTAL,
        UPSTREAM_RETRIES_TOTAL,
        UNROUTED_TOTAL,
        CONNECTIONS_REFUSED_TOTAL,
        BENIGN_ERRORS_TOTAL,
        DRAINED_CONNECTIONS_TOTAL,
        TRAFFIC_WEIGHT,
        ANALYSIS_TOTAL,
        AUTOMATIC_ROLLBACKS_TOTAL,
        PREVIEW_REQUESTS_TOTAL,
        MIRRORED_REQUESTS_TOTAL,
        RATE_LIMITED_TOTAL,
        RATE_LIMIT_KEYS,
        ACCESS_LOG_DROPPED_TOTAL,
        EVENTS_DROPPED_CLIENTS_TOTAL,
        CERTIFICATE_EXPIRY,
    ];
}

/// Status classes, the values of the `code_class` label.
const CODE_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// Latency buckets: from 1ms to 30s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The daemon's metrics.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream_healthy: IntGaugeVec,
    live_color: IntGaugeVec,
    switches: IntCounterVec,
    /// Per app, color and result of a deploy.
    pub deploys: IntCounterVec,
    active: IntGaugeVec,
    /// Config reloads by result (`success`, `failure`).
    pub reloads: IntCounterVec,
    /// Time to write the state file durably.
    pub state_write: Histogram,
    /// Failed state writes (the change was refused).
    pub state_write_failures: IntCounter,
    /// `[cluster]`: 1 while this instance reaches an etcd quorum, by
    /// `cluster.name` (no series without `[cluster]`).
    pub cluster_connected: IntGaugeVec,
    /// `[cluster]`: 1 while this instance leads (runs automatic actions).
    pub cluster_leader: IntGaugeVec,
    panic_routed: IntCounterVec,
    retries: IntCounterVec,
    /// Requests for a Host no app serves (no labels on purpose).
    pub unrouted: IntCounter,
    /// Client connections closed at once by a limit, by [`Refused`] reason.
    refused: IntCounterVec,
    /// Errors that need no operator (logged at debug), by [`Benign`] kind.
    benign: IntCounterVec,
    drained: IntCounterVec,
    traffic_weight: IntGaugeVec,
    /// Client connections the front door still waits on for a request head
    /// after shutdown began (not a metric: part of [`Metrics::in_flight`]).
    pub heads_awaited: std::sync::atomic::AtomicI64,
    /// Analysis windows by app and result (`pass`, `fail`, `inconclusive`).
    pub analysis: IntCounterVec,
    /// Rollouts aborted and switches rolled back by bgproxy itself.
    pub automatic_rollbacks: IntCounterVec,
    preview: IntCounterVec,
    mirrored: IntCounterVec,
    rate_limited: IntCounterVec,
    rate_limit_keys: IntGaugeVec,
    /// Access log lines dropped because the log's sink did not keep up.
    pub access_log_dropped: IntCounter,
    /// `GET /v1/events` clients closed because they fell behind or stopped
    /// reading.
    pub events_dropped_clients: IntCounter,
    certificate_expiry: IntGaugeVec,
}

fn register<C: Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    // Names are constants and unique, so registration cannot collide.
    r.register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

impl Metrics {
    /// A fresh registry with every bgproxy metric and the process metrics.
    pub fn new() -> Metrics {
        let r = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let m = Metrics {
            requests: counter(names::REQUESTS_TOTAL, "Requests proxied, by app, color and status class.", &["app", "color", "code_class"]),
            duration: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(names::REQUEST_DURATION_SECONDS, "Request duration from first byte in to last byte out, by app and color.")
                        .buckets(LATENCY_BUCKETS.to_vec()),
                    &["app", "color"],
                )
                .expect("valid metric"),
            ),
            upstream_healthy: gauge(names::UPSTREAM_HEALTHY, "1 when the upstream is observed up, 0 when down or not yet checked; route is the [[app.routes]] name, empty for the app's own upstreams.", &["app", "route", "color", "upstream"]),
            live_color: gauge(names::LIVE_COLOR, "1 for the app's live color, 0 for the standby.", &["app", "color"]),
            switches: counter(names::SWITCHES_TOTAL, "Changes of the live color, by app and kind.", &["app", "kind"]),
            deploys: counter(names::DEPLOYS_TOTAL, "Deploys to the standby color, by app, color and result.", &["app", "color", "result"]),
            active: gauge(names::ACTIVE_CONNECTIONS, "Requests (and upgraded connections) in flight to each color.", &["app", "color"]),
            reloads: counter(names::CONFIG_RELOADS_TOTAL, "Configuration reloads, by result.", &["result"]),
            state_write: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(names::STATE_WRITE_DURATION_SECONDS, "Time to write the state file durably (write, fdatasync, rename, fsync dir).")
                        .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]),
                )
                .expect("valid metric"),
            ),
            state_write_failures: register(&r, IntCounter::new(names::STATE_WRITE_FAILURES_TOTAL, "State writes that failed; the change they carried was refused.").expect("valid metric")),
            cluster_connected: gauge(names::CLUSTER_CONNECTED, "[cluster]: 1 while this instance reaches an etcd quorum and takes changes, 0 while it routes by the last state it applied and refuses changes.", &["name"]),
            cluster_leader: gauge(names::CLUSTER_LEADER, "[cluster]: 1 while this instance is the elected one that runs automatic actions (rollout steps, analysis, automatic rollback).", &["name"]),
            panic_routed: counter(names::PANIC_ROUTED_TOTAL, "Requests sent to a live color whose upstreams were all down (panic routing).", &["app", "color"]),
            retries: counter(names::UPSTREAM_RETRIES_TOTAL, "Requests retried on another upstream of the same color after a refused connection.", &["app", "color"]),
            unrouted: register(&r, IntCounter::new(names::UNROUTED_TOTAL, "Requests for a Host that no app serves (answered 404).").expect("valid metric")),
            refused: counter(names::CONNECTIONS_REFUSED_TOTAL, "Client connections closed as they came because a connection limit was reached, by limit.", &["reason"]),
            benign: counter(names::BENIGN_ERRORS_TOTAL, "Errors that need no operator, logged at debug: clients that went away or stalled, client handshakes that failed, upstream pool races.", &["kind"]),
            drained: counter(names::DRAINED_CONNECTIONS_TOTAL, "Upgraded (WebSocket) connections closed because their color stayed standby for the app's drain_timeout.", &["app", "color"]),
            heads_awaited: std::sync::atomic::AtomicI64::new(0),
            traffic_weight: gauge(names::TRAFFIC_WEIGHT, "Each color's share of the app's requests, in percent (a rollout's split; 100 for the live color otherwise).", &["app", "color"]),
            analysis: counter(names::ANALYSIS_TOTAL, "Analysis windows of a rollout step or of the watch after a switch, by app and result.", &["app", "result"]),
            automatic_rollbacks: counter(names::AUTOMATIC_ROLLBACKS_TOTAL, "Rollouts aborted and switches rolled back by bgproxy itself after a failed analysis.", &["app"]),
            preview: counter(names::PREVIEW_REQUESTS_TOTAL, "Preview requests (a valid X-Bgproxy-Preview token or preview cookie), by app and the color they were sent to.", &["app", "color"]),
            mirrored: counter(names::MIRRORED_REQUESTS_TOTAL, "Copies of live requests sent to the standby ([app.mirror]), by app and result: ok, error, dropped (max_in_flight reached), mismatch (status class differs from the live answer).", &["app", "result"]),
            rate_limited: counter(names::RATE_LIMITED_TOTAL, "Requests answered 429 by the app's [app.rate_limit], never forwarded.", &["app"]),
            rate_limit_keys: gauge(names::RATE_LIMIT_KEYS, "Client keys the app's rate limit tracks now (at most its max_keys).", &["app"]),
            access_log_dropped: register(&r, IntCounter::new(names::ACCESS_LOG_DROPPED_TOTAL, "Access log lines dropped because stderr did not take them fast enough (a stalled disk or a full pipe); requests never wait for their line.").expect("valid metric")),
            events_dropped_clients: register(&r, IntCounter::new(names::EVENTS_DROPPED_CLIENTS_TOTAL, "Clients of GET /v1/events closed because they fell behind the events or their socket accepted nothing for 10s; they reconnect and resume.").expect("valid metric")),
            certificate_expiry: gauge(names::CERTIFICATE_EXPIRY, "When each served certificate expires (Unix seconds), by host and source (file or acme).", &["host", "source"]),
            registry: r,
        };
        for result in ["success", "failure"] {
            m.reloads.with_label_values(&[result]);
        }
        for reason in Refused::ALL {
            m.refused(reason);
        }
        for kind in Benign::ALL {
            m.benign(kind);
        }
        #[cfg(target_os = "linux")]
        {
            let _ = m.registry.register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ));
        }
        m
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }

    /// Replaces every certificate expiry series with `certs`:
    /// `(host, source, not_after as Unix seconds)`.
    pub fn set_certificate_expiry(&self, certs: &[(String, &str, i64)]) {
        self.certificate_expiry.reset();
        for (host, source, not_after) in certs {
            self.certificate_expiry
                .with_label_values(&[host.as_str(), source])
                .set(*not_after);
        }
    }

    /// Resolves the handles of one app's color.
    pub fn pool(&self, app: &str, color: Color) -> PoolMetrics {
        let c = color.as_str();
        PoolMetrics {
            requests: CODE_CLASSES.map(|class| self.requests.with_label_values(&[app, c, class])),
            duration: self.duration.with_label_values(&[app, c]),
            active: self.active.with_label_values(&[app, c]),
            panic_routed: self.panic_routed.with_label_values(&[app, c]),
            retries: self.retries.with_label_values(&[app, c]),
            preview: self.preview.with_label_values(&[app, c]),
        }
    }

    /// The counter of `app`'s mirrored requests with `result` (resolve it
    /// once and keep it).
    pub fn mirrored(&self, app: &str, result: MirrorResult) -> IntCounter {
        self.mirrored.with_label_values(&[app, result.as_str()])
    }

    /// The health gauge of one upstream of `app`'s `route` (`""`: the
    /// app's own upstreams).
    pub fn upstream(&self, app: &str, route: &str, color: Color, upstream: &str) -> IntGauge {
        self.upstream_healthy
            .with_label_values(&[app, route, color.as_str(), upstream])
    }

    /// The handles of `app`'s rate limit: requests refused, keys tracked.
    pub fn rate_limit(&self, app: &str) -> (IntCounter, IntGauge) {
        (
            self.rate_limited.with_label_values(&[app]),
            self.rate_limit_keys.with_label_values(&[app]),
        )
    }

    /// Creates an app's series that would otherwise appear only on first use
    /// (every switch kind at 0), so `increase()` works from the first switch.
    pub fn register_app(&self, app: &str, live: Color) {
        for kind in [
            SwitchKind::Switch,
            SwitchKind::Rollback,
            SwitchKind::Emergency,
            SwitchKind::Automatic,
        ] {
            self.switches.with_label_values(&[app, &kind.to_string()]);
        }
        for color in Color::ALL {
            self.drained.with_label_values(&[app, color.as_str()]);
        }
        for result in ["pass", "fail", "inconclusive"] {
            self.analysis.with_label_values(&[app, result]);
        }
        self.automatic_rollbacks.with_label_values(&[app]);
        for result in MirrorResult::ALL {
            self.mirrored(app, result);
        }
        self.set_live(app, live);
    }

    /// Sets the traffic-weight gauges of an app.
    pub fn set_weights(&self, app: &str, weights: Weights) {
        for c in Color::ALL {
            self.traffic_weight
                .with_label_values(&[app, c.as_str()])
                .set(i64::from(weights.of(c)));
        }
    }

    /// The counter of client connections refused for `reason` (resolve it
    /// once and keep it: counting is then one atomic add).
    pub fn refused(&self, reason: Refused) -> IntCounter {
        self.refused.with_label_values(&[reason.as_str()])
    }

    /// The counter of benign errors of `kind` (resolve it once and keep it).
    pub fn benign(&self, kind: Benign) -> IntCounter {
        self.benign.with_label_values(&[kind.as_str()])
    }

    /// Counts `n` upgraded connections of `app`'s `color` ended by the drain.
    pub fn drained(&self, app: &str, color: Color, n: u64) {
        self.drained
            .with_label_values(&[app, color.as_str()])
            .inc_by(n);
    }

    /// Requests in flight to any color of any app, including apps a reload
    /// removed while their requests were still running, and the connections
    /// whose request head shutdown still waits for.
    pub fn in_flight(&self) -> i64 {
        let requests: i64 = self
            .active
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|m| m.get_gauge().get_value() as i64)
            .sum();
        requests
            + self
                .heads_awaited
                .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Sets the live-color gauges of an app.
    pub fn set_live(&self, app: &str, live: Color) {
        for c in Color::ALL {
            self.live_color
                .with_label_values(&[app, c.as_str()])
                .set(i64::from(c == live));
        }
    }

    /// Counts a change of the live color.
    pub fn switched(&self, app: &str, kind: SwitchKind) {
        self.switches
            .with_label_values(&[app, &kind.to_string()])
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// One reading of a color's request counters and latency histogram.
/// Serialised for `[cluster]`: every instance publishes its own, the
/// leader judges their sum.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    /// Requests by status class: 1xx, 2xx, 3xx, 4xx, 5xx, no response.
    pub by_class: [u64; 6],
    /// Cumulative observations per latency bucket (upper bound in seconds).
    pub buckets: Vec<(f64, u64)>,
    /// Observations in all.
    pub count: u64,
}

/// Why a client connection was refused: the `reason` label of
/// `bgproxy_connections_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// `proxy.max_connections` connections were open.
    MaxConnections,
    /// `proxy.max_connections_per_ip` connections from the client's address
    /// were open.
    MaxConnectionsPerIp,
}

impl Refused {
    /// Every reason, for creating the series at 0.
    pub const ALL: [Refused; 2] = [Refused::MaxConnections, Refused::MaxConnectionsPerIp];

    /// The label value: the config key's last part.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::MaxConnections => "max_connections",
            Refused::MaxConnectionsPerIp => "max_connections_per_ip",
        }
    }
}

/// An error that needs no operator, so it is logged at debug, not error:
/// the `kind` label of `bgproxy_benign_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Benign {
    /// A client closed or reset its connection in the middle of a request.
    ClientDisconnect,
    /// A client stopped sending in the middle of a request (it got a 408).
    ClientTimeout,
    /// A client's TLS or HTTP/2 handshake failed: it closed or reset the
    /// connection (browsers do so with spare connections), or sent no
    /// valid HTTP/2 preface.
    ClientHandshake,
    /// pingora's upstream connection pool lost a race for an idle
    /// connection (`failed to acquire reusable stream`): a new connection is
    /// opened instead, nothing fails.
    UpstreamPoolRace,
}

impl Benign {
    /// Whether an error message says the peer closed or reset the connection.
    pub fn peer_closed(message: &str) -> bool {
        let m = message.to_ascii_lowercase();
        [
            "reset by peer",
            "connectionreset",
            "connection reset",
            "broken pipe",
            "unexpected eof",
            "unexpectedeof",
            "end of file",
            "connection closed",
        ]
        .iter()
        .any(|s| m.contains(s))
    }

    /// Every kind, for creating the series at 0.
    pub const ALL: [Benign; 4] = [
        Benign::ClientDisconnect,
        Benign::ClientTimeout,
        Benign::ClientHandshake,
        Benign::UpstreamPoolRace,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Benign::ClientDisconnect => "client_disconnect",
            Benign::ClientTimeout => "client_timeout",
            Benign::ClientHandshake => "client_handshake",
            Benign::UpstreamPoolRace => "upstream_pool_race",
        }
    }
}

/// What became of a copy of a live request: the `result` label of
/// `bgproxy_mirrored_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MirrorResult {
    /// The standby answered, in the live answer's status class.
    Ok,
    /// The copy failed: no connection, a timeout, a broken answer.
    Error,
    /// Not sent: `max_in_flight` copies of the app were out already.
    Dropped,
    /// The standby answered in another status class than the live color.
    Mismatch,
}

impl MirrorResult {
    /// Every result, in the order of their discriminants.
    pub const ALL: [MirrorResult; 4] = [
        MirrorResult::Ok,
        MirrorResult::Error,
        MirrorResult::Dropped,
        MirrorResult::Mismatch,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            MirrorResult::Ok => "ok",
            MirrorResult::Error => "error",
            MirrorResult::Dropped => "dropped",
            MirrorResult::Mismatch => "mismatch",
        }
    }
}

/// Pre-resolved handles of one app's color: recording is atomic adds only.
#[derive(Clone, Debug)]
pub struct PoolMetrics {
    requests: [IntCounter; 6],
    duration: Histogram,
    /// In-flight requests to this color.
    pub active: IntGauge,
    /// Requests routed while every upstream was down.
    pub panic_routed: IntCounter,
    /// Retries on another upstream.
    pub retries: IntCounter,
    /// Preview requests sent to this color.
    pub preview: IntCounter,
}

impl PoolMetrics {
    /// Handles attached to no registry (for unit tests and benchmarks).
    pub fn detached() -> PoolMetrics {
        Metrics::new().pool("detached", Color::Blue)
    }

    /// A reading of this color's counters, for analysis windows (not on the
    /// request path).
    pub fn counts(&self) -> Counts {
        use prometheus::core::Metric;
        let histogram = self.duration.metric();
        let h = histogram.get_histogram();
        Counts {
            by_class: std::array::from_fn(|i| self.requests[i].get()),
            buckets: h
                .get_bucket()
                .iter()
                .map(|b| (b.upper_bound(), b.cumulative_count()))
                .collect(),
            count: h.get_sample_count(),
        }
    }

    /// Records one finished request: its status (`None` when no response
    /// was sent) and duration.
    #[inline]
    pub fn record(&self, status: Option<u16>, seconds: f64) {
        let class = match status {
            Some(s @ 100..=599) => usize::from(s / 100 - 1),
            _ => 5,
        };
        self.requests[class].inc();
        self.duration.observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_names_are_registered() {
        let m = Metrics::new();
        let p = m.pool("a", Color::Blue);
        p.record(Some(200), 0.1);
        m.register_app("a", Color::Blue);
        m.set_weights("a", Weights::new(Color::Green, 10));
        m.upstream("a", "", Color::Blue, "127.0.0.1:1");
        m.rate_limit("a");
        m.deploys.with_label_values(&["a", "blue", "ok"]);
        m.cluster_connected.with_label_values(&["lb1"]);
        m.cluster_leader.with_label_values(&["lb1"]);
        m.set_certificate_expiry(&[("a.example".into(), "acme", 1)]);
        let families: Vec<String> = m
            .registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        for name in names::ALL {
            assert!(families.iter().any(|f| f == name), "{name} not registered");
        }
        let ours = families
            .iter()
            .filter(|f| f.starts_with("bgproxy_"))
            .count();
        assert_eq!(
            ours,
            names::ALL.len(),
            "names::ALL lists every bgproxy metric"
        );
    }

    #[test]
    fn records_by_class_and_renders() {
        let m = Metrics::new();
        let p = m.pool("web", Color::Green);
        p.record(Some(204), 0.002);
        p.record(Some(502), 0.5);
        p.record(None, 0.1);
        m.set_live("web", Color::Green);
        m.switched("web", SwitchKind::Emergency);
        let text = String::from_utf8(m.render()).unwrap();
        for line in [
            r#"bgproxy_requests_total{app="web",code_class="2xx",color="green"} 1"#,
            r#"bgproxy_requests_total{app="web",code_class="5xx",color="green"} 1"#,
            r#"bgproxy_requests_total{app="web",code_class="none",color="green"} 1"#,
            r#"bgproxy_request_duration_seconds_count{app="web",color="green"} 3"#,
            r#"bgproxy_live_color{app="web",color="green"} 1"#,
            r#"bgproxy_live_color{app="web",color="blue"} 0"#,
            r#"bgproxy_switches_total{app="web",kind="emergency"} 1"#,
            r#"bgproxy_config_reloads_total{result="failure"} 0"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn refusals_and_benign_errors_are_there_from_the_start() {
        let m = Metrics::new();
        m.refused(Refused::MaxConnectionsPerIp).inc();
        m.benign(Benign::UpstreamPoolRace).inc_by(2);
        let text = String::from_utf8(m.render()).unwrap();
        for line in [
            r#"bgproxy_connections_refused_total{reason="max_connections"} 0"#,
            r#"bgproxy_connections_refused_total{reason="max_connections_per_ip"} 1"#,
            r#"bgproxy_benign_errors_total{kind="client_disconnect"} 0"#,
            r#"bgproxy_benign_errors_total{kind="client_timeout"} 0"#,
            r#"bgproxy_benign_errors_total{kind="client_handshake"} 0"#,
            r#"bgproxy_benign_errors_total{kind="upstream_pool_race"} 2"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
