//! Trying the standby before the switch, end to end: preview by header and
//! by cookie (over HTTP and HTTPS), color hosts, mirroring under load, and
//! the config errors of `[app.preview]` and `[app.mirror]`.
//!
//! Each request is checked for who answered it (the echo's color, the
//! backends' hit counters, `X-Bgproxy-Color`), and the lean loop (a plain
//! GET) and pingora-proxy (a POST with a body, HTTP/2 over TLS) are both
//! exercised. The standby of the mirroring tests is [`Recorder`], a backend
//! of this file that keeps every request it got and can answer slowly or
//! never.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bgproxy_e2e::{wait_until, AppSpec, Backend, Daemon, H2Backend, Load, Options, Port};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(10);
const TOKEN: &str = "preview-token-0123456789abcdef";
const HOST: &str = "shop.test";

// ---------------------------------------------------------------- helpers

/// A temp dir holding `preview.token` with [`TOKEN`].
fn token_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("preview.token"), format!("{TOKEN}\n")).unwrap();
    dir
}

/// App "web" on [`HOST`] with the preview token of `dir` and the color
/// hosts `blue.shop.test` and `green.shop.test`.
fn preview_app(blue: &Backend, green: &Backend, dir: &Path) -> AppSpec {
    AppSpec::new("web", &[blue], &[green])
        .hosts(&[HOST])
        .extra(&format!(
            "[app.preview]\ntoken_file = \"{}\"\nblue_hosts = [\"blue.{HOST}\"]\ngreen_hosts = [\"green.{HOST}\"]\n",
            dir.join("preview.token").display()
        ))
}

/// A client that never follows redirects (the tests look at each answer).
fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(T)
        .build()
        .unwrap()
}

