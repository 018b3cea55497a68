//! The front door's HTTP/1 loop: plain requests take a straight line,
//! everything else goes to pingora-proxy.
//!
//! pingora-proxy runs every request through a general machine: two halves
//! joined by a task channel, two header maps per request, every filter of
//! the `ProxyHttp` trait. Measured on the project's box (`benches/README.md`,
//! `lean_h1`), pingora's own HTTP/1 sessions, pool and timers in one straight
//! line per request cost ~58k instructions against pingora-proxy's ~73k and
//! reach 0.90x HAProxy's requests per second against 0.80x.
//!
//! So for a cleartext or TLS HTTP/1 connection, [`FrontDoor`] reads each
//! request header itself and looks at it ([`Shape`]): a request without a
//! body, upgrade, `Expect` or hop-by-hop headers beyond `Connection:
//! keep-alive/close`, for an app with HTTP/1 upstreams, takes the lean loop;
//! any other request is handed to pingora-proxy unchanged. The bytes read are
//! handed on as the session's "pipelined prefix", which pingora's HTTP/1
//! session parses before reading the socket again, so nothing is lost and
//! either path sees the request as the client sent it. HTTP/2 connections
//! go to pingora-proxy whole.
//!
//! The lean loop calls the same [`DataPlane`] hooks pingora-proxy calls, in
//! the same order (`request_filter`, `upstream_peer`, `fail_to_connect`,
//! `upstream_request_filter`, `response_filter`, `response_body_filter`,
//! `fail_to_proxy`, `logging`), so routing, limits, retries, headers, drain,
//! error pages, metrics and the access log are one code for both paths.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::protocols::http::client::HttpSession as ClientSession;
use pingora::protocols::http::v1::client::HttpSession as UpstreamH1;
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::http::{HttpTask, ServerSession};
use pingora::protocols::Stream;
use pingora::proxy::{HttpProxy, ProxyHttp, Session};
use pingora::server::ShutdownWatch;
use pingora::upstreams::peer::Peer;
use pingora::{Error, ErrorType};
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;

use crate::dataplane::hooks::{DataPlane, RequestCtx};
use crate::dataplane::routing::Routing;

/// The most header bytes read before giving the request to pingora-proxy
/// (which applies its own limit and answers 431/400 itself).
const MAX_LEAN_HEADER: usize = 16 * 1024;
/// The most headers the lean loop looks at; more go to pingora-proxy.
const MAX_LEAN_HEADERS: usize = 64;

/// The front door's HTTP application: the lean loop, with pingora-proxy
/// behind it.
pub struct FrontDoor {
    proxy: Arc<HttpProxy<DataPlane>>,
    data: DataPlane,
    connector: Connector,
    shutting_down: AtomicBool,
    shutdown: Notify,
}

impl FrontDoor {
    /// `data` is the same data plane `proxy` runs (a clone of it).
    pub fn new(proxy: HttpProxy<DataPlane>, data: DataPlane, connector: Connector) -> Self {
        FrontDoor {
            proxy: Arc::new(proxy),
            data,
            connector,
            shutting_down: AtomicBool::new(false),
            shutdown: Notify::new(),
        }
    }
}

/// What the start of a connection's next request is.
#[derive(Debug, PartialEq, Eq)]
pub enum Shape {
    /// A complete header the lean loop can serve.
    Lean,
    /// Anything else, complete or not: pingora-proxy's.
    Other,
    /// Not a complete header yet.
    Partial,
}

/// Looks at a request header (without parsing it into pingora's types):
/// GET, HEAD or OPTIONS over HTTP/1.1 with an origin-form target, a Host,
/// no body, no upgrade, no `Expect`, no hop-by-hop header but `Connection:
/// keep-alive` or `close`, and a Host for which `lean_app` says yes.
pub fn shape(buf: &[u8], lean_app: impl FnOnce(&[u8]) -> bool) -> Shape {
    let mut headers = [httparse::EMPTY_HEADER; MAX_LEAN_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Shape::Partial,
        Err(_) => return Shape::Other,
    }
    let simple = matches!(req.method, Some("GET" | "HEAD" | "OPTIONS"))
        && req.version == Some(1)
        && req.path.is_some_and(|p| p.starts_with('/'));
    if !simple {
        return Shape::Other;
    }
    let mut host = None;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        if is("host") {
            if host.is_some() {
                return Shape::Other;
            }
            host = Some(h.value);
        } else if is("connection") {
            let v = h.value.trim_ascii();
            if !(v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")) {
                return Shape::Other;
            }
        } else if is("content-length")
            || is("transfer-encoding")
            || is("upgrade")
            || is("expect")
            || is("te")
            || is("trailer")
            || is("keep-alive")
            || is("proxy-connection")
            || is("proxy-authenticate")
            || is("proxy-authorization")
            || is("http2-settings")
        {
            return Shape::Other;
        }
    }
    match host {
        Some(host) if lean_app(host) => Shape::Lean,
        _ => Shape::Other,
    }
}

