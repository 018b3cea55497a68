//! The deploy runner: `bgctl deploy` runs the app's configured steps
//! against the STANDBY color, never the live one.
//!
//! Flow: [`DeployPlan::new`] fixes the plan (the color that is standby now,
//! the steps, the log file) when the controller accepts the deploy -> [`run`]
//! executes each step as `sh -c` in its own process group, with `{app}`,
//! `{color}`, `{host}`, `{port}` filled in and `BG_*` variables set
//! (`BG_UPSTREAMS` the app's own upstreams of the color, and
//! `BG_UPSTREAMS_<ROUTE>` each `[[app.routes]]` route's), sending
//! every output line as a [`DeployEvent`] on its channel and into the log
//! file -> a step that exits non-zero or passes its timeout (its whole
//! process group is killed) fails the deploy and later steps do not run ->
//! after the last step the runner waits until every upstream of the color
//! (the app's and every route's) passed a health check made *after* the
//! steps ended -> it returns the
//! [`DeployRecord`], which the controller commits.
//!
//! The runner knows nothing of the controller: it reads its plan, reports on
//! a channel and returns its record. The controller follows the events (for
//! `status`), forwards them to the client while it listens, and aborts the
//! run through the `abort` watch when an emergency switch makes the color
//! live.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bgproxy_control::api::{
    Color, DeployEvent, DeployRecord, DeployResult, DeployStatus, DeployStepRecord, Health,
};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use time::OffsetDateTime;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::{mpsc, watch};
use tracing::warn;

use super::change::ControlError;
use crate::config::DeployStep;
use crate::dataplane::health_cell::now_ms;
use crate::dataplane::routing::{AppRoute, Pool};

/// Everything a deploy run needs, fixed when it starts.
pub struct DeployPlan {
    pub id: String,
    pub app: String,
    /// The standby color when the deploy started.
    pub color: Color,
    pub started: OffsetDateTime,
    /// The steps to run, in order.
    pub steps: Vec<DeployStep>,
    /// Migrate steps left out.
    pub skipped: Vec<String>,
    /// Every configured step name, in configured order.
    pub order: Vec<String>,
    /// Every pool of `color` (the app's own, then each route's), for the
    /// health wait.
    pub pools: Vec<Arc<Pool>>,
    /// The app's own upstreams of `color` (`BG_UPSTREAMS`, `{host}`).
    pub upstreams: Vec<SocketAddr>,
    /// Each route's deploy variable (`BG_UPSTREAMS_API`) and upstreams of
    /// `color`.
    pub route_upstreams: Vec<(String, Vec<SocketAddr>)>,
    pub health_timeout: Duration,
    pub migrate: bool,
    pub actor: String,
    pub log_path: PathBuf,
}

impl DeployPlan {
    /// The plan for deploying `route`'s standby color at `started`: the
    /// steps to run (migrate steps only with `migrate`) and the log file
    /// `<state_dir>/deploys/<id>.log`. Refused when no step would run.
    pub fn new(
        route: &AppRoute,
        migrate: bool,
        actor: &str,
        state_dir: &Path,
        started: OffsetDateTime,
    ) -> Result<DeployPlan, ControlError> {
        let app = &*route.name;
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
        let stamp = started
            .format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second].[subsecond digits:3]Z"
            ))
            .unwrap_or_default();
        let id = format!("{app}-{stamp}-{color}");
        Ok(DeployPlan {
            log_path: state_dir.join("deploys").join(format!("{id}.log")),
            id,
            app: app.to_string(),
            color,
            started,
            pools: route.pools_of(color).map(|(_, p)| p.clone()).collect(),
            upstreams: route.config.upstreams(color).to_vec(),
            route_upstreams: route
                .config
                .routes
                .iter()
                .map(|r| (r.env_name(), r.upstreams(color).to_vec()))
                .collect(),
            skipped: skipped.into_iter().map(|s| s.name).collect(),
            order: config.steps.iter().map(|s| s.name.clone()).collect(),
            steps,
            health_timeout: config.health_timeout,
            migrate,
            actor: actor.to_string(),
        })
    }

    /// What `status` shows of this deploy before its first step.
    pub fn status(&self) -> DeployStatus {
        DeployStatus {
            id: self.id.clone(),
            color: self.color,
            started: self.started,
            migrate: self.migrate,
            actor: self.actor.clone(),
            step: None,
            step_index: 0,
            steps_total: self.steps.len(),
        }
    }
}

