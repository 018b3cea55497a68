//! A typed, blocking client of the control API, used by `bgctl` and usable by
//! other tools. Every call returns the API's own types or a [`ClientError`]
//! that says whether the daemon could not be reached, refused the token, or
//! answered with an error.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::api::{
    ActionRequest, ApiError, AppStatus, CanaryRequest, CreateRequest, DeployEvent, DeployRequest,
    HistoryResponse, PendingRequest, ReloadResponse, RequestCreated, RequestsResponse,
    RollbackRequest, RolloutResponse, StatusResponse, SwitchRequest, SwitchResponse,
    VerifyResponse, WeightRequest,
};

/// How long a verify call may take: the daemon runs the checks one after
/// the other, each for at most 10 s, so the client's usual timeout is too
/// short for more than one slow check.
pub const VERIFY_TIMEOUT: Duration = Duration::from_secs(600);

/// An answer, parsed, with its JSON text as the daemon sent it (what
/// `--json` prints).
#[derive(Clone, Debug)]
pub struct Answered<T> {
    pub value: T,
    pub text: String,
}

/// What an approved request did: a switch, rollback or promote answers the
/// switch; a canary answers the rollout it started.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Approved {
    // First: a rollout answer has `weights`, a switch answer has not.
    Rollout(Box<RolloutResponse>),
    Switch(SwitchResponse),
}

/// Errors of a control API call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the bgproxy control API at {addr}: {reason} (is bgproxy running? set --addr or BGCTL_ADDR)")]
    Unreachable { addr: String, reason: String },
    #[error(
        "the control API at {addr} refused the token: {message} (set --token-file or BGCTL_TOKEN)"
    )]
    Unauthorized { addr: String, message: String },
    #[error("{}", .error.error)]
    Api { status: u16, error: ApiError },
    #[error("unexpected answer from {addr}: {reason}")]
    Protocol { addr: String, reason: String },
}

/// A client of one bgproxy control API.
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::blocking::Client,
}

impl Client {
    /// `base` is like `http://127.0.0.1:9900`; `token` is the bearer token
    /// for mutating calls.
    pub fn new(
        base: &str,
        token: Option<String>,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let http = reqwest::blocking::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| ClientError::Protocol {
                addr: base.into(),
                reason: e.to_string(),
            })?;
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    /// The address calls go to.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET /v1/certs`: every certificate the TLS listeners serve.
    pub fn certs(&self) -> Result<crate::api::CertsResponse, ClientError> {
        self.call(reqwest::Method::GET, "/v1/certs", None::<&()>)
    }

    pub fn status(&self) -> Result<StatusResponse, ClientError> {
        self.call(reqwest::Method::GET, "/v1/status", None::<&()>)
    }

    /// `GET /v1/cluster`: the instances sharing the state (`[cluster]`).
    pub fn cluster(&self) -> Result<crate::api::ClusterResponse, ClientError> {
        self.call(reqwest::Method::GET, "/v1/cluster", None::<&()>)
    }

    pub fn app(&self, app: &str) -> Result<AppStatus, ClientError> {
        self.call(
            reqwest::Method::GET,
            &format!("/v1/apps/{app}"),
            None::<&()>,
        )
    }

    pub fn history(&self, app: &str, limit: Option<usize>) -> Result<HistoryResponse, ClientError> {
        let q = limit.map(|l| format!("?limit={l}")).unwrap_or_default();
        self.call(
            reqwest::Method::GET,
            &format!("/v1/apps/{app}/history{q}"),
            None::<&()>,
        )
    }

    pub fn switch(&self, app: &str, req: &SwitchRequest) -> Result<SwitchResponse, ClientError> {
        self.call(
            reqwest::Method::POST,
            &format!("/v1/apps/{app}/switch"),
            Some(req),
        )
    }

    pub fn rollback(
        &self,
        app: &str,
        req: &RollbackRequest,
    ) -> Result<SwitchResponse, ClientError> {
        self.call(
            reqwest::Method::POST,
            &format!("/v1/apps/{app}/rollback"),
            Some(req),
        )
    }

    /// Starts a rollout of `req.to` (the standby) through its steps; answers
    /// once it has started (or, for steps that start at 100, once `to` is
    /// live). Refused with 409 `rollout_running`, `already_live`,
    /// `target_unhealthy` or `deploy_running`, 400 `bad_request`.
    pub fn canary(&self, app: &str, req: &CanaryRequest) -> Result<RolloutResponse, ClientError> {
        self.rollout_call(app, "canary", req)
    }

