//! `[app.rate_limit]`: a token bucket per client key, at the front door.
//!
//! The bucket arithmetic is `governor`'s GCRA (a token bucket kept as one
//! "theoretical arrival time" per key in an `AtomicU64`, updated by
//! compare-and-swap); the keys live in [`KeyTable`], our bounded store for
//! it: a `DashMap` (sharded, one short shard lock per look-up) of at most
//! `max_keys` entries.
//!
//! Flow per request: [`enforce`] hashes the key (the client address, or a
//! header's value: SipHash with a per-process random key, so every key is 8
//! bytes however long the header, and clients cannot aim at one shard) ->
//! [`RateLimit::check`] asks governor -> past the limit: 429 with
//! `Retry-After` (whole seconds until the next token), counted in
//! `bgproxy_rate_limited_total{app}`, never forwarded.
//!
//! Bounded memory: a new key takes a place only while fewer than
//! `max_keys` are tracked; when the table is full the new key is judged as
//! a fresh (full) bucket without being kept, and one sweep is started off
//! the request path (`spawn_blocking`): it drops every idle key (a bucket
//! full again is indistinguishable from a new one: governor's
//! `retain_recent`), then, if fewer than a tenth of the places are free,
//! the least recently used keys (the oldest arrival times) until a tenth
//! is. Nothing else ever grows.
//!
//! Why governor rather than pingora-limits: pingora-limits' `Rate` is a
//! count-min sketch of events per interval, fixed in memory but not a
//! token bucket (no burst, no time until the next token), and its counts
//! of distinct keys collide upward, so with many keys innocent clients
//! would be refused. governor gives the exact bucket per key; the bound is
//! ours, in [`KeyTable`].

use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use governor::clock::{Clock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::Quota;
use pingora::prelude::*;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::proxy::Session;
use prometheus::{IntCounter, IntGauge};

use crate::config::{RateLimitConfig, RateLimitKey};

/// One app's rate limit: its buckets and counters. Kept across snapshots
/// while the app's `[app.rate_limit]` is unchanged.
pub struct RateLimit<C: Clock = MonotonicClock> {
    config: RateLimitConfig,
    gcra: governor::RateLimiter<u64, KeyTable, C, NoOpMiddleware<C::Instant>>,
    clock: C,
    table: KeyTable,
    /// Keys are hashed with this (random per process).
    hasher: std::hash::RandomState,
    /// `bgproxy_rate_limited_total{app}`.
    refused: IntCounter,
    /// A sweep is running (at most one at a time).
    sweeping: AtomicBool,
}

impl<C: Clock> std::fmt::Debug for RateLimit<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("config", &self.config)
            .field("keys", &self.keys())
            .finish()
    }
}

/// What one key is, before hashing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key<'a> {
    Ip(IpAddr),
    Header(&'a [u8]),
    /// No client address (not an IP connection): one shared bucket.
    Unknown,
}

impl RateLimit<MonotonicClock> {
    /// The limit of `config`, counting refusals on `refused` and tracked
    /// keys on `keys` (`bgproxy_rate_limit_keys{app}`).
    pub fn new(config: &RateLimitConfig, refused: IntCounter, keys: IntGauge) -> Self {
        RateLimit::with_clock(config, refused, keys, MonotonicClock)
    }
}

impl<C: Clock + Clone> RateLimit<C> {
    /// [`RateLimit::new`] on another clock (tests use a fake one).
    pub fn with_clock(
        config: &RateLimitConfig,
        refused: IntCounter,
        keys: IntGauge,
        clock: C,
    ) -> Self {
        let quota = Quota::per_second(config.requests_per_second).allow_burst(config.burst);
        let table = KeyTable(Arc::new(Table {
            map: DashMap::default(),
            len: AtomicUsize::new(0),
            max: config.max_keys,
            full: AtomicBool::new(false),
            gauge: keys,
        }));
        RateLimit {
            config: config.clone(),
            gcra: governor::RateLimiter::new(quota, table.clone(), clock.clone()),
            clock,
            table,
            hasher: std::hash::RandomState::new(),
            refused,
            sweeping: AtomicBool::new(false),
        }
    }
}

