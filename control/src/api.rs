//! Types of the control API (HTTP/JSON under `/v1`) and of the state file's
//! history records.
//!
//! Every type here is part of the interface contract in `shared/design.md`:
//! fields may be added, never renamed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// One of the two deployment colors. Either can be live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Blue,
    Green,
}

impl Color {
    /// Both colors, in a fixed order (blue, green).
    pub const ALL: [Color; 2] = [Color::Blue, Color::Green];

    /// The other color: the standby when `self` is live.
    pub fn other(self) -> Color {
        match self {
            Color::Blue => Color::Green,
            Color::Green => Color::Blue,
        }
    }

    /// Index into per-color arrays (`[blue, green]`).
    pub fn index(self) -> usize {
        match self {
            Color::Blue => 0,
            Color::Green => 1,
        }
    }

    /// The lowercase name, as in the config, the API and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Color::Blue => "blue",
            Color::Green => "green",
        }
    }
}

impl fmt::Display for Color {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error of [`Color::from_str`].
#[derive(Debug, thiserror::Error)]
#[error("unknown color '{0}': expected 'blue' or 'green'")]
pub struct UnknownColor(pub String);

impl FromStr for Color {
    type Err = UnknownColor;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "blue" => Ok(Color::Blue),
            "green" => Ok(Color::Green),
            other => Err(UnknownColor(other.to_string())),
        }
    }
}

/// Observed health of one upstream.
///
/// `Unknown` from start until the first check completes; then `Up` or `Down`
/// by the app's `rise`/`fall` thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Unknown,
    Up,
    Down,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of change moved the live color.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SwitchKind {
    /// An operator's switch that passed the health gate.
    Switch,
    /// Back to the previous live color.
    Rollback,
    /// A switch or rollback that skipped the health gate.
    Emergency,
    /// Made by bgproxy itself (reserved for automatic failover).
    Automatic,
}

impl fmt::Display for SwitchKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SwitchKind::Switch => "switch",
            SwitchKind::Rollback => "rollback",
            SwitchKind::Emergency => "emergency",
            SwitchKind::Automatic => "automatic",
        })
    }
}

/// One change of the live color, as kept in the state file and shown by
/// `GET /v1/apps/{app}/history`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub from: Color,
    pub to: Color,
    pub kind: SwitchKind,
    #[serde(default)]
    pub reason: Option<String>,
    /// Who asked: the `actor` of the request (bgctl sends `user@host`), or
    /// `unknown`.
    pub actor: String,
    /// The client address the request came from, when known.
    #[serde(default)]
    pub client: Option<String>,
}

/// Body of `POST /v1/apps/{app}/switch`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchRequest {
    pub to: Color,
    /// Skip the health gate.
    #[serde(default)]
    pub emergency: bool,
    #[serde(default)]
    pub reason: Option<String>,
    /// Who is switching, recorded in the history (bgctl sends `user@host`).
    #[serde(default)]
    pub actor: Option<String>,
}

/// Body of `POST /v1/apps/{app}/rollback` (may be empty).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    #[serde(default)]
    pub emergency: bool,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub actor: Option<String>,
}

/// Answer of a switch or rollback that was carried out: the change is durable
/// and the data plane already routes to `live`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SwitchResponse {
    pub app: String,
    pub from: Color,
    pub live: Color,
    pub standby: Color,
    pub kind: SwitchKind,
    /// The switch count after this switch.
    pub switch_count: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// How long validate + persist + publish took on the daemon.
    pub duration_ms: f64,
}

/// One upstream of a color, with its observed health.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UpstreamStatus {
    /// The address as configured (`10.0.0.22:3001`).
    pub addr: String,
    pub health: Health,
    /// When the upstream entered its current health state (daemon start for
    /// `unknown`).
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
}

/// One color's pool.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ColorStatus {
    /// True when every upstream is observed `up`: a normal switch to this
    /// color is allowed.
    pub healthy: bool,
    /// Requests (and upgraded connections, e.g. WebSocket) in flight to
    /// this color: after a switch, what the old color still holds.
    #[serde(default)]
    pub connections: u64,
    pub upstreams: Vec<UpstreamStatus>,
}

/// Per-color pools of an app.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Colors {
    pub blue: ColorStatus,
    pub green: ColorStatus,
}

impl Colors {
    pub fn get(&self, color: Color) -> &ColorStatus {
        match color {
            Color::Blue => &self.blue,
            Color::Green => &self.green,
        }
    }
}

/// `GET /v1/apps/{app}` and each element of `GET /v1/status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AppStatus {
    pub name: String,
    /// Host names routed to this app; empty for the default app.
    pub hosts: Vec<String>,
    pub live: Color,
    pub standby: Color,
    pub switch_count: u64,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_switch: Option<OffsetDateTime>,
    /// The deploy in progress, or null.
    pub deploy: Option<DeployStatus>,
    pub colors: Colors,
}

