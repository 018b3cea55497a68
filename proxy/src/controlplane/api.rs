//! The control API: HTTP/JSON under `/v1` on `control.listen`.
//!
//! A pingora `HttpServerApp` (not `ServeHttp`), so that a handler can stream
//! its answer later (deploy progress). Flow per request: read the header ->
//! route by method and path -> for mutating calls check the `Origin`, the
//! bearer token and the content type ([`super::api_guard`]) ->
//! read the body (at most [`MAX_BODY`]) -> call the [`Controller`] -> answer
//! JSON. Errors are `{"error": "...", "code": "..."}`.
//!
//! Routes:
//! - `GET /v1/status`, `GET /v1/apps/{app}`, `GET /v1/apps/{app}/history[?limit=N]`
//! - `POST /v1/apps/{app}/switch` `{"to","emergency","reason","actor"}`
//! - `POST /v1/apps/{app}/rollback` `{"emergency","reason","actor"}` (body optional)
//! - `POST /v1/apps/{app}/canary` `{"to","steps","step_interval","emergency","reason","actor"}`
//! - `POST /v1/apps/{app}/weight` `{"to","percent","emergency","reason","actor"}`
//! - `POST /v1/apps/{app}/requests` `{"action","to","reason","emergency","actor"}`:
//!   a pending request for a human (a requester's token may); `GET /v1/requests`;
//!   `POST /v1/requests/{id}/approve|deny` (the operator's)
//! - every mutating call may carry `"expect_generation"`: 409 `plan_stale`
//!   when the state moved since
//! - `POST /v1/apps/{app}/verify`: runs the app's `[[app.verify]]` checks
//!   against the standby and answers each result
//! - `POST /v1/apps/{app}/promote|abort|pause|resume` `{"emergency","reason","actor"}`
//!   (body optional); these and `canary`/`weight` answer a `RolloutResponse`
//! - `POST /v1/reload`: reload the config file
//! - `GET /v1/certs`: every certificate the TLS listeners serve (files and
//!   ACME), with expiry and the last ACME error
//! - `POST /v1/apps/{app}/deploy` `{"migrate","actor"}`: streams NDJSON events
//! - `GET /v1/events`: Server-Sent Events, one per change ([`super::events`]),
//!   resumed with `Last-Event-ID`; `GET /v1/traffic`: each color's last
//!   minute ([`super::traffic`]); `GET /`: the status page
//!   ([`super::status_page`])
//!
//! Reads: a `GET` from a non-loopback client needs a token of either role
//! when one is configured, unless `control.public_read` (see
//! [`api_guard::read_needs_token`]); the page itself (`GET /`) holds no
//! data and is served to anyone who reaches the listener.

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bgproxy_control::api::{
    ActionRequest, ApiError, CanaryRequest, CreateRequest, DeployRequest, RolloutResponse,
    SwitchRequest, WeightRequest, Weights,
};
use bgproxy_control::duration::parse_duration;
use bytes::Bytes;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::server::ShutdownWatch;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::debug;

use super::api_guard;
use super::change::{Attempt, Change, Command, ControlError};
use super::controller::{Controller, Outcome};
use super::events::{self, Resume};
use super::status_page;
use super::traffic::Traffic;

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// How mutating calls are authorised.
#[derive(Clone)]
pub enum Auth {
    /// `Authorization: Bearer <token>` must match the operator's token, or
    /// the requester's (`control.requester_token_file`) for what a
    /// requester may do.
    Token {
        operator: Vec<u8>,
        requester: Option<Vec<u8>>,
    },
    /// No operator token configured: the operator's calls only from
    /// loopback; a requester token, when configured, from anywhere.
    LoopbackOnly { requester: Option<Vec<u8>> },
}

/// Who a caller is, by its token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// May read, deploy to the standby, run verify checks and create pending
    /// requests; never move traffic or decide a request.
    Requester,
    /// Everything.
    Operator,
}

/// The control API service.
pub struct ControlApi {
    controller: Arc<Controller>,
    auth: Auth,
    /// `control.nice`: asked for the serving thread at its first connection.
    nice: Option<i32>,
    /// The TLS listeners' certificates, for `GET /v1/certs`.
    certs: Option<Arc<crate::dataplane::tls::CertStore>>,
    /// `control.public_read`: reads from other hosts need no token.
    public_read: bool,
    /// Each color's last minute, for `GET /v1/traffic`.
    traffic: Traffic,
}

