//! `bgctl watch`: the daemon's events (`GET /v1/events`) in the terminal,
//! one human line each (the event's JSON with `--json`), as they happen.
//!
//! Flow: connect -> print each event (of `--app` only, when given; events
//! of no app, like a reload, always) -> when the stream ends or breaks,
//! say so on stderr, wait a moment and reconnect with the last event's id
//! (`Last-Event-ID`), so nothing is missed; when the daemon no longer has
//! the events since (`resync`), say so and go on. Runs until interrupted
//! (Ctrl-C), or `--count N` events were printed. An unreachable daemon is
//! retried; a refused token ends it (exit 4).

use std::time::Duration;

use bgproxy_control::client::{Client, ClientError, ServerEvent};
use serde_json::Value;
use time::OffsetDateTime;

use crate::render::Style;
use crate::Failure;

/// The wait before reconnecting.
const RETRY: Duration = Duration::from_secs(2);

/// Follows the events until interrupted, or until `count` were printed.
pub fn run(
    client: &Client,
    app: Option<&str>,
    count: Option<usize>,
    json: bool,
    style: &Style,
) -> Result<(), Failure> {
    let mut last_id: Option<String> = None;
    let mut printed = 0usize;
    let mut connected_once = false;
    loop {
        let stream = match client.events(last_id.as_deref()) {
            Ok(s) => s,
            Err(e @ ClientError::Unauthorized { .. }) => return Err(e.into()),
            Err(e @ ClientError::Api { .. }) => return Err(e.into()),
            Err(e) => {
                if !connected_once {
                    return Err(e.into());
                }
                eprintln!("bgctl watch: {e}; retrying in {}s", RETRY.as_secs());
                std::thread::sleep(RETRY);
                continue;
            }
        };
        if connected_once {
            eprintln!("bgctl watch: reconnected");
        } else if !json {
            eprintln!(
                "bgctl watch: following the events of {} (Ctrl-C to stop)",
                client.base()
            );
        }
        connected_once = true;
        for event in stream {
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("bgctl watch: {e}");
                    break;
                }
            };
            if let Some(id) = &event.id {
                last_id = Some(id.clone());
            }
            let Ok(value) = serde_json::from_str::<Value>(&event.data) else {
                continue;
            };
            let of_app = value["app"].as_str();
            if app.is_some() && of_app.is_some() && of_app != app {
                continue;
            }
            if json {
                println!("{}", event.data);
            } else {
                println!("{}", line(&event, &value, OffsetDateTime::now_utc(), style));
            }
            printed += 1;
            if count.is_some_and(|n| printed >= n) {
                return Ok(());
            }
        }
        eprintln!(
            "bgctl watch: the event stream ended; reconnecting in {}s",
            RETRY.as_secs()
        );
        std::thread::sleep(RETRY);
    }
}

