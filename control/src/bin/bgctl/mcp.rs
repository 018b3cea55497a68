//! `bgctl mcp`: a Model Context Protocol server on stdio for AI assistants,
//! on the official Rust SDK (`rmcp`), talking to the control API with
//! bgctl's `--addr` and token (meant to be the requester's token).
//!
//! Tools: `get_deployment_status` and `get_history` (read-only),
//! `deploy_to_standby` (runs the deploy steps against the STANDBY and
//! reports each step as an MCP progress notification when the client sent
//! a progress token), and `switch_traffic` / `rollback`, which only create
//! a PENDING REQUEST: the answer is its id, the plan and the
//! `bgctl approve <id>` a human must run. Nothing here can move traffic -
//! and with the requester's token the daemon refuses it anyway
//! (`forbidden_for_role`), whatever an assistant sends.
//!
//! Flow: stdin/stdout carry JSON-RPC; each tool call runs the blocking
//! [`Client`] on tokio's blocking pool (never on the reactor), and answers
//! a short text for people plus the JSON the daemon answered. Failures the
//! assistant should see (refused, unreachable, unknown app) are tool
//! errors (`isError`), not protocol errors. stdout belongs to the protocol:
//! nothing else is printed there.

use std::sync::Arc;
use std::time::Duration;

use bgproxy_control::api::{
    AppStatus, CreateRequest, DeployEvent, DeployRequest, DeployResult, StatusResponse,
};
use bgproxy_control::client::Client;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, Implementation, ProgressNotificationParam, ProgressToken,
    RequestMetaObject, ServerCapabilities, ServerConfig,
};
use rmcp::{schemars, tool, tool_handler, tool_router, ErrorData, Peer, RoleServer, ServerHandler};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{fail, Failure, EXIT_REFUSED};

/// How many entries `get_history` answers.
const HISTORY_LIMIT: usize = 20;
/// Lines of a failed deploy's output put in the answer.
const OUTPUT_TAIL: usize = 30;

/// What the server tells the assistant about itself at `initialize`.
const INSTRUCTIONS: &str = "bgproxy runs each app in two colors, blue and green: one is LIVE (takes the traffic), the other is the STANDBY. \
Release flow: get_deployment_status -> deploy_to_standby (never touches the live color) -> switch_traffic. \
switch_traffic and rollback never move traffic: they create a pending request, and a human must approve it by running the `bgctl approve <id>` command in the answer. \
Tell the user that command; you cannot approve it yourself.";

/// Serves MCP on stdin/stdout until the client closes them.
pub fn serve(client: Client, app: Option<String>) -> Result<(), Failure> {
    // The blocking client is dropped here, outside the runtime: dropping
    // it inside async code would panic.
    let client = Arc::new(client);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| fail(EXIT_REFUSED, format!("cannot start the MCP server: {e}")))?;
    let server = Bgproxy {
        client: client.clone(),
        app,
    };
    let result = runtime.block_on(async move {
        use rmcp::ServiceExt;
        let running = server.serve(rmcp::transport::stdio()).await?;
        running.waiting().await?;
        Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    });
    // A deploy still streaming when the client left goes on on the daemon;
    // do not wait for its blocking reader.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result.map_err(|e| fail(EXIT_REFUSED, format!("the MCP session failed: {e}")))
}

/// The MCP server: the control API client and `--app`, if given.
#[derive(Clone)]
pub struct Bgproxy {
    client: Arc<Client>,
    app: Option<String>,
}

/// `{app?}`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
pub struct AppArgs {
    /// The app (see get_deployment_status); may be left out when only one
    /// app is configured.
    #[serde(default)]
    pub app: Option<String>,
}

/// `{app?, runMigrations?}`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeployArgs {
    /// The app; may be left out when only one app is configured.
    #[serde(default)]
    pub app: Option<String>,
    /// Also run the deploy steps marked `migrate` (database migrations).
    #[serde(default)]
    pub run_migrations: bool,
}

