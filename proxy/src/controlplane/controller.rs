//! The controller: the one writer of routing and state.
//!
//! Every change is a [`Command`] handed to [`Controller::apply`], shaped as
//! a reducer:
//!
//! ```text
//! apply(cmd) -> lock -> rules::decide (pure: gates, targets, reports)
//!            -> commit: persist the next state (fsync) -> publish the
//!               snapshot (the only `store`) -> metrics -> audit -> answer
//! ```
//!
//! The API, signals, the config watcher, start-up and the deploy runner's
//! bookkeeping all come through here; nothing else calls `store` or writes
//! the audit log (see [`super::audit`] for why its line is fsync'd just
//! after the answer). A refused or failed command changes nothing and is
//! audited and counted all the same.
//!
//! Changes are serialised by one async mutex around [`Inner`] (there is one
//! state file, so writes are serial anyway). The data plane never takes that
//! lock: it only `load`s the snapshot. Every published snapshot's generation
//! is sent on a watch channel, which the health checker follows.
//!
//! Deploys: the controller accepts one ([`Change::DeployStarted`]), builds
//! its [`DeployPlan`] and starts [`deploy::run`] in a task of its own; it
//! follows the run's events (for `status`), forwards them to the caller,
//! and commits the returned record as [`Change::DeployFinished`] before the
//! caller's event stream ends.
//!
//! The state file is also guarded by an exclusive file lock held while this
//! controller is the writer: a second bgproxy on the same state refuses to
//! start, and during a graceful upgrade the new process loads the state only
//! after the old one has stopped accepting changes ([`Controller::close`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bgproxy_control::api::{
    AnalysisResult, AppStatus, Color, DeployEvent, DeployResult, DeployStatus, HistoryResponse,
    PendingRequest, ReloadResponse, RequestCreated, RequestStatus, RequestsResponse,
    RolloutResponse, StatusResponse, SwitchKind, SwitchResponse, VerifyResponse, Weights,
};
use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch, Mutex};
use tracing::{debug, error, info, warn};

use super::audit::{AuditLog, AuditRecord};
use super::backend::{BackendError, FileBackend, Revision, StateBackend};
use super::change::{Attempt, Change, Command, ControlError};
use super::cluster::{AppCounts, Cluster};
use super::deploy::{self, DeployPlan};
use super::events::{EventType, Events};
use super::rules::{self, Decision};
use super::state::{State, StateError, StateLock, StateStore};
use super::verify::{self, Verifier};
use crate::config::{AppConfig, Config, ConfigError};
use crate::dataplane::routing::{Routing, Snapshot, Split};
use crate::metrics::Metrics;

/// What a committed command produced.
pub enum Outcome {
    /// A switch or rollback is on disk and in force.
    Switched(SwitchResponse),
    /// A configuration is in force.
    Reloaded(ReloadResponse),
    /// A deploy runs: its events, ending after its record is committed.
    DeployStarted(mpsc::UnboundedReceiver<DeployEvent>),
    /// A finished deploy is recorded.
    DeployRecorded,
    /// A rollout started, moved, paused, resumed or ended.
    Rollout(RolloutResponse),
    /// An analysis window changed nothing.
    Observed,
    /// A request waits for a human.
    Requested(RequestCreated),
    /// A request was denied.
    Denied(Option<Box<PendingRequest>>),
}

/// What the writer lock protects.
struct Inner {
    state: State,
    /// The configuration the routing was built from.
    config: Arc<Config>,
    /// The file lock; `None` once closed (no more changes accepted).
    lock: Option<StateLock>,
    /// Deploys in progress, by app.
    deploys: HashMap<String, RunningDeploy>,
    /// The revision `state` was read at (see [`Revision`]): a change is
    /// written on condition that the shared state is still there.
    revision: Revision,
    /// Pending requests whose expiry was announced (or had passed when this
    /// process first looked): `None` until [`Controller::announce_expired`]
    /// first runs.
    expired: Option<std::collections::HashSet<String>>,
}

/// A deploy in progress: what status shows, and how to abort it.
struct RunningDeploy {
    status: DeployStatus,
    abort: watch::Sender<bool>,
}

/// The single writer. Cheap to share behind an `Arc`.
pub struct Controller {
    routing: Routing,
    /// The local state file: the state itself, or with `[cluster]` the
    /// last applied copy.
    store: Arc<StateStore>,
    /// Where a commit writes: the file, or etcd then the file.
    backend: Arc<dyn StateBackend>,
    /// `[cluster]`: the instances sharing the state (the backend too).
    cluster: Option<Arc<Cluster>>,
    inner: Mutex<Inner>,
    metrics: Arc<Metrics>,
    audit: AuditLog,
    verifier: Verifier,
    generation: watch::Sender<u64>,
    /// What `GET /v1/events` streams: one event per committed change
    /// (published in `effects`), health transitions and deploy steps.
    events: Arc<Events>,
    /// The configuration the process started with: listeners, threads and
    /// the like stay as they were then, whatever reloads came since.
    boot: Arc<Config>,
}

