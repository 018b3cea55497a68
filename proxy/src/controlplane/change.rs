//! The vocabulary of the one writer: a [`Change`] is what someone asks for,
//! a [`Command`] is a change with who asked and why, and a [`ControlError`]
//! is why it was refused or failed. The API, signals, the config watcher and
//! the deploy runner's bookkeeping all speak it; the
//! [`Controller`](super::controller::Controller) decides it with the pure
//! [`rules`](super::rules) and commits it.
//!
//! A second-stage change (weight, rollout step, promote, abort, approval)
//! is one more [`Change`] variant, one more rule and one more arm of the
//! commit: never another path to the state file or the routing table.

use std::sync::Arc;

use std::time::Duration;

use bgproxy_control::api::{AnalysisStatus, Color, DeployRecord};
use time::OffsetDateTime;

use super::state::StateError;
use crate::config::Config;

/// What to change.
#[derive(Clone, Debug)]
pub enum Change {
    /// Make `to` live.
    Switch { to: Color },
    /// Back to the previous live color.
    Rollback,
    /// Put a new, already validated configuration in force.
    Reload(Arc<Config>),
    /// Start a deploy of the app's standby color.
    DeployStarted { migrate: bool },
    /// A deploy ended: record it in the app's history.
    DeployFinished(Box<DeployRecord>),
    /// Start a rollout of `to`: steps and interval from the app's
    /// `[app.rollout]` when not given.
    Canary {
        to: Color,
        steps: Option<Vec<u32>>,
        step_interval: Option<Duration>,
    },
    /// Hold `to` at `percent` of the requests (0 aborts, 100 promotes).
    Weight { to: Color, percent: u32 },
    /// Make the rollout's new color live now.
    Promote,
    /// Put the new color's share back to 0; the live color stays.
    Abort,
    /// Hold the rollout at its step.
    Pause,
    /// Go on with a paused rollout: its step starts anew.
    Resume,
    /// bgproxy's own: the analysis at the end of a rollout step. Refused as
    /// stale when the rollout moved on since the window began.
    StepAnalysed {
        step: usize,
        step_started: OffsetDateTime,
        analysis: Box<AnalysisStatus>,
    },
    /// bgproxy's own: one window of the watch after the switch at `since`.
    WatchAnalysed {
        since: OffsetDateTime,
        analysis: Box<AnalysisStatus>,
    },
    /// Record a request for a human to approve (`switch`, `rollback`,
    /// `canary`, `promote`); routing does not change.
    Request { action: String, to: Option<Color> },
    /// Carry out pending request `id` (its app is filled in by the
    /// controller).
    Approve { id: String },
    /// Drop pending request `id`.
    Deny { id: String },
}

impl Change {
    /// The audit log's `action` for this change.
    pub fn action(&self) -> &'static str {
        match self {
            Change::Switch { .. } => "switch",
            Change::Rollback => "rollback",
            Change::Reload(_) => "reload",
            Change::DeployStarted { .. } | Change::DeployFinished(_) => "deploy",
            Change::Canary { .. } => "canary",
            Change::Weight { .. } => "weight",
            Change::Promote => "promote",
            Change::Abort => "abort",
            Change::Pause => "pause",
            Change::Resume => "resume",
            Change::StepAnalysed { .. } | Change::WatchAnalysed { .. } => "analysis",
            Change::Request { .. } => "request",
            Change::Approve { .. } => "approve",
            Change::Deny { .. } => "deny",
        }
    }
}

/// A change with its audit fields.
#[derive(Clone, Debug)]
pub struct Command {
    /// The app changed; empty for a reload (it changes every app).
    pub app: String,
    pub change: Change,
    /// Skip the health gate (and abort a deploy running on the target).
    pub emergency: bool,
    pub reason: Option<String>,
    /// Who asked: `--actor`, `SIGHUP`, `config file change`, ...
    pub actor: String,
    /// The client's address, when it came over the network.
    pub client: Option<String>,
    /// The generation the caller decided on: refused as `plan_stale` when
    /// the state moved since.
    pub expect_generation: Option<u64>,
}

impl Command {
    /// A command with no reason, no emergency.
    pub fn new(app: &str, change: Change, actor: &str, client: Option<String>) -> Self {
        Command {
            app: app.to_string(),
            change,
            emergency: false,
            reason: None,
            actor: actor.to_string(),
            client,
            expect_generation: None,
        }
    }

    /// What the audit log records of this command.
    pub fn attempt(&self) -> Attempt {
        Attempt {
            action: self.change.action(),
            app: self.app.clone(),
            actor: self.actor.clone(),
            client: self.client.clone(),
            reason: self.reason.clone(),
            emergency: self.emergency,
            to: match &self.change {
                Change::Switch { to } | Change::Canary { to, .. } | Change::Weight { to, .. } => {
                    Some(*to)
                }
                Change::Request { to, .. } => *to,
                Change::DeployFinished(r) => Some(r.color),
                _ => None,
            },
        }
    }
}

