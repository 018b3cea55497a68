//! The audit log: one JSON line per control action (switch, rollback,
//! reload, deploy; refused attempts too), appended to `audit.log` in the
//! state directory. Only the controller writes it (`Controller::apply` for
//! every change it decides, `Controller::refused` for requests refused
//! before they became a change).
//!
//! Ordering, decided once: the line is **appended before the answer** (any
//! reader sees it as soon as the caller has its answer) and **fsync'd right
//! after, off the answer's path** (a blocking task, at most one queued at a
//! time). A switch already waits for one fsync, the state file's, which
//! holds the same facts (live color, time, kind, reason, actor, client); a
//! second sync before answering would double the switch's disk wait for a
//! copy. A crash between the answer and that sync can lose the audit line
//! of a change the state file still records; it cannot lose the change.
//!
//! What a client can put in the log is bounded, so that the log cannot be
//! used to fill the disk or to smuggle terminal escapes to whoever reads it:
//! - every client-given field (the app from the URL, actor, reason; the
//!   error message, which may quote them) is cut to [`FIELD_LIMIT`] bytes
//!   ([`ERROR_LIMIT`] for the error), ending in `…`, and the record lists
//!   the cut fields in `truncated`; control characters (and the bidi
//!   overrides) become U+FFFD (JSON would escape them, but `jq -r` would
//!   print them as they are);
//! - refused attempts (no token, a forbidden origin, an unreadable body:
//!   [`AuditLog::refused`]) are written in full at most
//!   [`RefusedLimit::per_window`] times per client and window; the rest are
//!   counted, and written as one summary line, `"N refused from X since T"`
//!   (`"result": "rate_limited"`), when the window closes or before the
//!   next line written, whichever comes first. Changes and the refusals of
//!   changes (`record`) are always written.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use time::OffsetDateTime;
use tracing::{error, warn};

use super::state_dir;

/// Client-given text fields of a record are cut to this many bytes.
pub const FIELD_LIMIT: usize = 256;

/// The error message of a record is cut to this many bytes.
pub const ERROR_LIMIT: usize = 1024;

/// How many clients' refusal windows are tracked at once; refusals from
/// further clients share one window, under the name [`OTHER_CLIENTS`].
pub const MAX_CLIENTS: usize = 1024;

/// The client name of the shared window (see [`MAX_CLIENTS`]).
pub const OTHER_CLIENTS: &str = "other clients";

/// How many refused attempts per client are written in full.
#[derive(Clone, Copy, Debug)]
pub struct RefusedLimit {
    /// Written in full per client and window (default 10)...
    pub per_window: u32,
    /// ...per this long (default one minute).
    pub window: Duration,
}

impl Default for RefusedLimit {
    fn default() -> Self {
        RefusedLimit {
            per_window: 10,
            window: Duration::from_secs(60),
        }
    }
}

/// One audited action.
#[derive(Debug)]
pub struct AuditRecord<'a> {
    pub time: OffsetDateTime,
    /// `switch`, `rollback`, ...
    pub action: &'a str,
    pub app: &'a str,
    /// `ok`, or the API's error code (`unauthorized`, `target_unhealthy`, ...).
    pub result: &'a str,
    /// The HTTP status answered.
    pub status: u16,
    pub actor: &'a str,
    pub client: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub emergency: bool,
    /// The target color, when the request named one.
    pub to: Option<&'a str>,
    /// The error message, when refused or failed.
    pub error: Option<&'a str>,
}

/// A record as written: client-given text cut and cleaned.
#[derive(Serialize)]
struct Line<'a> {
    #[serde(with = "time::serde::rfc3339")]
    time: OffsetDateTime,
    action: &'a str,
    app: Cow<'a, str>,
    result: &'a str,
    status: u16,
    actor: Cow<'a, str>,
    client: Option<&'a str>,
    reason: Option<Cow<'a, str>>,
    emergency: bool,
    to: Option<&'a str>,
    error: Option<Cow<'a, str>>,
    /// The fields cut to their limit.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    truncated: Vec<&'static str>,
}

