//! The lean loop's idle upstream connections: kept between requests, taken
//! last-in first-out, checked without a task of their own.
//!
//! pingora's pool spawns a task for every connection it takes back (one per
//! request under keep-alive): the task waits on the idle socket, a oneshot
//! channel and a `Notify`, behind an `Arc<Mutex<_>>` and an LRU, so that a
//! connection the upstream closes is dropped at once. Per request that was
//! a task spawned, polled twice and freed, two channels and two locks
//! (benches/README, step 11). This pool keeps the sockets in a list per
//! upstream instead and learns what happened to them from the runtime's
//! readiness, which its I/O driver keeps for every registered socket whether
//! or not a task waits on it:
//!
//! - Taken back only when a 1-byte read would block (the response was read
//!   to its end and nothing follows), as pingora checks it.
//! - Handed out only when a read still would block: a socket the upstream
//!   closed meanwhile (or wrote to) is readable and is dropped instead. No
//!   system call when nothing happened: the read sees the cached readiness.
//! - A sweep every 2 s (`SWEEP`) drops what closed or sat past its idle limit,
//!   so a quiet proxy does not keep closed upstream connections (`ss` would
//!   show them in CLOSE-WAIT) until its next request.
//!
//! A connection the upstream closes just as it is taken is still found out
//! by the request itself, which the lean loop then sends once more on a new
//! connection (as pingora-proxy does).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use pingora::protocols::Stream;
use tokio::io::AsyncReadExt;
use tracing::debug;

/// How often idle connections are looked over.
const SWEEP: Duration = Duration::from_secs(2);

/// Idle upstream connections, by the reuse hash of their peer (address,
/// TLS, options: `Peer::reuse_hash`).
pub struct IdlePool {
    inner: Mutex<Lists>,
    /// The most idle connections kept in all; past it the oldest of the
    /// upstream being released to goes (else the one released).
    max: usize,
    sweeping: AtomicBool,
}

#[derive(Default)]
struct Lists {
    by_peer: HashMap<u64, VecDeque<Idle>>,
    count: usize,
}

struct Idle {
    stream: Stream,
    /// Dropped from then on; `None`: kept until the upstream closes it.
    until: Option<Instant>,
}

impl Idle {
    fn expired(&self, now: Instant) -> bool {
        self.until.is_some_and(|t| now >= t)
    }
}

impl IdlePool {
    /// A pool of at most `max` idle connections.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(IdlePool {
            inner: Mutex::new(Lists::default()),
            max,
            sweeping: AtomicBool::new(false),
        })
    }

    /// The most recently released connection to the peer `key` that is
    /// still open and quiet; closed and expired ones found on the way are
    /// dropped.
    pub fn take(&self, key: u64) -> Option<Stream> {
        loop {
            let mut idle = {
                let mut lists = self.lock();
                let list = lists.by_peer.get_mut(&key)?;
                let idle = list.pop_back()?;
                lists.count -= 1;
                idle
            };
            // Outside the lock: a dead one is closed here (a system call).
            if !idle.expired(Instant::now()) && quiet(&mut idle.stream) {
                return Some(idle.stream);
            }
            debug!("idle upstream connection closed or expired: not reused");
        }
    }

    /// Keeps `stream`, a connection to the peer `key` whose last response
    /// was read to its end, for reuse within `idle_timeout` (`None`: until
    /// the upstream closes it). One that has more to read is dropped.
    pub fn put(self: &Arc<Self>, key: u64, mut stream: Stream, idle_timeout: Option<Duration>) {
        if !quiet(&mut stream) {
            debug!("upstream connection not quiet after its response: not kept");
            return;
        }
        if !self.sweeping.swap(true, Ordering::Relaxed) {
            self.start_sweep();
        }
        let now = Instant::now();
        let idle = Idle {
            stream,
            until: idle_timeout.map(|t| now + t),
        };
        // Closed after the lock is let go.
        let mut dropped = Vec::new();
        {
            let mut lists = self.lock();
            let Lists { by_peer, count } = &mut *lists;
            let list = by_peer.entry(key).or_default();
            // The oldest are at the front: the expired ones go first.
            while list.front().is_some_and(|i| i.expired(now)) {
                dropped.extend(list.pop_front());
                *count -= 1;
            }
            if *count >= self.max {
                match list.pop_front() {
                    Some(oldest) => {
                        dropped.push(oldest);
                        *count -= 1;
                    }
                    None => {
                        dropped.push(idle);
                        return;
                    }
                }
            }
            list.push_back(idle);
            *count += 1;
        }
        drop(dropped);
    }

    /// How many connections are kept now.
    pub fn len(&self) -> usize {
        self.lock().count
    }

    /// Whether no connection is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lists> {
        // A panic elsewhere while holding it leaves only idle sockets.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the sweep on the runtime releasing the first connection (a
    /// worker's); it ends with the pool or the runtime.
    fn start_sweep(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Not on a runtime (a unit test): the next release tries again.
            self.sweeping.store(false, Ordering::Relaxed);
            return;
        };
        let pool = Arc::downgrade(self);
        runtime.spawn(sweep(pool));
    }

    /// Drops every connection that closed, has something to read, or sat
    /// past its idle limit.
    fn sweep_once(&self) {
        let now = Instant::now();
        let mut dropped = Vec::new();
        {
            let mut lists = self.lock();
            let Lists { by_peer, count } = &mut *lists;
            for list in by_peer.values_mut() {
                let before = list.len();
                let kept: VecDeque<Idle> = std::mem::take(list)
                    .into_iter()
                    .filter_map(|mut idle| {
                        if idle.expired(now) || !quiet(&mut idle.stream) {
                            dropped.push(idle);
                            None
                        } else {
                            Some(idle)
                        }
                    })
                    .collect();
                *count -= before - kept.len();
                *list = kept;
            }
            by_peer.retain(|_, list| !list.is_empty());
        }
        if !dropped.is_empty() {
            debug!(count = dropped.len(), "idle upstream connections dropped");
        }
    }
}

