//! The HTTPS front door's certificates.
//!
//! [`CertStore`] is rustls' certificate resolver for every TLS listener: it
//! picks the certificate by SNI (exact name, then `*.parent`, then the
//! default) from a table behind one `ArcSwap`. [`CertStore::reload`] builds a
//! whole new table from the files and swaps it in only if every file is
//! good: a bad renewal keeps serving the old certificates and says why.
//! The ops service calls it when a certificate or key file changes, so
//! certbot or another ACME client can renew without a restart.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::{info, warn};

use crate::config::TlsConfig;

/// Certificates expiring sooner than this are warned about.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// A certificate chain and key loaded from PEM files.
struct Loaded {
    key: Arc<CertifiedKey>,
    /// Seconds until the leaf certificate expires.
    expires_in: i64,
}

/// Loads and checks one chain + key pair: both parse, the key matches the
/// leaf certificate. Errors name the files.
fn load_pair(cert: &Path, key: &Path) -> Result<Loaded, String> {
    let (c, k) = (cert.to_string_lossy(), key.to_string_lossy());
    let (chain, private) = match pingora::tls::load_certs_and_key_files(&c, &k) {
        Ok(Some(pair)) => pair,
        Ok(None) => return Err(format!("{c} or {k} holds no certificate or no private key")),
        Err(e) => return Err(format!("cannot load {c} and {k}: {e}")),
    };
    if chain.is_empty() {
        return Err(format!("{c} holds no certificate"));
    }
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| format!("{k}: unusable private key: {e}"))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| format!("the key in {k} does not belong to the certificate in {c}: {e}"))?;
    let leaf = &certified.cert[0];
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("{c}: cannot parse the certificate: {e}"))?;
    let expires_in =
        parsed.validity().not_after.timestamp() - time::OffsetDateTime::now_utc().unix_timestamp();
    Ok(Loaded {
        key: Arc::new(certified),
        expires_in,
    })
}

/// Every certificate of the config, checked: `(what, problem)` for errors,
/// and warnings for certificates that expire within
/// [`EXPIRY_WARNING_DAYS`] (or have expired).
pub fn check(config: &TlsConfig) -> (Vec<String>, Vec<String>) {
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    for (what, cert, key) in pairs(config) {
        match load_pair(&cert, &key) {
            Ok(l) if l.expires_in <= 0 => {
                errors.push(format!("{what}: {} has expired", cert.display()))
            }
            Ok(l) if l.expires_in < EXPIRY_WARNING_DAYS * 86_400 => warnings.push(format!(
                "{what}: {} expires in {} day(s)",
                cert.display(),
                l.expires_in / 86_400
            )),
            Ok(_) => {}
            Err(e) => errors.push(format!("{what}: {e}")),
        }
    }
    (errors, warnings)
}

/// `(config key, cert, key)` of the default and every SNI certificate.
fn pairs(config: &TlsConfig) -> Vec<(String, PathBuf, PathBuf)> {
    let mut v = vec![(
        "proxy.tls".to_string(),
        config.cert.clone(),
        config.key.clone(),
    )];
    for (i, c) in config.certs.iter().enumerate() {
        v.push((
            format!("proxy.tls.certs[{i}]"),
            c.cert.clone(),
            c.key.clone(),
        ));
    }
    v
}

/// The certificates in force.
struct Table {
    default: Arc<CertifiedKey>,
    /// Lowercase names, including `*.parent` wildcards.
    hosts: HashMap<String, Arc<CertifiedKey>>,
}

/// The certificate resolver of the TLS listeners.
pub struct CertStore {
    config: TlsConfig,
    table: ArcSwap<Table>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("default", &self.config.cert)
            .finish()
    }
}

impl CertStore {
    /// Loads every certificate of `config`; fails on the first bad one.
    pub fn load(config: &TlsConfig) -> Result<CertStore, String> {
        let table = Self::build(config)?;
        Ok(CertStore {
            config: config.clone(),
            table: ArcSwap::from_pointee(table),
        })
    }

    fn build(config: &TlsConfig) -> Result<Table, String> {
        let warn_expiry = |what: &str, l: &Loaded| {
            if l.expires_in < EXPIRY_WARNING_DAYS * 86_400 {
                warn!(
                    "{what}: the certificate expires in {} day(s)",
                    l.expires_in / 86_400
                );
            }
        };
        let default =
            load_pair(&config.cert, &config.key).map_err(|e| format!("proxy.tls: {e}"))?;
        warn_expiry("proxy.tls", &default);
        let mut hosts = HashMap::new();
        for (i, c) in config.certs.iter().enumerate() {
            let what = format!("proxy.tls.certs[{i}]");
            let loaded = load_pair(&c.cert, &c.key).map_err(|e| format!("{what}: {e}"))?;
            warn_expiry(&what, &loaded);
            for h in &c.hosts {
                hosts.insert(h.clone(), loaded.key.clone());
            }
        }
        Ok(Table {
            default: default.key,
            hosts,
        })
    }

    /// Rebuilds the table from the files; on any problem keeps the current
    /// certificates and returns the problem.
    pub fn reload(&self) -> Result<(), String> {
        match Self::build(&self.config) {
            Ok(t) => {
                self.table.store(Arc::new(t));
                info!("TLS certificates reloaded");
                Ok(())
            }
            Err(e) => {
                warn!("TLS certificates NOT reloaded, still serving the previous ones: {e}");
                Err(e)
            }
        }
    }

    /// The files to watch for renewals.
    pub fn files(&self) -> Vec<PathBuf> {
        pairs(&self.config)
            .into_iter()
            .flat_map(|(_, c, k)| [c, k])
            .collect()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let table = self.table.load();
        let Some(name) = hello.server_name() else {
            return Some(table.default.clone());
        };
        // rustls hands over SNI already lowercased and validated.
        if let Some(k) = table.hosts.get(name) {
            return Some(k.clone());
        }
        let wildcard = name
            .split_once('.')
            .and_then(|(_, parent)| table.hosts.get(&format!("*.{parent}")));
        Some(wildcard.unwrap_or(&table.default).clone())
    }
}

/// A no-op handshake callback: pingora's rustls `TlsSettings` is built
/// through `with_callbacks` when a resolver supplies the certificates.
pub struct NoCallbacks;

#[async_trait::async_trait]
impl pingora::listeners::TlsAccept for NoCallbacks {}

/// TLS settings of a listener: certificates from `store`, TLS 1.2 and 1.3
/// (pingora's rustls default), ALPN h2 then http/1.1.
pub fn settings(store: Arc<CertStore>) -> pingora::Result<pingora::listeners::tls::TlsSettings> {
    let mut s = pingora::listeners::tls::TlsSettings::with_callbacks(Box::new(NoCallbacks))?;
    s.set_cert_resolver(store);
    s.enable_h2();
    Ok(s)
}
