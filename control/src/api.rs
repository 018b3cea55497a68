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
    /// Made by bgproxy itself: a rollback after a failed analysis, or a
    /// rollout aborted by its analysis.
    Automatic,
    /// A rollout reached 100%: the new color is live.
    Canary,
    /// An operator aborted a rollout: the new color's share went back to 0,
    /// the live color did not change.
    Abort,
}

impl fmt::Display for SwitchKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SwitchKind::Switch => "switch",
            SwitchKind::Rollback => "rollback",
            SwitchKind::Emergency => "emergency",
            SwitchKind::Automatic => "automatic",
            SwitchKind::Canary => "canary",
            SwitchKind::Abort => "abort",
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
    /// The `generation` of `GET /v1/status` the caller decided on: refused
    /// with 409 `plan_stale` when it moved since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_generation: Option<u64>,
}

/// Body of `POST /v1/apps/{app}/rollback` (may be empty).
pub type RollbackRequest = ActionRequest;

/// Body of a call that names no color: `rollback`, `promote`, `abort`,
/// `pause`, `resume` (may be empty).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    #[serde(default)]
    pub emergency: bool,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub actor: Option<String>,
    /// The `generation` of `GET /v1/status` the caller decided on: refused
    /// with 409 `plan_stale` when it moved since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_generation: Option<u64>,
}

impl RolloutStatus {
    /// `green at 25%, step 2/4, running`, or `green held at 30% by weight`:
    /// how the daemon's messages and bgctl name a rollout.
    pub fn describe(&self) -> String {
        if self.steps.is_empty() {
            format!("{} held at {}% by weight", self.to, self.percent)
        } else {
            format!(
                "{} at {}%, step {}/{}, {}",
                self.to,
                self.percent,
                self.step + 1,
                self.steps.len(),
                self.state
            )
        }
    }
}

/// Checks a list of rollout steps (the new color's share at each step): at
/// least one, each 1-100, strictly increasing, the last 100. The one rule
/// for `[app.rollout] steps`, a canary call's `steps` and `bgctl canary
/// --steps`.
pub fn rollout_steps(raw: &[u32]) -> Result<Vec<u8>, String> {
    if raw.is_empty() {
        return Err("needs at least one step, and the last must be 100".into());
    }
    if let Some(bad) = raw.iter().find(|&&s| !(1..=100).contains(&s)) {
        return Err(format!("step {bad} is not a share between 1 and 100"));
    }
    if let Some(w) = raw.windows(2).find(|w| w[1] <= w[0]) {
        return Err(format!(
            "steps must increase: {} comes after {}",
            w[1], w[0]
        ));
    }
    match raw.last() {
        Some(100) => Ok(raw.iter().map(|&s| s as u8).collect()),
        last => Err(format!(
            "the last step must be 100 (the new color live), not {}",
            last.copied().unwrap_or_default()
        )),
    }
}

/// Body of `POST /v1/apps/{app}/canary`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryRequest {
    /// The new color: the standby.
    pub to: Color,
    /// Its share at each step (default: the app's `[app.rollout] steps`).
    #[serde(default)]
    pub steps: Option<Vec<u32>>,
    /// Time at each step, like `1m` (default: `[app.rollout] step_interval`).
    #[serde(default)]
    pub step_interval: Option<String>,
    /// Skip the health gate (and end a deploy running on `to`).
    #[serde(default)]
    pub emergency: bool,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub actor: Option<String>,
    /// The `generation` of `GET /v1/status` the caller decided on: refused
    /// with 409 `plan_stale` when it moved since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_generation: Option<u64>,
}

/// Body of `POST /v1/apps/{app}/weight`: hold `to` at `percent`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightRequest {
    pub to: Color,
    /// 0-100.
    pub percent: u32,
    #[serde(default)]
    pub emergency: bool,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub actor: Option<String>,
    /// The `generation` of `GET /v1/status` the caller decided on: refused
    /// with 409 `plan_stale` when it moved since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_generation: Option<u64>,
}