    /// Holds `req.to` at `req.percent` of the requests (0 aborts the
    /// rollout, 100 makes it live); same gates as [`Client::canary`].
    pub fn weight(&self, app: &str, req: &WeightRequest) -> Result<RolloutResponse, ClientError> {
        self.rollout_call(app, "weight", req)
    }

    /// Makes the rollout's new color live at once (a switch, kind `canary`).
    /// 409 `no_rollout` without a rollout.
    pub fn promote(&self, app: &str, req: &ActionRequest) -> Result<RolloutResponse, ClientError> {
        self.rollout_call(app, "promote", req)
    }

    /// Puts the rollout's new color back to 0% (kind `abort`); the live
    /// color does not change. 409 `no_rollout` without a rollout.
    pub fn abort(&self, app: &str, req: &ActionRequest) -> Result<RolloutResponse, ClientError> {
        self.rollout_call(app, "abort", req)
    }

    /// Holds the rollout at its step. 409 `no_rollout`, or `rollout_state`
    /// when it is paused already.
    pub fn pause(&self, app: &str, req: &ActionRequest) -> Result<RolloutResponse, ClientError> {
        self.rollout_call(app, "pause", req)
    }

    /// Goes on with a paused rollout; its step starts anew. 409
    /// `no_rollout`, or `rollout_state` when it runs already or holds a
    /// share set by `weight`.
    pub fn resume(&self, app: &str, req: &ActionRequest) -> Result<RolloutResponse, ClientError> {
        self.rollout_call(app, "resume", req)
    }

    fn rollout_call<B: Serialize>(
        &self,
        app: &str,
        action: &str,
        req: &B,
    ) -> Result<RolloutResponse, ClientError> {
        self.call(
            reqwest::Method::POST,
            &format!("/v1/apps/{app}/{action}"),
            Some(req),
        )
    }

    /// Runs the app's `[[app.verify]]` checks against its standby, through
    /// the proxy; changes nothing. Needs a token (the requester's will do).
    /// Bound by [`VERIFY_TIMEOUT`], not the client's timeout. A failing
    /// check is an `Ok` answer with `passed: false`; 404 `unknown_app`.
    pub fn verify(&self, app: &str) -> Result<Answered<VerifyResponse>, ClientError> {
        self.call_answered(
            reqwest::Method::POST,
            &format!("/v1/apps/{app}/verify"),
            None::<&()>,
            Some(VERIFY_TIMEOUT),
        )
    }

    /// The pending requests of every app, oldest first (approved, denied
    /// and expired ones are not listed).
    pub fn requests(&self) -> Result<Answered<RequestsResponse>, ClientError> {
        self.call_answered(reqwest::Method::GET, "/v1/requests", None::<&()>, None)
    }

    /// Records a request for a change that a human approves; moves no
    /// traffic. A requester's token may. 400 `bad_request` (an action
    /// other than switch, rollback, canary, promote; switch or canary
    /// without `to`), 409 `already_live`, `plan_stale`.
    pub fn create_request(
        &self,
        app: &str,
        req: &CreateRequest,
    ) -> Result<Answered<RequestCreated>, ClientError> {
        self.call_answered(
            reqwest::Method::POST,
            &format!("/v1/apps/{app}/requests"),
            Some(req),
            None,
        )
    }

    /// Carries out pending request `id` through the same gates as the
    /// change itself, bound to the generation it was made against. Needs
    /// the operator's token (403 `forbidden_for_role` for a requester's);
    /// 409 `request_closed` (approved or denied already, expired),
    /// `plan_stale` (the state moved since it was made, or since
    /// `req.expect_generation`) or any refusal of the change; 404
    /// `unknown_request`.
    pub fn approve(
        &self,
        id: &str,
        req: &ActionRequest,
    ) -> Result<Answered<Approved>, ClientError> {
        self.call_answered(
            reqwest::Method::POST,
            &format!("/v1/requests/{id}/approve"),
            Some(req),
            None,
        )
    }

