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
//!
//! An HTTP/2 connection's streams come here one by one, each on a task of
//! its own (pingora reads their headers): a stream without a body, not
//! CONNECT and without `Expect`, for an app with HTTP/1 upstreams, takes
//! the lean loop too (in a `Session` made around it, [`stream_session`]);
//! any other goes to pingora-proxy. Under `h2load -c 20 -m 10` that took the
//! proxy's CPU per request from ~19 us to ~16 us (benches/README).
//!
//! The front door reads every HTTP/1 request head to its end before either
//! path sees it, so the limits on heads hold for both paths alike: a head
//! must arrive whole within `request_header_timeout` of its first byte (else
//! 408), and is read only up to `max_header_size` bytes (more: 431); either
//! way the connection is closed. Waiting for the first byte of a request is
//! keep-alive idle time (`client_idle_timeout`): nothing is answered when it
//! runs out. A head that is malformed beyond what pingora repairs goes to
//! pingora-proxy at once, which answers 400 from the bytes handed over.
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
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{BufMut, BytesMut};
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::prelude::fast_timeout::fast_timeout;
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora::protocols::Stream;
use pingora::proxy::{HttpProxy, Session};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tracing::debug;

use crate::dataplane::headers::valid_host;
use crate::dataplane::hooks::{DataPlane, Limits};
use crate::dataplane::lean::LeanLoop;
use crate::dataplane::routing::Routed;
use crate::metrics::Benign;

/// The most headers the lean loop looks at; more go to pingora-proxy.
const MAX_LEAN_HEADERS: usize = 64;
/// After the front door answered 408 or 431 itself: how long it goes on
/// reading (and dropping) what the client still sends before it closes, and
/// how much. Closing with unread bytes would reset the connection, and the
/// client could lose the answer.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;
/// The first capacity of the buffer a request head is read into; most
/// heads fit (a browser's with cookies may take one doubling).
const HEAD_BUFFER: usize = 1024;

/// The front door's HTTP application: the lean loop, with pingora-proxy
/// behind it.
pub struct FrontDoor {
    proxy: Arc<HttpProxy<DataPlane>>,
    lean: LeanLoop,
    shutting_down: AtomicBool,
    shutdown: Notify,
}

impl FrontDoor {
    /// `lean` runs a clone of the data plane `proxy` runs.
    pub fn new(proxy: HttpProxy<DataPlane>, lean: LeanLoop) -> Self {
        FrontDoor {
            proxy: Arc::new(proxy),
            lean,
            shutting_down: AtomicBool::new(false),
            shutdown: Notify::new(),
        }
    }
}

/// What the start of a connection's next request is.
#[derive(Debug, PartialEq, Eq)]
pub enum Shape {
    /// A complete header the lean loop can serve, this many bytes long.
    Lean(usize),
    /// Anything else, complete or not: pingora-proxy's.
    Other,
    /// Not a complete header yet.
    Partial,
}

/// Looks at a request header (without parsing it into pingora's types):
/// GET, HEAD or OPTIONS over HTTP/1.1 with an origin-form target, a valid
/// Host, no body, no upgrade, no `Expect`, no hop-by-hop header but
/// `Connection: keep-alive` or `close`, and a Host for which `lean_app`
/// says yes.
///
/// A head that cannot be parsed is `Other` once it is complete, so that
/// pingora-proxy never reads a head itself: one with more headers than the
/// lean loop looks at, or with a request target pingora escapes (spaces,
/// quotes) is `Partial` until its end arrived. Any other error is `Other` at
/// once (pingora answers 400 without reading more).
pub fn shape(buf: &[u8], lean_app: impl FnOnce(&[u8]) -> bool) -> Shape {
    let mut headers = [httparse::EMPTY_HEADER; MAX_LEAN_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Shape::Partial,
        Err(httparse::Error::TooManyHeaders) if head_end(buf).is_none() => return Shape::Partial,
        Err(httparse::Error::Token | httparse::Error::Version)
            if escapable(buf) && head_end(buf).is_none() =>
        {
            return Shape::Partial
        }
        Err(_) => return Shape::Other,
    };
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
        Some(host) if valid_host(host) && lean_app(host) => Shape::Lean(len),
        _ => Shape::Other,
    }
}