/// Answer of `canary`, `weight`, `promote`, `abort`, `pause`, `resume`:
/// where the app stands after the change (durable and in force).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RolloutResponse {
    pub app: String,
    pub live: Color,
    pub weights: Weights,
    /// The rollout after the change, or null when it ended.
    pub rollout: Option<RolloutStatus>,
    /// When the change made a color live (promote, a last step of 100%).
    #[serde(default)]
    pub switch: Option<SwitchResponse>,
    /// `[cluster]`: as in [`SwitchResponse::applied_by`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_by: Option<Vec<String>>,
    /// `[cluster]`: as in [`SwitchResponse::missing`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<Vec<String>>,
}

/// One `[[app.verify]]` check run against a color.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerifyCheckResult {
    pub name: String,
    pub path: String,
    pub ok: bool,
    /// The status answered, when there was an answer.
    pub status: Option<u16>,
    pub duration_ms: f64,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// Answer of `POST /v1/apps/{app}/verify`: the app's checks against its
/// standby, through the proxy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerifyResponse {
    pub app: String,
    /// The color checked (the standby).
    pub color: Color,
    /// Every check passed (true when none is configured).
    pub passed: bool,
    pub checks: Vec<VerifyCheckResult>,
}

/// Where a pending request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestStatus {
    Pending,
    Approved,
    Denied,
}

/// A change someone asked for and a human must approve
/// (`POST /v1/apps/{app}/requests`), as kept in the state file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingRequest {
    pub id: String,
    pub app: String,
    /// `switch`, `rollback`, `canary` or `promote`.
    pub action: String,
    /// The color for `switch` and `canary`.
    #[serde(default)]
    pub to: Option<Color>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub emergency: bool,
    /// The generation it was made against: approving it after the state
    /// moved is refused (`plan_stale`).
    pub generation: u64,
    pub requested_by: String,
    #[serde(default)]
    pub client: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub requested_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub status: RequestStatus,
    /// Who approved or denied it, and when.
    #[serde(default)]
    pub decided_by: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub decided_at: Option<OffsetDateTime>,
}

/// Body of `POST /v1/apps/{app}/requests`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// `switch`, `rollback`, `canary` or `promote`.
    pub action: String,
    #[serde(default)]
    pub to: Option<Color>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub emergency: bool,
    #[serde(default)]
    pub actor: Option<String>,
    /// The `generation` of `GET /v1/status` the caller decided on: refused
    /// with 409 `plan_stale` when it moved since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_generation: Option<u64>,
}

/// Answer of `POST /v1/apps/{app}/requests`: the request, what it would do
/// (as of now), and the command a human runs to approve it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RequestCreated {
    #[serde(flatten)]
    pub request: PendingRequest,
    pub plan: String,
    pub approve_with: String,
}

/// `GET /v1/requests`: the pending requests, oldest first.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RequestsResponse {
    pub requests: Vec<PendingRequest>,
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
    /// `[cluster]`: the instances that applied the change within
    /// `ack_timeout` (this one included); absent without a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_by: Option<Vec<String>>,
    /// `[cluster]`: the instances known to the cluster that had not applied
    /// it when the answer was sent (they apply it when they can).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<Vec<String>>,
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
    /// Checks passed in a row so far (a `down` upstream turns `up` at
    /// `rise`).
    #[serde(default)]
    pub passes: u32,
    /// Checks failed in a row so far (an `up` upstream turns `down` at
    /// `fall`).
    #[serde(default)]
    pub fails: u32,
    /// The thresholds of its health checks (0 before the first check).
    #[serde(default)]
    pub rise: u32,
    #[serde(default)]
    pub fall: u32,
}

/// One color's pool.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ColorStatus {
    /// True when every upstream is observed `up` (for an app's own
    /// `colors`: also every upstream of that color of each of its
    /// `routes`): a normal switch to this color is allowed.
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
    /// Each color's share of the app's requests, in percent (summing to 100).
    #[serde(default)]
    pub weights: Weights,
    /// The rollout in progress (or a share held by `weight`), or null.
    #[serde(default)]
    pub rollout: Option<RolloutStatus>,
    /// The app's other services (`[[app.routes]]`), longest prefix first;
    /// each switches with the app. Empty without routes.
    #[serde(default)]
    pub routes: Vec<RouteStatus>,
    /// How the standby can be tried before a switch.
    #[serde(default)]
    pub trying: Trying,
}

