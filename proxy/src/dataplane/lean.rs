//! The lean loop: one plain request (HTTP/1, or a stream of an HTTP/2
//! connection) to an HTTP/1 upstream, served on a straight line.
//!
//! pingora-proxy runs every request through a general machine: two halves
//! joined by a task channel, two header maps per request, every filter of
//! the `ProxyHttp` trait. The lean loop is a straight line instead: the
//! client's request is read by pingora's HTTP/1 (or HTTP/2) session, which
//! the hooks read it through; the upstream side is bgproxy's own
//! (`upstream_h1.rs`, connections kept in `idle_pool.rs`), its request head
//! written straight from the client's when only the forwarded headers
//! change (`headers::upstream_wire`); and a plain response to an HTTP/1
//! client is written here ([`Direct`]). Per request that is ~33k
//! instructions (callgrind), against ~73k through pingora-proxy and
//! HAProxy's ~33k (`benches/README.md`, steps 11-18).
//!
//! The front door (`front_door.rs`) decides which requests come here: no
//! body, no upgrade, an app with HTTP/1 upstreams that does not redirect
//! them to HTTPS. An HTTP/2 request gets the `Host` its `:authority` says
//! and loses `TE`, as pingora-proxy does for it.
//!
//! The lean loop calls the same [`DataPlane`] hooks pingora-proxy calls, in
//! the same order (`request_filter`, `upstream_peer`, `fail_to_connect`,
//! `upstream_request_filter`, `response_filter`, `response_body_filter`,
//! `fail_to_proxy`, `logging`), so routing, limits, retries, headers, drain,
//! error pages, metrics and the access log are one code for both paths.
//!
//! A request comes with the routing the front door loaded to let it in
//! ([`Routed`]): the loop serves it by that snapshot and loads no other, so
//! a reload in between cannot hand it an app with HTTP/2 upstreams.

use bytes::{BufMut, BytesMut};
use pingora::apps::{HttpPersistentSettings, ReusedHttpStream};
use pingora::connectors::TransportConnector;
use pingora::http::RequestHeader;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::protocols::http::date;
use pingora::protocols::http::ServerSession;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::Peer;
use pingora::{Error, ErrorType};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

use crate::dataplane::headers::{put_header, upstream_copy, upstream_wire};
use crate::dataplane::hooks::{DataPlane, RequestCtx};
use crate::dataplane::idle_pool::IdlePool;
use crate::dataplane::routing::Routed;
use crate::dataplane::upstream_h1::{self, Upstream};

/// The lean loop: pingora's HTTP/1 sessions and connectors, with a pool of
/// its own ([`IdlePool`]), driven by the [`DataPlane`] hooks. The front door
/// holds one.
pub struct LeanLoop {
    data: DataPlane,
    connector: TransportConnector,
    idle: Arc<IdlePool>,
}

impl LeanLoop {
    /// `data` is the data plane whose hooks it calls (a clone of the one
    /// pingora-proxy runs); `connector` makes the upstream connections,
    /// `idle` keeps them between requests.
    pub fn new(data: DataPlane, connector: TransportConnector, idle: Arc<IdlePool>) -> Self {
        LeanLoop {
            data,
            connector,
            idle,
        }
    }

    /// The data plane whose hooks the loop calls.
    pub fn data(&self) -> &DataPlane {
        &self.data
    }

