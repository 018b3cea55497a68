//! The routing snapshot: everything the data plane needs to route one
//! request, in one immutable value behind one `ArcSwap`.
//!
//! Facts that must change together (each app's live color, its pools, the
//! host table, the generation) live in one [`Snapshot`]; the controller builds
//! a new one for every change and `store`s it, so a reader sees either the
//! old routing or the new one, never half of each.
//!
//! What is *not* in the immutable part: the observed health of each upstream
//! and the round-robin cursor of each pool. They change on their own clock
//! (health checks, requests), so they are atomics inside [`Pool`] and
//! [`Upstream`], which are shared by `Arc` between successive snapshots: a
//! switch does not reset health or the cursor.
//!
//! During a rollout an app's route also holds a **split**: the standby's
//! share in percent. [`AppRoute::color_for`] places each request by its
//! client's bucket (0-9999): the bucket from a cookie bgproxy set, a hash
//! of the client address, or a fresh draw, per `[app.rollout] sticky`.
//! Buckets below `share * 100` go to the new color, so raising the share
//! only moves clients from the old color to the new one, and lowering it
//! only moves them back. No lock, no allocation.
//!
//! An app with `[[app.routes]]` holds its services' pools too
//! ([`PathRoutes`], `routes.rs`): the color is decided once for the app,
//! then the request's path picks the service, so a switch moves every
//! service of the app in the same `store`.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bgproxy_control::api::{Color, Health};

use crate::config::{AppConfig, Sticky};
use crate::dataplane::health_cell::HealthCell;
use crate::dataplane::mirror::MirrorState;
use crate::dataplane::preview::PreviewKey;
use crate::dataplane::rate_limit::RateLimit;
use crate::dataplane::routes::{PathRoute, PathRoutes};
use crate::metrics::{Metrics, PoolMetrics};

/// The shared, swappable routing table.
pub type Routing = Arc<ArcSwap<Snapshot>>;

/// One upstream server of one color.
#[derive(Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    /// `addr` as text, computed once (status, logs, metric labels).
    pub name: Arc<str>,
    pub health: HealthCell,
    /// `bgproxy_upstream_healthy` of this upstream.
    gauge: prometheus::IntGauge,
}

impl Upstream {
    /// An upstream whose health is reported on `gauge`.
    pub fn new(addr: SocketAddr, gauge: prometheus::IntGauge) -> Self {
        Upstream {
            addr,
            name: addr.to_string().into(),
            health: HealthCell::new(),
            gauge,
        }
    }

    /// Records a new observed health, and reports it as a metric.
    pub fn set_health(&self, h: Health) {
        self.health.set(h);
        self.gauge.set(i64::from(h == Health::Up));
    }
}

/// The upstreams of one color of one app, with a round-robin cursor.
#[derive(Debug)]
pub struct Pool {
    pub color: Color,
    pub upstreams: Box<[Arc<Upstream>]>,
    next: AtomicUsize,
    /// Pre-resolved metric handles of this app's color.
    pub metrics: PoolMetrics,
    /// Whether the last pick was a panic pick: lets the data plane log the
    /// transitions instead of every request.
    panicking: AtomicBool,
}

/// The upstream [`Pool::pick`] chose.
#[derive(Debug)]
pub struct Pick<'a> {
    pub upstream: &'a Arc<Upstream>,
    /// Every eligible upstream was `down`: the pick ignores health (panic
    /// routing) rather than refusing the request on a guess.
    pub panic: bool,
}

impl Pool {
    pub fn new(color: Color, upstreams: Vec<Arc<Upstream>>, metrics: PoolMetrics) -> Self {
        Pool {
            color,
            metrics,
            upstreams: upstreams.into_boxed_slice(),
            next: AtomicUsize::new(0),
            panicking: AtomicBool::new(false),
        }
    }

