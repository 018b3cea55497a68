//! Keep-alive load through the front door, bounded in count and time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::daemon::Daemon;

/// Keep-alive load: `clients` threads, each with its own connection, send
/// GETs with a Host header until [`Load::finish`] (bounded in count and
/// time). Failures and the colors that answered (`X-Color`) are collected.
pub struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    colors: Arc<Mutex<std::collections::BTreeSet<String>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    /// Starts `clients` keep-alive clients against `d`'s front door.
    pub fn start(d: &Daemon, host: &str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let colors = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
        let url = format!("http://{}/load", d.proxy);
        let threads = (0..clients)
            .map(|_| {
                let (stop, sent, failures, colors) =
                    (stop.clone(), sent.clone(), failures.clone(), colors.clone());
                let (url, host) = (url.clone(), host.to_string());
                thread::spawn(move || {
                    let c = reqwest::blocking::Client::new();
                    let started = Instant::now();
                    for _ in 0..50_000 {
                        if stop.load(Ordering::Relaxed)
                            || started.elapsed() > Duration::from_secs(60)
                        {
                            break;
                        }
                        sent.fetch_add(1, Ordering::Relaxed);
                        match c.get(&url).header("Host", &host).send() {
                            Ok(r) if r.status() == 200 => {
                                if let Some(color) =
                                    r.headers().get("x-color").and_then(|v| v.to_str().ok())
                                {
                                    colors.lock().unwrap().insert(color.to_string());
                                }
                            }
                            Ok(r) => failures
                                .lock()
                                .unwrap()
                                .push(format!("status {}", r.status())),
                            Err(e) => failures.lock().unwrap().push(format!("{e:?}")),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            sent,
            failures,
            colors,
            threads,
        }
    }

    /// Stops the clients; asserts nothing failed and enough was sent.
    /// Returns the number of requests and the colors that answered.
    pub fn finish(self) -> (u64, std::collections::BTreeSet<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let failures = self.failures.lock().unwrap();
        let sent = self.sent.load(Ordering::Relaxed);
        assert!(
            failures.is_empty(),
            "{} of {sent} requests failed: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        assert!(sent > 50, "too little load to mean anything: {sent}");
        let colors = self.colors.lock().unwrap().clone();
        (sent, colors)
    }
}
