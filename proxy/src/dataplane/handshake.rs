//! The TLS handshake of the front door's TLS listeners, done inside the
//! connection limits.
//!
//! The TLS listeners are plain TCP listeners; [`TlsHandshake`] sits behind
//! the connection limits (`connections.rs`) and in front of the front door,
//! and does the handshake with pingora's acceptor (the same `TlsStream` its
//! own TLS listeners make). So a connection holds its place in
//! `max_connections` and `max_connections_per_ip` from its accept, through
//! its handshake: a client that opens connections and never finishes their
//! handshakes is held to its share like any other. A handshake has
//! [`HANDSHAKE_TIMEOUT`] (pingora's own listeners give it 60 s), and a
//! client that chose HTTP/2 then has `proxy.client_timeout` to send its
//! connection preface, as an HTTP/1 client has for its first byte (pingora
//! waits for it without limit).
//!
//! ALPN: `h2`, then `http/1.1`; with `challenge = "tls-alpn-01"` also
//! `acme-tls/1` (RFC 8737), which rustls needs among the protocols it
//! accepts to answer a challenge and pingora's `TlsSettings` cannot offer
//! (`acme.rs`). Certificates come from the SNI table (`tls.rs`).
//!
//! A client that closed in the middle of its handshake is counted in
//! `bgproxy_benign_errors_total{kind="client_handshake"}` and logged at
//! debug; any other failure is logged as an error, as pingora's listener
//! did; one that ran out of time is counted as `client_timeout`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::tls::Acceptor;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::ALPN;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora::server::ShutdownWatch;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tracing::{debug, error};

use crate::dataplane::acme::ACME_TLS_ALPN;
use crate::metrics::{Benign, Metrics};

/// The longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n` (RFC 9113 3.4).
const H2_PREFACE_LEN: usize = 24;

/// The front door's application, with the TLS handshake of the TLS
/// listeners done in front of it.
pub struct TlsHandshake<A> {
    app: Arc<A>,
    /// The acceptor and the ports of the TLS listeners; `None`: no TLS,
    /// connections pass straight on.
    tls: Option<(Acceptor, Vec<u16>)>,
    /// Handshakes the client closed, and those that ran out of time.
    counted: Option<(IntCounter, IntCounter)>,
    /// How long an HTTP/2 client may take to send its preface
    /// (`proxy.client_timeout`, as an HTTP/1 client's first byte).
    preface_timeout: Duration,
}

impl<A> TlsHandshake<A> {
    /// `app` without TLS listeners.
    pub fn pass(app: A) -> Self {
        TlsHandshake {
            app: Arc::new(app),
            tls: None,
            counted: None,
            preface_timeout: Duration::MAX,
        }
    }

    /// `app` behind handshakes done here for connections to `ports`, with
    /// certificates from `resolver`, ALPN `h2` and `http/1.1` (and
    /// `acme-tls/1` with `acme_alpn`); an HTTP/2 client has
    /// `preface_timeout` for its preface.
    pub fn new(
        app: A,
        resolver: Arc<dyn rustls::server::ResolvesServerCert>,
        ports: Vec<u16>,
        acme_alpn: bool,
        preface_timeout: Duration,
        metrics: &Metrics,
    ) -> Result<Self, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        if acme_alpn {
            config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
        }
        Ok(TlsHandshake {
            app: Arc::new(app),
            tls: Some((Acceptor::from_server_config(Arc::new(config)), ports)),
            counted: Some((
                metrics.benign(Benign::ClientHandshake),
                metrics.benign(Benign::ClientTimeout),
            )),
            preface_timeout,
        })
    }
}

impl<A> TlsHandshake<A> {
    /// The TLS handshake of `stream` within [`HANDSHAKE_TIMEOUT`], then for
    /// HTTP/2 its preface. `None`: closed (counted or logged).
    async fn accept(&self, acceptor: &Acceptor, stream: Stream) -> Option<Stream> {
        let client = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().cloned());
        let tls: Stream =
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.tls_handshake(Raw::new(stream)))
                .await
            {
                Ok(Ok(tls)) => Box::new(tls),
                Ok(Err(e)) => {
                    self.failed(client, &e);
                    return None;
                }
                Err(_) => {
                    if let Some((_, timeouts)) = &self.counted {
                        timeouts.inc();
                    }
                    debug!("TLS handshake not done within {HANDSHAKE_TIMEOUT:?}");
                    return None;
                }
            };
        if tls.selected_alpn_proto() != Some(ALPN::H2) {
            return Some(tls);
        }
        self.preface(tls).await
    }

    /// An HTTP/2 connection's preface, read within `preface_timeout`; the
    /// connection handed on replays it. `None`: closed (counted).
    async fn preface(&self, mut tls: Stream) -> Option<Stream> {
        let mut preface = [0u8; H2_PREFACE_LEN];
        match tokio::time::timeout(self.preface_timeout, tls.read_exact(&mut preface)).await {
            Ok(Ok(_)) => Some(Box::new(Raw {
                inner: tls,
                replay: bytes::Bytes::copy_from_slice(&preface),
            })),
            Ok(Err(e)) => {
                if let Some((closed, _)) = &self.counted {
                    closed.inc();
                }
                debug!("HTTP/2 client went away before its preface: {e}");
                None
            }
            Err(_) => {
                if let Some((_, timeouts)) = &self.counted {
                    timeouts.inc();
                }
                debug!(
                    "HTTP/2 client sent no preface within {:?} (proxy.client_timeout)",
                    self.preface_timeout
                );
                None
            }
        }
    }

    /// A handshake that failed: the client closing in the middle of it is
    /// counted and logged at debug (browsers do so with spare
    /// connections); any other failure (a certificate the client refused,
    /// say) may need an operator.
    fn failed(
        &self,
        client: Option<pingora::protocols::l4::socket::SocketAddr>,
        e: &pingora::Error,
    ) {
        let client = client.map_or_else(|| "-".to_string(), |a| a.to_string());
        match &self.counted {
            Some((closed, _)) if Benign::peer_closed(&e.to_string()) => {
                closed.inc();
                debug!("TLS handshake with {client}: the client closed: {e}");
            }
            _ => error!("TLS handshake with {client} failed: {e}"),
        }
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
                    // Boxed: the handshake's state (rustls' alone ~3.7 KB
                    // before the stream is boxed) lives while it runs, not
                    // in this future for the connection's life
                    // (benches/README: memory per idle connection).
                    Box::pin(self.accept(acceptor, stream)).await?
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

/// A boxed stream as a concrete type: a plain connection on its way into a
/// TLS handshake (pingora's acceptor takes a concrete stream type), or an
/// HTTP/2 connection whose preface was read here, handed on with the bytes
/// read first (`replay`). Everything else is the inner stream's, its TLS
/// facts (ALPN, digest) included.
#[derive(Debug)]
struct Raw {
    inner: Stream,
    replay: bytes::Bytes,
}

impl Raw {
    fn new(inner: Stream) -> Self {
        Raw {
            inner,
            replay: bytes::Bytes::new(),
        }
    }
}

impl AsyncRead for Raw {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.replay.is_empty() {
            let n = self.replay.len().min(buf.remaining());
            let head = self.replay.split_to(n);
            buf.put_slice(&head);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut *self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Raw {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Raw {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Raw {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Raw {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<pingora::protocols::ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Raw {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
}

impl GetProxyDigest for Raw {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for Raw {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for Raw {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