    /// Round-robin over the `up` and `unknown` upstreams, skipping `exclude`
    /// (the one that just refused a connection). When all candidates are
    /// `down`, spread over them anyway (`panic: true`). `None` only when no
    /// upstream is left after the exclusion.
    ///
    /// Lock-free and allocation-free: one `fetch_add` and a scan.
    pub fn pick(&self, exclude: Option<SocketAddr>) -> Option<Pick<'_>> {
        let n = self.upstreams.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let candidates = (0..n)
            .map(|i| &self.upstreams[(start.wrapping_add(i)) % n])
            .filter(|u| Some(u.addr) != exclude);
        let mut fallback = None;
        for u in candidates {
            if u.health.get() != Health::Down {
                return Some(Pick {
                    upstream: u,
                    panic: false,
                });
            }
            fallback.get_or_insert(u);
        }
        fallback.map(|upstream| Pick {
            upstream,
            panic: true,
        })
    }

    /// Records whether a pick was a panic pick; returns true when that differs
    /// from the previous pick (entering or leaving panic mode).
    #[inline]
    pub fn panic_changed(&self, panic: bool) -> bool {
        // A plain load first keeps the common case (no change) free of writes.
        self.panicking.load(Ordering::Relaxed) != panic
            && self.panicking.swap(panic, Ordering::Relaxed) != panic
    }

    /// Round-robin over the upstreams observed `up` only, skipping
    /// `exclude`: for preview requests, which never fall back on a guess.
    /// `None` when no upstream is `up`.
    pub fn pick_up(&self, exclude: Option<SocketAddr>) -> Option<&Arc<Upstream>> {
        let n = self.upstreams.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.upstreams[(start.wrapping_add(i)) % n])
            .find(|u| Some(u.addr) != exclude && u.health.get() == Health::Up)
    }

    /// True when at least one upstream is observed `up`.
    pub fn any_up(&self) -> bool {
        self.upstreams.iter().any(|u| u.health.get() == Health::Up)
    }

    /// True when every upstream is observed `up`: the health gate of a switch.
    pub fn all_up(&self) -> bool {
        self.upstreams.iter().all(|u| u.health.get() == Health::Up)
    }
}

/// Where an app's requests go: the live color, and the standby's share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Split {
    pub live: Color,
    /// The standby's share in percent (0-100); 0 outside a rollout.
    pub canary: u8,
}

impl From<Color> for Split {
    /// Everything to `live`.
    fn from(live: Color) -> Split {
        Split { live, canary: 0 }
    }
}

/// The name of the cookie that keeps a client's bucket.
pub const BUCKET_COOKIE: &str = "bgproxy_bucket";

/// Buckets per client population: a share of `p` percent is the buckets
/// below `p * 100`.
pub const BUCKETS: u16 = 10_000;

/// Where one request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub color: Color,
    /// A bucket drawn for a client without a cookie: the response sets it.
    pub set_cookie: Option<u16>,
}

/// One app's routing.
#[derive(Debug, Clone)]
pub struct AppRoute {
    pub name: Arc<str>,
    pub live: Color,
    /// The standby's share in percent (0-100).
    pub canary: u8,
    /// Pools indexed by [`Color::index`].
    pub pools: [Arc<Pool>; 2],
    /// The app's validated config (hosts, health, deploy steps), as of the
    /// config this snapshot was built from.
    pub config: Arc<AppConfig>,
    /// The preview token's digest and cookie; `None` without
    /// `[app.preview] token_file`.
    pub preview: Option<Arc<PreviewKey>>,
    /// Copies in flight and their counters, kept across snapshots.
    pub mirror: Arc<MirrorState>,
    /// The app's services by path prefix (`[[app.routes]]`); empty when it
    /// has none.
    pub paths: Arc<PathRoutes>,
    /// `[app.rate_limit]`, kept (with its buckets) across snapshots while
    /// unchanged.
    pub rate_limit: Option<Arc<RateLimit>>,
}