impl<C: Clock> RateLimit<C> {
    /// The config this limit was built from (a reload keeps the limit, and
    /// its buckets, when it is unchanged).
    pub fn config(&self) -> &RateLimitConfig {
        &self.config
    }

    /// Keys tracked now.
    pub fn keys(&self) -> usize {
        self.table.0.len.load(Ordering::Relaxed)
    }

    /// The key of a request, per `key`: the header's value, else the
    /// client address.
    pub fn key_of<'a>(
        &self,
        req: &'a pingora::http::RequestHeader,
        client: Option<IpAddr>,
    ) -> Key<'a> {
        let by_ip = || client.map_or(Key::Unknown, Key::Ip);
        match &self.config.key {
            RateLimitKey::ClientIp => by_ip(),
            RateLimitKey::Header(name) => req
                .headers
                .get(name)
                .map_or_else(by_ip, |v| Key::Header(v.as_bytes())),
        }
    }

    fn hash(&self, key: Key<'_>) -> u64 {
        // A tag per kind: an address and a header value never share a bucket.
        let mut h = self.hasher.build_hasher();
        match key {
            Key::Ip(ip) => {
                h.write_u8(0);
                std::hash::Hash::hash(&ip, &mut h);
            }
            Key::Header(v) => {
                h.write_u8(1);
                h.write(v);
            }
            Key::Unknown => h.write_u8(2),
        }
        h.finish()
    }

    /// Takes a token from `key`'s bucket: `Ok(())`, or the time until the
    /// next one (counted as refused). Lock-free but for one shard's lock
    /// of the key table; a new key on a full table starts a sweep.
    pub fn check(self: &Arc<Self>, key: Key<'_>) -> Result<(), Duration>
    where
        C: Send + Sync + 'static,
    {
        let result = self
            .gcra
            .check_key(&self.hash(key))
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()));
        if result.is_err() {
            self.refused.inc();
        }
        if self.table.0.full.load(Ordering::Relaxed) && !self.sweeping.swap(true, Ordering::AcqRel)
        {
            let this = self.clone();
            let sweep = move || {
                this.sweep();
                this.sweeping.store(false, Ordering::Release);
            };
            // Off the request's thread when there is a runtime: a sweep of
            // a full table walks every key.
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(sweep)),
                Err(_) => sweep(),
            }
        }
        result
    }

    /// Makes room: every idle key goes, then the least recently used ones
    /// until a tenth of the places is free.
    pub fn sweep(&self) {
        let t = &self.table.0;
        t.full.store(false, Ordering::Relaxed);
        self.gcra.retain_recent();
        let keep = t.max - t.max / 10;
        if t.len.load(Ordering::Relaxed) > keep {
            t.evict_oldest(keep);
        }
    }
}