/// `{app?, emergency?, reason?}`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
pub struct SwitchArgs {
    /// The app; may be left out when only one app is configured.
    #[serde(default)]
    pub app: Option<String>,
    /// Ask for the switch without the health gate (for when the live color
    /// is broken); the human approving it sees that it is an emergency.
    #[serde(default)]
    pub emergency: bool,
    /// Why, shown to the human who approves and kept in the history.
    #[serde(default)]
    pub reason: Option<String>,
}

/// `{app?, reason?}`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
pub struct RollbackArgs {
    /// The app; may be left out when only one app is configured.
    #[serde(default)]
    pub app: Option<String>,
    /// Why, shown to the human who approves and kept in the history.
    #[serde(default)]
    pub reason: Option<String>,
}

/// A tool's answer: a line or two for people, then the daemon's JSON.
fn answer(summary: String, data: Value) -> CallToolResult {
    CallToolResult::success(vec![
        ContentBlock::text(summary),
        ContentBlock::text(serde_json::to_string_pretty(&data).unwrap_or_default()),
    ])
}

/// A failure the assistant should read (refused, unknown app, ...).
fn tool_error(message: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message.into())])
}

impl From<Failure> for CallToolResult {
    fn from(f: Failure) -> Self {
        tool_error(f.message)
    }
}

/// Who asks, as the daemon records it: bgctl's `user@host`, marked as an
/// assistant's.
fn requester() -> String {
    format!("{} (assistant, bgctl mcp)", crate::actor())
}

impl Bgproxy {
    /// Runs blocking control API work off the reactor.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Client) -> Result<T, Failure> + Send + 'static,
    ) -> Result<T, Failure> {
        let client = self.client.clone();
        tokio::task::spawn_blocking(move || work(&client))
            .await
            .unwrap_or_else(|e| Err(fail(EXIT_REFUSED, format!("the call failed: {e}"))))
    }

    /// The app named by the tool, else `--app`, else the only one; with
    /// the status it came from.
    async fn resolve(&self, app: Option<String>) -> Result<(AppStatus, u64), Failure> {
        let name = app.or_else(|| self.app.clone());
        self.blocking(move |c| crate::resolve_app_at(c, name.as_deref()))
            .await
    }
}