/// Where a request head ends (just past its empty line), if it is all in
/// `buf`. Leading empty lines are skipped, as httparse does.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut at = buf.iter().position(|&b| b != b'\r' && b != b'\n')?;
    while let Some(nl) = buf[at..].iter().position(|&b| b == b'\n') {
        at += nl + 1;
        match &buf[at..] {
            [b'\n', ..] => return Some(at + 1),
            [b'\r', b'\n', ..] => return Some(at + 2),
            _ => {}
        }
    }
    None
}

/// Whether pingora may still repair this head by escaping its request
/// target (pingora-core's `escape_illegal_request_line`: a line like
/// `^\w+ (.+) HTTP/\d`): a method-like word and a space, and either no end
/// of line yet or a first line with ` HTTP/` and a digit.
fn escapable(buf: &[u8]) -> bool {
    let word = buf
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
        .count();
    match buf.get(word) {
        _ if word == 0 => false,
        None => true,
        Some(b' ') => {
            let rest = &buf[word + 1..];
            match rest.iter().position(|&b| b == b'\n') {
                None => true,
                Some(eol) => rest[..eol]
                    .windows(7)
                    .any(|w| w.starts_with(b" HTTP/") && w[6].is_ascii_digit()),
            }
        }
        Some(_) => false,
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

/// Whether an HTTP/2 request may take the lean loop: no body (END_STREAM
/// with its headers), not CONNECT, no `Expect`. HTTP/2 has no other
/// hop-by-hop headers (the h2 crate refuses them).
fn plain_stream(session: &mut ServerSession) -> bool {
    let req = session.req_header();
    req.method != http::Method::CONNECT
        && !req.headers.contains_key(http::header::EXPECT)
        && session.is_body_empty()
}

/// A request's host: its `Host` header, else the authority of its target
/// (HTTP/2's `:authority`).
fn host_of(req: &pingora::http::RequestHeader) -> Option<&[u8]> {
    req.headers
        .get(http::header::HOST)
        .map(|h| h.as_bytes())
        .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()))
}

/// The socket of the placeholder session an HTTP/2 stream's lean session is
/// made from (pingora-proxy makes a `Session` for another protocol only
/// for itself): never read or written, the stream's own session replaces
/// it.
#[derive(Debug)]
struct NoSocket;