/// A control request as far as it was understood, for the audit log: also
/// requests refused before they became a [`Command`] (no token, bad JSON).
#[derive(Clone, Debug, Default)]
pub struct Attempt {
    /// `switch`, `rollback`, `reload`, `deploy`.
    pub action: &'static str,
    pub app: String,
    pub actor: String,
    pub client: Option<String>,
    pub reason: Option<String>,
    pub emergency: bool,
    /// The target color, when the request named one.
    pub to: Option<Color>,
}

/// Why a control request was refused or failed. Each maps to an HTTP status
/// and a stable `code` of the API.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("unknown app '{0}': see GET /v1/status for the configured apps")]
    UnknownApp(String),
    #[error("{color} is already live for app '{app}': nothing to do")]
    AlreadyLive { app: String, color: Color },
    #[error("refusing to switch app '{app}' to {color}: {detail}; wait until it is healthy, or use emergency to skip the health gate")]
    TargetUnhealthy {
        app: String,
        color: Color,
        detail: String,
    },
    #[error("app '{0}' has never been switched: there is no previous live color to roll back to")]
    NothingToRollBack(String),
    #[error(transparent)]
    Persist(#[from] StateError),
    #[error("{0}")]
    BadRequest(String),
    #[error("the new configuration is not valid, nothing was changed:\n{0}")]
    InvalidConfig(String),
    #[error("bgproxy is shutting down or handing over to a new process: no changes accepted here; retry in a moment")]
    ShuttingDown,
    #[error("a deploy to {color} of app '{app}' is running ({detail}): wait for it to finish, or use emergency to abort it and switch anyway")]
    DeployRunning {
        app: String,
        color: Color,
        detail: String,
    },
    #[error("a rollout of app '{app}' is running ({detail}): promote or abort it first, or use emergency to end it")]
    RolloutRunning { app: String, detail: String },
    #[error("app '{0}' has no rollout: start one with canary, or set a share with weight")]
    NoRollout(String),
    #[error("the rollout of app '{app}' {detail}")]
    RolloutState { app: String, detail: String },
    #[error("not applied: {0}")]
    Stale(String),
    #[error("the plan was made at generation {expected}, but the state is at generation {current} now (someone changed it meanwhile): nothing was changed; look at the status again and decide anew")]
    PlanStale { expected: u64, current: u64 },
    #[error("no quorum: {0}; this instance keeps routing by the last state it applied and takes changes again once it reaches etcd")]
    NoQuorum(String),
    #[error("request {id} {detail}: nothing was changed")]
    RequestClosed { id: String, detail: String },
    #[error("no request '{0}': see GET /v1/requests (bgctl requests) for the pending ones")]
    UnknownRequest(String),
    #[error("refusing to make {color} of app '{app}' take traffic: verify check '{check}' failed ({detail}); fix the standby, or use emergency to skip the checks")]
    VerifyFailed {
        app: String,
        color: Color,
        check: String,
        detail: String,
    },
}

impl ControlError {
    /// HTTP status of the error.
    pub fn status(&self) -> u16 {
        match self {
            ControlError::UnknownApp(_) | ControlError::UnknownRequest(_) => 404,
            ControlError::AlreadyLive { .. }
            | ControlError::TargetUnhealthy { .. }
            | ControlError::NothingToRollBack(_)
            | ControlError::DeployRunning { .. }
            | ControlError::RolloutRunning { .. }
            | ControlError::NoRollout(_)
            | ControlError::RolloutState { .. }
            | ControlError::Stale(_)
            | ControlError::VerifyFailed { .. }
            | ControlError::PlanStale { .. }
            | ControlError::RequestClosed { .. } => 409,
            ControlError::Persist(_) => 500,
            ControlError::BadRequest(_) | ControlError::InvalidConfig(_) => 400,
            ControlError::ShuttingDown | ControlError::NoQuorum(_) => 503,
        }
    }

    /// The API's machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ControlError::UnknownApp(_) => "unknown_app",
            ControlError::AlreadyLive { .. } => "already_live",
            ControlError::TargetUnhealthy { .. } => "target_unhealthy",
            ControlError::NothingToRollBack(_) => "nothing_to_roll_back",
            ControlError::Persist(_) => "persist_failed",
            ControlError::BadRequest(_) => "bad_request",
            ControlError::InvalidConfig(_) => "invalid_config",
            ControlError::ShuttingDown => "shutting_down",
            ControlError::DeployRunning { .. } => "deploy_running",
            ControlError::RolloutRunning { .. } => "rollout_running",
            ControlError::NoRollout(_) => "no_rollout",
            ControlError::RolloutState { .. } => "rollout_state",
            ControlError::Stale(_) => "stale",
            ControlError::VerifyFailed { .. } => "verify_failed",
            ControlError::PlanStale { .. } => "plan_stale",
            ControlError::RequestClosed { .. } => "request_closed",
            ControlError::NoQuorum(_) => "no_quorum",
            ControlError::UnknownRequest(_) => "unknown_request",
        }
    }
}
