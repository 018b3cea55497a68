//! Logs go to stderr through a writer thread. A thread that logs (the
//! control API with "green is now LIVE", pingora's errors) queues the line
//! and goes on: it never waits for the disk or journald,
//! whose writes can stall for milliseconds while a file system commits its
//! journal. When [`QUEUE`] lines are waiting, loggers wait too: no line is
//! dropped, and memory stays bounded.
//!
//! The access log is not a `tracing` event: its lines are formatted on the
//! worker and written in batches by a writer of their own
//! (`dataplane::access_log`), started here when the log level lets target
//! `access` log at INFO.
//!
//! [`flush`] writes out what is queued; the process calls it before it
//! exits on its own (drained shutdown, failed start). Lines logged after it
//! go to stderr directly.
//!
//! pingora logs some things at error that need no operator: its upstream
//! pool losing a race for an idle connection (`failed to acquire reusable
//! stream`: a new connection is opened, nothing fails), a client whose
//! HTTP/2 handshake failed (a browser closing a spare connection), a client
//! that closed or reset during the TLS handshake. Such a line is taken out
//! ([`BenignLines`]), counted in `bgproxy_benign_errors_total{kind}` and
//! logged again at debug, target `bgproxy::benign`; every other line of
//! pingora's stays as it is.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};

use prometheus::IntCounter;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::writer::{EitherWriter, MakeWriter};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogConfig, LogFormat};
use crate::metrics::{Benign, Metrics};

/// How many lines may wait for the writer thread.
pub const QUEUE: usize = 16_384;

/// Dropping it makes the writer thread write out the queue (or give up
/// after a second) and stop.
static WRITER: Mutex<Option<WorkerGuard>> = Mutex::new(None);

/// Set by [`flush`]: lines logged afterwards (threads still winding down)
/// go straight to stderr.
static CLOSED: AtomicBool = AtomicBool::new(false);

/// The queue while the writer thread runs, stderr itself after [`flush`].
struct LogWriter(NonBlocking);

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = EitherWriter<NonBlocking, std::io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        if CLOSED.load(Ordering::Acquire) {
            EitherWriter::B(std::io::stderr())
        } else {
            EitherWriter::A(self.0.clone())
        }
    }
}

/// What `log.level` never logs (`RUST_LOG` may): rustls's warning for a
/// client that sends an IP address as its SNI (wrk, some scripts), once per
/// handshake, about nothing bgproxy or its operator could change.
const QUIET: &str = "rustls::msgs::handshake=error";

/// Installs the global subscriber: the level from `RUST_LOG`, else
/// `log.level`; the format from `format`, else `log.format`. Colors only on
/// a terminal.
pub fn init(log: &LogConfig, format: Option<LogFormat>) {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(QUEUE)
        .thread_name("bgproxy-log")
        .finish(std::io::stderr());
    *WRITER.lock().unwrap_or_else(|p| p.into_inner()) = Some(guard);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{},{QUIET}", log.level)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(LogWriter(writer));
    let format = format.unwrap_or(log.format);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .finish()
            .with(BenignLines)
            .init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .finish()
            .with(BenignLines)
            .init(),
    }
    if tracing::enabled!(target: "access", Level::INFO) {
        crate::dataplane::access_log::init(format);
    }
}

/// Where pingora's benign error lines are counted, by [`Benign::ALL`]'s
/// order: set by [`count_benign_in`] once the daemon's metrics exist.
static BENIGN: RwLock<Option<[IntCounter; 4]>> = RwLock::new(None);

/// Counts pingora's benign error lines in `metrics` from now on.
pub fn count_benign_in(metrics: &Metrics) {
    let counters = Benign::ALL.map(|kind| metrics.benign(kind));
    *BENIGN.write().unwrap_or_else(|p| p.into_inner()) = Some(counters);
}

fn count(kind: Benign) {
    let counters = BENIGN.read().unwrap_or_else(|p| p.into_inner());
    if let Some(counters) = counters.as_ref() {
        if let Some(i) = Benign::ALL.iter().position(|k| *k == kind) {
            counters[i].inc();
        }
    }
}

