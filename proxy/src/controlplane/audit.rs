//! The audit log: one JSON line per control action (switch, rollback,
//! emergency, refused attempts too), appended to `audit.log` in the state
//! directory and fsync'd before the caller answers, so the trail survives a
//! crash as surely as the state does.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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
    pub client: Option<String>,
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
    file: Mutex<File>,
}

impl AuditLog {
    /// Opens (creates) `audit.log` in `dir` for appending.
    pub fn open(dir: &Path) -> std::io::Result<AuditLog> {
        let path = dir.join("audit.log");
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(AuditLog {
            path,
            file: Mutex::new(file),
        })
    }

    /// Appends one record and fsyncs it. A failure is logged, not returned:
    /// the action itself already happened (or was refused) and is answered.
    pub fn record(&self, rec: &AuditRecord<'_>) {
        let mut line = match serde_json::to_vec(rec) {
            Ok(l) => l,
            Err(e) => return error!("cannot encode audit record: {e}"),
        };
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f.write_all(&line).and_then(|_| f.sync_data()) {
            error!("failed to append to audit log {}: {e}", self.path.display());
        }
    }
}
