//! The controller's rules: what a [`Command`] may do, decided in pure code.
//!
//! Every function here is a function of the current routing snapshot, the
//! persisted state, the deploy in progress and the command (plus the time,
//! passed in): no I/O, no lock, no clock. The only outside value read is an
//! upstream's observed health, an atomic in the snapshot. That is what makes
//! them testable one by one (the tests below), the way sozu tests its
//! `ConfigState`.
//!
//! - gates: [`switch`] (app known, a target to go to, target not live,
//!   target healthy unless emergency, no deploy running on the target
//!   unless emergency) and [`deploy`] (app known, one deploy per app);
//! - targets: [`rollback_target`], the color the last switch left;
//! - state transitions: [`next_state`] (what a decision writes to the state
//!   file) and [`merge_new_apps`];
//! - reports and views: [`reload_report`], [`status`], [`history`].

use std::sync::Arc;

use bgproxy_control::api::{
    AnalysisResult, AnalysisStatus, AppStatus, Color, ColorStatus, Colors, DeployRecord,
    DeployStatus, Health, HistoryEntry, HistoryResponse, PendingRequest, ReloadResponse,
    RequestStatus, RolloutState, RolloutStatus, RouteStatus, StatusResponse, SwitchKind, Trying,
    UpstreamStatus,
};
use time::OffsetDateTime;

use super::change::{Change, Command, ControlError};
use super::state::{AppState, State, REQUEST_LIMIT};
use crate::config::{AppConfig, Config};
use crate::dataplane::routing::{AppRoute, Snapshot};

/// What a command was decided to do; the controller commits it.
// One lives per change, on the stack of `apply`: boxing the rollout
// would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Decision {
    /// Make `entry.to` live for the app at `index` of the snapshot (a
    /// switch of any kind; it ends any rollout).
    Switch {
        index: usize,
        entry: HistoryEntry,
        /// An emergency switch onto a color under deploy aborts the deploy:
        /// its steps must never run against the live color.
        abort_deploy: bool,
        /// The analysis that led to it, to be counted.
        verdict: Option<AnalysisResult>,
    },
    /// The app's rollout becomes `rollout` (`None`: it ended); the live
    /// color stays.
    Rollout {
        index: usize,
        rollout: Option<RolloutStatus>,
        /// A history entry that is not a switch (an abort).
        event: Option<HistoryEntry>,
        abort_deploy: bool,
        verdict: Option<AnalysisResult>,
    },
    /// Record a request for a human to approve.
    Request(Box<PendingRequest>),
    /// Carry out the request `id`: `inner` is what it decides now.
    Approve { id: String, inner: Box<Decision> },
    /// Drop the request `id`.
    Deny { id: String },
    /// An analysis window that changes nothing (counted and logged).
    Observed {
        verdict: AnalysisResult,
        detail: String,
    },
    /// Put `config` in force; `report` says what it changes (its
    /// `generation` is filled in by the commit).
    Reload {
        config: Arc<Config>,
        report: ReloadResponse,
    },
    /// Start a deploy of the app's standby color.
    Deploy { index: usize, migrate: bool },
    /// Record a finished deploy.
    DeployFinished(Box<DeployRecord>),
}

/// Decides `cmd` against the current snapshot, state and deploy of its app.
/// `boot` is the configuration the process started with (what a reload
/// cannot change).
pub fn decide(
    snapshot: &Snapshot,
    state: &State,
    config: &Config,
    boot: &Config,
    deploy: Option<&DeployStatus>,
    cmd: &Command,
    now: OffsetDateTime,
) -> Result<Decision, ControlError> {
    let ctx = Ctx {
        snapshot,
        state,
        config,
        deploy,
        cmd,
        now,
    };
    if let Some(expected) = cmd.expect_generation.filter(|g| *g != state.generation) {
        return Err(ControlError::PlanStale {
            expected,
            current: state.generation,
        });
    }
    match &cmd.change {
        Change::Switch { to } => {
            ctx.no_rollout_unless_emergency()?;
            ctx.switch(*to, SwitchKind::Switch)
        }
        Change::Rollback => {
            app_index(snapshot, &cmd.app)?;
            ctx.no_rollout_unless_emergency()?;
            let to = rollback_target(state, &cmd.app)
                .ok_or_else(|| ControlError::NothingToRollBack(cmd.app.clone()))?;
            ctx.switch(to, SwitchKind::Rollback)
        }
        Change::Reload(new) => Ok(Decision::Reload {
            config: new.clone(),
            report: reload_report(config, new, boot),
        }),
        Change::DeployStarted { migrate } => {
            let index = deploy_gate(snapshot, deploy, &cmd.app)?;
            // The standby is the rollout's new color: never deploy under
            // live traffic.
            if let Some(r) = ctx.rollout() {
                return Err(ControlError::RolloutRunning {
                    app: cmd.app.clone(),
                    detail: r.describe(),
                });
            }
            Ok(Decision::Deploy {
                index,
                migrate: *migrate,
            })
        }
        Change::DeployFinished(record) => Ok(Decision::DeployFinished(record.clone())),
        Change::Canary {
            to,
            steps,
            step_interval,
        } => ctx.canary(*to, steps.as_deref(), *step_interval),
        Change::Weight { to, percent } => ctx.weight(*to, *percent),
        Change::Promote => {
            let r = ctx.existing_rollout()?;
            ctx.switch(r.to, SwitchKind::Canary)
        }
        Change::Abort => ctx.abort(SwitchKind::Abort, None),
        Change::Pause | Change::Resume => ctx.pause_or_resume(),
        Change::StepAnalysed {
            step,
            step_started,
            analysis,
        } => ctx.step_analysed(*step, *step_started, analysis),
        Change::WatchAnalysed { since, analysis } => ctx.watch_analysed(*since, analysis),
        Change::Request { action, to } => ctx.request(action, *to),
        Change::Approve { id } => {
            let req = open_request(state, id, now)?;
            if req.generation != state.generation {
                return Err(ControlError::PlanStale {
                    expected: req.generation,
                    current: state.generation,
                });
            }
            let inner = Command {
                app: req.app.clone(),
                change: requested_change(req)?,
                emergency: req.emergency,
                reason: Some({
                    let asked = format!("requested by {}, request {id}", req.requested_by);
                    // Both people's words: why it was asked, why approved.
                    let whys: Vec<&str> = [req.reason.as_deref(), cmd.reason.as_deref()]
                        .into_iter()
                        .flatten()
                        .collect();
                    if whys.is_empty() {
                        asked
                    } else {
                        format!("{} ({asked})", whys.join("; approved: "))
                    }
                }),
                actor: cmd.actor.clone(),
                client: cmd.client.clone(),
                expect_generation: None,
            };
            let decision = decide(snapshot, state, config, boot, deploy, &inner, now)?;
            Ok(Decision::Approve {
                id: id.clone(),
                inner: Box::new(decision),
            })
        }
        Change::Deny { id } => {
            open_request(state, id, now)?;
            Ok(Decision::Deny { id: id.clone() })
        }
    }
}

/// The request `id`, when it is still open (pending, not expired).
pub fn open_request<'a>(
    state: &'a State,
    id: &str,
    now: OffsetDateTime,
) -> Result<&'a PendingRequest, ControlError> {
    let req = state
        .requests
        .iter()
        .find(|r| r.id == id)
        .ok_or_else(|| ControlError::UnknownRequest(id.to_string()))?;
    let closed = |detail: String| ControlError::RequestClosed {
        id: id.to_string(),
        detail,
    };
    match req.status {
        RequestStatus::Pending if now >= req.expires_at => Err(closed(format!(
            "expired at {} (control.request_ttl); ask again",
            req.expires_at
        ))),
        RequestStatus::Pending => Ok(req),
        status => Err(closed(format!(
            "was {} already, by {}",
            if status == RequestStatus::Approved {
                "approved"
            } else {
                "denied"
            },
            req.decided_by.as_deref().unwrap_or("someone")
        ))),
    }
}

/// The change a request asks for.
fn requested_change(req: &PendingRequest) -> Result<Change, ControlError> {
    let to = || {
        req.to.ok_or_else(|| {
            ControlError::BadRequest(format!("a {} request needs \"to\"", req.action))
        })
    };
    Ok(match req.action.as_str() {
        "switch" => Change::Switch { to: to()? },
        "canary" => Change::Canary {
            to: to()?,
            steps: None,
            step_interval: None,
        },
        "rollback" => Change::Rollback,
        "promote" => Change::Promote,
        other => {
            return Err(ControlError::BadRequest(format!(
            "unknown action '{other}': a request may ask for switch, rollback, canary or promote"
        )))
        }
    })
}

/// What a request would do, in words, as of the current routing.
pub fn plan(req: &PendingRequest, route: &AppRoute) -> String {
    let app = &req.app;
    let live = route.live;
    let to = req.to.unwrap_or(live.other());
    let how = if req.emergency {
        " as an EMERGENCY (no health gate)"
    } else {
        ""
    };
    match req.action.as_str() {
        "switch" => format!("switch app '{app}' from {live} to {to}{how}"),
        "rollback" => format!("roll app '{app}' back from {live} to {}{how}", live.other()),
        "canary" => format!(
            "start a canary of {to} for app '{app}' (steps {}, {} each){how}",
            route
                .config
                .rollout
                .steps
                .iter()
                .map(|s| format!("{s}%"))
                .collect::<Vec<_>>()
                .join(" "),
            bgproxy_control::duration::format_duration(route.config.rollout.step_interval)
        ),
        _ => format!(
            "promote the rollout of app '{app}': make {} live{how}",
            live.other()
        ),
    }
}

