//! Upgraded (WebSocket) connections and their drain after a switch.
//!
//! A switch moves every new request to the new color at once, but an
//! upgraded connection is one long request: it stays on the color it was
//! routed to. Operators want those to finish on their own for a while, and
//! then to end, so that the old color can be stopped or redeployed. The
//! app's `drain_timeout` (default 30s, `0` = never) is that while.
//!
//! How a connection is tracked, and why this way: pingora 0.9 has no handle
//! to end a running upgraded (duplex) session from outside. So the data plane
//! opens the upstream TCP connection of an upgrade request itself
//! ([`UpgradeConnector`], pingora's custom L4 connect hook) and keeps a
//! duplicate of the socket. When the upstream answers 101, the connector is
//! registered in [`Upgrades`] with the app and color; the request's
//! [`Registration`] takes it out again when the request ends. The
//! [`DrainService`] looks every [`TICK`] at each registered connection whose
//! color is not live; once the color has been standby for `drain_timeout`,
//! it shuts the upstream socket down. pingora then sees the upstream end the
//! upgraded stream and closes the client connection, after a WebSocket
//! close frame (1001, going away) that the data plane adds, so the client
//! reconnects - to the live color.
//!
//! Holding the duplicate (not the raw fd number) also means the number can
//! never be reused by another connection while it is registered.
//!
//! Timeouts of an upgrade request ([`UpstreamIdle`]): until the upstream
//! answers 101, it is an ordinary request, bound by the app's
//! `read_timeout` (and the client by `client_timeout`); only once upgraded
//! does `tunnel_timeout` take over. pingora fixes an upstream connection's
//! read timeout when it sends the request and offers no hook to change it
//! after the 101, so for upgrade requests the data plane leaves pingora's
//! unset and keeps the upstream side's idle limit itself: a timer per
//! request that shuts the upstream socket down (through the duplicate) when
//! nothing came from the upstream for the limit in force.
//! Nothing here is on the path of ordinary requests.

use std::collections::HashMap;
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bgproxy_control::api::Color;
use pingora::connectors::L4Connect;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::protocols::l4::stream::Stream;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::{Error, ErrorType};
use tracing::info;

use crate::dataplane::routing::Routing;
use crate::metrics::Metrics;

/// How often the drain looks at the registered connections.
pub const TICK: Duration = Duration::from_millis(250);

/// A WebSocket close frame from the server: opcode close, status 1001
/// ("going away"). Sent to the client when a drain ends its connection.
pub const WS_GOING_AWAY: &[u8] = &[0x88, 0x02, 0x03, 0xE9];

/// Opens the upstream connection of one upgrade request and keeps a
/// duplicate of its socket, so that the drain ([`Upgrades`]) and the idle
/// limit ([`UpstreamIdle`]) can end it.
#[derive(Debug)]
pub struct UpgradeConnector {
    timeout: Duration,
    socket: Mutex<Option<std::net::TcpStream>>,
}

impl UpgradeConnector {
    /// A connector that gives up connecting after `timeout` (the app's
    /// `connect_timeout`: pingora does not apply it to a custom connector).
    pub fn new(timeout: Duration) -> Self {
        UpgradeConnector {
            timeout,
            socket: Mutex::new(None),
        }
    }

    /// Ends the upstream connection (both ways); pingora then sees the
    /// upstream close it. Nothing happens before it is connected.
    pub fn shutdown(&self) {
        if let Some(socket) = self.socket.lock().ok().as_ref().and_then(|s| s.as_ref()) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

#[async_trait]
impl L4Connect for UpgradeConnector {
    async fn connect(&self, addr: &PingoraAddr) -> pingora::Result<Stream> {
        let PingoraAddr::Inet(inet) = addr else {
            return Error::e_explain(ErrorType::ConnectError, "upstreams are TCP addresses");
        };
        let connected = tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(inet))
            .await
            .map_err(|_| {
                Error::explain(
                    ErrorType::ConnectTimedout,
                    format!("timeout {:?} connecting to {inet}", self.timeout),
                )
            })?;
        let tcp = connected.map_err(|e| {
            let kind = if e.kind() == std::io::ErrorKind::ConnectionRefused {
                ErrorType::ConnectRefused
            } else {
                ErrorType::ConnectError
            };
            Error::because(kind, format!("failed to connect to {inet}"), e)
        })?;
        let io = |e| Error::because(ErrorType::SocketError, "duplicating the upstream socket", e);
        let std = tcp.into_std().map_err(io)?;
        let duplicate = std.try_clone().map_err(io)?;
        let tcp = tokio::net::TcpStream::from_std(std).map_err(io)?;
        if let Ok(mut slot) = self.socket.lock() {
            *slot = Some(duplicate);
        }
        Ok(tcp.into())
    }
}

/// One registered upgraded connection.
struct Upgraded {
    app: Arc<str>,
    color: Color,
    /// The app's `drain_timeout` when the connection was made: used if a
    /// reload removes the app while the connection is open.
    drain_timeout: Option<Duration>,
    /// Holds the duplicate of the upstream socket.
    connector: Arc<UpgradeConnector>,
    /// Set when the drain ended it (read by the data plane).
    drained: Arc<AtomicBool>,
}

/// Every upgraded connection of the front door, by registration id.
#[derive(Default)]
pub struct Upgrades {
    next: AtomicU64,
    conns: Mutex<HashMap<u64, Upgraded>>,
}

/// Keeps one connection registered; dropping it (when the request ends,
/// whatever way) takes the connection out.
pub struct Registration {
    upgrades: Arc<Upgrades>,
    id: u64,
    drained: Arc<AtomicBool>,
}

impl Registration {
    /// Whether the drain ended this connection.
    pub fn drained(&self) -> bool {
        self.drained.load(Ordering::Acquire)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut conns) = self.upgrades.conns.lock() {
            conns.remove(&self.id);
        }
    }
}