    /// Drops pending request `id`; answers it as denied (null if the
    /// daemon no longer has it). Same token and errors as
    /// [`Client::approve`], but the state never matters.
    pub fn deny(
        &self,
        id: &str,
        req: &ActionRequest,
    ) -> Result<Answered<Option<PendingRequest>>, ClientError> {
        self.call_answered(
            reqwest::Method::POST,
            &format!("/v1/requests/{id}/deny"),
            Some(req),
            None,
        )
    }

    /// Reloads the daemon's configuration file.
    pub fn reload(&self) -> Result<ReloadResponse, ClientError> {
        self.call(reqwest::Method::POST, "/v1/reload", None::<&()>)
    }

    /// One call; the raw JSON of the answer is kept for `--json`.
    pub fn call<T: DeserializeOwned, B: Serialize>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let text = self.call_raw(method, path, body)?;
        serde_json::from_str(&text).map_err(|e| ClientError::Protocol {
            addr: self.base.clone(),
            reason: format!("{e} in {text:.200}"),
        })
    }

    /// One call; the answer parsed and as its JSON text. `timeout`, when
    /// given, replaces the client's for this call.
    pub fn call_answered<T: DeserializeOwned, B: Serialize>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
        timeout: Option<Duration>,
    ) -> Result<Answered<T>, ClientError> {
        let resp = self.send(method, path, body, timeout)?;
        let text = resp.text().map_err(|e| self.unreachable(&e))?;
        match serde_json::from_str(&text) {
            Ok(value) => Ok(Answered { value, text }),
            Err(e) => Err(ClientError::Protocol {
                addr: self.base.clone(),
                reason: format!("{e} in {text:.200}"),
            }),
        }
    }

    /// One call returning the answer's JSON text unparsed (for `--json`).
    pub fn call_raw<B: Serialize>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<String, ClientError> {
        let resp = self.send(method, path, body, None)?;
        resp.text().map_err(|e| self.unreachable(&e))
    }

    /// Starts a deploy of the app's standby color and returns its event
    /// stream. A deploy runs for as long as its steps take: only the
    /// connection, not the whole answer, is bound by the client's timeout.
    pub fn deploy(&self, app: &str, req: &DeployRequest) -> Result<DeployStream, ClientError> {
        let resp = self.send(
            reqwest::Method::POST,
            &format!("/v1/apps/{app}/deploy"),
            Some(req),
            Some(Duration::from_secs(24 * 3600)),
        )?;
        Ok(DeployStream {
            lines: BufReader::new(resp).lines(),
            addr: self.base.clone(),
        })
    }

    /// Follows `GET /v1/events` (Server-Sent Events), resuming after
    /// `last_event_id` when given. The stream ends when the daemon closes
    /// it (shutdown, or this client fell behind): reconnect with the last
    /// [`ServerEvent::id`] seen.
    pub fn events(&self, last_event_id: Option<&str>) -> Result<EventStream, ClientError> {
        let mut req = self
            .http
            .get(format!("{}/v1/events", self.base))
            .header("Accept", "text/event-stream")
            // A stream lasts as long as the daemon keeps it open.
            .timeout(Duration::from_secs(365 * 24 * 3600));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req.send().map_err(|e| self.unreachable(&e))?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let text = resp.text().unwrap_or_default();
            let error: ApiError = serde_json::from_str(&text).unwrap_or(ApiError {
                error: format!("HTTP {status}: {text:.200}"),
                code: "http_error".into(),
            });
            if status == 401 || status == 403 {
                return Err(ClientError::Unauthorized {
                    addr: self.base.clone(),
                    message: error.error,
                });
            }
            return Err(ClientError::Api { status, error });
        }
        Ok(EventStream {
            lines: BufReader::new(resp).lines(),
            addr: self.base.clone(),
            parser: SseParser::default(),
        })
    }

    fn unreachable(&self, e: &reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            addr: self.base.clone(),
            reason: root_cause(e),
        }
    }

    /// Sends a request; a non-2xx answer becomes the matching error: 401,
    /// and 403 but for `forbidden_for_role`, are [`ClientError::Unauthorized`]
    /// (the token is missing or wrong); a token that is right but may not do
    /// this (a requester's moving traffic) is refused like any gate,
    /// [`ClientError::Api`].
    fn send<B: Serialize>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::blocking::Response, ClientError> {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let resp = req.send().map_err(|e| self.unreachable(&e))?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(resp);
        }
        let text = resp.text().map_err(|e| self.unreachable(&e))?;
        let error: ApiError = serde_json::from_str(&text).unwrap_or(ApiError {
            error: format!("HTTP {status}: {text:.200}"),
            code: "http_error".into(),
        });
        if status == 401 || (status == 403 && error.code != "forbidden_for_role") {
            return Err(ClientError::Unauthorized {
                addr: self.base.clone(),
                message: error.error,
            });
        }
        Err(ClientError::Api { status, error })
    }
}