impl AppRoute {
    /// The color a request of this app goes to.
    ///
    /// Today the live color. A weighted split or a preview rule (header,
    /// cookie) is added here, as data in `AppRoute` built with the snapshot;
    /// the data plane only calls this.
    #[inline]
    pub fn color_for(
        &self,
        req: &pingora::http::RequestHeader,
        client: Option<IpAddr>,
    ) -> Placement {
        let to = |color| Placement {
            color,
            set_cookie: None,
        };
        match self.canary {
            0 => to(self.live),
            100.. => to(self.live.other()),
            share => {
                let (bucket, set_cookie) = match self.config.rollout.sticky {
                    Sticky::Cookie => match cookie_bucket(req) {
                        Some(b) => (b, None),
                        None => {
                            let b = draw_bucket();
                            (b, Some(b))
                        }
                    },
                    Sticky::ClientIp => (client.map_or_else(draw_bucket, ip_bucket), None),
                    Sticky::None => (draw_bucket(), None),
                };
                let color = if bucket < u16::from(share) * 100 {
                    self.live.other()
                } else {
                    self.live
                };
                Placement { color, set_cookie }
            }
        }
    }

    /// Each color's share in percent.
    pub fn weights(&self) -> bgproxy_control::api::Weights {
        bgproxy_control::api::Weights::new(self.live.other(), self.canary)
    }

    /// The app's own pool of `color` (requests matching no route).
    pub fn pool(&self, color: Color) -> &Arc<Pool> {
        &self.pools[color.index()]
    }

    /// This instance's counters of the app's own pools, by color
    /// ([`Color::index`]): what analysis and the traffic numbers read.
    pub fn counts(&self) -> [crate::metrics::Counts; 2] {
        Color::ALL.map(|c| self.pool(c).metrics.counts())
    }

    /// The pool of `color` of the route at `path_route` (an index from
    /// `self.paths.find`), or the app's own when `None`.
    #[inline]
    pub fn pool_of(&self, path_route: Option<usize>, color: Color) -> &Arc<Pool> {
        match path_route.and_then(|i| self.paths.get(i)) {
            Some(route) => route.pool(color),
            None => self.pool(color),
        }
    }

    /// Every pool of `color`: the app's own, then each route's with its
    /// name (the health gate, status and deploys cover them all).
    pub fn pools_of(&self, color: Color) -> impl Iterator<Item = (Option<&PathRoute>, &Arc<Pool>)> {
        std::iter::once((None, self.pool(color)))
            .chain(self.paths.iter().map(move |r| (Some(r), r.pool(color))))
    }
}

/// Builds the pool of one color of `app`'s `route` (`""`: the app's own)
/// over `addrs`: `old`, the same pool of the previous snapshot, is reused
/// when its upstream list is unchanged, and each of its upstreams that
/// stays, so health, cursors and metric handles carry over.
fn build_pool(
    app: &str,
    route: &str,
    color: Color,
    addrs: &[SocketAddr],
    old: Option<&Arc<Pool>>,
    metrics: &Metrics,
) -> Arc<Pool> {
    if let Some(p) = old.filter(|p| p.upstreams.iter().map(|u| u.addr).eq(addrs.iter().copied())) {
        return p.clone();
    }
    let upstreams = addrs
        .iter()
        .map(|a| {
            old.and_then(|p| p.upstreams.iter().find(|u| u.addr == *a))
                .cloned()
                .unwrap_or_else(|| {
                    Arc::new(Upstream::new(
                        *a,
                        metrics.upstream(app, route, color, &a.to_string()),
                    ))
                })
        })
        .collect();
    // A route's requests count in its app's color: the rollout's analysis
    // judges the whole color, every service of it.
    Arc::new(Pool::new(color, upstreams, metrics.pool(app, color)))
}

/// The whole routing table at one instant.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increases with every published change.
    pub generation: u64,
    pub apps: Vec<AppRoute>,
    /// Lowercase host name -> index into `apps`, and the color a color
    /// host (`[app.preview] blue_hosts`/`green_hosts`) pins.
    hosts: HashMap<Box<str>, (usize, Option<Color>)>,
    /// The app without hosts, if any.
    default_app: Option<usize>,
}

