//! The data plane: pingora's `ProxyHttp` for the front door.
//!
//! Per request the routing snapshot is loaded once, and the app found by
//! Host in it ([`Routed`]) is carried in [`RequestCtx`]: the front door
//! loads it when it needs the app to choose the request's path, and hands
//! it over (to the lean loop directly, to pingora-proxy through
//! `on_connection_reuse`); otherwise `request_filter` loads it (404 when no
//! app serves the host). `upstream_peer` asks the app for a color and the
//! color's pool for an upstream; later hooks read the ctx and never load
//! the snapshot again. No lock and no I/O of ours on this path.
//!
//! Failure policy: a connect failure is retried once on another upstream of
//! the *same* color when the method is idempotent; if no upstream of the live
//! color can take the request, the client gets a 502 with a short body. The
//! standby is never used behind the operator's back.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bgproxy_control::api::Color;
use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};
use tracing::{debug, info, warn};

use crate::config::{LogConfig, ProxyConfig, Secret};
use crate::dataplane::access_log::{self, AccessWriter};
use crate::dataplane::headers::{add_forwarded_headers, valid_host, Forwarded};
use crate::dataplane::mirror::{self, MirrorBody, Mirrorer};
use crate::dataplane::preview::{
    self, Digest, Endpoint, Strip, Verdict, COLOR_HEADER, PREVIEW_HEADER,
};
use crate::dataplane::rate_limit;
use crate::dataplane::routes;
use crate::dataplane::routing::{strip_port, AppRoute, Pick, Routed, Routing, BUCKET_COOKIE};
use crate::dataplane::upgrades::{
    Registration, UpgradeConnector, Upgrades, UpstreamIdle, WS_GOING_AWAY,
};
use crate::metrics::{Benign, Metrics};

/// The front door's proxy logic (pingora-proxy and the lean loop each
/// hold a clone: the state behind it is shared).
#[derive(Clone)]
pub struct DataPlane {
    routing: Routing,
    metrics: Arc<Metrics>,
    access: AccessLog,
    draining: Arc<AtomicBool>,
    /// The port of the HTTPS listener, for `redirect_https`.
    https_port: Option<u16>,
    limits: Limits,
    /// Upgraded connections, for the drain after a switch.
    upgrades: Arc<Upgrades>,
    /// The digest of the process's verify secret: a preview token for every
    /// app (the controller's verify checks send it).
    verify: Option<Digest>,
    /// Sends the copies of mirrored requests.
    mirrorer: Arc<Mirrorer>,
    /// Pending ACME HTTP-01 challenges, answered before routing.
    acme: Option<Arc<crate::dataplane::acme::Challenges>>,
}

/// Front-door limits that apply to every app: `[proxy]`'s keys of the same
/// names (their defaults are the config layer's, `config/defaults.rs`).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request header block; bigger gets 431.
    pub max_header_size: usize,
    /// Most request headers; more gets 431.
    pub max_headers: usize,
    /// Time allowed between two reads of a request (body); slower gets 408.
    pub client_timeout: Duration,
    /// Idle time allowed between two requests of a keep-alive connection
    /// (pingora counts whole seconds).
    pub client_idle_timeout: Duration,
    /// Time allowed for a whole request head from its first byte; slower
    /// gets 408 (the front door enforces it).
    pub request_header_timeout: Duration,
}

impl From<&ProxyConfig> for Limits {
    fn from(proxy: &ProxyConfig) -> Self {
        Limits {
            max_header_size: proxy.max_header_size,
            max_headers: proxy.max_headers,
            client_timeout: proxy.client_timeout,
            client_idle_timeout: proxy.client_idle_timeout,
            request_header_timeout: proxy.request_header_timeout,
        }
    }
}

impl DataPlane {
    /// A data plane routing by `routing`, with the front door's `limits`
    /// (from the config: `Limits::from(&config.proxy)`). `draining` is set
    /// when an upgrade or shutdown begins: from then on every HTTP/1
    /// response closes its connection, so no client reuses a keep-alive
    /// connection that is about to be dropped (and races it).
    pub fn new(
        routing: Routing,
        metrics: Arc<Metrics>,
        log: &LogConfig,
        limits: Limits,
        draining: Arc<AtomicBool>,
        upgrades: Arc<Upgrades>,
    ) -> Self {
        DataPlane {
            routing,
            metrics,
            access: AccessLog::new(log),
            draining,
            https_port: None,
            limits,
            upgrades,
            verify: None,
            mirrorer: Arc::new(Mirrorer::default()),
            acme: None,
        }
    }

