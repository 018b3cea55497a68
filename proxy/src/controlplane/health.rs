//! Active health checks and observed health.
//!
//! pingora-load-balancing's `HttpHealthCheck` does the probing (connect,
//! `GET health.path`, read the status); we own the schedule and the state,
//! because pingora's `Health` starts *healthy* before any check ran, and a
//! switch must never go to a color that was never observed up.
//!
//! Per upstream: `unknown` from start until the first check completes, which
//! sets `up` or `down` by its result; after that `rise` consecutive passes
//! turn `down` into `up` and `fall` consecutive failures turn `up` into
//! `down` ([`Tracker`]). The state lives in a
//! [`HealthCell`](crate::dataplane::health_cell::HealthCell) (atomics) read
//! lock-free by the data plane and the control API.
//!
//! Flow: [`HealthService`] (a pingora `BackgroundService`) runs one task per
//! upstream of both colors of every app and of every route of an app
//! (`[[app.routes]]`, with the route's own health settings), each ticking
//! at `interval`, and follows reloads. Every transition is also published
//! as a `health` event ([`super::events`]) with the rise/fall progress.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bgproxy_control::api::{Color, Health};
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck};
use pingora::lb::Backend;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tracing::{info, warn};

use super::events::{EventType, Events};
use crate::config::HealthConfig;
use crate::dataplane::routing::{Routing, Upstream};

/// The rise/fall state machine of one upstream. Pure: fed check results,
/// answers the new state when it changes.
#[derive(Debug, Clone)]
pub struct Tracker {
    state: Health,
    passes: u32,
    fails: u32,
    rise: u32,
    fall: u32,
}

impl Tracker {
    pub fn new(rise: u32, fall: u32) -> Self {
        Tracker {
            state: Health::Unknown,
            passes: 0,
            fails: 0,
            rise,
            fall,
        }
    }

    /// Consecutive passes and failures so far (one of them is 0).
    pub fn progress(&self) -> (u32, u32) {
        (self.passes, self.fails)
    }

    /// Records one check result; returns the new state if it changed.
    pub fn observe(&mut self, passed: bool) -> Option<Health> {
        if passed {
            self.passes += 1;
            self.fails = 0;
        } else {
            self.fails += 1;
            self.passes = 0;
        }
        let next = match self.state {
            // The first completed check decides: a real observation beats unknown.
            Health::Unknown if passed => Health::Up,
            Health::Unknown => Health::Down,
            Health::Down if self.passes >= self.rise => Health::Up,
            Health::Up if self.fails >= self.fall => Health::Down,
            s => s,
        };
        (next != self.state).then(|| {
            self.state = next;
            next
        })
    }
}

/// Builds pingora's HTTP probe for one app's health settings, over HTTP/2
/// (cleartext) when the app talks HTTP/2 to its upstreams.
fn probe(cfg: &HealthConfig, host: &str, h2: bool) -> HttpHealthCheck {
    let mut hc = HttpHealthCheck::new(host, false);
    // The path is validated by the config (starts with '/', no spaces), so
    // building the request header cannot fail; fall back to "/" regardless.
    if let Ok(mut req) = pingora::http::RequestHeader::build("GET", cfg.path.as_bytes(), None) {
        let _ = req.append_header("Host", host);
        let _ = req.append_header("User-Agent", "bgproxy-health");
        hc.req = req;
    }
    hc.peer_template.options.connection_timeout = Some(cfg.timeout);
    hc.peer_template.options.read_timeout = Some(cfg.timeout);
    hc.peer_template.options.write_timeout = Some(cfg.timeout);
    if h2 {
        hc.peer_template.options.alpn = pingora::protocols::ALPN::H2;
    }
    let expect = cfg.expect_status;
    hc.validator = Some(Box::new(move |resp| {
        if resp.status.as_u16() == expect {
            Ok(())
        } else {
            pingora::Error::e_explain(
                pingora::ErrorType::CustomCode("unexpected health status", resp.status.as_u16()),
                format!("expected {expect}"),
            )
        }
    }));
    hc
}

/// One health-checked upstream: what a checker task needs.
pub struct Target {
    pub app: Arc<str>,
    /// The route the upstream serves (`[[app.routes]]`); `None`: the app's
    /// own upstreams.
    pub route: Option<Arc<str>>,
    pub color: Color,
    pub upstream: Arc<Upstream>,
    pub config: HealthConfig,
    /// Host header of the probe: the app's first host, else the upstream.
    pub host: String,
    /// Probe over HTTP/2 (the app's `h2`).
    pub h2: bool,
    /// Where transitions are published, if anywhere.
    pub events: Option<Arc<Events>>,
    /// The routing, for the generation of a published transition.
    pub routing: Option<Routing>,
}