fn app_index(snapshot: &Snapshot, app: &str) -> Result<usize, ControlError> {
    snapshot
        .app_index(app)
        .ok_or_else(|| ControlError::UnknownApp(app.to_string()))
}

/// What every rule reads.
struct Ctx<'a> {
    snapshot: &'a Snapshot,
    state: &'a State,
    config: &'a Config,
    deploy: Option<&'a DeployStatus>,
    cmd: &'a Command,
    now: OffsetDateTime,
}

impl Ctx<'_> {
    fn route(&self) -> Result<(usize, &AppRoute), ControlError> {
        let index = app_index(self.snapshot, &self.cmd.app)?;
        Ok((index, &self.snapshot.apps[index]))
    }

    fn rollout(&self) -> Option<&RolloutStatus> {
        self.state
            .apps
            .get(&self.cmd.app)
            .and_then(|a| a.rollout.as_ref())
    }

    fn existing_rollout(&self) -> Result<&RolloutStatus, ControlError> {
        self.route()?;
        self.rollout()
            .ok_or_else(|| ControlError::NoRollout(self.cmd.app.clone()))
    }

    /// A switch or rollback during a rollout needs emergency (which ends it).
    fn no_rollout_unless_emergency(&self) -> Result<(), ControlError> {
        match self.rollout() {
            Some(r) if !self.cmd.emergency => Err(ControlError::RolloutRunning {
                app: self.cmd.app.clone(),
                detail: r.describe(),
            }),
            _ => Ok(()),
        }
    }

    /// The health gate: every upstream of `to` observed up, unless
    /// emergency.
    fn healthy(&self, route: &AppRoute, to: Color) -> Result<(), ControlError> {
        if self.cmd.emergency {
            return Ok(());
        }
        unhealthy(route, to).map_or(Ok(()), |detail| {
            Err(ControlError::TargetUnhealthy {
                app: self.cmd.app.clone(),
                color: to,
                detail,
            })
        })
    }

    /// The deploy gate: no deploy running on `to`, unless emergency (which
    /// aborts it). Answers whether a deploy is to be aborted.
    fn no_deploy_on(&self, to: Color) -> Result<bool, ControlError> {
        let on_target = self.deploy.filter(|d| d.color == to);
        match on_target {
            Some(d) if !self.cmd.emergency => Err(ControlError::DeployRunning {
                app: self.cmd.app.clone(),
                color: d.color,
                detail: progress(d),
            }),
            Some(_) => Ok(true),
            None => Ok(false),
        }
    }

    fn entry(
        &self,
        from: Color,
        to: Color,
        kind: SwitchKind,
        reason: Option<String>,
    ) -> HistoryEntry {
        HistoryEntry {
            time: self.now,
            from,
            to,
            kind,
            reason,
            actor: self.cmd.actor.clone(),
            client: self.cmd.client.clone(),
        }
    }

    /// The gates of a switch, rollback or promotion to `to`.
    fn switch(&self, to: Color, kind: SwitchKind) -> Result<Decision, ControlError> {
        let (index, route) = self.route()?;
        if to == route.live {
            return Err(ControlError::AlreadyLive {
                app: self.cmd.app.clone(),
                color: to,
            });
        }
        self.healthy(route, to)?;
        let abort_deploy = self.no_deploy_on(to)?;
        let kind = if self.cmd.emergency {
            SwitchKind::Emergency
        } else {
            kind
        };
        Ok(Decision::Switch {
            index,
            entry: self.entry(route.live, to, kind, self.cmd.reason.clone()),
            abort_deploy,
            verdict: None,
        })
    }

    /// Records a request for a human: checked for what can be checked now
    /// (the app, the action, the color); the gates run when it is approved.
    fn request(&self, action: &str, to: Option<Color>) -> Result<Decision, ControlError> {
        let (_, route) = self.route()?;
        let seq = self.state.request_seq + 1;
        let req = PendingRequest {
            id: seq.to_string(),
            app: self.cmd.app.clone(),
            action: action.to_string(),
            to,
            reason: self.cmd.reason.clone(),
            emergency: self.cmd.emergency,
            generation: self.state.generation,
            requested_by: self.cmd.actor.clone(),
            client: self.cmd.client.clone(),
            requested_at: self.now,
            expires_at: self.now + self.config.control.request_ttl,
            status: RequestStatus::Pending,
            decided_by: None,
            decided_at: None,
        };
        requested_change(&req)?;
        if action == "rollback" && rollback_target(self.state, &self.cmd.app).is_none() {
            return Err(ControlError::NothingToRollBack(self.cmd.app.clone()));
        }
        if to == Some(route.live) && matches!(action, "switch" | "canary") {
            return Err(ControlError::AlreadyLive {
                app: self.cmd.app.clone(),
                color: route.live,
            });
        }
        Ok(Decision::Request(Box::new(req)))
    }

    /// Starts a rollout of `to` through `steps` (or the app's).
    fn canary(
        &self,
        to: Color,
        steps: Option<&[u32]>,
        step_interval: Option<std::time::Duration>,
    ) -> Result<Decision, ControlError> {
        let (index, route) = self.route()?;
        if let Some(r) = self.rollout() {
            return Err(ControlError::RolloutRunning {
                app: self.cmd.app.clone(),
                detail: r.describe(),
            });
        }
        if to == route.live {
            return Err(ControlError::AlreadyLive {
                app: self.cmd.app.clone(),
                color: to,
            });
        }
        let steps = match steps {
            Some(s) => crate::config::rollout::steps(s)
                .map_err(|e| ControlError::BadRequest(format!("steps: {e}")))?,
            None => route.config.rollout.steps.clone(),
        };
        let interval = step_interval.unwrap_or(route.config.rollout.step_interval);
        if interval.is_zero() {
            return Err(ControlError::BadRequest(
                "step_interval must be more than 0, like \"1m\"".into(),
            ));
        }
        self.healthy(route, to)?;
        let abort_deploy = self.no_deploy_on(to)?;
        if steps[0] == 100 {
            // Straight to 100%: the rollout completes as it starts.
            return self.switch(to, SwitchKind::Canary);
        }
        Ok(Decision::Rollout {
            index,
            rollout: Some(RolloutStatus {
                to,
                state: RolloutState::Running,
                step: 0,
                percent: steps[0],
                steps,
                step_started: self.now,
                step_interval_ms: interval.as_millis() as u64,
                inconclusive: 0,
                last_analysis: None,
                actor: self.cmd.actor.clone(),
                reason: self.cmd.reason.clone(),
            }),
            event: None,
            abort_deploy,
            verdict: None,
        })
    }

    /// Holds `to` at `percent`: 0 aborts, 100 promotes.
    fn weight(&self, to: Color, percent: u32) -> Result<Decision, ControlError> {
        let (index, route) = self.route()?;
        if percent > 100 {
            return Err(ControlError::BadRequest(format!(
                "percent must be between 0 and 100, not {percent}"
            )));
        }
        if to == route.live {
            return Err(ControlError::BadRequest(format!(
                "{to} is live: weight sets the share of the standby; for {to} at {percent}% ask for {} at {}%",
                to.other(),
                100 - percent
            )));
        }
        match percent {
            0 => self.abort(SwitchKind::Abort, None),
            100 => self.switch(to, SwitchKind::Canary),
            p => {
                self.healthy(route, to)?;
                let abort_deploy = self.no_deploy_on(to)?;
                let rollout = match self.rollout() {
                    Some(r) => RolloutStatus {
                        percent: p as u8,
                        state: RolloutState::Paused,
                        ..r.clone()
                    },
                    None => RolloutStatus {
                        to,
                        state: RolloutState::Paused,
                        step: 0,
                        steps: Vec::new(),
                        percent: p as u8,
                        step_started: self.now,
                        step_interval_ms: route.config.rollout.step_interval.as_millis() as u64,
                        inconclusive: 0,
                        last_analysis: None,
                        actor: self.cmd.actor.clone(),
                        reason: self.cmd.reason.clone(),
                    },
                };
                Ok(Decision::Rollout {
                    index,
                    rollout: Some(rollout),
                    event: None,
                    abort_deploy,
                    verdict: None,
                })
            }
        }
    }

    /// Ends the rollout: the new color's share back to 0, recorded as
    /// `kind` (`abort`, or `automatic` with the numbers in `reason`).
    fn abort(&self, kind: SwitchKind, reason: Option<String>) -> Result<Decision, ControlError> {
        let r = self.existing_rollout()?;
        let (index, route) = self.route()?;
        let reason = reason.or_else(|| self.cmd.reason.clone());
        Ok(Decision::Rollout {
            index,
            rollout: None,
            event: Some(self.entry(r.to, route.live, kind, reason)),
            abort_deploy: false,
            verdict: None,
        })
    }

    fn pause_or_resume(&self) -> Result<Decision, ControlError> {
        let r = self.existing_rollout()?;
        let (index, _) = self.route()?;
        let state_error = |detail: &str| ControlError::RolloutState {
            app: self.cmd.app.clone(),
            detail: detail.to_string(),
        };
        let next = match (&self.cmd.change, r.state) {
            (Change::Pause, RolloutState::Paused) => return Err(state_error("is paused already")),
            (Change::Pause, _) => RolloutStatus {
                state: RolloutState::Paused,
                ..r.clone()
            },
            (_, RolloutState::Running) => return Err(state_error("is running, not paused")),
            _ if r.steps.is_empty() => return Err(state_error(
                "holds a share set by weight and has no steps to go on with: promote or abort it",
            )),
            // The step starts anew: its window begins now.
            _ => RolloutStatus {
                state: RolloutState::Running,
                step_started: self.now,
                inconclusive: 0,
                ..r.clone()
            },
        };
        Ok(Decision::Rollout {
            index,
            rollout: Some(next),
            event: None,
            abort_deploy: false,
            verdict: None,
        })
    }

    /// The end of a rollout step: pass -> the next step (entering 100%
    /// completes the rollout: a switch); inconclusive -> the step again, or
    /// paused after `max_inconclusive` in a row; fail -> aborted with
    /// `auto_rollback`, else paused.
    fn step_analysed(
        &self,
        step: usize,
        step_started: OffsetDateTime,
        analysis: &AnalysisStatus,
    ) -> Result<Decision, ControlError> {
        let (index, route) = self.route()?;
        let r = self
            .rollout()
            .filter(|r| {
                r.state == RolloutState::Running && r.step == step && r.step_started == step_started
            })
            .ok_or_else(|| {
                ControlError::Stale(format!(
                    "the rollout of app '{}' moved on since step {} began",
                    self.cmd.app,
                    step + 1
                ))
            })?;
        let rules = &route.config.analysis;
        let verdict = Some(analysis.result);
        let mut next = RolloutStatus {
            last_analysis: Some(analysis.clone()),
            ..r.clone()
        };
        match analysis.result {
            AnalysisResult::Pass => {
                let n = step + 1;
                if n >= r.steps.len() || r.steps[n] == 100 {
                    if let Some(detail) = unhealthy(route, r.to) {
                        // Completing would switch to a color not all up:
                        // hold for a human instead.
                        next.state = RolloutState::Paused;
                        next.last_analysis = Some(AnalysisStatus {
                            detail: format!("{}; not completed: {detail}", analysis.detail),
                            ..analysis.clone()
                        });
                    } else {
                        let reason = match &r.reason {
                            Some(why) => format!("{why} (every step passed)"),
                            None => "every step passed".into(),
                        };
                        return Ok(Decision::Switch {
                            index,
                            entry: self.entry(route.live, r.to, SwitchKind::Canary, Some(reason)),
                            abort_deploy: false,
                            verdict,
                        });
                    }
                } else {
                    next.step = n;
                    next.percent = r.steps[n];
                    next.step_started = self.now;
                    next.inconclusive = 0;
                }
            }
            AnalysisResult::Inconclusive => {
                next.inconclusive += 1;
                if next.inconclusive >= rules.max_inconclusive {
                    next.state = RolloutState::Paused;
                } else {
                    next.step_started = self.now;
                }
            }
            AnalysisResult::Fail if rules.auto_rollback => {
                let mut d = self.abort(
                    SwitchKind::Automatic,
                    Some(format!(
                        "rollout aborted by analysis at {}%: {}",
                        r.percent, analysis.detail
                    )),
                )?;
                if let Decision::Rollout { verdict: v, .. } = &mut d {
                    *v = verdict;
                }
                return Ok(d);
            }
            AnalysisResult::Fail => next.state = RolloutState::Paused,
        }
        Ok(Decision::Rollout {
            index,
            rollout: Some(next),
            event: None,
            abort_deploy: false,
            verdict,
        })
    }

    /// One window of the watch after the switch at `since`: a failure rolls
    /// back to the previous color with `auto_rollback`, when that color is
    /// healthy and not under deploy.
    fn watch_analysed(
        &self,
        since: OffsetDateTime,
        analysis: &AnalysisStatus,
    ) -> Result<Decision, ControlError> {
        let (index, route) = self.route()?;
        let last = self
            .state
            .apps
            .get(&self.cmd.app)
            .and_then(|a| a.last_switch);
        if last != Some(since) {
            return Err(ControlError::Stale(format!(
                "app '{}' switched again since the watched switch",
                self.cmd.app
            )));
        }
        let observed = |detail: String| {
            Ok(Decision::Observed {
                verdict: analysis.result,
                detail,
            })
        };
        if analysis.result != AnalysisResult::Fail || !route.config.analysis.auto_rollback {
            return observed(analysis.detail.clone());
        }
        let to = route.live.other();
        if let Some(detail) = unhealthy(route, to) {
            return observed(format!(
                "{}; NOT rolled back: the previous color {to} is not healthy ({detail})",
                analysis.detail
            ));
        }
        if self.deploy.is_some_and(|d| d.color == to) {
            return observed(format!(
                "{}; NOT rolled back: a deploy is running on the previous color {to}",
                analysis.detail
            ));
        }
        Ok(Decision::Switch {
            index,
            entry: self.entry(
                route.live,
                to,
                SwitchKind::Automatic,
                Some(format!("automatic rollback: {}", analysis.detail)),
            ),
            abort_deploy: false,
            verdict: Some(analysis.result),
        })
    }
}