/// One answer: status, headers, body.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn of(r: reqwest::blocking::Response) -> Answer {
        Answer {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            body: r.text().unwrap_or_default(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The backend echo (JSON), asserting a 200.
    fn echo(&self) -> Value {
        assert_eq!(self.status, 200, "{}", self.body);
        serde_json::from_str(&self.body).unwrap()
    }
}

/// A request through `d`'s front door with `host` and extra `headers`: a
/// GET (the lean loop), or with `body` a POST (pingora-proxy). On a new
/// connection.
fn send(
    d: &Daemon,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Answer {
    send_on(&client(), d, host, path, headers, body)
}

/// [`send`] with `c`, on a connection it keeps alive.
fn send_on(
    c: &reqwest::blocking::Client,
    d: &Daemon,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Answer {
    let url = format!("http://{}{path}", d.proxy);
    let mut req = match body {
        None => c.get(url),
        Some(b) => c.post(url).body(b.to_string()),
    };
    req = req.header("Host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Answer::of(req.send().expect("front door reachable"))
}

/// Requests (other than `/health`) a backend got so far: blue's and green's.
fn hits(b: &Backend, g: &Backend) -> (u64, u64) {
    (b.heads(), g.heads())
}

/// A metric's value, 0 when the series does not exist yet.
fn metric(d: &Daemon, series: &str) -> f64 {
    d.metric(series).unwrap_or(0.0)
}

fn preview_count(d: &Daemon, color: &str) -> f64 {
    metric(
        d,
        &format!("bgproxy_preview_requests_total{{app=\"web\",color=\"{color}\"}}"),
    )
}

fn mirrored(d: &Daemon, result: &str) -> f64 {
    metric(
        d,
        &format!("bgproxy_mirrored_requests_total{{app=\"web\",result=\"{result}\"}}"),
    )
}

/// A browser, as far as cookies go: keeps what `Set-Cookie` sets (and
/// drops what it expires), sends it back, follows redirects.
struct Browser {
    client: reqwest::blocking::Client,
    /// `http://127.0.0.1:<port>` with a Host header, or `https://<host>:<port>`.
    base: String,
    host: Option<String>,
    jar: BTreeMap<String, String>,
    /// Every `Set-Cookie` seen, as it came.
    set_cookies: Vec<String>,
}

impl Browser {
    fn plain(d: &Daemon, host: &str) -> Browser {
        Browser {
            client: client(),
            base: format!("http://{}", d.proxy),
            host: Some(host.into()),
            jar: BTreeMap::new(),
            set_cookies: Vec::new(),
        }
    }

    /// Over HTTPS to `addr`, trusting `root` (HTTP/2 by ALPN).
    fn https(host: &str, addr: SocketAddr, root: &str) -> Browser {
        let client = reqwest::blocking::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .resolve(host, addr)
            .add_root_certificate(reqwest::Certificate::from_pem(root.as_bytes()).unwrap())
            .timeout(T)
            .build()
            .unwrap();
        Browser {
            client,
            base: format!("https://{host}:{}", addr.port()),
            host: None,
            jar: BTreeMap::new(),
            set_cookies: Vec::new(),
        }
    }

    /// One GET, cookies sent and kept.
    fn get(&mut self, path: &str) -> (Answer, reqwest::Version) {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(h) = &self.host {
            req = req.header("Host", h.as_str());
        }
        if !self.jar.is_empty() {
            let cookies: Vec<String> = self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
            req = req.header("Cookie", cookies.join("; "));
        }
        let r = req.send().expect("front door reachable");
        let version = r.version();
        for set in r.headers().get_all("set-cookie") {
            let set = set.to_str().unwrap().to_string();
            let (pair, attrs) = set.split_once(';').unwrap_or((&set, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if attrs.to_ascii_lowercase().contains("max-age=0") {
                self.jar.remove(name.trim());
            } else {
                self.jar.insert(name.trim().into(), value.trim().into());
            }
            self.set_cookies.push(set);
        }
        (Answer::of(r), version)
    }

    /// A GET, then its redirects (at most 5): the last answer.
    fn visit(&mut self, path: &str) -> Answer {
        let (mut answer, _) = self.get(path);
        for _ in 0..5 {
            if !(300..400).contains(&answer.status) {
                break;
            }
            let to = answer
                .header("location")
                .expect("a redirect says where")
                .to_string();
            answer = self.get(&to).0;
        }
        answer
    }
}

/// A standby of the mirroring tests: an HTTP/1.1 server on 127.0.0.1 that
/// records every request other than `/health` (which it always answers
/// 200), and answers it with 200 after `delay`, or never when `stall`.
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

/// One request a [`Recorder`] got.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    target: String,
    /// Header lines, names in lower case.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Recorder {
    fn start(delay: Duration, stall: bool) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (s, st) = (s.clone(), st.clone());
                thread::spawn(move || serve_recorded(conn, &s, &st, delay, stall));
            }
        });
        Recorder { addr, seen, stop }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// An [`AppSpec`]-compatible stand-in: its address as a "backend".
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
    }
}

fn serve_recorded(
    conn: TcpStream,
    seen: &Mutex<Vec<Seen>>,
    stop: &AtomicBool,
    delay: Duration,
    stall: bool,
) {
    let mut out = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        if target != "/health" {
            seen.lock().unwrap().push(Seen {
                method,
                target,
                headers,
                body,
            });
            if stall {
                // Never answers (bounded, so a failed test leaves no thread).
                let until = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::SeqCst) && Instant::now() < until {
                    thread::sleep(Duration::from_millis(20));
                }
                let _ = out.shutdown(Shutdown::Both);
                return;
            }
            thread::sleep(delay);
        }
        let answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Color: green\r\n\r\nok";
        if out.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// An app "web" with blue `blue` and the recorder as green, mirroring with
/// the `[app.mirror]` lines given.
fn mirror_app(blue: &Backend, green: &Recorder, mirror: &str) -> AppSpec {
    let mut app = AppSpec::new("web", &[blue], &[]).hosts(&[HOST]);
    app.green = vec![green.addr()];
    app.extra(&format!("[app.mirror]\n{mirror}\n"))
}

/// The `q`-quantile of `v` (sorted in place).
fn quantile(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * q).round() as usize]
}

// ------------------------------------------------------------------ preview