impl Controller {
    /// Takes the state file lock (waiting up to `lock_wait`, e.g. for the old
    /// process of a graceful upgrade to let go), loads and recovers the state
    /// (logging every problem), gives apps without a record `initial_live`
    /// (records of apps no longer configured are kept), persists the result
    /// (so the state directory is proven writable before any port opens) and
    /// builds the first snapshot.
    ///
    /// With `cluster`, commits write to etcd (then the local copy);
    /// without, to the state file alone.
    pub fn start(
        config: Arc<Config>,
        store: Arc<StateStore>,
        cluster: Option<Arc<Cluster>>,
        metrics: Arc<Metrics>,
        audit: AuditLog,
        verifier: Verifier,
        lock_wait: Duration,
    ) -> Result<Self, StateError> {
        let lock = store.lock(lock_wait)?;
        let (mut state, recoveries) = store.load();
        for r in &recoveries {
            error!("state file problem: {r}");
        }
        rules::merge_new_apps(&mut state, &config.apps);
        // Files from before the generation existed start at 1.
        state.generation = state.generation.max(1);
        let started = Instant::now();
        store.persist_at_start(&state)?;
        metrics.state_write.observe(started.elapsed().as_secs_f64());
        let snapshot = Snapshot::build(
            state.generation,
            &app_configs(&config),
            |a| split_of(&state, a),
            None,
            &metrics,
        );
        for app in &snapshot.apps {
            metrics.register_app(&app.name, app.live);
            metrics.set_weights(&app.name, app.weights());
        }
        let generation = snapshot.generation;
        let events = Arc::new(Events::new(metrics.events_dropped_clients.clone()));
        let backend: Arc<dyn StateBackend> = match &cluster {
            Some(c) => c.clone(),
            None => Arc::new(FileBackend::new(store.clone())),
        };
        Ok(Controller {
            routing: Arc::new(arc_swap::ArcSwap::from_pointee(snapshot)),
            store,
            backend,
            cluster,
            inner: Mutex::new(Inner {
                state,
                config: config.clone(),
                lock: Some(lock),
                deploys: HashMap::new(),
                revision: 0,
                expired: None,
            }),
            boot: config,
            metrics,
            audit,
            verifier,
            generation: watch::channel(generation).0,
            events,
        })
    }

    /// The routing table the data plane reads.
    pub fn routing(&self) -> Routing {
        self.routing.clone()
    }

    /// The event hub of `GET /v1/events`.
    pub fn events(&self) -> Arc<Events> {
        self.events.clone()
    }

    /// Follows published generations (for the health checker).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Stops accepting changes and releases the state file lock, after any
    /// change in progress. Called when shutdown or a graceful upgrade
    /// begins: from then on the state file belongs to whoever takes the lock.
    pub async fn close(&self) {
        let mut inner = self.inner.lock().await;
        if inner.lock.take().is_some() {
            info!("state file released: no more changes accepted by this process");
        }
        // Refusals counted and not written yet: the process may end soon.
        self.audit.flush();
    }

    /// Decides and commits one change. When this returns `Ok`, the change is
    /// on disk and the data plane routes by it; either way it is audited.
    pub async fn apply(self: &Arc<Self>, mut cmd: Command) -> Result<Outcome, ControlError> {
        let started = Instant::now();
        // An approval or denial names a request, not an app: it acts on the
        // request's app (gates, deploys, history).
        let requested = match &cmd.change {
            Change::Approve { id } | Change::Deny { id } => {
                let inner = self.inner.lock().await;
                inner.state.requests.iter().find(|r| r.id == *id).cloned()
            }
            _ => None,
        };
        if let Some(req) = &requested {
            cmd.app.clone_from(&req.app);
        }
        // Verify checks are I/O (HTTP through the front door): they run
        // before the decision, outside the writer lock.
        let mut written = None;
        let mut result = match self.verify_gate(&cmd, requested.as_ref()).await {
            Err(e) => Err(e),
            Ok(()) => {
                let mut inner = self.inner.lock().await;
                let before = inner.revision;
                let result = match self.decide(&inner, &cmd) {
                    Ok(decision) => self.commit(&mut inner, &cmd, decision, started).await,
                    Err(e) => Err(e),
                };
                written = (result.is_ok() && inner.revision != before).then_some(inner.revision);
                result
            }
        };
        // [cluster]: the answer says which instances applied the change
        // (waiting outside the writer lock, up to ack_timeout).
        if let (Some(cluster), Some(revision)) = (&self.cluster, written) {
            if let Ok(Outcome::Switched(_) | Outcome::Rollout(_)) = &result {
                let (applied, missing) = cluster.acks(revision).await;
                match &mut result {
                    Ok(Outcome::Switched(r)) => {
                        r.applied_by = Some(applied);
                        r.missing = Some(missing);
                    }
                    Ok(Outcome::Rollout(r)) => {
                        r.applied_by = Some(applied);
                        r.missing = Some(missing);
                    }
                    _ => {}
                }
            }
        }
        let mut attempt = cmd.attempt();
        match (&result, &cmd.change) {
            // Audited when it ends, with its result.
            (Ok(Outcome::DeployStarted(_)), _) => {}
            // An analysis that changed nothing, or that came too late:
            // nothing to audit.
            (Ok(Outcome::Observed), _) => {}
            (Err(ControlError::Stale(why)), _) => debug!(app = %cmd.app, "{why}"),
            (Ok(_), Change::DeployFinished(record)) => {
                let error = deploy_result_code(record.result)
                    .map(|code| (code, record.error.as_deref().unwrap_or_default()));
                self.audit(&attempt, 200, error);
            }
            (Ok(outcome), _) => {
                if let Outcome::Switched(done) = outcome {
                    attempt.to = Some(done.live);
                }
                self.audit(&attempt, 200, None);
            }
            (Err(e), _) => self.failed(&cmd, e),
        }
        result
    }

