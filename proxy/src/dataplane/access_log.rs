//! The access log: one line per request, formatted once on the worker that
//! served it, written in batches by one writer thread.
//!
//! A worker appends the finished line to its own buffer (one per thread,
//! behind a mutex only the writer thread also takes, to swap it out), with
//! no `tracing` event, no field visitor and no allocation per line once the
//! buffer has grown. The writer thread takes every buffer when one holds
//! [`BATCH`] bytes or [`FLUSH_EVERY`] has passed, whichever comes first,
//! and writes it to stderr with one `write` per buffer: the worker never
//! waits for the disk, a pipe or journald, and the writer wakes about once
//! a second under light traffic and once per [`BATCH`] under heavy traffic,
//! not once per request.
//!
//! When the sink is slow (a disk stalled on its journal, a full pipe), a
//! worker's buffer grows to [`MAX_PENDING`] bytes; past that, lines are
//! dropped and counted in `bgproxy_access_log_dropped_total`
//! ([`count_drops_in`]): memory stays bounded and requests are never slowed
//! down by their log line.
//!
//! The lines are the ones `tracing`'s formatter wrote when the access log
//! was an `info!` event at target `access` (`log.format`: text or JSON),
//! the same keys in the same order (the unit tests compare the two);
//! only colors on a terminal are left out. They are written if the
//! log level lets target `access` log at INFO (`RUST_LOG`, `log.level`).
//! [`flush`] writes out what is buffered; the process calls it before it
//! exits (`daemon::logging::flush`).

use std::cell::RefCell;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::IntCounter;

use crate::config::LogFormat;
use crate::dataplane::headers::valid_host;

/// Bytes of lines in a worker's buffer that wake the writer thread.
pub const BATCH: usize = 64 * 1024;

/// The longest a line waits in a worker's buffer when traffic is light.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Bytes a worker's buffer may hold while the writer is stuck on a slow
/// sink; lines beyond it are dropped and counted.
pub const MAX_PENDING: usize = 1024 * 1024;

/// How long [`flush`] waits for a stuck sink before the process goes on
/// exiting without the rest.
const FLUSH_WAIT: Duration = Duration::from_secs(1);

/// The process's access log, set by [`init`].
static GLOBAL: OnceLock<AccessWriter> = OnceLock::new();

/// Writer ids: a thread's buffer belongs to one writer (unit tests make
/// several).
static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's buffer, and the id of the writer it belongs to.
    static SLOT: RefCell<Option<(usize, Arc<Slot>)>> = const { RefCell::new(None) };
    /// The date and time to the second of the last line this thread
    /// formatted (`2026-11-29T22:17:45`), and that second.
    static CLOCK: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
}

/// Starts the process's access log in `format`, written to stderr; called
/// once, by `daemon::logging::init`, if target `access` logs at INFO.
pub fn init(format: LogFormat) {
    let _ = GLOBAL.set(AccessWriter::new(format, Box::new(std::io::stderr())));
}

/// The process's access log, if [`init`] started it.
pub fn global() -> Option<&'static AccessWriter> {
    GLOBAL.get()
}

/// Counts the lines dropped from now on in `counter`
/// (`bgproxy_access_log_dropped_total`).
pub fn count_drops_in(counter: IntCounter) {
    if let Some(w) = GLOBAL.get() {
        let _ = w.inner.counter.set(counter);
    }
}

/// Writes out every buffered line (waiting at most a second for a stuck
/// sink) and stops the writer thread; later lines are dropped. Call it just
/// before the process exits.
pub fn flush() {
    if let Some(w) = GLOBAL.get() {
        w.close(FLUSH_WAIT);
    }
}

/// One request's line: what `DataPlane::logging` knows when it ends.
pub struct Line<'a> {
    /// The app, `-` when none served the host.
    pub app: &'a str,
    /// The color, `-` when none was chosen.
    pub color: &'a str,
    /// The upstream of the last attempt.
    pub upstream: Option<SocketAddr>,
    /// The method.
    pub method: &'a str,
    /// The path and query as the client sent them.
    pub path: &'a str,
    /// The Host header (or the authority of the request target).
    pub host: Option<&'a [u8]>,
    /// The status sent, 0 when none was.
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: usize,
    /// From the first byte of the request to now.
    pub duration: Duration,
    /// The client's address (none for a Unix socket).
    pub client: Option<IpAddr>,
    /// The kind of the error that ended the request, if any.
    pub error: Option<&'a str>,
}

/// One thread's lines, waiting for the writer thread.
#[derive(Default)]
struct Slot {
    buf: Mutex<Vec<u8>>,
}

