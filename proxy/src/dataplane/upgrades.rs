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
//! duplicate of the socket. When the upstream answers 101, the duplicate is
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
/// duplicate of its socket for [`Upgrades::register`].
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

    /// The duplicate of the connected socket, once.
    pub fn take(&self) -> Option<std::net::TcpStream> {
        self.socket.lock().ok()?.take()
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
    socket: std::net::TcpStream,
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

    /// Registers the upgraded connection of `app`'s `color` held by `socket`.
    pub fn register(
        self: &Arc<Self>,
        app: Arc<str>,
        color: Color,
        drain_timeout: Option<Duration>,
        socket: std::net::TcpStream,
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
                    socket,
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
                let _ = c.socket.shutdown(Shutdown::Both);
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
