//! Text output of bgctl: tables for people, colored on a terminal, plain
//! when piped or with `NO_COLOR`.

use std::fmt::Write;
use std::io::IsTerminal;
use std::time::Duration;

use bgproxy_control::api::{
    AnalysisResult, AnalysisStatus, AppStatus, Color, ColorStatus, DeployResult, Health,
    HistoryResponse, ReloadResponse, RolloutState, RolloutStatus, SwitchResponse, Weights,
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

    /// `s` in the color of `c`.
    pub fn color(&self, c: Color, s: &str) -> String {
        self.paint(if c == Color::Blue { "1;34" } else { "1;32" }, s)
    }

    /// An upstream's health, padded to a column.
    pub fn health(&self, h: Health) -> String {
        let code = match h {
            Health::Up => "32",
            Health::Down => "1;31",
            Health::Unknown => "33",
        };
        self.paint(code, &format!("{:<7}", h.as_str()))
    }

    pub fn bold(&self, s: &str) -> String {
        self.paint("1", s)
    }

    /// An error line (red on a terminal).
    pub fn error(&self, s: &str) -> String {
        self.paint("1;31", s)
    }
}

/// `2026-11-23 03:10:54 UTC`.
pub fn when(t: OffsetDateTime) -> String {
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
        if let Some(line) = split_line(a, OffsetDateTime::now_utc(), style) {
            let _ = writeln!(out, "  {line}");
        }
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
        routes(&mut out, a, style);
        if let Some(line) = trying_line(a) {
            let _ = writeln!(out, "  {line}");
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

/// Each `[[app.routes]]` service of `a`: its prefix, then per color its
/// health and upstreams (they switch with the app).
fn routes(out: &mut String, a: &AppStatus, style: &Style) {
    for r in &a.routes {
        let _ = writeln!(out, "  ROUTE {}  {}", style.bold(&r.name), r.path_prefix);
        for c in Color::ALL {
            let cs = r.colors.get(c);
            let verdict = if cs.healthy {
                style.paint("32", "healthy")
            } else {
                style.paint("1;31", "NOT HEALTHY")
            };
            let role = if c == a.live { "live" } else { "standby" };
            let _ = writeln!(
                out,
                "    {:<6} {:<8} {}",
                style.color(c, c.as_str()),
                role,
                verdict
            );
            for u in &cs.upstreams {
                let _ = writeln!(
                    out,
                    "        {:<24} {} for {}",
                    u.addr,
                    style.health(u.health),
                    ago(u.since)
                );
            }
        }
    }
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

/// [`unhealthy_summary`] of the app's own pool of `to`, then of each
/// route's that is not healthy, named.
pub fn app_unhealthy_summary(app: &AppStatus, to: Color) -> String {
    let own = app.colors.get(to);
    let mut parts: Vec<String> = Vec::new();
    if own.upstreams.iter().any(|u| u.health != Health::Up) {
        parts.push(unhealthy_summary(own));
    }
    for r in &app.routes {
        let c = r.colors.get(to);
        if !c.healthy {
            parts.push(format!(
                "route '{}' ({}): {}",
                r.name,
                r.path_prefix,
                unhealthy_summary(c)
            ));
        }
    }
    parts.join("; ")
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
    target_health(&mut out, app, to, emergency, style);
    out
}

/// The plan's lines on the health of `to`: each upstream, then the verdict
/// (or the emergency warning).
pub fn target_health(out: &mut String, app: &AppStatus, to: Color, emergency: bool, style: &Style) {
    let target = app.colors.get(to);
    for u in &target.upstreams {
        let _ = writeln!(out, "    {:<24} {}", u.addr, style.health(u.health));
    }
    for r in &app.routes {
        let _ = writeln!(out, "    route {} ({}):", r.name, r.path_prefix);
        for u in &r.colors.get(to).upstreams {
            let _ = writeln!(out, "      {:<22} {}", u.addr, style.health(u.health));
        }
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
            style.paint("1;31", &app_unhealthy_summary(app, to))
        );
    }
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
    ) + &applied(d.applied_by.as_deref(), d.missing.as_deref())
}

/// `[cluster]`: which instances applied a change within the daemon's
/// `ack_timeout`; empty without a cluster.
pub fn applied(by: Option<&[String]>, missing: Option<&[String]>) -> String {
    match (by, missing) {
        (Some(by), Some([])) => format!("applied by every instance: {}\n", by.join(", ")),
        (Some(by), Some(missing)) => format!(
            "applied by {}; NOT YET by {} (cut off from etcd, or slow: they apply it once they reach it; see bgctl cluster)\n",
            if by.is_empty() { "none".to_string() } else { by.join(", ") },
            missing.join(", ")
        ),
        _ => String::new(),
    }
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

/// `blue 75% / green 25%`.
pub fn split(w: Weights, style: &Style) -> String {
    format!(
        "{} {}% / {} {}%",
        style.color(Color::Blue, "blue"),
        w.blue,
        style.color(Color::Green, "green"),
        w.green
    )
}

/// How the standby can be tried, when the app configures any of it:
/// `try the standby (green): X-Bgproxy-Preview header or /.bgproxy/preview,
/// green.shop.test, mirroring 10%, bgctl verify (2 checks)`.
pub fn trying_line(a: &AppStatus) -> Option<String> {
    let t = &a.trying;
    let mut ways = Vec::new();
    if t.preview {
        ways.push("X-Bgproxy-Preview header or /.bgproxy/preview?token=...".to_string());
    }
    let hosts = match a.standby {
        Color::Blue => &t.blue_hosts,
        Color::Green => &t.green_hosts,
    };
    if !hosts.is_empty() {
        ways.push(hosts.join(", "));
    }
    if t.mirror_percent > 0 {
        ways.push(format!("mirroring {}% of live requests", t.mirror_percent));
    }
    if !t.verify_checks.is_empty() {
        ways.push(format!(
            "bgctl verify ({} check{}, run before every switch)",
            t.verify_checks.len(),
            if t.verify_checks.len() == 1 { "" } else { "s" }
        ));
    }
    (!ways.is_empty()).then(|| format!("try the standby ({}): {}", a.standby, ways.join("; ")))
}

/// The split line of `bgctl status`, when the app has a rollout or its
/// requests are split: `split  blue 75% / green 25%   rollout green step
/// 2/4 (25%) running, 40s left, last analysis pass (...)`.
pub fn split_line(a: &AppStatus, now: OffsetDateTime, style: &Style) -> Option<String> {
    if a.rollout.is_none() && a.weights.of(a.live) == 100 {
        return None;
    }
    let mut line = format!("split  {}", split(a.weights, style));
    if let Some(r) = &a.rollout {
        let _ = write!(line, "   rollout {}", rollout(r, now, style));
    }
    Some(line)
}

/// `green step 2/4 (25%) running, 40s left, last analysis pass (...)`, or
/// `green held at 30% by weight (paused)`.
pub fn rollout(r: &RolloutStatus, now: OffsetDateTime, style: &Style) -> String {
    let mut out = if r.steps.is_empty() {
        format!("{} held at {}% by weight", r.to, r.percent)
    } else {
        format!(
            "{} step {}/{} ({}%)",
            r.to,
            r.step + 1,
            r.steps.len(),
            r.percent
        )
    };
    // A share held by weight is always paused: nothing to say.
    match r.state {
        _ if r.steps.is_empty() => {}
        RolloutState::Running => {
            let _ = write!(out, " running, {}", time_left(r, now));
        }
        RolloutState::Paused => {
            let _ = write!(out, " {}", style.paint("1;33", "PAUSED"));
        }
    }
    let inconclusive_last = r
        .last_analysis
        .as_ref()
        .is_some_and(|a| a.result == AnalysisResult::Inconclusive);
    if r.inconclusive > 0 && inconclusive_last {
        let _ = write!(out, ", {} inconclusive in a row", r.inconclusive);
    }
    if let Some(a) = &r.last_analysis {
        let _ = write!(out, ", last analysis {}", analysis(a, style));
    }
    out
}

/// `40s left` in the step: its start plus the step interval, less `now`;
/// `analysing` once that is past (the step's analysis is due).
pub fn time_left(r: &RolloutStatus, now: OffsetDateTime) -> String {
    let end = r.step_started + Duration::from_millis(r.step_interval_ms);
    let left = (end - now).whole_milliseconds();
    if left <= 0 {
        return "analysing".to_string();
    }
    // Rounded up: "1s left" until the step ends, never "0s left".
    let secs = (left as u64).div_ceil(1000);
    let text = match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    };
    format!("{text} left")
}

/// `pass (212 req, 0.5% 5xx, p99 12 ms vs 10 ms)`; a fail or an
/// inconclusive window also says why.
pub fn analysis(a: &AnalysisStatus, style: &Style) -> String {
    let result = match a.result {
        AnalysisResult::Pass => style.paint("32", "pass"),
        AnalysisResult::Fail => style.paint("1;31", "FAIL"),
        AnalysisResult::Inconclusive => style.paint("33", "inconclusive"),
    };
    let ms = |v: Option<f64>| match v {
        Some(v) if v < 10.0 => format!("{v:.1} ms"),
        Some(v) => format!("{v:.0} ms"),
        None => "-".to_string(),
    };
    let mut out = format!(
        "{result} ({} req, {:.1}% 5xx, p99 {}",
        a.requests,
        a.error_ratio * 100.0,
        ms(a.p99_ms)
    );
    if a.baseline_p99_ms.is_some() {
        let _ = write!(out, " vs {}", ms(a.baseline_p99_ms));
    }
    out.push(')');
    if a.result != AnalysisResult::Pass && !a.detail.is_empty() {
        let _ = write!(out, ": {}", a.detail);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: Style = Style { color: false };

    fn app(weights: Weights, rollout: Option<RolloutStatus>) -> AppStatus {
        let pool = ColorStatus {
            healthy: true,
            connections: 0,
            upstreams: Vec::new(),
        };
        AppStatus {
            name: "web".into(),
            hosts: Vec::new(),
            live: Color::Blue,
            standby: Color::Green,
            switch_count: 0,
            last_switch: None,
            deploy: None,
            colors: bgproxy_control::api::Colors {
                blue: pool.clone(),
                green: pool,
            },
            weights,
            rollout,
            routes: Vec::new(),
            trying: Default::default(),
        }
    }

    #[test]
    fn trying_line_names_each_way_to_the_standby() {
        let mut a = app(Weights::new(Color::Blue, 100), None);
        assert_eq!(trying_line(&a), None);
        a.trying.preview = true;
        a.trying.green_hosts = vec!["green.web.test".into()];
        a.trying.blue_hosts = vec!["blue.web.test".into()];
        a.trying.mirror_percent = 10;
        a.trying.verify_checks = vec!["home".into()];
        let line = trying_line(&a).unwrap();
        assert!(
            line.starts_with("try the standby (green): X-Bgproxy-Preview"),
            "{line}"
        );
        assert!(
            line.contains("green.web.test") && !line.contains("blue.web.test"),
            "{line}"
        );
        assert!(
            line.contains("mirroring 10%") && line.contains("bgctl verify (1 check,"),
            "{line}"
        );
    }

    fn rollout(now: OffsetDateTime) -> RolloutStatus {
        RolloutStatus {
            to: Color::Green,
            state: RolloutState::Running,
            step: 1,
            steps: vec![10, 25, 50, 100],
            percent: 25,
            step_started: now - Duration::from_secs(20),
            step_interval_ms: 60_000,
            inconclusive: 0,
            last_analysis: Some(AnalysisStatus {
                result: AnalysisResult::Pass,
                requests: 212,
                error_ratio: 0.005,
                p99_ms: Some(12.2),
                baseline_p99_ms: Some(9.6),
                detail: "error ratio 0.005 over 212 responses".into(),
                at: now - Duration::from_secs(20),
            }),
            actor: "ann@lb1".into(),
            reason: None,
        }
    }

    #[test]
    fn split_line_reads_at_a_glance() {
        let now = OffsetDateTime::now_utc();
        let line = split_line(
            &app(Weights::new(Color::Green, 25), Some(rollout(now))),
            now,
            &PLAIN,
        );
        assert_eq!(
            line.as_deref(),
            Some("split  blue 75% / green 25%   rollout green step 2/4 (25%) running, 40s left, last analysis pass (212 req, 0.5% 5xx, p99 12 ms vs 9.6 ms)")
        );
        // Nothing split, no rollout: no line.
        assert_eq!(
            split_line(&app(Weights::new(Color::Blue, 100), None), now, &PLAIN),
            None
        );
    }

    #[test]
    fn rollout_paused_held_and_due() {
        let now = OffsetDateTime::now_utc();
        let mut r = rollout(now);
        r.step_started = now - Duration::from_secs(61);
        assert!(super::rollout(&r, now, &PLAIN).contains("running, analysing"));
        r.state = RolloutState::Paused;
        r.inconclusive = 3;
        r.last_analysis = Some(AnalysisStatus {
            result: AnalysisResult::Inconclusive,
            requests: 3,
            error_ratio: 0.0,
            p99_ms: None,
            baseline_p99_ms: None,
            detail: "3 responses, fewer than min_requests 50".into(),
            at: now,
        });
        assert_eq!(
            super::rollout(&r, now, &PLAIN),
            "green step 2/4 (25%) PAUSED, 3 inconclusive in a row, last analysis inconclusive (3 req, 0.0% 5xx, p99 -): 3 responses, fewer than min_requests 50"
        );
        r.steps.clear();
        r.percent = 30;
        r.inconclusive = 0;
        r.last_analysis = None;
        assert_eq!(
            super::rollout(&r, now, &PLAIN),
            "green held at 30% by weight"
        );
    }

    #[test]
    fn time_left_rounds_up() {
        let now = OffsetDateTime::now_utc();
        let mut r = rollout(now);
        r.step_started = now - Duration::from_millis(59_500);
        assert_eq!(time_left(&r, now), "1s left");
        r.step_interval_ms = 3_600_000;
        r.step_started = now;
        assert_eq!(time_left(&r, now), "1h00m left");
        r.step_interval_ms = 150_000;
        assert_eq!(time_left(&r, now), "2m30s left");
    }
}