/// How an app's standby can be tried before a switch: preview, color host
/// names, mirroring, verify checks (as configured).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trying {
    /// `[app.preview] token_file` is set: the `X-Bgproxy-Preview` header
    /// and the `/.bgproxy/preview` cookie reach the standby.
    pub preview: bool,
    /// `blue_hosts`, `green_hosts`: names always routed to that color.
    pub blue_hosts: Vec<String>,
    pub green_hosts: Vec<String>,
    /// `[app.mirror] percent`: the share of live requests copied to the
    /// standby (0: off).
    pub mirror_percent: u8,
    /// The names of the `[[app.verify]]` checks (they gate a switch).
    pub verify_checks: Vec<String>,
}

/// One `[[app.routes]]` service of an app: its pools, shaped like the
/// app's own `colors`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RouteStatus {
    pub name: String,
    pub path_prefix: String,
    /// Each color's upstreams and health (`healthy`: every upstream of the
    /// route's pool `up`). A route's requests count in its app's color, so
    /// `connections` is the app's color's, as in the app's `colors`.
    pub colors: Colors,
}

/// Each color's share of an app's requests, in percent; they sum to 100.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Weights {
    pub blue: u8,
    pub green: u8,
}

impl Weights {
    /// `percent` to `to`, the rest to the other color.
    pub fn new(to: Color, percent: u8) -> Weights {
        let percent = percent.min(100);
        match to {
            Color::Blue => Weights {
                blue: percent,
                green: 100 - percent,
            },
            Color::Green => Weights {
                blue: 100 - percent,
                green: percent,
            },
        }
    }

    /// The share of `color`.
    pub fn of(&self, color: Color) -> u8 {
        match color {
            Color::Blue => self.blue,
            Color::Green => self.green,
        }
    }
}

/// Where a rollout stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutState {
    /// Moving through its steps: analysed at the end of each.
    Running,
    /// Holding its share, waiting for `promote`, `abort` or `resume` (after
    /// too many inconclusive windows, a failed one without `auto_rollback`,
    /// `pause`, or a share set by `weight`).
    Paused,
}

impl fmt::Display for RolloutState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
        })
    }
}

/// The verdict on one analysis window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnalysisResult {
    Pass,
    Fail,
    /// Too few requests to the new color to judge.
    Inconclusive,
}

impl AnalysisResult {
    pub fn as_str(self) -> &'static str {
        match self {
            AnalysisResult::Pass => "pass",
            AnalysisResult::Fail => "fail",
            AnalysisResult::Inconclusive => "inconclusive",
        }
    }
}

/// One analysis window of the new color, from bgproxy's own counters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnalysisStatus {
    pub result: AnalysisResult,
    /// Responses of the new color in the window.
    pub requests: u64,
    /// Its 5xx responses / its responses (0 without responses).
    pub error_ratio: f64,
    /// Its p99 latency in the window, when it had responses.
    pub p99_ms: Option<f64>,
    /// The old color's p99 in the same window (during the watch after a
    /// switch: over the `interval` before the switch), when it had any.
    pub baseline_p99_ms: Option<f64>,
    /// Why, in words (`error ratio 0.21 > 0.05`).
    #[serde(default)]
    pub detail: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// A rollout: the new color's share of requests moving through `steps`.
/// Persisted in the state file as it is shown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutStatus {
    /// The new color (the standby when the rollout started).
    pub to: Color,
    pub state: RolloutState,
    /// 0-based index into `steps` of the step in force.
    pub step: usize,
    /// The new color's share at each step, increasing, ending at 100; empty
    /// for a share set by `weight`.
    pub steps: Vec<u8>,
    /// The new color's share now.
    pub percent: u8,
    /// When the step in force began (or resumed).
    #[serde(with = "time::serde::rfc3339")]
    pub step_started: OffsetDateTime,
    /// How long each step runs before its analysis, in milliseconds.
    pub step_interval_ms: u64,
    /// Inconclusive windows in a row at this step.
    #[serde(default)]
    pub inconclusive: u32,
    pub last_analysis: Option<AnalysisStatus>,
    /// Who started it, and why.
    pub actor: String,
    #[serde(default)]
    pub reason: Option<String>,
}

