//! Text output of bgctl: tables for people, colored on a terminal, plain
//! when piped or with `NO_COLOR`.

use std::fmt::Write;
use std::io::IsTerminal;
use std::time::Duration;

use bgproxy_control::api::{
    AppStatus, Color, ColorStatus, DeployResult, Health, HistoryResponse, ReloadResponse,
    SwitchResponse,
};
use time::OffsetDateTime;

/// Whether to use ANSI colors.
pub struct Style {
    color: bool,
}

impl Style {
    /// Colors only on a terminal, without `NO_COLOR`, and never with `--json`.
    pub fn detect(json: bool) -> Style {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Style {
            color: !json && !no_color && std::io::stdout().is_terminal(),
        }
    }

    /// Whether colors (and so a terminal) are in use.
    pub fn is_terminal(&self) -> bool {
        self.color
    }

    pub fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    fn color(&self, c: Color, s: &str) -> String {
        self.paint(if c == Color::Blue { "1;34" } else { "1;32" }, s)
    }

    fn health(&self, h: Health) -> String {
        let code = match h {
            Health::Up => "32",
            Health::Down => "1;31",
            Health::Unknown => "33",
        };
        self.paint(code, &format!("{:<7}", h.as_str()))
    }

    fn bold(&self, s: &str) -> String {
        self.paint("1", s)
    }

    /// An error line (red on a terminal).
    pub fn error(&self, s: &str) -> String {
        self.paint("1;31", s)
    }
}