/// Moves `status` along with an event of its run: the step running, or
/// `health` while waiting for the standby.
pub fn follow(status: &mut DeployStatus, event: &DeployEvent) {
    match event {
        DeployEvent::StepStarted { step, index, .. } => {
            status.step = Some(step.clone());
            status.step_index = *index;
        }
        DeployEvent::HealthWait { .. } => {
            status.step = Some("health".into());
            status.step_index = status.steps_total;
        }
        _ => {}
    }
}

/// How long a killed step's process group gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// Where events go: the channel (if still read) and the log file.
struct Sink {
    events: mpsc::UnboundedSender<DeployEvent>,
    log: Option<std::fs::File>,
}

impl Sink {
    fn emit(&mut self, event: DeployEvent) {
        if let Some(f) = &mut self.log {
            let line = match &event {
                DeployEvent::Output { stream, line, .. } => format!("{stream}| {line}"),
                other => format!("== {}", serde_json::to_string(other).unwrap_or_default()),
            };
            if writeln!(f, "{line}").is_err() {
                self.log = None;
            }
        }
        // Nobody may listen any more: the deploy goes on regardless.
        let _ = self.events.send(event);
    }
}

/// Fills `{app}`, `{color}`, `{host}`, `{port}` (validated by the config:
/// no other placeholder can appear).
pub fn fill(run: &str, plan: &DeployPlan) -> String {
    let first = plan.upstreams.first();
    run.replace("{app}", &plan.app)
        .replace("{color}", plan.color.as_str())
        .replace(
            "{host}",
            &first.map(|a| a.ip().to_string()).unwrap_or_default(),
        )
        .replace(
            "{port}",
            &first.map(|a| a.port().to_string()).unwrap_or_default(),
        )
}

/// How one step ended.
enum StepEnd {
    Exited(i32),
    TimedOut,
    Aborted,
    SpawnFailed(String),
}