#[tool_router]
impl Bgproxy {
    /// Where each app stands: which color is LIVE and which is the STANDBY,
    /// each color's upstreams and their health, the traffic split and any
    /// rollout, the switch count, the deploy in progress, and the
    /// `generation` of the state. Changes nothing.
    #[tool(annotations(
        title = "Deployment status",
        read_only_hint = true,
        open_world_hint = false
    ))]
    async fn get_deployment_status(
        &self,
        Parameters(args): Parameters<AppArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let name = args.app.or_else(|| self.app.clone());
        let status = self.blocking(|c| c.status().map_err(Failure::from)).await;
        let StatusResponse {
            version,
            certificates: _,
            generation,
            mut apps,
            cluster: _,
        } = match status {
            Ok(s) => s,
            Err(f) => return Ok(f.into()),
        };
        if let Some(n) = &name {
            if !apps.iter().any(|a| &a.name == n) {
                return Ok(crate::unknown_app(n, &apps).into());
            }
            apps.retain(|a| &a.name == n);
        }
        let summary = apps.iter().map(describe).collect::<Vec<_>>().join("\n");
        let data = json!({"version": version, "generation": generation, "apps": apps});
        Ok(answer(summary, data))
    }

    /// Deploys the app's new version to its STANDBY color: runs its
    /// configured deploy steps against the standby only (the live color is
    /// never touched), then waits until the standby is healthy. Reports
    /// each step as a progress notification when the request carries a
    /// progress token, and answers how the deploy ended (a failed step
    /// with its output). Moves no traffic.
    #[tool(annotations(
        title = "Deploy to the standby",
        read_only_hint = false,
        destructive_hint = true,
        idempotent_hint = false,
        open_world_hint = false
    ))]
    async fn deploy_to_standby(
        &self,
        Parameters(args): Parameters<DeployArgs>,
        meta: RequestMetaObject,
        peer: Peer<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let (app, generation) = match self.resolve(args.app).await {
            Ok(a) => a,
            Err(f) => return Ok(f.into()),
        };
        let req = DeployRequest {
            migrate: args.run_migrations,
            actor: Some(requester()),
            expect_generation: Some(generation),
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<DeployEvent>();
        let name = app.name.clone();
        let reader = self.blocking(move |c| {
            for item in c.deploy(&name, &req)? {
                let (_, event) = item?;
                if tx.send(event).is_err() {
                    break;
                }
            }
            Ok(())
        });
        let token = meta.get_progress_token();
        let mut progress = Progress::new(peer, token);
        let mut report = DeployReport::default();
        let follow = async {
            while let Some(event) = rx.recv().await {
                if let Some((at, message)) = report.record(&event) {
                    progress.send(at, report.total, message).await;
                }
            }
        };
        let (read, ()) = tokio::join!(reader, follow);
        if let Err(f) = read {
            return Ok(tool_error(format!("{}{}", f.message, report.so_far())));
        }
        Ok(report.answer(&app))
    }

    /// Asks for the app's traffic to be switched to its STANDBY color. This
    /// does NOT move traffic: it creates a pending request and answers its
    /// id, what it would do, and the exact `bgctl approve <id>` command a
    /// human must run to carry it out (they see the plan and can deny it).
    /// Tell the user that command.
    #[tool(annotations(
        title = "Ask for a switch to the standby",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = false,
        open_world_hint = false
    ))]
    async fn switch_traffic(
        &self,
        Parameters(args): Parameters<SwitchArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let (app, generation) = match self.resolve(args.app).await {
            Ok(a) => a,
            Err(f) => return Ok(f.into()),
        };
        let to = app.standby;
        let mut notes = Vec::new();
        if !app.colors.get(to).healthy && !args.emergency {
            notes.push(format!(
                "warning: {to} is not healthy now ({}); the approval will be refused until it is",
                crate::render::unhealthy_summary(app.colors.get(to))
            ));
        }
        let req = CreateRequest {
            action: "switch".into(),
            to: Some(to),
            reason: args.reason,
            emergency: args.emergency,
            actor: Some(requester()),
            expect_generation: Some(generation),
        };
        Ok(self.request(&app, req, notes).await)
    }

    /// Asks for the app's traffic to go back to the previous live color.
    /// This does NOT move traffic: it creates a pending request and
    /// answers its id, what it would do, and the exact `bgctl approve <id>`
    /// command a human must run to carry it out. Tell the user that
    /// command.
    #[tool(annotations(
        title = "Ask for a rollback",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = false,
        open_world_hint = false
    ))]
    async fn rollback(
        &self,
        Parameters(args): Parameters<RollbackArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let (app, generation) = match self.resolve(args.app).await {
            Ok(a) => a,
            Err(f) => return Ok(f.into()),
        };
        if app.switch_count == 0 {
            return Ok(tool_error(format!(
                "app '{}' has never been switched: there is no previous live color to roll back to",
                app.name
            )));
        }
        let req = CreateRequest {
            action: "rollback".into(),
            to: None,
            reason: args.reason,
            emergency: false,
            actor: Some(requester()),
            expect_generation: Some(generation),
        };
        Ok(self.request(&app, req, Vec::new()).await)
    }

    /// The app's recent history: switches and rollbacks (time, from, to,
    /// kind, reason, who) and deploys (color, result, steps), newest last.
    /// Changes nothing.
    #[tool(annotations(title = "History", read_only_hint = true, open_world_hint = false))]
    async fn get_history(
        &self,
        Parameters(args): Parameters<AppArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let (app, _) = match self.resolve(args.app).await {
            Ok(a) => a,
            Err(f) => return Ok(f.into()),
        };
        let name = app.name.clone();
        let history = self
            .blocking(move |c| c.history(&name, Some(HISTORY_LIMIT)).map_err(Failure::from))
            .await;
        let h = match history {
            Ok(h) => h,
            Err(f) => return Ok(f.into()),
        };
        let mut lines = vec![format!(
            "app '{}': {} switch(es) and {} deploy(s), newest last",
            h.app,
            h.history.len(),
            h.deploys.len()
        )];
        for e in &h.history {
            lines.push(format!(
                "{} {} -> {} ({}) by {}{}",
                crate::render::when(e.time),
                e.from,
                e.to,
                e.kind,
                e.actor,
                e.reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ));
        }
        for d in &h.deploys {
            lines.push(format!(
                "{} deploy to {}: {} by {}",
                crate::render::when(d.time),
                d.color,
                d.result.as_str(),
                d.actor
            ));
        }
        let data = serde_json::to_value(&h).unwrap_or(Value::Null);
        Ok(answer(lines.join("\n"), data))
    }
}