/// Why `color` of `route` is not healthy (every upstream observed up), or
/// `None` when it is.
/// With `[[app.routes]]`, every route's pool of `color` counts too, and
/// each unhealthy one is named: `route 'api' (/api/): 10.0.0.24:4000 is
/// down`.
fn unhealthy(route: &AppRoute, color: Color) -> Option<String> {
    let why: Vec<String> = route
        .pools_of(color)
        .filter(|(_, pool)| !pool.all_up())
        .map(|(path_route, pool)| {
            let down = pool
                .upstreams
                .iter()
                .filter(|u| u.health.get() != Health::Up)
                .map(|u| format!("{} is {}", u.name, u.health.get()))
                .collect::<Vec<_>>()
                .join(", ");
            match path_route {
                Some(r) => format!("route '{}' ({}): {down}", r.name, r.prefix),
                None => down,
            }
        })
        .collect();
    (!why.is_empty()).then(|| why.join("; "))
}

/// The color a rollback goes to: the previous live color, which with two
/// colors is the standby. `None` when the app was never switched.
pub fn rollback_target(state: &State, app: &str) -> Option<Color> {
    let record = state.apps.get(app).filter(|a| a.switch_count > 0)?;
    Some(record.live.other())
}

/// The gates of a deploy: the app is known and no deploy of it is running.
pub fn deploy_gate(
    snapshot: &Snapshot,
    deploy: Option<&DeployStatus>,
    app: &str,
) -> Result<usize, ControlError> {
    let index = app_index(snapshot, app)?;
    match deploy {
        Some(d) => Err(ControlError::DeployRunning {
            app: app.to_string(),
            color: d.color,
            detail: progress(d),
        }),
        None => Ok(index),
    }
}

/// The state after `decision` for `app`, decided by `actor` at `now`.
/// Every decision that moves routing or its configuration bumps the
/// generation; requests, deploys and analyses that change nothing do not.
pub fn next_state(
    state: &State,
    app: &str,
    decision: &Decision,
    actor: &str,
    now: OffsetDateTime,
) -> State {
    let mut next = state.clone();
    apply(&mut next, app, decision, actor, now);
    next
}

fn apply(next: &mut State, app: &str, decision: &Decision, actor: &str, now: OffsetDateTime) {
    match decision {
        Decision::Switch { entry, .. } => {
            next.generation += 1;
            next.apps
                .entry(app.to_string())
                .or_insert_with(|| AppState::new(entry.from))
                .record(entry.clone());
        }
        Decision::Rollout { rollout, event, .. } => {
            next.generation += 1;
            if let Some(record) = next.apps.get_mut(app) {
                record.rollout = rollout.clone();
                if let Some(e) = event {
                    record.record_event(e.clone());
                }
            }
        }
        Decision::Reload { config, .. } => {
            next.generation += 1;
            merge_new_apps(next, &config.apps);
        }
        Decision::Request(req) => {
            next.request_seq += 1;
            next.requests.push((**req).clone());
        }
        Decision::Approve { id, inner } => {
            apply(next, app, inner, actor, now);
            close_request(next, id, RequestStatus::Approved, actor, now);
        }
        Decision::Deny { id } => close_request(next, id, RequestStatus::Denied, actor, now),
        Decision::Deploy { .. } | Decision::Observed { .. } => {}
        Decision::DeployFinished(record) => next
            .apps
            .entry(app.to_string())
            .or_insert_with(|| AppState::new(record.color.other()))
            .record_deploy((**record).clone()),
    }
}

/// Marks request `id` decided, and keeps only the newest
/// [`REQUEST_LIMIT`] decided ones (pending ones all stay).
fn close_request(next: &mut State, id: &str, status: RequestStatus, by: &str, at: OffsetDateTime) {
    if let Some(r) = next.requests.iter_mut().find(|r| r.id == id) {
        r.status = status;
        r.decided_by = Some(by.to_string());
        r.decided_at = Some(at);
    }
    let decided = next
        .requests
        .iter()
        .filter(|r| r.status != RequestStatus::Pending)
        .count();
    let mut extra = decided.saturating_sub(REQUEST_LIMIT);
    next.requests.retain(|r| {
        let drop = extra > 0 && r.status != RequestStatus::Pending;
        extra -= usize::from(drop);
        !drop
    });
}