    /// Answers the HTTP-01 challenges pending in `challenges`
    /// (`[proxy.tls.acme]`) before any routing.
    pub fn with_acme_challenges(
        mut self,
        challenges: Option<Arc<crate::dataplane::acme::Challenges>>,
    ) -> Self {
        self.acme = challenges;
        self
    }

    /// Makes `secret` (the process's verify secret, also handed to the
    /// controller) a valid `X-Bgproxy-Preview` token for every app, whether
    /// or not the app has a preview token of its own. Without it only apps'
    /// own tokens are.
    pub fn with_verify_secret(mut self, secret: &Secret) -> Self {
        self.verify = Some(Digest::of(secret.as_bytes()));
        self
    }

    /// The routing table this data plane reads.
    pub fn routing(&self) -> &Routing {
        &self.routing
    }

    /// The front-door limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The daemon's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// What `upstream_request_filter` would tell the upstream about the
    /// client, when that is all it would change: no upgrade, no preview
    /// header or cookie to remove, no prefix to strip. The lean loop then
    /// writes the request straight from the client's
    /// (`headers::upstream_wire`); `None`: it goes through the hook.
    pub fn forwarded_only(&self, session: &Session, ctx: &RequestCtx) -> Option<Forwarded> {
        let rewritten = ctx
            .route()
            .is_some_and(|route| routes::strips(route, ctx.path_route));
        let plain = ctx.upgrade.is_none() && !ctx.strip.header && !ctx.strip.cookie && !rewritten;
        plain.then(|| forwarded(session))
    }

    /// A request that ended because its client went away or stalled: no
    /// operator needs to hear of it, so it is logged at debug and counted.
    /// Returns false (and does nothing) for any other error.
    pub fn client_gone(&self, e: &Error) -> bool {
        let Some(kind) = client_gone(e) else {
            return false;
        };
        self.metrics.benign(kind).inc();
        debug!(kind = kind.as_str(), "request ended by the client: {e}");
        true
    }

    /// 431 when the request's header block is over the limits.
    fn headers_too_large(&self, req: &RequestHeader) -> Option<String> {
        let count = req.headers.len();
        if count > self.limits.max_headers {
            return Some(format!(
                "{count} request headers, the limit is {}",
                self.limits.max_headers
            ));
        }
        let uri = &req.uri;
        let uri_len = uri.scheme_str().map_or(0, |s| s.len() + 3)
            + uri.authority().map_or(0, |a| a.as_str().len())
            + uri.path_and_query().map_or(1, |p| p.as_str().len());
        let size: usize = uri_len
            + 16
            + req
                .headers
                .iter()
                .map(|(k, v)| k.as_str().len() + v.len() + 4)
                .sum::<usize>();
        (size > self.limits.max_header_size).then(|| {
            format!(
                "{size} bytes of request headers, the limit is {}",
                self.limits.max_header_size
            )
        })
    }

    /// Where `redirect_https` sends plain-HTTP requests (443 is left out of
    /// the URL).
    pub fn with_https_port(mut self, port: Option<u16>) -> Self {
        self.https_port = port;
        self
    }