impl Upgrades {
    /// A key no other request uses: an upgrade request's peer gets its own
    /// connection-pool group, so it never takes a pooled connection (which
    /// the connector did not open) and nothing reuses its connection.
    pub fn unique_key(&self) -> u64 {
        // The high bit keeps these apart from the default group (0).
        self.next.fetch_add(1, Ordering::Relaxed) | (1 << 63)
    }

    /// Registers the upgraded connection of `app`'s `color` opened by
    /// `connector`.
    pub fn register(
        self: &Arc<Self>,
        app: Arc<str>,
        color: Color,
        drain_timeout: Option<Duration>,
        connector: Arc<UpgradeConnector>,
    ) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let drained = Arc::new(AtomicBool::new(false));
        if let Ok(mut conns) = self.conns.lock() {
            conns.insert(
                id,
                Upgraded {
                    app,
                    color,
                    drain_timeout,
                    connector,
                    drained: drained.clone(),
                },
            );
        }
        Registration {
            upgrades: self.clone(),
            id,
            drained,
        }
    }

    /// How many upgraded connections are open.
    pub fn len(&self) -> usize {
        self.conns.lock().map_or(0, |c| c.len())
    }

    /// True when no upgraded connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends every connection whose color has not been live for its app's
    /// drain timeout. `standby_since` is kept by the caller between calls:
    /// when each (app, color) was first seen not live. Returns how many
    /// connections were ended, per app and color.
    fn drain(
        &self,
        routing: &Routing,
        standby_since: &mut HashMap<(Arc<str>, Color), Instant>,
        now: Instant,
    ) -> Vec<(Arc<str>, Color, usize)> {
        let snapshot = routing.load();
        for app in &snapshot.apps {
            standby_since.remove(&(app.name.clone(), app.live));
            standby_since
                .entry((app.name.clone(), app.live.other()))
                .or_insert(now);
        }
        let Ok(conns) = self.conns.lock() else {
            return Vec::new();
        };
        let mut ended: HashMap<(Arc<str>, Color), usize> = HashMap::new();
        for c in conns.values() {
            if c.drained.load(Ordering::Acquire) {
                continue;
            }
            let route = snapshot.app(&c.app);
            if route.is_some_and(|r| r.live == c.color) {
                continue;
            }
            // An app a reload removed: its colors are no longer live.
            let since = *standby_since.entry((c.app.clone(), c.color)).or_insert(now);
            let timeout = route.map_or(c.drain_timeout, |r| r.config.drain_timeout);
            if timeout.is_some_and(|t| now.duration_since(since) >= t) {
                c.drained.store(true, Ordering::Release);
                // Ends the upstream side; pingora then ends the client side.
                c.connector.shutdown();
                *ended.entry((c.app.clone(), c.color)).or_default() += 1;
            }
        }
        // Forget removed apps once their last connection is gone.
        standby_since.retain(|(app, color), _| {
            snapshot.app(app).is_some()
                || conns.values().any(|c| c.app == *app && c.color == *color)
        });
        ended.into_iter().map(|((a, c), n)| (a, c, n)).collect()
    }
}

/// The idle limit of the upstream side of one upgrade request: the app's
/// `read_timeout` until the upstream answers 101, its `tunnel_timeout` from
/// then on. A timer task shuts the upstream connection down once nothing
/// came from the upstream for the limit in force; dropping this (when the
/// request ends) stops the timer.
///
/// Activity is what the data plane sees pass (the response header, each
/// piece of body or tunnel data), so a client that stops reading, and so
/// stops the upstream from being read, counts as an idle upstream too.
pub struct UpstreamIdle {
    state: Arc<IdleState>,
    timer: tokio::task::AbortHandle,
}

struct IdleState {
    connector: Arc<UpgradeConnector>,
    start: Instant,
    /// Milliseconds from `start` to the last activity.
    last: AtomicU64,
    /// The limit in force, in milliseconds; [`NO_LIMIT`] for none.
    limit: AtomicU64,
    /// Wakes the timer when the limit changes (it may now be due sooner).
    changed: tokio::sync::Notify,
    fired: AtomicBool,
}

const NO_LIMIT: u64 = u64::MAX;

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(NO_LIMIT - 1)
}

impl IdleState {
    fn since_start(&self) -> u64 {
        millis(self.start.elapsed())
    }

