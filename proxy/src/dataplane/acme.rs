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
//! accepts (rustls refuses a ClientHello whose protocols it has none of):
//! with `challenge = "tls-alpn-01"` the TLS handshake (`handshake.rs`)
//! offers `h2`, `http/1.1`, then `acme-tls/1` (chosen only when a client
//! offers nothing else: no browser does).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::sign::CertifiedKey;

/// The path prefix of HTTP-01 challenges (RFC 8555 section 8.3).
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

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
