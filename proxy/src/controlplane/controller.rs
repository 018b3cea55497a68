//! The controller: the one writer of routing and state.
//!
//! Every change goes through it, shaped as a reducer: validate -> persist
//! durably -> publish the new snapshot (`store`) -> answer. A switch or
//! rollback ([`Controller::apply`]) validates the gates (app known, target
//! differs, target healthy unless emergency); a reload
//! ([`Controller::reload`]) validates the whole new config first. The API,
//! signals, the config watcher and start-up all use it; nothing else calls
//! `store`.
//!
//! Changes are serialised by one async mutex around [`Inner`] (there is one
//! state file, so writes are serial anyway). The data plane never takes that
//! lock: it only `load`s the snapshot. Every published snapshot's generation
//! is sent on a watch channel, which the health checker follows.
//!
//! The state file is also guarded by an exclusive file lock held while this
//! controller is the writer: a second bgproxy on the same state refuses to
//! start, and during a graceful upgrade the new process loads the state only
//! after the old one has stopped accepting changes ([`Controller::close`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use bgproxy_control::api::{
    AppStatus, Color, ColorStatus, Colors, DeployRecord, DeployStatus, Health, HistoryEntry,
    HistoryResponse, ReloadResponse, StatusResponse, SwitchKind, SwitchResponse, UpstreamStatus,
};
use time::OffsetDateTime;
use tokio::sync::{watch, Mutex};
use tracing::{error, info, warn};

use crate::config::DeployStep;
use crate::config::{AppConfig, Config, ConfigError};
use crate::controlplane::state::{AppState, State, StateError, StateLock, StateStore};
use crate::dataplane::routing::{AppRoute, Pool, Routing, Snapshot};
use crate::metrics::Metrics;

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
}

impl ControlError {
    /// HTTP status of the error.
    pub fn status(&self) -> u16 {
        match self {
            ControlError::UnknownApp(_) => 404,
            ControlError::AlreadyLive { .. }
            | ControlError::TargetUnhealthy { .. }
            | ControlError::NothingToRollBack(_)
            | ControlError::DeployRunning { .. } => 409,
            ControlError::Persist(_) => 500,
            ControlError::BadRequest(_) | ControlError::InvalidConfig(_) => 400,
            ControlError::ShuttingDown => 503,
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
        }
    }
}

/// What to change.
#[derive(Clone, Copy, Debug)]
pub enum Change {
    /// Make `to` live.
    Switch { to: Color },
    /// Back to the previous live color.
    Rollback,
}

/// A change request with its audit fields.
#[derive(Clone, Debug)]
pub struct Command {
    pub app: String,
    pub change: Change,
    /// Skip the health gate.
    pub emergency: bool,
    pub reason: Option<String>,
    pub actor: String,
    pub client: Option<String>,
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
}

/// A deploy in progress: what status shows, and how to abort it.
struct RunningDeploy {
    status: DeployStatus,
    abort: watch::Sender<bool>,
}

/// Everything a deploy run needs, fixed when it starts.
pub struct DeployPlan {
    pub id: String,
    pub app: String,
    /// The standby color when the deploy started.
    pub color: Color,
    /// The steps to run, in order.
    pub steps: Vec<DeployStep>,
    /// Migrate steps left out.
    pub skipped: Vec<String>,
    /// Every configured step name, in configured order.
    pub order: Vec<String>,
    /// The pool of `color`, for the health wait.
    pub pool: Arc<Pool>,
    pub upstreams: Vec<SocketAddr>,
    pub health_timeout: Duration,
    pub migrate: bool,
    pub actor: String,
    pub log_path: PathBuf,
    /// Becomes true when an emergency switch to `color` aborts the deploy.
    pub abort: watch::Receiver<bool>,
}

/// The single writer. Cheap to share behind an `Arc`.
pub struct Controller {
    routing: Routing,
    store: StateStore,
    inner: Mutex<Inner>,
    metrics: Arc<Metrics>,
    generation: watch::Sender<u64>,
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
    pub fn start(
        config: Arc<Config>,
        store: StateStore,
        metrics: Arc<Metrics>,
        lock_wait: Duration,
    ) -> Result<Self, StateError> {
        let lock = store.lock(lock_wait)?;
        let (mut state, recoveries) = store.load();
        for r in &recoveries {
            error!("state file problem: {r}");
        }
        merge_new_apps(&mut state, &config.apps);
        let started = Instant::now();
        store.persist_at_start(&state)?;
        metrics.state_write.observe(started.elapsed().as_secs_f64());
        let snapshot = Snapshot::build(
            1,
            &app_configs(&config),
            |a| state.apps[a].live,
            None,
            &metrics,
        );
        for app in &snapshot.apps {
            metrics.register_app(&app.name, app.live);
        }
        Ok(Controller {
            routing: Arc::new(arc_swap::ArcSwap::from_pointee(snapshot)),
            store,
            inner: Mutex::new(Inner {
                state,
                config: config.clone(),
                lock: Some(lock),
                deploys: HashMap::new(),
            }),
            boot: config,
            metrics,
            generation: watch::channel(1).0,
        })
    }