/// The right token in `X-Bgproxy-Preview` sends the request to the standby
/// and only there (hit counters), on both paths, named in
/// `X-Bgproxy-Color` and counted; after a switch the standby is the other
/// color. A wrong token gets 403 and reaches no upstream; a request without
/// the header goes live and carries no `X-Bgproxy-Color`.
#[test]
fn preview_header_reaches_the_standby_and_only_the_standby() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let dir = token_dir();
    let d = Daemon::start(&[preview_app(&b, &g, dir.path())]);
    assert!(d.wait_health("web", "green", "up", T));
    let header = [("X-Bgproxy-Preview", TOKEN)];

    for round in 0..10 {
        let before = hits(&b, &g);
        let a = if round % 2 == 0 {
            send(&d, HOST, "/p", &header, None)
        } else {
            send(&d, HOST, "/p", &header, Some("body"))
        };
        assert_eq!(a.echo()["color"], "green", "round {round}");
        assert_eq!(a.header("x-bgproxy-color"), Some("green"));
        assert_eq!(
            hits(&b, &g),
            (before.0, before.1 + 1),
            "round {round}: green only"
        );
    }
    assert_eq!(preview_count(&d, "green"), 10.0);

    let before = hits(&b, &g);
    let live = send(&d, HOST, "/", &[], None);
    assert_eq!(live.echo()["color"], "blue");
    assert_eq!(
        live.header("x-bgproxy-color"),
        None,
        "only preview answers say"
    );
    assert_eq!(hits(&b, &g), (before.0 + 1, before.1));

    for (value, body) in [
        ("wrong", None),
        ("wrong", Some("x")),
        ("", None),
        (&TOKEN[1..], None),
    ] {
        let before = hits(&b, &g);
        let a = send(&d, HOST, "/", &[("X-Bgproxy-Preview", value)], body);
        assert_eq!(a.status, 403, "{value:?}: {}", a.body);
        assert!(a.body.contains("preview token"), "{}", a.body);
        // Give a forwarded request time to arrive before looking.
        thread::sleep(Duration::from_millis(100));
        assert_eq!(hits(&b, &g), before, "{value:?}: nothing forwarded");
    }
    assert_eq!(
        preview_count(&d, "green"),
        10.0,
        "refused ones are not counted"
    );

    // After a switch, the standby is blue.
    assert!(d.wait_health("web", "blue", "up", T));
    assert_eq!(d.switch("web", "green").0, 200);
    let a = send(&d, HOST, "/", &header, None);
    assert_eq!(a.echo()["color"], "blue");
    assert_eq!(a.header("x-bgproxy-color"), Some("blue"));
    assert_eq!(send(&d, HOST, "/", &[], None).echo()["color"], "green");
    assert_eq!(preview_count(&d, "blue"), 1.0);
}

/// Neither the preview header nor the preview cookie reaches an upstream
/// (the echo shows every header line the upstream got), other cookies pass
/// unchanged, on both paths. Without a token, the header is still
/// stripped and the request goes live; the cookie is then the app's own.
#[test]
fn header_and_cookie_never_reach_an_upstream() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let (b2, g2) = (Backend::start("blue"), Backend::start("green"));
    let dir = token_dir();
    let d = Daemon::start(&[
        preview_app(&b, &g, dir.path()),
        AppSpec::new("plain", &[&b2], &[&g2]).hosts(&["plain.test"]),
    ]);
    assert!(d.wait_health("web", "green", "up", T));
    let mut browser = Browser::plain(&d, HOST);
    assert_eq!(
        browser
            .get(&format!("/.bgproxy/preview?token={TOKEN}"))
            .0
            .status,
        302
    );
    let cookie = browser.jar["bgproxy_preview"].clone();

    let with_cookie = format!("a=1; bgproxy_preview={cookie}; b=2");
    for body in [None, Some("x=1")] {
        for headers in [
            vec![("X-Bgproxy-Preview", TOKEN), ("Cookie", "a=1; b=2")],
            vec![("Cookie", with_cookie.as_str())],
            vec![
                ("X-Bgproxy-Preview", TOKEN),
                ("Cookie", with_cookie.as_str()),
            ],
        ] {
            let echo = send(&d, HOST, "/", &headers, body).echo();
            assert_eq!(echo["color"], "green", "{headers:?}");
            let lines = echo["header_lines"].to_string().to_ascii_lowercase();
            assert!(!lines.contains("x-bgproxy-preview"), "{lines}");
            assert!(!lines.contains(TOKEN), "{lines}");
            assert!(!lines.contains("bgproxy_preview"), "{lines}");
            assert_eq!(echo["headers"]["cookie"], "a=1; b=2", "{headers:?}");
        }
        // Only the preview cookie: no Cookie line at all.
        let only = format!("bgproxy_preview={cookie}");
        let echo = send(&d, HOST, "/", &[("Cookie", &only)], body).echo();
        assert_eq!(echo["color"], "green");
        assert!(echo["headers"].get("cookie").is_none(), "{echo}");
    }

    // An app without a token: the header is nobody's token, the request
    // goes live, and the header goes nowhere; the cookie is the app's.
    for body in [None, Some("x=1")] {
        let echo = send(
            &d,
            "plain.test",
            "/",
            &[
                ("X-Bgproxy-Preview", TOKEN),
                ("Cookie", "bgproxy_preview=mine"),
            ],
            body,
        )
        .echo();
        assert_eq!(echo["color"], "blue");
        assert!(echo["headers"].get("x-bgproxy-preview").is_none(), "{echo}");
        assert_eq!(echo["headers"]["cookie"], "bgproxy_preview=mine");
    }
    // Nor do its preview paths exist: they are the app's.
    let echo = send(
        &d,
        "plain.test",
        &format!("/.bgproxy/preview?token={TOKEN}"),
        &[],
        None,
    )
    .echo();
    assert_eq!(echo["target"], format!("/.bgproxy/preview?token={TOKEN}"));
}