    /// Serves one request, routed by `routed` (the snapshot the front door
    /// loaded to let it in, and the app it matched), then hands the
    /// connection back to pingora for the next one. `None`: the connection
    /// is closed (the client went away, or an error left it unusable).
    ///
    /// `direct`: the client's HTTP/1 connection holds nothing after this
    /// request's head, so a plain response may be written to it by the loop
    /// itself ([`Direct`]) rather than through pingora's session.
    pub async fn serve(
        &self,
        mut session: Session,
        routed: Routed,
        direct: bool,
    ) -> Option<ReusedHttpStream> {
        match session.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                // A head pingora refuses (a Host with userinfo, say) gets
                // the 400 pingora-proxy would answer, not a silent close.
                if matches!(e.etype(), ErrorType::InvalidHTTPHeader) {
                    let _ = session.as_downstream_mut().respond_error(400).await;
                }
                return None;
            }
        }
        let data = &self.data;
        // The front door's snapshot, not a new load: it decided that this
        // request may come here (HTTP/1 upstreams), and a reload since then
        // must not route it to an app the loop cannot serve.
        let mut ctx = RequestCtx::routed(routed);
        let mut direct = direct.then(Direct::default);
        let error = self
            .forward(&mut session, &mut ctx, &mut direct)
            .await
            .err();
        if let Some(e) = &error {
            if session.response_written().is_none() && !ctx.has_written() {
                data.fail_to_proxy(&mut session, e, &mut ctx).await;
            }
        }
        data.logging(&mut session, error.as_deref(), &mut ctx).await;
        if let Some(e) = error {
            // Counted (and logged at debug) when the client went away.
            data.client_gone(&e);
            // Dropped without finishing: a body cut short must not look
            // complete to the client (a chunked body's last chunk).
            session.downstream_session.on_proxy_failure(e);
            return None;
        }
        let settings = HttpPersistentSettings::for_session(session.as_downstream());
        if let Some(direct) = direct.filter(|_| ctx.has_written()) {
            // Written here, not by the session: the session's own finish
            // would see no response. The stream is kept only when the
            // response said keep-alive.
            let ServerSession::H1(v1) = *session.downstream_session else {
                return None;
            };
            let mut stream = v1.into_inner();
            if !direct.keepalive {
                let _ = stream.shutdown().await;
                return None;
            }
            return Some(ReusedHttpStream::new(stream, Some(settings)));
        }
        // Boxed: pingora's finish is a 3.7 KB future, and inline it would
        // size this whole future (4.9 KB, copied into its box for every
        // request), though a response the loop wrote itself never gets
        // here (benches/README: data-cache misses).
        match Box::pin(session.downstream_session.finish()).await {
            Ok(Some(stream)) => Some(ReusedHttpStream::from_reusable_stream(stream, settings)),
            _ => None,
        }
    }

    /// The request to an upstream and its response back, with pingora-proxy's
    /// retries: a refused connect as `fail_to_connect` decides, a pooled
    /// connection the upstream had closed once more on a fresh one.
    async fn forward(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        direct: &mut Option<Direct>,
    ) -> Result<()> {
        let data = &self.data;
        if data.request_filter(session, ctx).await? {
            return Ok(()); // answered (404, 431, ...)
        }
        let mut retried_reused = false;
        loop {
            let peer = data.upstream_peer(session, ctx).await?;
            // The pool's key: address, TLS, options.
            let key = peer.reuse_hash();
            // A pooled connection, else a new one; a new one for the retry
            // after a pooled one failed (others the upstream closed at the
            // same moment may not look closed yet). Connecting is a large
            // future (TCP, TLS): boxed on its own, it is not part of every
            // request's future (copied whole into its box per request).
            let pooled = if retried_reused {
                None
            } else {
                self.idle.take(key)
            };
            let (stream, reused) = match pooled {
                Some(stream) => (stream, true),
                None => match Box::pin(self.connector.new_stream(&*peer)).await {
                    Ok(stream) => (stream, false),
                    Err(e) => {
                        let e = data.fail_to_connect(session, &peer, ctx, e.into_up());
                        if e.retry() {
                            continue;
                        }
                        return Err(e);
                    }
                },
            };
            let mut upstream = Upstream::new(
                stream,
                peer.options.read_timeout,
                peer.options.write_timeout,
            );
            match self.exchange(session, ctx, &mut upstream, direct).await {
                Ok(()) => {
                    // Kept only when its response was read to its end and
                    // neither side asked to close.
                    if let Some(stream) = upstream.into_reusable() {
                        self.idle.put(key, stream, peer.idle_timeout());
                    }
                    return Ok(());
                }
                Err(mut e) => {
                    // A pooled connection the upstream had closed: once more
                    // on a fresh one, as pingora-proxy does.
                    e.retry.decide_reuse(reused);
                    if e.retry()
                        && !retried_reused
                        && session.response_written().is_none()
                        && !ctx.has_written()
                    {
                        retried_reused = true;
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// The general way to the upstream request: a copy of the client's
    /// request through `upstream_request_filter`, then written.
    async fn send_request(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        upstream: &mut Upstream,
    ) -> Result<()> {
        let data = &self.data;
        let mut req: RequestHeader = upstream_copy(session.req_header());
        req.set_version(http::Version::HTTP_11);
        // The only hop-by-hop header a lean request can carry.
        req.remove_header(&http::header::CONNECTION);
        if session.req_header().version == http::Version::HTTP_2 {
            // HTTP/2 carries the host in `:authority` (pingora refused a
            // Host header that differs), HTTP/1 upstreams expect `Host`;
            // `TE: trailers` is HTTP/2's one hop-by-hop header.
            if !req.headers.contains_key(http::header::HOST) {
                if let Some(authority) = req.uri.authority().map(|a| a.as_str().to_owned()) {
                    req.insert_header(http::header::HOST, authority)?;
                }
            }
            req.remove_header(&http::header::TE);
        }
        data.upstream_request_filter(session, &mut req, ctx).await?;
        upstream.send_request(&req).await.map_err(|e| e.into_up())
    }

    /// Writes the request to the upstream and copies the response back.
    async fn exchange(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        upstream: &mut Upstream,
        direct: &mut Option<Direct>,
    ) -> Result<()> {
        let data = &self.data;
        // The common case, written straight from the client's request: an
        // HTTP/1 request the hook would only add the forwarded headers to.
        let straight = match session.req_header().version {
            http::Version::HTTP_2 => None,
            _ => data
                .forwarded_only(session, ctx)
                .and_then(|fwd| upstream_wire(session.req_header(), fwd)),
        };
        match straight {
            Some(wire) => upstream.send_head(&wire).await.map_err(|e| e.into_up())?,
            None => self.send_request(session, ctx, upstream).await?,
        }
        let head_request = session.req_header().method == http::Method::HEAD;
        let (mut header, mut end) = loop {
            let head = upstream
                .read_head(head_request)
                .await
                .map_err(|e| e.into_up())?;
            if head.header.status == http::StatusCode::SWITCHING_PROTOCOLS {
                // No upgrade was asked for (pingora-proxy refuses it too).
                return Error::e_explain(
                    ErrorType::InvalidHTTPHeader,
                    "101 from the upstream to a request without Upgrade",
                )
                .map_err(|e| e.into_up());
            }
            if !head.header.status.is_informational() {
                break (head.header, head.end);
            }
            // 1xx (Early Hints): passed on, the final head follows.
            let mut info = head.header;
            data.response_filter(session, &mut info, ctx).await?;
            match direct {
                Some(direct) => {
                    direct.head(&info, None);
                    direct.send(session).await?;
                }
                None => session
                    .write_response_header(info, false)
                    .await
                    .map_err(|e| e.into_down())?,
            }
        };
        // A body delimited by the upstream closing its connection goes to
        // the client chunked, so the client's connection stays open (as
        // pingora-proxy does).
        if !end
            && !header.headers.contains_key(http::header::TRANSFER_ENCODING)
            && !header.headers.contains_key(http::header::CONTENT_LENGTH)
        {
            header.set_version(http::Version::HTTP_11);
            header.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
        }
        data.response_filter(session, &mut header, ctx).await?;
        let status = header.status.as_u16();
        match direct.as_mut() {
            Some(direct) => {
                // Framed as the head says: re-chunked when its codings end
                // in chunked; other codings (no length) run to the close,
                // so the connection is not kept.
                let chunked = upstream_h1::chunked_last(&header.headers);
                direct.chunked = !end && chunked == Some(true);
                direct.keepalive =
                    session.get_keepalive().is_some() && (end || chunked != Some(false));
                direct.head(&header, Some(direct.keepalive));
                ctx.wrote(status, 0);
                // The head waits in the buffer for the body's first piece (a
                // small response goes out in one write), unless the body is
                // not here yet: a slow body (a stream of events, say) must
                // not hold its head back.
                if end || !upstream.body_buffered() {
                    direct.send(session).await?;
                }
            }
            None => session
                .write_response_header(header, end)
                .await
                .map_err(|e| e.into_down())?,
        }
        let mut sent = 0;
        while !end {
            let (mut body, last) = upstream.read_body().await.map_err(|e| e.into_up())?;
            data.response_body_filter(session, &mut body, last, ctx)?;
            match direct.as_mut() {
                Some(direct) => {
                    sent += direct.body(body.as_deref().unwrap_or_default(), last);
                    direct.send(session).await?;
                    ctx.wrote(status, sent);
                }
                None => session
                    .write_response_body(body, last)
                    .await
                    .map_err(|e| e.into_down())?,
            }
            end = last;
        }
        Ok(())
    }
}

/// A plain response the lean loop writes to an HTTP/1 client itself.
///
/// pingora's session spent ~7k instructions per request writing a response
/// head and body and finishing the request (callgrind, benches/README step
/// 13): the head prepared through its header maps, a body writer set up per
/// response. This writes what pingora would for the lean loop's responses:
/// the upstream's status line and headers, `Date` and `Connection`
/// (keep-alive or close, as the session decided) set as pingora sets them,
/// and the body as it came, chunked again when the head says chunked.
#[derive(Default)]
pub struct Direct {
    out: BytesMut,
    /// The body goes out chunked.
    chunked: bool,
    /// The connection is kept for the next request (said in the head).
    keepalive: bool,
}

impl Direct {
    /// Adds a response head; `keepalive` for a final one (which gets `Date`
    /// and `Connection`), `None` for a 1xx.
    fn head(&mut self, header: &ResponseHeader, keepalive: Option<bool>) {
        let out = &mut self.out;
        out.reserve(512);
        out.put_slice(match header.version {
            http::Version::HTTP_10 => b"HTTP/1.0 ",
            _ => b"HTTP/1.1 ",
        });
        out.put_slice(header.status.as_str().as_bytes());
        out.put_u8(b' ');
        out.put_slice(header.get_reason_phrase().unwrap_or("").as_bytes());
        out.put_slice(b"\r\n");
        if let Some(keepalive) = keepalive {
            // The upstream's own Date and Connection are replaced (skipped
            // here: removing them from the map cost more than writing).
            for (name, value) in header.headers.iter() {
                if name != http::header::DATE && name != http::header::CONNECTION {
                    put_header(out, name, value);
                }
            }
            out.put_slice(b"Date: ");
            out.put_slice(date::get_cached_date().as_bytes());
            out.put_slice(if keepalive {
                b"\r\nConnection: keep-alive\r\n"
            } else {
                b"\r\nConnection: close\r\n"
            });
        } else {
            for (name, value) in header.headers.iter() {
                put_header(out, name, value);
            }
        }
        out.put_slice(b"\r\n");
    }

    /// Adds a piece of the body (and, at its end, a chunked body's last
    /// chunk); returns the body bytes it carries.
    fn body(&mut self, piece: &[u8], end: bool) -> usize {
        let out = &mut self.out;
        if self.chunked {
            if !piece.is_empty() {
                out.put_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                out.put_slice(piece);
                out.put_slice(b"\r\n");
            }
            if end {
                out.put_slice(b"0\r\n\r\n");
            }
        } else {
            out.put_slice(piece);
        }
        piece.len()
    }

    /// Writes what was added to the client's stream.
    async fn send(&mut self, session: &mut Session) -> Result<()> {
        let ServerSession::H1(v1) = session.downstream_session.as_mut() else {
            return Error::e_explain(ErrorType::InternalError, "a direct response on HTTP/2");
        };
        let stream = v1.stream_mut();
        let written = async {
            stream.write_all(&self.out).await?;
            stream.flush().await
        };
        let result = written.await;
        self.out.clear();
        result.map_err(|e| {
            Error::because(ErrorType::WriteError, "writing the response", e).into_down()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, headers: &[(&'static str, &'static str)]) -> ResponseHeader {
        let mut parts = http::Response::new(()).into_parts().0;
        parts.status = http::StatusCode::from_u16(status).unwrap();
        for (name, value) in headers {
            parts.headers.append(*name, value.parse().unwrap());
        }
        ResponseHeader::from(parts)
    }

    fn text(direct: &Direct) -> String {
        String::from_utf8(direct.out.to_vec()).unwrap()
    }

    #[test]
    fn a_final_head_gets_date_and_connection_as_pingora_sets_them() {
        let mut direct = Direct::default();
        let mut header = response(
            200,
            &[
                ("content-length", "2"),
                ("connection", "close"),
                ("date", "Thu, 01 Jan 1970 00:00:00 GMT"),
                ("x-app", "a"),
            ],
        );
        header.set_reason_phrase(Some("Fine")).unwrap();
        direct.head(&header, Some(true));
        direct.body(b"ok", true);
        let out = text(&direct);
        assert!(
            out.starts_with("HTTP/1.1 200 Fine\r\nContent-Length: 2\r\nX-App: a\r\nDate: "),
            "{out}"
        );
        assert!(
            out.ends_with(" GMT\r\nConnection: keep-alive\r\n\r\nok"),
            "{out}"
        );
        assert!(
            !out.contains("1970") && !out.contains("close"),
            "the upstream's own are replaced: {out}"
        );

        let mut direct = Direct::default();
        direct.head(&response(204, &[]), Some(false));
        assert!(text(&direct).ends_with("\r\nConnection: close\r\n\r\n"));
    }

    #[test]
    fn an_informational_head_is_passed_as_it_is_and_bodies_are_chunked_when_said() {
        let mut direct = Direct::default();
        direct.head(&response(103, &[("link", "</a>")]), None);
        assert_eq!(
            text(&direct),
            "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        );

        let mut direct = Direct {
            chunked: true,
            ..Direct::default()
        };
        assert_eq!(direct.body(b"hello", false), 5);
        assert_eq!(direct.body(b"", false), 0);
        assert_eq!(direct.body(b"0123456789abcdefg", true), 17);
        assert_eq!(
            text(&direct),
            "5\r\nhello\r\n11\r\n0123456789abcdefg\r\n0\r\n\r\n"
        );
    }
}