    /// The routing table the data plane reads.
    pub fn routing(&self) -> Routing {
        self.routing.clone()
    }

    /// Follows published generations (for the health checker).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The configuration in force.
    pub async fn config(&self) -> Arc<Config> {
        self.inner.lock().await.config.clone()
    }

    fn publish(&self, snapshot: Snapshot) {
        let generation = snapshot.generation;
        self.routing.store(Arc::new(snapshot));
        self.generation.send_replace(generation);
    }

    /// Stops accepting changes and releases the state file lock, after any
    /// change in progress. Called when shutdown or a graceful upgrade
    /// begins: from then on the state file belongs to whoever takes the lock.
    pub async fn close(&self) {
        let mut inner = self.inner.lock().await;
        if inner.lock.take().is_some() {
            info!("state file released: no more changes accepted by this process");
        }
    }

    /// Validates, persists and publishes one change. When this returns `Ok`,
    /// the change is on disk and the data plane routes by it.
    pub async fn apply(&self, cmd: Command) -> Result<SwitchResponse, ControlError> {
        let started = Instant::now();
        let mut inner = self.inner.lock().await;
        if inner.lock.is_none() {
            return Err(ControlError::ShuttingDown);
        }
        let snapshot = self.routing.load_full();
        let result = self
            .decide(&snapshot, &inner.state, &cmd)
            .and_then(|ok| deploy_gate(&inner, &cmd, ok.1.to).map(|()| ok));
        let (index, entry) = match result {
            Ok(ok) => ok,
            Err(e) => {
                warn!(app = %cmd.app, actor = %cmd.actor, "refused: {e}");
                return Err(e);
            }
        };
        let mut next = inner.state.clone();
        let app_state = next
            .apps
            .entry(cmd.app.clone())
            .or_insert_with(|| AppState::new(entry.from));
        app_state.record(entry.clone());
        let switch_count = app_state.switch_count;
        // Persist, then publish: an answered switch is never lost, and a
        // failed write changes nothing.
        let write_started = Instant::now();
        if let Err(e) = self.store.persist(&next) {
            self.metrics.state_write_failures.inc();
            warn!(app = %cmd.app, "switch to {} not done: {e}", entry.to);
            return Err(e.into());
        }
        self.metrics
            .state_write
            .observe(write_started.elapsed().as_secs_f64());
        inner.state = next;
        self.publish(snapshot.with_live(index, entry.to));
        // An emergency switch onto a color under deploy aborts that deploy:
        // its steps must never run against the live color.
        if let Some(d) = inner
            .deploys
            .get(&cmd.app)
            .filter(|d| d.status.color == entry.to)
        {
            warn!(app = %cmd.app, "emergency switch to {}: aborting the deploy {}", entry.to, d.status.id);
            d.abort.send_replace(true);
        }
        drop(inner);
        self.metrics.set_live(&cmd.app, entry.to);
        self.metrics.switched(&cmd.app, entry.kind);
        let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        info!(
            app = %cmd.app, from = %entry.from, to = %entry.to, kind = %entry.kind,
            actor = %entry.actor, reason = entry.reason.as_deref().unwrap_or(""),
            switch = switch_count, "{} is now LIVE", entry.to
        );
        Ok(SwitchResponse {
            app: cmd.app,
            from: entry.from,
            live: entry.to,
            standby: entry.from,
            kind: entry.kind,
            switch_count,
            time: entry.time,
            duration_ms,
        })
    }