/// `GET /v1/status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusResponse {
    /// Version of the daemon.
    pub version: String,
    /// Generation of the routing snapshot: increases with every change.
    pub generation: u64,
    /// Every certificate the TLS listeners serve, as `GET /v1/certs`
    /// (with the last ACME error); absent without `[proxy.tls]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertView>,
    pub apps: Vec<AppStatus>,
    /// `[cluster]`: this instance in the cluster (connected or not, who
    /// leads, every member's applied revision); absent without a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterResponse>,
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
    /// The `generation` of `GET /v1/status` the caller decided on: refused
    /// with 409 `plan_stale` when it moved since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_generation: Option<u64>,
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

/// `GET /v1/cluster`: the instances sharing this state through etcd
/// (`[cluster]`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterResponse {
    /// This instance (`cluster.name`).
    pub name: String,
    /// The etcd key prefix of this site.
    pub prefix: String,
    /// The etcd client URLs.
    pub etcd: Vec<String>,
    /// Whether this instance reaches an etcd quorum (and so takes changes).
    pub connected: bool,
    /// The revision of the shared state this instance applied last.
    pub revision: i64,
    /// The instance that runs automatic actions, when one is elected.
    pub leader: Option<String>,
    /// Every instance whose lease is alive, by name.
    pub members: Vec<ClusterMember>,
}

/// One instance of the cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterMember {
    pub name: String,
    /// The revision of the shared state it applied last.
    pub applied_revision: i64,
    /// Whether it is the elected leader.
    pub leader: bool,
}

/// Every error answer of the API: `{"error": "...", "code": "..."}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong and how to fix it, for humans.
    pub error: String,
    /// A stable machine-readable code, e.g. `target_unhealthy`.
    pub code: String,
}

/// `GET /v1/traffic`: each app's colors over the last minute, from the
/// proxy's own counters (the status page's numbers).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrafficResponse {
    /// Generation of the routing snapshot these apps are from.
    pub generation: u64,
    /// Seconds covered by one point of a color's `points`.
    pub period_s: f64,
    /// How many bgproxy instances' traffic the numbers sum: 1, or with
    /// `[cluster]` this one and every other that published its counters.
    #[serde(default = "one")]
    pub instances: usize,
    pub apps: Vec<AppTraffic>,
}

fn one() -> usize {
    1
}

/// One app's traffic by color.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AppTraffic {
    pub name: String,
    pub live: Color,
    pub blue: ColorTraffic,
    pub green: ColorTraffic,
}

/// One color's traffic over the last `seconds` (up to a minute).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ColorTraffic {
    /// Responses per second.
    pub rate: f64,
    /// 5xx / responses (0 without responses).
    pub error_ratio: f64,
    /// p99 latency, when there were responses.
    pub p99_ms: Option<f64>,
    /// Responses in all.
    pub requests: u64,
    /// The time covered (less than a minute after start).
    pub seconds: f64,
    /// The same per period, oldest first (for a sparkline).
    pub points: Vec<TrafficPoint>,
}

/// One period of a color's traffic.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrafficPoint {
    pub rate: f64,
    pub error_ratio: f64,
    pub p99_ms: Option<f64>,
    pub requests: u64,
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

/// Where a served certificate comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertSource {
    /// `[proxy.tls]` cert/key or `[[proxy.tls.certs]]`.
    File,
    /// Obtained and renewed by bgproxy (`[proxy.tls.acme]`).
    Acme,
}

impl CertSource {
    /// `file` or `acme`.
    pub fn as_str(self) -> &'static str {
        match self {
            CertSource::File => "file",
            CertSource::Acme => "acme",
        }
    }
}

/// One certificate the TLS listeners serve (or, for ACME, are to serve).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertView {
    /// The names it serves; empty for the default certificate.
    pub hosts: Vec<String>,
    pub source: CertSource,
    /// The certificate file (source `file`).
    #[serde(default)]
    pub file: Option<String>,
    /// When it expires (RFC 3339); `None`: no certificate yet (ACME).
    #[serde(default)]
    pub not_after: Option<String>,
    /// Why the last ACME order failed; `None` when it succeeded.
    #[serde(default)]
    pub last_error: Option<String>,
    /// When the next ACME order is due (RFC 3339).
    #[serde(default)]
    pub next_attempt: Option<String>,
}

/// `GET /v1/certs`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CertsResponse {
    /// Every certificate served, files first; empty without `[proxy.tls]`.
    pub certs: Vec<CertView>,
}
