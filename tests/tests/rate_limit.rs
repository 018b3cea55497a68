//! `[app.rate_limit]` end to end (#26): a token bucket per client key at
//! the front door.
//!
//! - A client past its bucket gets 429 with `Retry-After`, on both paths
//!   (the lean loop and pingora-proxy), never forwarded, counted in
//!   `bgproxy_rate_limited_total{app}`, while another key is served; it is
//!   served again once a token is back.
//! - 100,000 distinct keys (1 KB header values, on keep-alive connections)
//!   leave at most `max_keys` tracked, and the daemon's memory grows by far
//!   less than the keys themselves would take.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bgproxy_e2e::{wait_until, AppSpec, Backend, Daemon};

const T: Duration = Duration::from_secs(10);

fn limited(b: &Backend, g: &Backend, limit: &str) -> Daemon {
    Daemon::start(&[AppSpec::new("web", &[b], &[g]).extra(&format!("[app.rate_limit]\n{limit}\n"))])
}

/// A GET of `/` with `X-Api-Key: key` (none for `None`): status, the
/// `Retry-After` header and the body.
fn get(d: &Daemon, key: Option<&str>) -> (u16, Option<String>, String) {
    let mut req = reqwest::blocking::Client::new()
        .get(format!("http://{}/", d.proxy))
        .header("Host", "web.test");
    if let Some(k) = key {
        req = req.header("X-Api-Key", k);
    }
    let r = req.send().unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (r.status().as_u16(), retry, r.text().unwrap())
}

#[test]
fn a_client_over_the_limit_gets_429_with_retry_after_while_another_key_is_served() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = limited(
        &b,
        &g,
        "requests_per_second = 1\nburst = 5\nkey = \"header:X-Api-Key\"",
    );
    assert_eq!(
        d.metric("bgproxy_rate_limited_total{app=\"web\"}"),
        Some(0.0),
        "the series is there from the start"
    );
    let started = Instant::now();
    let answers: Vec<_> = (0..8).map(|_| get(&d, Some("client-a"))).collect();
    let elapsed = started.elapsed();
    let ok = answers.iter().filter(|a| a.0 == 200).count();
    let refused: Vec<_> = answers.iter().filter(|a| a.0 == 429).collect();
    assert_eq!(ok + refused.len(), 8, "{answers:?}");
    assert!(
        answers[..5].iter().all(|a| a.0 == 200),
        "the burst: {answers:?}"
    );
    // One token a second comes back while the requests go.
    assert!(
        ok <= 5 + elapsed.as_secs() as usize + 1,
        "{ok} served in {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(2) && !refused.is_empty(),
        "8 requests in {elapsed:?}: {answers:?}"
    );
    for (_, retry, body) in &refused {
        assert_eq!(retry.as_deref(), Some("1"), "a token a second");
        assert!(body.starts_with("429 Too Many Requests"), "{body}");
    }
    assert_eq!(b.hits(), ok as u64, "a refused request is never forwarded");

    // Another key, and a client without the key (counted by its address),
    // are served meanwhile.
    assert_eq!(get(&d, Some("client-b")).0, 200);
    assert_eq!(get(&d, None).0, 200);
    // pingora-proxy's path (a request with a body) is limited the same way.
    let post = reqwest::blocking::Client::new()
        .post(format!("http://{}/orders", d.proxy))
        .header("Host", "web.test")
        .header("X-Api-Key", "client-a")
        .body("x")
        .send()
        .unwrap();
    let post_status = post.status().as_u16();
    let refused_total = refused.len() + usize::from(post_status == 429);
    assert_eq!(
        d.metric("bgproxy_rate_limited_total{app=\"web\"}"),
        Some(refused_total as f64)
    );
    assert_eq!(post_status, 429, "{}", post.text().unwrap());
    // A token comes back after Retry-After.
    assert!(wait_until(Duration::from_secs(3), || get(
        &d,
        Some("client-a")
    )
    .0 == 200));
}

