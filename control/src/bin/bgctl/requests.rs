//! `bgctl requests | approve <id> | deny <id> | ask <action> [color]`:
//! changes someone asked for (a requester's token, an AI assistant through
//! `bgctl mcp`) and an operator decides on.
//!
//! Flow of approve and deny: the pending request (`GET /v1/requests`) ->
//! the app's status now and its generation -> what the request would do
//! now, refused here when the daemon would refuse it (the state moved since
//! the request was made, the target is not healthy) so a doomed change is
//! never put to the operator -> the approval of `switch` (`Proceed? [y/N]`
//! on a terminal, `--yes`, else exit 3) -> the call, bound to the
//! generation shown -> what happened. The daemon re-checks everything.

use std::fmt::Write;

use bgproxy_control::api::{
    ActionRequest, AppStatus, Color, CreateRequest, PendingRequest, RequestsResponse,
};
use bgproxy_control::client::{Approved, Client};
use time::OffsetDateTime;

use crate::render::{self, Style};
use crate::{fail, Failure, EXIT_REFUSED, EXIT_USAGE};

/// What a request may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RequestAction {
    /// Make a color live (default: the standby).
    Switch,
    /// Back to the previous live color.
    Rollback,
    /// Start a rollout of a color (default: the standby) with the app's steps.
    Canary,
    /// Make the running rollout's new color live.
    Promote,
}

impl RequestAction {
    /// The API's name of the action.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestAction::Switch => "switch",
            RequestAction::Rollback => "rollback",
            RequestAction::Canary => "canary",
            RequestAction::Promote => "promote",
        }
    }
}

/// Approve or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Deny,
}

impl Decision {
    fn as_str(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Deny => "deny",
        }
    }
}

/// The operator's answers to approve or deny.
pub struct Decide {
    /// `--yes`: do not ask.
    pub yes: bool,
    /// `--reason` (deny): recorded in the audit log.
    pub reason: Option<String>,
    /// `--expect-generation` (approve): instead of the generation of the
    /// status the plan was shown from.
    pub expect_generation: Option<u64>,
}

/// A request id as the daemon makes them (`7`): checked before it becomes
/// part of a path.
pub fn parse_id(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "invalid request id '{s}': expected an id as bgctl requests lists them, like 7"
        ))
    }
}

/// `bgctl requests`: the pending requests (of `app` only, when given).
pub fn list(client: &Client, app: Option<&str>, json: bool, style: &Style) -> Result<(), Failure> {
    let answer = client.requests()?;
    let mut requests = answer.value.requests;
    if let Some(name) = app {
        requests.retain(|r| r.app == name);
    }
    if json {
        match app {
            None => println!("{}", answer.text.trim_end()),
            Some(_) => println!(
                "{}",
                serde_json::to_string(&RequestsResponse { requests }).unwrap_or_default()
            ),
        }
        return Ok(());
    }
    print!("{}", table(&requests, OffsetDateTime::now_utc(), style));
    Ok(())
}

/// The table of `bgctl requests`.
fn table(requests: &[PendingRequest], now: OffsetDateTime, style: &Style) -> String {
    if requests.is_empty() {
        return "no pending requests\n".into();
    }
    let mut out = format!(
        "{}\n",
        style.bold(&format!(
            "{:<6} {:<12} {:<22} {:<24} {:>6} {:>8}  REASON",
            "ID", "APP", "ASKS FOR", "REQUESTED BY", "AGE", "EXPIRES"
        ))
    );
    for r in requests {
        let _ = writeln!(
            out,
            "{:<6} {:<12} {:<22} {:<24} {:>6} {:>8}  {}",
            r.id,
            r.app,
            asks_for(r),
            r.requested_by,
            span(now - r.requested_at),
            format!("in {}", span(r.expires_at - now)),
            r.reason.as_deref().unwrap_or("-")
        );
    }
    let _ = writeln!(
        out,
        "approve one with bgctl approve <ID> (it shows the plan first), or drop it with bgctl deny <ID>"
    );
    out
}