impl Bgproxy {
    /// Creates the pending request `req` and answers its id, plan and the
    /// approve command.
    async fn request(
        &self,
        app: &AppStatus,
        req: CreateRequest,
        notes: Vec<String>,
    ) -> CallToolResult {
        let name = app.name.clone();
        let created = self
            .blocking(move |c| c.create_request(&name, &req).map_err(Failure::from))
            .await;
        let created = match created {
            Ok(c) => c.value,
            Err(f) => return f.into(),
        };
        let id = &created.request.id;
        let mut summary = format!(
            "Pending request {id} created: {}.\nTraffic has NOT moved. A human must approve it by running:\n\n    {}\n\n(or drop it with `bgctl deny {id}`). It expires at {}.",
            created.plan,
            created.approve_with,
            crate::render::when(created.request.expires_at)
        );
        for n in notes {
            summary.push('\n');
            summary += &n;
        }
        let data = json!({
            "request_id": id,
            "status": created.request.status,
            "plan": created.plan,
            "approve_with": created.approve_with,
            "request": created.request,
        });
        answer(summary, data)
    }
}

#[tool_handler]
impl ServerHandler for Bgproxy {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("bgctl", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }
}

/// One line on an app: live, standby and its health, split, deploy.
fn describe(a: &AppStatus) -> String {
    let standby = a.colors.get(a.standby);
    let mut s = format!(
        "app '{}': LIVE {} ({}% of requests), STANDBY {} ({}); {} switch(es)",
        a.name,
        a.live,
        a.weights.of(a.live),
        a.standby,
        if standby.healthy {
            "healthy".to_string()
        } else {
            format!("NOT healthy: {}", crate::render::unhealthy_summary(standby))
        },
        a.switch_count
    );
    if let Some(r) = &a.rollout {
        s += &format!("; rollout of {} at {}% ({})", r.to, r.percent, r.state);
    }
    if let Some(d) = &a.deploy {
        s += &format!(
            "; deploy to {} running (step {}/{})",
            d.color, d.step_index, d.steps_total
        );
    }
    s
}

/// Progress notifications of one tool call, when the client asked for them
/// (sent a progress token): each value higher than the one before.
struct Progress {
    peer: Peer<RoleServer>,
    token: Option<ProgressToken>,
    last: f64,
}

impl Progress {
    fn new(peer: Peer<RoleServer>, token: Option<ProgressToken>) -> Progress {
        Progress {
            peer,
            token,
            last: -1.0,
        }
    }

    async fn send(&mut self, at: f64, total: Option<f64>, message: String) {
        let Some(token) = &self.token else { return };
        // The protocol wants progress to increase with every notification.
        let at = if at > self.last { at } else { self.last + 0.01 };
        self.last = at;
        let mut p = ProgressNotificationParam::new(token.clone(), at).with_message(message);
        if let Some(total) = total {
            p = p.with_total(total);
        }
        // A client that went away is not the deploy's problem.
        let _ = self.peer.notify_progress(p).await;
    }
}

/// What a deploy's events said, for progress and the final answer.
#[derive(Default)]
struct DeployReport {
    color: Option<bgproxy_control::api::Color>,
    /// Steps that run, plus the health wait.
    total: Option<f64>,
    steps: Vec<Value>,
    output: Vec<String>,
    done: Option<Value>,
    result: Option<DeployResult>,
}