/// Gives every configured app without a state record its `initial_live`.
/// Records of apps no longer configured are kept.
pub fn merge_new_apps(state: &mut State, apps: &[AppConfig]) {
    for app in apps {
        state
            .apps
            .entry(app.name.clone())
            .or_insert_with(|| AppState::new(app.initial_live));
    }
}

/// What a reload from `old` to `new` changes; `boot` is the configuration
/// the process started with, so a restart-only setting changed twice is
/// still reported. `generation` is left 0 for the commit to fill in.
pub fn reload_report(old: &Config, new: &Config, boot: &Config) -> ReloadResponse {
    let names = |c: &Config| c.apps.iter().map(|a| a.name.clone()).collect::<Vec<_>>();
    let (old_names, new_names) = (names(old), names(new));
    ReloadResponse {
        generation: 0,
        added: new_names
            .iter()
            .filter(|n| !old_names.contains(n))
            .cloned()
            .collect(),
        removed: old_names
            .iter()
            .filter(|n| !new_names.contains(n))
            .cloned()
            .collect(),
        changed: new
            .apps
            .iter()
            .filter(|a| old.app(&a.name).is_some_and(|o| o != *a))
            .map(|a| a.name.clone())
            .collect(),
        restart_required: boot.restart_settings().changed(&new.restart_settings()),
    }
}

/// Status of every app of `snapshot`: live color and health from the
/// snapshot, counts from the state, the deploy in progress from `deploy`.
pub fn status<'a>(
    snapshot: &Snapshot,
    state: &State,
    deploy: impl Fn(&str) -> Option<&'a DeployStatus>,
) -> StatusResponse {
    StatusResponse {
        version: env!("CARGO_PKG_VERSION").to_string(),
        // Filled in by the controller, which knows the cluster.
        cluster: None,
        generation: snapshot.generation,
        // Filled in by the control API, which holds the certificates.
        certificates: Vec::new(),
        apps: snapshot
            .apps
            .iter()
            .map(|a| {
                let mut status = app_status(a, state.apps.get(&*a.name));
                status.deploy = deploy(&a.name).cloned();
                status
            })
            .collect(),
    }
}

fn app_status(route: &AppRoute, record: Option<&AppState>) -> AppStatus {
    let pool_status = |pool: &crate::dataplane::routing::Pool, healthy: bool| ColorStatus {
        healthy,
        connections: pool.metrics.active.get().max(0) as u64,
        upstreams: pool
            .upstreams
            .iter()
            .map(|u| {
                let (passes, fails, rise, fall) = u.health.streak();
                UpstreamStatus {
                    addr: u.name.to_string(),
                    health: u.health.get(),
                    passes,
                    fails,
                    rise,
                    fall,
                    since: OffsetDateTime::from_unix_timestamp_nanos(
                        u.health.since_ms() as i128 * 1_000_000,
                    )
                    .unwrap_or(OffsetDateTime::UNIX_EPOCH),
                }
            })
            .collect(),
    };
    // An app's color is healthy (switchable) when every pool of it is: its
    // own and each route's.
    let color = |c: Color| pool_status(route.pool(c), unhealthy(route, c).is_none());
    let routes = route
        .paths
        .iter()
        .map(|r| RouteStatus {
            name: r.name.to_string(),
            path_prefix: r.prefix.to_string(),
            colors: Colors {
                blue: pool_status(r.pool(Color::Blue), r.pool(Color::Blue).all_up()),
                green: pool_status(r.pool(Color::Green), r.pool(Color::Green).all_up()),
            },
        })
        .collect();
    AppStatus {
        name: route.name.to_string(),
        hosts: route.config.hosts.clone(),
        live: route.live,
        standby: route.live.other(),
        switch_count: record.map_or(0, |r| r.switch_count),
        last_switch: record.and_then(|r| r.last_switch),
        deploy: None,
        colors: Colors {
            blue: color(Color::Blue),
            green: color(Color::Green),
        },
        weights: route.weights(),
        rollout: record.and_then(|r| r.rollout.clone()),
        routes,
        trying: Trying {
            preview: route.config.preview.token.is_some(),
            blue_hosts: route.config.preview.hosts[Color::Blue.index()].clone(),
            green_hosts: route.config.preview.hosts[Color::Green.index()].clone(),
            mirror_percent: route.config.mirror.percent,
            verify_checks: route.config.verify.iter().map(|c| c.name.clone()).collect(),
        },
    }
}

/// The app's switch and deploy history, newest last; the `limit` most
/// recent entries of each.
pub fn history(
    snapshot: &Snapshot,
    state: &State,
    app: &str,
    limit: Option<usize>,
) -> Result<HistoryResponse, ControlError> {
    app_index(snapshot, app)?;
    let record = state.apps.get(app);
    Ok(HistoryResponse {
        app: app.to_string(),
        history: newest(record.map(|a| a.history.as_slice()), limit),
        deploys: newest(record.map(|a| a.deploys.as_slice()), limit),
    })
}

/// The `limit` last items (all without a limit).
fn newest<T: Clone>(all: Option<&[T]>, limit: Option<usize>) -> Vec<T> {
    let all = all.unwrap_or_default();
    let skip = limit.map_or(0, |l| all.len().saturating_sub(l));
    all[skip..].to_vec()
}

/// What the rollout driver needs of one app: its rollout, its last switch,
/// its analysis rules and the pools whose counters it reads.
#[derive(Clone, Debug)]
pub struct AppView {
    pub name: String,
    pub live: Color,
    pub rollout: Option<RolloutStatus>,
    /// The newest history entry that made a color live.
    pub last_switch: Option<HistoryEntry>,
    pub analysis: crate::config::AnalysisConfig,
    /// Both colors' pools, indexed by [`Color::index`].
    pub pools: [Arc<crate::dataplane::routing::Pool>; 2],
}

/// The driver's view of every app of `snapshot`.
pub fn views(snapshot: &Snapshot, state: &State) -> Vec<AppView> {
    snapshot
        .apps
        .iter()
        .map(|route| {
            let record = state.apps.get(&*route.name);
            AppView {
                name: route.name.to_string(),
                live: route.live,
                rollout: record.and_then(|r| r.rollout.clone()),
                last_switch: record.and_then(|r| {
                    let at = r.last_switch?;
                    r.history
                        .iter()
                        .rev()
                        .find(|h| h.time == at && h.to == r.live)
                        .cloned()
                }),
                analysis: route.config.analysis.clone(),
                pools: route.pools.clone(),
            }
        })
        .collect()
}