/// `switch to green`, `rollback`, `canary of green (EMERGENCY)`.
fn asks_for(r: &PendingRequest) -> String {
    let mut s = match (r.action.as_str(), r.to) {
        ("switch", Some(to)) => format!("switch to {to}"),
        ("canary", Some(to)) => format!("canary of {to}"),
        (action, _) => action.to_string(),
    };
    if r.emergency {
        s += " (EMERGENCY)";
    }
    s
}

/// `45s`, `4m`, `2h10m`, `3d2h`; 0s for what is past.
fn span(d: time::Duration) -> String {
    match d.whole_seconds().max(0) {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `bgctl approve <id>` and `bgctl deny <id>`.
pub fn decide(
    client: &Client,
    id: &str,
    decision: Decision,
    ask: &Decide,
    json: bool,
    style: &Style,
) -> Result<(), Failure> {
    let pending = client.requests()?.value.requests;
    let Some(req) = pending.into_iter().find(|r| r.id == id) else {
        if ask.yes {
            // Nothing to show: the daemon says why it is not open
            // (request_closed, unknown_request).
            let bound = ask.expect_generation;
            return send(client, id, decision, ask, None, bound, json, style);
        }
        return Err(fail(
            EXIT_REFUSED,
            format!(
                "request {id} is not pending (approved or denied already, expired, or never made): nothing changed; see bgctl requests"
            ),
        ));
    };
    let (app, generation) = crate::resolve_app_at(client, Some(&req.app))?;
    let now = OffsetDateTime::now_utc();
    let text = || plan(&req, &app, decision, now, style);
    let json_plan = |needed: bool| plan_json(&req, &app, decision, generation, needed);
    if decision == Decision::Approve {
        if let Err(why) = doomed(&req, &app, generation) {
            // Only the request: what it would do now is beside the point.
            if json {
                println!("{}", json_plan(false));
            } else {
                eprint!("{}", about(&req, decision, now, style));
            }
            return Err(fail(EXIT_REFUSED, why));
        }
    }
    crate::rollout::approve(ask.yes, json, || json_plan(true), text)?;
    // A denial changes no routing: the state may have moved meanwhile.
    let bound = match decision {
        Decision::Approve => ask.expect_generation.or(Some(generation)),
        Decision::Deny => None,
    };
    send(client, id, decision, ask, Some(&req), bound, json, style)
}

/// Why the daemon would refuse to carry out `req` now, if it would: the
/// state moved since the request was made (generations never go back), the
/// change itself is refused (already live, no rollout, nothing to roll back)
/// or its target is not healthy (unless the request is an emergency).
fn doomed(req: &PendingRequest, app: &AppStatus, generation: u64) -> Result<(), String> {
    let id = &req.id;
    if req.generation != generation {
        return Err(format!(
            "request {id} was made at generation {}, and the state has changed since (generation {generation} now): approving it would be refused (plan_stale); drop it with bgctl deny {id} and ask again",
            req.generation
        ));
    }
    let name = &app.name;
    let target = match (req.action.as_str(), req.to) {
        ("switch" | "canary", Some(to)) if to == app.live => {
            return Err(format!(
                "{to} is already live for app '{name}': nothing to do; drop the request with bgctl deny {id}"
            ))
        }
        ("switch" | "canary", Some(to)) => to,
        ("rollback", _) if app.switch_count == 0 => {
            return Err(format!(
                "app '{name}' has never been switched: there is nothing to roll back to; drop the request with bgctl deny {id}"
            ))
        }
        ("rollback", _) => app.live.other(),
        ("promote", _) => match &app.rollout {
            Some(r) => r.to,
            None => {
                return Err(format!(
                    "app '{name}' has no rollout to promote; drop the request with bgctl deny {id}"
                ))
            }
        },
        _ => return Ok(()),
    };
    let colors = app.colors.get(target);
    if !req.emergency && !colors.healthy {
        return Err(format!(
            "refusing: {target} is not healthy ({}); wait until it is, or drop the request with bgctl deny {id}",
            render::unhealthy_summary(colors)
        ));
    }
    Ok(())
}

/// The request, then what it would do now.
fn plan(
    req: &PendingRequest,
    app: &AppStatus,
    decision: Decision,
    now: OffsetDateTime,
    style: &Style,
) -> String {
    let mut out = about(req, decision, now, style);
    if decision == Decision::Deny {
        let _ = writeln!(out, "  denying it changes nothing: the request is dropped");
        return out;
    }
    let upper = |c: Color| style.color(c, &c.as_str().to_uppercase());
    match (req.action.as_str(), req.to) {
        ("switch", Some(to)) => out += &render::plan(app, to, false, req.emergency, style),
        ("rollback", _) => out += &render::plan(app, app.live.other(), true, req.emergency, style),
        ("canary", Some(to)) => {
            let _ = writeln!(
                out,
                "{} of app '{}'\n  live:       {}\n  change:     {to} through the app's [app.rollout] steps, analysed before each next step; {} becomes LIVE at 100%",
                style.bold("CANARY"),
                app.name,
                upper(app.live),
                upper(to)
            );
            render::target_health(&mut out, app, to, req.emergency, style);
        }
        ("promote", _) => {
            let _ = writeln!(out, "{} of app '{}'", style.bold("PROMOTE"), app.name);
            if let Some(r) = &app.rollout {
                let _ = writeln!(
                    out,
                    "  rollout:    {}\n  change:     {} becomes LIVE now, the remaining steps skipped",
                    render::rollout(r, now, style),
                    upper(r.to)
                );
                render::target_health(&mut out, app, r.to, req.emergency, style);
            }
        }
        _ => {}
    }
    out
}

/// The request: who asked for what, when, why, and until when it holds.
fn about(req: &PendingRequest, decision: Decision, now: OffsetDateTime, style: &Style) -> String {
    let mut out = format!(
        "{} request {} of app '{}': {}\n",
        style.bold(&decision.as_str().to_uppercase()),
        req.id,
        req.app,
        asks_for(req)
    );
    let _ = writeln!(
        out,
        "  requested by {}{} at {} ({} ago); expires in {}",
        req.requested_by,
        req.client
            .as_deref()
            .map(|c| format!(" from {c}"))
            .unwrap_or_default(),
        render::when(req.requested_at),
        span(now - req.requested_at),
        span(req.expires_at - now)
    );
    if let Some(why) = &req.reason {
        let _ = writeln!(out, "  reason: {why}");
    }
    out
}

/// The plan as JSON, for `--json` when approval is needed or refused.
fn plan_json(
    req: &PendingRequest,
    app: &AppStatus,
    decision: Decision,
    generation: u64,
    approval_needed: bool,
) -> String {
    let to = match req.action.as_str() {
        "rollback" => Some(app.live.other()),
        "promote" => app.rollout.as_ref().map(|r| r.to),
        _ => req.to,
    };
    serde_json::json!({
        "request": req,
        "plan": {
            "decision": decision.as_str(),
            "app": app.name,
            "action": req.action,
            "live": app.live,
            "to": to,
            "emergency": req.emergency,
            "target_healthy": to.map(|c| app.colors.get(c).healthy),
            "generation": generation,
        },
        "approval_needed": approval_needed,
    })
    .to_string()
}

/// The decision itself, and what it did.
#[allow(clippy::too_many_arguments)]
fn send(
    client: &Client,
    id: &str,
    decision: Decision,
    ask: &Decide,
    req: Option<&PendingRequest>,
    expect_generation: Option<u64>,
    json: bool,
    style: &Style,
) -> Result<(), Failure> {
    let body = ActionRequest {
        emergency: false,
        reason: ask.reason.clone(),
        actor: Some(crate::actor()),
        expect_generation,
    };
    let started = std::time::Instant::now();
    let what = req.map(asks_for).unwrap_or_default();
    match decision {
        Decision::Approve => {
            let answer = client.approve(id, &body)?;
            if json {
                println!("{}", answer.text.trim_end());
                return Ok(());
            }
            println!("request {id} approved: {what}");
            print!("{}", approved(&answer.value, started.elapsed(), style));
        }
        Decision::Deny => {
            let answer = client.deny(id, &body)?;
            if json {
                println!("{}", answer.text.trim_end());
                return Ok(());
            }
            println!(
                "{} request {id} denied{}: nothing changed",
                style.paint("32", "OK"),
                if what.is_empty() {
                    String::new()
                } else {
                    format!(" ({what})")
                }
            );
        }
    }
    Ok(())
}

/// What an approval did, in a line.
fn approved(done: &Approved, took: std::time::Duration, style: &Style) -> String {
    match done {
        Approved::Switch(s) => render::done(s, took, style),
        Approved::Rollout(r) => match (&r.switch, &r.rollout) {
            (Some(s), _) => render::done(s, took, style),
            (None, Some(ro)) => format!(
                "{} rollout of {} started for app '{}': {}, step 1/{} at {}%; follow it with bgctl status\n",
                style.paint("32", "OK"),
                style.color(ro.to, &ro.to.as_str().to_uppercase()),
                r.app,
                render::split(r.weights, style),
                ro.steps.len(),
                ro.percent
            ),
            (None, None) => format!(
                "{} app '{}': {}; {} is live\n",
                style.paint("32", "OK"),
                r.app,
                render::split(r.weights, style),
                r.live
            ),
        },
    }
}

/// `bgctl ask <action> [color]`: records the request; moves nothing.
#[allow(clippy::too_many_arguments)]
pub fn create(
    client: &Client,
    app: &AppStatus,
    generation: u64,
    action: RequestAction,
    color: Option<Color>,
    emergency: bool,
    reason: Option<String>,
    json: bool,
    style: &Style,
) -> Result<(), Failure> {
    let to = match action {
        RequestAction::Switch | RequestAction::Canary => Some(color.unwrap_or(app.standby)),
        RequestAction::Rollback | RequestAction::Promote => match color {
            Some(c) => {
                return Err(fail(
                    EXIT_USAGE,
                    format!(
                    "a {} request names no color (it goes to the other color, {}): leave out '{c}'",
                    action.as_str(),
                    app.live.other()
                ),
                ))
            }
            None => None,
        },
    };
    let body = CreateRequest {
        action: action.as_str().to_string(),
        to,
        reason,
        emergency,
        actor: Some(crate::actor()),
        expect_generation: Some(generation),
    };
    let answer = client.create_request(&app.name, &body)?;
    if json {
        println!("{}", answer.text.trim_end());
        return Ok(());
    }
    let c = &answer.value;
    let id = &c.request.id;
    print!(
        "{} request {id} recorded: {}\n  nothing has changed: an operator carries it out with  {}\n  (or drops it with bgctl deny {id}); it expires at {} (in {})\n",
        style.paint("32", "OK"),
        c.plan,
        style.bold(&c.approve_with),
        render::when(c.request.expires_at),
        span(c.request.expires_at - OffsetDateTime::now_utc())
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_before_they_become_a_path() {
        assert_eq!(parse_id("17").as_deref(), Ok("17"));
        for bad in ["", "../status", "1/approve", "a b", "7?x=1"] {
            assert!(parse_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spans_read_like_status() {
        assert_eq!(span(time::Duration::seconds(45)), "45s");
        assert_eq!(span(time::Duration::minutes(59)), "59m");
        assert_eq!(span(time::Duration::minutes(130)), "2h10m");
        assert_eq!(span(time::Duration::seconds(-5)), "0s");
    }
}
