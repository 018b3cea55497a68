//! The HTTPS front door with certificates made by the test (rcgen): routing
//! over TLS, ALPN h2, SNI selection, certificate reload without a restart,
//! the HTTP -> HTTPS redirect, and `--check` of certificates.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bgproxy_e2e::{wait_until, AppSpec, Backend, Daemon, Options, Port};
use serde_json::Value;

const T: Duration = Duration::from_secs(10);

/// A self-signed certificate for `names`; returns (cert PEM, key PEM, DER).
fn cert(names: &[&str], days: i64) -> (String, String, Vec<u8>) {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
    let key = rcgen::KeyPair::generate().unwrap();
    let c = params.self_signed(&key).unwrap();
    (c.pem(), key.serialize_pem(), c.der().to_vec())
}

/// Writes a PEM file atomically (as an ACME client would).
fn put(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// A client that trusts `roots`, sends SNI `host`, and connects to `addr`.
fn client(roots: &[&str], host: &str, addr: SocketAddr, h2: bool) -> reqwest::blocking::Client {
    let mut b = reqwest::blocking::Client::builder()
        .tls_info(true)
        .resolve(host, addr)
        .timeout(T);
    for r in roots {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(r.as_bytes()).unwrap());
    }
    if !h2 {
        b = b.http1_only();
    }
    b.build().unwrap()
}

/// The DER of the certificate the server presented for `host`.
fn presented(roots: &[&str], host: &str, addr: SocketAddr) -> Option<Vec<u8>> {
    let r = client(roots, host, addr, false)
        .get(format!("https://{host}:{}/", addr.port()))
        .send()
        .ok()?;
    r.extensions()
        .get::<reqwest::tls::TlsInfo>()?
        .peer_certificate()
        .map(|c| c.to_vec())
}

struct Tls {
    dir: tempfile::TempDir,
    /// The HTTPS listener's port, held until the test ends.
    port: Port,
    a: (String, String, Vec<u8>),
    b: (String, String, Vec<u8>),
}

fn setup() -> Tls {
    let dir = tempfile::tempdir().unwrap();
    let a = cert(&["a.example"], 90);
    let b = cert(&["b.example", "*.wild.example"], 90);
    put(dir.path(), "a.pem", &a.0);
    put(dir.path(), "a.key", &a.1);
    put(dir.path(), "b.pem", &b.0);
    put(dir.path(), "b.key", &b.1);
    Tls {
        dir,
        port: Port::reserve(),
        a,
        b,
    }
}

fn tls_toml(t: &Tls) -> String {
    let d = t.dir.path().display();
    format!(
        "[proxy.tls]\nlisten = [\"127.0.0.1:{}\"]\ncert = \"{d}/a.pem\"\nkey = \"{d}/a.key\"\n\
         [[proxy.tls.certs]]\nhosts = [\"b.example\", \"*.wild.example\"]\ncert = \"{d}/b.pem\"\nkey = \"{d}/b.key\"\n",
        t.port.number()
    )
}

#[test]
fn https_h2_and_sni() {
    let (bl, gr) = (Backend::start("blue"), Backend::start("green"));
    let t = setup();
    let d = Daemon::start_opts(
        &[AppSpec::new("web", &[&bl], &[&gr])],
        Options {
            toml: tls_toml(&t),
            ..Options::default()
        },
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], t.port.number()));
    let roots = [t.a.0.as_str(), t.b.0.as_str()];

    // HTTP/2 over TLS (ALPN h2), routed to the live color.
    let r = client(&roots, "a.example", addr, true)
        .get(format!("https://a.example:{}/x?y=1", t.port.number()))
        .send()
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let echo: Value = r.json().unwrap();
    assert_eq!(echo["color"], "blue");
    assert_eq!(echo["target"], "/x?y=1");
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
    // ALPN falls back to HTTP/1.1.
    let r = client(&roots, "a.example", addr, false)
        .get(format!("https://a.example:{}/", t.port.number()))
        .send()
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    // After a switch, HTTPS follows.
    assert!(d.wait_health("web", "green", "up", T));
    assert_eq!(d.switch("web", "green").0, 200);
    let r = client(&roots, "a.example", addr, true)
        .get(format!("https://a.example:{}/", t.port.number()))
        .send()
        .unwrap();
    assert_eq!(r.json::<Value>().unwrap()["color"], "green");

    // SNI picks the certificate: exact name, wildcard, else the default.
    assert_eq!(presented(&roots, "b.example", addr), Some(t.b.2.clone()));
    assert_eq!(
        presented(&roots, "x.wild.example", addr),
        Some(t.b.2.clone())
    );
    assert_eq!(presented(&roots, "a.example", addr), Some(t.a.2.clone()));
}

