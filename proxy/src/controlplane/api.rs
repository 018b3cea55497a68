//! The control API: HTTP/JSON under `/v1` on `control.listen`.
//!
//! A pingora `HttpServerApp` (not `ServeHttp`), so that a handler can stream
//! its answer later (deploy progress). Flow per request: read the header ->
//! route by method and path -> for mutating calls check the bearer token ->
//! read the body (at most [`MAX_BODY`]) -> call the [`Controller`] -> answer
//! JSON. Errors are `{"error": "...", "code": "..."}`.
//!
//! Routes:
//! - `GET /v1/status`, `GET /v1/apps/{app}`, `GET /v1/apps/{app}/history[?limit=N]`
//! - `POST /v1/apps/{app}/switch` `{"to","emergency","reason","actor"}`
//! - `POST /v1/apps/{app}/rollback` `{"emergency","reason","actor"}` (body optional)
//! - `POST /v1/reload`: reload the config file
//! - `POST /v1/apps/{app}/deploy` `{"migrate","actor"}`: streams NDJSON events

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bgproxy_control::api::{
    ApiError, DeployEvent, DeployRequest, DeployResult, RollbackRequest, SwitchRequest,
};
use bytes::Bytes;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::server::ShutdownWatch;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::debug;

use crate::controlplane::audit::{AuditLog, AuditRecord};
use crate::controlplane::controller::{Change, Command, ControlError, Controller};

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// How mutating calls are authorised.
#[derive(Clone)]
pub enum Auth {
    /// `Authorization: Bearer <token>` must match.
    Token(Vec<u8>),
    /// No token configured: mutating calls only from loopback.
    LoopbackOnly,
}

/// The control API service.
pub struct ControlApi {
    controller: Arc<Controller>,
    auth: Auth,
    audit: Arc<AuditLog>,
    /// `control.nice`: asked for the serving thread at its first connection.
    nice: Option<i32>,
}

impl ControlApi {
    pub fn new(controller: Arc<Controller>, auth: Auth, audit: Arc<AuditLog>) -> Self {
        ControlApi {
            controller,
            auth,
            audit,
            nice: None,
        }
    }

    pub fn with_nice(mut self, nice: Option<i32>) -> Self {
        self.nice = nice;
        self
    }
}