/// The cookie flow with a client that keeps cookies: a wrong token gets 403
/// and no cookie, and reaches no upstream; the right one a 302 to `/`
/// with an HttpOnly, SameSite=Lax cookie that is not the token (no Secure
/// over plain HTTP), and from then on the standby answers; a tampered
/// cookie gets 403; `/.bgproxy/preview/off` clears it and the live color
/// answers again.
#[test]
fn cookie_flow_over_http() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let dir = token_dir();
    let d = Daemon::start(&[preview_app(&b, &g, dir.path())]);
    assert!(d.wait_health("web", "green", "up", T));
    let mut browser = Browser::plain(&d, HOST);
    assert_eq!(browser.visit("/").echo()["color"], "blue");

    let before = hits(&b, &g);
    for path in ["/.bgproxy/preview?token=nope", "/.bgproxy/preview"] {
        let (a, _) = browser.get(path);
        assert_eq!(a.status, 403, "{path}: {}", a.body);
        assert!(a.header("set-cookie").is_none(), "{path}");
    }
    assert!(browser.jar.is_empty());
    thread::sleep(Duration::from_millis(100));
    assert_eq!(hits(&b, &g), before, "the preview paths reach no upstream");

    let (a, _) = browser.get(&format!("/.bgproxy/preview?token={TOKEN}"));
    assert_eq!(a.status, 302);
    assert_eq!(a.header("location"), Some("/"));
    let set = browser.set_cookies.last().unwrap().clone();
    for attr in ["Path=/", "HttpOnly", "SameSite=Lax"] {
        assert!(set.contains(attr), "{attr} in {set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    let value = browser.jar["bgproxy_preview"].clone();
    assert!(value.len() >= 32 && !value.contains(TOKEN), "{value}");
    assert_eq!(hits(&b, &g), before);

    // The whole flow as a browser sees it: the redirect lands on the standby.
    let mut fresh = Browser::plain(&d, HOST);
    let a = fresh.visit(&format!("/.bgproxy/preview?token={TOKEN}"));
    assert_eq!(a.echo()["color"], "green");
    assert_eq!(a.header("x-bgproxy-color"), Some("green"));
    for _ in 0..5 {
        let before = hits(&b, &g);
        assert_eq!(browser.visit("/page").echo()["color"], "green");
        assert_eq!(hits(&b, &g), (before.0, before.1 + 1));
    }

    // A cookie that is not the derived value: refused, never the live color.
    let mut tampered = Browser::plain(&d, HOST);
    let last = if value.ends_with('0') { "1" } else { "0" };
    let forged = format!("{}{last}", &value[..value.len() - 1]);
    tampered.jar.insert("bgproxy_preview".into(), forged);
    let before = hits(&b, &g);
    let (a, _) = tampered.get("/");
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(a.body.contains("/.bgproxy/preview/off"), "{}", a.body);
    thread::sleep(Duration::from_millis(100));
    assert_eq!(hits(&b, &g), before);

    let (a, _) = browser.get("/.bgproxy/preview/off");
    assert_eq!(a.status, 302);
    assert_eq!(a.header("location"), Some("/"));
    assert!(browser.set_cookies.last().unwrap().contains("Max-Age=0"));
    assert!(browser.jar.is_empty(), "{:?}", browser.jar);
    assert_eq!(browser.visit("/").echo()["color"], "blue");
}

/// A self-signed certificate for `names`: (cert PEM, key PEM).
fn cert(names: &[&str]) -> (String, String) {
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let c = params.self_signed(&key).unwrap();
    (c.pem(), key.serialize_pem())
}

/// Over HTTPS the cookie is `Secure`, and the flow works over HTTP/2
/// (pingora-proxy's path) as over HTTP/1.
#[test]
fn cookie_flow_over_https_is_secure() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let dir = token_dir();
    let (pem, key) = cert(&[HOST]);
    std::fs::write(dir.path().join("c.pem"), &pem).unwrap();
    std::fs::write(dir.path().join("c.key"), &key).unwrap();
    let port = Port::reserve();
    let d = Daemon::start_opts(
        &[preview_app(&b, &g, dir.path())],
        Options {
            toml: format!(
                "[proxy.tls]\nlisten = [\"{}\"]\ncert = \"{}\"\nkey = \"{}\"\n",
                port.addr(),
                dir.path().join("c.pem").display(),
                dir.path().join("c.key").display()
            ),
            ..Options::default()
        },
    );
    assert!(d.wait_health("web", "green", "up", T));
    let mut browser = Browser::https(HOST, port.addr(), &pem);
    let (a, version) = browser.get(&format!("/.bgproxy/preview?token={TOKEN}"));
    assert_eq!(a.status, 302);
    assert_eq!(version, reqwest::Version::HTTP_2);
    let set = browser.set_cookies.last().unwrap().clone();
    for attr in ["Path=/", "HttpOnly", "SameSite=Lax", "Secure"] {
        assert!(set.contains(attr), "{attr} in {set}");
    }
    let before = hits(&b, &g);
    let a = browser.visit("/");
    assert_eq!(a.echo()["color"], "green");
    assert_eq!(a.header("x-bgproxy-color"), Some("green"));
    assert!(a.echo()["headers"].get("cookie").is_none(), "{}", a.body);
    assert_eq!(hits(&b, &g), (before.0, before.1 + 1));
    let (a, _) = browser.get("/.bgproxy/preview/off");
    assert!(
        browser.set_cookies.last().unwrap().contains("Secure"),
        "{}",
        a.status
    );
    assert_eq!(browser.visit("/").echo()["color"], "blue");
}