impl Snapshot {
    /// Builds a snapshot of `apps` (host names already lowercase and
    /// validated unique by the config).
    pub fn new(generation: u64, apps: Vec<AppRoute>) -> Self {
        let mut table = HashMap::new();
        let mut default_app = None;
        for (i, app) in apps.iter().enumerate() {
            if app.config.hosts.is_empty() {
                default_app = Some(i);
            }
            for h in &app.config.hosts {
                table.insert(h.as_str().into(), (i, None));
            }
            for color in Color::ALL {
                for h in &app.config.preview.hosts[color.index()] {
                    table.insert(h.as_str().into(), (i, Some(color)));
                }
            }
        }
        Snapshot {
            generation,
            apps,
            hosts: table,
            default_app,
        }
    }

    /// Builds the routing of `apps`, each live on `live(name)`. From `prev`
    /// it reuses every pool whose upstream list is unchanged and every
    /// upstream that stays in its app and color, so observed health,
    /// round-robin cursors and metric handles carry over a reload.
    pub fn build<S: Into<Split>>(
        generation: u64,
        apps: &[Arc<AppConfig>],
        split: impl Fn(&str) -> S,
        prev: Option<&Snapshot>,
        metrics: &Metrics,
    ) -> Snapshot {
        let routes = apps
            .iter()
            .map(|app| {
                let old = prev.and_then(|p| p.app_index(&app.name).map(|i| &p.apps[i]));
                let pools = Color::ALL.map(|c| {
                    let old_pool = old.map(|o| o.pool(c));
                    build_pool(&app.name, "", c, app.upstreams(c), old_pool, metrics)
                });
                let paths = app
                    .routes
                    .iter()
                    .map(|r| {
                        let old_route = old.and_then(|o| o.paths.by_name(&r.name));
                        PathRoute {
                            name: r.name.as_str().into(),
                            prefix: r.path_prefix.as_str().into(),
                            strip: r.strip_prefix,
                            pools: Color::ALL.map(|c| {
                                let old_pool = old_route.map(|o| o.pool(c));
                                build_pool(&app.name, &r.name, c, r.upstreams(c), old_pool, metrics)
                            }),
                            config: Arc::new(r.clone()),
                        }
                    })
                    .collect();
                let rate_limit = app.rate_limit.as_ref().map(|config| {
                    old.and_then(|o| o.rate_limit.as_ref())
                        .filter(|l| l.config() == config)
                        .cloned()
                        .unwrap_or_else(|| {
                            let (refused, keys) = metrics.rate_limit(&app.name);
                            Arc::new(RateLimit::new(config, refused, keys))
                        })
                });
                let Split { live, canary } = split(&app.name).into();
                let mirror = old.map_or_else(
                    || Arc::new(MirrorState::new(metrics, &app.name)),
                    |o| o.mirror.clone(),
                );
                AppRoute {
                    name: app.name.as_str().into(),
                    live,
                    canary,
                    pools,
                    config: app.clone(),
                    preview: app
                        .preview
                        .token
                        .as_ref()
                        .map(|t| Arc::new(PreviewKey::new(&app.name, t))),
                    mirror,
                    paths: Arc::new(PathRoutes::new(paths)),
                    rate_limit,
                }
            })
            .collect();
        Snapshot::new(generation, routes)
    }

    /// A copy with one app's live color changed (and its split ended) and
    /// the generation bumped. Pools are shared, so health and cursors carry
    /// over.
    pub fn with_live(&self, app: usize, live: Color) -> Snapshot {
        self.with_split(app, live.into())
    }

    /// A copy with one app's split changed and the generation bumped.
    pub fn with_split(&self, app: usize, split: Split) -> Snapshot {
        let mut apps = self.apps.clone();
        apps[app].live = split.live;
        apps[app].canary = split.canary.min(100);
        Snapshot {
            generation: self.generation + 1,
            apps,
            hosts: self.hosts.clone(),
            default_app: self.default_app,
        }
    }

    /// Index of the app named `name`.
    pub fn app_index(&self, name: &str) -> Option<usize> {
        self.apps.iter().position(|a| &*a.name == name)
    }

    /// The app named `name`.
    pub fn app(&self, name: &str) -> Option<&AppRoute> {
        self.apps.iter().find(|a| &*a.name == name)
    }

