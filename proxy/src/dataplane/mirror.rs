//! Mirroring (`[app.mirror]`): copies of a sampled share of the live
//! color's requests, sent to one upstream of the STANDBY, fire and forget.
//!
//! ```text
//! request_filter      sample(): method allowed, declared body small enough,
//!                     a lock-free draw under `percent` -> ctx keeps a MirrorBody
//! request_body_filter MirrorBody::push: a copy of the body as it streams
//!                     through; past `max_body` the copy is given up
//! logging             the live answer is known and written: Mirrorer::send
//!                     takes a slot (at most `max_in_flight` per app, else
//!                     `dropped`) and spawns the copy
//! the copy            the standby's next upstream (Pool::pick), the app's
//!                     timeouts; its answer is read and dropped, its status
//!                     class compared with the live one: `ok`, `mismatch`, `error`
//! ```
//!
//! The client never waits for a copy: it is spawned after the live answer
//! was written, and nothing of it flows back. Only requests placed on the
//! live color are copied (not preview requests, color hosts, or the
//! standby's share of a rollout). A copy carries the client's headers minus
//! hop-by-hop ones and bgproxy's preview header and cookie, the usual
//! `X-Forwarded-*`, and `X-Bgproxy-Mirror: 1`.
//!
//! Per app, [`MirrorState`] (the slots and the counters) lives as long as
//! the app: a reload or a switch hands the same one to the next snapshot,
//! like the pools.

use std::cell::Cell;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderName;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::upstreams::peer::{HttpPeer, Peer};
use prometheus::IntCounter;
use tracing::debug;

use crate::config::MirrorConfig;
use crate::dataplane::headers::{add_forwarded_headers, Forwarded};
use crate::dataplane::preview::{strip_preview_cookie, PREVIEW_HEADER};
use crate::dataplane::routing::{AppRoute, Pool};
use crate::metrics::{Metrics, MirrorResult};

/// The header every copy carries, so the standby can tell copies apart.
pub static MIRROR_HEADER: HeaderName = HeaderName::from_static("x-bgproxy-mirror");

/// One app's mirroring: copies in flight, and the counters of
/// `bgproxy_mirrored_requests_total`. Shared by every snapshot of the app.
#[derive(Debug)]
pub struct MirrorState {
    in_flight: AtomicUsize,
    /// Indexed by [`MirrorResult`] as in [`MirrorResult::ALL`].
    results: [IntCounter; 4],
}

impl MirrorState {
    /// The state of `app`, its counters resolved in `metrics`.
    pub fn new(metrics: &Metrics, app: &str) -> MirrorState {
        MirrorState {
            in_flight: AtomicUsize::new(0),
            results: MirrorResult::ALL.map(|r| metrics.mirrored(app, r)),
        }
    }

    fn count(&self, result: MirrorResult) {
        self.results[result as usize].inc();
    }

    /// A slot for one more copy, if fewer than `max` are in flight.
    fn slot(self: &Arc<Self>, max: usize) -> Option<Slot> {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= max {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(self.clone()))
    }