    /// The gates. Pure apart from reading health atomics.
    fn decide(
        &self,
        snapshot: &Snapshot,
        state: &State,
        cmd: &Command,
    ) -> Result<(usize, HistoryEntry), ControlError> {
        let index = snapshot
            .app_index(&cmd.app)
            .ok_or_else(|| ControlError::UnknownApp(cmd.app.clone()))?;
        let route = &snapshot.apps[index];
        let (to, kind) = match cmd.change {
            Change::Switch { to } => (to, SwitchKind::Switch),
            Change::Rollback => {
                let record = state.apps.get(&cmd.app);
                let previous = record
                    .and_then(|a| a.history.last())
                    .map(|h| h.from)
                    .filter(|_| record.is_some_and(|a| a.switch_count > 0));
                let to =
                    previous.ok_or_else(|| ControlError::NothingToRollBack(cmd.app.clone()))?;
                (to, SwitchKind::Rollback)
            }
        };
        if to == route.live {
            return Err(ControlError::AlreadyLive {
                app: cmd.app.clone(),
                color: to,
            });
        }
        if !cmd.emergency {
            let pool = route.pool(to);
            if !pool.all_up() {
                let detail = pool
                    .upstreams
                    .iter()
                    .filter(|u| u.health.get() != Health::Up)
                    .map(|u| format!("{} is {}", u.name, u.health.get()))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(ControlError::TargetUnhealthy {
                    app: cmd.app.clone(),
                    color: to,
                    detail,
                });
            }
        }
        let entry = HistoryEntry {
            time: OffsetDateTime::now_utc(),
            from: route.live,
            to,
            kind: if cmd.emergency {
                SwitchKind::Emergency
            } else {
                kind
            },
            reason: cmd.reason.clone(),
            actor: cmd.actor.clone(),
            client: cmd.client.clone(),
        };
        Ok((index, entry))
    }

    /// Reloads the configuration from its file: parses and validates it
    /// completely first (a bad file changes nothing and says why), then
    /// publishes a snapshot with the new apps, upstreams, health settings and
    /// deploy steps, each app keeping its live color from the state. Settings
    /// that need a restart are reported, not silently ignored.
    pub async fn reload(&self) -> Result<ReloadResponse, ControlError> {
        let path = self.inner.lock().await.config.path.clone();
        // Parse outside the lock: it may resolve host names.
        let loaded = Config::load(&path);
        let result = match loaded {
            Ok(new) => self.apply_config(Arc::new(new)).await,
            Err(e @ ConfigError::Invalid(_)) | Err(e @ ConfigError::Read { .. }) => {
                Err(ControlError::InvalidConfig(e.to_string()))
            }
        };
        let label = if result.is_ok() { "success" } else { "failure" };
        self.metrics.reloads.with_label_values(&[label]).inc();
        match &result {
            Ok(r) => info!(
                generation = r.generation, added = ?r.added, removed = ?r.removed, changed = ?r.changed,
                "configuration reloaded from {}", path.display()
            ),
            Err(e) => error!("configuration reload failed: {e}"),
        }
        if let Ok(r) = &result {
            if !r.restart_required.is_empty() {
                warn!(
                    "changed settings that take effect only after a restart: {}",
                    r.restart_required.join(", ")
                );
            }
        }
        result
    }

    /// Publishes a validated configuration (the reducer step of a reload).
    pub async fn apply_config(&self, new: Arc<Config>) -> Result<ReloadResponse, ControlError> {
        let mut inner = self.inner.lock().await;
        if inner.lock.is_none() {
            return Err(ControlError::ShuttingDown);
        }
        let old = inner.config.clone();
        let mut next = inner.state.clone();
        merge_new_apps(&mut next, &new.apps);
        if next != inner.state {
            let started = Instant::now();
            if let Err(e) = self.store.persist(&next) {
                self.metrics.state_write_failures.inc();
                return Err(e.into());
            }
            self.metrics
                .state_write
                .observe(started.elapsed().as_secs_f64());
        }
        let current = self.routing.load_full();
        let snapshot = Snapshot::build(
            current.generation + 1,
            &app_configs(&new),
            |a| next.apps[a].live,
            Some(&current),
            &self.metrics,
        );
        let names = |c: &Config| c.apps.iter().map(|a| a.name.clone()).collect::<Vec<_>>();
        let (old_names, new_names) = (names(&old), names(&new));
        let report = ReloadResponse {
            generation: snapshot.generation,
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
                .filter(|a| old.app(&a.name).is_some_and(|o| !same_app(o, a)))
                .map(|a| a.name.clone())
                .collect(),
            restart_required: restart_required(&self.boot, &new),
        };
        for app in &snapshot.apps {
            self.metrics.register_app(&app.name, app.live);
        }
        inner.state = next;
        inner.config = new;
        self.publish(snapshot);
        Ok(report)
    }