/// Runs the plan to its end and returns its record. Events go to `events`
/// (dropped when nobody listens); `abort` becoming true stops the step
/// running and fails the deploy as aborted.
pub async fn run(
    mut plan: DeployPlan,
    abort: watch::Receiver<bool>,
    events: mpsc::UnboundedSender<DeployEvent>,
) -> DeployRecord {
    let started = Instant::now();
    let time = plan.started;
    // A fresh file, never through a link (see `state_dir`): a name that is
    // already taken is not written over.
    let log = plan
        .log_path
        .parent()
        .map(super::state_dir::prepare_subdir)
        .transpose()
        .and_then(|_| {
            super::state_dir::options()
                .write(true)
                .create_new(true)
                .open(&plan.log_path)
                .map_err(|e| super::state_dir::explain(e, &plan.log_path))
        });
    let log = match log {
        Ok(f) => Some(f),
        Err(e) => {
            warn!(
                "cannot write the deploy log {}: {e}",
                plan.log_path.display()
            );
            None
        }
    };
    let log_name = plan.log_path.display().to_string();
    let mut sink = Sink { events, log };
    sink.emit(DeployEvent::Started {
        id: plan.id.clone(),
        app: plan.app.clone(),
        color: plan.color,
        steps: plan.steps.iter().map(|s| s.name.clone()).collect(),
        skipped: plan.skipped.clone(),
        log: log_name.clone(),
    });

    let mut records = Vec::new();
    let mut failure: Option<(DeployResult, Option<String>, String)> = None;
    let total = plan.steps.len();
    let steps = std::mem::take(&mut plan.steps);
    for (i, step) in steps.iter().enumerate() {
        if failure.is_some() {
            records.push(DeployStepRecord {
                name: step.name.clone(),
                exit_code: None,
                duration_ms: 0,
                ok: false,
                skipped: true,
            });
            continue;
        }
        let command = fill(&step.run, &plan);
        sink.emit(DeployEvent::StepStarted {
            step: step.name.clone(),
            index: i + 1,
            total,
            command: command.clone(),
        });
        let step_started = Instant::now();
        let end = run_step(step, &command, &plan, &abort, &mut sink).await;
        let duration_ms = step_started.elapsed().as_millis() as u64;
        let (exit_code, error) = match &end {
            StepEnd::Exited(0) => (Some(0), None),
            StepEnd::Exited(code) => (Some(*code), Some(format!("exit status {code}"))),
            StepEnd::TimedOut => (
                None,
                Some(format!(
                    "timed out after {:?}; its process group was killed",
                    step.timeout
                )),
            ),
            StepEnd::Aborted => (
                None,
                Some("aborted: an emergency switch made this color live".into()),
            ),
            StepEnd::SpawnFailed(e) => (None, Some(format!("could not start: {e}"))),
        };
        let ok = error.is_none();
        sink.emit(DeployEvent::StepFinished {
            step: step.name.clone(),
            exit_code,
            duration_ms,
            ok,
            error: error.clone(),
        });
        records.push(DeployStepRecord {
            name: step.name.clone(),
            exit_code,
            duration_ms,
            ok,
            skipped: false,
        });
        if let Some(e) = error {
            let result = if matches!(end, StepEnd::Aborted) {
                DeployResult::Aborted
            } else {
                DeployResult::Failed
            };
            failure = Some((
                result,
                Some(step.name.clone()),
                format!("step '{}' failed: {e}", step.name),
            ));
        }
    }

    if failure.is_none() {
        failure = wait_healthy(&plan, &abort, &mut sink)
            .await
            .err()
            .map(|(r, e)| (r, None, e));
    }
    let duration_ms = started.elapsed().as_millis() as u64;
    let (result, failed_step, error) = match failure {
        None => (DeployResult::Success, None, None),
        Some((r, step, e)) => (r, step, Some(e)),
    };
    sink.emit(DeployEvent::Done {
        result,
        duration_ms,
        failed_step,
        error: error.clone(),
        log: log_name.clone(),
    });
    let mut all = records;
    all.extend(plan.skipped.iter().map(|name| DeployStepRecord {
        name: name.clone(),
        exit_code: None,
        duration_ms: 0,
        ok: false,
        skipped: true,
    }));
    all.sort_by_key(|r| plan.order.iter().position(|n| *n == r.name));
    DeployRecord {
        id: plan.id,
        time,
        color: plan.color,
        result,
        migrate: plan.migrate,
        steps: all,
        duration_ms,
        actor: plan.actor,
        error,
        log: log_name,
    }
}