    /// Copies in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// A copy in flight; its slot is given back when it is dropped.
struct Slot(Arc<MirrorState>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether to copy this request of the live color: its method is one of
/// `methods`, its declared body (if any) fits `max_body`, it is no upgrade,
/// and a draw falls under `percent`. Allocation-free; the draw is a
/// per-thread xorshift (no shared cache line).
pub fn sample(config: &MirrorConfig, req: &RequestHeader) -> bool {
    if config.percent == 0 {
        return false;
    }
    let method = req.method.as_str();
    if !config.methods.iter().any(|m| m == method) {
        return false;
    }
    let declared = req.headers.get(http::header::CONTENT_LENGTH).map(|v| {
        std::str::from_utf8(v.as_bytes())
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
    });
    match declared {
        Some(Some(n)) if n <= config.max_body => {}
        Some(_) => return false,
        None => {}
    }
    if req.headers.contains_key(http::header::UPGRADE) {
        return false;
    }
    config.percent >= 100 || draw_percent() < config.percent
}

/// 0-99, evenly spread: xorshift64* per thread, seeded from the clock and
/// the thread.
fn draw_percent() -> u8 {
    thread_local! {
        static STATE: Cell<u64> = const { Cell::new(0) };
    }
    STATE.with(|s| {
        let mut x = s.get();
        if x == 0 {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64);
            // The cell's address differs per thread: two threads seeded in
            // the same nanosecond still draw differently.
            x = nanos ^ (s as *const Cell<u64> as u64).rotate_left(32) | 1;
        }
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        ((x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) % 100) as u8
    })
}

/// The copy of a request body, taken as it streams through.
#[derive(Debug, Default)]
pub struct MirrorBody {
    chunks: Vec<Bytes>,
    len: usize,
}

impl MirrorBody {
    /// Adds a chunk (a cheap reference-counted clone); false when the body
    /// is now over `max` bytes and the copy must be given up.
    pub fn push(&mut self, chunk: &Bytes, max: u64) -> bool {
        self.len += chunk.len();
        if self.len as u64 > max {
            return false;
        }
        if !chunk.is_empty() {
            self.chunks.push(chunk.clone());
        }
        true
    }
}

/// Sends the copies: pingora's connector (its own pool of connections to
/// the standby, apart from the live traffic's).
pub struct Mirrorer {
    connector: Connector,
}

impl Default for Mirrorer {
    fn default() -> Self {
        Mirrorer {
            connector: Connector::new(None),
        }
    }
}

impl std::fmt::Debug for Mirrorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mirrorer")
    }
}

/// What the copy of one request needs from the live request.
pub struct Copy<'a> {
    pub req: &'a RequestHeader,
    pub body: MirrorBody,
    /// The status the client was answered.
    pub live_status: u16,
    pub client: Option<IpAddr>,
    pub proto: &'static str,
}

impl Mirrorer {
    /// Spawns the copy of `copy.req` to `route`'s standby, or counts it
    /// `dropped` when the app has `max_in_flight` copies out already. Never
    /// waits.
    pub fn send(self: &Arc<Self>, route: &AppRoute, copy: Copy<'_>) {
        let state = &route.mirror;
        let Some(slot) = state.slot(route.config.mirror.max_in_flight) else {
            state.count(MirrorResult::Dropped);
            return;
        };
        // The copy goes where the live request went, in the standby: the
        // route serving its path, with its prefix stripped if it strips.
        let path_route = route.paths.find(copy.req.uri.path());
        let header = match copy_header(route, &copy) {
            Ok(mut h) => {
                crate::dataplane::routes::rewrite(route, path_route, &mut h);
                h
            }
            Err(e) => {
                debug!(app = %route.name, "cannot copy the request: {e}");
                state.count(MirrorResult::Error);
                return;
            }
        };
        let job = Job {
            pool: route.pool_of(path_route, route.live.other()).clone(),
            header,
            body: copy.body,
            live_class: copy.live_status / 100,
            connect_timeout: route.config.connect_timeout,
            read_timeout: route.config.read_timeout,
            h2: route.config.h2,
        };
        let this = self.clone();
        let app = route.name.clone();
        tokio::spawn(async move {
            let result = this.run(job).await.unwrap_or_else(|e| {
                debug!(%app, "mirrored request failed: {e}");
                MirrorResult::Error
            });
            slot.0.count(result);
            drop(slot);
        });
    }

    /// One copy, within the app's connect and read timeouts (the whole copy
    /// at most their sum).
    async fn run(&self, job: Job) -> Result<MirrorResult> {
        let limit = job.connect_timeout + job.read_timeout;
        match tokio::time::timeout(limit, self.exchange(&job)).await {
            Ok(result) => result,
            Err(_) => Error::e_explain(
                ErrorType::ReadTimedout,
                "the standby did not answer the copy in time",
            ),
        }
    }