async fn sweep(pool: Weak<IdlePool>) {
    let mut tick = tokio::time::interval(SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match pool.upgrade() {
            Some(pool) => pool.sweep_once(),
            None => return,
        }
    }
}

/// Whether a 1-byte read of `stream` would block: nothing to read and not
/// closed. Polled once, without waiting and outside the task budget (a
/// spent budget would say "would block" for an open and a closed socket
/// alike); the runtime's cached readiness answers it without a system call
/// when nothing happened since the last read that would have blocked.
fn quiet(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    let read = pin!(tokio::task::unconstrained(stream.read(&mut byte)));
    let mut cx = Context::from_waker(Waker::noop());
    matches!(read.poll(&mut cx), Poll::Pending)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::protocols::l4::stream::Stream as L4Stream;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair on loopback: ours as a pingora stream, and the
    /// upstream's end.
    async fn pair() -> (Stream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (theirs, _) = listener.accept().await.unwrap();
        (Box::new(L4Stream::from(ours)), theirs)
    }

    /// Lets the runtime's driver see what the other end did.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn the_last_released_is_taken_first_and_only_by_its_peer() {
        let pool = IdlePool::new(10);
        let (a, _a) = pair().await;
        let (b, _b) = pair().await;
        let (a_id, b_id) = (a.id(), b.id());
        pool.put(1, a, None);
        pool.put(1, b, None);
        assert_eq!(pool.len(), 2);
        assert!(pool.take(2).is_none());
        assert_eq!(pool.take(1).map(|s| s.id()), Some(b_id));
        assert_eq!(pool.take(1).map(|s| s.id()), Some(a_id));
        assert!(pool.take(1).is_none());
        assert!(pool.is_empty());
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_handed_out() {
        let pool = IdlePool::new(10);
        let (a, a_upstream) = pair().await;
        let (b, b_upstream) = pair().await;
        let a_id = a.id();
        pool.put(7, a, None);
        pool.put(7, b, None);
        drop(b_upstream); // the newer one: taken first if it were kept
        settle().await;
        assert_eq!(pool.take(7).map(|s| s.id()), Some(a_id));
        assert!(pool.take(7).is_none());
        drop(a_upstream);
    }

    #[tokio::test]
    async fn a_connection_with_unread_bytes_is_neither_kept_nor_handed_out() {
        let pool = IdlePool::new(10);
        let (a, mut a_upstream) = pair().await;
        a_upstream.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        settle().await;
        pool.put(1, a, None);
        assert!(pool.is_empty(), "more to read: not kept");

        let (b, mut b_upstream) = pair().await;
        pool.put(1, b, None);
        b_upstream.write_all(b"x").await.unwrap();
        settle().await;
        assert!(pool.take(1).is_none(), "written to while idle: dropped");
    }

    #[tokio::test]
    async fn past_its_idle_limit_a_connection_is_dropped() {
        let pool = IdlePool::new(10);
        let (a, _a) = pair().await;
        pool.put(1, a, Some(Duration::from_millis(20)));
        settle().await;
        assert!(pool.take(1).is_none());
        assert!(pool.is_empty());
    }

    #[tokio::test]
    async fn full_it_drops_the_oldest_of_the_peer_else_the_released_one() {
        let pool = IdlePool::new(2);
        let (a, _a) = pair().await;
        let (b, _b) = pair().await;
        let (c, _c) = pair().await;
        let (d, _d) = pair().await;
        let (b_id, c_id) = (b.id(), c.id());
        pool.put(1, a, None);
        pool.put(1, b, None);
        pool.put(1, c, None); // a goes
        assert_eq!(pool.len(), 2);
        pool.put(2, d, None); // nothing of peer 2 to drop: d goes
        assert_eq!(pool.len(), 2);
        assert!(pool.take(2).is_none());
        assert_eq!(pool.take(1).map(|s| s.id()), Some(c_id));
        assert_eq!(pool.take(1).map(|s| s.id()), Some(b_id));
    }

    #[tokio::test]
    async fn the_sweep_drops_closed_and_expired_connections() {
        let pool = IdlePool::new(10);
        let (a, a_upstream) = pair().await;
        let (b, _b) = pair().await;
        let (c, _c) = pair().await;
        pool.put(1, a, None);
        pool.put(2, b, Some(Duration::from_millis(10)));
        pool.put(3, c, None);
        drop(a_upstream);
        settle().await;
        pool.sweep_once();
        assert_eq!(pool.len(), 1);
        assert!(pool.take(3).is_some());
    }
}