impl ControlApi {
    pub fn new(controller: Arc<Controller>, auth: Auth) -> Self {
        ControlApi {
            controller,
            auth,
            nice: None,
            certs: None,
            public_read: false,
            traffic: Traffic::default(),
        }
    }

    /// `control.public_read`: answer reads from non-loopback clients
    /// without a token.
    pub fn with_public_read(mut self, public_read: bool) -> Self {
        self.public_read = public_read;
        self
    }

    /// The readings `GET /v1/traffic` answers from (filled by a
    /// [`super::traffic::TrafficSampler`]).
    pub fn with_traffic(mut self, traffic: Traffic) -> Self {
        self.traffic = traffic;
        self
    }

    /// The certificates `GET /v1/certs` lists.
    pub fn with_certs(mut self, certs: Option<Arc<crate::dataplane::tls::CertStore>>) -> Self {
        self.certs = certs;
        self
    }

    pub fn with_nice(mut self, nice: Option<i32>) -> Self {
        self.nice = nice;
        self
    }
}

/// An answer: status and body (JSON unless said otherwise), and for
/// errors the code and message.
struct Reply {
    status: u16,
    body: Vec<u8>,
    content_type: &'static str,
    error: Option<(&'static str, String)>,
}

impl Reply {
    fn json<T: Serialize>(status: u16, value: &T) -> Reply {
        let mut body = serde_json::to_vec_pretty(value).unwrap_or_else(|_| b"{}".to_vec());
        body.push(b'\n');
        Reply {
            status,
            body,
            content_type: "application/json",
            error: None,
        }
    }

    fn html(page: &str) -> Reply {
        Reply {
            status: 200,
            body: page.as_bytes().to_vec(),
            content_type: "text/html; charset=utf-8",
            error: None,
        }
    }

    fn error(status: u16, code: &'static str, message: impl Into<String>) -> Reply {
        let message = message.into();
        let mut r = Reply::json(
            status,
            &ApiError {
                error: message.clone(),
                code: code.into(),
            },
        );
        r.error = Some((code, message));
        r
    }

    fn from_control(e: ControlError) -> Reply {
        Reply::error(e.status(), e.code(), e.to_string())
    }
}

/// Compares secrets in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl ControlApi {
    /// Whether this request may do what needs `need`, in this order: its
    /// `Origin`, its token (or loopback) and the role the token gives -
    /// before any gate of the change itself - then a body declared JSON
    /// (see [`api_guard`]). The caller audits a refusal.
    fn authorize(&self, s: &ServerSession, client: Option<&str>, need: Role) -> Result<(), Reply> {
        let headers = &s.req_header().headers;
        let refused = |r: api_guard::Refusal| Reply::error(r.status, r.code, r.message);
        api_guard::origin(headers, server_addr(s)).map_err(refused)?;
        let role = self.authenticate(s, client)?;
        if role < need {
            return Err(Reply::error(
                403,
                "forbidden_for_role",
                "this token is a requester's: it may read, deploy to the standby and make requests (POST /v1/apps/{app}/requests, bgctl requests); an operator approves them",
            ));
        }
        api_guard::content_type(headers).map_err(refused)
    }

    /// Whether this read may be answered: from loopback, with
    /// `control.public_read`, without any token configured, or with a
    /// token of either role.
    fn authorize_read(&self, s: &ServerSession, client: Option<&str>) -> Result<(), Reply> {
        let (operator, requester) = match &self.auth {
            Auth::Token {
                operator,
                requester,
            } => (Some(operator), requester.as_ref()),
            Auth::LoopbackOnly { requester } => (None, requester.as_ref()),
        };
        let configured = operator.is_some() || requester.is_some();
        let ip = client.and_then(|c| c.parse::<IpAddr>().ok());
        if !api_guard::read_needs_token(ip, configured, self.public_read) {
            return Ok(());
        }
        let given = s
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .and_then(|v| v.strip_prefix(b"Bearer "))
            .map(|t| t.trim_ascii());
        let matches = |token: Option<&Vec<u8>>| {
            given
                .zip(token)
                .is_some_and(|(g, t)| constant_time_eq(g, t))
        };
        if matches(operator) || matches(requester) {
            return Ok(());
        }
        Err(Reply::error(
            401,
            "unauthorized",
            if given.is_some() {
                "invalid bearer token"
            } else {
                "reads from another host need 'Authorization: Bearer <token>' (the operator's or the requester's token), unless control.public_read = true"
            },
        ))
    }