    /// The app serving `host` (a Host header or `:authority`, with or without
    /// port, any case); the default app when no host matches.
    ///
    /// Allocation-free: lowercase hosts hit directly, others are lowercased
    /// into a stack buffer.
    pub fn app_for_host(&self, host: Option<&[u8]>) -> Option<usize> {
        self.route_for_host(host).map(|(app, _)| app)
    }

    /// [`Snapshot::app_for_host`], and the color `host` pins when it is one
    /// of the app's color hosts.
    pub fn route_for_host(&self, host: Option<&[u8]>) -> Option<(usize, Option<Color>)> {
        let default = self.default_app.map(|app| (app, None));
        let Some(host) = host else {
            return default;
        };
        let host = strip_port(host);
        let found = match std::str::from_utf8(host) {
            Ok(h) if !h.bytes().any(|b| b.is_ascii_uppercase()) => self.hosts.get(h).copied(),
            Ok(_) if host.len() <= 253 => {
                let mut buf = [0u8; 253];
                let lower = &mut buf[..host.len()];
                lower.copy_from_slice(host);
                lower.make_ascii_lowercase();
                std::str::from_utf8(lower)
                    .ok()
                    .and_then(|h| self.hosts.get(h).copied())
            }
            _ => None,
        };
        found.or(default)
    }
}

/// One request's routing: the snapshot loaded for it and the app its Host
/// matched there.
///
/// Built once per request, by the front door when it reads the request head
/// or else by `request_filter`, and carried in the request's context: every
/// later hook reads this snapshot, so a reload in the middle of a request
/// cannot route one half of it by the old table and the other by the new.
#[derive(Clone, Debug)]
pub struct Routed {
    pub snapshot: Arc<Snapshot>,
    /// Index into `snapshot.apps`; `None` when no app serves the host.
    pub app: Option<usize>,
    /// The color the Host pins (a color host), whatever is live.
    pub host_color: Option<Color>,
}

impl Routed {
    /// Loads `routing` (the one load of a request) and finds the app of
    /// `host` in it.
    pub fn load(routing: &Routing, host: Option<&[u8]>) -> Routed {
        Routed::by(routing.load_full(), host)
    }

    /// The app of `host` in `snapshot` ([`Snapshot::app_for_host`]).
    pub fn by(snapshot: Arc<Snapshot>, host: Option<&[u8]>) -> Routed {
        let (app, host_color) = snapshot.route_for_host(host).unzip();
        Routed {
            snapshot,
            app,
            host_color: host_color.flatten(),
        }
    }

    /// The routing of the matched app; `None` when no app serves the host.
    pub fn route(&self) -> Option<&AppRoute> {
        self.app.and_then(|i| self.snapshot.apps.get(i))
    }
}

/// `example.net:8080` -> `example.net`; `[::1]:80` -> `[::1]`; a trailing
/// dot is dropped too (`example.net.`).
pub fn strip_port(host: &[u8]) -> &[u8] {
    let host = if host.first() == Some(&b'[') {
        match host.iter().position(|&b| b == b']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        match host.iter().rposition(|&b| b == b':') {
            Some(colon) => &host[..colon],
            None => host,
        }
    };
    host.strip_suffix(b".").unwrap_or(host)
}

#[cfg(test)]
pub(crate) mod testing {
    //! Apps and snapshots for the data plane's unit tests.

    use super::*;

    /// An app named `name` serving `hosts` (none: the default app), with
    /// upstreams on 127.0.0.1 at the `blue` and `green` ports.
    pub fn app(name: &str, hosts: &[&str], blue: &[u16], green: &[u16]) -> Arc<AppConfig> {
        let addrs = |ports: &[u16]| {
            ports
                .iter()
                .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
                .collect()
        };
        Arc::new(AppConfig {
            name: name.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            initial_live: Color::Blue,
            redirect_https: false,
            max_body: 1 << 20,
            connect_timeout: std::time::Duration::from_secs(1),
            read_timeout: std::time::Duration::from_secs(1),
            h2: false,
            drain_timeout: None,
            tunnel_timeout: None,
            health: Default::default(),
            pools: [addrs(blue), addrs(green)],
            deploy: Default::default(),
            rollout: Default::default(),
            analysis: Default::default(),
            preview: Default::default(),
            mirror: Default::default(),
            verify: Vec::new(),
            routes: Vec::new(),
            rate_limit: None,
        })
    }