/// A preview when no upstream of the standby is `up` gets 503 naming the
/// standby, by header and by cookie, on both paths: never the live color.
#[test]
fn preview_of_a_standby_that_is_down_is_503() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let dir = token_dir();
    let d = Daemon::start(&[preview_app(&b, &g, dir.path())]);
    assert!(d.wait_health("web", "green", "up", T));
    let mut browser = Browser::plain(&d, HOST);
    browser.get(&format!("/.bgproxy/preview?token={TOKEN}"));
    assert_eq!(browser.visit("/").echo()["color"], "green");

    g.set_health(500);
    assert!(d.wait_health("web", "green", "down", T));
    let before = hits(&b, &g);
    for body in [None, Some("x")] {
        let a = send(&d, HOST, "/", &[("X-Bgproxy-Preview", TOKEN)], body);
        assert_eq!(a.status, 503, "{}", a.body);
        assert!(
            a.body.contains("standby") && a.body.contains("green"),
            "{}",
            a.body
        );
    }
    let (a, _) = browser.get("/");
    assert_eq!(a.status, 503, "{}", a.body);
    thread::sleep(Duration::from_millis(100));
    assert_eq!(hits(&b, &g), before, "neither color was asked");
    assert_eq!(send(&d, HOST, "/", &[], None).echo()["color"], "blue");

    g.set_health(200);
    assert!(d.wait_health("web", "green", "up", T));
    assert_eq!(browser.visit("/").echo()["color"], "green");
}

// -------------------------------------------------------------- color hosts

/// `blue_hosts` and `green_hosts` go to their color whatever is live and
/// whatever the split, with `X-Bgproxy-Color`; the app's own hosts follow
/// the live color. A color host whose color is down still goes there
/// (panic routing, as the live color would), never to the other color.
#[test]
fn color_hosts_route_regardless_of_live() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let dir = token_dir();
    let d = Daemon::start(&[preview_app(&b, &g, dir.path())]);
    assert!(d.wait_health("web", "green", "up", T) && d.wait_health("web", "blue", "up", T));
    let blue_host = format!("blue.{HOST}");
    let green_host = format!("Green.{HOST}:8080");

    let check = |live: &str| {
        for (host, color) in [(blue_host.as_str(), "blue"), (green_host.as_str(), "green")] {
            for body in [None, Some("x")] {
                let before = hits(&b, &g);
                let a = send(&d, host, "/", &[], body);
                assert_eq!(a.echo()["color"], color, "{host}, {live} live");
                assert_eq!(a.header("x-bgproxy-color"), Some(color));
                let after = hits(&b, &g);
                let moved = if color == "blue" { (1, 0) } else { (0, 1) };
                assert_eq!((after.0 - before.0, after.1 - before.1), moved);
            }
        }
        assert_eq!(send(&d, HOST, "/", &[], None).echo()["color"], live);
    };
    check("blue");
    assert_eq!(d.switch("web", "green").0, 200);
    check("green");

    // A split: half of the app's requests to blue, none of the color hosts'.
    let (s, v) = d.api(
        "POST",
        "/v1/apps/web/weight",
        Some(json!({"to": "blue", "percent": 50})),
    );
    assert_eq!(s, 200, "{v}");
    for _ in 0..20 {
        assert_eq!(
            send(&d, &green_host, "/", &[], None).echo()["color"],
            "green"
        );
        assert_eq!(send(&d, &blue_host, "/", &[], None).echo()["color"], "blue");
    }
    let (s, v) = d.api("POST", "/v1/apps/web/abort", Some(json!({})));
    assert_eq!(s, 200, "{v}");

    // Blue down: its host still goes to blue (panic routing), not green.
    b.set_health(500);
    assert!(d.wait_health("web", "blue", "down", T));
    let before = hits(&b, &g);
    assert_eq!(send(&d, &blue_host, "/", &[], None).echo()["color"], "blue");
    assert_eq!(hits(&b, &g), (before.0 + 1, before.1));
}

