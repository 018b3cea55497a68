//! The front door: every request of a client connection comes in here and
//! is sent one of two ways.
//!
//! For a cleartext or TLS HTTP/1 connection, [`FrontDoor`] reads each
//! request header itself and looks at it ([`Shape`]): a request without a
//! body, upgrade, `Expect` or hop-by-hop headers beyond `Connection:
//! keep-alive/close`, for an app with HTTP/1 upstreams, takes the lean loop
//! (`lean.rs`); any other request is handed to pingora-proxy unchanged. The
//! bytes read are handed on as the session's "pipelined prefix", which
//! pingora's HTTP/1 session parses before reading the socket again, so
//! nothing is lost and either path sees the request as the client sent it.
//! HTTP/2 connections go to pingora-proxy whole.
//!
//! Deciding the path takes the routing (which app serves the Host, and
//! whether its upstreams speak HTTP/1), so the front door loads the
//! snapshot for such a request, and that load is the request's only one:
//! the [`Routed`] it found goes with the request, to the lean loop as an
//! argument, to pingora-proxy as the session's connection user context
//! (delivered to `DataPlane::on_connection_reuse` before `request_filter`).
//! Requests whose shape rules the lean loop out before the Host is looked
//! at are not routed here; `request_filter` loads for them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::connectors::http::Connector;
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::proxy::{HttpProxy, Session};
use pingora::server::ShutdownWatch;
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;

use crate::dataplane::hooks::DataPlane;
use crate::dataplane::lean::LeanLoop;
use crate::dataplane::routing::Routed;

/// The most header bytes read before giving the request to pingora-proxy
/// (which applies its own limit and answers 431/400 itself).
const MAX_LEAN_HEADER: usize = 16 * 1024;
/// The most headers the lean loop looks at; more go to pingora-proxy.
const MAX_LEAN_HEADERS: usize = 64;

/// The front door's HTTP application: the lean loop, with pingora-proxy
/// behind it.
pub struct FrontDoor {
    proxy: Arc<HttpProxy<DataPlane>>,
    lean: LeanLoop,
    shutting_down: AtomicBool,
    shutdown: Notify,
}

impl FrontDoor {
    /// `data` is the same data plane `proxy` runs (a clone of it).
    pub fn new(proxy: HttpProxy<DataPlane>, data: DataPlane, connector: Connector) -> Self {
        FrontDoor {
            proxy: Arc::new(proxy),
            lean: LeanLoop::new(data, connector),
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

/// Whether the app a request was routed to forwards over HTTP/1 and does
/// not redirect this connection to HTTPS (unknown hosts are pingora-proxy's:
/// `request_filter` answers their 404 there).
fn lean_app(routed: &Routed, tls: bool) -> bool {
    routed
        .route()
        .is_some_and(|app| !app.config.h2 && (!app.config.redirect_https || tls))
}

/// A request head, read by the front door.
struct Head {
    /// The bytes read, handed on as the session's pipelined prefix.
    bytes: BytesMut,
    shape: Shape,
    /// The routing loaded to decide the shape; `None` when the shape was
    /// decided without it.
    routed: Option<Routed>,
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
        let Head {
            bytes,
            shape,
            routed,
        } = self.read_head(&mut stream, keepalive, tls).await?;
        match (shape, routed) {
            (Shape::Lean, Some(routed)) => {
                let mut session = Session::new_h1(stream);
                prepare(session.as_downstream_mut(), bytes, keepalive, reuses);
                self.lean.serve(session, routed).await
            }
            (_, routed) => {
                let mut session = ServerSession::new_http1(stream);
                prepare(&mut session, bytes, keepalive, reuses);
                if let Some(routed) = routed {
                    // pingora-proxy takes this from the session and hands it
                    // to `DataPlane::on_connection_reuse` before
                    // `request_filter`: the request is routed by the
                    // snapshot its path was chosen by, and loads no other.
                    session.set_connection_user_context(Some(Box::new(routed)));
                }
                self.proxy.process_new_http(session, shutdown).await
            }
        }
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
    ) -> Option<Head> {
        // pingora's rule: a keep-alive connection waits its keep-alive
        // timeout (0: without limit), others the read timeout.
        let wait = match keepalive {
            Some(0) => None,
            Some(s) => Some(Duration::from_secs(s)),
            None => Some(self.lean.data().limits().client_timeout),
        };
        let mut buf = BytesMut::with_capacity(4096);
        let head = |bytes, shape, routed| {
            Some(Head {
                bytes,
                shape,
                routed,
            })
        };
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
                Ok(0) | Err(_) => return head(buf, Shape::Other, None),
                Ok(_) => {}
            }
            // The routing is loaded only for a header complete and plain
            // enough for the lean loop: the Host is its last question.
            let mut routed = None;
            let shape = shape(&buf, |host| {
                let found = Routed::load(self.lean.data().routing(), Some(host));
                let lean = lean_app(&found, tls);
                routed = Some(found);
                lean
            });
            match shape {
                Shape::Partial if buf.len() < MAX_LEAN_HEADER => continue,
                Shape::Partial => return head(buf, Shape::Other, None),
                done => return head(buf, done, routed),
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

    #[test]
    fn the_lean_loop_takes_http1_apps_and_no_redirects_of_plain_http() {
        use crate::dataplane::routing::testing::{app, snapshot};
        let with = |name: &str, h2: bool, redirect_https: bool| {
            let mut a = (*app(name, &[name], &[1], &[2])).clone();
            a.h2 = h2;
            a.redirect_https = redirect_https;
            Arc::new(a)
        };
        let s = Arc::new(snapshot(
            &[
                with("plain", false, false),
                with("h2", true, false),
                with("secure", false, true),
            ],
            None,
        ));
        let lean =
            |host: &str, tls: bool| lean_app(&Routed::by(s.clone(), Some(host.as_bytes())), tls);
        assert!(lean("plain", false) && lean("plain", true));
        assert!(!lean("h2", false) && !lean("h2", true), "HTTP/2 upstreams");
        assert!(lean("secure", true), "served over TLS");
        assert!(!lean("secure", false), "redirected: pingora-proxy's");
        assert!(!lean("unknown", false), "404: pingora-proxy's");
    }
}
