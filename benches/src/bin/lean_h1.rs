//! How fast could an HTTP/1 loop be that skips pingora-proxy but keeps
//! pingora's own pieces: its HTTP/1 server and client sessions (parsing,
//! framing, keep-alive), its connection pool and its timeouts?
//!
//! A question for issue #8, not a proxy to run: per request it reads the
//! header, adds bgproxy's three forwarded headers, takes a pooled upstream
//! connection, writes the request, then reads the response and writes it
//! back in one straight line (no task channel between two halves, no
//! filters, no request bodies, no upgrades, no retries, 502 on any upstream
//! error). `load.py` and `callgrind.py` measure it beside bgproxy and bare
//! pingora when it is built, with the same runtime settings: mimalloc, one
//! thread, `work_stealing = false`, no L4 read buffer, upstream keep-alive.
//!
//! Usage: `lean_h1 LISTEN UPSTREAM` (both `ip:port`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::{HttpTask, ServerSession};
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::server::ShutdownWatch;
use pingora::upstreams::peer::HttpPeer;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: http::HeaderName = http::HeaderName::from_static("x-forwarded-host");

struct Lean {
    upstream: SocketAddr,
    connector: Connector,
}

#[async_trait]
impl HttpServerApp for Lean {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        _shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match session.read_request().await {
            Ok(true) => {}
            _ => return None,
        }
        if let Err(e) = self.proxy(&mut session).await {
            if session.response_written().is_some() {
                return None; // broken mid-response: close
            }
            session.set_keepalive(None);
            let _ = session
                .respond_error(e.etype().status_code().max(502))
                .await;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(Some(stream)) => Some(ReusedHttpStream::from_reusable_stream(stream, settings)),
            _ => None,
        }
    }
}

trait StatusOf {
    fn status_code(&self) -> u16;
}

impl StatusOf for ErrorType {
    fn status_code(&self) -> u16 {
        match self {
            ErrorType::ReadTimedout | ErrorType::ConnectTimedout => 504,
            _ => 502,
        }
    }
}

impl Lean {
    async fn proxy(&self, session: &mut ServerSession) -> Result<()> {
        let peer = HttpPeer::new(self.upstream, false, String::new());
        let (client, _reused) = self.connector.get_http_session(&peer).await?;
        let HttpSession::H1(mut up) = client else {
            return Error::e_explain(ErrorType::InternalError, "HTTP/1 upstreams only");
        };
        up.read_timeout = Some(Duration::from_secs(60));

        let client_ip = match session.client_addr() {
            Some(PingoraAddr::Inet(a)) => Some(a.ip()),
            _ => None,
        };
        let req = session.req_header();
        let mut parts: http::request::Parts = http::Request::new(()).into_parts().0;
        parts.method = req.method.clone();
        parts.uri = req.uri.clone();
        parts.headers = req.headers.clone();
        parts.headers.reserve(3);
        let host = parts.headers.get(http::header::HOST).cloned();
        if let Some(ip) = client_ip {
            let mut xff = Vec::with_capacity(48);
            for v in parts.headers.get_all(&X_FORWARDED_FOR) {
                xff.extend_from_slice(v.as_bytes());
                xff.extend_from_slice(b", ");
            }
            xff.extend_from_slice(ip.to_string().as_bytes());
            if let Ok(v) = http::HeaderValue::from_bytes(&xff) {
                parts.headers.insert(X_FORWARDED_FOR.clone(), v);
            }
        }
        parts.headers.insert(
            X_FORWARDED_PROTO.clone(),
            http::HeaderValue::from_static("http"),
        );
        if let Some(host) = host {
            parts.headers.insert(X_FORWARDED_HOST.clone(), host);
        }
        up.write_request_header(Box::new(RequestHeader::from(parts)))
            .await?;
        up.finish_body().await?;

        loop {
            match up.read_response_task().await? {
                HttpTask::Header(header, end) => {
                    session.write_response_header(header).await?;
                    if end {
                        break;
                    }
                }
                HttpTask::Body(data, end) => {
                    if let Some(data) = data {
                        session.write_response_body(data, end).await?;
                    }
                    if end {
                        break;
                    }
                }
                HttpTask::Done => break,
                HttpTask::Failed(e) => return Err(e),
                _ => {}
            }
        }
        self.connector
            .release_http_session(HttpSession::H1(up), &peer, None)
            .await;
        Ok(())
    }
}

fn main() {
    bgproxy_benches::run_reference("lean_h1", |conf, upstream| Lean {
        upstream,
        connector: Connector::new(Some(ConnectorOptions::from_server_conf(conf))),
    });
}