/// A raw keep-alive connection that sends `GET /` with one `X-Api-Key`
/// per request and reads the status; reconnects after an error.
struct Client {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    fn get(&mut self, key: &str) -> Result<u16, String> {
        if self.conn.is_none() {
            let s = TcpStream::connect(self.addr).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(T)).unwrap();
            s.set_nodelay(true).unwrap();
            self.conn = Some(BufReader::new(s));
        }
        let r = self.conn.as_mut().unwrap();
        let result = (|| {
            let req = format!("GET / HTTP/1.1\r\nHost: web.test\r\nX-Api-Key: {key}\r\n\r\n");
            r.get_mut()
                .write_all(req.as_bytes())
                .map_err(|e| e.to_string())?;
            let mut line = String::new();
            r.read_line(&mut line).map_err(|e| e.to_string())?;
            let status: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or(format!("bad status line {line:?}"))?;
            let mut len = 0;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).map_err(|e| e.to_string())? == 0 {
                    return Err("closed".to_string());
                }
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse().map_err(|_| format!("bad length {v}"))?;
                    }
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).map_err(|e| e.to_string())?;
            Ok(status)
        })();
        if result.is_err() {
            self.conn = None;
        }
        result
    }
}

/// The daemon's resident memory, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// Sends one request for each key `from..to` (1 KB values) on `clients`
/// keep-alive connections; returns how many were answered 200, 429, or
/// failed. Bounded: at most 120 s.
fn flood(d: &Daemon, from: u64, to: u64, clients: u64) -> (u64, u64, u64) {
    let (ok, limited, failed) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (ok, limited, failed) = (ok.clone(), limited.clone(), failed.clone());
            let addr = d.proxy;
            thread::spawn(move || {
                let mut client = Client { addr, conn: None };
                let pad = "k".repeat(1000);
                for n in (from + c..to).step_by(clients as usize) {
                    if started.elapsed() > Duration::from_secs(120) {
                        return;
                    }
                    match client.get(&format!("{n:08}-{pad}")) {
                        Ok(200) => ok.fetch_add(1, Ordering::Relaxed),
                        Ok(429) => limited.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    (get(&ok), get(&limited), get(&failed))
}

/// 100,000 distinct keys, 1 KB each: never more than `max_keys` (10,000)
/// tracked (sampled from the metrics all along), every request served (a
/// new key has a full bucket), memory after 100,000 keys within a few MB
/// of memory after the first 10,000 (the keys alone would be 90 MB), and
/// the limit still holds for a key that bursts afterwards.
#[test]
fn memory_stays_bounded_with_100000_distinct_keys() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = limited(
        &b,
        &g,
        "requests_per_second = 1\nburst = 3\nkey = \"header:X-Api-Key\"\nmax_keys = 10000",
    );
    let keys = || {
        d.metric("bgproxy_rate_limit_keys{app=\"web\"}")
            .expect("the keys gauge") as u64
    };
    assert_eq!(flood(&d, 0, 10_000, 4), (10_000, 0, 0));
    assert!(keys() >= 9_000 && keys() <= 10_000, "{}", keys());
    let warm = rss(d.pid());

    let done = Arc::new(AtomicBool::new(false));
    let most = thread::scope(|s| {
        let flood = s.spawn(|| {
            let r = flood(&d, 10_000, 100_000, 8);
            done.store(true, Ordering::Relaxed);
            r
        });
        // The gauge, sampled while the keys come (bounded: the flood is).
        let mut most = 0;
        while !done.load(Ordering::Relaxed) {
            most = most.max(keys());
            thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            flood.join().unwrap(),
            (90_000, 0, 0),
            "every new key served"
        );
        most
    });
    let grown = rss(d.pid()).saturating_sub(warm);
    eprintln!(
        "at most {most} keys tracked, {} at the end; resident memory {} MB after 10,000 keys, +{} KB after 100,000",
        keys(),
        warm >> 20,
        grown >> 10
    );
    assert!(most <= 10_000, "{most} keys tracked at once");
    assert!(keys() <= 10_000 && keys() >= 1_000, "{}", keys());
    assert!(
        grown < 24 << 20,
        "resident memory grew by {} MB over 90,000 more keys",
        grown >> 20
    );
    // The limit still holds after all that eviction.
    let statuses: Vec<u16> = (0..6).map(|_| get(&d, Some("late")).0).collect();
    assert_eq!(&statuses[..3], [200, 200, 200], "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
}