// ---------------------------------------------------------------- mirroring

/// Mirroring at 100% under keep-alive load: every client answer comes from
/// the live color, and the standby receives a copy of every request (same
/// method and target, `X-Bgproxy-Mirror: 1`, no preview header), counted
/// `ok`. A copy whose status class differs from the live answer is a
/// `mismatch`; bodies are copied up to `max_body`, larger ones not at all.
#[test]
fn mirroring_copies_live_requests_to_the_standby() {
    let b = Backend::start("blue");
    let rec = Recorder::start(Duration::ZERO, false);
    let d = Daemon::start(&[mirror_app(
        &b,
        &rec,
        "percent = 100\nmethods = [\"GET\", \"POST\"]\nmax_body = \"1KiB\"\nmax_in_flight = 100000",
    )
    .extra(&format!("[app.preview]\nblue_hosts = [\"blue.{HOST}\"]\n"))]);
    assert!(d.wait_health("web", "green", "up", T));

    let load = Load::start(&d, HOST, 4);
    assert!(load.wait_each_answered_since(Instant::now(), 200, T));
    let report = load.finish();
    let sent = report.sent();
    assert_eq!(
        report.colors().into_iter().collect::<Vec<_>>(),
        ["blue"],
        "every answer from the live color"
    );
    assert!(
        wait_until(T, || rec.count() == sent
            && mirrored(&d, "ok") == sent as f64),
        "{} copies of {sent} requests; ok {}",
        rec.count(),
        mirrored(&d, "ok")
    );
    let seen = rec.seen();
    let mut targets: Vec<String> = seen.iter().map(|s| s.target.clone()).collect();
    // Each client's n-th request was `/load/<client>/<n>`.
    let mut expected: Vec<String> = (0..4)
        .flat_map(|c| {
            let n = report.samples.iter().filter(|s| s.client == c).count();
            (0..n).map(move |i| format!("/load/{c}/{i}"))
        })
        .collect();
    targets.sort();
    expected.sort();
    assert_eq!(targets, expected, "one copy of each request");
    for s in &seen {
        assert_eq!(s.method, "GET");
        assert_eq!(s.header("x-bgproxy-mirror"), Some("1"), "{s:?}");
        assert_eq!(s.header("host"), Some(HOST), "{s:?}");
        assert!(s.header("x-forwarded-for").is_some(), "{s:?}");
    }
    assert_eq!(
        mirrored(&d, "dropped") + mirrored(&d, "error") + mirrored(&d, "mismatch"),
        0.0
    );

    // The client's headers, minus bgproxy's and hop-by-hop ones.
    let n = rec.count();
    let a = send(
        &d,
        HOST,
        "/h",
        &[
            ("X-Bgproxy-Preview", "guess"),
            ("X-Trace", "t1"),
            ("Connection", "keep-alive"),
        ],
        None,
    );
    assert_eq!(a.echo()["color"], "blue", "no token: not a preview");
    assert!(wait_until(T, || rec.count() == n + 1));
    let copy = rec.seen().pop().unwrap();
    assert_eq!(
        (copy.target.as_str(), copy.header("x-trace")),
        ("/h", Some("t1"))
    );
    assert_eq!(copy.header("x-bgproxy-preview"), None, "{copy:?}");

    // Another status class live (503) than on the standby (200).
    let mismatch = mirrored(&d, "mismatch");
    assert_eq!(send(&d, HOST, "/status/503", &[], None).status, 503);
    assert!(wait_until(T, || mirrored(&d, "mismatch") == mismatch + 1.0));

    // Bodies: copied whole up to max_body; larger ones not at all (a
    // chunked one found larger on the way: mirror.rs's unit tests).
    let n = rec.count();
    assert_eq!(
        send(&d, HOST, "/form", &[], Some("a=1&b=2")).echo()["body"],
        "a=1&b=2"
    );
    assert!(wait_until(T, || rec.count() == n + 1));
    let copy = rec.seen().pop().unwrap();
    assert_eq!(
        (copy.method.as_str(), copy.body.as_slice()),
        ("POST", &b"a=1&b=2"[..])
    );
    let big = "x".repeat(2000);
    assert_eq!(send(&d, HOST, "/big", &[], Some(&big)).status, 200);
    // Requests pinned to the live color by a color host are not copied
    // (nor are preview requests: only what the live color's routing placed).
    let blue_host = format!("blue.{HOST}");
    assert_eq!(
        send(&d, &blue_host, "/pinned", &[], None).echo()["color"],
        "blue"
    );
    // A later request is copied: the large and pinned ones were not, not late.
    assert_eq!(send(&d, HOST, "/after", &[], None).status, 200);
    assert!(wait_until(T, || rec
        .seen()
        .iter()
        .any(|s| s.target == "/after")));
    let targets: Vec<String> = rec.seen().iter().map(|s| s.target.clone()).collect();
    assert!(
        !targets.iter().any(|t| t == "/big" || t == "/pinned"),
        "{targets:?}"
    );
}