/// Which of pingora's error lines need no operator: `target` is the module
/// that logged `message`.
pub fn benign(target: &str, message: &str) -> Option<Benign> {
    match target {
        "pingora_core::connectors" if message == "failed to acquire reusable stream" => {
            Some(Benign::UpstreamPoolRace)
        }
        "pingora_core::apps" if message.starts_with("H2 handshake error") => {
            Some(Benign::ClientHandshake)
        }
        // Other TLS handshake failures (a certificate the client refused,
        // say) may well need an operator: only the client's closing is
        // benign.
        "pingora_core::services::listening"
            if message.starts_with("Downstream handshake error")
                && Benign::peer_closed(message) =>
        {
            Some(Benign::ClientHandshake)
        }
        "pingora_proxy" if message.starts_with("failed to send error response to downstream") => {
            Some(Benign::ClientDisconnect)
        }
        _ => None,
    }
}

/// Takes pingora's benign error lines out of the log ([`benign`]), counts
/// them and logs them again at debug. pingora logs through the `log` crate,
/// so its lines arrive as events of target `log` with the real target in a
/// `log.target` field.
struct BenignLines;

/// The fields of a `log` line that [`benign`] looks at.
#[derive(Default)]
struct LogLine {
    target: String,
    message: String,
}

impl Visit for LogLine {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "log.target" => self.target = value.to_string(),
            "message" => self.message = value.to_string(),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "log.target" => self.target = format!("{value:?}"),
            "message" => self.message = format!("{value:?}"),
            _ => {}
        }
    }
}

impl<S: Subscriber> Layer<S> for BenignLines {
    fn event_enabled(&self, event: &Event<'_>, _cx: Context<'_, S>) -> bool {
        let meta = event.metadata();
        if *meta.level() != Level::ERROR || meta.target() != "log" {
            return true;
        }
        let mut line = LogLine::default();
        event.record(&mut line);
        let Some(kind) = benign(&line.target, &line.message) else {
            return true;
        };
        count(kind);
        // A new event, dispatched while this one is being decided: fine with
        // the global subscriber (no scoped dispatcher guards against it), and
        // it is not a `log` event, so it does not come back here.
        tracing::debug!(
            target: "bgproxy::benign",
            kind = kind.as_str(),
            source = %line.target,
            "{}",
            line.message
        );
        false
    }
}

/// Writes out every queued line (the access log's first) and stops the
/// writer threads; lines logged
/// afterwards are written directly. Call it just before the process exits.
pub fn flush() {
    crate::dataplane::access_log::flush();
    CLOSED.store(true, Ordering::Release);
    drop(WRITER.lock().unwrap_or_else(|p| p.into_inner()).take());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pingoras_known_benign_lines_are_taken_out() {
        let pool = "failed to acquire reusable stream";
        assert_eq!(
            benign("pingora_core::connectors", pool),
            Some(Benign::UpstreamPoolRace)
        );
        assert_eq!(benign("pingora_core::connectors::l4", pool), None);
        assert_eq!(
            benign(
                "pingora_core::apps",
                "H2 handshake error H2Error context: ... Connection reset by peer (os error 104)"
            ),
            Some(Benign::ClientHandshake)
        );
        assert_eq!(
            benign(
                "pingora_core::services::listening",
                "Downstream handshake error from 127.0.0.1:5555: TLSHandshakeFailure cause: Connection reset by peer (os error 104)"
            ),
            Some(Benign::ClientHandshake)
        );
        assert_eq!(
            benign(
                "pingora_core::services::listening",
                "Downstream handshake error from 127.0.0.1:5555: TLSHandshakeFailure cause: received fatal alert: BadCertificate"
            ),
            None,
            "a certificate clients refuse needs an operator"
        );
        assert_eq!(
            benign(
                "pingora_proxy",
                "failed to send error response to downstream: Broken pipe"
            ),
            Some(Benign::ClientDisconnect)
        );
        assert_eq!(
            benign("pingora_proxy", "Fail to proxy: Upstream ConnectRefused"),
            None
        );
    }
}
