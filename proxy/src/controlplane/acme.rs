//! Automatic HTTPS: certificates from an ACME CA (RFC 8555), obtained and
//! renewed by bgproxy itself (`[proxy.tls.acme]`).
//!
//! [`AcmeService`] is a pingora background service (no thread of its own).
//! At start it serves every certificate of its names found on disk and not
//! due for renewal, without an order; then, per name, it orders when the
//! certificate is due (`renew_before` its expiry) and sleeps until the next
//! name is. One certificate per name, so a name that fails validation does
//! not hold the others back.
//!
//! An order: account (made once, kept) -> new order -> answer the challenge
//! (`dataplane/acme.rs`: HTTP-01 on the plain listeners, TLS-ALPN-01 on the
//! TLS listeners) -> ready -> finalize with a fresh P-256 key (rcgen CSR) ->
//! download the chain -> write `<name>.pem` (key and chain) atomically ->
//! [`CertStore::set_acme`], which swaps it into the SNI table: no restart, no
//! handshake sees half of it.
//!
//! A failed order keeps serving what is there (the previous certificate, or
//! the default one), logs why, says why in `GET /v1/certs`, and is retried
//! after a backoff: [`RETRY_FIRST`], doubled after each failure up to
//! [`RETRY_MAX`]. That keeps a broken setup well under real CAs' rate limits
//! (Let's Encrypt: 5 failed validations per name per hour). A success never
//! orders again before half the new certificate's life has passed, whatever
//! `renew_before` says.
//!
//! Files, under the state directory's `acme/` (0700): `account.json` (the
//! account's URL and key, with the directory it belongs to) and
//! `<name>.pem`, both 0600, written to a temporary file, synced, renamed and
//! the directory synced; opened never through a link (`state_dir.rs`).

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::state_dir;
use crate::config::{AcmeChallenge, AcmeConfig};
use crate::dataplane::acme::Challenges;
use crate::dataplane::tls::{certified, AcmeNote, CertStore, Loaded};

/// The wait after a first failed order; doubled after each further one.
pub const RETRY_FIRST: Duration = Duration::from_secs(300);
/// The longest wait between two failed orders of a name.
pub const RETRY_MAX: Duration = Duration::from_secs(12 * 3600);
/// The longest an order may take, from account to chain.
const ORDER_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the CA may take to validate, and then to issue.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(250))
    .backoff(1.5)
    .timeout(Duration::from_secs(90));
/// The longest the service sleeps at once (so a clock jump is noticed).
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// What went wrong in an order. Each says which step.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("ACME server {directory}: {step}: {source}")]
    Server {
        directory: String,
        step: &'static str,
        source: instant_acme::Error,
    },
    #[error("the CA refused the order: {0}")]
    Refused(String),
    #[error("{0}")]
    Certificate(String),
    #[error("the order took longer than {0:?}")]
    Timeout(Duration),
}

/// `account.json`: the account and the directory it belongs to.
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// The ACME background service.
pub struct AcmeService {
    config: AcmeConfig,
    /// `<state dir>/acme`.
    dir: PathBuf,
    store: Arc<CertStore>,
}

impl AcmeService {
    /// A service ordering `config.hosts` into `store`, keeping its files in
    /// `state_dir/acme`.
    pub fn new(config: AcmeConfig, state_dir: &Path, store: Arc<CertStore>) -> Self {
        AcmeService {
            config,
            dir: state_dir.join("acme"),
            store,
        }
    }

    fn server_error(&self, step: &'static str) -> impl FnOnce(instant_acme::Error) -> AcmeError {
        let directory = self.config.directory.clone();
        move |source| AcmeError::Server {
            directory,
            step,
            source,
        }
    }