    /// Runs the app's verify checks against its standby (`bgctl verify`).
    pub async fn verify(&self, app: &str) -> Result<VerifyResponse, ControlError> {
        let snapshot = self.routing.load_full();
        let route = snapshot
            .app(app)
            .ok_or_else(|| ControlError::UnknownApp(app.to_string()))?;
        Ok(self.verifier.run(route).await)
    }

    /// A switch, canary or promote (not in an emergency) of an app with
    /// `[[app.verify]]` checks needs them all to pass against the standby.
    /// An approval is gated like the change it carries out.
    async fn verify_gate(
        &self,
        cmd: &Command,
        requested: Option<&PendingRequest>,
    ) -> Result<(), ControlError> {
        let (gated, emergency) = match (&cmd.change, requested) {
            (Change::Approve { .. }, Some(req)) => (
                matches!(req.action.as_str(), "switch" | "canary" | "promote"),
                req.emergency,
            ),
            (Change::Switch { .. } | Change::Canary { .. } | Change::Promote, _) => {
                (true, cmd.emergency)
            }
            _ => (false, cmd.emergency),
        };
        let snapshot = self.routing.load_full();
        let Some(route) = snapshot.app(&cmd.app).filter(|_| gated && !emergency) else {
            return Ok(());
        };
        if route.config.verify.is_empty() {
            return Ok(());
        }
        let report = self.verifier.run(route).await;
        match verify::first_failure(&report) {
            None => Ok(()),
            Some((check, detail)) => Err(ControlError::VerifyFailed {
                app: cmd.app.clone(),
                color: report.color,
                check,
                detail,
            }),
        }
    }

    /// Records in the audit log a request refused before it became a
    /// command (no or a wrong token, a forbidden origin, an unreadable
    /// body): written in full up to a limit per client, then counted (see
    /// [`super::audit`]).
    pub fn refused(&self, attempt: &Attempt, status: u16, code: &str, message: &str) {
        self.audit
            .refused(&audit_record(attempt, status, Some((code, message))));
    }

    /// Reloads the configuration from its file: parses and validates it
    /// completely first (a bad file changes nothing and says why), then
    /// commits it as a [`Change::Reload`]: new apps, upstreams, health
    /// settings and deploy steps, each app keeping its live color from the
    /// state. Settings that need a restart are reported, not silently
    /// ignored. `actor` says what asked (`api`, `SIGHUP`, ...).
    pub async fn reload(
        self: &Arc<Self>,
        actor: &str,
        client: Option<String>,
    ) -> Result<ReloadResponse, ControlError> {
        // systemd (Type=notify) sees it: RELOADING=1 ... READY=1, whatever
        // the outcome (a bad file changes nothing).
        super::service_manager::reloading();
        let result = self.reload_config(actor, client).await;
        super::service_manager::ready();
        result
    }

    /// [`Self::reload`], without telling systemd.
    async fn reload_config(
        self: &Arc<Self>,
        actor: &str,
        client: Option<String>,
    ) -> Result<ReloadResponse, ControlError> {
        let path = self.inner.lock().await.config.path.clone();
        // Parse outside the lock: it may resolve host names.
        let config = match Config::load(&path) {
            Ok(new) => new,
            Err(e @ ConfigError::Invalid(_)) | Err(e @ ConfigError::Read { .. }) => {
                let cmd = Command::new("", Change::Reload(self.boot.clone()), actor, client);
                let e = ControlError::InvalidConfig(e.to_string());
                self.failed(&cmd, &e);
                return Err(e);
            }
        };
        let cmd = Command::new("", Change::Reload(Arc::new(config)), actor, client);
        match self.apply(cmd).await? {
            Outcome::Reloaded(report) => Ok(report),
            // A reload commits as a reload (see `commit`).
            _ => unreachable!("a reload answers with its report"),
        }
    }

    /// Status of every configured app, read under the writer lock so live
    /// color and switch count are from the same instant.
    pub async fn status(&self) -> StatusResponse {
        let inner = self.inner.lock().await;
        let mut status = rules::status(&self.routing.load(), &inner.state, |app| {
            inner.deploys.get(app).map(|d| &d.status)
        });
        status.cluster = self.cluster.as_ref().map(|c| c.response(inner.revision));
        status
    }

    /// The pending requests that have not expired, oldest first.
    pub async fn requests(&self) -> RequestsResponse {
        let now = OffsetDateTime::now_utc();
        let inner = self.inner.lock().await;
        RequestsResponse {
            requests: inner
                .state
                .requests
                .iter()
                .filter(|r| r.status == RequestStatus::Pending && r.expires_at > now)
                .cloned()
                .collect(),
        }
    }