    fn authenticate(&self, s: &ServerSession, client: Option<&str>) -> Result<Role, Reply> {
        let given = s
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .and_then(|v| v.strip_prefix(b"Bearer "))
            .map(|t| t.trim_ascii());
        let (operator, requester) = match &self.auth {
            Auth::Token {
                operator,
                requester,
            } => (Some(operator), requester),
            Auth::LoopbackOnly { requester } => (None, requester),
        };
        let is = |token: Option<&Vec<u8>>| {
            given
                .zip(token)
                .is_some_and(|(g, t)| constant_time_eq(g, t))
        };
        if is(operator) {
            return Ok(Role::Operator);
        }
        if is(requester.as_ref()) {
            return Ok(Role::Requester);
        }
        match (operator, given) {
            (Some(_), Some(_)) => Err(Reply::error(401, "unauthorized", "invalid bearer token")),
            (Some(_), None) => Err(Reply::error(
                401,
                "unauthorized",
                "this call needs 'Authorization: Bearer <token>' (the token in control.token_file)",
            )),
            (None, _) => match client.and_then(|c| c.parse::<IpAddr>().ok()) {
                Some(ip) if api_guard::is_loopback(ip) => Ok(Role::Operator),
                _ => Err(Reply::error(
                    403,
                    "forbidden",
                    "no control.token_file is configured, so changes are accepted from loopback only",
                )),
            },
        }
    }