    /// The account: from `account.json` when it belongs to this directory,
    /// else created (and kept).
    async fn account(&self) -> Result<Account, AcmeError> {
        let path = self.dir.join("account.json");
        let http = || http_client(self.config.ca_file.as_deref());
        match state_dir::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<StoredAccount>(&bytes) {
                Ok(stored) if stored.directory == self.config.directory => {
                    return Account::builder_with_http(http()?)
                        .from_credentials(stored.credentials)
                        .await
                        .map_err(self.server_error("loading the account"));
                }
                Ok(_) => info!(
                    "{}: the account belongs to another directory: creating one at {}",
                    path.display(),
                    self.config.directory
                ),
                Err(e) => warn!(
                    "{}: unreadable ({e}): creating a new account",
                    path.display()
                ),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(AcmeError::Io {
                    what: "read",
                    path,
                    source,
                })
            }
        }
        let contact = self.config.email.as_ref().map(|e| format!("mailto:{e}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let (account, credentials) = Account::builder_with_http(http()?)
            .create(
                &NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.config.directory.clone(),
                None,
            )
            .await
            .map_err(self.server_error("creating the account"))?;
        let stored = StoredAccount {
            directory: self.config.directory.clone(),
            credentials,
        };
        let bytes = serde_json::to_vec_pretty(&stored)
            .map_err(|e| AcmeError::Certificate(format!("cannot encode the account: {e}")))?;
        write_private(&path, &bytes)?;
        info!(id = %account.id(), "ACME account created at {}", self.config.directory);
        Ok(account)
    }

    /// One order for `host`, from the account to the chain on disk.
    async fn order(&self, account: &Account, host: &str) -> Result<Loaded, AcmeError> {
        let challenges = self.store.challenges();
        let mut pending = Pending {
            challenges: &challenges,
            tokens: Vec::new(),
            alpn: None,
        };
        let ids = [Identifier::Dns(host.to_string())];
        let mut order = account
            .new_order(&NewOrder::new(&ids))
            .await
            .map_err(self.server_error("new order"))?;
        let kind = match self.config.challenge {
            AcmeChallenge::Http01 => ChallengeType::Http01,
            AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(self.server_error("authorization"))?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(AcmeError::Refused(format!(
                        "the authorization for {host} is {other:?}"
                    )))
                }
            }
            let mut challenge = authz.challenge(kind.clone()).ok_or_else(|| {
                AcmeError::Refused(format!("the CA offers no {kind:?} challenge for {host}"))
            })?;
            let key_authorization = challenge.key_authorization();
            match self.config.challenge {
                AcmeChallenge::Http01 => {
                    challenges.put_http(&challenge.token, key_authorization.as_str());
                    pending.tokens.push(challenge.token.clone());
                }
                AcmeChallenge::TlsAlpn01 => {
                    let cert = alpn_certificate(host, key_authorization.digest().as_ref())?;
                    challenges.put_tls_alpn(host, cert);
                    pending.alpn = Some(host.to_string());
                }
            }
            info!(
                host,
                "ACME: answering the {} challenge",
                self.config.challenge.as_str()
            );
            challenge
                .set_ready()
                .await
                .map_err(self.server_error("challenge ready"))?;
        }
        let status = order
            .poll_ready(&POLL)
            .await
            .map_err(self.server_error("waiting for validation"))?;
        if status != OrderStatus::Ready {
            // Say why: the challenge's error, as the CA put it.
            let mut why = Vec::new();
            let mut authorizations = order.authorizations();
            while let Some(Ok(mut authz)) = authorizations.next().await {
                if let Ok(state) = authz.refresh().await {
                    why.extend(
                        state
                            .challenges
                            .iter()
                            .filter_map(|c| c.error.as_ref().map(|e| e.to_string())),
                    );
                }
            }
            return Err(AcmeError::Refused(format!(
                "the order for {host} is {status:?}{}",
                if why.is_empty() {
                    String::new()
                } else {
                    format!(": {}", why.join("; "))
                }
            )));
        }
        drop(pending);
        let key_pem = order
            .finalize()
            .await
            .map_err(self.server_error("finalize"))?;
        let chain_pem = order
            .poll_certificate(&POLL)
            .await
            .map_err(self.server_error("downloading the certificate"))?;
        let pem = format!("{key_pem}{chain_pem}");
        let loaded = parse_pem(pem.as_bytes())
            .map_err(|e| AcmeError::Certificate(format!("the CA's certificate: {e}")))?;
        write_private(&self.dir.join(format!("{host}.pem")), pem.as_bytes())?;
        Ok(loaded)
    }

    /// The certificate of `host` on disk, if readable and good.
    fn on_disk(&self, host: &str) -> Option<Loaded> {
        let path = self.dir.join(format!("{host}.pem"));
        match state_dir::read(&path) {
            Ok(bytes) => match parse_pem(&bytes) {
                Ok(l) => Some(l),
                Err(e) => {
                    warn!("{}: {e}: ordering a new certificate", path.display());
                    None
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                warn!(
                    "cannot read {}: {e}: ordering a new certificate",
                    path.display()
                );
                None
            }
        }
    }

    /// When a certificate expiring at `not_after` is due, from `now` (Unix
    /// seconds): `renew_before` its expiry, but never sooner than half its
    /// remaining life (a `renew_before` longer than the certificate's life
    /// must not order in a loop).
    fn due(&self, not_after: i64, now: i64) -> i64 {
        let renew = not_after - self.config.renew_before.as_secs() as i64;
        let half = now + ((not_after - now) / 2).max(1);
        if renew < half && not_after > now {
            half
        } else {
            renew
        }
    }
}

