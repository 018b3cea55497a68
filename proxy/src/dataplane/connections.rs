//! The front door's connection limits: at most `proxy.max_connections`
//! client connections at once, and at most `proxy.max_connections_per_ip`
//! from one address. A connection past either limit is closed as it comes,
//! before a byte of it is read, and counted in
//! `bgproxy_connections_refused_total{reason}`; every other connection is
//! served as before, so one client opening connections without end cannot
//! take the front door from the rest.
//!
//! [`Gate`] wraps the front door's pingora application. pingora hands an
//! application each connection once, as it is accepted (the TLS listeners
//! are plain TCP ones: the handshake comes after the gate,
//! `handshake.rs`), and the gate holds an [`Admitted`] for as long as the
//! application serves the connection, its TLS handshake, keep-alive
//! requests, HTTP/2 streams and WebSocket tunnels included.
//!
//! Counting is on the accept path of every connection, so no lock is shared
//! by all of them: the total is one atomic, the per-address counts live in
//! [`SHARDS`] maps, each behind its own lock, chosen by a keyed hash of the
//! address (a client cannot pick which shard it lands in).
//!
//! The tally is also the listeners' connection filter: it counts every
//! connection the kernel hands over, before its TLS handshake, so a drain
//! can tell a connection on its way to the application (accepted, not yet
//! handed over) from none at all ([`Tally::quiet`]). Exiting in that gap
//! closed freshly accepted connections unanswered during upgrades.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::ConnectionFilter;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use prometheus::IntCounter;
use tracing::debug;

use crate::metrics::{Metrics, Refused};

/// How many maps the per-address counts are spread over.
pub const SHARDS: usize = 64;

/// The open client connections, in all and per address, against their
/// limits; and the connections accepted but not yet handed to the
/// application.
#[derive(Debug)]
pub struct Tally {
    max_total: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    shards: Box<[Mutex<HashMap<IpAddr, usize>>]>,
    hasher: std::collections::hash_map::RandomState,
    /// Connections accepted by a listener (before any TLS handshake).
    accepted: AtomicU64,
    /// Connections handed to the application, admitted or refused.
    arrived: AtomicU64,
    /// When the last connection was accepted, in ms after `epoch`.
    last_accept_ms: AtomicU64,
    epoch: Instant,
}

/// One admitted connection: counted until it is dropped.
pub struct Admitted {
    tally: Arc<Tally>,
    ip: Option<IpAddr>,
}

