//! The HTTPS front door's certificates.
//!
//! [`CertStore`] is rustls' certificate resolver for every TLS listener: it
//! picks the certificate by SNI (exact name, then `*.parent`, then the
//! default) from a table behind one `ArcSwap`. [`CertStore::reload`] builds a
//! whole new table from the files and swaps it in only if every file is
//! good: a bad renewal keeps serving the old certificates and says why.
//! The ops service calls it when a certificate or key file changes, so
//! certbot or another ACME client can renew without a restart.
//!
//! Certificates bgproxy obtains itself (`[proxy.tls.acme]`,
//! `controlplane/acme.rs`) come in through [`CertStore::set_acme`], into
//! the same table: a name is served by its `[[proxy.tls.certs]]` file
//! (exact, then wildcard) first, then by its ACME certificate, then by the
//! default certificate; without a default, the handshake fails. A
//! ClientHello offering only ALPN `acme-tls/1` is a CA validating
//! TLS-ALPN-01: it gets the challenge certificate ([`Challenges`]) or none.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::{info, warn};

use bgproxy_control::api::{CertSource, CertView};

use crate::config::TlsConfig;
use crate::dataplane::acme::{Challenges, ACME_TLS_ALPN};
use crate::metrics::Metrics;

/// Certificates expiring sooner than this are warned about.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// A certificate chain and key loaded from PEM files.
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    /// Seconds until the leaf certificate expires.
    pub expires_in: i64,
    /// When the leaf certificate expires (Unix seconds).
    pub not_after: i64,
}