impl tokio::io::AsyncRead for NoSocket {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for NoSocket {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl VirtualSocket for NoSocket {
    fn set_socket_option(&self, _: VirtualSockOpt) -> std::io::Result<()> {
        Ok(())
    }
}

/// A pingora-proxy `Session` around an HTTP/2 stream's session.
fn stream_session(downstream: ServerSession) -> Session {
    let placeholder = L4Stream::from(VirtualSocketStream::new(Box::new(NoSocket)));
    let mut session = Session::new_h1(Box::new(placeholder));
    session.downstream_session = Box::new(downstream);
    session
}

/// What reading a connection's next request head came to.
enum Read {
    /// A complete head (or one pingora-proxy answers 400 at once).
    Head(Head),
    /// Nothing to answer: the client closed or went idle before a request,
    /// or left in the middle of one, or the server is shutting down.
    Closed,
    /// The front door answers this itself, then closes.
    Refused(Refusal),
}

/// Why the front door refused a request head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// Not complete `request_header_timeout` after its first byte: 408.
    Slow,
    /// Over `max_header_size`: 431.
    TooLarge,
}

impl Refusal {
    /// The whole response, closing the connection.
    fn response(self, limits: &Limits) -> String {
        let (status, why) = match self {
            Refusal::Slow => (
                "408 Request Timeout",
                format!(
                    "the request header did not arrive within {:?}",
                    limits.request_header_timeout
                ),
            ),
            Refusal::TooLarge => (
                "431 Request Header Fields Too Large",
                format!(
                    "the request header is over the limit of {} bytes",
                    limits.max_header_size
                ),
            ),
        };
        let body = format!("{status}: {why}\n");
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    /// Writes the response, then closes after a lingering read (at most
    /// [`LINGER`] in all).
    async fn answer(self, stream: &mut Stream, limits: &Limits) {
        let response = self.response(limits);
        let _ = tokio::time::timeout(LINGER, async {
            stream.write_all(response.as_bytes()).await?;
            stream.flush().await?;
            stream.shutdown().await?;
            let mut scratch = [0u8; 4096];
            let mut dropped = 0;
            while dropped < LINGER_BYTES {
                match stream.read(&mut scratch).await? {
                    0 => break,
                    n => dropped += n,
                }
            }
            std::io::Result::Ok(())
        })
        .await;
    }
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
        // This future is what an idle keep-alive connection holds while it
        // waits for its next request: the HTTP/1 path is an async fn of its
        // own (not every local of both paths), and an HTTP/2 stream's path
        // is boxed (benches/README: memory per idle connection).
        let conn = match H1Conn::take(session) {
            Ok(conn) => conn,
            Err(session) => return Box::pin(self.serve_stream(session, shutdown)).await,
        };
        self.serve_h1(conn, shutdown).await
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

/// An HTTP/1 connection between two requests: its socket and what pingora
/// set for it (keep-alive idle timeout, reuse count), for the session that
/// serves its next request.
struct H1Conn {
    stream: Stream,
    keepalive: Option<u64>,
    reuses: Option<u32>,
}

impl H1Conn {
    /// The connection of an HTTP/1 session; any other is handed back.
    // The session handed back is moved once per HTTP/2 stream, straight
    // into its boxed path; boxing it here would allocate once more.
    #[allow(clippy::result_large_err)]
    fn take(session: ServerSession) -> Result<H1Conn, ServerSession> {
        match session {
            ServerSession::H1(v1) => Ok(H1Conn {
                keepalive: v1.get_keepalive_timeout(),
                reuses: v1.get_keepalive_reuses_remaining(),
                stream: v1.into_inner(),
            }),
            other => Err(other),
        }
    }
}

impl FrontDoor {
    /// The next request of an HTTP/1 connection: its head read here, then
    /// the lean loop or pingora-proxy (module docs).
    async fn serve_h1(
        self: &Arc<Self>,
        conn: H1Conn,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let H1Conn {
            mut stream,
            keepalive,
            reuses,
        } = conn;
        let tls = stream.get_ssl_digest().is_some();
        let Head {
            bytes,
            shape,
            routed,
        } = match self.read_head(&mut stream, keepalive, tls).await {
            Read::Head(head) => head,
            Read::Closed => return None,
            Read::Refused(refusal) => {
                debug!(?refusal, "request head refused");
                if refusal == Refusal::Slow {
                    self.data().metrics().benign(Benign::ClientTimeout).inc();
                }
                // Boxed, as the lean loop's request below: its scratch
                // buffer would otherwise be part of every connection's
                // future.
                Box::pin(refusal.answer(&mut stream, &self.data().limits())).await;
                return None;
            }
        };
        match (shape, routed) {
            (Shape::Lean(len), Some(routed)) => {
                // Nothing pipelined after this head: the lean loop may write
                // the response itself (with bytes of a next request, pingora's
                // session writes it and closes the connection after it).
                let direct = len == bytes.len();
                let mut session = Session::new_h1(stream);
                prepare(session.as_downstream_mut(), bytes, keepalive, reuses);
                // Boxed: the request's future (upstream connect, exchange)
                // is large, and inline it would be part of this one, which
                // every idle keep-alive connection holds while it waits for
                // its next request (benches/README: memory per idle
                // connection).
                Box::pin(self.lean.serve(session, routed, direct)).await
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

    /// One HTTP/2 stream (pingora runs each on a task of its own): a plain
    /// request for an app the lean loop serves takes the lean loop, as a
    /// plain HTTP/1 request does; any other goes to pingora-proxy.
    async fn serve_stream(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if matches!(session, ServerSession::H2(_)) && plain_stream(&mut session) {
            let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
            let routed = Routed::load(self.data().routing(), host_of(session.req_header()));
            if lean_app(&routed, tls) {
                // Boxed for the same reason as an HTTP/1 request's.
                return Box::pin(self.lean.serve(stream_session(session), routed, false)).await;
            }
        }
        self.proxy.process_new_http(session, shutdown).await
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
    fn data(&self) -> &DataPlane {
        self.lean.data()
    }

    /// Reads until the next request's head is complete (or malformed past
    /// repair), within the limits on heads (module docs).
    async fn read_head(&self, stream: &mut Stream, keepalive: Option<u64>, tls: bool) -> Read {
        let limits = self.data().limits();
        // Before the first byte: a keep-alive connection waits
        // client_idle_timeout (pingora's 0: without limit), one that is not
        // kept alive client_timeout.
        let idle = match keepalive {
            Some(0) => None,
            Some(_) => Some(limits.client_idle_timeout),
            None => Some(limits.client_timeout),
        };
        let wait_started = Instant::now();
        // The clock as of the first read's deadline (later ones ask again).
        let mut clock = Some(wait_started);
        let idle_until = idle.map(|t| wait_started + t);
        // Counted as in flight while shutdown waits for it (see LAST_CALL).
        let mut awaited: Option<Awaited<'_>> = None;
        // From the first byte, the whole head has request_header_timeout.
        let mut head_until = None;
        let max = limits.max_header_size;
        // Held by every idle keep-alive connection: small, grown (doubled)
        // when a head is longer.
        let mut buf = BytesMut::with_capacity(HEAD_BUFFER.min(max + 1));
        loop {
            let stopping = self.shutdown.notified();
            let mut last_call = None;
            if self.shutting_down.load(Ordering::Acquire) && buf.is_empty() {
                // Idle for a while: close it. Waiting since just now (a
                // connection accepted as the listeners closed, or one
                // answered a moment ago): its request is on its way.
                let deadline = wait_started + LAST_CALL;
                if Instant::now() >= deadline {
                    return Read::Closed;
                }
                awaited.get_or_insert_with(|| Awaited::new(&self.data().metrics().heads_awaited));
                last_call = Some(deadline);
            }
            let waiting = buf.is_empty();
            let until = if waiting {
                match (idle_until, last_call) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            } else {
                head_until
            };
            // Never more than one byte past the limit: an unfinished head
            // costs at most that much (twice, with the buffer's growth).
            let room = max + 1 - buf.len();
            if buf.capacity() == buf.len() {
                buf.reserve(room.min(buf.capacity().max(1024)));
            }
            let read = async {
                let mut limited = (&mut buf).limit(room);
                match until {
                    // pingora's timer wheel, not tokio's: registering a
                    // tokio timer woke the runtime's driver (an eventfd
                    // write) for every third request or so.
                    Some(t) => fast_timeout(
                        t.saturating_duration_since(clock.take().unwrap_or_else(Instant::now)),
                        stream.read_buf(&mut limited),
                    )
                    .await
                    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
                    None => stream.read_buf(&mut limited).await,
                }
            };
            let n = tokio::select! {
                biased;
                n = read => n,
                // Decided at the top of the loop: close, or a last call.
                _ = stopping, if waiting && awaited.is_none() => continue,
            };
            match n {
                Ok(0) | Err(_) if buf.is_empty() => return Read::Closed,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    return Read::Refused(Refusal::Slow)
                }
                Ok(0) | Err(_) => {
                    // Gone in the middle of a head: nothing to answer.
                    self.data().metrics().benign(Benign::ClientDisconnect).inc();
                    debug!("client closed the connection in the middle of a request head");
                    return Read::Closed;
                }
                Ok(_) => {}
            }
            // The routing is loaded only for a header complete and plain
            // enough for the lean loop: the Host is its last question.
            let mut routed = None;
            let shape = shape(&buf, |host| {
                let found = Routed::load(self.data().routing(), Some(host));
                let lean = lean_app(&found, tls);
                routed = Some(found);
                lean
            });
            // A full buffer holds one byte over the limit: the head must end
            // before it.
            let too_large = buf.len() > max
                && (shape == Shape::Partial || head_end(&buf).is_none_or(|e| e > max));
            if too_large {
                return Read::Refused(Refusal::TooLarge);
            }
            if shape != Shape::Partial {
                return Read::Head(Head {
                    bytes: buf,
                    shape,
                    routed,
                });
            }
            // More to come: the whole head within request_header_timeout of
            // its first byte (a head read at once never asks the clock).
            head_until.get_or_insert_with(|| Instant::now() + limits.request_header_timeout);
        }
    }
}

/// After shutdown begins, how long a connection that began waiting for a
/// request just before (a new connection accepted as the listeners closed,
/// or a keep-alive one answered a moment ago) still gets to send its head;
/// one that has waited longer is idle and closed at once. Closing the fresh
/// ones reset clients that had done nothing wrong (a graceful upgrade under
/// load lost one request in about twelve runs).
const LAST_CALL: Duration = Duration::from_secs(1);

/// A connection shutdown waits for: counted in
/// [`Metrics::in_flight`](crate::metrics::Metrics::in_flight) until dropped.
struct Awaited<'a>(&'a std::sync::atomic::AtomicI64);

impl<'a> Awaited<'a> {
    fn new(count: &'a std::sync::atomic::AtomicI64) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Awaited(count)
    }
}

impl Drop for Awaited<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_requests_are_lean_others_are_not() {
        let lean = |s: &str| shape(s.as_bytes(), |host| host == b"a");
        assert_eq!(lean("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Shape::Lean(27));
        assert_eq!(
            lean("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\nGET"),
            Shape::Lean(29)
        );
        assert_eq!(
            lean("HEAD /x?y=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\nUser-Agent: t\r\n\r\n"),
            Shape::Lean(67)
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
    fn a_head_is_complete_before_pingora_proxy_gets_it() {
        let any = |s: &str| shape(s.as_bytes(), |_| true);
        assert_eq!(any("GET / HTTP/1.1\r\nHost: a@b\r\n\r\n"), Shape::Other);
        assert_eq!(any("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), Shape::Other);
        // More headers than the lean loop looks at: pingora-proxy's, once
        // they are all there.
        let many: String = (0..70).map(|i| format!("X-{i}: v\r\n")).collect();
        let head = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}");
        assert_eq!(any(&head), Shape::Partial);
        assert_eq!(any(&format!("{head}\r\n")), Shape::Other);
        // A target pingora escapes: complete only with its empty line.
        assert_eq!(any("GET /a b HTTP/1.1\r\nHost: a\r\n"), Shape::Partial);
        assert_eq!(any("GET /a b HT"), Shape::Partial);
        assert_eq!(any("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"), Shape::Other);
        // Not HTTP at all (a TLS hello on the plain port): at once.
        assert_eq!(any("\x16\x03\x01\x02\x00"), Shape::Other);
        assert_eq!(any("GET\x01/ HTTP/1.1"), Shape::Other);
    }

    #[test]
    fn where_a_head_ends() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\nbody"), Some(24));
        assert_eq!(head_end(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"), Some(22));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(head_end(b"\r\n"), None);
        assert!(escapable(b"GET /a b HTTP/1.1\r\n"));
        assert!(escapable(b"GET"));
        assert!(!escapable(b"GET /a b c\r\n"));
        assert!(!escapable(b" GET"));
        assert!(!escapable(b"G\x01T"));
    }

    #[test]
    fn refusals_answer_and_close() {
        let limits = Limits {
            max_header_size: 4096,
            max_headers: 10,
            client_timeout: Duration::from_secs(1),
            client_idle_timeout: Duration::from_secs(1),
            request_header_timeout: Duration::from_secs(10),
        };
        let slow = Refusal::Slow.response(&limits);
        assert!(
            slow.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{slow}"
        );
        assert!(slow.contains("Connection: close\r\n") && slow.ends_with("within 10s\n"));
        let large = Refusal::TooLarge.response(&limits);
        assert!(large.starts_with("HTTP/1.1 431 "), "{large}");
        let (head, body) = large.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
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