/// `2026-11-23 03:10:54 UTC`.
fn when(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// `4m`, `2h`, `3d`: how long since `t`.
fn ago(t: OffsetDateTime) -> String {
    let secs = (OffsetDateTime::now_utc() - t).whole_seconds().max(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// The status table of `bgctl status`.
pub fn status(apps: &[&AppStatus], style: &Style) -> String {
    let mut out = String::new();
    for (i, a) in apps.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let hosts = if a.hosts.is_empty() {
            "(default app)".to_string()
        } else {
            a.hosts.join(", ")
        };
        let last = a.last_switch.map_or("never".to_string(), |t| {
            format!("{} ({} ago)", when(t), ago(t))
        });
        let _ = writeln!(out, "{}  {}", style.bold(&format!("APP {}", a.name)), hosts);
        let _ = writeln!(
            out,
            "  LIVE {}   STANDBY {}   switches {}   last switch {}",
            style.color(a.live, &a.live.as_str().to_uppercase()),
            style.color(a.standby, a.standby.as_str()),
            a.switch_count,
            last
        );
        for c in Color::ALL {
            let role = if c == a.live { "live" } else { "standby" };
            let cs = a.colors.get(c);
            let verdict = if cs.healthy {
                style.paint("32", "healthy")
            } else {
                style.paint("1;31", "NOT HEALTHY")
            };
            let _ = writeln!(
                out,
                "  {:<6} {:<8} {}   {} in flight",
                style.color(c, c.as_str()),
                role,
                verdict,
                cs.connections
            );
            for u in &cs.upstreams {
                let _ = writeln!(
                    out,
                    "      {:<24} {} for {}",
                    u.addr,
                    style.health(u.health),
                    ago(u.since)
                );
            }
        }
        let deploy = match &a.deploy {
            None => "none".to_string(),
            Some(d) => format!(
                "to {} by {}, {} ({} ago){}",
                d.color,
                d.actor,
                match &d.step {
                    Some(step) if step == "health" => "waiting for health".to_string(),
                    Some(step) => format!("step {}/{} '{step}'", d.step_index, d.steps_total),
                    None => "starting".to_string(),
                },
                ago(d.started),
                if d.migrate { ", with migrations" } else { "" }
            ),
        };
        let _ = writeln!(out, "  deploy in progress: {deploy}");
    }
    out
}

/// The history tables of `bgctl history`: switches, then deploys.
pub fn history(h: &HistoryResponse, style: &Style) -> String {
    let mut out = switches(h, style);
    if !h.deploys.is_empty() {
        let _ = writeln!(
            out,
            "\n{}",
            style.bold(&format!(
                "{:<24} {:<6} {:<8} {:>9} {:<20} STEPS",
                "DEPLOYED", "COLOR", "RESULT", "TOOK", "ACTOR"
            ))
        );
        for d in &h.deploys {
            let steps: Vec<String> = d
                .steps
                .iter()
                .map(|s| match (s.skipped, s.ok) {
                    (true, _) => format!("{} (skipped)", s.name),
                    (false, true) => format!("{} {:.1}s", s.name, s.duration_ms as f64 / 1000.0),
                    (false, false) => format!("{} FAILED", s.name),
                })
                .collect();
            let result = match d.result {
                DeployResult::Success => style.paint("32", "success "),
                DeployResult::Failed => style.paint("1;31", "failed  "),
                DeployResult::Aborted => style.paint("1;33", "aborted "),
            };
            let _ = writeln!(
                out,
                "{:<24} {:<6} {} {:>8.1}s {:<20} {}",
                when(d.time),
                d.color.as_str(),
                result,
                d.duration_ms as f64 / 1000.0,
                d.actor,
                steps.join(", ")
            );
        }
    }
    out
}

fn switches(h: &HistoryResponse, style: &Style) -> String {
    if h.history.is_empty() {
        return format!("app '{}' has no switches yet\n", h.app);
    }
    let mut out = format!(
        "{}\n",
        style.bold(&format!(
            "{:<24} {:<6}    {:<6} {:<10} {:<20} REASON",
            "TIME", "FROM", "TO", "KIND", "ACTOR"
        ))
    );
    for e in &h.history {
        let _ = writeln!(
            out,
            "{:<24} {:<6} -> {:<6} {:<10} {:<20} {}",
            when(e.time),
            e.from.as_str(),
            e.to.as_str(),
            e.kind.to_string(),
            e.actor,
            e.reason.as_deref().unwrap_or("-")
        );
    }
    out
}

/// `10.0.0.24:3001 is down, 10.0.0.25:3001 is unknown`.
pub fn unhealthy_summary(c: &ColorStatus) -> String {
    c.upstreams
        .iter()
        .filter(|u| u.health != Health::Up)
        .map(|u| format!("{} is {}", u.addr, u.health))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The plan shown before asking for approval.
pub fn plan(app: &AppStatus, to: Color, rollback: bool, emergency: bool, style: &Style) -> String {
    let mut out = String::new();
    let what = if rollback { "ROLLBACK" } else { "SWITCH" };
    let _ = writeln!(out, "{} of app '{}'", style.bold(what), app.name);
    let _ = writeln!(
        out,
        "  current live: {}",
        style.color(app.live, &app.live.as_str().to_uppercase())
    );
    let _ = writeln!(
        out,
        "  new live:     {}",
        style.color(to, &to.as_str().to_uppercase())
    );
    let target = app.colors.get(to);
    for u in &target.upstreams {
        let _ = writeln!(out, "    {:<24} {}", u.addr, style.health(u.health));
    }
    if emergency {
        let _ = writeln!(
            out,
            "{}",
            style.paint("1;31", "  !!! EMERGENCY: the health gate is SKIPPED; traffic moves even if the target is down !!!")
        );
    } else if target.healthy {
        let _ = writeln!(
            out,
            "  target health: {}",
            style.paint("32", "every upstream up")
        );
    } else {
        let _ = writeln!(
            out,
            "  target health: {}",
            style.paint("1;31", &unhealthy_summary(target))
        );
    }
    out
}

/// The plan as JSON, for `--json` when approval is needed or refused.
pub fn plan_json(
    app: &AppStatus,
    to: Color,
    rollback: bool,
    emergency: bool,
    approval_needed: bool,
) -> String {
    serde_json::json!({
        "plan": {
            "app": app.name,
            "action": if rollback { "rollback" } else { "switch" },
            "from": app.live,
            "to": to,
            "emergency": emergency,
            "target_healthy": app.colors.get(to).healthy,
        },
        "approval_needed": approval_needed,
    })
    .to_string()
}

/// The result of a switch or rollback.
pub fn done(d: &SwitchResponse, took: Duration, style: &Style) -> String {
    format!(
        "{} {} is now LIVE for app '{}' (was {}; {} #{} at {}; took {} ms, {:.1} ms on the daemon)\n",
        style.paint("32", "OK"),
        style.color(d.live, &d.live.as_str().to_uppercase()),
        d.app,
        d.from,
        d.kind,
        d.switch_count,
        when(d.time),
        took.as_millis(),
        d.duration_ms
    )
}

/// The result of `bgctl reload`.
pub fn reload(r: &ReloadResponse, style: &Style) -> String {
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    let mut out = format!(
        "{} configuration reloaded (generation {})\n  added: {}\n  removed: {}\n  changed: {}\n",
        style.paint("32", "OK"),
        r.generation,
        list(&r.added),
        list(&r.removed),
        list(&r.changed)
    );
    if !r.restart_required.is_empty() {
        let _ = writeln!(
            out,
            "  {} {}",
            style.paint("1;33", "needs a restart to take effect:"),
            r.restart_required.join(", ")
        );
    }
    out
}
