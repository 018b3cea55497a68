//! HTTP/2 clients over TLS, as browsers speak to the front door: plain
//! requests (no body) take the lean loop, the others pingora-proxy; both
//! must forward the same request to an HTTP/1 upstream (Host from
//! `:authority`, the forwarded headers, no HTTP/2-only header) and answer
//! the same way, many streams at once on one connection.

use std::net::SocketAddr;
use std::time::Duration;

use bgproxy_e2e::{AppSpec, Backend, Daemon, Options, Port};
use serde_json::Value;

const T: Duration = Duration::from_secs(10);

struct Tls {
    dir: tempfile::TempDir,
    port: Port,
    root: String,
}

/// A self-signed certificate for shop.test and an HTTPS listener for it.
fn setup() -> Tls {
    let dir = tempfile::tempdir().unwrap();
    let params = rcgen::CertificateParams::new(vec!["shop.test".to_string()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.path().join("c.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("c.key"), key.serialize_pem()).unwrap();
    Tls {
        dir,
        port: Port::reserve(),
        root: cert.pem(),
    }
}

fn client(t: &Tls) -> reqwest::blocking::Client {
    let addr = SocketAddr::from(([127, 0, 0, 1], t.port.number()));
    reqwest::blocking::Client::builder()
        .resolve("shop.test", addr)
        .add_root_certificate(reqwest::Certificate::from_pem(t.root.as_bytes()).unwrap())
        .timeout(T)
        .build()
        .unwrap()
}

#[test]
fn http2_requests_reach_http1_upstreams_alike_on_both_paths() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let t = setup();
    let dir = t.dir.path().display();
    let d = Daemon::start_opts(
        &[AppSpec::new("web", &[&b], &[&g]).hosts(&["shop.test"])],
        Options {
            toml: format!(
                "[proxy.tls]\nlisten = [\"127.0.0.1:{}\"]\ncert = \"{dir}/c.pem\"\nkey = \"{dir}/c.key\"\n",
                t.port.number()
            ),
            ..Options::default()
        },
    );
    let http = client(&t);
    let url = |path: &str| format!("https://shop.test:{}{path}", t.port.number());
    let authority = format!("shop.test:{}", t.port.number());

    // A plain GET (the lean loop) and a POST with a body (pingora-proxy).
    let get = http
        .get(url("/x?y=1"))
        .header("TE", "trailers")
        .send()
        .unwrap();
    assert_eq!(get.version(), reqwest::Version::HTTP_2);
    assert_eq!(get.status(), 200);
    let get: Value = get.json().unwrap();
    let post: Value = http
        .post(url("/x?y=1"))
        .body("ok")
        .send()
        .unwrap()
        .json()
        .unwrap();
    for (what, echo) in [("GET", &get), ("POST", &post)] {
        assert_eq!(echo["color"], "blue", "{what}: {echo}");
        assert_eq!(echo["target"], "/x?y=1", "{what}: {echo}");
        let h = &echo["headers"];
        assert_eq!(h["host"], authority.as_str(), "{what}: {echo}");
        assert_eq!(h["x-forwarded-host"], authority.as_str(), "{what}: {echo}");
        assert_eq!(h["x-forwarded-proto"], "https", "{what}: {echo}");
        assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{what}: {echo}");
        assert!(h.get("te").is_none(), "{what}: {echo}");
    }

    // HEAD, an unknown host's 404 and a missing upstream's 502 over HTTP/2.
    assert_eq!(http.head(url("/x")).send().unwrap().status(), 200);
    let other = reqwest::blocking::Client::builder()
        .resolve(
            "nobody.test",
            SocketAddr::from(([127, 0, 0, 1], t.port.number())),
        )
        .danger_accept_invalid_certs(true)
        .timeout(T)
        .build()
        .unwrap();
    let r = other
        .get(format!("https://nobody.test:{}/", t.port.number()))
        .send()
        .unwrap();
    assert_eq!(
        (r.version(), r.status().as_u16()),
        (reqwest::Version::HTTP_2, 404)
    );
    b.stop();
    assert_eq!(http.get(url("/gone")).send().unwrap().status(), 502);
    drop(b);

    // Many streams at once on one connection, all answered by green after
    // a switch.
    assert!(d.wait_health("web", "green", "up", T));
    assert_eq!(d.switch("web", "green").0, 200);
    let answers: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let http = &http;
                let url = url(&format!("/n/{i}"));
                s.spawn(move || {
                    let r = http.get(url).send().unwrap();
                    (r.status().as_u16(), r.json::<Value>().unwrap())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (status, echo)) in answers.iter().enumerate() {
        assert_eq!(*status, 200);
        assert_eq!(echo["color"], "green");
        assert_eq!(echo["target"], format!("/n/{i}"));
    }
}
