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
    AppStatus, Color, ColorStatus, Colors, DeployRecord, DeployStatus, Health, HistoryEntry,
    HistoryResponse, ReloadResponse, StatusResponse, SwitchKind, UpstreamStatus,
};
use time::OffsetDateTime;

use super::change::{Change, Command, ControlError};
use super::state::{AppState, State};
use crate::config::{AppConfig, Config};
use crate::dataplane::routing::{AppRoute, Snapshot};

/// What a command was decided to do; the controller commits it.
#[derive(Debug)]
pub enum Decision {
    /// Make `entry.to` live for the app at `index` of the snapshot.
    Switch {
        index: usize,
        entry: HistoryEntry,
        /// An emergency switch onto a color under deploy aborts the deploy:
        /// its steps must never run against the live color.
        abort_deploy: bool,
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
    match &cmd.change {
        Change::Switch { to } => switch(snapshot, deploy, cmd, *to, SwitchKind::Switch, now),
        Change::Rollback => {
            app_index(snapshot, &cmd.app)?;
            let to = rollback_target(state, &cmd.app)
                .ok_or_else(|| ControlError::NothingToRollBack(cmd.app.clone()))?;
            switch(snapshot, deploy, cmd, to, SwitchKind::Rollback, now)
        }
        Change::Reload(new) => Ok(Decision::Reload {
            config: new.clone(),
            report: reload_report(config, new, boot),
        }),
        Change::DeployStarted { migrate } => {
            deploy_gate(snapshot, deploy, &cmd.app).map(|index| Decision::Deploy {
                index,
                migrate: *migrate,
            })
        }
        Change::DeployFinished(record) => Ok(Decision::DeployFinished(record.clone())),
    }
}

fn app_index(snapshot: &Snapshot, app: &str) -> Result<usize, ControlError> {
    snapshot
        .app_index(app)
        .ok_or_else(|| ControlError::UnknownApp(app.to_string()))
}

/// The gates of a switch or rollback to `to`.
pub fn switch(
    snapshot: &Snapshot,
    deploy: Option<&DeployStatus>,
    cmd: &Command,
    to: Color,
    kind: SwitchKind,
    now: OffsetDateTime,
) -> Result<Decision, ControlError> {
    let index = app_index(snapshot, &cmd.app)?;
    let route = &snapshot.apps[index];
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
    let on_target = deploy.filter(|d| d.color == to);
    if let Some(d) = on_target.filter(|_| !cmd.emergency) {
        return Err(ControlError::DeployRunning {
            app: cmd.app.clone(),
            color: d.color,
            detail: progress(d),
        });
    }
    Ok(Decision::Switch {
        index,
        entry: HistoryEntry {
            time: now,
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
        },
        abort_deploy: on_target.is_some(),
    })
}

/// The color a rollback goes to: the one the last switch left. `None` when
/// the app was never switched.
pub fn rollback_target(state: &State, app: &str) -> Option<Color> {
    let record = state.apps.get(app).filter(|a| a.switch_count > 0)?;
    record.history.last().map(|h| h.from)
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

/// The state after `decision` for `app`. Unchanged for a deploy start.
pub fn next_state(state: &State, app: &str, decision: &Decision) -> State {
    let mut next = state.clone();
    match decision {
        Decision::Switch { entry, .. } => next
            .apps
            .entry(app.to_string())
            .or_insert_with(|| AppState::new(entry.from))
            .record(entry.clone()),
        Decision::Reload { config, .. } => merge_new_apps(&mut next, &config.apps),
        Decision::Deploy { .. } => {}
        Decision::DeployFinished(record) => next
            .apps
            .entry(app.to_string())
            .or_insert_with(|| AppState::new(record.color.other()))
            .record_deploy((**record).clone()),
    }
    next
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
        generation: snapshot.generation,
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
    }

    /// Both apps on their `initial_live`, every upstream `unknown`.
    fn world() -> World {
        let config = config(TWO_APPS);
        let mut state = State::default();
        merge_new_apps(&mut state, &config.apps);
        let apps: Vec<_> = config.apps.iter().cloned().map(Arc::new).collect();
        let snapshot = Snapshot::build(1, &apps, |a| state.apps[a].live, None, &Metrics::new());
        World {
            config,
            snapshot,
            state,
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
                OffsetDateTime::UNIX_EPOCH,
            )
        }

        /// Commits a decision the way the controller does (state and
        /// snapshot), so a later rule sees it.
        fn commit(&mut self, cmd: &Command, decision: &Decision) {
            self.state = next_state(&self.state, &cmd.app, decision);
            if let Decision::Switch { index, entry, .. } = decision {
                self.snapshot = self.snapshot.with_live(*index, entry.to);
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
        assert_eq!(next_state(&w.state, "web", &decision), w.state);
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
        let next = next_state(&w.state, "web", &decision);
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
        let next = next_state(&w.state, "", &decision);
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
}