impl<'a> Line<'a> {
    fn of(rec: &AuditRecord<'a>) -> Self {
        let mut truncated = Vec::new();
        let mut field = |name: &'static str, text: &'a str, limit: usize, keep: bool| {
            let (text, cut) = clean(text, limit, keep);
            if cut {
                truncated.push(name);
            }
            text
        };
        let app = field("app", rec.app, FIELD_LIMIT, false);
        let actor = field("actor", rec.actor, FIELD_LIMIT, false);
        let reason = rec.reason.map(|r| field("reason", r, FIELD_LIMIT, false));
        // Error messages are ours, with client text inside; config errors
        // span lines.
        let error = rec.error.map(|e| field("error", e, ERROR_LIMIT, true));
        Line {
            time: rec.time,
            action: rec.action,
            app,
            result: rec.result,
            status: rec.status,
            actor,
            client: rec.client,
            reason,
            emergency: rec.emergency,
            to: rec.to,
            error,
            truncated,
        }
    }
}

/// The line that stands for refused attempts not written one by one.
#[derive(Serialize)]
struct Summary<'a> {
    #[serde(with = "time::serde::rfc3339")]
    time: OffsetDateTime,
    action: &'static str,
    result: &'static str,
    client: &'a str,
    /// How many were not written.
    count: u64,
    /// When the first of them came.
    #[serde(with = "time::serde::rfc3339")]
    since: OffsetDateTime,
    error: String,
}