impl Tally {
    /// A tally for at most `max_total` connections, `max_per_ip` of them
    /// from one address.
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Tally> {
        Arc::new(Tally {
            max_total,
            max_per_ip,
            total: AtomicUsize::new(0),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            accepted: AtomicU64::new(0),
            arrived: AtomicU64::new(0),
            last_accept_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// Counts a connection a listener accepted; it is on its way to the
    /// application until [`Tally::admit`] sees it.
    pub fn accepted(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_accept_ms.fetch_max(ms, Ordering::SeqCst);
        self.accepted.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether no client connection is open and none is on its way in.
    /// A connection accepted but not yet handed over (its task not yet run)
    /// counts as on its way for `arrival_wait` after the last accept, in
    /// case one never arrives.
    pub fn quiet(&self, arrival_wait: Duration) -> bool {
        // In this order: a connection counts in `total` before it counts as
        // arrived, so one seen arriving is seen open (or already closed).
        let accepted = self.accepted.load(Ordering::SeqCst);
        let arrived = self.arrived.load(Ordering::SeqCst);
        if self.total.load(Ordering::SeqCst) != 0 {
            return false;
        }
        let since_accept = self.epoch.elapsed().saturating_sub(Duration::from_millis(
            self.last_accept_ms.load(Ordering::SeqCst),
        ));
        arrived >= accepted || since_accept > arrival_wait
    }

    /// Counts a new connection from `ip` (`None`: not an IP client, only
    /// the total applies), or says which limit it would pass.
    pub fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Admitted, Refused> {
        let admitted = self.count(ip);
        // After the count: see `quiet`.
        self.arrived.fetch_add(1, Ordering::SeqCst);
        admitted
    }

    fn count(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Admitted, Refused> {
        // Taken first and given back on refusal: two connections racing for
        // the last place cannot both get it.
        if self.total.fetch_add(1, Ordering::SeqCst) >= self.max_total {
            self.total.fetch_sub(1, Ordering::SeqCst);
            return Err(Refused::MaxConnections);
        }
        // An IPv4 client on a dual-stack socket counts as its IPv4 address.
        let ip = ip.map(|ip| ip.to_canonical());
        if let Some(ip) = ip {
            let mut counts = self.shard(ip);
            let count = counts.entry(ip).or_insert(0);
            if *count >= self.max_per_ip {
                drop(counts);
                self.total.fetch_sub(1, Ordering::SeqCst);
                return Err(Refused::MaxConnectionsPerIp);
            }
            *count += 1;
        }
        Ok(Admitted {
            tally: self.clone(),
            ip,
        })
    }

    /// Connections open now, in all.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Connections open now from `ip`.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        let ip = ip.to_canonical();
        self.shard(ip).get(&ip).copied().unwrap_or(0)
    }

    fn shard(&self, ip: IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        let i = self.hasher.hash_one(ip) as usize % SHARDS;
        // A panic while holding a shard cannot leave a count half-written
        // (one integer store), so a poisoned lock is still right to use.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut counts = self.tally.shard(ip);
            if let Some(count) = counts.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&ip);
                }
            }
        }
        self.tally.total.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The listeners' filter: every connection is accepted, and counted.
#[async_trait]
impl ConnectionFilter for Tally {
    async fn should_accept(&self, _addr: Option<&std::net::SocketAddr>) -> bool {
        self.accepted();
        true
    }
}

/// A pingora application behind the connection limits: `app` serves every
/// connection the [`Tally`] admits; the others are closed at once.
pub struct Gate<A> {
    app: Arc<A>,
    tally: Arc<Tally>,
    /// Indexed like [`Refused::ALL`].
    refused: [IntCounter; 2],
}

impl<A> Gate<A> {
    /// `app` behind `tally`, counting refusals in `metrics`.
    pub fn new(app: A, tally: Arc<Tally>, metrics: &Metrics) -> Self {
        Gate {
            app: Arc::new(app),
            tally,
            refused: Refused::ALL.map(|r| metrics.refused(r)),
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Gate<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let ip = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let _admitted = match self.tally.admit(ip) {
            Ok(admitted) => admitted,
            Err(reason) => {
                let i = Refused::ALL.iter().position(|r| *r == reason).unwrap_or(0);
                self.refused[i].inc();
                debug!(client = ?ip, reason = reason.as_str(), "connection refused");
                // Dropping the stream closes it, unread.
                return None;
            }
        };
        self.app.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.app.cleanup().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn per_address_limit_refuses_only_that_address() {
        let tally = Tally::new(10, 2);
        let a1 = tally.admit(ip("10.0.0.1")).unwrap();
        let _a2 = tally.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(
            tally.admit(ip("10.0.0.1")).err(),
            Some(Refused::MaxConnectionsPerIp)
        );
        // The same client over an IPv4-mapped IPv6 address is the same.
        assert_eq!(
            tally.admit(ip("::ffff:10.0.0.1")).err(),
            Some(Refused::MaxConnectionsPerIp)
        );
        let _b = tally.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(
            (tally.open(), tally.open_from("10.0.0.1".parse().unwrap())),
            (3, 2)
        );
        drop(a1);
        let _a3 = tally.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(tally.open(), 3);
    }

    #[test]
    fn total_limit_refuses_everyone_until_one_closes() {
        let tally = Tally::new(2, 5);
        let a = tally.admit(ip("10.0.0.1")).unwrap();
        let _b = tally.admit(None).unwrap();
        assert_eq!(
            tally.admit(ip("10.0.0.3")).err(),
            Some(Refused::MaxConnections)
        );
        assert_eq!(tally.admit(None).err(), Some(Refused::MaxConnections));
        assert_eq!(tally.open(), 2, "refusals leave no count behind");
        drop(a);
        assert_eq!(tally.open_from("10.0.0.1".parse().unwrap()), 0);
        let _c = tally.admit(ip("10.0.0.3")).unwrap();
    }

    #[test]
    fn an_accepted_connection_is_on_its_way_until_it_arrives() {
        let wait = Duration::from_secs(60);
        let tally = Tally::new(10, 10);
        assert!(tally.quiet(wait), "nothing accepted yet");
        tally.accepted();
        assert!(!tally.quiet(wait), "accepted, not handed over yet");
        let a = tally.admit(ip("10.0.0.1")).unwrap();
        assert!(!tally.quiet(wait), "open");
        drop(a);
        assert!(tally.quiet(wait), "closed");
        // A refused connection has arrived too.
        let tally = Tally::new(0, 10);
        tally.accepted();
        assert!(tally.admit(None).is_err());
        assert!(tally.quiet(wait));
        // One that never arrives is waited for only so long.
        let tally = Tally::new(10, 10);
        tally.accepted();
        assert!(!tally.quiet(wait));
        std::thread::sleep(Duration::from_millis(30));
        assert!(tally.quiet(Duration::from_millis(10)));
    }

    #[test]
    fn counts_balance_across_threads() {
        let tally = Tally::new(1_000_000, 1_000_000);
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let tally = &tally;
                s.spawn(move || {
                    for i in 0..2000u32 {
                        let ip = Some(IpAddr::from([10, t, (i % 7) as u8, 1]));
                        drop(tally.admit(ip).unwrap());
                    }
                });
            }
        });
        assert_eq!(tally.open(), 0);
        assert!(tally.shards.iter().all(|s| s.lock().unwrap().is_empty()));
    }
}