/// `GET /v1/status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusResponse {
    /// Version of the daemon.
    pub version: String,
    /// Generation of the routing snapshot: increases with every change.
    pub generation: u64,
    pub apps: Vec<AppStatus>,
}

/// `GET /v1/apps/{app}/history`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HistoryResponse {
    pub app: String,
    /// Switches, newest last.
    pub history: Vec<HistoryEntry>,
    /// Deploys, newest last.
    #[serde(default)]
    pub deploys: Vec<DeployRecord>,
}

/// Body of `POST /v1/apps/{app}/deploy` (may be empty).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// Also run the steps marked `migrate`.
    #[serde(default)]
    pub migrate: bool,
    #[serde(default)]
    pub actor: Option<String>,
}

/// How a deploy ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeployResult {
    /// Every step passed and the standby is healthy.
    Success,
    /// A step failed or timed out, or the standby did not become healthy.
    Failed,
    /// Stopped by an emergency switch to the color under deploy.
    Aborted,
}

impl DeployResult {
    pub fn as_str(self) -> &'static str {
        match self {
            DeployResult::Success => "success",
            DeployResult::Failed => "failed",
            DeployResult::Aborted => "aborted",
        }
    }
}

/// One step of a finished deploy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeployStepRecord {
    pub name: String,
    /// Exit code; null when killed (timeout, abort) or skipped.
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    pub ok: bool,
    /// Not run: a `migrate` step without `--migrate`, or after a failure.
    #[serde(default)]
    pub skipped: bool,
}

/// A finished deploy, as kept in the state file's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeployRecord {
    pub id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// The color deployed (the standby when it started).
    pub color: Color,
    pub result: DeployResult,
    pub migrate: bool,
    pub steps: Vec<DeployStepRecord>,
    pub duration_ms: u64,
    pub actor: String,
    /// What went wrong, when not a success.
    #[serde(default)]
    pub error: Option<String>,
    /// The full output of every step.
    pub log: String,
}

/// A deploy in progress (the `deploy` field of an app's status).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeployStatus {
    pub id: String,
    pub color: Color,
    #[serde(with = "time::serde::rfc3339")]
    pub started: OffsetDateTime,
    pub migrate: bool,
    pub actor: String,
    /// The step running now (or `health` while waiting for the standby).
    pub step: Option<String>,
    /// 1-based index of that step among the steps that run.
    pub step_index: usize,
    pub steps_total: usize,
}

/// One line of the newline-delimited JSON stream of
/// `POST /v1/apps/{app}/deploy`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum DeployEvent {
    Started {
        id: String,
        app: String,
        color: Color,
        /// The steps that will run, in order.
        steps: Vec<String>,
        /// Migrate steps left out (no `--migrate`).
        skipped: Vec<String>,
        log: String,
    },
    StepStarted {
        step: String,
        index: usize,
        total: usize,
        command: String,
    },
    Output {
        step: String,
        /// `stdout` or `stderr`.
        stream: String,
        line: String,
    },
    StepFinished {
        step: String,
        exit_code: Option<i32>,
        duration_ms: u64,
        ok: bool,
        /// Why it failed, when it did (`exit status 3`, `timed out after 1s`).
        #[serde(default)]
        error: Option<String>,
    },
    HealthWait {
        color: Color,
        timeout_ms: u64,
    },
    Healthy {
        color: Color,
        duration_ms: u64,
    },
    Done {
        result: DeployResult,
        duration_ms: u64,
        #[serde(default)]
        failed_step: Option<String>,
        #[serde(default)]
        error: Option<String>,
        log: String,
    },
}

/// Answer of `POST /v1/reload`: what the new configuration changed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReloadResponse {
    /// Generation of the routing snapshot now in force.
    pub generation: u64,
    /// Apps that are new (they start on their `initial_live` color).
    pub added: Vec<String>,
    /// Apps no longer served (their state record is kept).
    pub removed: Vec<String>,
    /// Apps any of whose settings changed (hosts, upstreams, health, limits,
    /// deploy steps, ...).
    pub changed: Vec<String>,
    /// Changed settings that take effect only after a restart (listeners,
    /// threads, TLS files, ...), by config key.
    pub restart_required: Vec<String>,
}

/// Every error answer of the API: `{"error": "...", "code": "..."}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong and how to fix it, for humans.
    pub error: String,
    /// A stable machine-readable code, e.g. `target_unhealthy`.
    pub code: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn color_round_trips_and_rejects_others() {
        for c in Color::ALL {
            assert_eq!(c.as_str().parse::<Color>().unwrap(), c);
            assert_eq!(c.other().other(), c);
        }
        assert!("purple".parse::<Color>().is_err());
        assert!(serde_json::from_str::<SwitchRequest>(r#"{"to":"purple"}"#).is_err());
        assert!(serde_json::from_str::<SwitchRequest>(r#"{"to":"green","x":1}"#).is_err());
    }
}