impl DeployReport {
    /// Records `event`; the progress to report for it, if any.
    fn record(&mut self, event: &DeployEvent) -> Option<(f64, String)> {
        match event {
            DeployEvent::Started {
                color,
                steps,
                skipped,
                ..
            } => {
                self.color = Some(*color);
                self.total = Some(steps.len() as f64 + 1.0);
                let skipped = if skipped.is_empty() {
                    String::new()
                } else {
                    format!(", skipping {} (no runMigrations)", skipped.join(", "))
                };
                Some((
                    0.0,
                    format!(
                        "deploying to {color} (the standby): {} step(s){skipped}",
                        steps.len()
                    ),
                ))
            }
            DeployEvent::StepStarted {
                step, index, total, ..
            } => {
                self.output.clear();
                Some((
                    *index as f64 - 0.5,
                    format!("step {index}/{total} '{step}' running"),
                ))
            }
            DeployEvent::Output { stream, line, .. } => {
                self.output.push(format!("{stream}: {line}"));
                if self.output.len() > OUTPUT_TAIL {
                    self.output.remove(0);
                }
                None
            }
            DeployEvent::StepFinished {
                step,
                exit_code,
                duration_ms,
                ok,
                error,
            } => {
                self.steps.push(json!({
                    "name": step, "ok": ok, "exit_code": exit_code,
                    "duration_ms": duration_ms, "error": error,
                }));
                let index = self.steps.len();
                let verdict = if *ok {
                    "ok".to_string()
                } else {
                    format!("FAILED: {}", error.as_deref().unwrap_or("failed"))
                };
                Some((
                    index as f64,
                    format!(
                        "step {index} '{step}' {verdict} ({:.1}s)",
                        *duration_ms as f64 / 1000.0
                    ),
                ))
            }
            DeployEvent::HealthWait { color, timeout_ms } => Some((
                self.steps.len() as f64 + 0.5,
                format!(
                    "waiting for {color} to be healthy (at most {}s)",
                    timeout_ms / 1000
                ),
            )),
            DeployEvent::Healthy { color, duration_ms } => Some((
                self.steps.len() as f64 + 1.0,
                format!("{color} is healthy ({:.1}s)", *duration_ms as f64 / 1000.0),
            )),
            DeployEvent::Done {
                result,
                duration_ms,
                failed_step,
                error,
                log,
            } => {
                self.result = Some(*result);
                self.done = Some(json!({
                    "result": result, "duration_ms": duration_ms,
                    "failed_step": failed_step, "error": error, "log": log,
                }));
                None
            }
        }
    }

    /// What happened before the stream broke, for an error.
    fn so_far(&self) -> String {
        if self.steps.is_empty() {
            return String::new();
        }
        format!(
            "\nsteps finished before that: {}",
            serde_json::to_string(&self.steps).unwrap_or_default()
        )
    }

    /// The tool's answer once the deploy ended.
    fn answer(self, app: &AppStatus) -> CallToolResult {
        let color = self.color.unwrap_or(app.standby);
        let data = json!({
            "app": app.name,
            "color": color,
            "live": app.live,
            "steps": self.steps,
            "done": self.done,
        });
        match self.result {
            Some(DeployResult::Success) => answer(
                format!(
                    "Deployed app '{}' to {color} (the standby) and it is healthy; {} is still live and takes all traffic. Next: switch_traffic to ask a human to switch to {color}.",
                    app.name, app.live
                ),
                data,
            ),
            Some(result) => {
                let mut text = format!(
                    "The deploy of app '{}' to {color} {}: {}. The live color {} was not touched.",
                    app.name,
                    result.as_str(),
                    self.done
                        .as_ref()
                        .and_then(|d| d["error"].as_str())
                        .unwrap_or("see the steps"),
                    app.live
                );
                if !self.output.is_empty() {
                    text += "\nlast output of the step:\n";
                    text += &self.output.join("\n");
                }
                CallToolResult::error(vec![
                    ContentBlock::text(text),
                    ContentBlock::text(serde_json::to_string_pretty(&data).unwrap_or_default()),
                ])
            }
            None => tool_error(format!(
                "the deploy stream ended early; the deploy goes on on the daemon: see get_deployment_status{}",
                self.so_far()
            )),
        }
    }
}