/// Whether the app `host` routes to forwards over HTTP/1 and does not
/// redirect this connection to HTTPS (unknown hosts are pingora-proxy's:
/// it answers their 404).
fn lean_app(routing: &Routing, host: &[u8], tls: bool) -> bool {
    let snapshot = routing.load();
    snapshot.app_for_host(Some(host)).is_some_and(|app| {
        let config = &snapshot.apps[app].config;
        !config.h2 && (!config.redirect_https || tls)
    })
}

#[async_trait]
impl HttpServerApp for FrontDoor {
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let ServerSession::H1(v1) = session else {
            return self.proxy.process_new_http(session, shutdown).await;
        };
        // What pingora set for this connection (keep-alive idle timeout,
        // reuse count) goes on to the session that serves the request.
        let keepalive = v1.get_keepalive_timeout();
        let reuses = v1.get_keepalive_reuses_remaining();
        let mut stream = v1.into_inner();
        let tls = stream.get_ssl_digest().is_some();
        let (head, shape) = self.read_head(&mut stream, keepalive, tls).await?;
        if shape == Shape::Lean {
            let mut session = Session::new_h1(stream);
            prepare(session.as_downstream_mut(), head, keepalive, reuses);
            return self.lean(session).await;
        }
        let mut session = ServerSession::new_http1(stream);
        prepare(&mut session, head, keepalive, reuses);
        self.proxy.process_new_http(session, shutdown).await
    }

    async fn http_cleanup(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.shutdown.notify_waiters();
        self.proxy.http_cleanup().await;
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.proxy.server_options()
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.proxy.h2_options()
    }
}

/// The bytes already read, the keep-alive settings.
fn prepare(
    session: &mut ServerSession,
    head: BytesMut,
    keepalive: Option<u64>,
    reuses: Option<u32>,
) {
    session.set_keepalive(keepalive);
    session.set_keepalive_reuses_remaining(reuses);
    if !head.is_empty() {
        if let ServerSession::H1(v1) = session {
            v1.set_pipelined_prefix(head);
        }
    }
}

impl FrontDoor {
    /// Reads until the next request's header is complete (or clearly not
    /// the lean loop's). `None`: the client closed or idled out before
    /// sending anything, or the server is shutting down.
    async fn read_head(
        &self,
        stream: &mut Stream,
        keepalive: Option<u64>,
        tls: bool,
    ) -> Option<(BytesMut, Shape)> {
        // pingora's rule: a keep-alive connection waits its keep-alive
        // timeout (0: without limit), others the read timeout.
        let wait = match keepalive {
            Some(0) => None,
            Some(s) => Some(Duration::from_secs(s)),
            None => Some(self.data.limits().client_timeout),
        };
        let mut buf = BytesMut::with_capacity(4096);
        loop {
            let stopping = self.shutdown.notified();
            if self.shutting_down.load(Ordering::Acquire) && buf.is_empty() {
                return None;
            }
            let idle = buf.is_empty();
            let read = async {
                match wait {
                    Some(t) => tokio::time::timeout(t, stream.read_buf(&mut buf))
                        .await
                        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
                    None => stream.read_buf(&mut buf).await,
                }
            };
            let n = tokio::select! {
                biased;
                n = read => n,
                _ = stopping, if idle => return None,
            };
            match n {
                Ok(0) | Err(_) if buf.is_empty() => return None,
                // A half-sent header that ends or stalls: pingora-proxy's
                // to answer (or close), as it would have been.
                Ok(0) | Err(_) => return Some((buf, Shape::Other)),
                Ok(_) => {}
            }
            match shape(&buf, |host| lean_app(self.data.routing(), host, tls)) {
                Shape::Partial if buf.len() < MAX_LEAN_HEADER => continue,
                Shape::Partial => return Some((buf, Shape::Other)),
                done => return Some((buf, done)),
            }
        }
    }

    /// One request through the lean loop, then the connection back to
    /// pingora for the next one.
    async fn lean(&self, mut session: Session) -> Option<ReusedHttpStream> {
        match session.read_request().await {
            Ok(true) => {}
            _ => return None,
        }
        let data = &self.data;
        let mut ctx = data.new_ctx();
        let error = self.serve(&mut session, &mut ctx).await.err();
        if let Some(e) = &error {
            if session.response_written().is_none() {
                data.fail_to_proxy(&mut session, e, &mut ctx).await;
            }
        }
        data.logging(&mut session, error.as_deref(), &mut ctx).await;
        if let Some(e) = error {
            // Dropped without finishing: a body cut short must not look
            // complete to the client (a chunked body's last chunk).
            session.downstream_session.on_proxy_failure(e);
            return None;
        }
        let settings = HttpPersistentSettings::for_session(session.as_downstream());
        match session.downstream_session.finish().await {
            Ok(Some(stream)) => Some(ReusedHttpStream::from_reusable_stream(stream, settings)),
            _ => None,
        }
    }