    /// The routing of `apps`, all live on blue.
    pub fn snapshot(apps: &[Arc<AppConfig>], prev: Option<&Snapshot>) -> Snapshot {
        Snapshot::build(1, apps, |_| Color::Blue, prev, &Metrics::new())
    }
}

/// The bucket in a `bgproxy_bucket` cookie, if the request sends a valid
/// one.
fn cookie_bucket(req: &pingora::http::RequestHeader) -> Option<u16> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let value = pair
                .strip_prefix(BUCKET_COOKIE.as_bytes())?
                .strip_prefix(b"=")?;
            let n: u16 = std::str::from_utf8(value).ok()?.parse().ok()?;
            (n < BUCKETS).then_some(n)
        })
}

/// A client address's bucket: the same address, the same bucket.
fn ip_bucket(ip: IpAddr) -> u16 {
    // SipHash with fixed keys: stable across requests and restarts.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    ip.hash(&mut h);
    (h.finish() % u64::from(BUCKETS)) as u16
}

/// A fresh, evenly spread bucket: a counter through splitmix64, seeded at
/// first use. Lock-free.
fn draw_bucket() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut x = NEXT.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    if x == 0 {
        // First draw of the process: start from the clock, so two
        // processes do not hand out the same sequence.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        NEXT.fetch_add(seed, Ordering::Relaxed);
        x = seed;
    }
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x % u64::from(BUCKETS)) as u16
}

#[cfg(test)]
mod tests {
    use super::testing::{app, snapshot};
    use super::*;

    fn detached_gauge() -> prometheus::IntGauge {
        prometheus::IntGauge::new("g", "g").unwrap()
    }

    fn pool(n: u16) -> Pool {
        Pool::new(
            Color::Blue,
            (0..n)
                .map(|i| {
                    Arc::new(Upstream::new(
                        SocketAddr::from(([127, 0, 0, 1], 1000 + i)),
                        detached_gauge(),
                    ))
                })
                .collect(),
            PoolMetrics::detached(),
        )
    }

    fn port(p: Option<Pick<'_>>) -> (u16, bool) {
        let p = p.expect("a pick");
        (p.upstream.addr.port(), p.panic)
    }

    #[test]
    fn round_robin_skips_down_and_panics_when_all_down() {
        let p = pool(3);
        let seq: Vec<u16> = (0..6).map(|_| port(p.pick(None)).0).collect();
        assert_eq!(seq, [1000, 1001, 1002, 1000, 1001, 1002]);

        p.upstreams[1].health.set(Health::Down);
        let seq: Vec<u16> = (0..4).map(|_| port(p.pick(None)).0).collect();
        assert!(!seq.contains(&1001), "{seq:?}");

        for u in p.upstreams.iter() {
            u.health.set(Health::Down);
        }
        let picks: Vec<(u16, bool)> = (0..3).map(|_| port(p.pick(None))).collect();
        assert!(picks.iter().all(|(_, panic)| *panic));
        assert_eq!(
            picks
                .iter()
                .map(|p| p.0)
                .collect::<std::collections::HashSet<_>>()
                .len(),
            3
        );
    }

    #[test]
    fn exclusion_for_retries() {
        let p = pool(2);
        let ex = p.upstreams[0].addr;
        for _ in 0..4 {
            assert_eq!(port(p.pick(Some(ex))).0, 1001);
        }
        let single = pool(1);
        assert!(single.pick(Some(single.upstreams[0].addr)).is_none());
    }