/// One event as a line: `12:03:04 #17 web switch blue -> green (switch) by ann: why`.
pub fn line(event: &ServerEvent, v: &Value, now: OffsetDateTime, style: &Style) -> String {
    let s = |key: &str| v[key].as_str().unwrap_or("").to_string();
    let reason = |v: &Value| {
        v["reason"]
            .as_str()
            .filter(|r| !r.is_empty())
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    };
    let kind = s("type");
    let what = match kind.as_str() {
        "switch" => format!(
            "{} -> {} ({}) by {}{}",
            s("from"),
            style.bold(&s("to")),
            s("kind"),
            s("actor"),
            reason(v)
        ),
        "health" => {
            let route = v["route"]
                .as_str()
                .map(|r| format!(" route {r}"))
                .unwrap_or_default();
            format!(
                "{}{route} {} is {}{}",
                s("color"),
                s("upstream"),
                style.bold(&s("health").to_uppercase()),
                v["error"]
                    .as_str()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )
        }
        "rollout" => match v["rollout"].as_object() {
            Some(r) => format!(
                "{} at {}%, step {}/{}, {} by {}",
                r.get("to").and_then(Value::as_str).unwrap_or(""),
                r.get("percent").and_then(Value::as_u64).unwrap_or(0),
                r.get("step").and_then(Value::as_u64).unwrap_or(0) + 1,
                r.get("steps")
                    .and_then(Value::as_array)
                    .map_or(0, |s| s.len()),
                r.get("state").and_then(Value::as_str).unwrap_or(""),
                s("actor"),
            ),
            None => format!(
                "ended ({}), {} live by {}{}",
                v["kind"].as_str().unwrap_or("abort"),
                s("live"),
                s("actor"),
                reason(v)
            ),
        },
        "analysis" => {
            let detail = v["detail"]
                .as_str()
                .or_else(|| v["analysis"]["detail"].as_str())
                .unwrap_or("");
            format!("{} of {}: {detail}", style.bold(&s("result")), s("color"))
        }
        "deploy" => match s("phase").as_str() {
            "finished" => format!(
                "{} to {} {}{}",
                s("id"),
                s("color"),
                style.bold(&s("result")),
                v["error"]
                    .as_str()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ),
            phase => {
                let d = &v["deploy"];
                format!(
                    "{} {phase} on {}: step {}/{} {}",
                    d["id"].as_str().unwrap_or(""),
                    d["color"].as_str().unwrap_or(""),
                    d["step_index"].as_u64().unwrap_or(0),
                    d["steps_total"].as_u64().unwrap_or(0),
                    d["step"].as_str().unwrap_or("")
                )
            }
        },
        "request" => {
            let r = &v["request"];
            match s("action").as_str() {
                "created" => format!(
                    "{} asks to {}{} ({}){}",
                    r["requested_by"].as_str().unwrap_or(""),
                    r["action"].as_str().unwrap_or(""),
                    r["to"]
                        .as_str()
                        .map(|c| format!(" {c}"))
                        .unwrap_or_default(),
                    r["id"].as_str().unwrap_or(""),
                    reason(r)
                ),
                "expired" => format!(
                    "{} ({}{}) expired unanswered",
                    s("id"),
                    r["action"].as_str().unwrap_or(""),
                    r["to"]
                        .as_str()
                        .map(|c| format!(" {c}"))
                        .unwrap_or_default(),
                ),
                action => format!("{} {action} by {}{}", s("id"), s("by"), reason(v)),
            }
        }
        "reload" => {
            let list = |k: &str| {
                v[k].as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .filter(|l| !l.is_empty())
                    .map(|l| format!(" {k} {l}"))
                    .unwrap_or_default()
            };
            format!(
                "configuration reloaded{}{}{}",
                list("added"),
                list("removed"),
                list("changed")
            )
        }
        "resync" => format!(
            "events were missed ({}): run bgctl status",
            v["reason"].as_str().unwrap_or("")
        ),
        _ => event.data.clone(),
    };
    let clock = now
        .format(time::macros::format_description!(
            "[hour]:[minute]:[second]"
        ))
        .unwrap_or_default();
    let app = v["app"].as_str().unwrap_or("-");
    format!(
        "{clock} #{} {app} {} {what}",
        v["generation"].as_u64().unwrap_or(0),
        style.bold(&kind)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn show(v: Value) -> String {
        let now = OffsetDateTime::UNIX_EPOCH;
        let e = ServerEvent {
            id: Some("1-1".into()),
            event: "message".into(),
            data: v.to_string(),
        };
        line(&e, &v, now, &Style::detect(true))
    }

    #[test]
    fn one_line_per_event() {
        assert_eq!(
            show(
                json!({"type": "switch", "app": "web", "generation": 4, "from": "blue",
                "to": "green", "kind": "switch", "actor": "ann@lb", "reason": "release 42"})
            ),
            "00:00:00 #4 web switch blue -> green (switch) by ann@lb: release 42"
        );
        assert_eq!(
            show(
                json!({"type": "health", "app": "web", "generation": 4, "color": "green",
                "upstream": "10.0.0.24:3001", "health": "down", "route": null,
                "error": "connection refused"})
            ),
            "00:00:00 #4 web health green 10.0.0.24:3001 is DOWN: connection refused"
        );
        assert_eq!(
            show(
                json!({"type": "rollout", "app": "web", "generation": 5, "actor": "ann",
                "rollout": {"to": "green", "percent": 25, "step": 1, "steps": [10, 25, 100],
                "state": "running"}})
            ),
            "00:00:00 #5 web rollout green at 25%, step 2/3, running by ann"
        );
        assert_eq!(
            show(
                json!({"type": "reload", "app": null, "generation": 6, "added": ["api"],
                "removed": [], "changed": []})
            ),
            "00:00:00 #6 - reload configuration reloaded added api"
        );
        for v in [
            json!({"type": "analysis", "app": "web", "generation": 5, "result": "pass",
                "color": "green", "analysis": {"detail": "ok"}}),
            json!({"type": "deploy", "app": "web", "generation": 5, "phase": "step",
                "deploy": {"id": "d1", "color": "green", "step_index": 1, "steps_total": 2,
                "step": "pull"}}),
            json!({"type": "request", "app": "web", "generation": 5, "action": "created",
                "request": {"id": "r1", "action": "switch", "to": "green",
                "requested_by": "bot"}}),
            json!({"type": "request", "app": "web", "generation": 5, "action": "expired",
                "id": "r1", "request": {"id": "r1", "action": "switch", "to": "green",
                "requested_by": "bot"}}),
        ] {
            let l = show(v.clone());
            assert!(!l.contains('\n'), "{l}");
            assert!(l.contains(v["type"].as_str().unwrap()), "{l}");
            if v["action"] == "expired" {
                assert!(l.ends_with("r1 (switch green) expired unanswered"), "{l}");
            }
        }
    }
}