    /// A 308 to the same host, path and query over HTTPS.
    async fn redirect(&self, session: &mut Session) -> Result<()> {
        let req = session.req_header();
        let host = host_of(req).map(strip_port).unwrap_or_default();
        // Only a plain host name goes into Location: anything else in Host is
        // refused rather than echoed into a redirect.
        let valid = !host.is_empty()
            && host.iter().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':')
            });
        if !valid {
            session.respond_error(400).await?;
            return Ok(());
        }
        let port = match self.https_port {
            Some(443) | None => String::new(),
            Some(p) => format!(":{p}"),
        };
        let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let location = format!("https://{}{port}{target}", String::from_utf8_lossy(host));
        let mut resp = pingora::http::ResponseHeader::build(308, Some(3))?;
        resp.insert_header(http::header::LOCATION, location)?;
        resp.insert_header(http::header::CONTENT_LENGTH, 0)?;
        session.write_response_header(Box::new(resp), true).await
    }

    /// Before a routed request goes upstream (`preview.rs`, `mirror.rs`): a
    /// color host pins its color; else the preview paths are answered, a
    /// preview header or cookie pins the standby (403 when it is not
    /// valid, 503 when no upstream of the standby is `up`: never the live
    /// color instead); else the request may be sampled for mirroring.
    /// `Ok(true)` when answered here.
    async fn preview_and_mirror(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        let Some(route) = ctx.routed.as_ref().and_then(Routed::route) else {
            return Ok(false);
        };
        let host_color = ctx.routed.as_ref().and_then(|r| r.host_color);
        let req = session.req_header();
        let key = route.preview.as_deref();
        let (verdict, strip) = preview::judge(req, key, self.verify.as_ref());
        ctx.strip = strip;
        if let Some(color) = host_color {
            ctx.pinned = Some(color);
            return Ok(false);
        }
        if let Some(endpoint) = key.and_then(|k| preview::endpoint(req, k)) {
            let cookie = key.map(|k| k.cookie().to_string());
            self.preview_endpoint(session, endpoint, cookie.as_deref())
                .await?;
            return Ok(true);
        }
        match verdict {
            Verdict::None => {
                if mirror::sample(&route.config.mirror, req) {
                    ctx.mirror = Some(MirrorBody::default());
                }
                Ok(false)
            }
            Verdict::Refused(why) => {
                let body = Bytes::from(format!("403 Forbidden: {why}\n"));
                session.respond_error_with_body(403, body).await?;
                Ok(true)
            }
            Verdict::Standby => {
                let color = route.live.other();
                let pool = route.pool_of(ctx.path_route, color);
                pool.metrics.preview.inc();
                if !pool.any_up() {
                    let body = Bytes::from(format!(
                        "503 Service Unavailable: preview of app '{}': no upstream of the standby color ({color}) is up\n",
                        route.name
                    ));
                    session.respond_error_with_body(503, body).await?;
                    return Ok(true);
                }
                ctx.pinned = Some(color);
                ctx.preview = true;
                Ok(false)
            }
        }
    }

    /// Answers a preview path: a 302 to `/` setting (`cookie`) or clearing
    /// the preview cookie, 403 for a wrong token, 405 for a method other
    /// than GET or HEAD.
    async fn preview_endpoint(
        &self,
        session: &mut Session,
        endpoint: Endpoint,
        cookie: Option<&str>,
    ) -> Result<()> {
        let tls = is_tls(session);
        let set_cookie = match endpoint {
            Endpoint::On => preview::set_cookie(cookie, tls),
            Endpoint::Off => preview::set_cookie(None, tls),
            Endpoint::WrongToken => {
                let body = Bytes::from_static(b"403 Forbidden: wrong or missing preview token\n");
                return session.respond_error_with_body(403, body).await;
            }
            Endpoint::Method => {
                let mut resp = pingora::http::ResponseHeader::build(405, Some(2))?;
                resp.insert_header(http::header::ALLOW, "GET, HEAD")?;
                resp.insert_header(http::header::CONTENT_LENGTH, 0)?;
                return session.write_response_header(Box::new(resp), true).await;
            }
        };
        let mut resp = pingora::http::ResponseHeader::build(302, Some(4))?;
        resp.insert_header(http::header::LOCATION, "/")?;
        resp.insert_header(http::header::SET_COOKIE, set_cookie)?;
        resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
        resp.insert_header(http::header::CONTENT_LENGTH, 0)?;
        session.write_response_header(Box::new(resp), true).await
    }

    /// Sends the copy of a request sampled for mirroring, once its live
    /// answer was written whole (`status`, no error), when it went to the
    /// live color. Never waits: the copy runs on its own task.
    fn mirror(
        &self,
        session: &Session,
        e: Option<&Error>,
        status: Option<u16>,
        body: MirrorBody,
        ctx: &RequestCtx,
    ) {
        let (None, Some(live_status), Some(route)) = (e, status, ctx.route()) else {
            return;
        };
        if ctx.pinned.is_some() || ctx.color != Some(route.live) {
            return;
        }
        let client = match session.client_addr() {
            Some(PingoraAddr::Inet(a)) => Some(a.ip()),
            _ => None,
        };
        let copy = mirror::Copy {
            req: session.req_header(),
            body,
            live_status,
            client,
            proto: if is_tls(session) { "https" } else { "http" },
        };
        self.mirrorer.send(route, copy);
    }
}

/// Which requests get an access log line (none, all, or an evenly spaced
/// fraction: deterministic, lock-free, request n is logged when
/// `floor((n+1)*rate) > floor(n*rate)`), and where it goes: the process's
/// [`AccessWriter`], absent when the log level keeps target `access` quiet.
#[derive(Clone)]
struct AccessLog {
    rate: f64,
    seen: Arc<AtomicU64>,
    writer: Option<&'static AccessWriter>,
}

impl AccessLog {
    fn new(log: &LogConfig) -> Self {
        let writer = access_log::global();
        AccessLog {
            rate: if log.access && writer.is_some() {
                log.access_sample
            } else {
                0.0
            },
            seen: Arc::new(AtomicU64::new(0)),
            writer,
        }
    }

    /// The writer, when this request gets a line.
    #[inline]
    fn sample(&self) -> Option<&'static AccessWriter> {
        if self.rate <= 0.0 {
            return None;
        }
        if self.rate < 1.0 {
            let n = self.seen.fetch_add(1, Ordering::Relaxed) as f64;
            if ((n + 1.0) * self.rate).floor() <= (n * self.rate).floor() {
                return None;
            }
        }
        self.writer
    }
}

