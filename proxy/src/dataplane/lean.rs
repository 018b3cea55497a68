//! The lean loop: one plain request (HTTP/1, or a stream of an HTTP/2
//! connection) to an HTTP/1 upstream, served on a straight line.
//!
//! pingora-proxy runs every request through a general machine: two halves
//! joined by a task channel, two header maps per request, every filter of
//! the `ProxyHttp` trait. Measured on the project's box (`benches/README.md`,
//! `lean_h1`), pingora's own HTTP/1 sessions, pool and timers in one straight
//! line per request cost ~58k instructions against pingora-proxy's ~73k and
//! reach 0.90x HAProxy's requests per second against 0.80x.
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

use pingora::apps::{HttpPersistentSettings, ReusedHttpStream};
use pingora::connectors::TransportConnector;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::Peer;
use pingora::{Error, ErrorType};
use std::sync::Arc;

use crate::dataplane::headers::upstream_copy;
use crate::dataplane::hooks::{DataPlane, RequestCtx};
use crate::dataplane::idle_pool::IdlePool;
use crate::dataplane::routing::Routed;
use crate::dataplane::upstream_h1::Upstream;

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
    pub async fn serve(&self, mut session: Session, routed: Routed) -> Option<ReusedHttpStream> {
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
        let error = self.forward(&mut session, &mut ctx).await.err();
        if let Some(e) = &error {
            if session.response_written().is_none() {
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
        match session.downstream_session.finish().await {
            Ok(Some(stream)) => Some(ReusedHttpStream::from_reusable_stream(stream, settings)),
            _ => None,
        }
    }

    /// The request to an upstream and its response back, with pingora-proxy's
    /// retries: a refused connect as `fail_to_connect` decides, a pooled
    /// connection the upstream had closed once more on a fresh one.
    async fn forward(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
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
            match self.exchange(session, ctx, &mut upstream).await {
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
        upstream.send_request(&req).await.map_err(|e| e.into_up())?;
        let head_request = session.req_header().method == http::Method::HEAD;
        let (mut header, end) = loop {
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
            session
                .write_response_header(info, false)
                .await
                .map_err(|e| e.into_down())?;
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
        session
            .write_response_header(header, end)
            .await
            .map_err(|e| e.into_down())?;
        if end {
            return Ok(());
        }
        loop {
            let (mut body, end) = upstream.read_body().await.map_err(|e| e.into_up())?;
            data.response_body_filter(session, &mut body, end, ctx)?;
            session
                .write_response_body(body, end)
                .await
                .map_err(|e| e.into_down())?;
            if end {
                return Ok(());
            }
        }
    }
}
