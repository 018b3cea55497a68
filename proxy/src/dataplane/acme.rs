//! ACME challenge answers, as the data plane serves them.
//!
//! The ACME service (`controlplane/acme.rs`) puts an answer here before it
//! tells the CA a challenge is ready, and takes it away once the order is
//! decided. Two kinds:
//!
//! - HTTP-01: `GET /.well-known/acme-challenge/<token>` on any listener
//!   answers the key authorization (`request_filter`, before routing; such a
//!   request is never forwarded). An unknown token under that path goes the
//!   usual way, so an app that answers its own challenges still can.
//! - TLS-ALPN-01 (RFC 8737): a ClientHello offering `acme-tls/1` for a name
//!   gets the self-signed challenge certificate of that name
//!   (`tls.rs`'s resolver).
//!
//! Both tables are empty except while an order is being validated, so the
//! lock is taken only by requests under that path and by such handshakes.
//!
//! TLS-ALPN-01 needs `acme-tls/1` among the ALPN protocols the server
//! accepts (rustls refuses a ClientHello whose protocols it has none of),
//! and pingora 0.9's `TlsSettings` can only offer `h2` and `http/1.1`. So
//! with `challenge = "tls-alpn-01"` the TLS listeners are plain TCP
//! listeners and [`TlsHandshake`] does the handshake in front of the front
//! door, with pingora's own acceptor built from a rustls config that offers
//! `h2`, `http/1.1`, then `acme-tls/1` (chosen only when a client offers
//! nothing else: no browser does). Otherwise it only passes connections on.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::tls::Acceptor;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora::server::ShutdownWatch;
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::debug;

/// The path prefix of HTTP-01 challenges (RFC 8555 section 8.3).
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The longest a TLS handshake done by [`TlsHandshake`] may take.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The challenge answers in force.
#[derive(Default)]
pub struct Challenges {
    /// HTTP-01: token -> key authorization.
    http: Mutex<HashMap<String, String>>,
    /// TLS-ALPN-01: name -> challenge certificate.
    alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl Challenges {
    /// Answers `GET <HTTP01_PREFIX><token>` with `key_authorization`.
    pub fn put_http(&self, token: &str, key_authorization: &str) {
        lock(&self.http).insert(token.to_string(), key_authorization.to_string());
    }

    /// Stops answering `token`.
    pub fn remove_http(&self, token: &str) {
        lock(&self.http).remove(token);
    }

    /// The key authorization for a request path, if it is a pending HTTP-01
    /// challenge.
    pub fn http_answer(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(HTTP01_PREFIX)?;
        lock(&self.http).get(token).cloned()
    }

    /// Serves `cert` to `acme-tls/1` handshakes for `host`.
    pub fn put_tls_alpn(&self, host: &str, cert: Arc<CertifiedKey>) {
        lock(&self.alpn).insert(host.to_string(), cert);
    }

    /// Stops answering `acme-tls/1` handshakes for `host`.
    pub fn remove_tls_alpn(&self, host: &str) {
        lock(&self.alpn).remove(host);
    }

    /// The challenge certificate of `host`, if one is pending.
    pub fn tls_alpn(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        lock(&self.alpn).get(host).cloned()
    }
}

/// The front door's application, with the TLS handshake of the TLS
/// listeners done here when they are plain TCP listeners (TLS-ALPN-01).
pub struct TlsHandshake<A> {
    app: Arc<A>,
    /// The acceptor and the ports of the TLS listeners; `None`: pingora's
    /// TLS listeners do the handshakes, connections pass straight on.
    tls: Option<(Acceptor, Vec<u16>)>,
}

impl<A> TlsHandshake<A> {
    /// `app` behind pingora's own TLS listeners (no handshake here).
    pub fn pass(app: A) -> Self {
        TlsHandshake {
            app: Arc::new(app),
            tls: None,
        }
    }

    /// `app` behind handshakes done here for connections to `ports`, with
    /// certificates from `resolver` and ALPN `h2`, `http/1.1`, `acme-tls/1`.
    pub fn acme(
        app: A,
        resolver: Arc<dyn rustls::server::ResolvesServerCert>,
        ports: Vec<u16>,
    ) -> Result<Self, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
        Ok(TlsHandshake {
            app: Arc::new(app),
            tls: Some((Acceptor::from_server_config(Arc::new(config)), ports)),
        })
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for TlsHandshake<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let stream = match &self.tls {
            // A stream handed back for reuse is already TLS.
            Some((acceptor, ports)) if stream.get_ssl_digest().is_none() => {
                let port = stream
                    .get_socket_digest()
                    .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).map(|a| a.port()));
                if port.is_some_and(|p| ports.contains(&p)) {
                    // A client that never finishes its handshake must not
                    // hold a task for ever.
                    let handshake = acceptor.tls_handshake(Raw(stream));
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                        Ok(Ok(tls)) => Box::new(tls) as Stream,
                        Ok(Err(e)) => {
                            debug!("TLS handshake failed: {e}");
                            return None;
                        }
                        Err(_) => {
                            debug!("TLS handshake not done within {HANDSHAKE_TIMEOUT:?}");
                            return None;
                        }
                    }
                } else {
                    stream
                }
            }
            _ => stream,
        };
        self.app.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.app.cleanup().await
    }
}

/// A plain connection on its way into a TLS handshake: pingora's acceptor
/// takes a concrete stream type, and the application is handed a boxed one.
#[derive(Debug)]
struct Raw(Stream);

impl AsyncRead for Raw {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Raw {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Raw {
    async fn shutdown(&mut self) {
        self.0.shutdown().await
    }
}

impl UniqueID for Raw {
    fn id(&self) -> UniqueIDType {
        self.0.id()
    }
}

impl Ssl for Raw {}

impl GetTimingDigest for Raw {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.0.get_timing_digest()
    }
}

impl GetProxyDigest for Raw {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.0.get_proxy_digest()
    }
}

impl GetSocketDigest for Raw {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.0.get_socket_digest()
    }
}

#[async_trait]
impl Peek for Raw {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.0.try_peek(buf).await
    }
}

/// A poisoned lock still holds a usable map (inserts and removes of whole
/// entries cannot leave one half-written).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_answers_only_pending_tokens_under_the_prefix() {
        let c = Challenges::default();
        assert_eq!(c.http_answer("/.well-known/acme-challenge/t1"), None);
        c.put_http("t1", "t1.thumb");
        assert_eq!(
            c.http_answer("/.well-known/acme-challenge/t1").as_deref(),
            Some("t1.thumb")
        );
        assert_eq!(c.http_answer("/t1"), None);
        assert_eq!(c.http_answer("/.well-known/acme-challenge/t2"), None);
        c.remove_http("t1");
        assert_eq!(c.http_answer("/.well-known/acme-challenge/t1"), None);
    }
}