/// `step 2/4 'build', started by ann`, for messages.
pub fn progress(d: &DeployStatus) -> String {
    match &d.step {
        Some(step) => format!(
            "step {}/{} '{step}', started by {}",
            d.step_index, d.steps_total, d.actor
        ),
        None => format!("starting, by {}", d.actor),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use bgproxy_control::api::{DeployResult, SwitchKind};

    const TWO_APPS: &str = r#"
[proxy]
listen = ["127.0.0.1:18080"]
[state]
path = "/var/lib/bgproxy/state.json"
[[app]]
name = "web"
hosts = ["web.example"]
initial_live = "blue"
[app.blue]
upstreams = ["127.0.0.1:3001", "127.0.0.1:3002"]
[app.green]
upstreams = ["127.0.0.1:4001", "127.0.0.1:4002"]
[[app.deploy.steps]]
name = "pull"
run = "true"
[[app]]
name = "api"
hosts = ["api.example"]
initial_live = "green"
[app.blue]
upstreams = ["127.0.0.1:5001"]
[app.green]
upstreams = ["127.0.0.1:6001"]
"#;

    /// A configuration from TOML text (through the real loader).
    fn config(text: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bgproxy.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path).unwrap()
    }

    struct World {
        config: Config,
        snapshot: Snapshot,
        state: State,
        /// The rules' clock.
        now: OffsetDateTime,
    }

    /// Both apps on their `initial_live`, every upstream `unknown`.
    fn world() -> World {
        world_with(TWO_APPS)
    }

    fn world_with(text: &str) -> World {
        let config = config(text);
        let mut state = State::default();
        merge_new_apps(&mut state, &config.apps);
        let apps: Vec<_> = config.apps.iter().cloned().map(Arc::new).collect();
        let snapshot = Snapshot::build(1, &apps, |a| state.apps[a].live, None, &Metrics::new());
        World {
            config,
            snapshot,
            state,
            now: OffsetDateTime::UNIX_EPOCH,
        }
    }

    impl World {
        fn set_health(&self, app: &str, color: Color, health: &[Health]) {
            let pool = self.snapshot.app(app).unwrap().pool(color);
            for (u, h) in pool.upstreams.iter().zip(health) {
                u.health.set(*h);
            }
        }

        fn decide(
            &self,
            cmd: &Command,
            deploy: Option<&DeployStatus>,
        ) -> Result<Decision, ControlError> {
            decide(
                &self.snapshot,
                &self.state,
                &self.config,
                &self.config,
                deploy,
                cmd,
                self.now,
            )
        }

        fn now_later(&mut self) {
            self.now += time::Duration::SECOND;
        }

        /// Commits a decision the way the controller does (state and
        /// snapshot), so a later rule sees it.
        fn commit(&mut self, cmd: &Command, decision: &Decision) {
            self.state = next_state(&self.state, &cmd.app, decision, &cmd.actor, self.now);
            match decision {
                Decision::Switch { index, entry, .. } => {
                    self.snapshot = self.snapshot.with_live(*index, entry.to);
                }
                Decision::Rollout { index, rollout, .. } => {
                    let live = self.snapshot.apps[*index].live;
                    let canary = rollout.as_ref().map_or(0, |r| r.percent);
                    self.snapshot = self
                        .snapshot
                        .with_split(*index, crate::dataplane::routing::Split { live, canary });
                }
                _ => {}
            }
        }
    }

    fn cmd(app: &str, change: Change) -> Command {
        Command {
            reason: Some("why".into()),
            ..Command::new(app, change, "ann", Some("127.0.0.1".into()))
        }
    }

    fn emergency(mut c: Command) -> Command {
        c.emergency = true;
        c
    }

    fn deploying(color: Color) -> DeployStatus {
        DeployStatus {
            id: "web-1".into(),
            color,
            started: OffsetDateTime::UNIX_EPOCH,
            migrate: false,
            actor: "bob".into(),
            step: Some("pull".into()),
            step_index: 1,
            steps_total: 1,
        }
    }

    const UP: [Health; 2] = [Health::Up, Health::Up];

    #[test]
    fn switch_to_a_healthy_standby_is_decided_with_its_history_entry() {
        let w = world();
        w.set_health("web", Color::Green, &UP);
        let Ok(Decision::Switch {
            index,
            entry,
            abort_deploy,
            ..
        }) = w.decide(&cmd("web", Change::Switch { to: Color::Green }), None)
        else {
            panic!("not a switch");
        };
        assert_eq!(w.snapshot.apps[index].name.as_ref(), "web");
        assert_eq!(
            (entry.from, entry.to, entry.kind),
            (Color::Blue, Color::Green, SwitchKind::Switch)
        );
        assert_eq!(
            (entry.actor.as_str(), entry.reason.as_deref()),
            ("ann", Some("why"))
        );
        assert_eq!(entry.client.as_deref(), Some("127.0.0.1"));
        assert!(!abort_deploy);
    }

    #[test]
    fn switch_of_an_unknown_app_is_refused() {
        let e = world()
            .decide(&cmd("nope", Change::Switch { to: Color::Green }), None)
            .unwrap_err();
        assert!(
            matches!(e, ControlError::UnknownApp(ref a) if a == "nope"),
            "{e}"
        );
        assert_eq!((e.status(), e.code()), (404, "unknown_app"));
    }

    #[test]
    fn switch_to_the_live_color_is_refused() {
        let w = world();
        w.set_health("web", Color::Blue, &UP);
        let e = w
            .decide(&cmd("web", Change::Switch { to: Color::Blue }), None)
            .unwrap_err();
        assert!(
            matches!(
                e,
                ControlError::AlreadyLive {
                    color: Color::Blue,
                    ..
                }
            ),
            "{e}"
        );
        // Not even in an emergency.
        let e = w
            .decide(
                &emergency(cmd("web", Change::Switch { to: Color::Blue })),
                None,
            )
            .unwrap_err();
        assert_eq!((e.status(), e.code()), (409, "already_live"));
    }

    #[test]
    fn every_route_of_the_target_color_must_be_up_and_is_named_in_the_refusal() {
        let routed = TWO_APPS.replacen(
            "[[app.deploy.steps]]",
            "[[app.routes]]\nname = \"api\"\npath_prefix = \"/api/\"\n[app.routes.blue]\nupstreams = [\"127.0.0.1:7001\"]\n[app.routes.green]\nupstreams = [\"127.0.0.1:7002\"]\n[[app.deploy.steps]]",
            1,
        );
        let w = world_with(&routed);
        let to_green = cmd("web", Change::Switch { to: Color::Green });
        w.set_health("web", Color::Green, &[Health::Up, Health::Up]);
        let status = |w: &World| status(&w.snapshot, &w.state, |_| None).apps[0].clone();
        assert!(!status(&w).colors.green.healthy, "the route is not up yet");
        let e = w.decide(&to_green, None).unwrap_err();
        assert_eq!((e.status(), e.code()), (409, "target_unhealthy"));
        assert!(
            e.to_string()
                .contains("route 'api' (/api/): 127.0.0.1:7002 is unknown"),
            "{e}"
        );
        let api = w.snapshot.app("web").unwrap().paths.by_name("api").unwrap();
        api.pool(Color::Green).upstreams[0].health.set(Health::Down);
        w.set_health("web", Color::Green, &[Health::Up, Health::Down]);
        let e = w.decide(&to_green, None).unwrap_err().to_string();
        assert!(
            e.contains("127.0.0.1:4002 is down; route 'api' (/api/): 127.0.0.1:7002 is down"),
            "{e}"
        );
        api.pool(Color::Green).upstreams[0].health.set(Health::Up);
        w.set_health("web", Color::Green, &[Health::Up, Health::Up]);
        assert!(matches!(
            w.decide(&to_green, None),
            Ok(Decision::Switch { .. })
        ));
        let s = status(&w);
        assert!(s.colors.green.healthy);
        assert_eq!(s.routes.len(), 1);
        let r = &s.routes[0];
        assert_eq!((r.name.as_str(), r.path_prefix.as_str()), ("api", "/api/"));
        assert!(r.colors.green.healthy && !r.colors.blue.healthy);
        assert_eq!(r.colors.green.upstreams[0].addr, "127.0.0.1:7002");
    }

    #[test]
    fn switch_to_a_color_never_checked_or_partly_down_is_refused() {
        let w = world();
        let to_green = cmd("web", Change::Switch { to: Color::Green });
        // Never checked: unknown is not healthy.
        let e = w.decide(&to_green, None).unwrap_err();
        assert!(matches!(e, ControlError::TargetUnhealthy { .. }), "{e}");
        assert!(e.to_string().contains("127.0.0.1:4001 is unknown"), "{e}");
        // One of two down: the detail names only that one.
        w.set_health("web", Color::Green, &[Health::Up, Health::Down]);
        let e = w.decide(&to_green, None).unwrap_err();
        assert!(e.to_string().contains("127.0.0.1:4002 is down"), "{e}");
        assert!(!e.to_string().contains("4001"), "{e}");
        assert_eq!((e.status(), e.code()), (409, "target_unhealthy"));
    }

    #[test]
    fn emergency_skips_the_health_gate_and_is_recorded_as_emergency() {
        let w = world();
        w.set_health("web", Color::Green, &[Health::Down, Health::Down]);
        let Ok(Decision::Switch { entry, .. }) = w.decide(
            &emergency(cmd("web", Change::Switch { to: Color::Green })),
            None,
        ) else {
            panic!("emergency switch refused");
        };
        assert_eq!(entry.kind, SwitchKind::Emergency);
    }

    #[test]
    fn switch_onto_a_color_under_deploy_is_refused_unless_emergency_which_aborts_it() {
        let w = world();
        w.set_health("web", Color::Green, &UP);
        let deploy = deploying(Color::Green);
        let to_green = cmd("web", Change::Switch { to: Color::Green });
        let e = w.decide(&to_green, Some(&deploy)).unwrap_err();
        assert!(
            matches!(
                e,
                ControlError::DeployRunning {
                    color: Color::Green,
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string().contains("step 1/1 'pull', started by bob"),
            "{e}"
        );
        assert_eq!((e.status(), e.code()), (409, "deploy_running"));

        let Ok(Decision::Switch { abort_deploy, .. }) =
            w.decide(&emergency(to_green), Some(&deploy))
        else {
            panic!("emergency switch refused");
        };
        assert!(abort_deploy);
    }

    #[test]
    fn a_deploy_on_the_other_color_does_not_gate_a_switch() {
        let w = world();
        w.set_health("web", Color::Green, &UP);
        let Ok(Decision::Switch { abort_deploy, .. }) = w.decide(
            &cmd("web", Change::Switch { to: Color::Green }),
            Some(&deploying(Color::Blue)),
        ) else {
            panic!("switch refused");
        };
        assert!(!abort_deploy);
    }

    #[test]
    fn rollback_needs_a_previous_switch_and_goes_back_to_its_color() {
        let mut w = world();
        let e = w.decide(&cmd("web", Change::Rollback), None).unwrap_err();
        assert!(matches!(e, ControlError::NothingToRollBack(_)), "{e}");
        assert_eq!((e.status(), e.code()), (409, "nothing_to_roll_back"));
        // Unknown app is named as such, not as "never switched".
        let e = w.decide(&cmd("nope", Change::Rollback), None).unwrap_err();
        assert!(matches!(e, ControlError::UnknownApp(_)), "{e}");

        w.set_health("web", Color::Green, &UP);
        let switch = cmd("web", Change::Switch { to: Color::Green });
        let decision = w.decide(&switch, None).unwrap();
        w.commit(&switch, &decision);
        assert_eq!(rollback_target(&w.state, "web"), Some(Color::Blue));

        // The rollback has the health gate of a switch.
        let e = w.decide(&cmd("web", Change::Rollback), None).unwrap_err();
        assert!(
            matches!(
                e,
                ControlError::TargetUnhealthy {
                    color: Color::Blue,
                    ..
                }
            ),
            "{e}"
        );
        w.set_health("web", Color::Blue, &UP);
        let Ok(Decision::Switch { entry, .. }) = w.decide(&cmd("web", Change::Rollback), None)
        else {
            panic!("rollback refused");
        };
        assert_eq!(
            (entry.from, entry.to, entry.kind),
            (Color::Green, Color::Blue, SwitchKind::Rollback)
        );
        let Ok(Decision::Switch { entry, .. }) =
            w.decide(&emergency(cmd("web", Change::Rollback)), None)
        else {
            panic!("emergency rollback refused");
        };
        assert_eq!(entry.kind, SwitchKind::Emergency);
    }

    #[test]
    fn a_committed_switch_moves_the_state_and_only_its_app() {
        let mut w = world();
        w.set_health("web", Color::Green, &UP);
        let switch = cmd("web", Change::Switch { to: Color::Green });
        let decision = w.decide(&switch, None).unwrap();
        let before = w.state.clone();
        w.commit(&switch, &decision);
        let web = &w.state.apps["web"];
        assert_eq!((web.live, web.switch_count), (Color::Green, 1));
        assert_eq!(web.last_switch, Some(OffsetDateTime::UNIX_EPOCH));
        assert_eq!(web.history.len(), 1);
        assert_eq!(w.state.apps["api"], before.apps["api"]);
        assert_eq!(w.snapshot.app("web").unwrap().live, Color::Green);
        // Then green is live: a second switch to it is refused.
        let e = w.decide(&switch, None).unwrap_err();
        assert!(matches!(e, ControlError::AlreadyLive { .. }), "{e}");
    }

    #[test]
    fn deploy_gate_allows_one_deploy_per_known_app() {
        let w = world();
        let start = cmd("web", Change::DeployStarted { migrate: false });
        assert!(matches!(
            w.decide(&start, None),
            Ok(Decision::Deploy { migrate: false, .. })
        ));
        let e = w
            .decide(&start, Some(&deploying(Color::Green)))
            .unwrap_err();
        assert!(matches!(e, ControlError::DeployRunning { .. }), "{e}");
        let e = w
            .decide(&cmd("nope", Change::DeployStarted { migrate: true }), None)
            .unwrap_err();
        assert!(matches!(e, ControlError::UnknownApp(_)), "{e}");
        // A deploy start writes nothing.
        let decision = w.decide(&start, None).unwrap();
        assert_eq!(
            next_state(&w.state, "web", &decision, "ann", w.now),
            w.state
        );
    }

    #[test]
    fn a_finished_deploy_is_recorded_in_its_app() {
        let w = world();
        let record = DeployRecord {
            id: "web-1".into(),
            time: OffsetDateTime::UNIX_EPOCH,
            color: Color::Green,
            result: DeployResult::Failed,
            migrate: false,
            steps: vec![],
            duration_ms: 5,
            actor: "bob".into(),
            error: Some("step 'pull' failed".into()),
            log: "x.log".into(),
        };
        let finished = cmd("web", Change::DeployFinished(Box::new(record.clone())));
        let decision = w.decide(&finished, None).unwrap();
        let next = next_state(&w.state, "web", &decision, "ann", w.now);
        assert_eq!(next.apps["web"].deploys, vec![record]);
        // Neither the live color nor the switch count moves.
        assert_eq!(next.apps["web"].live, Color::Blue);
        assert_eq!(next.apps["web"].switch_count, 0);
    }

    #[test]
    fn reload_reports_added_removed_and_changed_apps() {
        let w = world();
        let new = config(
            &TWO_APPS
                .replace("name = \"api\"", "name = \"shop\"")
                .replace("127.0.0.1:4002", "127.0.0.1:4003"),
        );
        let report = reload_report(&w.config, &new, &w.config);
        assert_eq!(report.added, ["shop"]);
        assert_eq!(report.removed, ["api"]);
        assert_eq!(report.changed, ["web"]);
        assert!(
            report.restart_required.is_empty(),
            "{:?}",
            report.restart_required
        );

        // The new app gets its initial_live; the removed one keeps its record.
        let reload = cmd("", Change::Reload(Arc::new(new)));
        let decision = w.decide(&reload, None).unwrap();
        let next = next_state(&w.state, "", &decision, "ann", w.now);
        assert_eq!(next.apps["shop"].live, Color::Green);
        assert!(next.apps.contains_key("api"));
    }

    #[test]
    fn reload_reports_restart_only_settings_against_the_boot_config() {
        let w = world();
        let moved = config(&TWO_APPS.replace("127.0.0.1:18080", "127.0.0.1:18081"));
        let report = reload_report(&w.config, &moved, &w.config);
        assert_eq!(report.restart_required, ["proxy.listen"]);
        assert!(report.changed.is_empty());
        // Reloading again with the moved listener still reports it: the
        // process still listens where it started.
        let report = reload_report(&moved, &moved, &w.config);
        assert_eq!(report.restart_required, ["proxy.listen"]);
        // The key the hand-written list used to miss.
        let buffered = config(&TWO_APPS.replace(
            "listen = [\"127.0.0.1:18080\"]",
            "listen = [\"127.0.0.1:18080\"]\nread_buffer = \"16KiB\"",
        ));
        let report = reload_report(&w.config, &buffered, &w.config);
        assert_eq!(report.restart_required, ["proxy.read_buffer"]);
    }

    #[test]
    fn reload_reports_an_app_whose_limits_alone_changed() {
        let w = world();
        let new =
            config(&TWO_APPS.replace("name = \"api\"", "name = \"api\"\nmax_body = \"2MiB\""));
        let report = reload_report(&w.config, &new, &w.config);
        assert_eq!(report.changed, ["api"]);
        assert!(report.restart_required.is_empty());
    }

    #[test]
    fn status_shows_live_standby_counts_and_the_running_deploy() {
        let mut w = world();
        w.set_health("web", Color::Green, &UP);
        let switch = cmd("web", Change::Switch { to: Color::Green });
        let decision = w.decide(&switch, None).unwrap();
        w.commit(&switch, &decision);
        let deploy = deploying(Color::Blue);
        let status = status(&w.snapshot, &w.state, |app| {
            (app == "web").then_some(&deploy)
        });
        let web = status.apps.iter().find(|a| a.name == "web").unwrap();
        assert_eq!(
            (web.live, web.standby, web.switch_count),
            (Color::Green, Color::Blue, 1)
        );
        assert!(web.colors.green.healthy && !web.colors.blue.healthy);
        assert_eq!(web.deploy.as_ref().map(|d| d.id.as_str()), Some("web-1"));
        let api = status.apps.iter().find(|a| a.name == "api").unwrap();
        assert_eq!(
            (api.live, api.switch_count, api.deploy.is_none()),
            (Color::Green, 0, true)
        );
    }

    #[test]
    fn history_keeps_the_newest_entries_up_to_the_limit() {
        let mut w = world();
        w.set_health("web", Color::Green, &UP);
        w.set_health("web", Color::Blue, &UP);
        for to in [Color::Green, Color::Blue, Color::Green] {
            let switch = cmd("web", Change::Switch { to });
            let decision = w.decide(&switch, None).unwrap();
            w.commit(&switch, &decision);
        }
        let all = history(&w.snapshot, &w.state, "web", None).unwrap();
        assert_eq!(all.history.len(), 3);
        let last = history(&w.snapshot, &w.state, "web", Some(2)).unwrap();
        let to: Vec<_> = last.history.iter().map(|h| h.to).collect();
        assert_eq!(to, [Color::Blue, Color::Green]);
        let e = history(&w.snapshot, &w.state, "nope", None).unwrap_err();
        assert!(matches!(e, ControlError::UnknownApp(_)));
    }

    // Rollouts.

    fn decide_commit(w: &mut World, c: &Command) -> Decision {
        let d = w
            .decide(c, None)
            .unwrap_or_else(|e| panic!("{:?} refused: {e}", c.change));
        w.commit(c, &d);
        d
    }

    fn step_verdict(w: &mut World, result: AnalysisResult) -> Decision {
        let c = analysed(w, result);
        decide_commit(w, &c)
    }

    fn canary(steps: Option<Vec<u32>>) -> Command {
        cmd(
            "web",
            Change::Canary {
                to: Color::Green,
                steps,
                step_interval: None,
            },
        )
    }

    trait CloneTo {
        fn clone_to(&self, to: Color) -> Command;
    }

    impl CloneTo for Command {
        /// The same canary to another color.
        fn clone_to(&self, to: Color) -> Command {
            let mut c = self.clone();
            if let Change::Canary { to: t, .. } = &mut c.change {
                *t = to;
            }
            c
        }
    }

    fn rollout(w: &World) -> Option<&RolloutStatus> {
        w.state.apps["web"].rollout.as_ref()
    }

    fn analysed(w: &World, result: AnalysisResult) -> Command {
        let r = rollout(w).unwrap();
        cmd(
            "web",
            Change::StepAnalysed {
                step: r.step,
                step_started: r.step_started,
                analysis: Box::new(verdict(result)),
            },
        )
    }

    fn verdict(result: AnalysisResult) -> AnalysisStatus {
        AnalysisStatus {
            result,
            requests: 100,
            error_ratio: 0.2,
            p99_ms: Some(5.0),
            baseline_p99_ms: Some(4.0),
            detail: "error ratio 0.200".into(),
            at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn canary_has_the_gates_of_a_switch_and_checks_its_steps() {
        let w = world();
        let e = w.decide(&canary(None), None).unwrap_err();
        assert!(matches!(e, ControlError::TargetUnhealthy { .. }), "{e}");
        w.set_health("web", Color::Green, &UP);
        let e = w
            .decide(
                &cmd(
                    "web",
                    Change::Canary {
                        to: Color::Blue,
                        steps: None,
                        step_interval: None,
                    },
                ),
                None,
            )
            .unwrap_err();
        assert!(matches!(e, ControlError::AlreadyLive { .. }), "{e}");
        let e = w
            .decide(&canary(Some(vec![50, 25, 100])), None)
            .unwrap_err();
        assert_eq!((e.status(), e.code()), (400, "bad_request"));
        assert!(e.to_string().contains("25 comes after 50"), "{e}");
        let e = w
            .decide(&canary(None), Some(&deploying(Color::Green)))
            .unwrap_err();
        assert!(matches!(e, ControlError::DeployRunning { .. }), "{e}");
        let Ok(Decision::Rollout {
            rollout: Some(r), ..
        }) = w.decide(&canary(None), None)
        else {
            panic!("canary refused");
        };
        assert_eq!(
            (r.to, r.state, r.step, r.percent),
            (Color::Green, RolloutState::Running, 0, 10)
        );
        assert_eq!(r.steps, [10, 25, 50, 100]);
        assert_eq!(r.step_interval_ms, 60_000);
    }

    #[test]
    fn one_rollout_at_a_time_and_switches_wait_for_it_unless_emergency() {
        let mut w = world();
        w.set_health("web", Color::Green, &UP);
        decide_commit(&mut w, &canary(None));
        assert_eq!(w.snapshot.app("web").unwrap().canary, 10);
        for c in [
            canary(None),
            cmd("web", Change::Switch { to: Color::Green }),
            cmd("web", Change::DeployStarted { migrate: false }),
        ] {
            let e = w.decide(&c, None).unwrap_err();
            assert_eq!(
                (e.status(), e.code()),
                (409, "rollout_running"),
                "{:?}",
                c.change
            );
            assert!(
                e.to_string().contains("green at 10%, step 1/4, running"),
                "{e}"
            );
        }
        // An emergency switch ends the rollout.
        decide_commit(
            &mut w,
            &emergency(cmd("web", Change::Switch { to: Color::Green })),
        );
        assert!(rollout(&w).is_none());
        let route = w.snapshot.app("web").unwrap();
        assert_eq!((route.live, route.canary), (Color::Green, 0));
    }

    #[test]
    fn passing_steps_move_on_and_entering_100_completes_as_a_canary_switch() {
        let mut w = world();
        w.set_health("web", Color::Green, &UP);
        decide_commit(&mut w, &canary(Some(vec![10, 50, 100])));
        let first = rollout(&w).unwrap().clone();
        step_verdict(&mut w, AnalysisResult::Pass);
        let r = rollout(&w).unwrap();
        assert_eq!((r.step, r.percent), (1, 50));
        assert_eq!(
            r.last_analysis.as_ref().unwrap().result,
            AnalysisResult::Pass
        );
        assert_eq!(w.snapshot.app("web").unwrap().canary, 50);
        // A verdict on a step that is over is stale and changes nothing.
        let stale = cmd(
            "web",
            Change::StepAnalysed {
                step: first.step,
                step_started: first.step_started,
                analysis: Box::new(verdict(AnalysisResult::Fail)),
            },
        );
        let e = w.decide(&stale, None).unwrap_err();
        assert!(matches!(e, ControlError::Stale(_)), "{e}");
        let Decision::Switch { entry, verdict, .. } = step_verdict(&mut w, AnalysisResult::Pass)
        else {
            panic!("the last step did not complete the rollout");
        };
        assert_eq!(
            (entry.from, entry.to, entry.kind),
            (Color::Blue, Color::Green, SwitchKind::Canary)
        );
        assert_eq!(verdict, Some(AnalysisResult::Pass));
        let web = &w.state.apps["web"];
        assert_eq!(
            (web.live, web.switch_count, web.rollout.is_none()),
            (Color::Green, 1, true)
        );
    }

    #[test]
    fn inconclusive_windows_hold_the_step_then_pause() {
        let mut w = world();
        w.set_health("web", Color::Green, &UP);
        decide_commit(&mut w, &canary(None));
        for n in 1..=2 {
            step_verdict(&mut w, AnalysisResult::Inconclusive);
            let r = rollout(&w).unwrap();
            assert_eq!(
                (r.step, r.state, r.inconclusive),
                (0, RolloutState::Running, n)
            );
        }
        step_verdict(&mut w, AnalysisResult::Inconclusive);
        assert_eq!(rollout(&w).unwrap().state, RolloutState::Paused);
        // Paused: no more verdicts are taken; promote finishes it.
        let e = w
            .decide(&analysed(&w, AnalysisResult::Pass), None)
            .unwrap_err();
        assert!(matches!(e, ControlError::Stale(_)), "{e}");
        let Decision::Switch { entry, .. } = decide_commit(&mut w, &cmd("web", Change::Promote))
        else {
            panic!("promote did not switch");
        };
        assert_eq!(entry.kind, SwitchKind::Canary);
    }

    #[test]
    fn a_failed_step_pauses_or_with_auto_rollback_aborts_with_the_numbers() {
        let mut w = world();
        w.set_health("web", Color::Green, &UP);
        decide_commit(&mut w, &canary(None));
        step_verdict(&mut w, AnalysisResult::Fail);
        assert_eq!(rollout(&w).unwrap().state, RolloutState::Paused);

        let auto = TWO_APPS.replace(
            "[[app.deploy.steps]]",
            "[app.analysis]\nauto_rollback = true\n[[app.deploy.steps]]",
        );
        let mut w = world_with(&auto);
        w.set_health("web", Color::Green, &UP);
        decide_commit(&mut w, &canary(None));
        let Decision::Rollout {
            rollout: None,
            event: Some(e),
            verdict,
            ..
        } = step_verdict(&mut w, AnalysisResult::Fail)
        else {
            panic!("not aborted");
        };
        assert_eq!(
            (e.from, e.to, e.kind),
            (Color::Green, Color::Blue, SwitchKind::Automatic)
        );
        assert!(
            e.reason.as_deref().unwrap().contains("error ratio 0.200"),
            "{e:?}"
        );
        assert_eq!(verdict, Some(AnalysisResult::Fail));
        let web = &w.state.apps["web"];
        assert_eq!(
            (web.live, web.switch_count, web.rollout.is_none()),
            (Color::Blue, 0, true)
        );
        assert_eq!(w.snapshot.app("web").unwrap().canary, 0);
        // An abort is history, not a switch: nothing to roll back.
        assert_eq!(rollback_target(&w.state, "web"), None);
    }

    #[test]
    fn weight_holds_a_share_and_its_bounds_mean_abort_and_promote() {
        let mut w = world();
        w.set_health("web", Color::Green, &UP);
        let weight = |to, percent| cmd("web", Change::Weight { to, percent });
        for (c, why) in [
            (weight(Color::Green, 101), "between 0 and 100"),
            (weight(Color::Blue, 30), "blue is live"),
        ] {
            let e = w.decide(&c, None).unwrap_err();
            assert_eq!(e.status(), 400, "{e}");
            assert!(e.to_string().contains(why), "{e}");
        }
        let e = w.decide(&weight(Color::Green, 0), None).unwrap_err();
        assert!(matches!(e, ControlError::NoRollout(_)), "{e}");
        decide_commit(&mut w, &weight(Color::Green, 30));
        let r = rollout(&w).unwrap();
        assert_eq!(
            (r.percent, r.state, r.steps.is_empty()),
            (30, RolloutState::Paused, true)
        );
        assert_eq!(w.snapshot.app("web").unwrap().weights().green, 30);
        // A held share has no steps to resume.
        let e = w.decide(&cmd("web", Change::Resume), None).unwrap_err();
        assert_eq!(e.code(), "rollout_state");
        let Decision::Rollout { event: Some(e), .. } =
            decide_commit(&mut w, &weight(Color::Green, 0))
        else {
            panic!("weight 0 did not abort");
        };
        assert_eq!(e.kind, SwitchKind::Abort);
        decide_commit(&mut w, &weight(Color::Green, 30));
        let Decision::Switch { entry, .. } = decide_commit(&mut w, &weight(Color::Green, 100))
        else {
            panic!("weight 100 did not promote");
        };
        assert_eq!(entry.to, Color::Green);
    }

    #[test]
    fn pause_and_resume_move_between_states_and_resume_restarts_the_step() {
        let mut w = world();
        w.set_health("web", Color::Green, &UP);
        for c in [
            Change::Pause,
            Change::Resume,
            Change::Promote,
            Change::Abort,
        ] {
            let e = w.decide(&cmd("web", c), None).unwrap_err();
            assert!(matches!(e, ControlError::NoRollout(_)), "{e}");
        }
        decide_commit(&mut w, &canary(None));
        let e = w.decide(&cmd("web", Change::Resume), None).unwrap_err();
        assert!(e.to_string().contains("is running, not paused"), "{e}");
        decide_commit(&mut w, &cmd("web", Change::Pause));
        let e = w.decide(&cmd("web", Change::Pause), None).unwrap_err();
        assert!(e.to_string().contains("paused already"), "{e}");
        w.now_later();
        decide_commit(&mut w, &cmd("web", Change::Resume));
        let r = rollout(&w).unwrap();
        assert_eq!(r.state, RolloutState::Running);
        assert_eq!(r.step_started, w.now);
        let Decision::Rollout { event: Some(e), .. } =
            decide_commit(&mut w, &cmd("web", Change::Abort))
        else {
            panic!("abort");
        };
        assert_eq!(
            (e.kind, e.reason.as_deref()),
            (SwitchKind::Abort, Some("why"))
        );
    }

    #[test]
    fn a_failed_watch_rolls_back_only_with_auto_rollback_and_a_healthy_previous_color() {
        let auto = TWO_APPS.replace(
            "[[app.deploy.steps]]",
            "[app.analysis]\nauto_rollback = true\n[[app.deploy.steps]]",
        );
        let mut w = world_with(&auto);
        w.set_health("web", Color::Green, &UP);
        decide_commit(&mut w, &cmd("web", Change::Switch { to: Color::Green }));
        let since = w.state.apps["web"].last_switch.unwrap();
        let watch = |result, since| {
            cmd(
                "web",
                Change::WatchAnalysed {
                    since,
                    analysis: Box::new(verdict(result)),
                },
            )
        };
        assert!(matches!(
            w.decide(&watch(AnalysisResult::Pass, since), None),
            Ok(Decision::Observed {
                verdict: AnalysisResult::Pass,
                ..
            })
        ));
        // Blue (the previous color) was never checked: no rollback to it.
        let Ok(Decision::Observed { detail, .. }) =
            w.decide(&watch(AnalysisResult::Fail, since), None)
        else {
            panic!("rolled back to an unhealthy color");
        };
        assert!(detail.contains("NOT rolled back"), "{detail}");
        w.set_health("web", Color::Blue, &UP);
        let e = w
            .decide(
                &watch(
                    AnalysisResult::Fail,
                    OffsetDateTime::UNIX_EPOCH - time::Duration::HOUR,
                ),
                None,
            )
            .unwrap_err();
        assert!(matches!(e, ControlError::Stale(_)), "{e}");
        let Decision::Switch { entry, .. } =
            decide_commit(&mut w, &watch(AnalysisResult::Fail, since))
        else {
            panic!("no automatic rollback");
        };
        assert_eq!((entry.to, entry.kind), (Color::Blue, SwitchKind::Automatic));
        assert!(entry
            .reason
            .unwrap()
            .starts_with("automatic rollback: error ratio"));
    }

    // Generations, plans and requests.

    fn request(action: &str, to: Option<Color>) -> Command {
        cmd(
            "web",
            Change::Request {
                action: action.into(),
                to,
            },
        )
    }

    fn by(mut c: Command, actor: &str) -> Command {
        c.actor = actor.into();
        c
    }

    #[test]
    fn routing_changes_bump_the_generation_and_a_stale_plan_is_refused() {
        let mut w = world();
        w.set_health("web", Color::Green, &UP);
        w.set_health("web", Color::Blue, &UP);
        let g0 = w.state.generation;
        // A request, a deploy start and a pass of the watch move nothing.
        decide_commit(&mut w, &request("switch", Some(Color::Green)));
        assert_eq!(w.state.generation, g0);
        decide_commit(&mut w, &cmd("web", Change::Switch { to: Color::Green }));
        assert_eq!(w.state.generation, g0 + 1);
        decide_commit(&mut w, &canary(None).clone_to(Color::Blue));
        assert_eq!(w.state.generation, g0 + 2);

        let mut stale = cmd("web", Change::Abort);
        stale.expect_generation = Some(g0 + 1);
        let e = w.decide(&stale, None).unwrap_err();
        assert_eq!((e.status(), e.code()), (409, "plan_stale"));
        assert!(
            e.to_string().contains(&format!("generation {}", g0 + 1)),
            "{e}"
        );
        stale.expect_generation = Some(g0 + 2);
        decide_commit(&mut w, &stale);
    }

    #[test]
    fn a_request_changes_nothing_until_approved_and_is_approved_once() {
        let mut w = world();
        w.set_health("web", Color::Green, &UP);
        let Decision::Request(req) =
            decide_commit(&mut w, &by(request("switch", Some(Color::Green)), "bot"))
        else {
            panic!("not recorded");
        };
        assert_eq!(
            (req.id.as_str(), req.status, req.generation),
            ("1", RequestStatus::Pending, w.state.generation)
        );
        assert_eq!(req.expires_at, w.now + time::Duration::HOUR);
        assert_eq!(w.state.apps["web"].live, Color::Blue);
        assert_eq!(w.state.request_seq, 1);

        let approve = by(cmd("web", Change::Approve { id: "1".into() }), "ann");
        let Decision::Approve { inner, .. } = decide_commit(&mut w, &approve) else {
            panic!("not approved");
        };
        let Decision::Switch { entry, .. } = *inner else {
            panic!("the approval did not switch");
        };
        assert_eq!((entry.to, entry.actor.as_str()), (Color::Green, "ann"));
        assert!(entry
            .reason
            .unwrap()
            .contains("requested by bot, request 1"));
        let r = &w.state.requests[0];
        assert_eq!(
            (r.status, r.decided_by.as_deref()),
            (RequestStatus::Approved, Some("ann"))
        );
        // Twice: closed. Deny after approval: closed. Unknown: 404.
        for c in [approve.clone(), cmd("web", Change::Deny { id: "1".into() })] {
            let e = w.decide(&c, None).unwrap_err();
            assert_eq!((e.status(), e.code()), (409, "request_closed"), "{e}");
            assert!(e.to_string().contains("approved already, by ann"), "{e}");
        }
        let e = w
            .decide(&cmd("web", Change::Approve { id: "9".into() }), None)
            .unwrap_err();
        assert_eq!((e.status(), e.code()), (404, "unknown_request"));
    }

    #[test]
    fn an_approval_is_bound_to_its_generation_and_its_expiry() {
        let mut w = world();
        w.set_health("web", Color::Green, &UP);
        w.set_health("web", Color::Blue, &UP);
        decide_commit(&mut w, &request("switch", Some(Color::Green)));
        decide_commit(&mut w, &request("promote", None));
        // Someone switches meanwhile: the first request's plan is stale.
        decide_commit(&mut w, &cmd("web", Change::Switch { to: Color::Green }));
        let e = w
            .decide(&cmd("web", Change::Approve { id: "1".into() }), None)
            .unwrap_err();
        assert_eq!(e.code(), "plan_stale", "{e}");
        // A new one made now can be denied; an expired one cannot be approved.
        decide_commit(&mut w, &request("rollback", None));
        let Decision::Deny { .. } =
            decide_commit(&mut w, &cmd("web", Change::Deny { id: "3".into() }))
        else {
            panic!("not denied");
        };
        assert_eq!(w.state.requests[2].status, RequestStatus::Denied);
        decide_commit(&mut w, &request("rollback", None));
        w.now += time::Duration::HOUR;
        let e = w
            .decide(&cmd("web", Change::Approve { id: "4".into() }), None)
            .unwrap_err();
        assert_eq!(e.code(), "request_closed");
        assert!(e.to_string().contains("expired"), "{e}");
    }

    #[test]
    fn a_request_is_checked_for_what_can_be_checked_now() {
        let w = world();
        for (c, code) in [
            (request("switch", None), "bad_request"),
            (request("explode", None), "bad_request"),
            (request("switch", Some(Color::Blue)), "already_live"),
            (request("rollback", None), "nothing_to_roll_back"),
            (
                cmd(
                    "nope",
                    Change::Request {
                        action: "rollback".into(),
                        to: None,
                    },
                ),
                "unknown_app",
            ),
        ] {
            let e = w.decide(&c, None).unwrap_err();
            assert_eq!(e.code(), code, "{:?}: {e}", c.change);
        }
    }

    #[test]
    fn decided_requests_are_kept_up_to_the_limit_and_pending_ones_always() {
        let mut w = world();
        decide_commit(&mut w, &request("promote", None));
        for i in 0..(REQUEST_LIMIT + 5) {
            decide_commit(&mut w, &request("promote", None));
            let id = (i + 2).to_string();
            decide_commit(&mut w, &cmd("web", Change::Deny { id }));
        }
        let pending: Vec<_> = w
            .state
            .requests
            .iter()
            .filter(|r| r.status == RequestStatus::Pending)
            .collect();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].id, "1");
        assert_eq!(w.state.requests.len(), REQUEST_LIMIT + 1);
        assert_eq!(
            w.state.requests.last().unwrap().id,
            (REQUEST_LIMIT + 6).to_string()
        );
    }

    #[test]
    fn status_says_how_the_standby_can_be_tried() {
        let text = TWO_APPS.replace(
            "[[app.deploy.steps]]",
            "[app.preview]\ngreen_hosts = [\"green.web.example\"]\n[app.mirror]\npercent = 10\n\
             [[app.verify]]\nname = \"home\"\npath = \"/\"\n[[app.deploy.steps]]",
        );
        let w = world_with(&text);
        let status = status(&w.snapshot, &w.state, |_| None);
        let web = status.apps.iter().find(|a| a.name == "web").unwrap();
        assert_eq!(
            web.trying,
            Trying {
                preview: false,
                blue_hosts: vec![],
                green_hosts: vec!["green.web.example".into()],
                mirror_percent: 10,
                verify_checks: vec!["home".into()],
            }
        );
        let api = status.apps.iter().find(|a| a.name == "api").unwrap();
        assert_eq!(api.trying, Trying::default());
    }
}