/// Whether `c` is left out of audit text: control characters (but line
/// feed and tab where `keep_newlines`) and the bidi overrides, which can
/// make a line read as something else.
fn unsafe_char(c: char, keep_newlines: bool) -> bool {
    (c.is_control() && !(keep_newlines && matches!(c, '\n' | '\t')))
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `text` with unsafe characters replaced by U+FFFD and cut to at most
/// `limit` bytes (on a character boundary, ending in `…`); true if cut.
fn clean(text: &str, limit: usize, keep_newlines: bool) -> (Cow<'_, str>, bool) {
    if text.len() <= limit && !text.chars().any(|c| unsafe_char(c, keep_newlines)) {
        return (Cow::Borrowed(text), false);
    }
    const MORE: char = '…';
    let mut out = String::with_capacity(limit.min(text.len()) + MORE.len_utf8());
    for c in text.chars() {
        let c = if unsafe_char(c, keep_newlines) {
            char::REPLACEMENT_CHARACTER
        } else {
            c
        };
        if out.len() + c.len_utf8() > limit {
            out.push(MORE);
            return (Cow::Owned(out), true);
        }
        out.push(c);
    }
    (Cow::Owned(out), false)
}

/// One client's refusals in the current window.
struct Window {
    opened: Instant,
    written: u32,
    /// Counted, not written, since the last summary.
    suppressed: u64,
    /// When the first of `suppressed` came.
    since: Option<OffsetDateTime>,
    /// A flush at this window's end is scheduled.
    timer: bool,
}

impl Window {
    fn new(now: Instant) -> Self {
        Window {
            opened: now,
            written: 0,
            suppressed: 0,
            since: None,
            timer: false,
        }
    }
}

/// The append-only audit file.
pub struct AuditLog {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    file: Arc<File>,
    /// A sync is queued and has not started yet: the lines appended until it
    /// starts are covered by it.
    sync_queued: Arc<AtomicBool>,
    limit: RefusedLimit,
    /// Refusal windows by client. Held while a line is written, so that a
    /// summary and the line after it reach the file in that order.
    refused: Mutex<HashMap<String, Window>>,
}

impl AuditLog {
    /// Opens (creates) `audit.log` in `dir` for appending, with the default
    /// [`RefusedLimit`]. A symbolic link there is refused (see
    /// [`state_dir`]).
    pub fn open(dir: &Path) -> std::io::Result<AuditLog> {
        Self::open_with(dir, RefusedLimit::default())
    }

    /// [`open`](Self::open) with another limit for refused attempts.
    pub fn open_with(dir: &Path, limit: RefusedLimit) -> std::io::Result<AuditLog> {
        let path = dir.join("audit.log");
        let file = state_dir::options()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| state_dir::explain(e, &path))?;
        Ok(AuditLog {
            shared: Arc::new(Shared {
                path,
                file: Arc::new(file),
                sync_queued: Arc::new(AtomicBool::new(false)),
                limit,
                refused: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Appends one record (one `write` of whole lines: O_APPEND keeps
    /// concurrent lines whole), after the summaries of refusals not yet
    /// written, and queues its fsync. A failure is logged, not returned:
    /// the action itself already happened (or was refused) and is answered.
    pub fn record(&self, rec: &AuditRecord<'_>) {
        let mut windows = self.shared.lock();
        let mut out = Vec::new();
        Shared::summaries(&mut windows, &self.shared.limit, &mut out, |_| true);
        encode(&Line::of(rec), &mut out);
        self.shared.write(&out);
    }

    /// Appends a refused attempt (refused before it became a change: see
    /// the module docs), unless its client already had
    /// [`RefusedLimit::per_window`] written in this window: then it is only
    /// counted, for the summary.
    pub fn refused(&self, rec: &AuditRecord<'_>) {
        let now = Instant::now();
        let limit = self.shared.limit;
        let mut windows = self.shared.lock();
        let mut out = Vec::new();
        let mut key = rec.client.unwrap_or("unknown");
        if !windows.contains_key(key) && windows.len() >= MAX_CLIENTS {
            let closed = |w: &Window| now >= w.opened + limit.window;
            Shared::summaries(&mut windows, &limit, &mut out, closed);
            windows.retain(|_, w| !closed(w));
            if windows.len() >= MAX_CLIENTS {
                key = OTHER_CLIENTS;
            }
        }
        let w = windows
            .entry(key.to_string())
            .or_insert_with(|| Window::new(now));
        if now >= w.opened + limit.window {
            if let Some(line) = summary(key, w, &limit) {
                out.extend(line);
            }
            *w = Window::new(now);
        }
        let in_full = w.written < limit.per_window;
        if in_full {
            w.written += 1;
        } else {
            w.suppressed += 1;
            if w.since.is_none() {
                w.since = Some(rec.time);
                warn!(
                    client = key,
                    "more than {} refused control requests from {key} in {:?}: the audit log counts the rest of this window in one line",
                    limit.per_window, limit.window
                );
            }
            if !w.timer {
                w.timer = true;
                self.flush_at(w.opened + limit.window);
            }
        }
        if in_full {
            Shared::summaries(&mut windows, &limit, &mut out, |_| true);
            encode(&Line::of(rec), &mut out);
        }
        if !out.is_empty() {
            self.shared.write(&out);
        }
    }

    /// Writes the summaries of every refusal counted and not written yet
    /// (at shutdown: nothing is left behind).
    pub fn flush(&self) {
        let mut windows = self.shared.lock();
        let mut out = Vec::new();
        Shared::summaries(&mut windows, &self.shared.limit, &mut out, |_| true);
        if !out.is_empty() {
            self.shared.write(&out);
        }
    }

    /// Writes the summaries of the windows closed by `at`, then, on a task
    /// of the current runtime (none without one: the next line or `flush`
    /// writes them).
    fn flush_at(&self, at: Instant) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let shared = self.shared.clone();
        rt.spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let now = Instant::now();
            let window = shared.limit.window;
            let mut windows = shared.lock();
            let mut out = Vec::new();
            let closed = |w: &Window| now >= w.opened + window;
            Shared::summaries(&mut windows, &shared.limit, &mut out, closed);
            windows.retain(|_, w| !closed(w));
            if !out.is_empty() {
                shared.write(&out);
            }
        });
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Window>> {
        // The map holds counters only: one left half-updated by a panic is
        // still usable.
        self.refused.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends to `out` the summary of every window `which` selects that
    /// has refusals counted and not written, and resets their count.
    fn summaries(
        windows: &mut HashMap<String, Window>,
        limit: &RefusedLimit,
        out: &mut Vec<u8>,
        which: impl Fn(&Window) -> bool,
    ) {
        for (client, w) in windows.iter_mut() {
            if which(w) {
                if let Some(line) = summary(client, w, limit) {
                    out.extend(line);
                }
            }
        }
    }

    fn write(&self, bytes: &[u8]) {
        if let Err(e) = (&*self.file).write_all(bytes) {
            return error!("failed to append to audit log {}: {e}", self.path.display());
        }
        self.sync_soon();
    }

    /// fsyncs the file on a blocking thread of the current runtime (inline
    /// without one), unless a sync that has not started yet is queued.
    fn sync_soon(&self) {
        if self.sync_queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let (file, queued, path) = (
            self.file.clone(),
            self.sync_queued.clone(),
            self.path.clone(),
        );
        let sync = move || {
            queued.store(false, Ordering::Release);
            if let Err(e) = file.sync_data() {
                error!("failed to sync audit log {}: {e}", path.display());
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(sync)),
            Err(_) => sync(),
        }
    }
}

/// The summary line of `w`'s counted refusals (and resets the count), or
/// `None` when there are none.
fn summary(client: &str, w: &mut Window, limit: &RefusedLimit) -> Option<Vec<u8>> {
    let since = w.since.take()?;
    let count = std::mem::take(&mut w.suppressed);
    let client = clean(client, FIELD_LIMIT, false).0;
    let when = since
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut line = Vec::new();
    encode(
        &Summary {
            time: OffsetDateTime::now_utc(),
            action: "refused",
            result: "rate_limited",
            client: &client,
            count,
            since,
            error: format!(
                "{count} refused from {client} since {when} (more than {} in {:?} from one client are counted, not written one by one)",
                limit.per_window, limit.window
            ),
        },
        &mut line,
    );
    Some(line)
}

/// Appends `value` as one JSON line.
fn encode<T: Serialize>(value: &T, out: &mut Vec<u8>) {
    let start = out.len();
    match serde_json::to_writer(&mut *out, value) {
        Ok(()) => out.push(b'\n'),
        Err(e) => {
            out.truncate(start);
            error!("cannot encode audit record: {e}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec<'a>(client: &'a str, app: &'a str) -> AuditRecord<'a> {
        AuditRecord {
            time: OffsetDateTime::now_utc(),
            action: "switch",
            app,
            result: "unauthorized",
            status: 401,
            actor: "unknown",
            client: Some(client),
            reason: None,
            emergency: false,
            to: None,
            error: Some("no token"),
        }
    }

    fn lines(dir: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Client-given fields are cut to their limit and marked; control
    /// characters and bidi overrides never reach the file.
    #[test]
    fn client_text_is_capped_and_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        let app = "é".repeat(40_000);
        let actor = "ann\x1b[2J\u{202E}@lb\n";
        let reason = "r".repeat(FIELD_LIMIT);
        let error = format!("unknown app '{app}'");
        log.record(&AuditRecord {
            actor,
            reason: Some(&reason),
            error: Some(&error),
            ..rec("127.0.0.1", &app)
        });
        let l = &lines(dir.path())[0];
        let got = l["app"].as_str().unwrap();
        assert!(got.len() <= FIELD_LIMIT + '…'.len_utf8(), "{}", got.len());
        assert!(got.ends_with("é…"), "cut on a character boundary");
        assert_eq!(l["actor"], "ann\u{FFFD}[2J\u{FFFD}@lb\u{FFFD}");
        assert_eq!(
            l["reason"].as_str(),
            Some(reason.as_str()),
            "at the limit: kept"
        );
        assert!(l["error"].as_str().unwrap().len() <= ERROR_LIMIT + 3);
        assert_eq!(l["truncated"], serde_json::json!(["app", "error"]));
        let size = std::fs::metadata(dir.path().join("audit.log"))
            .unwrap()
            .len();
        assert!(size < 2048, "{size} bytes for one record");
        log.record(&rec("127.0.0.1", "web"));
        assert!(lines(dir.path())[1].get("truncated").is_none());
    }

    /// Past the limit, a client's refusals are counted; the count is
    /// written as one line before the next line written (any client's, or a
    /// change's), or by `flush`.
    #[test]
    fn refusals_past_the_limit_are_summarised() {
        let dir = tempfile::tempdir().unwrap();
        let limit = RefusedLimit {
            per_window: 3,
            window: Duration::from_secs(3600),
        };
        let log = AuditLog::open_with(dir.path(), limit).unwrap();
        for _ in 0..10 {
            log.refused(&rec("10.0.0.1", "web"));
        }
        let got = lines(dir.path());
        assert_eq!(got.len(), 3);
        assert!(got
            .iter()
            .all(|l| l["result"] == "unauthorized" && l["client"] == "10.0.0.1"));

        log.refused(&rec("10.0.0.2", "web"));
        let got = lines(dir.path());
        assert_eq!(got.len(), 5, "{got:?}");
        let s = &got[3];
        assert_eq!(
            (
                s["action"].as_str(),
                s["result"].as_str(),
                s["count"].as_u64()
            ),
            (Some("refused"), Some("rate_limited"), Some(7))
        );
        assert!(s["error"]
            .as_str()
            .unwrap()
            .starts_with("7 refused from 10.0.0.1 since "));
        assert_eq!(got[4]["client"], "10.0.0.2");

        // Still the same window: counted again, written before a change.
        log.refused(&rec("10.0.0.1", "web"));
        log.refused(&rec("10.0.0.1", "web"));
        log.record(&AuditRecord {
            result: "ok",
            status: 200,
            ..rec("10.0.0.3", "web")
        });
        let got = lines(dir.path());
        assert_eq!(got.len(), 7, "{got:?}");
        assert_eq!(got[5]["count"], 2);
        assert_eq!(got[6]["result"], "ok");
        log.refused(&rec("10.0.0.1", "web"));
        log.flush();
        let got = lines(dir.path());
        assert_eq!((got.len(), &got[7]["count"]), (8, &serde_json::json!(1)));
        log.flush();
        assert_eq!(lines(dir.path()).len(), 8, "nothing left to summarise");
    }

    /// The summary is written when the window closes, with nothing else
    /// written; the next window writes in full again.
    #[tokio::test]
    async fn summary_when_the_window_closes() {
        let dir = tempfile::tempdir().unwrap();
        let limit = RefusedLimit {
            per_window: 1,
            window: Duration::from_millis(200),
        };
        let log = AuditLog::open_with(dir.path(), limit).unwrap();
        for _ in 0..5 {
            log.refused(&rec("10.0.0.1", "web"));
        }
        assert_eq!(lines(dir.path()).len(), 1);
        let deadline = Instant::now() + Duration::from_secs(5);
        while lines(dir.path()).len() < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let got = lines(dir.path());
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[1]["count"], 4);
        log.refused(&rec("10.0.0.1", "web"));
        assert_eq!(lines(dir.path()).len(), 3);
        assert_eq!(lines(dir.path())[2]["result"], "unauthorized");
    }

    /// However many clients, the windows tracked are bounded.
    #[test]
    fn windows_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let limit = RefusedLimit {
            per_window: 1,
            window: Duration::from_secs(3600),
        };
        let log = AuditLog::open_with(dir.path(), limit).unwrap();
        for i in 0..(MAX_CLIENTS + 50) {
            let client = format!("10.{}.{}.1", i / 256, i % 256);
            log.refused(&rec(&client, "web"));
            log.refused(&rec(&client, "web"));
        }
        assert!(log.shared.lock().len() <= MAX_CLIENTS + 1);
        log.flush();
        let got = lines(dir.path());
        let others: Vec<_> = got
            .iter()
            .filter(|l| l["client"] == OTHER_CLIENTS && l["result"] == "rate_limited")
            .collect();
        assert_eq!(others.len(), 1);
        assert_eq!(others[0]["count"], 99);
    }

    #[test]
    fn lines_are_whole_json_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        for (i, action) in ["switch", "rollback"].iter().enumerate() {
            log.record(&AuditRecord {
                time: OffsetDateTime::UNIX_EPOCH,
                action,
                app: "web",
                result: "ok",
                status: 200,
                actor: "ann",
                client: None,
                reason: Some("r"),
                emergency: i == 1,
                to: Some("green"),
                error: None,
            });
        }
        let text = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["action"], "switch");
        assert_eq!(lines[1]["action"], "rollback");
        assert_eq!(lines[1]["emergency"], true);
    }
}