    /// Publishes a `request` event (`"action": "expired"`) for each pending
    /// request whose `expires_at` has passed since the last call, so a page
    /// or a watcher drops it when it expires, not at the next change. A
    /// request expires by the clock alone: the state keeps it as it was
    /// (approving it is refused as expired), so nothing is committed. Those
    /// that had expired before this process first looked are not announced.
    pub async fn announce_expired(&self) {
        let now = OffsetDateTime::now_utc();
        let mut inner = self.inner.lock().await;
        let first = inner.expired.is_none();
        let Inner { state, expired, .. } = &mut *inner;
        let seen = expired.get_or_insert_with(Default::default);
        let is_expired =
            |r: &PendingRequest| r.status == RequestStatus::Pending && r.expires_at <= now;
        // Forget what the state no longer holds as expired (decided, pruned).
        seen.retain(|id| state.requests.iter().any(|r| &r.id == id && is_expired(r)));
        let new: Vec<PendingRequest> = state
            .requests
            .iter()
            .filter(|r| is_expired(r) && !seen.contains(&r.id))
            .cloned()
            .collect();
        seen.extend(new.iter().map(|r| r.id.clone()));
        if first {
            return;
        }
        for req in new {
            info!(app = %req.app, id = %req.id, action = %req.action, "request expired (control.request_ttl)");
            self.event(
                &inner,
                EventType::Request,
                &req.app,
                json!({"action": "expired", "id": req.id, "request": req}),
            );
        }
    }

    /// Status of one app.
    pub async fn app(&self, name: &str) -> Result<AppStatus, ControlError> {
        self.status()
            .await
            .apps
            .into_iter()
            .find(|a| a.name == name)
            .ok_or_else(|| ControlError::UnknownApp(name.to_string()))
    }

    /// What the rollout driver reads of every app.
    pub async fn views(&self) -> Vec<rules::AppView> {
        let inner = self.inner.lock().await;
        rules::views(&self.routing.load(), &inner.state)
    }

    /// The app's history, newest last; the `limit` most recent entries.
    pub async fn history(
        &self,
        name: &str,
        limit: Option<usize>,
    ) -> Result<HistoryResponse, ControlError> {
        let inner = self.inner.lock().await;
        rules::history(&self.routing.load(), &inner.state, name, limit)
    }

    fn decide(&self, inner: &Inner, cmd: &Command) -> Result<Decision, ControlError> {
        // A deploy that ends after shutdown began is still counted and
        // logged (see `commit`); every other change is refused.
        if inner.lock.is_none() && !matches!(cmd.change, Change::DeployFinished(_)) {
            return Err(ControlError::ShuttingDown);
        }
        // [cluster]: cut off from etcd, nothing is decided on a state that
        // may be old (before any gate, so the answer says the real reason).
        if let Some(c) = self.cluster.as_ref().filter(|c| !c.connected()) {
            return Err(ControlError::NoQuorum(c.unreachable()));
        }
        rules::decide(
            &self.routing.load(),
            &inner.state,
            &inner.config,
            &self.boot,
            inner.deploys.get(&cmd.app).map(|d| &d.status),
            cmd,
            OffsetDateTime::now_utc(),
        )
    }

    /// The one commit: persist -> publish -> metrics (and deploy
    /// bookkeeping) -> answer. The audit line follows in `apply`.
    async fn commit(
        self: &Arc<Self>,
        inner: &mut Inner,
        cmd: &Command,
        decision: Decision,
        started: Instant,
    ) -> Result<Outcome, ControlError> {
        if let Decision::DeployFinished(record) = &decision {
            // The run is over whether or not its record can be written.
            inner.deploys.remove(&cmd.app);
            self.metrics
                .deploys
                .with_label_values(&[&cmd.app, record.color.as_str(), record.result.as_str()])
                .inc();
            info!(app = %cmd.app, id = %record.id, result = record.result.as_str(), "deploy finished");
            if inner.lock.is_none() {
                warn!(
                    app = %cmd.app,
                    "deploy {} finished after shutdown began: not recorded in the state", record.id
                );
                return Ok(Outcome::DeployRecorded);
            }
        }

        // Persist, then publish: an answered change is never lost, and a
        // failed write changes nothing.
        let next = rules::next_state(
            &inner.state,
            &cmd.app,
            &decision,
            &cmd.actor,
            OffsetDateTime::now_utc(),
        );
        if next != inner.state {
            let write_started = Instant::now();
            match self.backend.persist(&next, inner.revision).await {
                Ok(revision) => inner.revision = revision,
                Err(BackendError::Persist(e)) => {
                    self.metrics.state_write_failures.inc();
                    return Err(e.into());
                }
                Err(BackendError::NoQuorum(why)) => return Err(ControlError::NoQuorum(why)),
                Err(BackendError::Conflict(current)) => {
                    let expected = inner.state.generation;
                    if let Some(current) = current {
                        let (state, revision) = *current;
                        self.adopt_locked(inner, state, revision);
                    }
                    return Err(ControlError::PlanStale {
                        expected,
                        current: inner.state.generation,
                    });
                }
            }
            self.metrics
                .state_write
                .observe(write_started.elapsed().as_secs_f64());
            inner.state = next;
        }
        self.effects(inner, cmd, decision, started)
    }