/// [`enforce`]'s answer to a refused request: 429, `Retry-After` in whole
/// seconds (at least 1), a short body, and the connection kept.
pub async fn refuse(session: &mut Session, app: &str, wait: Duration) -> Result<()> {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let body = Bytes::from(format!(
        "429 Too Many Requests: app '{app}' allows fewer requests per second from this client; retry in {}s\n",
        secs.max(1)
    ));
    let mut resp = pingora::http::ResponseHeader::build(429, Some(3))?;
    resp.insert_header(http::header::RETRY_AFTER, secs.max(1))?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/plain")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// Applies `limit` to the request of `session`: `Ok(true)` when it was
/// answered 429 here (and must go no further).
pub async fn enforce(session: &mut Session, app: &str, limit: &Arc<RateLimit>) -> Result<bool> {
    let client = match session.client_addr() {
        Some(PingoraAddr::Inet(a)) => Some(a.ip()),
        _ => None,
    };
    let verdict = limit.check(limit.key_of(session.req_header(), client));
    match verdict {
        Ok(()) => Ok(false),
        Err(wait) => {
            refuse(session, app, wait).await?;
            Ok(true)
        }
    }
}

/// The key table: governor's state per key, at most `max` keys. A cheap
/// handle (`Arc`): the limiter holds one, [`RateLimit`] another for the
/// sweep.
#[derive(Clone)]
pub struct KeyTable(Arc<Table>);

pub struct Table {
    /// Keys are SipHash outputs already: hashed again by identity.
    map: DashMap<u64, InMemoryState, BuildHasherDefault<Prehashed>>,
    /// Entries in `map`; a place is taken (incremented) before inserting.
    len: AtomicUsize,
    max: usize,
    /// A new key found no place: a sweep is due.
    full: AtomicBool,
    gauge: IntGauge,
}

impl Table {
    fn removed(&self, n: usize) {
        self.len.fetch_sub(n, Ordering::Relaxed);
        self.gauge.sub(n as i64);
    }

    /// Drops the keys with the oldest arrival times until `keep` are left
    /// (a few more may go when several share the cut-off time).
    fn evict_oldest(&self, keep: usize) {
        let mut times: Vec<u64> = self.map.iter().map(|e| tat(e.value())).collect();
        let excess = times.len().saturating_sub(keep);
        if excess == 0 {
            return;
        }
        let (_, cut, _) = times.select_nth_unstable(excess - 1);
        let cut = *cut;
        let mut removed = 0;
        self.map.retain(|_, s| {
            let keep = tat(s) > cut;
            removed += usize::from(!keep);
            keep
        });
        self.removed(removed);
    }
}

/// A key's theoretical arrival time (nanoseconds since the limiter
/// started), read without changing it.
fn tat(state: &InMemoryState) -> u64 {
    // A measurement that always declines hands back what it saw.
    let seen: Result<(), Option<Nanos>> =
        state.measure_and_replace(&NotKeyed::NonKey, Err::<((), Nanos), _>);
    seen.err().flatten().map_or(0, Nanos::as_u64)
}

impl StateStore for KeyTable {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let t = &self.0;
        if let Some(state) = t.map.get(key) {
            return state.measure_and_replace(&NotKeyed::NonKey, f);
        }
        // A new key: take a place first, so the table never holds more
        // than `max`, however many requests race here.
        if t.len.fetch_add(1, Ordering::Relaxed) >= t.max {
            t.len.fetch_sub(1, Ordering::Relaxed);
            t.full.store(true, Ordering::Relaxed);
            // Judged as a new key's full bucket, and not kept.
            return f(None).map(|(result, _)| result);
        }
        match t.map.entry(*key) {
            Entry::Occupied(e) => {
                // Another request inserted it meanwhile: give the place back.
                t.len.fetch_sub(1, Ordering::Relaxed);
                e.get().measure_and_replace(&NotKeyed::NonKey, f)
            }
            Entry::Vacant(v) => {
                t.gauge.inc();
                v.insert(InMemoryState::default())
                    .measure_and_replace(&NotKeyed::NonKey, f)
            }
        }
    }
}

impl ShrinkableKeyedStateStore<u64> for KeyTable {
    fn retain_recent(&self, drop_below: Nanos) {
        let t = &self.0;
        let mut removed = 0;
        t.map.retain(|_, s| {
            let keep = tat(s) > drop_below.as_u64();
            removed += usize::from(!keep);
            keep
        });
        t.removed(removed);
    }

    fn shrink_to_fit(&self) {
        self.0.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.0.len.load(Ordering::Relaxed)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A hasher for keys that are hashes already: the key is its own hash.
#[derive(Default)]
pub struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; fold anything else in anyway.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::num::NonZeroU32;

    fn config(rps: u32, burst: u32, max_keys: usize) -> RateLimitConfig {
        RateLimitConfig {
            requests_per_second: NonZeroU32::new(rps).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
            key: RateLimitKey::ClientIp,
            max_keys,
        }
    }

    fn limit(c: &RateLimitConfig) -> (Arc<RateLimit<FakeRelativeClock>>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let refused = IntCounter::new("r", "r").unwrap();
        let keys = IntGauge::new("k", "k").unwrap();
        (
            Arc::new(RateLimit::with_clock(c, refused, keys, clock.clone())),
            clock,
        )
    }

    fn ip(n: u32) -> Key<'static> {
        Key::Ip(IpAddr::from(n.to_be_bytes()))
    }