    /// When the connection is due to be ended, if nothing comes before.
    fn due(&self) -> Option<Instant> {
        let limit = self.limit.load(Ordering::Acquire);
        (limit != NO_LIMIT).then(|| {
            let last = self.last.load(Ordering::Acquire);
            self.start + Duration::from_millis(last.saturating_add(limit))
        })
    }
}

impl UpstreamIdle {
    /// Starts the timer for the upstream connection of `connector`, with
    /// `limit` (the app's `read_timeout`) from now. Must run inside the
    /// data plane's runtime.
    pub fn start(connector: Arc<UpgradeConnector>, limit: Duration) -> Self {
        let state = Arc::new(IdleState {
            connector,
            start: Instant::now(),
            last: AtomicU64::new(0),
            limit: AtomicU64::new(millis(limit)),
            changed: tokio::sync::Notify::new(),
            fired: AtomicBool::new(false),
        });
        let watched = state.clone();
        let timer = tokio::spawn(async move {
            // Each wake-up re-reads the deadline: activity since the last
            // one has moved it later.
            while let Some(due) = watched.due() {
                if Instant::now() >= due {
                    watched.fired.store(true, Ordering::Release);
                    watched.connector.shutdown();
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(due.into()) => {}
                    _ = watched.changed.notified() => {}
                }
            }
        })
        .abort_handle();
        UpstreamIdle { state, timer }
    }

    /// Something came from the upstream: the idle time starts again.
    pub fn touch(&self) {
        self.state
            .last
            .store(self.state.since_start(), Ordering::Release);
    }

    /// The upstream answered 101: from now on `tunnel` (the app's
    /// `tunnel_timeout`; `None`: no limit) applies.
    pub fn upgraded(&self, tunnel: Option<Duration>) {
        self.touch();
        self.state
            .limit
            .store(tunnel.map_or(NO_LIMIT, millis), Ordering::Release);
        self.state.changed.notify_one();
    }

    /// Whether the limit ended the connection.
    pub fn fired(&self) -> bool {
        self.state.fired.load(Ordering::Acquire)
    }
}

impl Drop for UpstreamIdle {
    fn drop(&mut self) {
        self.timer.abort();
    }
}

/// The background service that ends upgraded connections of a color that
/// has been standby for longer than its app's `drain_timeout`.
pub struct DrainService {
    pub routing: Routing,
    pub upgrades: Arc<Upgrades>,
    pub metrics: Arc<Metrics>,
}

#[async_trait]
impl BackgroundService for DrainService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut standby_since = HashMap::new();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let now = Instant::now();
            for (app, color, n) in self.upgrades.drain(&self.routing, &mut standby_since, now) {
                self.metrics.drained(&app, color, n as u64);
                info!(app = %app, color = %color, closed = n, "drain_timeout passed: closed upgraded connections of the standby color");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// An upstream on loopback and a connection to it through the
    /// connector; returns the upstream's end.
    async fn connected() -> (Arc<UpgradeConnector>, std::net::TcpStream, Stream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = PingoraAddr::Inet(listener.local_addr().unwrap());
        let connector = Arc::new(UpgradeConnector::new(Duration::from_secs(1)));
        let stream = connector.connect(&addr).await.unwrap();
        let (upstream, _) = listener.accept().unwrap();
        upstream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (connector, upstream, stream)
    }

    /// Whether the upstream's end sees the connection closed.
    fn closed(upstream: &mut std::net::TcpStream) -> bool {
        let mut buf = [0u8; 1];
        matches!(upstream.read(&mut buf), Ok(0) | Err(_))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_idle_upstream_is_ended_after_the_limit_and_activity_defers_it() {
        let (connector, mut upstream, _stream) = connected().await;
        let idle = UpstreamIdle::start(connector, Duration::from_millis(300));
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            idle.touch();
        }
        assert!(
            !idle.fired(),
            "activity every 150ms keeps a 300ms limit off"
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(idle.fired());
        assert!(tokio::task::spawn_blocking(move || closed(&mut upstream))
            .await
            .unwrap());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn after_the_101_the_tunnel_limit_applies() {
        let (connector, _upstream, _stream) = connected().await;
        let idle = UpstreamIdle::start(connector, Duration::from_millis(200));
        idle.upgraded(Some(Duration::from_secs(30)));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!idle.fired(), "read_timeout no longer applies");

        let (connector, _upstream, _stream) = connected().await;
        let idle = UpstreamIdle::start(connector, Duration::from_secs(30));
        idle.upgraded(Some(Duration::from_millis(100)));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(idle.fired(), "a shorter tunnel_timeout applies at once");

        let (connector, _upstream, _stream) = connected().await;
        let idle = UpstreamIdle::start(connector, Duration::from_millis(100));
        idle.upgraded(None);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(!idle.fired(), "tunnel_timeout 0: no limit");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn dropping_it_stops_the_timer() {
        let (connector, _upstream, _stream) = connected().await;
        let idle = UpstreamIdle::start(connector.clone(), Duration::from_millis(100));
        let state = idle.state.clone();
        drop(idle);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(!state.fired.load(Ordering::Acquire));
        assert_eq!(Arc::strong_count(&state), 1, "the timer let go of it");
    }
}