/// The events of a running deploy, one per line of the answer.
pub struct DeployStream {
    lines: std::io::Lines<BufReader<reqwest::blocking::Response>>,
    addr: String,
}

impl Iterator for DeployStream {
    /// The raw JSON line (for `--json`) and the event.
    type Item = Result<(String, DeployEvent), ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        let line = match self.lines.next()? {
            Ok(l) => l,
            Err(e) => {
                return Some(Err(ClientError::Unreachable {
                    addr: self.addr.clone(),
                    reason: format!("the deploy stream broke: {e} (the deploy goes on on the daemon; see bgctl status)"),
                }))
            }
        };
        Some(
            serde_json::from_str(&line)
                .map(|e| (line.clone(), e))
                .map_err(|e| ClientError::Protocol {
                    addr: self.addr.clone(),
                    reason: format!("{e} in {line:.200}"),
                }),
        )
    }
}

/// One Server-Sent Event of `GET /v1/events`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerEvent {
    /// Its `id:` (to resume after it), when it had one.
    pub id: Option<String>,
    /// Its `event:` name: `message` for a change, `resync` when the
    /// events since the `Last-Event-ID` are gone (read the status anew).
    pub event: String,
    /// Its data: one JSON object, `{"type", "app", "generation", ...}`.
    pub data: String,
}

/// Turns the lines of an SSE stream into events (the parts of the
/// format the daemon uses: `id`, `event`, `data`, comments).
#[derive(Debug, Default)]
pub struct SseParser {
    id: Option<String>,
    event: Option<String>,
    data: Vec<String>,
}

impl SseParser {
    /// Feeds one line (without its end); answers the event a blank line
    /// completes.
    pub fn line(&mut self, line: &str) -> Option<ServerEvent> {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            let event = ServerEvent {
                id: self.id.take(),
                event: self.event.take().unwrap_or_else(|| "message".into()),
                data: self.data.join("\n"),
            };
            let had_data = !self.data.is_empty();
            self.data.clear();
            return had_data.then_some(event);
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => self.id = Some(value.to_string()),
            "event" => self.event = Some(value.to_string()),
            "data" => self.data.push(value.to_string()),
            _ => {}
        }
        None
    }
}

/// The events of `GET /v1/events`, as they come.
pub struct EventStream {
    lines: std::io::Lines<BufReader<reqwest::blocking::Response>>,
    addr: String,
    parser: SseParser,
}

impl Iterator for EventStream {
    type Item = Result<ServerEvent, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let line = match self.lines.next()? {
                Ok(l) => l,
                Err(e) => {
                    return Some(Err(ClientError::Unreachable {
                        addr: self.addr.clone(),
                        reason: format!("the event stream broke: {e}"),
                    }))
                }
            };
            if let Some(event) = self.parser.line(&line) {
                return Some(Ok(event));
            }
        }
    }
}

/// The innermost cause: "Connection refused (os error 111)" rather than
/// reqwest's "error sending request for url".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_lines_make_events() {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for line in [
            ": bgproxy events",
            "retry: 2000",
            "",
            "id: 1-5",
            "data: {\"type\":\"switch\"}",
            "",
            "event: resync",
            "id: 1-9",
            "data: {\"type\":\"resync\"}\r",
            "\r",
            "data: a",
            "data: b",
            "",
        ] {
            out.extend(p.line(line));
        }
        assert_eq!(
            out,
            vec![
                ServerEvent {
                    id: Some("1-5".into()),
                    event: "message".into(),
                    data: r#"{"type":"switch"}"#.into()
                },
                ServerEvent {
                    id: Some("1-9".into()),
                    event: "resync".into(),
                    data: r#"{"type":"resync"}"#.into()
                },
                ServerEvent {
                    id: None,
                    event: "message".into(),
                    data: "a\nb".into()
                },
            ]
        );
    }
}