/// Runs one upstream's checks until shutdown.
pub async fn check_loop(t: Target, mut shutdown: ShutdownWatch) {
    let hc = probe(&t.config, &t.host, t.h2);
    let backend = Backend {
        addr: pingora::protocols::l4::socket::SocketAddr::Inet(t.upstream.addr),
        weight: 1,
        ext: Default::default(),
    };
    let mut tracker = Tracker::new(t.config.rise.get(), t.config.fall.get());
    let mut tick = tokio::time::interval(t.config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        // A total deadline on top of pingora's per-operation timeouts.
        let result = match tokio::time::timeout(t.config.timeout, hc.check(&backend)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", t.config.timeout)),
        };
        if result.is_ok() {
            t.upstream.health.passed();
        }
        let changed = tracker.observe(result.is_ok());
        let (passes, fails) = tracker.progress();
        t.upstream
            .health
            .set_streak(passes, fails, t.config.rise.get(), t.config.fall.get());
        if let Some(h) = changed {
            t.upstream.set_health(h);
            let route = t.route.as_deref().unwrap_or("-");
            match (h, &result) {
                (Health::Down, Err(why)) => {
                    warn!(app = %t.app, route, color = %t.color, upstream = %t.upstream.name, "upstream is DOWN: {why}")
                }
                _ => {
                    info!(app = %t.app, route, color = %t.color, upstream = %t.upstream.name, "upstream is {h}")
                }
            }
            if let Some(events) = &t.events {
                let generation = t.routing.as_ref().map_or(0, |r| r.load().generation);
                events.publish(
                    EventType::Health,
                    Some(&t.app),
                    generation,
                    serde_json::json!({
                        "route": t.route.as_deref(), "color": t.color,
                        "upstream": &*t.upstream.name, "health": h,
                        "since_ms": t.upstream.health.since_ms(),
                        "passes": passes, "fails": fails,
                        "rise": t.config.rise.get(), "fall": t.config.fall.get(),
                        "error": result.as_ref().err(),
                    }),
                );
            }
        }
    }
}

/// The background service that health-checks every upstream of every app.
///
/// It follows the published routing: after every new generation it starts
/// checks for upstreams that appeared, stops those of upstreams that went,
/// and restarts those whose app changed its health settings.
pub struct HealthService {
    routing: Routing,
    generations: tokio::sync::watch::Receiver<u64>,
    events: Option<Arc<Events>>,
}

impl HealthService {
    pub fn new(routing: Routing, generations: tokio::sync::watch::Receiver<u64>) -> Self {
        HealthService {
            routing,
            generations,
            events: None,
        }
    }

    /// Publishes every transition on `events`.
    pub fn with_events(mut self, events: Arc<Events>) -> Self {
        self.events = Some(events);
        self
    }
}

/// A running check: what it was started with, to notice changes.
struct Running {
    task: tokio::task::JoinHandle<()>,
    upstream: Arc<Upstream>,
    probe: Probe,
}

/// What a check is started with, besides its upstream.
#[derive(Clone, PartialEq)]
struct Probe {
    config: HealthConfig,
    host: String,
    h2: bool,
}

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let mut generations = self.generations.clone();
        // By app, route (None: the app's own), color and address.
        type Key = (Arc<str>, Option<Arc<str>>, Color, SocketAddr);
        let mut running: HashMap<Key, Running> = HashMap::new();
        let mut stop = shutdown.clone();
        loop {
            let snapshot = self.routing.load_full();
            let mut wanted = HashMap::new();
            for app in &snapshot.apps {
                let host = app
                    .config
                    .hosts
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "localhost".into());
                let own = app.pools.iter().map(|p| (None, p, &app.config.health));
                let routes = app.paths.iter().flat_map(|r| {
                    r.pools
                        .iter()
                        .map(move |p| (Some(r.name.clone()), p, &r.config.health))
                });
                for (route, pool, health) in own.chain(routes) {
                    for u in pool.upstreams.iter() {
                        let key = (app.name.clone(), route.clone(), pool.color, u.addr);
                        let probe = Probe {
                            config: health.clone(),
                            host: host.clone(),
                            h2: app.config.h2,
                        };
                        wanted.insert(key, (u.clone(), probe));
                    }
                }
            }
            running.retain(|key, r| {
                let keep = wanted
                    .get(key)
                    .is_some_and(|(u, probe)| Arc::ptr_eq(u, &r.upstream) && *probe == r.probe);
                if !keep {
                    r.task.abort();
                }
                keep
            });
            for (key, (upstream, probe)) in wanted {
                if running.contains_key(&key) {
                    continue;
                }
                let target = Target {
                    app: key.0.clone(),
                    route: key.1.clone(),
                    color: key.2,
                    upstream: upstream.clone(),
                    config: probe.config.clone(),
                    host: probe.host.clone(),
                    h2: probe.h2,
                    events: self.events.clone(),
                    routing: Some(self.routing.clone()),
                };
                let task = tokio::spawn(check_loop(target, shutdown.clone()));
                running.insert(
                    key,
                    Running {
                        task,
                        upstream,
                        probe,
                    },
                );
            }
            tokio::select! {
                changed = generations.changed() => if changed.is_err() { break },
                _ = stop.changed() => break,
            }
        }
        for r in running.into_values() {
            r.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::health_cell::HealthCell;
    use std::time::Duration;

    #[test]
    fn first_check_decides_then_thresholds() {
        let mut t = Tracker::new(2, 3);
        assert_eq!(t.observe(true), Some(Health::Up));
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(true), None, "a pass resets the failure count");
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), Some(Health::Down), "fall = 3 consecutive");
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(true), Some(Health::Up), "rise = 2 consecutive");

        let mut t = Tracker::new(2, 3);
        assert_eq!(t.observe(false), Some(Health::Down));
    }

    #[test]
    fn cell_since_moves_only_on_change() {
        let c = HealthCell::new();
        assert_eq!(c.get(), Health::Unknown);
        c.set(Health::Up);
        let since = c.since_ms();
        std::thread::sleep(Duration::from_millis(5));
        c.set(Health::Up);
        assert_eq!(c.since_ms(), since);
        c.set(Health::Down);
        assert!(c.since_ms() > since);
    }
}