/// What one request has been routed to.
#[derive(Default)]
pub struct RequestCtx {
    /// The snapshot this request is routed by and the app its Host matched:
    /// loaded once, by the front door or by `request_filter`.
    routed: Option<Routed>,
    color: Option<Color>,
    /// A split bucket drawn for this client: the response sets its cookie.
    set_bucket: Option<u16>,
    /// The upstream of the current attempt.
    upstream: Option<SocketAddr>,
    /// Set after the one retry has been granted.
    retried: bool,
    /// When the request arrived.
    started: Option<Instant>,
    /// Counted in the color's active gauge (to be released in `logging`).
    active: bool,
    /// Request body bytes seen so far (for `max_body`).
    body_bytes: u64,
    /// The connector of an upgrade request (holds its upstream socket).
    upgrade: Option<Arc<UpgradeConnector>>,
    /// The upstream side's idle limit of an upgrade request.
    upstream_idle: Option<UpstreamIdle>,
    /// The upgraded connection, registered for the drain.
    upgraded: Option<Registration>,
    /// The color a preview or a color host sends this request to, whatever
    /// is live; its answer names it in `X-Bgproxy-Color`.
    pinned: Option<Color>,
    /// Pinned by a preview: only `up` upstreams of that color may take it.
    preview: bool,
    /// The preview header or cookie to remove before the upstream.
    strip: Strip,
    /// Sampled for mirroring: the copy of the body so far.
    mirror: Option<MirrorBody>,
    /// The app's route (`[[app.routes]]`) serving the path: an index into
    /// its `paths`, `None` for the app's own pools.
    path_route: Option<usize>,
    /// A response the lean loop wrote to the client itself, not through
    /// pingora's session: its status and body bytes so far.
    written: Option<(u16, usize)>,
}

impl RequestCtx {
    /// The context of a request the front door has routed already: its hooks
    /// use `routed` and load no snapshot of their own.
    pub fn routed(routed: Routed) -> Self {
        RequestCtx {
            routed: Some(routed),
            ..RequestCtx::default()
        }
    }

    /// This request's routing: the one it was given, or else one load of
    /// `routing` now, kept for every later call.
    fn route_by(&mut self, routing: &Routing, host: Option<&[u8]>) -> &Routed {
        self.routed
            .get_or_insert_with(|| Routed::load(routing, host))
    }

    /// Records a response the lean loop writes itself: its head went out
    /// with `status`, and `body_bytes` of its body so far.
    pub fn wrote(&mut self, status: u16, body_bytes: usize) {
        self.written = Some((status, body_bytes));
    }

    /// Whether the lean loop has written a response head itself.
    pub fn has_written(&self) -> bool {
        self.written.is_some()
    }

    /// The app this request is routed to, if any.
    fn route(&self) -> Option<&AppRoute> {
        self.routed.as_ref().and_then(Routed::route)
    }
}

/// What the upstream is told about the client (`X-Forwarded-*`).
fn forwarded(session: &Session) -> Forwarded {
    Forwarded {
        client: match session.client_addr() {
            Some(PingoraAddr::Inet(client)) => Some(client.ip()),
            _ => None,
        },
        proto: if is_tls(session) { "https" } else { "http" },
    }
}

/// Whether the client connection is TLS.
fn is_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

fn is_websocket(req: &RequestHeader) -> bool {
    req.headers
        .get(http::header::UPGRADE)
        .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Why a request must get 400 for its Host: HTTP/1.1 without one (RFC 9112
/// 3.2), or one that is not a valid `host[:port]` ([`valid_host`]).
fn bad_host(req: &RequestHeader) -> Option<&'static str> {
    match req.headers.get(http::header::HOST) {
        None if req.version == http::Version::HTTP_11 => {
            Some("400 Bad Request: an HTTP/1.1 request needs a Host header\n")
        }
        Some(host) if !valid_host(host.as_bytes()) => {
            Some("400 Bad Request: the Host header is not a valid host[:port]\n")
        }
        _ => None,
    }
}

/// The kind of a request error that only says the client went away
/// (closed, reset) or stalled: nothing an operator can act on.
fn client_gone(e: &Error) -> Option<Benign> {
    if !matches!(e.esource(), ErrorSource::Downstream) {
        return None;
    }
    match e.etype() {
        ErrorType::ReadError
        | ErrorType::WriteError
        | ErrorType::ConnectionClosed
        | ErrorType::H2Error => Some(Benign::ClientDisconnect),
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => Some(Benign::ClientTimeout),
        _ => None,
    }
}

fn host_of(req: &RequestHeader) -> Option<&[u8]> {
    req.headers
        .get(http::header::HOST)
        .map(|h| h.as_bytes())
        .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()))
}