    #[test]
    fn a_burst_then_the_rate_with_the_time_until_the_next_token() {
        let (l, clock) = limit(&config(2, 3, 100));
        for _ in 0..3 {
            assert_eq!(l.check(ip(1)), Ok(()));
        }
        let wait = l.check(ip(1)).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert_eq!(l.check(ip(2)), Ok(()), "another key has its own bucket");
        assert_eq!(l.refused.get(), 1);
        clock.advance(Duration::from_millis(500));
        assert_eq!(l.check(ip(1)), Ok(()), "one token per 1/rps");
        assert!(l.check(ip(1)).is_err());
    }

    #[test]
    fn header_keys_are_hashed_to_a_fixed_size_and_fall_back_to_the_address() {
        let mut c = config(1, 1, 100);
        c.key = "header:X-Api-Key".parse().unwrap();
        let (l, _) = limit(&c);
        let mut req = pingora::http::RequestHeader::build("GET", b"/", None).unwrap();
        let addr = IpAddr::from([127, 0, 0, 1]);
        let client = Some(addr);
        assert_eq!(l.key_of(&req, client), Key::Ip(addr));
        let long = "k".repeat(8000);
        req.insert_header("X-Api-Key", &long).unwrap();
        assert_eq!(l.key_of(&req, client), Key::Header(long.as_bytes()));
        assert_eq!(l.check(l.key_of(&req, client)), Ok(()));
        assert!(l.check(l.key_of(&req, client)).is_err());
        assert_eq!(l.check(Key::Header(b"other")), Ok(()));
        assert_eq!(l.check(ip(1)), Ok(()));
        assert_eq!(l.keys(), 3, "one fixed-size entry per key");
        assert_ne!(l.hash(Key::Header(b"a")), l.hash(Key::Header(b"b")));
    }

    #[test]
    fn the_table_never_holds_more_than_max_keys_and_sweeps_idle_keys_first() {
        let (l, clock) = limit(&config(1, 1, 10));
        // Five keys that went idle a while ago...
        for n in 0..5 {
            l.check(ip(n)).unwrap();
        }
        clock.advance(Duration::from_secs(5));
        // ...and five that just sent (their buckets are empty).
        for n in 5..10 {
            l.check(ip(n)).unwrap();
        }
        assert_eq!(l.keys(), 10);
        // Full: a new key is judged as a fresh bucket but not kept, and a
        // sweep (inline: no runtime here) drops the idle keys.
        assert_eq!(l.check(ip(100)), Ok(()));
        assert_eq!(l.keys(), 5, "the five idle keys went, the busy ones stay");
        for n in 5..10 {
            assert!(l.check(ip(n)).is_err(), "key {n} kept its empty bucket");
        }
        assert!(l.table.0.map.len() <= 10);
    }

    #[test]
    fn when_no_key_is_idle_the_least_recently_used_go() {
        let (l, clock) = limit(&config(1, 1, 10));
        for n in 0..10 {
            l.check(ip(n)).unwrap();
            clock.advance(Duration::from_millis(10));
        }
        assert_eq!(l.check(ip(100)), Ok(()), "full: not kept");
        assert_eq!(l.keys(), 9, "a tenth of the places freed");
        assert_eq!(
            l.check(ip(0)),
            Ok(()),
            "the oldest key was dropped: a new bucket"
        );
        assert!(l.check(ip(9)).is_err(), "the newest key kept its bucket");
        // Ten thousand distinct keys later, still at most max_keys.
        for n in 1000..11_000 {
            let _ = l.check(ip(n));
            assert!(l.keys() <= 10);
        }
        assert!(l.table.0.map.len() <= 10);
        assert_eq!(l.table.0.gauge.get() as usize, l.keys());
    }

    #[test]
    fn concurrent_new_keys_never_overfill_the_table() {
        let (l, _) = limit(&config(1, 1, 1000));
        std::thread::scope(|s| {
            for t in 0..4u32 {
                let l = &l;
                s.spawn(move || {
                    for n in 0..5000 {
                        let _ = l.check(ip(t * 100_000 + n));
                    }
                });
            }
        });
        assert!(l.table.0.map.len() <= 1000, "{}", l.table.0.map.len());
        assert_eq!(l.table.0.map.len(), l.keys());
    }
}