    #[test]
    fn all_up_needs_every_upstream_observed_up() {
        let p = pool(2);
        assert!(!p.all_up(), "unknown is not healthy");
        p.upstreams[0].health.set(Health::Up);
        assert!(!p.all_up());
        p.upstreams[1].health.set(Health::Up);
        assert!(p.all_up());
    }

    #[test]
    fn build_reuses_unchanged_pools_and_staying_upstreams() {
        let s1 = snapshot(&[app("a", &["a.example"], &[1, 2], &[3])], None);
        s1.apps[0].pools[0].upstreams[0].health.set(Health::Up);
        let s2 = snapshot(
            &[
                app("a", &["a.example"], &[1, 2, 4], &[3]),
                app("b", &["b.example"], &[5], &[6]),
            ],
            Some(&s1),
        );
        let (old, new) = (&s1.apps[0], &s2.apps[0]);
        assert!(
            Arc::ptr_eq(old.pool(Color::Green), new.pool(Color::Green)),
            "unchanged pool kept"
        );
        assert!(
            !Arc::ptr_eq(old.pool(Color::Blue), new.pool(Color::Blue)),
            "changed pool rebuilt"
        );
        assert!(
            Arc::ptr_eq(&old.pools[0].upstreams[0], &new.pools[0].upstreams[0]),
            "upstream kept"
        );
        assert_eq!(
            new.pools[0].upstreams[0].health.get(),
            Health::Up,
            "its health too"
        );
        assert_eq!(
            new.pools[0].upstreams[2].health.get(),
            Health::Unknown,
            "a new upstream starts unknown"
        );
        assert_eq!(s2.app_for_host(Some(b"b.example")), Some(1));
    }

    fn with_route(blue: u16, green: u16, strip: bool) -> Arc<AppConfig> {
        let mut a = (*app("a", &["a.example"], &[1], &[2])).clone();
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        a.routes = vec![crate::config::RouteConfig {
            name: "api".into(),
            path_prefix: "/api/".into(),
            strip_prefix: strip,
            health: Default::default(),
            pools: [vec![addr(blue)], vec![addr(green)]],
        }];
        a.rate_limit = Some(crate::config::RateLimitConfig {
            requests_per_second: std::num::NonZeroU32::new(5).unwrap(),
            burst: std::num::NonZeroU32::new(5).unwrap(),
            key: crate::config::RateLimitKey::ClientIp,
            max_keys: 10,
        });
        Arc::new(a)
    }

    #[test]
    fn routes_pools_follow_the_color_and_carry_over_a_reload() {
        let s1 = snapshot(&[with_route(3, 4, false)], None);
        let a = &s1.apps[0];
        let api = a.paths.find("/api/items");
        assert_eq!(api, Some(0));
        assert_eq!(a.pool_of(api, Color::Green).upstreams[0].addr.port(), 4);
        assert_eq!(a.pool_of(None, Color::Green).upstreams[0].addr.port(), 2);
        assert_eq!(
            a.pool_of(a.paths.find("/"), Color::Blue).upstreams[0]
                .addr
                .port(),
            1
        );
        let ports = |c| {
            a.pools_of(c)
                .map(|(r, p)| (r.map(|r| &*r.name), p.upstreams[0].addr.port()))
                .collect::<Vec<_>>()
        };
        assert_eq!(ports(Color::Blue), [(None, 1), (Some("api"), 3)]);
        a.paths.get(0).unwrap().pool(Color::Blue).upstreams[0]
            .health
            .set(Health::Up);

        // A reload that changes only the route's strip keeps its pools (and
        // their health) and the rate limit's buckets.
        let s2 = snapshot(&[with_route(3, 4, true)], Some(&s1));
        let (old, new) = (&s1.apps[0], &s2.apps[0]);
        let pool = |r: &AppRoute, c| r.paths.get(0).unwrap().pool(c).clone();
        assert!(Arc::ptr_eq(
            &pool(old, Color::Blue),
            &pool(new, Color::Blue)
        ));
        assert_eq!(pool(new, Color::Blue).upstreams[0].health.get(), Health::Up);
        assert!(new.paths.get(0).unwrap().strip);
        let limit = |r: &AppRoute| r.rate_limit.clone().unwrap();
        assert!(Arc::ptr_eq(&limit(old), &limit(new)));
        // A new green upstream for the route: a new pool, blue's kept.
        let s3 = snapshot(&[with_route(3, 5, true)], Some(&s2));
        assert!(!Arc::ptr_eq(
            &pool(new, Color::Green),
            &pool(&s3.apps[0], Color::Green)
        ));
        assert!(Arc::ptr_eq(
            &pool(new, Color::Blue),
            &pool(&s3.apps[0], Color::Blue)
        ));
        // A switch moves the app and its route in the same snapshot.
        let s4 = s3.with_live(0, Color::Green);
        assert_eq!(s4.apps[0].live, Color::Green);
        assert!(Arc::ptr_eq(&s3.apps[0].paths, &s4.apps[0].paths));
    }