    /// What a committed decision does beyond the state file: publish the
    /// routing, count, log, start a deploy, answer.
    fn effects(
        self: &Arc<Self>,
        inner: &mut Inner,
        cmd: &Command,
        decision: Decision,
        started: Instant,
    ) -> Result<Outcome, ControlError> {
        match decision {
            Decision::Approve {
                id,
                inner: decision,
            } => {
                info!(app = %cmd.app, id, approver = %cmd.actor, "request approved");
                let outcome = self.effects(inner, cmd, *decision, started)?;
                self.event(
                    inner,
                    EventType::Request,
                    &cmd.app,
                    json!({"action": "approved", "id": id, "by": cmd.actor, "reason": cmd.reason}),
                );
                Ok(outcome)
            }
            Decision::Request(req) => {
                info!(app = %cmd.app, id = %req.id, action = %req.action, by = %req.requested_by,
                    "request recorded: waiting for approval");
                self.event(
                    inner,
                    EventType::Request,
                    &cmd.app,
                    json!({"action": "created", "request": &*req}),
                );
                let snapshot = self.routing.load();
                let plan = snapshot
                    .app(&req.app)
                    .map(|route| rules::plan(&req, route))
                    .unwrap_or_default();
                Ok(Outcome::Requested(RequestCreated {
                    approve_with: format!("bgctl approve {}", req.id),
                    request: *req,
                    plan,
                }))
            }
            Decision::Deny { id } => {
                info!(app = %cmd.app, id, by = %cmd.actor, "request denied");
                self.event(
                    inner,
                    EventType::Request,
                    &cmd.app,
                    json!({"action": "denied", "id": id, "by": cmd.actor, "reason": cmd.reason}),
                );
                let req = inner.state.requests.iter().find(|r| r.id == id).cloned();
                Ok(Outcome::Denied(req.map(Box::new)))
            }
            Decision::Switch {
                index,
                entry,
                abort_deploy,
                verdict,
            } => {
                let snapshot = self.routing.load();
                self.publish(snapshot.with_live(index, entry.to), inner.state.generation);
                if abort_deploy {
                    self.abort_deploy(inner, &cmd.app, entry.to);
                }
                self.metrics.set_live(&cmd.app, entry.to);
                self.metrics
                    .set_weights(&cmd.app, Weights::new(entry.to, 100));
                self.metrics.switched(&cmd.app, entry.kind);
                self.count_analysis(&cmd.app, verdict, entry.kind);
                let switch_count = inner.state.apps[&cmd.app].switch_count;
                info!(
                    app = %cmd.app, from = %entry.from, to = %entry.to, kind = %entry.kind,
                    actor = %entry.actor, reason = entry.reason.as_deref().unwrap_or(""),
                    switch = switch_count, "{} is now LIVE", entry.to
                );
                if let Some(v) = verdict {
                    self.event(
                        inner,
                        EventType::Analysis,
                        &cmd.app,
                        json!({"result": v.as_str(), "color": entry.from, "detail": entry.reason}),
                    );
                }
                self.event(
                    inner,
                    EventType::Switch,
                    &cmd.app,
                    json!({
                        "from": entry.from, "to": entry.to, "live": entry.to, "kind": entry.kind,
                        "actor": entry.actor, "reason": entry.reason,
                        "switch_count": switch_count, "time": rfc3339(entry.time),
                    }),
                );
                Ok(Outcome::Switched(SwitchResponse {
                    app: cmd.app.clone(),
                    from: entry.from,
                    live: entry.to,
                    standby: entry.from,
                    kind: entry.kind,
                    switch_count,
                    time: entry.time,
                    duration_ms: started.elapsed().as_secs_f64() * 1000.0,
                    applied_by: None,
                    missing: None,
                }))
            }
            Decision::Rollout {
                index,
                rollout,
                event,
                abort_deploy,
                verdict,
            } => {
                let snapshot = self.routing.load();
                let live = snapshot.apps[index].live;
                let split = Split {
                    live,
                    canary: rollout.as_ref().map_or(0, |r| r.percent),
                };
                self.publish(snapshot.with_split(index, split), inner.state.generation);
                if abort_deploy {
                    self.abort_deploy(inner, &cmd.app, live.other());
                }
                let weights = Weights::new(live.other(), split.canary);
                self.metrics.set_weights(&cmd.app, weights);
                let kind = event.as_ref().map_or(SwitchKind::Switch, |e| e.kind);
                self.count_analysis(&cmd.app, verdict, kind);
                match (&rollout, &event) {
                    (Some(r), _) => match r.last_analysis.as_ref().filter(|_| verdict.is_some()) {
                        Some(a) => info!(
                            app = %cmd.app, result = a.result.as_str(),
                            "rollout: {} (analysis: {})", r.describe(), a.detail
                        ),
                        None => info!(
                            app = %cmd.app, actor = %cmd.actor, "rollout: {}", r.describe()
                        ),
                    },
                    (None, Some(e)) => warn!(
                        app = %cmd.app, actor = %e.actor, kind = %e.kind,
                        reason = e.reason.as_deref().unwrap_or(""),
                        "rollout of {} aborted: {live} keeps every request", e.from
                    ),
                    (None, None) => {}
                }
                if let Some(a) = rollout
                    .as_ref()
                    .and_then(|r| r.last_analysis.as_ref())
                    .filter(|_| verdict.is_some())
                {
                    self.event(
                        inner,
                        EventType::Analysis,
                        &cmd.app,
                        json!({"result": a.result.as_str(), "color": live.other(), "analysis": a}),
                    );
                }
                self.event(
                    inner,
                    EventType::Rollout,
                    &cmd.app,
                    json!({
                        "live": live, "weights": weights, "rollout": rollout,
                        "kind": event.as_ref().map(|e| e.kind),
                        "actor": event.as_ref().map_or(cmd.actor.as_str(), |e| e.actor.as_str()),
                        "reason": event.as_ref().map_or(cmd.reason.as_deref(), |e| e.reason.as_deref()),
                    }),
                );
                Ok(Outcome::Rollout(RolloutResponse {
                    app: cmd.app.clone(),
                    live,
                    weights,
                    rollout,
                    switch: None,
                    applied_by: None,
                    missing: None,
                }))
            }
            Decision::Observed { verdict, detail } => {
                self.count_analysis(&cmd.app, Some(verdict), SwitchKind::Switch);
                match verdict {
                    AnalysisResult::Fail => {
                        error!(app = %cmd.app, "analysis of the live color failed: {detail}")
                    }
                    _ => info!(app = %cmd.app, "analysis: {}: {detail}", verdict.as_str()),
                }
                let live = self.routing.load().app(&cmd.app).map(|a| a.live);
                self.event(
                    inner,
                    EventType::Analysis,
                    &cmd.app,
                    json!({"result": verdict.as_str(), "color": live, "detail": detail, "watch": true}),
                );
                Ok(Outcome::Observed)
            }
            Decision::Reload { config, mut report } => {
                let current = self.routing.load_full();
                let state = &inner.state;
                let snapshot = Snapshot::build(
                    inner.state.generation,
                    &app_configs(&config),
                    |a| split_of(state, a),
                    Some(&current),
                    &self.metrics,
                );
                report.generation = snapshot.generation;
                for app in &snapshot.apps {
                    self.metrics.register_app(&app.name, app.live);
                    self.metrics.set_weights(&app.name, app.weights());
                }
                inner.config = config;
                self.publish(snapshot, inner.state.generation);
                self.metrics.reloads.with_label_values(&["success"]).inc();
                info!(
                    generation = report.generation, added = ?report.added, removed = ?report.removed,
                    changed = ?report.changed, "configuration reloaded from {}", inner.config.path.display()
                );
                if !report.restart_required.is_empty() {
                    warn!(
                        "changed settings that take effect only after a restart: {}",
                        report.restart_required.join(", ")
                    );
                }
                self.events.publish(
                    EventType::Reload,
                    None,
                    report.generation,
                    json!({
                        "added": report.added, "removed": report.removed,
                        "changed": report.changed, "restart_required": report.restart_required,
                    }),
                );
                Ok(Outcome::Reloaded(report))
            }
            Decision::Deploy { index, migrate } => {
                let snapshot = self.routing.load();
                let plan = DeployPlan::new(
                    &snapshot.apps[index],
                    migrate,
                    &cmd.actor,
                    &self.boot.state_dir(),
                    OffsetDateTime::now_utc(),
                )?;
                let (abort, aborted) = watch::channel(false);
                let status = plan.status();
                info!(app = %cmd.app, color = %plan.color, id = %plan.id, migrate, actor = %cmd.actor,
                    "deploy started on the standby color");
                self.event(
                    inner,
                    EventType::Deploy,
                    &cmd.app,
                    json!({"phase": "started", "deploy": &status}),
                );
                inner
                    .deploys
                    .insert(cmd.app.clone(), RunningDeploy { status, abort });
                let (events, stream) = mpsc::unbounded_channel();
                tokio::spawn(
                    self.clone()
                        .run_deploy(plan, aborted, events, cmd.client.clone()),
                );
                Ok(Outcome::DeployStarted(stream))
            }
            Decision::DeployFinished(record) => {
                self.event(
                    inner,
                    EventType::Deploy,
                    &cmd.app,
                    json!({
                        "phase": "finished", "id": record.id, "color": record.color,
                        "result": record.result, "error": record.error,
                        "duration_ms": record.duration_ms, "actor": record.actor,
                    }),
                );
                Ok(Outcome::DeployRecorded)
            }
        }
    }