/// An answer: status and JSON body, and for errors the code and message.
struct Reply {
    status: u16,
    body: Vec<u8>,
    error: Option<(&'static str, String)>,
}

impl Reply {
    fn json<T: Serialize>(status: u16, value: &T) -> Reply {
        let mut body = serde_json::to_vec_pretty(value).unwrap_or_else(|_| b"{}".to_vec());
        body.push(b'\n');
        Reply {
            status,
            body,
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
    fn authorize(&self, s: &ServerSession, client: Option<IpAddr>) -> Result<(), Reply> {
        match &self.auth {
            Auth::Token(token) => {
                let given = s
                    .req_header()
                    .headers
                    .get(http::header::AUTHORIZATION)
                    .map(|v| v.as_bytes())
                    .and_then(|v| v.strip_prefix(b"Bearer "))
                    .map(|t| t.trim_ascii());
                match given {
                    Some(t) if constant_time_eq(t, token) => Ok(()),
                    Some(_) => Err(Reply::error(401, "unauthorized", "invalid bearer token")),
                    None => Err(Reply::error(
                        401,
                        "unauthorized",
                        "this call needs 'Authorization: Bearer <token>' (the token in control.token_file)",
                    )),
                }
            }
            Auth::LoopbackOnly => match client {
                Some(ip) if ip.is_loopback() => Ok(()),
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

    /// Answers one request. A mutating request leaves its audit record in
    /// `audit`, to be written once the answer is sent.
    async fn handle(&self, s: &mut ServerSession, audit: &mut Option<Pending>) -> Reply {
        let client = match s.client_addr() {
            Some(PingoraAddr::Inet(a)) => Some(a.ip()),
            _ => None,
        };
        let method = s.req_header().method.clone();
        let path = s.req_header().uri.path().to_string();
        let query = s.req_header().uri.query().unwrap_or("").to_string();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let get = method == http::Method::GET;
        let post = method == http::Method::POST;
        match segments.as_slice() {
            ["v1", "status"] if get => Reply::json(200, &self.controller.status().await),
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
                let reply = match self.authorize(s, client) {
                    Err(r) => r,
                    Ok(()) => match self.controller.reload().await {
                        Ok(report) => Reply::json(200, &report),
                        Err(e) => Reply::from_control(e),
                    },
                };
                *audit = Some(Pending {
                    action: "reload",
                    app: String::new(),
                    attempt: Attempt {
                        actor: Some("api".into()),
                        ..Attempt::default()
                    },
                    client,
                });
                reply
            }
            ["v1", "apps", app, action @ ("switch" | "rollback")] if post => {
                let mut attempt = Attempt::default();
                let reply = self.mutate(s, client, app, action, &mut attempt).await;
                *audit = Some(Pending {
                    action: if *action == "switch" {
                        "switch"
                    } else {
                        "rollback"
                    },
                    app: app.to_string(),
                    attempt,
                    client,
                });
                reply
            }
            ["v1", "status"]
            | ["v1", "reload"]
            | ["v1", "apps", _]
            | ["v1", "apps", _, "history" | "switch" | "rollback" | "deploy"] => Reply::error(
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
}

/// The audit record of a mutating request, written after its answer.
struct Pending {
    action: &'static str,
    app: String,
    attempt: Attempt,
    client: Option<IpAddr>,
}

/// What a mutating request asked for, as far as it was understood (for
/// the audit log, also of refused attempts).
#[derive(Default)]
struct Attempt {
    actor: Option<String>,
    reason: Option<String>,
    emergency: bool,
    to: Option<bgproxy_control::api::Color>,
}

impl ControlApi {
    /// Appends a mutating request and its answer to the audit log.
    fn audit(
        &self,
        action: &str,
        app: &str,
        reply: &Reply,
        attempt: &Attempt,
        client: Option<IpAddr>,
    ) {
        self.audit.record(&AuditRecord {
            time: time::OffsetDateTime::now_utc(),
            action,
            app,
            result: reply.error.as_ref().map_or("ok", |(code, _)| code),
            status: reply.status,
            actor: attempt.actor.as_deref().unwrap_or("unknown"),
            client: client.map(|c| c.to_string()),
            reason: attempt.reason.as_deref(),
            emergency: attempt.emergency,
            to: attempt.to.map(|c| c.as_str()),
            error: reply.error.as_ref().map(|(_, m)| m.as_str()),
        });
    }

    /// A switch or rollback: authorise, read and parse the body, apply.
    async fn mutate(
        &self,
        s: &mut ServerSession,
        client: Option<IpAddr>,
        app: &str,
        action: &str,
        attempt: &mut Attempt,
    ) -> Reply {
        if let Err(r) = self.authorize(s, client) {
            return r;
        }
        let body = match Self::body(s).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let cmd = if action == "switch" {
            if body.iter().all(u8::is_ascii_whitespace) {
                return Reply::error(
                    400,
                    "bad_request",
                    "switch needs a JSON body like {\"to\": \"green\"}",
                );
            }
            match serde_json::from_slice::<SwitchRequest>(&body) {
                Ok(r) => {
                    attempt.to = Some(r.to);
                    command(
                        app,
                        Change::Switch { to: r.to },
                        r.emergency,
                        r.reason,
                        r.actor,
                        client,
                    )
                }
                Err(e) => {
                    return Reply::error(400, "bad_request", format!("invalid JSON body: {e}"))
                }
            }
        } else {
            match Self::parse::<RollbackRequest>(&body) {
                Ok(r) => command(
                    app,
                    Change::Rollback,
                    r.emergency,
                    r.reason,
                    r.actor,
                    client,
                ),
                Err(r) => return r,
            }
        };
        attempt.actor = Some(cmd.actor.clone());
        attempt.reason.clone_from(&cmd.reason);
        attempt.emergency = cmd.emergency;
        match self.controller.apply(cmd).await {
            Ok(done) => {
                attempt.to = Some(done.live);
                Reply::json(200, &done)
            }
            Err(e) => Reply::from_control(e),
        }
    }
}

fn command(
    app: &str,
    change: Change,
    emergency: bool,
    reason: Option<String>,
    actor: Option<String>,
    client: Option<IpAddr>,
) -> Command {
    Command {
        app: app.to_string(),
        change,
        emergency,
        reason: reason.filter(|r| !r.trim().is_empty()),
        actor: actor
            .filter(|a| !a.trim().is_empty())
            .unwrap_or_else(|| "unknown".into()),
        client: client.map(|c| c.to_string()),
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
    header.insert_header("Content-Type", "application/json")?;
    header.insert_header("Content-Length", reply.body.len())?;
    header.insert_header("Cache-Control", "no-store")?;
    s.write_response_header(Box::new(header)).await?;
    s.write_response_body(Bytes::copy_from_slice(&reply.body), true)
        .await
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
        let client = match s.client_addr() {
            Some(PingoraAddr::Inet(a)) => Some(a.ip()),
            _ => None,
        };
        let mut attempt = Attempt::default();
        let plan = async {
            self.authorize(s, client)?;
            let body = Self::body(s).await?;
            let req = Self::parse::<DeployRequest>(&body)?;
            let actor = req
                .actor
                .filter(|a| !a.trim().is_empty())
                .unwrap_or_else(|| "unknown".into());
            attempt.actor = Some(actor.clone());
            self.controller
                .begin_deploy(app, req.migrate, actor)
                .await
                .map_err(Reply::from_control)
        }
        .await;
        let plan = match plan {
            Ok(plan) => plan,
            Err(reply) => {
                let _ = write_reply(s, &reply).await;
                self.audit("deploy", app, &reply, &attempt, client);
                return;
            }
        };
        attempt.to = Some(plan.color);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(crate::controlplane::deploy::run(
            self.controller.clone(),
            plan,
            tx,
        ));

        let mut connected = async {
            let mut header = ResponseHeader::build(200, Some(3))?;
            header.insert_header("Content-Type", "application/x-ndjson")?;
            header.insert_header("Transfer-Encoding", "chunked")?;
            header.insert_header("Cache-Control", "no-store")?;
            s.write_response_header(Box::new(header)).await
        }
        .await
        .is_ok();
        let mut outcome = None;
        while let Some(event) = rx.recv().await {
            if let DeployEvent::Done { result, error, .. } = &event {
                outcome = Some((*result, error.clone()));
            }
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
        let (result, error) = outcome.unwrap_or((
            DeployResult::Failed,
            Some("the deploy ended without a result".into()),
        ));
        let reply = match (result, error) {
            (DeployResult::Success, _) => Reply::json(200, &()),
            (r, e) => Reply::error(
                200,
                if r == DeployResult::Aborted {
                    "deploy_aborted"
                } else {
                    "deploy_failed"
                },
                e.unwrap_or_default(),
            ),
        };
        self.audit("deploy", app, &reply, &attempt, client);
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
        if let Some(app) = deploy_target(&s) {
            // Streams its answer; the connection is not reused after it.
            self.deploy(&mut s, &app).await;
            return None;
        }
        let mut audit = None;
        let reply = self.handle(&mut s, &mut audit).await;
        // Drain an unread body so the connection can be reused.
        if !s.is_body_done() {
            s.set_keepalive(None);
        }
        let written = write_reply(&mut s, &reply).await;
        // The audit line is fsync'd after the answer: the change itself is
        // already durable in the state file (with actor, time and reason),
        // so the operator does not wait for a second sync.
        if let Some(p) = audit {
            self.audit(p.action, &p.app, &reply, &p.attempt, p.client);
        }
        written.ok()?;
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