/// The access log: per-thread buffers and the writer thread that empties
/// them into the sink.
pub struct AccessWriter {
    inner: Arc<Inner>,
}

struct Inner {
    id: usize,
    format: LogFormat,
    /// Every thread's buffer (a thread registers on its first line).
    slots: Mutex<Vec<Arc<Slot>>>,
    /// Set when a buffer reached [`BATCH`] and the writer was woken.
    kicked: AtomicBool,
    /// Set by [`AccessWriter::close`]: write out, then stop.
    closing: AtomicBool,
    /// The writer thread, started with the first line (after any fork).
    thread: OnceLock<std::thread::Thread>,
    /// Told when the writer thread has written its last batch.
    done: Mutex<Option<mpsc::Receiver<()>>>,
    sink: Mutex<Option<Box<dyn Write + Send>>>,
    dropped: AtomicU64,
    counter: OnceLock<IntCounter>,
}

impl AccessWriter {
    /// An access log in `format` written to `sink`.
    pub fn new(format: LogFormat, sink: Box<dyn Write + Send>) -> Self {
        AccessWriter {
            inner: Arc::new(Inner {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                format,
                slots: Mutex::new(Vec::new()),
                kicked: AtomicBool::new(false),
                closing: AtomicBool::new(false),
                thread: OnceLock::new(),
                done: Mutex::new(None),
                sink: Mutex::new(Some(sink)),
                dropped: AtomicU64::new(0),
                counter: OnceLock::new(),
            }),
        }
    }

    /// Lines dropped so far because the sink did not keep up.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Formats `line` into this thread's buffer; wakes the writer thread
    /// when the buffer holds a batch; drops the line (and counts it) when
    /// the buffer is full. Never waits for I/O.
    pub fn log(&self, line: &Line<'_>) {
        let inner = &self.inner;
        if inner.closing.load(Ordering::Relaxed) {
            return;
        }
        let slot = SLOT.with(|s| {
            let mut s = s.borrow_mut();
            match &*s {
                Some((id, slot)) if *id == inner.id => slot.clone(),
                _ => {
                    let slot = self.register();
                    *s = Some((inner.id, slot.clone()));
                    slot
                }
            }
        });
        let full = {
            let mut buf = lock(&slot.buf);
            if buf.len() >= MAX_PENDING {
                drop(buf);
                inner.dropped.fetch_add(1, Ordering::Relaxed);
                if let Some(c) = inner.counter.get() {
                    c.inc();
                }
                return;
            }
            format_line(&mut buf, inner.format, SystemTime::now(), line);
            buf.len() >= BATCH
        };
        if full && !inner.kicked.swap(true, Ordering::AcqRel) {
            if let Some(t) = inner.thread.get() {
                t.unpark();
            }
        }
    }

    /// A new buffer for the calling thread; starts the writer thread with
    /// the first one.
    fn register(&self) -> Arc<Slot> {
        let slot = Arc::new(Slot::default());
        lock(&self.inner.slots).push(slot.clone());
        self.inner.thread.get_or_init(|| {
            let (tx, rx) = mpsc::channel();
            *lock(&self.inner.done) = Some(rx);
            let inner = self.inner.clone();
            match std::thread::Builder::new()
                .name("bgproxy-access".into())
                .spawn(move || {
                    inner.run();
                    let _ = tx.send(());
                }) {
                Ok(h) => h.thread().clone(),
                // No thread: lines fill the buffers and are then counted
                // as dropped.
                Err(_) => std::thread::current(),
            }
        });
        slot
    }

    /// Writes out what is buffered, waiting up to `wait` for the writer
    /// thread, and stops it.
    pub fn close(&self, wait: Duration) {
        self.inner.closing.store(true, Ordering::Release);
        let Some(t) = self.inner.thread.get() else {
            return;
        };
        t.unpark();
        let done = lock(&self.inner.done).take();
        if let Some(rx) = done {
            let _ = rx.recv_timeout(wait);
        }
    }
}