    /// Publishes an event about `app` at the state's generation (after the
    /// commit: the generation the change made).
    fn event(&self, inner: &Inner, kind: EventType, app: &str, details: serde_json::Value) {
        self.events
            .publish(kind, Some(app), inner.state.generation, details);
    }

    /// An emergency change onto a color under deploy aborts that deploy:
    /// its steps must never run against traffic.
    fn abort_deploy(&self, inner: &Inner, app: &str, color: Color) {
        if let Some(d) = inner.deploys.get(app).filter(|d| d.status.color == color) {
            warn!(
                app,
                "emergency change onto {color}: aborting the deploy {}", d.status.id
            );
            d.abort.send_replace(true);
        }
    }

    /// Counts an analysis verdict, and a change bgproxy made on its own.
    fn count_analysis(&self, app: &str, verdict: Option<AnalysisResult>, kind: SwitchKind) {
        if let Some(v) = verdict {
            self.metrics
                .analysis
                .with_label_values(&[app, v.as_str()])
                .inc();
        }
        if kind == SwitchKind::Automatic {
            self.metrics
                .automatic_rollbacks
                .with_label_values(&[app])
                .inc();
        }
    }

    /// [`Self::adopt_locked`] under the writer lock; returns the revision
    /// applied now.
    pub async fn adopt(&self, state: State, revision: Revision) -> Revision {
        let mut inner = self.inner.lock().await;
        self.adopt_locked(&mut inner, state, revision);
        inner.revision
    }