/// Runs one step in its own process group; streams its output.
async fn run_step(
    step: &DeployStep,
    command: &str,
    plan: &DeployPlan,
    abort: &watch::Receiver<bool>,
    sink: &mut Sink,
) -> StepEnd {
    let first = plan.upstreams.first();
    // Steps are started from the control API's thread, which may run at
    // `control.nice`, and a process inherits the nice value of the thread
    // that starts it. A step (a build, a `docker pull`) must not outrank
    // the traffic: it runs at the daemon's own priority, through coreutils'
    // `nice`, which sets it before `sh` starts.
    let raised = crate::controlplane::priority::raised_by();
    let mut cmd = if raised > 0 {
        let mut nice = Command::new("nice");
        nice.args(["-n", &raised.to_string(), "sh"]);
        nice
    } else {
        Command::new("sh")
    };
    cmd.arg("-c")
        .arg(command)
        .env("BG_APP", &plan.app)
        .env("BG_COLOR", plan.color.as_str())
        .env(
            "BG_HOST",
            first.map(|a| a.ip().to_string()).unwrap_or_default(),
        )
        .env(
            "BG_PORT",
            first.map(|a| a.port().to_string()).unwrap_or_default(),
        )
        .env("BG_UPSTREAMS", joined(&plan.upstreams))
        .envs(
            plan.route_upstreams
                .iter()
                .map(|(name, addrs)| (name, joined(addrs))),
        )
        .envs(step.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return StepEnd::SpawnFailed(e.to_string()),
    };
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));
    let (tx, mut rx) = mpsc::unbounded_channel::<(&'static str, String)>();
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(pump(
            BufReader::new(out),
            "stdout",
            tx.clone(),
        )));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(pump(
            BufReader::new(err),
            "stderr",
            tx.clone(),
        )));
    }
    drop(tx);
    let deadline = tokio::time::sleep(step.timeout);
    tokio::pin!(deadline);
    let mut abort = abort.clone();
    let end = loop {
        tokio::select! {
            Some((stream, line)) = rx.recv() => {
                sink.emit(DeployEvent::Output { step: step.name.clone(), stream: stream.into(), line });
            }
            status = child.wait() => {
                break match status {
                    Ok(s) => StepEnd::Exited(s.code().unwrap_or(-1)),
                    Err(e) => StepEnd::SpawnFailed(e.to_string()),
                };
            }
            _ = &mut deadline => break StepEnd::TimedOut,
            Ok(()) = abort.changed() => if *abort.borrow() { break StepEnd::Aborted },
        }
    };
    if matches!(end, StepEnd::TimedOut | StepEnd::Aborted) {
        kill_group(pgid, &mut child).await;
    }
    // Whatever is left in the pipes; a background child that keeps them
    // open must not hold the deploy, so this is bounded.
    let drain = async {
        while let Some((stream, line)) = rx.recv().await {
            sink.emit(DeployEvent::Output {
                step: step.name.clone(),
                stream: stream.into(),
                line,
            });
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(500), drain).await;
    for r in readers {
        r.abort();
    }
    end
}

/// `10.0.0.22:3001,10.0.0.23:3001`.
fn joined(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// SIGTERM to the step's whole process group, then SIGKILL.
async fn kill_group(pgid: Option<Pid>, child: &mut tokio::process::Child) {
    let Some(pgid) = pgid else { return };
    let _ = killpg(pgid, Signal::SIGTERM);
    if tokio::time::timeout(KILL_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = child.wait().await;
    }
    // Children that ignored SIGTERM or outlived the shell.
    let _ = killpg(pgid, Signal::SIGKILL);
}

async fn pump<R: tokio::io::AsyncRead + Unpin>(
    reader: BufReader<R>,
    stream: &'static str,
    tx: mpsc::UnboundedSender<(&'static str, String)>,
) {
    let mut lines = reader.lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if tx.send((stream, line)).is_err() {
            return;
        }
    }
}

/// Waits until every upstream of the deployed color passed a health check
/// that began after the steps ended (a restart must be seen, not an `up`
/// from before it).
async fn wait_healthy(
    plan: &DeployPlan,
    abort: &watch::Receiver<bool>,
    sink: &mut Sink,
) -> Result<(), (DeployResult, String)> {
    let since = now_ms();
    let started = Instant::now();
    sink.emit(DeployEvent::HealthWait {
        color: plan.color,
        timeout_ms: plan.health_timeout.as_millis() as u64,
    });
    let mut abort = abort.clone();
    loop {
        let fresh = plan
            .pools
            .iter()
            .flat_map(|p| p.upstreams.iter())
            .all(|u| u.health.get() == Health::Up && u.health.last_pass_ms() > since);
        if fresh {
            sink.emit(DeployEvent::Healthy {
                color: plan.color,
                duration_ms: started.elapsed().as_millis() as u64,
            });
            return Ok(());
        }
        if started.elapsed() >= plan.health_timeout {
            let detail = plan
                .pools
                .iter()
                .flat_map(|p| p.upstreams.iter())
                .map(|u| format!("{} is {}", u.name, u.health.get()))
                .collect::<Vec<_>>()
                .join(", ");
            return Err((
                DeployResult::Failed,
                format!(
                    "{} did not become healthy within {:?}: {detail}",
                    plan.color, plan.health_timeout
                ),
            ));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            Ok(()) = abort.changed() => if *abort.borrow() {
                return Err((DeployResult::Aborted, "aborted: an emergency switch made this color live".into()));
            },
        }
    }
}