    async fn exchange(&self, job: &Job) -> Result<MirrorResult> {
        let pick = job.pool.pick(None).ok_or_else(|| {
            Error::explain(ErrorType::ConnectNoRoute, "the standby has no upstream")
        })?;
        let mut peer = HttpPeer::new(pick.upstream.addr, false, String::new());
        peer.options.connection_timeout = Some(job.connect_timeout);
        peer.options.read_timeout = Some(job.read_timeout);
        if job.h2 {
            peer.options.alpn = pingora::protocols::ALPN::H2;
            peer.options.max_h2_streams = 100;
        }
        let (mut session, _reused) = self.connector.get_http_session(&peer).await?;
        session.set_read_timeout(Some(job.read_timeout));
        session.set_write_timeout(Some(job.read_timeout));
        session
            .write_request_header(Box::new(job.header.clone()))
            .await?;
        let n = job.body.chunks.len();
        for (i, chunk) in job.body.chunks.iter().enumerate() {
            session
                .write_request_body(chunk.clone(), i + 1 == n)
                .await?;
        }
        session.finish_request_body().await?;
        // Past informational answers (100 Continue) to the final one.
        let mut status = 100;
        for _ in 0..4 {
            session.read_response_header().await?;
            status = session.response_header().map_or(0, |h| h.status.as_u16());
            if !(100..200).contains(&status) {
                break;
            }
        }
        // Read (and drop) the answer, so the connection can serve the next copy.
        while session.read_response_body().await?.is_some() {}
        self.connector
            .release_http_session(session, &peer, peer.idle_timeout())
            .await;
        Ok(if status / 100 == job.live_class {
            MirrorResult::Ok
        } else {
            MirrorResult::Mismatch
        })
    }
}

/// A copy on its way.
struct Job {
    pool: Arc<Pool>,
    header: RequestHeader,
    body: MirrorBody,
    live_class: u16,
    connect_timeout: Duration,
    read_timeout: Duration,
    h2: bool,
}

/// Hop-by-hop headers (RFC 9110 7.6.1), the framing ones bgproxy sets
/// itself, and `Expect` (the copy sends its body at once): never copied.
const NOT_COPIED: [HeaderName; 10] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::PROXY_AUTHORIZATION,
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
    http::header::CONTENT_LENGTH,
    http::header::EXPECT,
];