    /// Starts a deploy of `app`'s standby color: one per app at a time.
    /// Returns the plan the runner executes.
    pub async fn begin_deploy(
        &self,
        app: &str,
        migrate: bool,
        actor: String,
    ) -> Result<DeployPlan, ControlError> {
        let mut inner = self.inner.lock().await;
        if inner.lock.is_none() {
            return Err(ControlError::ShuttingDown);
        }
        let snapshot = self.routing.load_full();
        let route = snapshot
            .app_index(app)
            .map(|i| &snapshot.apps[i])
            .ok_or_else(|| ControlError::UnknownApp(app.to_string()))?;
        if let Some(d) = inner.deploys.get(app) {
            return Err(ControlError::DeployRunning {
                app: app.to_string(),
                color: d.status.color,
                detail: progress(&d.status),
            });
        }
        let color = route.live.other();
        let config = &route.config.deploy;
        let (steps, skipped): (Vec<_>, Vec<_>) = config
            .steps
            .iter()
            .cloned()
            .partition(|s| migrate || !s.migrate);
        if steps.is_empty() {
            return Err(ControlError::BadRequest(format!(
                "app '{app}' has no deploy steps to run{}: add [[app.deploy.steps]] to the config",
                if skipped.is_empty() {
                    ""
                } else {
                    " without --migrate"
                }
            )));
        }
        let started = OffsetDateTime::now_utc();
        let stamp = started
            .format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second].[subsecond digits:3]Z"
            ))
            .unwrap_or_default();
        let id = format!("{app}-{stamp}-{color}");
        let log_path = inner
            .config
            .state_dir()
            .join("deploys")
            .join(format!("{id}.log"));
        let (abort_tx, abort_rx) = watch::channel(false);
        let status = DeployStatus {
            id: id.clone(),
            color,
            started,
            migrate,
            actor: actor.clone(),
            step: None,
            step_index: 0,
            steps_total: steps.len(),
        };
        inner.deploys.insert(
            app.to_string(),
            RunningDeploy {
                status,
                abort: abort_tx,
            },
        );
        info!(app, %color, id, migrate, actor, "deploy started on the standby color");
        Ok(DeployPlan {
            id,
            app: app.to_string(),
            color,
            pool: route.pool(color).clone(),
            upstreams: route.config.upstreams(color).to_vec(),
            skipped: skipped.into_iter().map(|s| s.name).collect(),
            order: config.steps.iter().map(|s| s.name.clone()).collect(),
            steps,
            health_timeout: config.health_timeout,
            migrate,
            actor,
            log_path,
            abort: abort_rx,
        })
    }

    /// Updates what `status` shows of a running deploy.
    pub async fn deploy_progress(&self, app: &str, step: Option<String>, index: usize) {
        if let Some(d) = self.inner.lock().await.deploys.get_mut(app) {
            d.status.step = step;
            d.status.step_index = index;
        }
    }

    /// Ends a deploy: records it in the state (persisted), counts it.
    pub async fn finish_deploy(&self, app: &str, record: DeployRecord) {
        let mut inner = self.inner.lock().await;
        inner.deploys.remove(app);
        self.metrics
            .deploys
            .with_label_values(&[app, record.color.as_str(), record.result.as_str()])
            .inc();
        info!(app, id = %record.id, result = record.result.as_str(), "deploy finished");
        if inner.lock.is_none() {
            warn!(
                app,
                "deploy {} finished after shutdown began: not recorded in the state", record.id
            );
            return;
        }
        let mut next = inner.state.clone();
        next.apps
            .entry(app.to_string())
            .or_insert_with(|| AppState::new(record.color.other()))
            .record_deploy(record);
        match self.store.persist(&next) {
            Ok(()) => inner.state = next,
            Err(e) => {
                self.metrics.state_write_failures.inc();
                error!(app, "cannot record the deploy in the state: {e}");
            }
        }
    }

    /// Status of every configured app, read under the writer lock so live
    /// color and switch count are from the same instant.
    pub async fn status(&self) -> StatusResponse {
        let inner = self.inner.lock().await;
        let snapshot = self.routing.load_full();
        StatusResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            generation: snapshot.generation,
            apps: snapshot
                .apps
                .iter()
                .map(|a| {
                    let mut status = app_status(a, inner.state.apps.get(&*a.name));
                    status.deploy = inner.deploys.get(&*a.name).map(|d| d.status.clone());
                    status
                })
                .collect(),
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

    /// The app's history, newest last; the `limit` most recent entries.
    pub async fn history(
        &self,
        name: &str,
        limit: Option<usize>,
    ) -> Result<HistoryResponse, ControlError> {
        if self.routing.load().app_index(name).is_none() {
            return Err(ControlError::UnknownApp(name.to_string()));
        }
        let inner = self.inner.lock().await;
        let deploys = inner
            .state
            .apps
            .get(name)
            .map(|a| a.deploys.clone())
            .unwrap_or_default();
        let all = inner
            .state
            .apps
            .get(name)
            .map(|a| a.history.as_slice())
            .unwrap_or_default();
        let skip = limit.map_or(0, |l| all.len().saturating_sub(l));
        Ok(HistoryResponse {
            app: name.to_string(),
            history: all[skip..].to_vec(),
            deploys: deploys[limit.map_or(0, |l| deploys.len().saturating_sub(l))..].to_vec(),
        })
    }
}