    #[test]
    fn host_lookup() {
        let s = snapshot(
            &[
                app("a", &["a.example"], &[1], &[2]),
                app("b", &[], &[3], &[4]),
            ],
            None,
        );
        assert_eq!(s.app_for_host(Some(b"a.example")), Some(0));
        assert_eq!(s.app_for_host(Some(b"A.Example:8080")), Some(0));
        assert_eq!(s.app_for_host(Some(b"a.example.")), Some(0));
        assert_eq!(s.app_for_host(Some(b"other")), Some(1));
        assert_eq!(s.app_for_host(None), Some(1));
        assert_eq!(s.app_for_host(Some(&[0xff, 0xfe])), Some(1));
        let s = snapshot(&[app("a", &["a.example"], &[1], &[2])], None);
        assert_eq!(s.app_for_host(Some(b"b.example")), None);
        assert_eq!(s.app_for_host(Some(b"[::1]:80")), None);
        let s2 = s.with_live(0, Color::Green);
        assert!(Arc::ptr_eq(&s.apps[0].mirror, &s2.apps[0].mirror));
        assert_eq!(
            (s2.generation, s2.apps[0].live, s.apps[0].live),
            (s.generation + 1, Color::Green, Color::Blue)
        );
        assert!(Arc::ptr_eq(&s.apps[0].pools[0], &s2.apps[0].pools[0]));
    }

    #[test]
    fn color_hosts_pin_their_color_and_preview_picks_only_up() {
        let mut a = (*app("a", &["a.example"], &[1, 2], &[3])).clone();
        a.preview.hosts = [
            vec!["blue.a.example".into()],
            vec!["green.a.example".into()],
        ];
        let s1 = snapshot(&[Arc::new(a.clone()), app("b", &[], &[4], &[5])], None);
        assert_eq!(s1.route_for_host(Some(b"a.example")), Some((0, None)));
        assert_eq!(
            s1.route_for_host(Some(b"Green.A.example:80")),
            Some((0, Some(Color::Green)))
        );
        assert_eq!(
            s1.route_for_host(Some(b"blue.a.example")),
            Some((0, Some(Color::Blue)))
        );
        assert_eq!(s1.route_for_host(Some(b"other")), Some((1, None)));
        let routed = Routed::by(
            Arc::new(s1.with_live(0, Color::Green)),
            Some(b"blue.a.example"),
        );
        assert_eq!(
            (routed.app, routed.host_color),
            (Some(0), Some(Color::Blue))
        );

        // The mirror state outlives a reload, like the pools.
        let s2 = snapshot(&[Arc::new(a)], Some(&s1));
        assert!(Arc::ptr_eq(&s1.apps[0].mirror, &s2.apps[0].mirror));

        let blue = s2.apps[0].pool(Color::Blue);
        assert!(
            blue.pick_up(None).is_none() && !blue.any_up(),
            "unknown is not up"
        );
        blue.upstreams[1].health.set(Health::Up);
        assert!(blue.any_up());
        for _ in 0..3 {
            assert_eq!(blue.pick_up(None).unwrap().addr.port(), 2);
        }
        assert!(blue.pick_up(Some(blue.upstreams[1].addr)).is_none());
    }
}