/// The copy's request header: the client's method, target and headers,
/// without hop-by-hop ones (also those `Connection` names), the preview
/// header and cookie, plus `Content-Length`, `X-Forwarded-*` and
/// `X-Bgproxy-Mirror: 1`.
fn copy_header(route: &AppRoute, copy: &Copy<'_>) -> Result<RequestHeader> {
    let req = copy.req;
    let named_by_connection: Vec<&[u8]> = req
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .collect();
    let mut out = RequestHeader::build(
        req.method.clone(),
        req.raw_path(),
        Some(req.headers.len() + 4),
    )?;
    for (name, value) in req.headers.iter() {
        let skip = NOT_COPIED.contains(name)
            || name == PREVIEW_HEADER
            || name == MIRROR_HEADER
            || (name == http::header::COOKIE && route.preview.is_some())
            || named_by_connection
                .iter()
                .any(|n| n.eq_ignore_ascii_case(name.as_str().as_bytes()));
        if !skip {
            out.append_header(name.clone(), value.clone())?;
        }
    }
    if route.preview.is_some() {
        if let Some(cookies) = strip_preview_cookie(req) {
            out.insert_header(http::header::COOKIE, cookies)?;
        }
    }
    if !out.headers.contains_key(http::header::HOST) {
        // An HTTP/2 client's :authority.
        if let Some(authority) = req.uri.authority() {
            out.insert_header(http::header::HOST, authority.as_str())?;
        }
    }
    if copy.body.len > 0 || req.headers.contains_key(http::header::CONTENT_LENGTH) {
        out.insert_header(http::header::CONTENT_LENGTH, copy.body.len)?;
    }
    out.insert_header(MIRROR_HEADER.clone(), "1")?;
    add_forwarded_headers(
        &mut out,
        Forwarded {
            client: copy.client,
            proto: copy.proto,
        },
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::routing::testing::{app, snapshot};

    fn req(method: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, b"/a?b=1", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn config(percent: u8) -> MirrorConfig {
        MirrorConfig {
            percent,
            ..MirrorConfig::default()
        }
    }

    #[test]
    fn sampling_by_method_body_and_share() {
        assert!(!sample(&config(0), &req("GET", &[])));
        assert!(sample(&config(100), &req("GET", &[])));
        assert!(!sample(&config(100), &req("POST", &[])), "not in methods");
        let mut post = config(100);
        post.methods.push("POST".into());
        assert!(sample(&post, &req("POST", &[("Content-Length", "65536")])));
        assert!(!sample(&post, &req("POST", &[("Content-Length", "65537")])));
        assert!(!sample(&post, &req("POST", &[("Content-Length", "x")])));
        assert!(!sample(
            &config(100),
            &req("GET", &[("Upgrade", "websocket")])
        ));
        let hits = (0..20_000)
            .filter(|_| sample(&config(10), &req("GET", &[])))
            .count();
        assert!((1_750..2_250).contains(&hits), "10% of 20000: {hits}");
    }

    #[test]
    fn a_body_over_the_limit_is_given_up() {
        let mut b = MirrorBody::default();
        assert!(b.push(&Bytes::from_static(b"abc"), 5));
        assert!(b.push(&Bytes::from_static(b"de"), 5));
        assert!(!b.push(&Bytes::from_static(b"f"), 5));
    }

    #[test]
    fn slots_are_bounded_and_given_back() {
        let state = Arc::new(MirrorState::new(&Metrics::new(), "a"));
        let first = state.slot(2).unwrap();
        let second = state.slot(2).unwrap();
        assert!(state.slot(2).is_none());
        assert_eq!(state.in_flight(), 2);
        drop(first);
        assert!(
            state.slot(2).is_some(),
            "the slot came back (and went again)"
        );
        drop(second);
        assert_eq!(state.in_flight(), 0);
    }

    #[test]
    fn the_copy_carries_the_client_headers_but_no_hop_by_hop_nor_preview() {
        let mut a = (*app("web", &["web.example"], &[1], &[2])).clone();
        a.preview.token = Some(crate::config::Secret::new(b"t".to_vec()));
        let s = snapshot(&[Arc::new(a)], None);
        let route = &s.apps[0];
        let r = req(
            "GET",
            &[
                ("Host", "web.example"),
                ("Connection", "keep-alive, X-Private"),
                ("X-Private", "1"),
                ("Keep-Alive", "timeout=5"),
                ("X-Bgproxy-Preview", "t"),
                ("X-Bgproxy-Mirror", "0"),
                ("Cookie", "a=1; bgproxy_preview=x"),
                ("Accept", "text/html"),
            ],
        );
        let copy = Copy {
            req: &r,
            body: MirrorBody::default(),
            live_status: 200,
            client: Some("10.0.0.9".parse().unwrap()),
            proto: "http",
        };
        let h = copy_header(route, &copy).unwrap();
        let mut wire = Vec::new();
        h.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).unwrap().to_ascii_lowercase();
        assert_eq!((h.method.as_str(), h.raw_path()), ("GET", &b"/a?b=1"[..]));
        for want in [
            "host: web.example\r\n",
            "accept: text/html\r\n",
            "cookie: a=1\r\n",
            "x-bgproxy-mirror: 1\r\n",
            "x-forwarded-for: 10.0.0.9\r\n",
        ] {
            assert!(wire.contains(want), "{want:?} in {wire}");
        }
        for never in [
            "connection",
            "x-private",
            "keep-alive",
            "x-bgproxy-preview",
            "bgproxy_preview",
            "x-bgproxy-mirror: 0",
        ] {
            assert!(!wire.contains(never), "{never:?} in {wire}");
        }
    }
}
