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

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Serialize;
use time::OffsetDateTime;
use tracing::error;

/// One audited action.
#[derive(Debug, Serialize)]
pub struct AuditRecord<'a> {
    #[serde(with = "time::serde::rfc3339")]
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

/// The append-only audit file.
pub struct AuditLog {
    path: PathBuf,
    file: Arc<File>,
    /// A sync is queued and has not started yet: the lines appended until it
    /// starts are covered by it.
    sync_queued: Arc<AtomicBool>,
}

impl AuditLog {
    /// Opens (creates) `audit.log` in `dir` for appending.
    pub fn open(dir: &Path) -> std::io::Result<AuditLog> {
        let path = dir.join("audit.log");
        // Never through a link (see `state_dir`).
        let file = super::state_dir::options()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| super::state_dir::explain(e, &path))?;
        Ok(AuditLog {
            path,
            file: Arc::new(file),
            sync_queued: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Appends one record (one `write` of a whole line: O_APPEND keeps
    /// concurrent lines whole) and queues its fsync. A failure is logged,
    /// not returned: the action itself already happened (or was refused)
    /// and is answered.
    pub fn record(&self, rec: &AuditRecord<'_>) {
        let mut line = match serde_json::to_vec(rec) {
            Ok(l) => l,
            Err(e) => return error!("cannot encode audit record: {e}"),
        };
        line.push(b'\n');
        if let Err(e) = (&*self.file).write_all(&line) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