/// An app with HTTP/2 (h2c) upstreams gets its copies over HTTP/2 too.
#[test]
fn mirroring_to_http2_upstreams() {
    let (b, g) = (H2Backend::start("blue"), H2Backend::start("green"));
    let mut app = AppSpec::new("web", &[], &[])
        .hosts(&[HOST])
        .keys("h2 = true")
        .extra("[app.mirror]\npercent = 100\n");
    (app.blue, app.green) = (vec![b.addr], vec![g.addr]);
    let d = Daemon::start(&[app]);
    assert!(d.wait_health("web", "green", "up", T));
    for body in [None, Some("x=1")] {
        for _ in 0..3 {
            let echo = send(&d, HOST, "/", &[], body).echo();
            assert_eq!(echo["color"], "blue");
        }
    }
    // GETs are copied (the default methods), POSTs not.
    assert!(
        wait_until(T, || mirrored(&d, "ok") == 3.0),
        "ok {} error {}",
        mirrored(&d, "ok"),
        mirrored(&d, "error")
    );
    assert_eq!(mirrored(&d, "error"), 0.0);
}

/// A standby that takes 400ms per request does not slow the live answers:
/// the same keep-alive load with mirroring at 100% and without, the
/// latency of every request recorded; with mirroring the copies reach
/// the slow standby, and the live p50 and p90 stay far below its 400ms
/// (a copy the client waited for would put them at 400ms).
#[test]
fn a_slow_standby_does_not_slow_the_live_answers() {
    let b = Backend::start("blue");
    let rec = Recorder::start(Duration::from_millis(400), false);
    let mut runs = Vec::new();
    for percent in [0, 100] {
        let d = Daemon::start(&[mirror_app(&b, &rec, &format!("percent = {percent}"))]);
        assert!(d.wait_health("web", "green", "up", T));
        let copies = rec.count();
        let load = Load::start(&d, HOST, 2);
        // Enough to judge; and in time even if every request waited for
        // its copy (then the latencies below say so).
        assert!(load.wait_each_answered_since(Instant::now(), 50, 3 * T));
        let report = load.finish();
        assert_eq!(report.colors().into_iter().collect::<Vec<_>>(), ["blue"]);
        let mut latencies: Vec<Duration> = report.samples.iter().map(|s| s.done - s.sent).collect();
        let (p50, p90) = (quantile(&mut latencies, 0.5), quantile(&mut latencies, 0.9));
        eprintln!(
            "mirror {percent}%: {} requests, p50 {p50:?}, p90 {p90:?}",
            report.sent()
        );
        runs.push((p50, p90, rec.count() - copies));
    }
    let (base_p50, _, base_copies) = runs[0];
    let (p50, p90, copies) = runs[1];
    assert_eq!(base_copies, 0, "no copies at percent 0");
    assert!(copies > 0, "the slow standby got copies");
    // Far below the standby's 400ms, with room for a busy test machine.
    assert!(
        p90 < Duration::from_millis(200) && p50 < base_p50 + Duration::from_millis(100),
        "with mirroring p50 {p50:?} p90 {p90:?}; without p50 {base_p50:?}"
    );
}