    /// [`Self::adopt`] of the whole shared state read at the start of a
    /// cluster session: taken also when etcd's revisions went backwards
    /// (etcd recreated from scratch), where `adopt` would ignore it.
    pub async fn reload_shared(&self, state: State, revision: Revision) -> Revision {
        let mut inner = self.inner.lock().await;
        if revision < inner.revision {
            warn!(
                "cluster: the shared state is at revision {revision}, older than the {} applied here (etcd recreated?): taking it",
                inner.revision
            );
            inner.revision = revision - 1;
        }
        self.adopt_locked(&mut inner, state, revision);
        inner.revision
    }

    /// The revision of the state in force (0: none read from etcd yet).
    pub async fn revision(&self) -> Revision {
        self.inner.lock().await.revision
    }

    /// The state in force and its revision.
    pub async fn shared_state(&self) -> (State, Revision) {
        let inner = self.inner.lock().await;
        (inner.state.clone(), inner.revision)
    }

    /// Whether automatic actions (rollout steps, analysis, automatic
    /// rollback) run here: always on one host; with `[cluster]`, on the
    /// elected instance only.
    pub fn leads(&self) -> bool {
        self.cluster.as_ref().is_none_or(|c| c.leading())
    }

    /// `GET /v1/cluster`; `None` without `[cluster]`.
    pub async fn cluster(&self) -> Option<bgproxy_control::api::ClusterResponse> {
        let cluster = self.cluster.as_ref()?;
        let revision = self.revision().await;
        Some(cluster.response(revision))
    }

    /// This instance's per-color counters of every app (published for the
    /// leader).
    pub fn local_counts(&self) -> AppCounts {
        self.routing
            .load()
            .apps
            .iter()
            .map(|a| (a.name.to_string(), a.counts()))
            .collect()
    }

    /// An app's counters by color: this instance's, plus with `[cluster]`
    /// what every other instance published (the status page's traffic).
    pub fn app_counts(
        &self,
        app: &crate::dataplane::routing::AppRoute,
    ) -> [crate::metrics::Counts; 2] {
        self.summed_counts(&app.name, app.counts())
    }

    /// How many instances' counters [`Controller::app_counts`] sums: this
    /// one and every other that published.
    pub fn counted_instances(&self) -> usize {
        1 + self.cluster.as_ref().map_or(0, |c| c.others_counts().len())
    }

    /// An app's counters for analysis: `local` (this instance's), plus,
    /// with `[cluster]`, what every other instance published.
    pub fn summed_counts(
        &self,
        app: &str,
        mut local: [crate::metrics::Counts; 2],
    ) -> [crate::metrics::Counts; 2] {
        if let Some(cluster) = &self.cluster {
            for counts in cluster.others_counts().values() {
                if let Some(theirs) = counts.get(app) {
                    for c in Color::ALL {
                        super::cluster::add_counts(&mut local[c.index()], &theirs[c.index()]);
                    }
                }
            }
        }
        local
    }

    /// Puts a state decided elsewhere in force (another instance's change,
    /// read from the shared state at `revision`): no rules, no gates (they
    /// ran where it was decided), just the local copy and the routing. An
    /// older or the same revision is ignored. Every configured app keeps a
    /// record (`merge_new_apps`).
    fn adopt_locked(&self, inner: &mut Inner, mut state: State, revision: Revision) -> bool {
        if revision <= inner.revision {
            return false;
        }
        inner.revision = revision;
        rules::merge_new_apps(&mut state, &inner.config.apps);
        if state == inner.state {
            return false;
        }
        // The local copy is what a start without etcd comes up with; failing
        // to write it does not stop the routing from following the cluster.
        if let Err(e) = self.store.persist(&state) {
            self.metrics.state_write_failures.inc();
            error!("cannot write the local copy of the shared state: {e}");
        }
        inner.state = state;
        let current = self.routing.load_full();
        let snapshot = Snapshot::build(
            inner.state.generation,
            &app_configs(&inner.config),
            |a| split_of(&inner.state, a),
            Some(&current),
            &self.metrics,
        );
        for app in &snapshot.apps {
            let old = current.app(&app.name);
            if old.is_none_or(|o| o.live != app.live || o.canary != app.canary) {
                info!(app = %app.name, live = %app.live, canary = app.canary,
                    "applied the shared state: {} is LIVE", app.live);
            }
            self.metrics.set_live(&app.name, app.live);
            self.metrics.set_weights(&app.name, app.weights());
        }
        self.publish(snapshot, inner.state.generation);
        true
    }