    /// Reads the body, refusing more than [`MAX_BODY`] bytes.
    async fn body(s: &mut ServerSession) -> Result<Vec<u8>, Reply> {
        let too_large = || {
            Reply::error(
                413,
                "body_too_large",
                format!("request body is over {MAX_BODY} bytes"),
            )
        };
        let declared = s
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > MAX_BODY) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        loop {
            match s.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_BODY {
                        return Err(too_large());
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body),
                Err(e) => {
                    return Err(Reply::error(
                        400,
                        "bad_request",
                        format!("cannot read request body: {e}"),
                    ))
                }
            }
        }
    }

    fn parse<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Reply> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(T::default());
        }
        serde_json::from_slice(body)
            .map_err(|e| Reply::error(400, "bad_request", format!("invalid JSON body: {e}")))
    }

    /// Answers one request. Mutating requests are audited by the
    /// controller: by `apply` once they are a command, by `refused` when
    /// they are turned away before (token, body).
    async fn handle(&self, s: &mut ServerSession) -> Reply {
        let client = client_ip(s);
        let method = s.req_header().method.clone();
        let path = s.req_header().uri.path().to_string();
        let query = s.req_header().uri.query().unwrap_or("").to_string();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let get = method == http::Method::GET;
        let post = method == http::Method::POST;
        if get && path != "/" {
            if let Err(r) = self.authorize_read(s, client.as_deref()) {
                return r;
            }
        }
        match segments.as_slice() {
            [""] if get => Reply::html(status_page::PAGE),
            ["v1", "traffic"] if get => {
                let c = &self.controller;
                Reply::json(
                    200,
                    &self.traffic.report(
                        &c.routing().load(),
                        std::time::Instant::now(),
                        &|a| c.app_counts(a),
                        c.counted_instances(),
                    ),
                )
            }
            ["v1", "status"] if get => {
                let mut status = self.controller.status().await;
                status.certificates = self.certs.as_ref().map(|c| c.view()).unwrap_or_default();
                Reply::json(200, &status)
            }
            ["v1", "certs"] if get => Reply::json(
                200,
                &bgproxy_control::api::CertsResponse {
                    certs: self.certs.as_ref().map(|c| c.view()).unwrap_or_default(),
                },
            ),
            ["v1", "apps", app] if get => match self.controller.app(app).await {
                Ok(a) => Reply::json(200, &a),
                Err(e) => Reply::from_control(e),
            },
            ["v1", "apps", app, "history"] if get => {
                let limit = match query_param(&query, "limit").map(str::parse::<usize>) {
                    None => None,
                    Some(Ok(n)) => Some(n),
                    Some(Err(_)) => {
                        return Reply::error(400, "bad_request", "limit must be a whole number")
                    }
                };
                match self.controller.history(app, limit).await {
                    Ok(h) => Reply::json(200, &h),
                    Err(e) => Reply::from_control(e),
                }
            }
            ["v1", "reload"] if post => {
                let attempt = Attempt {
                    action: "reload",
                    actor: "api".into(),
                    client: client.clone(),
                    ..Attempt::default()
                };
                if let Err(r) = self.authorize(s, client.as_deref(), Role::Operator) {
                    return self.refuse(&attempt, r);
                }
                match self.controller.reload("api", client).await {
                    Ok(report) => Reply::json(200, &report),
                    Err(e) => Reply::from_control(e),
                }
            }
            ["v1", "requests"] if get => Reply::json(200, &self.controller.requests().await),
            ["v1", "cluster"] if get => match self.controller.cluster().await {
                Some(c) => Reply::json(200, &c),
                None => Reply::error(
                    404,
                    "no_cluster",
                    "this bgproxy has no [cluster]: its state is the local state file alone",
                ),
            },
            ["v1", "apps", app, "requests"] if post => {
                let mut attempt = Attempt {
                    action: "request",
                    app: app.to_string(),
                    actor: "unknown".into(),
                    client,
                    ..Attempt::default()
                };
                let cmd = match self.request_command(s, app, &mut attempt).await {
                    Ok(cmd) => cmd,
                    Err(r) => return self.refuse(&attempt, r),
                };
                match self.controller.apply(cmd).await {
                    Ok(Outcome::Requested(created)) => Reply::json(200, &created),
                    Ok(_) => Reply::error(500, "internal", "unexpected outcome of a request"),
                    Err(e) => Reply::from_control(e),
                }
            }
            ["v1", "requests", id, decision @ ("approve" | "deny")] if post => {
                let mut attempt = Attempt {
                    action: if *decision == "approve" {
                        "approve"
                    } else {
                        "deny"
                    },
                    actor: "unknown".into(),
                    client: client.clone(),
                    ..Attempt::default()
                };
                let parsed = async {
                    self.authorize(s, client.as_deref(), Role::Operator)?;
                    let body = Self::body(s).await?;
                    Self::parse::<ActionRequest>(&body)
                }
                .await;
                let r = match parsed {
                    Ok(r) => r,
                    Err(reply) => return self.refuse(&attempt, reply),
                };
                let change = if *decision == "approve" {
                    Change::Approve { id: id.to_string() }
                } else {
                    Change::Deny { id: id.to_string() }
                };
                let cmd = command(
                    "",
                    change,
                    false,
                    r.reason,
                    r.actor,
                    client,
                    r.expect_generation,
                );
                attempt.actor.clone_from(&cmd.actor);
                match self.controller.apply(cmd).await {
                    Ok(Outcome::Switched(done)) => Reply::json(200, &done),
                    Ok(Outcome::Rollout(r)) => Reply::json(200, &r),
                    Ok(Outcome::Denied(req)) => Reply::json(200, &req),
                    Ok(_) => Reply::error(500, "internal", "unexpected outcome of a decision"),
                    Err(e) => Reply::from_control(e),
                }
            }
            ["v1", "apps", app, "verify"] if post => {
                // Sends requests through the front door: as guarded as a
                // change, though it changes nothing.
                if let Err(r) = self.authorize(s, client.as_deref(), Role::Requester) {
                    return r;
                }
                match self.controller.verify(app).await {
                    Ok(report) => Reply::json(200, &report),
                    Err(e) => Reply::from_control(e),
                }
            }
            ["v1", "apps", app, action] if post && CHANGES.contains(action) => {
                let mut attempt = Attempt {
                    action: CHANGES
                        .iter()
                        .find(|c| *c == action)
                        .copied()
                        .unwrap_or("?"),
                    app: app.to_string(),
                    actor: "unknown".into(),
                    client,
                    ..Attempt::default()
                };
                let cmd = match self.change_command(s, app, &mut attempt).await {
                    Ok(cmd) => cmd,
                    Err(r) => return self.refuse(&attempt, r),
                };
                let switch_call = matches!(cmd.change, Change::Switch { .. } | Change::Rollback);
                match self.controller.apply(cmd).await {
                    Ok(Outcome::Switched(done)) if switch_call => Reply::json(200, &done),
                    Ok(Outcome::Switched(done)) => Reply::json(
                        200,
                        &RolloutResponse {
                            app: done.app.clone(),
                            live: done.live,
                            weights: Weights::new(done.live, 100),
                            rollout: None,
                            switch: Some(done),
                            applied_by: None,
                            missing: None,
                        },
                    ),
                    Ok(Outcome::Rollout(r)) => Reply::json(200, &r),
                    Ok(_) => Reply::error(500, "internal", "unexpected outcome of a change"),
                    Err(e) => Reply::from_control(e),
                }
            }
            ["v1", "apps", _, action] if CHANGES.contains(action) => Reply::error(
                405,
                "method_not_allowed",
                format!("{method} is not allowed on {path}"),
            ),
            ["v1", "status" | "certs"]
            | [""]
            | ["v1", "events" | "traffic"]
            | ["v1", "cluster"]
            | ["v1", "reload"]
            | ["v1", "apps", _]
            | ["v1", "requests"]
            | ["v1", "requests", _, "approve" | "deny"]
            | ["v1", "apps", _, "history" | "deploy" | "verify" | "requests"] => Reply::error(
                405,
                "method_not_allowed",
                format!("{method} is not allowed on {path}"),
            ),
            _ => Reply::error(
                404,
                "not_found",
                format!("no such endpoint: {method} {path}"),
            ),
        }
    }

    /// Has the controller audit a request refused here, and answers it.
    fn refuse(&self, attempt: &Attempt, reply: Reply) -> Reply {
        if let Some((code, message)) = &reply.error {
            self.controller
                .refused(attempt, reply.status, code, message);
        }
        reply
    }

    /// A request for a human as a command: authorise (a requester may),
    /// read and parse the body.
    async fn request_command(
        &self,
        s: &mut ServerSession,
        app: &str,
        attempt: &mut Attempt,
    ) -> Result<Command, Reply> {
        self.authorize(s, attempt.client.as_deref(), Role::Requester)?;
        let body = Self::body(s).await?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(Reply::error(
                400,
                "bad_request",
                r#"a request needs a JSON body like {"action": "switch", "to": "green"}"#,
            ));
        }
        let r = serde_json::from_slice::<CreateRequest>(&body)
            .map_err(|e| Reply::error(400, "bad_request", format!("invalid JSON body: {e}")))?;
        attempt.to = r.to;
        let cmd = command(
            app,
            Change::Request {
                action: r.action,
                to: r.to,
            },
            r.emergency,
            r.reason,
            r.actor,
            attempt.client.clone(),
            r.expect_generation,
        );
        attempt.actor.clone_from(&cmd.actor);
        attempt.reason.clone_from(&cmd.reason);
        attempt.emergency = cmd.emergency;
        Ok(cmd)
    }

    /// A change request as a command: authorise, read and parse the body
    /// of `attempt.action`. `attempt` learns what was understood, for the
    /// audit.
    async fn change_command(
        &self,
        s: &mut ServerSession,
        app: &str,
        attempt: &mut Attempt,
    ) -> Result<Command, Reply> {
        self.authorize(s, attempt.client.as_deref(), Role::Operator)?;
        let body = Self::body(s).await?;
        let needs_body = |example: &str| {
            if body.iter().all(u8::is_ascii_whitespace) {
                Err(Reply::error(
                    400,
                    "bad_request",
                    format!("{} needs a JSON body like {example}", attempt.action),
                ))
            } else {
                Ok(())
            }
        };
        let json = |e: serde_json::Error| {
            Reply::error(400, "bad_request", format!("invalid JSON body: {e}"))
        };
        let client = attempt.client.clone();
        let cmd = match attempt.action {
            "switch" => {
                needs_body(r#"{"to": "green"}"#)?;
                let r = serde_json::from_slice::<SwitchRequest>(&body).map_err(json)?;
                attempt.to = Some(r.to);
                command(
                    app,
                    Change::Switch { to: r.to },
                    r.emergency,
                    r.reason,
                    r.actor,
                    client,
                    r.expect_generation,
                )
            }
            "canary" => {
                needs_body(r#"{"to": "green", "steps": [10, 25, 50, 100]}"#)?;
                let r = serde_json::from_slice::<CanaryRequest>(&body).map_err(json)?;
                attempt.to = Some(r.to);
                let step_interval = match r.step_interval.as_deref().map(parse_duration) {
                    None => None,
                    Some(Ok(d)) => Some(d),
                    Some(Err(e)) => {
                        return Err(Reply::error(
                            400,
                            "bad_request",
                            format!("step_interval: {e}"),
                        ))
                    }
                };
                let change = Change::Canary {
                    to: r.to,
                    steps: r.steps,
                    step_interval,
                };
                command(
                    app,
                    change,
                    r.emergency,
                    r.reason,
                    r.actor,
                    client,
                    r.expect_generation,
                )
            }
            "weight" => {
                needs_body(r#"{"to": "green", "percent": 25}"#)?;
                let r = serde_json::from_slice::<WeightRequest>(&body).map_err(json)?;
                attempt.to = Some(r.to);
                let change = Change::Weight {
                    to: r.to,
                    percent: r.percent,
                };
                command(
                    app,
                    change,
                    r.emergency,
                    r.reason,
                    r.actor,
                    client,
                    r.expect_generation,
                )
            }
            action => {
                let r = Self::parse::<ActionRequest>(&body)?;
                let change = match action {
                    "rollback" => Change::Rollback,
                    "promote" => Change::Promote,
                    "abort" => Change::Abort,
                    "pause" => Change::Pause,
                    _ => Change::Resume,
                };
                command(
                    app,
                    change,
                    r.emergency,
                    r.reason,
                    r.actor,
                    client,
                    r.expect_generation,
                )
            }
        };
        attempt.actor.clone_from(&cmd.actor);
        attempt.reason.clone_from(&cmd.reason);
        attempt.emergency = cmd.emergency;
        Ok(cmd)
    }
}

/// The calls that change an app, each `POST /v1/apps/{app}/<call>`.
const CHANGES: [&str; 8] = [
    "switch", "rollback", "canary", "weight", "promote", "abort", "pause", "resume",
];

/// The client's IP address, as the audit log records it.
/// (An IPv4 client of a dual-stack listener as IPv4: `127.0.0.1`, not
/// `::ffff:127.0.0.1`.)
fn client_ip(s: &ServerSession) -> Option<String> {
    match s.client_addr() {
        Some(PingoraAddr::Inet(a)) => Some(a.ip().to_canonical().to_string()),
        _ => None,
    }
}

/// The address this connection reached, for the `Origin` check.
fn server_addr(s: &ServerSession) -> Option<std::net::SocketAddr> {
    match s.server_addr() {
        Some(PingoraAddr::Inet(a)) => Some(*a),
        _ => None,
    }
}

fn command(
    app: &str,
    change: Change,
    emergency: bool,
    reason: Option<String>,
    actor: Option<String>,
    client: Option<String>,
    expect_generation: Option<u64>,
) -> Command {
    Command {
        app: app.to_string(),
        change,
        emergency,
        reason: reason.filter(|r| !r.trim().is_empty()),
        actor: actor
            .filter(|a| !a.trim().is_empty())
            .unwrap_or_else(|| "unknown".into()),
        client,
        expect_generation,
    }
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Writes a whole JSON reply.
async fn write_reply(s: &mut ServerSession, reply: &Reply) -> pingora::Result<()> {
    let mut header = ResponseHeader::build(reply.status, Some(3))?;
    header.insert_header("Content-Type", reply.content_type)?;
    header.insert_header("Content-Length", reply.body.len())?;
    header.insert_header("Cache-Control", "no-store")?;
    s.write_response_header(Box::new(header)).await?;
    s.write_response_body(Bytes::copy_from_slice(&reply.body), true)
        .await
}

/// Bytes written to this connection's socket and not sent yet (the
/// client does not read them), when the kernel says.
fn unsent(s: &ServerSession) -> Option<u32> {
    let info = s.digest()?.socket_digest.as_ref()?.tcp_info()?;
    Some(info.tcpi_notsent_bytes)
}

/// Writes SSE text once the socket holds at most
/// [`events::QUEUE_LIMIT`] unsent bytes, waiting at most
/// [`events::WRITE_TIMEOUT`] in all: `Err(true)` when the client stopped
/// reading, `Err(false)` when it went.
async fn write_event(s: &mut ServerSession, text: String) -> Result<(), bool> {
    let deadline = tokio::time::Instant::now() + events::WRITE_TIMEOUT;
    while unsent(s).is_some_and(|n| n > events::QUEUE_LIMIT) {
        if tokio::time::Instant::now() >= deadline {
            return Err(true);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    match tokio::time::timeout_at(deadline, s.write_response_body(Bytes::from(text), false)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(false),
        Err(_) => Err(true),
    }
}

/// Whether this is `GET /v1/events`.
fn is_events(s: &ServerSession) -> bool {
    let req = s.req_header();
    req.method == http::Method::GET && req.uri.path().trim_end_matches('/') == "/v1/events"
}

/// The app of a `POST /v1/apps/{app}/deploy`, if this is one.
fn deploy_target(s: &ServerSession) -> Option<String> {
    let req = s.req_header();
    let segments: Vec<&str> = req.uri.path().trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["v1", "apps", app, "deploy"] if req.method == http::Method::POST => Some(app.to_string()),
        _ => None,
    }
}

impl ControlApi {
    /// `POST /v1/apps/{app}/deploy`: starts the deploy and streams its events
    /// as newline-delimited JSON. The deploy runs in its own task: if the
    /// client goes away it runs to the end all the same (and is audited and
    /// recorded when it ends).
    async fn deploy(&self, s: &mut ServerSession, app: &str) {
        // The connection ends with this answer, refusals included: say so
        // (`Connection: close`), or a client would send its next request on
        // a connection about to close.
        s.set_keepalive(None);
        let mut attempt = Attempt {
            action: "deploy",
            app: app.to_string(),
            actor: "unknown".into(),
            client: client_ip(s),
            ..Attempt::default()
        };
        let cmd = async {
            self.authorize(s, attempt.client.as_deref(), Role::Requester)?;
            let body = Self::body(s).await?;
            let req = Self::parse::<DeployRequest>(&body)?;
            let cmd = command(
                app,
                Change::DeployStarted {
                    migrate: req.migrate,
                },
                false,
                None,
                req.actor,
                attempt.client.clone(),
                req.expect_generation,
            );
            attempt.actor.clone_from(&cmd.actor);
            Ok(cmd)
        }
        .await;
        let started = match cmd {
            Ok(cmd) => self
                .controller
                .apply(cmd)
                .await
                .map_err(Reply::from_control),
            Err(reply) => Err(self.refuse(&attempt, reply)),
        };
        let mut events = match started {
            Ok(Outcome::DeployStarted(events)) => events,
            Ok(_) => {
                let reply = Reply::error(500, "internal", "unexpected outcome of a deploy");
                let _ = write_reply(s, &reply).await;
                return;
            }
            Err(reply) => {
                let _ = write_reply(s, &reply).await;
                return;
            }
        };

        let mut connected = async {
            let mut header = ResponseHeader::build(200, Some(3))?;
            header.insert_header("Content-Type", "application/x-ndjson")?;
            header.insert_header("Transfer-Encoding", "chunked")?;
            header.insert_header("Cache-Control", "no-store")?;
            s.write_response_header(Box::new(header)).await
        }
        .await
        .is_ok();
        // The stream ends once the deploy's record is committed.
        while let Some(event) = events.recv().await {
            if connected {
                let mut line = serde_json::to_vec(&event).unwrap_or_default();
                line.push(b'\n');
                connected = s
                    .write_response_body(Bytes::from(line), false)
                    .await
                    .is_ok();
            }
        }
        if connected {
            let _ = s.finish_body().await;
        }
    }
}

impl ControlApi {
    /// `GET /v1/events`: Server-Sent Events until the client goes, falls
    /// more than [`events::CLIENT_BUFFER`] events behind, leaves a write
    /// waiting [`events::WRITE_TIMEOUT`] (both counted as dropped), or
    /// shutdown begins. A client that sends `Last-Event-ID` gets the kept
    /// events after it first, or a `resync` event when they are gone.
    async fn events(&self, s: &mut ServerSession, mut shutdown: ShutdownWatch) {
        s.set_keepalive(None);
        let client = client_ip(s);
        if let Err(reply) = self.authorize_read(s, client.as_deref()) {
            let _ = write_reply(s, &reply).await;
            return;
        }
        let hub = self.controller.events();
        let last = s
            .req_header()
            .headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut sub = hub.subscribe(last.as_deref());
        let header = async {
            let mut header = ResponseHeader::build(200, Some(4))?;
            header.insert_header("Content-Type", "text/event-stream")?;
            header.insert_header("Transfer-Encoding", "chunked")?;
            header.insert_header("Cache-Control", "no-store")?;
            header.insert_header("X-Accel-Buffering", "no")?;
            s.write_response_header(Box::new(header)).await
        };
        if header.await.is_err() {
            return;
        }
        let generation = self.controller.routing().load().generation;
        let mut first = format!(": bgproxy events, generation {generation}\nretry: 2000\n\n");
        match sub.resume {
            Resume::Live => {}
            Resume::From(kept) => kept.iter().for_each(|e| first.push_str(&e.frame())),
            Resume::Resync(why) => {
                let data = serde_json::json!({
                    "type": "resync", "app": null, "generation": generation, "reason": why,
                });
                // Its id lets the next reconnect resume from here.
                let id = hub
                    .last_id()
                    .map(|id| format!("id: {id}\n"))
                    .unwrap_or_default();
                first.push_str(&format!("event: resync\n{id}data: {data}\n\n"));
            }
        }
        if let Err(stalled) = write_event(s, first).await {
            if stalled {
                hub.dropped_client();
            }
            return;
        }
        let mut keep_alive = tokio::time::interval(events::KEEP_ALIVE);
        keep_alive.reset();
        loop {
            let text = tokio::select! {
                e = sub.events.recv() => match e {
                    Ok(e) => e.frame(),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        debug!("events: a client fell {n} events behind: dropped");
                        hub.dropped_client();
                        break;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
                _ = keep_alive.tick() => ": keep-alive\n\n".to_string(),
                _ = shutdown.changed() => break,
            };
            if let Err(stalled) = write_event(s, text).await {
                // A write error is a client that went (not counted); a
                // timeout, one that stopped reading.
                if stalled {
                    hub.dropped_client();
                }
                break;
            }
        }
    }
}

#[async_trait]
impl HttpServerApp for ControlApi {
    async fn process_new_http(
        self: &Arc<Self>,
        mut s: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if let Some(nice) = self.nice {
            crate::controlplane::priority::set_this_thread(nice);
        }
        match s.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                debug!("control API: cannot read request: {e}");
                return None;
            }
        }
        s.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        if is_events(&s) {
            // Streams until the client goes, falls behind, or shutdown.
            self.events(&mut s, shutdown.clone()).await;
            return None;
        }
        if let Some(app) = deploy_target(&s) {
            // Streams its answer; the connection is not reused after it.
            self.deploy(&mut s, &app).await;
            return None;
        }
        let reply = self.handle(&mut s).await;
        // Drain an unread body so the connection can be reused.
        if !s.is_body_done() {
            s.set_keepalive(None);
        }
        write_reply(&mut s, &reply).await.ok()?;
        let settings = HttpPersistentSettings::for_session(&s);
        match s.finish().await {
            Ok(Some(stream)) => Some(ReusedHttpStream::from_reusable_stream(stream, settings)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[test]
    fn query() {
        assert_eq!(query_param("a=1&limit=5", "limit"), Some("5"));
        assert_eq!(query_param("", "limit"), None);
    }
}