#[test]
fn certificate_replaced_on_disk_is_served_without_restart() {
    let (bl, gr) = (Backend::start("blue"), Backend::start("green"));
    let t = setup();
    let d = Daemon::start_opts(
        &[AppSpec::new("web", &[&bl], &[&gr])],
        Options {
            toml: tls_toml(&t),
            ..Options::default()
        },
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], t.port.number()));
    let renewed = cert(&["a.example"], 90);
    let roots = [t.a.0.as_str(), renewed.0.as_str()];
    assert_eq!(presented(&roots, "a.example", addr), Some(t.a.2.clone()));
    put(t.dir.path(), "a.key", &renewed.1);
    put(t.dir.path(), "a.pem", &renewed.0);
    assert!(
        wait_until(T, || presented(&roots, "a.example", addr)
            == Some(renewed.2.clone())),
        "{}",
        d.log()
    );

    // A bad new file keeps the current certificate, and says why.
    put(t.dir.path(), "a.pem", "not a certificate\n");
    assert!(
        wait_until(T, || d.log().contains("NOT reloaded")),
        "{}",
        d.log()
    );
    assert_eq!(
        presented(&roots, "a.example", addr),
        Some(renewed.2.clone())
    );
}

#[test]
fn redirect_plain_http_to_https() {
    let (bl, gr) = (Backend::start("blue"), Backend::start("green"));
    let t = setup();
    let spec = AppSpec::new("web", &[&bl], &[&gr]).hosts(&["a.example"]);
    let d = Daemon::start_opts(
        &[spec],
        Options {
            toml: tls_toml(&t),
            ..Options::default()
        },
    );
    // Turn the redirect on by a reload (and so also test that it applies).
    let text = std::fs::read_to_string(&d.config).unwrap().replace(
        "name = \"web\"\n",
        "name = \"web\"\nredirect_https = true\n",
    );
    d.rewrite_config(&text);
    let (s, v) = d.api("POST", "/v1/reload", None);
    assert_eq!(s, 200, "{v}");
    let r = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("http://{}/shop/cart?id=7&q=a%20b", d.proxy))
        .header("Host", "a.example")
        .send()
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"],
        format!(
            "https://a.example:{}/shop/cart?id=7&q=a%20b",
            t.port.number()
        )
    );
    assert_eq!(bl.hits(), 0, "nothing proxied");
    // Over HTTPS the same request is served.
    let roots = [t.a.0.as_str()];
    let addr = SocketAddr::from(([127, 0, 0, 1], t.port.number()));
    let r = client(&roots, "a.example", addr, true)
        .get(format!("https://a.example:{}/shop", t.port.number()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn check_validates_certificates() {
    let t = setup();
    let d = t.dir.path();
    let check = |cert: &str, key: &str| {
        let conf = format!(
            "[proxy]\nlisten = []\n[proxy.tls]\nlisten = [\"127.0.0.1:{}\"]\ncert = \"{cert}\"\nkey = \"{key}\"\n[state]\npath = \"s/state.json\"\n\
             [[app]]\nname = \"web\"\n[app.blue]\nupstreams = [\"127.0.0.1:1\"]\n[app.green]\nupstreams = [\"127.0.0.1:2\"]\n",
            t.port.number()
        );
        std::fs::write(d.join("c.toml"), conf).unwrap();
        bgproxy_e2e::check_file(&d.join("c.toml"))
    };
    let (ok, err) = check("a.pem", "a.key");
    assert!(ok, "{err}");
    let (ok, err) = check("a.pem", "b.key");
    assert!(
        !ok && err.contains("does not belong to the certificate"),
        "{err}"
    );
    let soon = cert(&["a.example"], 5);
    put(d, "soon.pem", &soon.0);
    put(d, "soon.key", &soon.1);
    let (ok, err) = check("soon.pem", "soon.key");
    assert!(
        ok && err.contains("warning")
            && (err.contains("expires in 4 day") || err.contains("expires in 5 day")),
        "{err}"
    );
    let old = cert(&["a.example"], -1);
    put(d, "old.pem", &old.0);
    put(d, "old.key", &old.1);
    let (ok, err) = check("old.pem", "old.key");
    assert!(!ok && err.contains("has expired"), "{err}");
    let (ok, err) = check("missing.pem", "a.key");
    assert!(
        !ok && err.contains("proxy.tls.cert") && err.contains("does not exist"),
        "{err}"
    );
}

/// An HTTP/2 connection (over TLS) idle past `client_idle_timeout` is
/// closed, like an HTTP/1 keep-alive one.
#[test]
fn idle_http2_connection_is_closed() {
    use std::io::{Read, Write};
    let (bl, gr) = (Backend::start("blue"), Backend::start("green"));
    let t = setup();
    let _d = Daemon::start_opts(
        &[AppSpec::new("web", &[&bl], &[&gr])],
        Options {
            proxy: "client_idle_timeout = \"1s\"".into(),
            toml: tls_toml(&t),
            ..Options::default()
        },
    );
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(t.a.2.clone()))
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("a.example").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", t.port.number())).unwrap();
    tcp.set_read_timeout(Some(T)).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    // The client preface and an empty SETTINGS frame, then nothing.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    tls.flush().unwrap();
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"h2"[..]));
    let started = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => break, // closed (with or without close_notify)
            Ok(_) => continue,       // SETTINGS, SETTINGS ack, GOAWAY
        }
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
}