    /// The only `store` of the routing: the snapshot carries the state's
    /// generation, so status, plans and the health checker see one number.
    fn publish(&self, mut snapshot: Snapshot, generation: u64) {
        snapshot.generation = generation;
        self.routing.store(Arc::new(snapshot));
        self.generation.send_replace(generation);
    }

    /// Runs a deploy to its end: follows its events into the status and on
    /// to `caller` (while it listens), then commits the record. `caller`'s
    /// stream ends only after that commit.
    async fn run_deploy(
        self: Arc<Self>,
        plan: DeployPlan,
        abort: watch::Receiver<bool>,
        caller: mpsc::UnboundedSender<DeployEvent>,
        client: Option<String>,
    ) {
        let app = plan.app.clone();
        let actor = plan.actor.clone();
        let (events, mut rx) = mpsc::unbounded_channel();
        let run = deploy::run(plan, abort, events);
        tokio::pin!(run);
        let record = loop {
            tokio::select! {
                biased;
                Some(event) = rx.recv() => self.follow_deploy(&app, event, &caller).await,
                record = &mut run => break record,
            }
        };
        // The run has ended: what it sent last is already queued.
        while let Ok(event) = rx.try_recv() {
            self.follow_deploy(&app, event, &caller).await;
        }
        let cmd = Command::new(
            &app,
            Change::DeployFinished(Box::new(record)),
            &actor,
            client,
        );
        // Failures are logged and audited by `apply`.
        let _ = self.apply(cmd).await;
    }

    async fn follow_deploy(
        &self,
        app: &str,
        event: DeployEvent,
        caller: &mpsc::UnboundedSender<DeployEvent>,
    ) {
        {
            let mut inner = self.inner.lock().await;
            let generation = inner.state.generation;
            if let Some(d) = inner.deploys.get_mut(app) {
                deploy::follow(&mut d.status, &event);
                if matches!(
                    event,
                    DeployEvent::StepStarted { .. } | DeployEvent::HealthWait { .. }
                ) {
                    self.events.publish(
                        EventType::Deploy,
                        Some(app),
                        generation,
                        json!({"phase": "step", "deploy": &d.status}),
                    );
                }
            }
        }
        // The caller may be gone: the deploy goes on regardless.
        let _ = caller.send(event);
    }

    /// A refused or failed command: logged, counted, audited.
    fn failed(&self, cmd: &Command, e: &ControlError) {
        match &cmd.change {
            Change::Reload(_) => {
                self.metrics.reloads.with_label_values(&["failure"]).inc();
                error!("configuration reload failed: {e}");
            }
            Change::DeployFinished(record) => {
                error!(app = %cmd.app, "cannot record the deploy {} in the state: {e}", record.id)
            }
            _ => warn!(app = %cmd.app, actor = %cmd.actor, "refused: {e}"),
        }
        self.audit(&cmd.attempt(), e.status(), Some((e.code(), &e.to_string())));
    }

    /// Appends one audit line. A finished deploy is audited with its result
    /// (`ok`, `deploy_failed`, `deploy_aborted`); a deploy start is not (its
    /// line is written when it ends, with the result).
    fn audit(&self, attempt: &Attempt, status: u16, error: Option<(&str, &str)>) {
        self.audit.record(&audit_record(attempt, status, error));
    }
}

/// The audit record of `attempt`, answered `status` (and `error`: its code
/// and message).
fn audit_record<'a>(
    attempt: &'a Attempt,
    status: u16,
    error: Option<(&'a str, &'a str)>,
) -> AuditRecord<'a> {
    AuditRecord {
        time: OffsetDateTime::now_utc(),
        action: attempt.action,
        app: &attempt.app,
        result: error.map_or("ok", |(code, _)| code),
        status,
        actor: &attempt.actor,
        client: attempt.client.as_deref(),
        reason: attempt.reason.as_deref(),
        emergency: attempt.emergency,
        to: attempt.to.map(|c| c.as_str()),
        error: error.map(|(_, m)| m),
    }
}

/// A time as RFC 3339 text, as the API writes times.
fn rfc3339(t: OffsetDateTime) -> Option<String> {
    t.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// The audit result of a finished deploy (`None`: ok).
fn deploy_result_code(result: DeployResult) -> Option<&'static str> {
    match result {
        DeployResult::Success => None,
        DeployResult::Aborted => Some("deploy_aborted"),
        DeployResult::Failed => Some("deploy_failed"),
    }
}

/// An app's live color and rollout share, from the state (every configured
/// app has a record: `merge_new_apps` ran first).
fn split_of(state: &State, app: &str) -> Split {
    let record = &state.apps[app];
    Split {
        live: record.live,
        canary: record.rollout.as_ref().map_or(0, |r| r.percent),
    }
}

fn app_configs(config: &Config) -> Vec<Arc<AppConfig>> {
    config.apps.iter().cloned().map(Arc::new).collect()
}