impl Inner {
    /// The writer thread: every [`FLUSH_EVERY`], or when a buffer holds a
    /// batch, swaps each thread's buffer for an empty one and writes it.
    fn run(&self) {
        let mut spare = Vec::with_capacity(BATCH);
        loop {
            // Lines logged once `closing` is set are refused, so the round
            // after it sees is the last one.
            let closing = self.closing.load(Ordering::Acquire);
            if !closing && !self.kicked.load(Ordering::Acquire) {
                std::thread::park_timeout(FLUSH_EVERY);
            }
            self.kicked.store(false, Ordering::Release);
            let slots: Vec<Arc<Slot>> = {
                let mut slots = lock(&self.slots);
                let all = slots.clone();
                // Held by the list, by `all` and by a live thread: a
                // thread that ended dropped its reference, its buffer is
                // written one last time below, then forgotten.
                slots.retain(|s| Arc::strong_count(s) > 2);
                all
            };
            let mut sink = lock(&self.sink);
            for slot in slots {
                std::mem::swap(&mut *lock(&slot.buf), &mut spare);
                if !spare.is_empty() {
                    if let Some(out) = sink.as_mut() {
                        // A sink that fails (stderr closed) loses these
                        // lines; the next batch tries again.
                        let _ = out.write_all(&spare).and_then(|()| out.flush());
                    }
                }
                spare.clear();
                if spare.capacity() > 2 * BATCH {
                    spare = Vec::with_capacity(BATCH);
                }
            }
            if closing {
                *sink = None;
                return;
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Appends `line` as logged at `now` in `format`, with its newline.
pub fn format_line(buf: &mut Vec<u8>, format: LogFormat, now: SystemTime, line: &Line<'_>) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    match format {
        LogFormat::Text => {
            push_time(buf, since);
            buf.extend_from_slice(b"  INFO access: request app=");
            push_debug_str(buf, line.app);
            buf.extend_from_slice(b" color=");
            push_debug_str(buf, line.color);
            buf.extend_from_slice(b" upstream=");
            push_upstream(buf, line.upstream);
            buf.extend_from_slice(b" method=");
            buf.extend_from_slice(line.method.as_bytes());
            buf.extend_from_slice(b" path=");
            push_debug_str(buf, line.path);
            buf.extend_from_slice(b" host=");
            push_host(buf, line.host);
            buf.extend_from_slice(b" status=");
            push_display(buf, line.status);
            buf.extend_from_slice(b" bytes=");
            push_display(buf, line.bytes);
            buf.extend_from_slice(b" duration_ms=");
            push_ms(buf, line.duration);
            buf.extend_from_slice(b" client=");
            if let Some(ip) = line.client {
                push_display(buf, ip);
            }
            if let Some(e) = line.error {
                buf.extend_from_slice(b" error=");
                push_debug_str(buf, e);
            }
        }
        LogFormat::Json => {
            buf.extend_from_slice(b"{\"timestamp\":\"");
            push_time(buf, since);
            buf.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"app\":");
            push_json_str(buf, line.app);
            buf.extend_from_slice(b",\"color\":");
            push_json_str(buf, line.color);
            buf.extend_from_slice(b",\"upstream\":\"");
            push_upstream(buf, line.upstream);
            buf.extend_from_slice(b"\",\"method\":");
            push_json_str(buf, line.method);
            buf.extend_from_slice(b",\"path\":");
            if plain(line.path) {
                // `{:?}` of a plain path is the path in quotes.
                buf.extend_from_slice(b"\"\\\"");
                buf.extend_from_slice(line.path.as_bytes());
                buf.extend_from_slice(b"\\\"\"");
            } else {
                push_json_str(buf, &format!("{:?}", line.path));
            }
            buf.extend_from_slice(b",\"host\":");
            match line.host {
                Some(h) if h.is_empty() || !valid_host(h) => {
                    push_json_str(buf, &format!("{:?}", String::from_utf8_lossy(h)));
                }
                host => {
                    buf.push(b'"');
                    push_host(buf, host);
                    buf.push(b'"');
                }
            }
            buf.extend_from_slice(b",\"status\":");
            push_display(buf, line.status);
            buf.extend_from_slice(b",\"bytes\":");
            push_display(buf, line.bytes);
            buf.extend_from_slice(b",\"duration_ms\":");
            push_ms(buf, line.duration);
            buf.extend_from_slice(b",\"client\":\"");
            if let Some(ip) = line.client {
                push_display(buf, ip);
            }
            buf.push(b'"');
            if let Some(e) = line.error {
                buf.extend_from_slice(b",\"error\":");
                push_json_str(buf, e);
            }
            buf.extend_from_slice(b",\"target\":\"access\"}");
        }
    }
    buf.push(b'\n');
}

/// `2026-11-29T22:17:45.903228Z`, as tracing's formatter writes it; the
/// date and time to the second are computed once a second per thread.
fn push_time(buf: &mut Vec<u8>, since: Duration) {
    let secs = since.as_secs();
    CLOCK.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            *c = (secs, civil(secs));
        }
        buf.extend_from_slice(&c.1);
    });
    let micros = since.subsec_micros();
    let mut frac = *b".000000Z";
    let mut v = micros;
    for i in (1..7).rev() {
        frac[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    buf.extend_from_slice(&frac);
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time (UTC), by the days-to-civil
/// algorithm of H. Hinnant.
fn civil(secs: u64) -> [u8; 19] {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = [0u8; 19];
    let s = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        year.clamp(0, 9999),
        month,
        day,
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
    out.copy_from_slice(&s.as_bytes()[..19]);
    out
}

fn push_display(buf: &mut Vec<u8>, v: impl std::fmt::Display) {
    let _ = write!(buf, "{v}");
}

/// Printable ASCII without `"` and `\`: the same in quotes for `{:?}` and
/// for JSON.
fn plain(s: &str) -> bool {
    s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

/// A string as `{:?}` writes it: quoted, with `"`, `\` and what is not
/// printable escaped.
fn push_debug_str(buf: &mut Vec<u8>, s: &str) {
    if plain(s) {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    } else {
        let _ = write!(buf, "{s:?}");
    }
}

/// A JSON string literal.
fn push_json_str(buf: &mut Vec<u8>, s: &str) {
    if plain(s) {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    } else {
        // Writing a str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *buf, s);
    }
}

fn push_upstream(buf: &mut Vec<u8>, upstream: Option<SocketAddr>) {
    match upstream {
        Some(u) => push_display(buf, u),
        None => buf.push(b'-'),
    }
}

/// The host as it came when it is a valid host (nothing in it can forge a
/// log field), else quoted and escaped; `-` when there is none.
fn push_host(buf: &mut Vec<u8>, host: Option<&[u8]>) {
    match host {
        None => buf.push(b'-'),
        // Valid hosts are ASCII.
        Some(h) if !h.is_empty() && valid_host(h) => buf.extend_from_slice(h),
        Some(h) => {
            let _ = write!(buf, "{:?}", String::from_utf8_lossy(h));
        }
    }
}

/// Milliseconds rounded to the microsecond, as `{:?}` writes an f64.
fn push_ms(buf: &mut Vec<u8>, elapsed: Duration) {
    let _ = write!(buf, "{:?}", rounded_ms(elapsed));
}

/// Milliseconds, rounded to the microsecond.
pub fn rounded_ms(elapsed: Duration) -> f64 {
    (elapsed.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::SyncSender;

    fn line<'a>(path: &'a str, host: Option<&'a [u8]>, error: Option<&'a str>) -> Line<'a> {
        Line {
            app: "web",
            color: "blue",
            upstream: Some("127.0.0.1:8081".parse().unwrap()),
            method: "GET",
            path,
            host,
            status: 200,
            bytes: 3,
            duration: Duration::from_micros(1_119),
            client: Some("127.0.0.1".parse().unwrap()),
            error,
        }
    }

    /// The same request through tracing's formatter, as the access log was
    /// written before (`info!` at target `access`).
    fn traced(format: LogFormat, l: &Line<'_>) -> String {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                lock(&self.0).extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Buf::default();
        let w = out.clone();
        let builder = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false);
        let event = || {
            tracing::info!(
                target: "access",
                app = l.app,
                color = l.color,
                upstream = %l.upstream.map_or("-".to_string(), |u| u.to_string()),
                method = %l.method,
                path = ?l.path,
                host = %String::from_utf8_lossy(&{ let mut v = Vec::new(); push_host(&mut v, l.host); v }),
                status = l.status,
                bytes = l.bytes,
                duration_ms = rounded_ms(l.duration),
                client = %l.client.map_or(String::new(), |c| c.to_string()),
                error = l.error,
                "request"
            )
        };
        match format {
            LogFormat::Text => tracing::subscriber::with_default(builder.finish(), event),
            LogFormat::Json => tracing::subscriber::with_default(
                builder.json().flatten_event(true).finish(),
                event,
            ),
        }
        let s = String::from_utf8(lock(&out.0).clone()).unwrap();
        s
    }

    /// Drops the timestamp (27 bytes) wherever the line has it.
    fn untimed(s: &str) -> String {
        match s.find("\"timestamp\":\"") {
            Some(i) => format!("{}{}", &s[..i + 13], &s[i + 13 + 27..]),
            None => s[27..].to_string(),
        }
    }

    #[test]
    fn lines_are_what_tracing_wrote() {
        let cases = [
            line("/x?y=z", Some(b"shop.test:8080"), None),
            line("/a\"b\\c\u{7}", Some(b"bad host\"\n"), Some("ReadError")),
            Line {
                upstream: None,
                client: None,
                host: None,
                status: 0,
                app: "-",
                color: "-",
                duration: Duration::from_millis(3),
                ..line("/", None, Some("ConnectRefused"))
            },
        ];
        for format in [LogFormat::Text, LogFormat::Json] {
            for l in &cases {
                let mut ours = Vec::new();
                format_line(&mut ours, format, SystemTime::now(), l);
                let ours = String::from_utf8(ours).unwrap();
                let theirs = traced(format, l);
                assert_eq!(untimed(&ours), untimed(&theirs), "{format:?}");
                if format == LogFormat::Json {
                    let v: serde_json::Value = serde_json::from_str(&ours).unwrap();
                    assert_eq!(v["target"], "access");
                }
            }
        }
    }

    #[test]
    fn values_are_plain() {
        let host = |h: Option<&[u8]>| {
            let mut v = Vec::new();
            push_host(&mut v, h);
            String::from_utf8(v).unwrap()
        };
        assert_eq!(host(Some(b"shop.test")), "shop.test");
        assert_eq!(host(Some(b"shop.test:8080")), "shop.test:8080");
        assert_eq!(host(None), "-");
        assert_eq!(host(Some(b"")), r#""""#);
        assert_eq!(host(Some(b"a status=200")), r#""a status=200""#);
        assert_eq!(host(Some(b"a\"b")), r#""a\"b""#);
        assert_eq!(rounded_ms(Duration::from_nanos(400_348)), 0.4);
        assert_eq!(rounded_ms(Duration::from_nanos(1_234_567)), 1.235);
        assert_eq!(rounded_ms(Duration::from_secs(2)), 2000.0);
        assert_eq!(rounded_ms(Duration::from_nanos(300_000)).to_string(), "0.3");
    }

    #[test]
    fn timestamps_are_rfc3339_utc_to_the_microsecond() {
        let t = UNIX_EPOCH + Duration::new(1_795_990_665, 903_228_000);
        let mut buf = Vec::new();
        push_time(&mut buf, t.duration_since(UNIX_EPOCH).unwrap());
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "2026-11-29T22:17:45.903228Z"
        );
        for (secs, want) in [
            (0, "1970-01-01T00:00:00"),
            (951_782_400, "2000-02-29T00:00:00"),
            (4_107_542_399, "2100-02-28T23:59:59"),
        ] {
            assert_eq!(std::str::from_utf8(&civil(secs)).unwrap(), want);
        }
    }

    /// A sink that hands each write to the test, blocking while the test
    /// does not take it (a full pipe).
    struct Stuck(SyncSender<Vec<u8>>);

    impl Write for Stuck {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .send(b.to_vec())
                .map_err(|_| std::io::Error::other("closed"))?;
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_sink_drops_and_counts_lines_and_never_blocks_the_logger() {
        let (tx, rx) = mpsc::sync_channel(0);
        let w = AccessWriter::new(LogFormat::Text, Box::new(Stuck(tx)));
        let counter = IntCounter::new("dropped", "test").unwrap();
        let _ = w.inner.counter.set(counter.clone());
        let path = "/".repeat(1000);
        // Far more than MAX_PENDING twice over (one buffer being written,
        // one filling): this returns although nothing reads the sink.
        let n = 4 * MAX_PENDING / 1000;
        for _ in 0..n {
            w.log(&line(&path, Some(b"x"), None));
        }
        assert!(w.dropped() > 0, "lines over the bound are dropped");
        assert_eq!(counter.get(), w.dropped());
        // Read what the sink got: every line is either written or counted.
        w.close(Duration::from_millis(1));
        let mut written = 0;
        while let Ok(batch) = rx.recv_timeout(Duration::from_secs(5)) {
            written += batch.iter().filter(|b| **b == b'\n').count();
        }
        assert_eq!(written as u64 + w.dropped(), n as u64);
    }

    #[test]
    fn lines_are_written_without_more_traffic_and_on_close() {
        let (tx, rx) = mpsc::sync_channel(64);
        let w = AccessWriter::new(LogFormat::Json, Box::new(Stuck(tx)));
        w.log(&line("/first", Some(b"x"), None));
        // The timer writes it: no more lines, no close.
        let batch = rx.recv_timeout(Duration::from_secs(30)).expect("a batch");
        assert!(String::from_utf8_lossy(&batch).contains("/first"));
        w.log(&line("/last", Some(b"x"), None));
        w.close(Duration::from_secs(30));
        let batch = rx.try_recv().expect("written on close");
        assert!(String::from_utf8_lossy(&batch).contains("/last"));
        assert_eq!(w.dropped(), 0);
    }
}
