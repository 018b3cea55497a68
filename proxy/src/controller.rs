//! The controller: the one writer of routing and state.
//!
//! Every change of the live color goes through [`Controller::apply`], shaped
//! as a reducer: validate (app known, target differs, target healthy unless
//! emergency) -> persist durably -> publish the new snapshot (`store`) ->
//! answer. The API and start-up both use it; nothing else calls `store`.
//!
//! Changes are serialised by one async mutex around the persisted [`State`]
//! (there is one state file, so writes are serial anyway). The data plane
//! never takes that lock: it only `load`s the snapshot.

use std::sync::Arc;
use std::time::Instant;

use bgproxy_control::api::{
    AppStatus, Color, ColorStatus, Colors, Health, HistoryEntry, HistoryResponse, StatusResponse,
    SwitchKind, SwitchResponse, UpstreamStatus,
};
use time::OffsetDateTime;
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::routing::{AppRoute, Pool, Routing, Snapshot, Upstream};
use crate::state::{AppState, State, StateError, StateStore};

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
}

impl ControlError {
    /// HTTP status of the error.
    pub fn status(&self) -> u16 {
        match self {
            ControlError::UnknownApp(_) => 404,
            ControlError::AlreadyLive { .. }
            | ControlError::TargetUnhealthy { .. }
            | ControlError::NothingToRollBack(_) => 409,
            ControlError::Persist(_) => 500,
            ControlError::BadRequest(_) => 400,
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

/// The single writer. Cheap to share behind an `Arc`.
pub struct Controller {
    routing: Routing,
    store: StateStore,
    state: Mutex<State>,
    /// Host names per app, in snapshot order (for status).
    hosts: Vec<Vec<String>>,
    metrics: Arc<Metrics>,
}

impl Controller {
    /// Builds the first snapshot from `config` and the loaded `state`: apps
    /// without a record get `initial_live`; records of apps no longer
    /// configured are kept. Persists the merged state so that a recovered or
    /// first state is on disk before the front door opens, which also proves
    /// the state directory is writable.
    pub fn start(
        config: &Config,
        store: StateStore,
        mut state: State,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StateError> {
        for app in &config.apps {
            state
                .apps
                .entry(app.name.clone())
                .or_insert_with(|| AppState::new(app.initial_live));
        }
        let started = Instant::now();
        store.persist(&state)?;
        metrics.state_write.observe(started.elapsed().as_secs_f64());
        let routes = config
            .apps
            .iter()
            .map(|app| AppRoute {
                name: app.name.as_str().into(),
                live: state.apps[&app.name].live,
                pools: Color::ALL.map(|c| {
                    let upstreams = app
                        .upstreams(c)
                        .iter()
                        .map(|a| {
                            let gauge = metrics.upstream(&app.name, c, &a.to_string());
                            Arc::new(Upstream::new(*a, gauge))
                        })
                        .collect();
                    Arc::new(Pool::new(c, upstreams, metrics.pool(&app.name, c)))
                }),
            })
            .collect();
        let hosts: Vec<Vec<String>> = config.apps.iter().map(|a| a.hosts.clone()).collect();
        let snapshot = Snapshot::new(1, routes, &hosts);
        for app in &snapshot.apps {
            metrics.register_app(&app.name, app.live);
        }
        Ok(Controller {
            metrics,
            routing: Arc::new(arc_swap::ArcSwap::from_pointee(snapshot)),
            store,
            state: Mutex::new(state),
            hosts,
        })
    }

    /// The routing table the data plane reads.
    pub fn routing(&self) -> Routing {
        self.routing.clone()
    }

    /// Validates, persists and publishes one change. When this returns `Ok`,
    /// the change is on disk and the data plane routes by it.
    pub async fn apply(&self, cmd: Command) -> Result<SwitchResponse, ControlError> {
        let started = Instant::now();
        let mut state = self.state.lock().await;
        let snapshot = self.routing.load_full();
        let result = self.decide(&snapshot, &state, &cmd);
        let (index, entry) = match result {
            Ok(ok) => ok,
            Err(e) => {
                warn!(app = %cmd.app, actor = %cmd.actor, "refused: {e}");
                return Err(e);
            }
        };
        let mut next = state.clone();
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
        *state = next;
        self.routing
            .store(Arc::new(snapshot.with_live(index, entry.to)));
        drop(state);
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

    /// Status of every configured app, read under the writer lock so live
    /// color and switch count are from the same instant.
    pub async fn status(&self) -> StatusResponse {
        let state = self.state.lock().await;
        let snapshot = self.routing.load_full();
        StatusResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            generation: snapshot.generation,
            apps: snapshot
                .apps
                .iter()
                .enumerate()
                .map(|(i, a)| self.app_status(a, &self.hosts[i], state.apps.get(&*a.name)))
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
        let state = self.state.lock().await;
        let all = state
            .apps
            .get(name)
            .map(|a| a.history.as_slice())
            .unwrap_or_default();
        let skip = limit.map_or(0, |l| all.len().saturating_sub(l));
        Ok(HistoryResponse {
            app: name.to_string(),
            history: all[skip..].to_vec(),
        })
    }

    fn app_status(
        &self,
        route: &AppRoute,
        hosts: &[String],
        record: Option<&AppState>,
    ) -> AppStatus {
        let color = |c: Color| {
            let pool = route.pool(c);
            ColorStatus {
                healthy: pool.all_up(),
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
            hosts: hosts.to_vec(),
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
}