/// Builds a checked [`Loaded`] from a chain and its key (DER): the key
/// matches the leaf certificate.
pub fn certified(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    private: rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<Loaded, String> {
    if chain.is_empty() {
        return Err("no certificate".into());
    }
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| format!("unusable private key: {e}"))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| format!("the key does not belong to the certificate: {e}"))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(certified.cert[0].as_ref())
        .map_err(|e| format!("cannot parse the certificate: {e}"))?;
    let not_after = parsed.validity().not_after.timestamp();
    Ok(Loaded {
        key: Arc::new(certified),
        expires_in: not_after - time::OffsetDateTime::now_utc().unix_timestamp(),
        not_after,
    })
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
    let not_after = parsed.validity().not_after.timestamp();
    Ok(Loaded {
        key: Arc::new(certified),
        expires_in: not_after - time::OffsetDateTime::now_utc().unix_timestamp(),
        not_after,
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
    let mut v = Vec::new();
    if let (Some(cert), Some(key)) = (&config.cert, &config.key) {
        v.push(("proxy.tls".to_string(), cert.clone(), key.clone()));
    }
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
#[derive(Clone)]
struct Table {
    default: Option<Arc<CertifiedKey>>,
    /// From `[[proxy.tls.certs]]`: lowercase names, including `*.parent`
    /// wildcards.
    hosts: HashMap<String, Arc<CertifiedKey>>,
    /// Obtained through ACME, by name.
    acme: HashMap<String, (Arc<CertifiedKey>, i64)>,
    /// The files served: `(hosts, file, not_after)`, the default first
    /// with no hosts.
    files: Vec<(Vec<String>, PathBuf, i64)>,
}

impl Table {
    /// The file certificate serving `name` (exact, then `*.parent`).
    fn file_for(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        self.hosts.get(name).or_else(|| {
            name.split_once('.')
                .and_then(|(_, parent)| self.hosts.get(&format!("*.{parent}")))
        })
    }
}

/// What the ACME service last said about one name.
#[derive(Clone, Debug, Default)]
pub struct AcmeNote {
    /// Why the last order failed; `None` after a success.
    pub last_error: Option<String>,
    /// When the next order is due (Unix seconds).
    pub next_attempt: Option<i64>,
}

/// The certificate resolver of the TLS listeners.
pub struct CertStore {
    config: TlsConfig,
    table: ArcSwap<Table>,
    challenges: Arc<Challenges>,
    metrics: Option<Arc<Metrics>>,
    notes: std::sync::Mutex<HashMap<String, AcmeNote>>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("default", &self.config.cert)
            .finish()
    }
}

impl CertStore {
    /// Loads every certificate file of `config`; fails on the first bad one.
    pub fn load(config: &TlsConfig) -> Result<CertStore, String> {
        let table = Self::build(config, HashMap::new())?;
        Ok(CertStore {
            config: config.clone(),
            table: ArcSwap::from_pointee(table),
            challenges: Arc::new(Challenges::default()),
            metrics: None,
            notes: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Reports every served certificate's expiry in `metrics` from now on.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self.publish_expiry();
        self
    }

    /// The challenge answers shared with the ACME service and the plain
    /// listeners.
    pub fn challenges(&self) -> Arc<Challenges> {
        self.challenges.clone()
    }

    /// The configuration the store was loaded from.
    pub fn config(&self) -> &TlsConfig {
        &self.config
    }

    fn build(
        config: &TlsConfig,
        acme: HashMap<String, (Arc<CertifiedKey>, i64)>,
    ) -> Result<Table, String> {
        let warn_expiry = |what: &str, l: &Loaded| {
            if l.expires_in < EXPIRY_WARNING_DAYS * 86_400 {
                warn!(
                    "{what}: the certificate expires in {} day(s)",
                    l.expires_in / 86_400
                );
            }
        };
        let mut files = Vec::new();
        let default = match (&config.cert, &config.key) {
            (Some(cert), Some(key)) => {
                let loaded = load_pair(cert, key).map_err(|e| format!("proxy.tls: {e}"))?;
                warn_expiry("proxy.tls", &loaded);
                files.push((Vec::new(), cert.clone(), loaded.not_after));
                Some(loaded.key)
            }
            _ => None,
        };
        let mut hosts = HashMap::new();
        for (i, c) in config.certs.iter().enumerate() {
            let what = format!("proxy.tls.certs[{i}]");
            let loaded = load_pair(&c.cert, &c.key).map_err(|e| format!("{what}: {e}"))?;
            warn_expiry(&what, &loaded);
            for h in &c.hosts {
                hosts.insert(h.clone(), loaded.key.clone());
            }
            files.push((c.hosts.clone(), c.cert.clone(), loaded.not_after));
        }
        Ok(Table {
            default,
            hosts,
            acme,
            files,
        })
    }

    /// Rebuilds the file certificates from the files (ACME ones are kept);
    /// on any problem keeps the current certificates and returns the problem.
    pub fn reload(&self) -> Result<(), String> {
        let acme = self.table.load().acme.clone();
        match Self::build(&self.config, acme) {
            Ok(t) => {
                // An ACME certificate may have come in while the files were
                // read: keep the newest set of those.
                self.table.rcu(|current| {
                    let mut next = t.clone();
                    next.acme = current.acme.clone();
                    next
                });
                self.publish_expiry();
                info!("TLS certificates reloaded");
                Ok(())
            }
            Err(e) => {
                warn!("TLS certificates NOT reloaded, still serving the previous ones: {e}");
                Err(e)
            }
        }
    }

    /// Serves `key` (expiring at `not_after`, Unix seconds) for `host` from
    /// now on, in place of any earlier ACME certificate of that name.
    pub fn set_acme(&self, host: &str, key: Arc<CertifiedKey>, not_after: i64) {
        self.table.rcu(|current| {
            let mut next = Table::clone(current);
            next.acme.insert(host.to_string(), (key.clone(), not_after));
            next
        });
        self.publish_expiry();
    }

    /// Whether a `[[proxy.tls.certs]]` file serves `host` (files win over
    /// ACME, so such a name is never ordered).
    pub fn file_serves(&self, host: &str) -> bool {
        self.table.load().file_for(host).is_some()
    }

    /// The ACME certificate of `host` and its expiry, if one is served.
    pub fn acme_cert(&self, host: &str) -> Option<(Arc<CertifiedKey>, i64)> {
        self.table.load().acme.get(host).cloned()
    }

    /// Records what the ACME service last did for `host`.
    pub fn note_acme(&self, host: &str, note: AcmeNote) {
        self.notes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(host.to_string(), note);
    }

    fn publish_expiry(&self) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        let table = self.table.load();
        let mut series = Vec::new();
        for (hosts, _, not_after) in &table.files {
            if hosts.is_empty() {
                series.push((String::new(), "file", *not_after));
            }
            for h in hosts {
                series.push((h.clone(), "file", *not_after));
            }
        }
        for (h, (_, not_after)) in &table.acme {
            series.push((h.clone(), "acme", *not_after));
        }
        metrics.set_certificate_expiry(&series);
    }

    /// Every certificate served, files first, then every ACME name (with
    /// its last error, also for names that have no certificate yet).
    pub fn view(&self) -> Vec<CertView> {
        let table = self.table.load();
        let notes = self.notes.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let rfc3339 = |t: i64| {
            time::OffsetDateTime::from_unix_timestamp(t)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
        };
        let mut out: Vec<CertView> = table
            .files
            .iter()
            .map(|(hosts, file, not_after)| CertView {
                hosts: hosts.clone(),
                source: CertSource::File,
                file: Some(file.display().to_string()),
                not_after: rfc3339(*not_after),
                last_error: None,
                next_attempt: None,
            })
            .collect();
        let mut names: Vec<&String> = table.acme.keys().chain(notes.keys()).collect();
        names.sort();
        names.dedup();
        for h in names {
            let note = notes.get(h).cloned().unwrap_or_default();
            out.push(CertView {
                hosts: vec![h.clone()],
                source: CertSource::Acme,
                file: None,
                not_after: table.acme.get(h).and_then(|(_, t)| rfc3339(*t)),
                last_error: note.last_error,
                next_attempt: note.next_attempt.and_then(rfc3339),
            });
        }
        out
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
            return table.default.clone();
        };
        // A CA validating TLS-ALPN-01 offers `acme-tls/1` alone (RFC 8737):
        // it gets the challenge certificate or nothing, never a real one.
        let mut alpn = hello.alpn().into_iter().flatten();
        if alpn.any(|p| p == ACME_TLS_ALPN) {
            return self.challenges.tls_alpn(name);
        }
        // rustls hands over SNI already lowercased and validated.
        if let Some(k) = table.file_for(name) {
            return Some(k.clone());
        }
        if let Some((k, _)) = table.acme.get(name) {
            return Some(k.clone());
        }
        table.default.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SniCert;

    /// A self-signed certificate for `names`, written as `<stem>.pem` and
    /// `<stem>.key` in `dir`.
    fn pair(dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (c, k) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn files_win_over_acme_and_every_certificate_is_listed_and_measured() {
        let dir = tempfile::tempdir().unwrap();
        let (dc, dk) = pair(dir.path(), "default", &["default.example"]);
        let (bc, bk) = pair(dir.path(), "b", &["b.example", "*.wild.example"]);
        let config = TlsConfig {
            listen: Vec::new(),
            cert: Some(dc),
            key: Some(dk),
            certs: vec![SniCert {
                hosts: vec!["b.example".into(), "*.wild.example".into()],
                cert: bc,
                key: bk,
            }],
            acme: None,
        };
        let metrics = Arc::new(Metrics::new());
        let store = CertStore::load(&config)
            .unwrap()
            .with_metrics(metrics.clone());
        assert!(store.file_serves("b.example"));
        assert!(store.file_serves("x.wild.example"));
        assert!(!store.file_serves("shop.example"));

        let (sc, sk) = pair(dir.path(), "shop", &["shop.example"]);
        let acme = load_pair(&sc, &sk).unwrap();
        store.set_acme("shop.example", acme.key, acme.not_after);
        store.note_acme(
            "later.example",
            AcmeNote {
                last_error: Some("connection refused".into()),
                next_attempt: Some(acme.not_after),
            },
        );
        let view = store.view();
        let sources: Vec<(&[String], CertSource)> =
            view.iter().map(|c| (&c.hosts[..], c.source)).collect();
        assert_eq!(sources.len(), 4, "{view:?}");
        assert_eq!(sources[0], (&[][..], CertSource::File));
        assert_eq!(sources[1].1, CertSource::File);
        assert_eq!(view[2].hosts, ["later.example"]);
        assert_eq!(view[2].not_after, None);
        assert_eq!(view[2].last_error.as_deref(), Some("connection refused"));
        assert_eq!(view[3].hosts, ["shop.example"]);
        assert!(view[3].not_after.is_some());

        let text = String::from_utf8(metrics.render()).unwrap();
        for series in [
            "{host=\"\",source=\"file\"}",
            "{host=\"b.example\",source=\"file\"}",
            "{host=\"*.wild.example\",source=\"file\"}",
            "{host=\"shop.example\",source=\"acme\"}",
        ] {
            assert!(
                text.contains(&format!(
                    "bgproxy_certificate_expiry_timestamp_seconds{series}"
                )),
                "{series} missing:\n{text}"
            );
        }
        // A reload of the files keeps the ACME certificates.
        store.reload().unwrap();
        assert!(store.acme_cert("shop.example").is_some());
    }
}
