//! Automatic HTTPS against a real ACME server on loopback: Debian's
//! `pebble`, with `pebble-challtestsrv` as its DNS server (every name is
//! 127.0.0.1), pebble's HTTP-01 port set to bgproxy's plain listener and its
//! TLS-ALPN-01 port to bgproxy's TLS listener. pebble really validates
//! (no `PEBBLE_VA_ALWAYS_VALID`); its own HTTPS certificate is made here and
//! handed to bgproxy through `ca_file`; clients trust pebble's issuing root
//! from its management API.

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bgproxy_e2e::{wait_until, AppSpec, Backend, Daemon, Options, Port};
use serde_json::Value;

const HOST: &str = "shop.example.com";
const T: Duration = Duration::from_secs(60);

/// pebble and its DNS server, on ports of their own.
struct Pebble {
    dir: tempfile::TempDir,
    listen: Port,
    management: Port,
    children: Vec<Child>,
}

impl Pebble {
    /// Reserves pebble's ports and writes its HTTPS certificate (also the
    /// `ca_file` bgproxy trusts).
    fn prepare() -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.path().join("pebble.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("pebble.key"), key.serialize_pem()).unwrap();
        Pebble {
            dir,
            listen: Port::reserve(),
            management: Port::reserve(),
            children: Vec::new(),
        }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("pebble.pem")
    }

    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.listen.number())
    }

    /// Starts the DNS server and pebble, validating on `http_port` and
    /// `tls_port`; certificates valid `validity` seconds.
    fn start(&mut self, http_port: u16, tls_port: u16, validity: u64) {
        // The DNS server: a UDP port (pebble asks over UDP). Its TCP twin
        // may be taken: then it exits, and another port is tried.
        let dns = (0..5)
            .find_map(|_| {
                let port = UdpSocket::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port();
                let mgmt = Port::reserve();
                let mut child = Command::new("pebble-challtestsrv")
                    .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                    .args(["-dns01", &format!("127.0.0.1:{port}")])
                    .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                    .args(["-management", &mgmt.addr().to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("pebble-challtestsrv (Debian package pebble-challtestsrv)");
                let up = wait_until(Duration::from_secs(5), || {
                    TcpStream::connect(mgmt.addr()).is_ok()
                });
                if up && child.try_wait().unwrap().is_none() {
                    self.children.push(child);
                    Some(port)
                } else {
                    let _ = child.kill();
                    let _ = child.wait();
                    None
                }
            })
            .expect("pebble-challtestsrv did not start");
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": self.listen.addr().to_string(),
                "managementListenAddress": self.management.addr().to_string(),
                "certificate": self.dir.path().join("pebble.pem"),
                "privateKey": self.dir.path().join("pebble.key"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": validity,
            }
        });
        let path = self.dir.path().join("pebble.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let log = std::fs::File::create(self.dir.path().join("pebble.log")).unwrap();
        let child = Command::new("pebble")
            .arg("-config")
            .arg(&path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("pebble (Debian package pebble)");
        self.children.push(child);
        assert!(
            wait_until(Duration::from_secs(20), || TcpStream::connect(
                self.listen.addr()
            )
            .is_ok()
                && TcpStream::connect(self.management.addr()).is_ok()),
            "pebble did not start: {}",
            self.log()
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// pebble's issuing root (PEM), from its management API.
    fn root(&self) -> String {
        let pem = std::fs::read(self.ca_file()).unwrap();
        reqwest::blocking::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
            .get(format!(
                "https://127.0.0.1:{}/roots/0",
                self.management.number()
            ))
            .send()
            .unwrap()
            .text()
            .unwrap()
    }

    /// Stops pebble and its DNS server: the CA is unreachable from now on.
    fn stop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TLS client trusting `root` that connects anew for every request (each
/// request is a handshake, so it sees the certificate in force).
fn client(root: &str, addr: SocketAddr) -> reqwest::blocking::Client {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(root.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // No session resumption: a resumed session shows the certificate of
    // the first handshake, not the one served now.
    tls.resumption = rustls::client::Resumption::disabled();
    reqwest::blocking::Client::builder()
        .use_preconfigured_tls(tls)
        .http1_only()
        .resolve(HOST, addr)
        .tls_info(true)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The DER of the certificate presented for [`HOST`], if the handshake
/// (verified against `root`) and the request succeed.
fn presented(c: &reqwest::blocking::Client, addr: SocketAddr) -> Option<Vec<u8>> {
    let r = c
        .get(format!("https://{HOST}:{}/", addr.port()))
        .send()
        .ok()?;
    if r.status() != 200 {
        return None;
    }
    r.extensions()
        .get::<reqwest::tls::TlsInfo>()?
        .peer_certificate()
        .map(|c| c.to_vec())
}

/// A test's pebble and daemon, both running: one app serving [`HOST`] with
/// `[proxy.tls.acme]` on the TLS listener `tls`, and a client of that
/// listener trusting pebble's root.
struct Running {
    /// The TLS listener's port, held for the daemon.
    tls: Port,
    pebble: Pebble,
    d: Daemon,
    /// The app's backends, alive as long as the test.
    _backends: [Backend; 2],
    addr: SocketAddr,
    /// Pebble's issuing root (PEM).
    root: String,
    c: reqwest::blocking::Client,
}

/// Starts pebble (its certificates valid `validity_s` seconds) on the
/// daemon's plain and TLS ports, then the daemon ordering with `challenge`
/// and renewing `renew_before` expiry.
fn start(challenge: &str, renew_before: &str, validity_s: u64) -> Running {
    let tls = Port::reserve();
    let mut pebble = Pebble::prepare();
    let (bl, gr) = (Backend::start("blue"), Backend::start("green"));
    let mut d = Daemon::start_opts(
        &[AppSpec::new("shop", &[&bl], &[&gr]).hosts(&[HOST])],
        Options {
            toml: format!(
                "[proxy.tls]\nlisten = [\"{}\"]\n[proxy.tls.acme]\ndirectory = \"{}\"\nemail = \"ops@example.net\"\n\
                 challenge = \"{challenge}\"\nca_file = \"{}\"\nrenew_before = \"{renew_before}\"\n",
                tls.addr(),
                pebble.directory(),
                pebble.ca_file().display()
            ),
            deferred: true,
            ..Options::default()
        },
    );
    pebble.start(d.proxy.port(), tls.number(), validity_s);
    d.spawn();
    let addr = tls.addr();
    let root = pebble.root();
    let c = client(&root, addr);
    Running {
        tls,
        pebble,
        d,
        _backends: [bl, gr],
        addr,
        root,
        c,
    }
}

fn certs(d: &Daemon) -> Vec<Value> {
    let (status, body) = d.api("GET", "/v1/certs", None);
    assert_eq!(status, 200, "{body}");
    body["certs"].as_array().cloned().unwrap_or_default()
}

fn acme_entry(d: &Daemon) -> Value {
    certs(d)
        .into_iter()
        .find(|c| c["source"] == "acme" && c["hosts"][0] == HOST)
        .unwrap_or(Value::Null)
}

#[test]
fn http01_issues_serves_and_restarts_from_disk() {
    let Running {
        tls: _tls,
        pebble,
        mut d,
        _backends,
        addr,
        root: _,
        c,
    } = start("http-01", "30d", 90 * 86_400);

    // Issued through HTTP-01 on the plain listener, then served by SNI to a
    // client that trusts pebble's root, and proxied.
    let mut first = None;
    let issued = wait_until(T, || {
        first = presented(&c, addr);
        first.is_some()
    });
    assert!(
        issued,
        "no certificate; bgproxy log:\n{}\npebble log:\n{}",
        d.log(),
        pebble.log()
    );
    let first = first.unwrap();
    let entry = acme_entry(&d);
    assert!(entry["not_after"].is_string(), "{entry}");
    assert!(entry["last_error"].is_null(), "{entry}");
    let expiry = d
        .metric(&format!(
            "bgproxy_certificate_expiry_timestamp_seconds{{host=\"{HOST}\",source=\"acme\"}}"
        ))
        .expect("expiry metric");
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    assert!(expiry > now + 80.0 * 86_400.0, "{expiry}");

    // The status API has the same certificates section.
    let (_, status) = d.api("GET", "/v1/status", None);
    let listed = status["certificates"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        listed
            .iter()
            .any(|c| c["hosts"][0] == HOST && c["source"] == "acme"),
        "{status}"
    );

    // The account key and the certificate are kept, 0600.
    use std::os::unix::fs::PermissionsExt;
    for f in ["account.json", &format!("{HOST}.pem")] {
        let path = d.state_dir().join("acme").join(f);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }

    // `bgctl certs` lists it.
    let (code, out, err) = d.bgctl(&["certs"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(HOST) && out.contains("acme"), "{out}");

    // A restart serves it from disk, without a new order.
    d.kill9_and_restart();
    let mut again = None;
    assert!(wait_until(T, || {
        again = presented(&c, addr);
        again.is_some()
    }));
    assert_eq!(
        again.unwrap(),
        first,
        "the same certificate after a restart"
    );
    let needle = format!("serving the certificate of {HOST} from disk");
    let log = d.log_with(&[&needle]);
    let after = &log[log.rfind(&needle).expect("served from disk")..];
    assert!(
        !after.contains("ordering a certificate"),
        "a new order after the restart:\n{after}"
    );
}

#[test]
fn renewal_swaps_under_load_and_an_unreachable_ca_keeps_the_certificate() {
    // 30-second certificates renewed 20 seconds before they expire (not
    // sooner than half their life): a new one about every 15 seconds.
    let Running {
        tls: _tls,
        mut pebble,
        d,
        _backends,
        addr,
        root,
        c,
    } = start("http-01", "20s", 30);
    let mut first = None;
    assert!(
        wait_until(T, || {
            first = presented(&c, addr);
            first.is_some()
        }),
        "no certificate; log:\n{}",
        d.log()
    );
    let first = first.unwrap();

    // Bounded load (4 clients, a handshake per request, at most 60 s or
    // 20,000 requests) until two renewed certificates have been served.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::new(Mutex::new(vec![first.clone()]));
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let started = Instant::now();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed, seen, errors) = (
                stop.clone(),
                ok.clone(),
                failed.clone(),
                seen.clone(),
                errors.clone(),
            );
            let c = client(&root, addr);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed)
                    && started.elapsed() < Duration::from_secs(60)
                    && ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < 20_000
                {
                    match c.get(format!("https://{HOST}:{}/", addr.port())).send() {
                        Ok(r) if r.status() == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            let der = r
                                .extensions()
                                .get::<reqwest::tls::TlsInfo>()
                                .and_then(|t| t.peer_certificate().map(|c| c.to_vec()));
                            if let Some(der) = der {
                                // Distinct certificates, in the order first
                                // seen (clients racing a swap may see the
                                // old one once more after the new one).
                                let mut s = seen.lock().unwrap();
                                if !s.contains(&der) {
                                    s.push(der);
                                }
                            }
                        }
                        other => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors.lock().unwrap().push(format!("{other:?}"));
                        }
                    }
                }
            })
        })
        .collect();
    wait_until(Duration::from_secs(60), || seen.lock().unwrap().len() >= 3);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let renewals = seen.lock().unwrap().len() - 1;
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "renewal under load: {ok} requests answered, {failed} failed, {renewals} renewed certificate(s) served in {:?}",
        started.elapsed()
    );
    assert!(renewals >= 1, "no renewal seen; log:\n{}", d.log());
    assert_eq!(failed, 0, "{:?}", errors.lock().unwrap());

    // The CA goes away: the next renewal fails, the certificate in force
    // stays, and the error is reported by the API and bgctl.
    pebble.stop();
    let mut entry = Value::Null;
    assert!(
        wait_until(T, || {
            entry = acme_entry(&d);
            entry["last_error"].is_string()
        }),
        "no error reported: {entry}; log:\n{}",
        d.log()
    );
    let last = seen.lock().unwrap().last().cloned().unwrap();
    let now = presented(&c, addr);
    assert!(now.is_some(), "the certificate is no longer served");
    // A renewal may have landed between the last request of the load and
    // pebble's stop; the one served now is the last one issued either way.
    let served = now.unwrap();
    assert!(served == last || !seen.lock().unwrap().contains(&served));
    assert!(entry["next_attempt"].is_string(), "{entry}");
    let (code, out, err) = d.bgctl(&["certs"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(HOST), "{out}");
    assert!(out.contains("error"), "{out}");
    let (_, status) = d.api("GET", "/v1/status", None);
    let listed = status["certificates"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        listed
            .iter()
            .any(|c| c["hosts"][0] == HOST && c["last_error"].is_string()),
        "{status}"
    );
    let log = d.log();
    assert!(log.contains("the order failed"), "{log}");
}

#[test]
fn tls_alpn01_issues_and_the_listener_still_speaks_h2() {
    let Running {
        tls: _tls,
        pebble,
        d,
        _backends,
        addr,
        root,
        c,
    } = start("tls-alpn-01", "30d", 90 * 86_400);
    let issued = wait_until(T, || presented(&c, addr).is_some());
    assert!(
        issued,
        "no certificate; bgproxy log:\n{}\npebble log:\n{}",
        d.log(),
        pebble.log()
    );
    let entry = acme_entry(&d);
    assert!(entry["last_error"].is_null(), "{entry}");
    // Validated on the TLS listener, by the only challenge answered.
    let log = d.log();
    assert!(log.contains("answering the tls-alpn-01 challenge"), "{log}");
    assert!(!log.contains("answering the http-01 challenge"), "{log}");
    // The same listener, for browsers: HTTP/2 by ALPN, proxied.
    let h2 = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(root.as_bytes()).unwrap())
        .resolve(HOST, addr)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .get(format!("https://{HOST}:{}/", addr.port()))
        .send()
        .unwrap();
    assert_eq!(h2.status(), 200);
    assert_eq!(h2.version(), reqwest::Version::HTTP_2);
}