    async fn serve(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let data = &self.data;
        if data.request_filter(session, ctx).await? {
            return Ok(()); // answered (404, 431, ...)
        }
        let mut retried_reused = false;
        loop {
            let peer = data.upstream_peer(session, ctx).await?;
            let (client, reused) = match self.connector.get_http_session(&*peer).await {
                Ok(c) => c,
                Err(e) => {
                    let e = data.fail_to_connect(session, &peer, ctx, e.into_up());
                    if e.retry() {
                        continue;
                    }
                    return Err(e);
                }
            };
            let ClientSession::H1(mut upstream) = client else {
                return Error::e_explain(
                    ErrorType::InternalError,
                    "lean loop: HTTP/1 upstreams only",
                );
            };
            upstream.read_timeout = peer.options.read_timeout;
            upstream.write_timeout = peer.options.write_timeout;
            match self.exchange(session, ctx, &mut upstream).await {
                Ok(()) => {
                    self.connector
                        .release_http_session(
                            ClientSession::H1(upstream),
                            &*peer,
                            peer.idle_timeout(),
                        )
                        .await;
                    return Ok(());
                }
                Err(mut e) => {
                    // A pooled connection the upstream had closed: once more
                    // on a fresh one, as pingora-proxy does.
                    e.retry.decide_reuse(reused);
                    if e.retry() && !retried_reused && session.response_written().is_none() {
                        retried_reused = true;
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Writes the request to the upstream and copies the response back.
    async fn exchange(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        upstream: &mut UpstreamH1,
    ) -> Result<()> {
        let data = &self.data;
        let mut req: RequestHeader = session.req_header().clone();
        req.set_version(http::Version::HTTP_11);
        // The only hop-by-hop header a lean request can carry.
        req.remove_header(&http::header::CONNECTION);
        data.upstream_request_filter(session, &mut req, ctx).await?;
        upstream
            .write_request_header(Box::new(req))
            .await
            .map_err(|e| e.into_up())?;
        upstream.finish_body().await.map_err(|e| e.into_up())?;
        loop {
            match upstream
                .read_response_task()
                .await
                .map_err(|e| e.into_up())?
            {
                HttpTask::Header(mut header, end) => {
                    if header.status == http::StatusCode::SWITCHING_PROTOCOLS {
                        // No upgrade was asked for (pingora-proxy refuses it too).
                        return Error::e_explain(
                            ErrorType::InvalidHTTPHeader,
                            "101 from the upstream to a request without Upgrade",
                        )
                        .map_err(|e| e.into_up());
                    }
                    // A body delimited by the upstream closing its connection
                    // goes to the client chunked, so the client's connection
                    // stays open (as pingora-proxy does).
                    let no_body = session.req_header().method == http::Method::HEAD
                        || matches!(header.status.as_u16(), 204 | 304);
                    if !no_body
                        && !end
                        && !header.status.is_informational()
                        && !header.headers.contains_key(http::header::TRANSFER_ENCODING)
                        && !header.headers.contains_key(http::header::CONTENT_LENGTH)
                    {
                        header.set_version(http::Version::HTTP_11);
                        header.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
                    }
                    data.response_filter(session, &mut header, ctx).await?;
                    session
                        .write_response_header(header, end)
                        .await
                        .map_err(|e| e.into_down())?;
                    if end {
                        return Ok(());
                    }
                }
                HttpTask::Body(mut body, end) => {
                    data.response_body_filter(session, &mut body, end, ctx)?;
                    session
                        .write_response_body(body, end)
                        .await
                        .map_err(|e| e.into_down())?;
                    if end {
                        return Ok(());
                    }
                }
                HttpTask::Done => {
                    session
                        .write_response_body(None, true)
                        .await
                        .map_err(|e| e.into_down())?;
                    return Ok(());
                }
                HttpTask::Failed(e) => return Err(e.into_up()),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_requests_are_lean_others_are_not() {
        let lean = |s: &str| shape(s.as_bytes(), |host| host == b"a");
        assert_eq!(lean("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Shape::Lean);
        assert_eq!(
            lean("HEAD /x?y=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\nUser-Agent: t\r\n\r\n"),
            Shape::Lean
        );
        assert_eq!(lean("GET / HTTP/1.1\r\nHost: a\r\n"), Shape::Partial);
        for other in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "DELETE / HTTP/1.1\r\nHost: a\r\n\r\n",
            "BREW / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: not-lean\r\n\r\n",
            "G\x01T / HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(lean(other), Shape::Other, "{other:?}");
        }
    }
}
