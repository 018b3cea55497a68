//! Logs go to stderr through a writer thread. A thread that logs (the data
//! plane with its access lines, the control API with "green is now LIVE")
//! queues the line and goes on: it never waits for the disk or journald,
//! whose writes can stall for milliseconds while a file system commits its
//! journal. When [`QUEUE`] lines are waiting, loggers wait too: no line is
//! dropped, and memory stays bounded.
//!
//! [`flush`] writes out what is queued; the process calls it before it
//! exits on its own (drained shutdown, failed start). Lines logged after it
//! go to stderr directly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::writer::{EitherWriter, MakeWriter};

use crate::config::{LogConfig, LogFormat};

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
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(LogWriter(writer));
    match format.unwrap_or(log.format) {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

/// Writes out every queued line and stops the writer thread; lines logged
/// afterwards are written directly. Call it just before the process exits.
pub fn flush() {
    CLOSED.store(true, Ordering::Release);
    drop(WRITER.lock().unwrap_or_else(|p| p.into_inner()).take());
}