#[async_trait]
impl ProxyHttp for DataPlane {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    /// The front door's hand-over: a request it routed to choose its path,
    /// then left to pingora-proxy (an `h2` app, a redirect, an unknown
    /// host), carries that [`Routed`] as the session's connection user
    /// context. pingora-proxy hands any such context to this hook before
    /// `request_filter`, on a connection's first request too (despite the
    /// name); bgproxy never persists one of its own
    /// (`persist_connection_context` is left at `None`), so this is the
    /// only kind there is. If it ever stopped coming, `request_filter`
    /// would load the routing itself: a second load, still one snapshot
    /// for every hook.
    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
        handed_over: Box<dyn Any + Send + Sync>,
    ) {
        if let Ok(routed) = handed_over.downcast::<Routed>() {
            ctx.routed = Some(*routed);
        }
    }

    /// No downstream modules: pingora's default adds a (disabled) response
    /// compression module, which still runs its filters on every request.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.started = Some(Instant::now());
        // pingora keeps a keep-alive connection idle without limit after its
        // first request: bound it (unless the client asked to close).
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(self.limits.client_idle_timeout.as_secs().max(1)));
        }
        // An ACME CA validating HTTP-01: answered here, never forwarded.
        if let Some(challenges) = &self.acme {
            if let Some(answer) = challenges.http_answer(session.req_header().uri.path()) {
                session.set_keepalive(None);
                session
                    .respond_error_with_body(200, Bytes::from(answer))
                    .await?;
                return Ok(true);
            }
        }
        // Before routing: a request is never routed by a Host that is not one.
        if let Some(why) = bad_host(session.req_header()) {
            session.set_keepalive(None);
            session
                .respond_error_with_body(400, Bytes::from_static(why.as_bytes()))
                .await?;
            return Ok(true);
        }
        let routed = ctx.route_by(&self.routing, host_of(session.req_header()));
        match routed.route() {
            Some(route) => {
                if let Some(why) = self.headers_too_large(session.req_header()) {
                    let body = Bytes::from(format!("431 Request Header Fields Too Large: {why}\n"));
                    session.respond_error_with_body(431, body).await?;
                    return Ok(true);
                }
                if let Some(limit) = &route.rate_limit {
                    if rate_limit::enforce(session, &route.name, limit).await? {
                        return Ok(true); // 429
                    }
                }
                let path_route = route.paths.find(session.req_header().uri.path());
                let config = &route.config;
                let declared = session
                    .req_header()
                    .headers
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                if declared.is_some_and(|n| n > config.max_body) {
                    let body = Bytes::from(format!(
                        "413 Content Too Large: the limit is {} bytes\n",
                        config.max_body
                    ));
                    session.respond_error_with_body(413, body).await?;
                    return Ok(true);
                }
                // Upgrade requests too: tunnel_timeout replaces this only
                // once the upstream answered 101 (response_filter).
                session
                    .as_downstream_mut()
                    .set_read_timeout(Some(self.limits.client_timeout));
                if config.redirect_https && !is_tls(session) {
                    self.redirect(session).await?;
                    return Ok(true);
                }
                ctx.path_route = path_route;
                self.preview_and_mirror(session, ctx).await
            }
            None => {
                self.metrics.unrouted.inc();
                // Never echo the client's Host back: it is untrusted input.
                let body =
                    Bytes::from_static(b"404 Not Found: no app is configured for this host\n");
                session.respond_error_with_body(404, body).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let route = ctx.route().ok_or_else(|| {
            Error::explain(ErrorType::InternalError, "request was not routed to an app")
        })?;
        // One placement per request: a retry stays on the color it drew.
        let mut set_bucket = None;
        let color = match (ctx.pinned, ctx.color) {
            // A preview or a color host: that color, whatever is live.
            (Some(pinned), _) => pinned,
            (None, Some(color)) if ctx.retried => color,
            _ => {
                let client = match session.client_addr() {
                    Some(PingoraAddr::Inet(a)) => Some(a.ip()),
                    _ => None,
                };
                let placed = route.color_for(session.req_header(), client);
                set_bucket = placed.set_cookie;
                placed.color
            }
        };
        // On the retry, skip the upstream that just refused.
        let exclude = if ctx.retried { ctx.upstream } else { None };
        let pool = route.pool_of(ctx.path_route, color);
        let pick = if ctx.preview {
            // A preview never lands on an upstream that is not known `up`.
            pool.pick_up(exclude).map(|upstream| Pick {
                upstream,
                panic: false,
            })
        } else {
            pool.pick(exclude)
        };
        let pick = pick.ok_or_else(|| {
            let mut e = Error::explain(
                ErrorType::ConnectNoRoute,
                "no other upstream of the live color to try",
            );
            e.esource = ErrorSource::Upstream;
            e
        })?;
        let addr = pick.upstream.addr;
        if !ctx.active {
            pool.metrics.active.inc();
        }
        if pick.panic {
            pool.metrics.panic_routed.inc();
        }
        if pool.panic_changed(pick.panic) {
            if pick.panic {
                warn!(app = %route.name, color = %color, "every upstream of the live color is down: routing to them anyway (panic mode)");
            } else {
                info!(app = %route.name, color = %color, "an upstream of the live color is up again: panic mode over");
            }
        }
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(route.config.connect_timeout);
        peer.options.read_timeout = Some(route.config.read_timeout);
        if session.is_upgrade_req() {
            // Our own connection, so the drain can end it after a switch.
            let connector = Arc::new(UpgradeConnector::new(route.config.connect_timeout));
            peer.options.custom_l4 = Some(connector.clone());
            peer.group_key = self.upgrades.unique_key();
            peer.options.idle_timeout = Some(Duration::ZERO);
            // read_timeout until the 101, tunnel_timeout after it: pingora
            // cannot change its own on the way, so UpstreamIdle keeps it
            // (started in upstream_request_filter).
            peer.options.read_timeout = None;
            ctx.upgrade = Some(connector);
        } else if route.config.h2 {
            // Cleartext HTTP/2 with prior knowledge (no TLS to upstreams).
            peer.options.alpn = pingora::protocols::ALPN::H2;
            // Multiplex: up to 100 requests at once on one connection.
            peer.options.max_h2_streams = 100;
        }
        ctx.active = true;
        ctx.color = Some(color);
        if set_bucket.is_some() {
            ctx.set_bucket = set_bucket;
        }
        ctx.upstream = Some(addr);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let others = ctx
            .route()
            .zip(ctx.color)
            .is_some_and(|(r, c)| r.pool_of(ctx.path_route, c).upstreams.len() > 1);
        let retry = !ctx.retried && others && session.req_header().method.is_idempotent();
        ctx.retried |= retry;
        if retry {
            if let Some((r, c)) = ctx.route().zip(ctx.color) {
                r.pool_of(ctx.path_route, c).metrics.retries.inc();
            }
        }
        e.set_retry(retry);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Connected, the request about to go: the upstream's time to answer
        // an upgrade request starts now, as pingora's read timeout would.
        if let (Some(connector), Some(route)) = (&ctx.upgrade, ctx.route()) {
            let limit = route.config.read_timeout;
            ctx.upstream_idle = Some(UpstreamIdle::start(connector.clone(), limit));
        }
        // bgproxy's own: the preview header and cookie never reach an app.
        if ctx.strip.header {
            upstream_request.remove_header(&PREVIEW_HEADER);
        }
        if ctx.strip.cookie {
            match preview::strip_preview_cookie(session.req_header()) {
                Some(rest) => upstream_request.insert_header(http::header::COOKIE, rest)?,
                None => drop(upstream_request.remove_header(&http::header::COOKIE)),
            }
        }
        if let Some(route) = ctx.route() {
            routes::rewrite(route, ctx.path_route, upstream_request);
        }
        // Whatever else is added here, `forwarded_only` must say `None` for.
        add_forwarded_headers(upstream_request, forwarded(session))
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Bodies without Content-Length (chunked) are counted as they come.
        ctx.body_bytes += body.as_ref().map_or(0, |b| b.len() as u64);
        let limit = ctx.route().map_or(u64::MAX, |r| r.config.max_body);
        if ctx.body_bytes > limit {
            return Error::e_explain(
                ErrorType::HTTPStatus(413),
                format!("request body over the limit of {limit} bytes"),
            );
        }
        if let (Some(copy), Some(chunk)) = (ctx.mirror.as_mut(), body.as_ref()) {
            let max = ctx
                .routed
                .as_ref()
                .and_then(Routed::route)
                .map_or(0, |r| r.config.mirror.max_body);
            if !copy.push(chunk, max) {
                ctx.mirror = None; // too large to copy
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut pingora::http::ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(idle) = &ctx.upstream_idle {
            idle.touch();
        }
        if upstream_response.status == http::StatusCode::SWITCHING_PROTOCOLS {
            // A 101 to a request that did not ask for an upgrade would turn
            // the connection into a tunnel the client never wanted: 502, as
            // the lean loop answers it.
            if !session.is_upgrade_req() {
                return Error::e_explain(
                    ErrorType::InvalidHTTPHeader,
                    "101 from the upstream to a request without Upgrade",
                )
                .map_err(|e| e.into_up());
            }
            // Upgraded: from now on the tunnel's idle limit applies, both ways.
            if let Some(route) = ctx.route() {
                let tunnel = route.config.tunnel_timeout;
                session.as_downstream_mut().set_read_timeout(tunnel);
                if let Some(idle) = &ctx.upstream_idle {
                    idle.upgraded(tunnel);
                }
            }
            if let (Some(connector), Some(route), Some(color)) =
                (ctx.upgrade.clone(), ctx.route(), ctx.color)
            {
                ctx.upgraded = Some(self.upgrades.register(
                    route.name.clone(),
                    color,
                    route.config.drain_timeout,
                    connector,
                ));
            }
        }
        if self.draining.load(Ordering::Relaxed) && !session.as_downstream().is_http2() {
            session.set_keepalive(None);
            upstream_response.insert_header(http::header::CONNECTION, "close")?;
        }
        if let (Some(_), Some(color)) = (ctx.pinned, ctx.color) {
            upstream_response.insert_header(COLOR_HEADER.clone(), color.as_str())?;
        }
        if let Some(bucket) = ctx.set_bucket {
            // The client keeps its bucket, so it keeps its color while the
            // share holds and only ever moves old -> new as it rises.
            let secure = if is_tls(session) { "; Secure" } else { "" };
            upstream_response.append_header(
                http::header::SET_COOKIE,
                format!("{BUCKET_COOKIE}={bucket}; Path=/; HttpOnly; SameSite=Lax{secure}"),
            )?;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let Some(idle) = &ctx.upstream_idle {
            idle.touch();
        }
        // A drained WebSocket ends with a close frame ("going away"), so the
        // client knows to reconnect rather than seeing a broken stream.
        if end_of_stream
            && ctx.upgraded.as_ref().is_some_and(Registration::drained)
            && is_websocket(session.req_header())
        {
            let mut out = body.take().map(Vec::from).unwrap_or_default();
            out.extend_from_slice(WS_GOING_AWAY);
            *body = Some(Bytes::from(out));
        }
        Ok(None)
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let (status, bytes) = match (session.response_written(), ctx.written) {
            (Some(r), _) => (Some(r.status.as_u16()), session.body_bytes_sent()),
            (None, Some((status, bytes))) => (Some(status), bytes),
            (None, None) => (None, session.body_bytes_sent()),
        };
        let elapsed = ctx.started.map_or(Duration::ZERO, |t| t.elapsed());
        let copy = ctx.mirror.take();
        let (app, color) = match (ctx.route(), ctx.color) {
            (Some(route), Some(color)) => {
                let m = &route.pool(color).metrics;
                m.record(status, elapsed.as_secs_f64());
                if ctx.active {
                    m.active.dec();
                }
                (Some(&route.name), Some(color))
            }
            (route, _) => (route.map(|r| &r.name), None),
        };
        if let Some(body) = copy {
            self.mirror(session, e, status, body, ctx);
        }
        let Some(writer) = self.access.sample() else {
            return;
        };
        let req = session.req_header();
        let client = match session.client_addr() {
            Some(PingoraAddr::Inet(a)) => Some(a.ip()),
            _ => None,
        };
        // Client-controlled values cannot forge log fields: the path is
        // quoted and escaped, the host written as it came only when it is
        // a valid host (else quoted too).
        writer.log(&access_log::Line {
            app: app.map_or("-", |a| &**a),
            color: color.map_or("-", Color::as_str),
            upstream: ctx.upstream,
            method: req.method.as_str(),
            path: req.uri.path_and_query().map_or("/", |p| p.as_str()),
            host: host_of(req),
            status: status.unwrap_or(0),
            bytes,
            duration: elapsed,
            client,
            error: e.map(|e| e.etype().as_str()),
        });
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        // The upstream of an upgrade request idle past read_timeout: ended
        // by UpstreamIdle, which pingora sees as the upstream closing.
        let idle_upstream = ctx.upstream_idle.as_ref().is_some_and(UpstreamIdle::fired);
        let code = match e.etype() {
            _ if idle_upstream => 504,
            ErrorType::HTTPStatus(code) => *code,
            // The upstream took too long: to connect, or to answer.
            ErrorType::ConnectTimedout => 504,
            ErrorType::ReadTimedout if matches!(e.esource(), ErrorSource::Upstream) => 504,
            // The client took too long to send its request body.
            ErrorType::ReadTimedout => 408,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code == 502 {
            let who = match (ctx.route(), ctx.color) {
                (Some(r), Some(c)) => format!("{} ({c})", r.name),
                (Some(r), None) => r.name.to_string(),
                _ => "this app".into(),
            };
            warn!(upstream = ?ctx.upstream, "502 for {who}: {e}");
            let body = format!("502 Bad Gateway: no upstream of {who} could take the request\n");
            let _ = session
                .respond_error_with_body(502, Bytes::from(body))
                .await;
        } else if code > 0 {
            let reason = match code {
                504 => "504 Gateway Timeout: the upstream did not answer in time\n",
                413 => "413 Content Too Large: the request body is over the limit\n",
                408 => "408 Request Timeout: the request body did not arrive in time\n",
                _ => "",
            };
            let _ = session
                .respond_error_with_body(code, Bytes::from_static(reason.as_bytes()))
                .await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// pingora-proxy logs every failed request at error; a client that went
    /// away or stalled is not an operator's problem: debug, and counted.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, e: &Error) -> bool {
        self.client_gone(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::routing::testing::{app, snapshot};
    use crate::dataplane::routing::Snapshot;
    use arc_swap::ArcSwap;

    fn with_h2(h2: bool) -> Arc<Snapshot> {
        let mut a = (*app("web", &["web.example"], &[1], &[2])).clone();
        a.h2 = h2;
        Arc::new(snapshot(&[Arc::new(a)], None))
    }

    #[test]
    fn a_request_the_front_door_routed_keeps_its_snapshot_across_a_reload() {
        let before = with_h2(false);
        let routing: Routing = Arc::new(ArcSwap::new(before.clone()));
        let host = Some(&b"web.example"[..]);
        let mut ctx = RequestCtx::routed(Routed::by(before.clone(), host));
        // A reload between the front door's look at the request and its
        // hooks: the app now has HTTP/2 upstreams, which the lean loop
        // cannot serve.
        routing.store(with_h2(true));
        let routed = ctx.route_by(&routing, host);
        assert!(Arc::ptr_eq(&routed.snapshot, &before), "no second load");
        assert!(!ctx.route().expect("routed to web").config.h2);
    }

    #[test]
    fn a_request_routed_by_its_hooks_loads_once() {
        let first = with_h2(false);
        let routing: Routing = Arc::new(ArcSwap::new(first.clone()));
        let host = Some(&b"web.example"[..]);
        let mut ctx = RequestCtx::default();
        assert_eq!(ctx.route_by(&routing, host).app, Some(0));
        routing.store(with_h2(true));
        assert!(Arc::ptr_eq(&ctx.route_by(&routing, host).snapshot, &first));
        assert!(!ctx.route().expect("routed to web").config.h2);

        let mut unknown = RequestCtx::default();
        assert_eq!(unknown.route_by(&routing, Some(b"other")).app, None);
        assert!(unknown.route().is_none());
    }

    #[test]
    fn http11_without_host_and_hosts_that_are_none_get_400() {
        let req = |version, host: Option<&str>| {
            let mut r = RequestHeader::build("GET", b"/", None).unwrap();
            r.set_version(version);
            if let Some(h) = host {
                r.insert_header("Host", h).unwrap();
            }
            r
        };
        use http::Version;
        assert!(bad_host(&req(Version::HTTP_11, None)).is_some());
        assert!(bad_host(&req(Version::HTTP_11, Some("shop.test:80@evil.test"))).is_some());
        assert!(bad_host(&req(Version::HTTP_2, Some("a b"))).is_some());
        assert!(bad_host(&req(Version::HTTP_11, Some("shop.test:8080"))).is_none());
        assert!(
            bad_host(&req(Version::HTTP_10, None)).is_none(),
            "1.0 needs none"
        );
        assert!(
            bad_host(&req(Version::HTTP_2, None)).is_none(),
            ":authority"
        );
    }

    #[test]
    fn only_a_client_that_went_away_or_stalled_is_benign() {
        let e = |t: ErrorType, source: ErrorSource| {
            let mut e = Error::new(t);
            e.esource = source;
            e
        };
        use ErrorSource::{Downstream, Upstream};
        assert_eq!(
            client_gone(&e(ErrorType::ConnectionClosed, Downstream)),
            Some(Benign::ClientDisconnect)
        );
        assert_eq!(
            client_gone(&e(ErrorType::WriteError, Downstream)),
            Some(Benign::ClientDisconnect)
        );
        assert_eq!(
            client_gone(&e(ErrorType::ReadTimedout, Downstream)),
            Some(Benign::ClientTimeout)
        );
        assert_eq!(client_gone(&e(ErrorType::ReadError, Upstream)), None);
        assert_eq!(client_gone(&e(ErrorType::ConnectRefused, Upstream)), None);
        assert_eq!(
            client_gone(&e(ErrorType::InvalidHTTPHeader, Downstream)),
            None
        );
    }
}