/// Takes the challenge answers of an order away when it ends, whichever way
/// (also when the order's future is dropped).
struct Pending<'a> {
    challenges: &'a Challenges,
    tokens: Vec<String>,
    alpn: Option<String>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        for t in &self.tokens {
            self.challenges.remove_http(t);
        }
        if let Some(h) = &self.alpn {
            self.challenges.remove_tls_alpn(h);
        }
    }
}

/// One name's schedule.
struct Plan {
    host: String,
    /// Unix seconds.
    due: i64,
    /// The wait after the last failure; `None` after a success.
    backoff: Option<Duration>,
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[async_trait]
impl BackgroundService for AcmeService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if let Err(e) = state_dir::prepare_subdir(&self.dir) {
            warn!(
                "ACME: cannot use {}: {e}: no certificate will be ordered",
                self.dir.display()
            );
            for h in &self.config.hosts {
                self.store.note_acme(
                    h,
                    AcmeNote {
                        last_error: Some(format!("cannot use {}: {e}", self.dir.display())),
                        next_attempt: None,
                    },
                );
            }
            return;
        }
        let mut plans = Vec::new();
        for host in &self.config.hosts {
            if self.store.file_serves(host) {
                info!("ACME: {host} is served by a [[proxy.tls.certs]] file: not ordered");
                continue;
            }
            let due = match self.on_disk(host) {
                Some(l) if l.expires_in > 0 => {
                    let due = self.due(l.not_after, now());
                    info!(
                        "ACME: serving the certificate of {host} from disk (expires in {} day(s))",
                        l.expires_in / 86_400
                    );
                    self.store.set_acme(host, l.key, l.not_after);
                    due
                }
                _ => now(),
            };
            self.store.note_acme(
                host,
                AcmeNote {
                    last_error: None,
                    next_attempt: Some(due),
                },
            );
            plans.push(Plan {
                host: host.clone(),
                due,
                backoff: None,
            });
        }
        if plans.is_empty() {
            return;
        }
        let mut account: Option<Account> = None;
        loop {
            for plan in plans.iter_mut() {
                if plan.due > now() {
                    continue;
                }
                info!(host = %plan.host, "ACME: ordering a certificate from {}", self.config.directory);
                let result = tokio::time::timeout(ORDER_TIMEOUT, async {
                    if account.is_none() {
                        account = Some(self.account().await?);
                    }
                    match &account {
                        Some(a) => self.order(a, &plan.host).await,
                        None => unreachable!("set just above"),
                    }
                })
                .await
                .unwrap_or(Err(AcmeError::Timeout(ORDER_TIMEOUT)));
                match result {
                    Ok(l) => {
                        plan.due = self.due(l.not_after, now());
                        plan.backoff = None;
                        info!(
                            host = %plan.host,
                            "ACME: certificate issued (expires in {}s), serving it",
                            l.expires_in
                        );
                        self.store.set_acme(&plan.host, l.key, l.not_after);
                        self.store.note_acme(
                            &plan.host,
                            AcmeNote {
                                last_error: None,
                                next_attempt: Some(plan.due),
                            },
                        );
                    }
                    Err(e) => {
                        // The account may be what failed (CA unreachable at
                        // start): load or make it again next time.
                        if matches!(e, AcmeError::Server { .. } | AcmeError::Timeout(_)) {
                            account = None;
                        }
                        let backoff = plan.backoff.map_or(RETRY_FIRST, |b| (b * 2).min(RETRY_MAX));
                        plan.backoff = Some(backoff);
                        plan.due = now() + backoff.as_secs() as i64;
                        let serving = if self.store.acme_cert(&plan.host).is_some() {
                            "still serving its current certificate"
                        } else {
                            "serving the default certificate meanwhile"
                        };
                        warn!(
                            host = %plan.host,
                            "ACME: the order failed, {serving}; retrying in {}s: {e}",
                            backoff.as_secs()
                        );
                        self.store.note_acme(
                            &plan.host,
                            AcmeNote {
                                last_error: Some(e.to_string()),
                                next_attempt: Some(plan.due),
                            },
                        );
                    }
                }
            }
            let next = plans.iter().map(|p| p.due).min().unwrap_or(now());
            let wait = Duration::from_secs((next - now()).max(1) as u64).min(MAX_SLEEP);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// The HTTP client of the ACME conversation: hyper with rustls on ring,
/// trusting the public roots and `ca_file`'s certificates.
fn http_client(ca_file: Option<&Path>) -> Result<Box<dyn instant_acme::HttpClient>, AcmeError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let certs = crate::config::pem_certificates(path).map_err(AcmeError::Certificate)?;
        for c in certs {
            roots.add(c).map_err(|e| {
                AcmeError::Certificate(format!("{}: unusable certificate: {e}", path.display()))
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AcmeError::Certificate(format!("TLS client: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        // http:// only for a directory on loopback (the config says so).
        .https_or_http()
        .enable_http1()
        .build();
    let client: hyper_util::client::legacy::Client<_, instant_acme::BodyWrapper<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https);
    Ok(Box::new(client))
}

/// A key and its chain from one PEM text (key first or last).
fn parse_pem(bytes: &[u8]) -> Result<Loaded, String> {
    let key = PrivateKeyDer::from_pem_slice(bytes).map_err(|e| format!("no private key: {e}"))?;
    let chain = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad certificate PEM: {e}"))?;
    certified(chain, key)
}

/// The TLS-ALPN-01 challenge certificate of `host` (RFC 8737): self-signed,
/// the name as its only SAN, the key authorization's SHA-256 in the
/// critical acmeIdentifier extension.
fn alpn_certificate(host: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, AcmeError> {
    let bad = |e: rcgen::Error| AcmeError::Certificate(format!("TLS-ALPN-01 certificate: {e}"));
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()]).map_err(bad)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(bad)?;
    let cert = params.self_signed(&key).map_err(bad)?;
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    // Not through `certified`: its check parses the certificate with
    // webpki, which refuses the critical acmeIdentifier extension (only the
    // CA reads it). The key is the one it was just signed with.
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(private)
        .map_err(|e| AcmeError::Certificate(format!("TLS-ALPN-01 key: {e}")))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

/// Writes `bytes` to `path` mode 0600, atomically: a temporary file beside
/// it, synced, renamed over it, the directory synced.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AcmeError> {
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| AcmeError::Io { what, path, source }
    };
    let tmp = path.with_extension("tmp");
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io("remove", &tmp)(e)),
        _ => {}
    }
    let mut f = state_dir::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| state_dir::explain(e, &tmp))
        .map_err(io("create", &tmp))?;
    f.write_all(bytes).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("sync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("rename into", path))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("sync", dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(renew_before: u64) -> AcmeService {
        let config = AcmeConfig {
            directory: "https://ca.example/dir".into(),
            email: None,
            hosts: vec!["a.example".into()],
            challenge: AcmeChallenge::Http01,
            ca_file: None,
            renew_before: Duration::from_secs(renew_before),
        };
        let tls = crate::config::TlsConfig {
            listen: Vec::new(),
            cert: None,
            key: None,
            certs: Vec::new(),
            acme: Some(config.clone()),
        };
        let store = Arc::new(CertStore::load(&tls).unwrap());
        AcmeService::new(config, Path::new("/nonexistent"), store)
    }

    #[test]
    fn due_is_renew_before_expiry_but_never_a_loop() {
        let s = service(30 * 86_400);
        let now = 1_000_000;
        // 90 days: renewed 30 days before.
        assert_eq!(s.due(now + 90 * 86_400, now), now + 60 * 86_400);
        // 60 seconds, renew_before 30 days: half its life, not now.
        assert_eq!(s.due(now + 60, now), now + 30);
        // Expired: now.
        assert!(s.due(now - 5, now) <= now);
    }

    #[test]
    fn private_files_are_0600_and_replaced_whole() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.pem");
        write_private(&path, b"one").unwrap();
        write_private(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn the_tls_alpn_certificate_carries_the_digest() {
        let cert = alpn_certificate("a.example", &[7u8; 32]).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.cert[0].as_ref()).unwrap();
        // id-pe-acmeIdentifier, 1.3.6.1.5.5.7.1.31, critical.
        let ext = parsed
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier");
        assert!(ext.critical);
        assert!(ext.value.ends_with(&[7u8; 32]));
    }
}