/// A standby that never answers: at most `max_in_flight` copies are out at
/// once, the rest are `dropped` and counted, and the live answers do not
/// wait; the stalled copies end as `error` after the app's timeouts.
#[test]
fn drops_are_counted_when_the_standby_stalls() {
    let b = Backend::start("blue");
    let rec = Recorder::start(Duration::ZERO, true);
    let d = Daemon::start(&[mirror_app(&b, &rec, "percent = 100\nmax_in_flight = 3")
        .keys("read_timeout = \"2s\"\nconnect_timeout = \"1s\"")]);
    assert!(d.wait_health("web", "green", "up", T));
    let started = Instant::now();
    // One keep-alive connection: the next request would queue behind a
    // copy the previous one waited for.
    let c = client();
    for i in 0..20 {
        let a = send_on(&c, &d, HOST, &format!("/{i}"), &[], None);
        assert_eq!(a.echo()["color"], "blue");
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "20 live answers took {took:?}"
    );
    assert!(
        wait_until(T, || rec.count() == 3),
        "{} copies arrived",
        rec.count()
    );
    // Counted once the answer is out (in `logging`): maybe a moment after.
    assert!(
        wait_until(T, || mirrored(&d, "dropped") == 17.0),
        "dropped: {}",
        mirrored(&d, "dropped")
    );
    assert!(
        wait_until(T, || mirrored(&d, "error") == 3.0),
        "stalled copies time out: {}",
        mirrored(&d, "error")
    );
    assert_eq!(rec.count(), 3, "nothing more was sent");
    assert_eq!(mirrored(&d, "ok"), 0.0);
}

// ------------------------------------------------------------------ config

/// `bgproxy --check` names the key and the line of each mistake.
#[test]
fn config_errors_name_the_key_and_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = |name: &str, tail: &str| -> (PathBuf, String) {
        let text = format!(
            "[proxy]\nlisten = [\"127.0.0.1:1\"]\n[state]\npath = \"s/state.json\"\n\
             [[app]]\nname = \"web\"\nhosts = [\"{HOST}\"]\n[app.blue]\nupstreams = [\"127.0.0.1:1\"]\n[app.green]\nupstreams = [\"127.0.0.1:2\"]\n{tail}"
        );
        let path = dir.path().join(name);
        std::fs::write(&path, &text).unwrap();
        (path, text)
    };
    let check = |path: &Path| bgproxy_e2e::check_file(path);
    let line_of = |text: &str, needle: &str| {
        text.lines()
            .position(|l| l.contains(needle))
            .expect("in the config")
            + 1
    };
    for (name, tail, needle, key, why) in [
        (
            "overlap.toml",
            "[app.preview]\ngreen_hosts = [\"SHOP.test\"]\n",
            "green_hosts",
            "app[0].preview.green_hosts[0]",
            "already routed",
        ),
        (
            "both.toml",
            "[app.preview]\nblue_hosts = [\"b.test\"]\ngreen_hosts = [\"x.test\", \"b.test\"]\n",
            "green_hosts",
            "app[0].preview.green_hosts[1]",
            "already routed",
        ),
        (
            "percent.toml",
            "[app.mirror]\npercent = 101\n",
            "percent",
            "app[0].mirror.percent",
            "between 0 and 100",
        ),
        (
            "token.toml",
            "[app.preview]\ntoken_file = \"missing.token\"\n",
            "token_file",
            "app[0].preview.token_file",
            "missing.token",
        ),
    ] {
        let (path, text) = config(name, tail);
        let (ok, err) = check(&path);
        let line = line_of(&text, needle);
        let at = format!("{name}:{line}:");
        assert!(!ok, "{name} passed --check");
        assert!(
            err.contains(&at) && err.contains(key) && err.contains(why),
            "{name}: wanted {at} {key} {why:?} in:\n{err}"
        );
    }
    let (path, _) = config(
        "good.toml",
        &format!(
            "[app.preview]\nblue_hosts = [\"blue.{HOST}\"]\n[app.mirror]\npercent = 10\nmethods = [\"GET\"]\nmax_body = \"4KiB\"\nmax_in_flight = 50\n"
        ),
    );
    let (ok, err) = check(&path);
    assert!(ok, "{err}");
}