fn app_status(route: &AppRoute, record: Option<&AppState>) -> AppStatus {
    let color = |c: Color| {
        let pool = route.pool(c);
        ColorStatus {
            healthy: pool.all_up(),
            connections: pool.metrics.active.get().max(0) as u64,
            upstreams: pool
                .upstreams
                .iter()
                .map(|u| UpstreamStatus {
                    addr: u.name.to_string(),
                    health: u.health.get(),
                    since: OffsetDateTime::from_unix_timestamp_nanos(
                        u.health.since_ms() as i128 * 1_000_000,
                    )
                    .unwrap_or(OffsetDateTime::UNIX_EPOCH),
                })
                .collect(),
        }
    };
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
    }
}

/// Gives every configured app without a state record its `initial_live`.
fn merge_new_apps(state: &mut State, apps: &[AppConfig]) {
    for app in apps {
        state
            .apps
            .entry(app.name.clone())
            .or_insert_with(|| AppState::new(app.initial_live));
    }
}

fn app_configs(config: &Config) -> Vec<Arc<AppConfig>> {
    config.apps.iter().cloned().map(Arc::new).collect()
}

/// Whether two versions of an app route and check the same way.
fn same_app(a: &AppConfig, b: &AppConfig) -> bool {
    a.hosts == b.hosts
        && a.pools == b.pools
        && a.health == b.health
        && a.initial_live == b.initial_live
        && format!("{:?}", a.deploy) == format!("{:?}", b.deploy)
}

/// Settings a reload cannot apply to a running process.
fn restart_required(old: &Config, new: &Config) -> Vec<String> {
    let mut keys = Vec::new();
    let mut check = |key: &str, changed: bool| {
        if changed {
            keys.push(key.to_string());
        }
    };
    check("proxy.listen", old.proxy.listen != new.proxy.listen);
    check("proxy.threads", old.proxy.threads != new.proxy.threads);
    check(
        "proxy.work_stealing",
        old.proxy.work_stealing != new.proxy.work_stealing,
    );
    check(
        "proxy.tls",
        format!("{:?}", old.proxy.tls) != format!("{:?}", new.proxy.tls),
    );
    check(
        "proxy.grace_period",
        old.proxy.grace_period != new.proxy.grace_period,
    );
    check(
        "proxy.shutdown_timeout",
        old.proxy.shutdown_timeout != new.proxy.shutdown_timeout,
    );
    check(
        "proxy.max_header_size",
        old.proxy.max_header_size != new.proxy.max_header_size,
    );
    check(
        "proxy.max_headers",
        old.proxy.max_headers != new.proxy.max_headers,
    );
    check(
        "proxy.client_timeout",
        old.proxy.client_timeout != new.proxy.client_timeout,
    );
    check(
        "proxy.client_idle_timeout",
        old.proxy.client_idle_timeout != new.proxy.client_idle_timeout,
    );
    check("control.listen", old.control.listen != new.control.listen);
    check(
        "control.token_file",
        old.control.token_file != new.control.token_file,
    );
    check(
        "control.watch_config",
        old.control.watch_config != new.control.watch_config,
    );
    check("control.nice", old.control.nice != new.control.nice);
    check(
        "metrics.listen",
        format!("{:?}", old.metrics) != format!("{:?}", new.metrics),
    );
    check("state.path", old.state.path != new.state.path);
    check("log", old.log != new.log);
    keys
}

/// A switch onto a color under deploy is refused, unless emergency (which
/// then aborts the deploy, see `apply`).
fn deploy_gate(inner: &Inner, cmd: &Command, to: Color) -> Result<(), ControlError> {
    match inner.deploys.get(&cmd.app) {
        Some(d) if d.status.color == to && !cmd.emergency => Err(ControlError::DeployRunning {
            app: cmd.app.clone(),
            color: d.status.color,
            detail: progress(&d.status),
        }),
        _ => Ok(()),
    }
}

/// `step 2/4 'build'`, for messages.
fn progress(d: &DeployStatus) -> String {
    match &d.step {
        Some(step) => format!(
            "step {}/{} '{step}', started by {}",
            d.step_index, d.steps_total, d.actor
        ),
        None => format!("starting, by {}", d.actor),
    }
}
