//! `bgctl canary | weight | promote | abort | pause | resume`: the rollout
//! commands.
//!
//! Flow: the app's status -> [`check`] what the daemon would refuse (so a
//! doomed change is never put to the operator, and "approval needed" never
//! hides a refusal) -> the plan and the approval of `switch` ([`approve`]) ->
//! the call -> what changed. `canary --wait` then polls the app ([`follow`])
//! until the rollout ends: exit 0 when the new color became live, 1 when the
//! rollout was aborted or paused. The daemon re-checks every gate, and the
//! call carries the generation of the status the plan was made from: a
//! change made by someone else between the plan and the call is refused
//! there (`plan_stale`).

use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};

use bgproxy_control::api::{
    ActionRequest, AnalysisResult, AppStatus, CanaryRequest, Color, RolloutResponse, RolloutState,
    RolloutStatus, WeightRequest, Weights,
};
use bgproxy_control::client::{Client, ClientError};
use bgproxy_control::duration::parse_duration;
use time::OffsetDateTime;

use crate::render::{self, Style};
use crate::{fail, Failure, EXIT_APPROVAL, EXIT_REFUSED};

/// How often `canary --wait` asks the daemon where the rollout stands.
const POLL: Duration = Duration::from_millis(500);
/// How long `canary --wait` keeps asking a daemon it cannot reach (a
/// restart) before it gives up; the rollout goes on without it.
const UNREACHABLE_GRACE: Duration = Duration::from_secs(30);

/// A rollout command, as parsed.
pub enum Action {
    Canary {
        to: Color,
        /// None: the app's `[app.rollout] steps`.
        steps: Option<Vec<u32>>,
        /// None: the app's `[app.rollout] step_interval`.
        interval: Option<String>,
    },
    Weight {
        to: Color,
        percent: u32,
    },
    Promote,
    Abort,
    Pause,
    Resume,
}

impl Action {
    fn name(&self) -> &'static str {
        match self {
            Action::Canary { .. } => "canary",
            Action::Weight { .. } => "weight",
            Action::Promote => "promote",
            Action::Abort => "abort",
            Action::Pause => "pause",
            Action::Resume => "resume",
        }
    }
}

/// The operator's answers: `--yes`, `--emergency` (only where it makes
/// sense: canary, weight, promote), `--reason`; and the generation the
/// plan is bound to (that of the app's status, or `--expect-generation`).
pub struct Ask {
    pub yes: bool,
    pub emergency: bool,
    pub reason: Option<String>,
    pub expect_generation: Option<u64>,
}

/// `--steps 10,25,50,100` (a `%` after a share is allowed).
#[derive(Clone, Debug)]
pub struct Steps(pub Vec<u32>);

/// Parses `--steps`: shares between 1 and 100, increasing, the last 100 (the
/// daemon's rule, checked here so a typo is a usage error, exit 2).
pub fn parse_steps(s: &str) -> Result<Steps, String> {
    let steps = s
        .split(',')
        .map(|p| parse_share(p).map_err(|e| format!("{e} in '{s}'")))
        .collect::<Result<Vec<u32>, String>>()?;
    bgproxy_control::api::rollout_steps(&steps)
        .map(|_| Steps(steps))
        .map_err(|e| format!("{e}: like 10,25,50,100"))
}

/// Parses a share: `30` or `30%`, 0 to 100.
pub fn parse_share(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let n: u32 = t
        .strip_suffix('%')
        .unwrap_or(t)
        .trim()
        .parse()
        .map_err(|_| {
            format!("invalid share '{t}': expected a percent between 0 and 100, like 25")
        })?;
    if n > 100 {
        return Err(format!("the share must be between 0 and 100, not {n}"));
    }
    Ok(n)
}

/// Parses `--interval`: a duration more than 0, sent as written.
pub fn parse_interval(s: &str) -> Result<String, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("the step interval must be more than 0, like 1m".into()),
        _ => Ok(s.trim().to_string()),
    }
}

/// Runs one rollout command against `app`.
pub fn run(
    client: &Client,
    app: &AppStatus,
    action: Action,
    ask: &Ask,
    wait: bool,
    json: bool,
    style: &Style,
) -> Result<(), Failure> {
    let gate = check(app, &action, ask.emergency)?;
    let plan = || plan(app, &action, gate, ask.emergency, style);
    if let Some(to) = gate.filter(|_| !ask.emergency) {
        let target = app.colors.get(to);
        if !target.healthy {
            show_plan(
                json,
                plan_json(app, &action, gate, ask.emergency, false),
                plan,
            );
            return Err(fail(
                EXIT_REFUSED,
                format!(
                    "refusing: {to} is not healthy ({}); wait until it is, or add --emergency to skip the health gate",
                    render::app_unhealthy_summary(app, to)
                ),
            ));
        }
    }
    approve(
        ask.yes,
        json,
        || plan_json(app, &action, gate, ask.emergency, true),
        plan,
    )?;
    let (emergency, reason, actor) = (ask.emergency, ask.reason.clone(), Some(crate::actor()));
    let body = match &action {
        Action::Canary {
            to,
            steps,
            interval,
        } => serde_json::to_value(CanaryRequest {
            to: *to,
            steps: steps.clone(),
            step_interval: interval.clone(),
            emergency,
            reason,
            actor,
            expect_generation: ask.expect_generation,
        }),
        Action::Weight { to, percent } => serde_json::to_value(WeightRequest {
            to: *to,
            percent: *percent,
            emergency,
            reason,
            actor,
            expect_generation: ask.expect_generation,
        }),
        _ => serde_json::to_value(ActionRequest {
            emergency,
            reason,
            actor,
            expect_generation: ask.expect_generation,
        }),
    }
    .map_err(|e| fail(EXIT_REFUSED, format!("cannot encode the request: {e}")))?;
    let path = format!("/v1/apps/{}/{}", app.name, action.name());
    let started = Instant::now();
    let text = client.call_raw(reqwest::Method::POST, &path, Some(&body))?;
    let follow_to = match action {
        Action::Canary { to, .. } if wait => Some(to),
        _ => None,
    };
    if json && follow_to.is_none() {
        println!("{}", text.trim_end());
        return Ok(());
    }
    let done: RolloutResponse = serde_json::from_str(&text).map_err(|e| {
        fail(
            EXIT_REFUSED,
            format!("the change was made, but its answer is unreadable: {e}"),
        )
    })?;
    if json {
        // Followed by one line per state of the app: JSON lines.
        println!("{}", one_line(&text));
    } else {
        print!("{}", outcome(&action, &done, started.elapsed(), style));
    }
    match follow_to {
        Some(to) => follow(client, &done, to, json, style),
        None => Ok(()),
    }
}

/// What the daemon would refuse, refused here with its words; otherwise
/// the color whose health gates the change (canary, weight above 0,
/// promote), if any.
fn check(app: &AppStatus, action: &Action, emergency: bool) -> Result<Option<Color>, Failure> {
    fn refuse<T>(m: String) -> Result<T, Failure> {
        Err(fail(EXIT_REFUSED, m))
    }
    let name = &app.name;
    let no_rollout = || {
        format!("app '{name}' has no rollout: start one with bgctl canary, or set a share with bgctl weight")
    };
    let deploy_on = |to: Color| -> Result<(), Failure> {
        match &app.deploy {
            Some(d) if d.color == to && !emergency => refuse(format!(
                "a deploy to {to} of app '{name}' is running: wait for it to finish, or add --emergency to abort it"
            )),
            _ => Ok(()),
        }
    };
    match (action, &app.rollout) {
        (Action::Canary { .. }, Some(r)) => refuse(format!(
            "a rollout of app '{name}' is running ({}): promote or abort it first",
            r.describe()
        )),
        (Action::Canary { to, .. }, None) if *to == app.live => refuse(format!(
            "{to} is already live for app '{name}': nothing to do"
        )),
        (Action::Canary { to, .. }, None) => deploy_on(*to).map(|_| Some(*to)),
        (Action::Weight { to, percent }, _) if *to == app.live => refuse(format!(
            "{to} is live: weight sets the share of the standby; for {to} at {percent}% ask for {} at {}%",
            to.other(),
            100 - (*percent).min(100)
        )),
        (Action::Weight { percent: 0, .. }, None) => refuse(no_rollout()),
        (Action::Weight { percent: 0, .. }, Some(_)) => Ok(None),
        (Action::Weight { to, .. }, _) => deploy_on(*to).map(|_| Some(*to)),
        (_, None) => refuse(no_rollout()),
        (Action::Promote, Some(r)) => deploy_on(r.to).map(|_| Some(r.to)),
        (Action::Abort, Some(_)) => Ok(None),
        (Action::Pause, Some(r)) if r.state == RolloutState::Paused => refuse(format!(
            "the rollout of app '{name}' is paused already: resume, promote or abort it"
        )),
        (Action::Resume, Some(r)) if r.state == RolloutState::Running => refuse(format!(
            "the rollout of app '{name}' is running, not paused: nothing to resume"
        )),
        (Action::Resume, Some(r)) if r.steps.is_empty() => refuse(format!(
            "the rollout of app '{name}' holds a share set by weight and has no steps to go on with: promote or abort it"
        )),
        (Action::Pause | Action::Resume, Some(_)) => Ok(None),
    }
}

/// The split after the change, when it changes.
fn weights_after(app: &AppStatus, action: &Action) -> Option<Weights> {
    let new = app.rollout.as_ref().map(|r| r.to);
    match action {
        Action::Canary { to, steps, .. } => steps
            .as_ref()
            .and_then(|s| s.first())
            .map(|&first| Weights::new(*to, first as u8)),
        Action::Weight { to, percent } => Some(Weights::new(*to, *percent as u8)),
        Action::Promote => new.map(|to| Weights::new(to, 100)),
        Action::Abort => Some(Weights::new(app.live, 100)),
        Action::Pause | Action::Resume => None,
    }
}

/// The plan shown before asking: the split now, what changes, the health
/// of the color that gets more traffic.
fn plan(
    app: &AppStatus,
    action: &Action,
    gate: Option<Color>,
    emergency: bool,
    style: &Style,
) -> String {
    let mut out = format!(
        "{} of app '{}'\n",
        style.bold(&action.name().to_uppercase()),
        app.name
    );
    let upper = |c: Color| style.color(c, &c.as_str().to_uppercase());
    out += &format!("  live:       {}\n", upper(app.live));
    out += &format!("  split now:  {}\n", render::split(app.weights, style));
    if let Some(r) = &app.rollout {
        out += &format!(
            "  rollout:    {}\n",
            render::rollout(r, OffsetDateTime::now_utc(), style)
        );
    }
    let then = |w: Weights| render::split(w, style);
    let change = match action {
        Action::Canary {
            to,
            steps,
            interval,
        } => {
            let steps = steps
                .as_ref()
                .map_or("the app's [app.rollout] steps".into(), |s| {
                    s.iter()
                        .map(|p| format!("{p}%"))
                        .collect::<Vec<_>>()
                        .join(" -> ")
                });
            let each = interval
                .as_deref()
                .map_or("the app's step_interval".into(), |i| i.to_string());
            let first = weights_after(app, action)
                .map(|w| format!("first step {}; ", then(w)))
                .unwrap_or_default();
            format!(
                "{to} through {steps}, {each} at each step, analysed before the next\n              {first}{} becomes LIVE at 100%",
                upper(*to)
            )
        }
        Action::Weight { to, percent: 0 } => format!(
            "{}: {to} back to 0% (like abort); {} stays live",
            then(Weights::new(app.live, 100)),
            upper(app.live)
        ),
        Action::Weight { to, percent: 100 } => format!(
            "{}: {} becomes LIVE (like promote)",
            then(Weights::new(*to, 100)),
            upper(*to)
        ),
        Action::Weight { to, percent } => format!(
            "{}, held there ({})",
            then(Weights::new(*to, *percent as u8)),
            match &app.rollout {
                Some(r) if !r.steps.is_empty() => {
                    "the rollout pauses: resume, promote or abort it later"
                }
                _ => "no steps: promote or abort it later",
            }
        ),
        Action::Promote => match gate {
            Some(to) => format!(
                "{}: {} becomes LIVE now, the remaining steps skipped",
                then(Weights::new(to, 100)),
                upper(to)
            ),
            None => String::new(),
        },
        Action::Abort => format!(
            "{}: the rollout ends, {} stays live",
            then(Weights::new(app.live, 100)),
            upper(app.live)
        ),
        Action::Pause => "the rollout holds its share until resume, promote or abort".into(),
        Action::Resume => "the rollout runs again: its step starts anew, then is analysed".into(),
    };
    out += &format!("  change:     {change}\n");
    if let Some(to) = gate {
        render::target_health(&mut out, app, to, emergency, style);
    }
    out
}

/// The plan as JSON, for `--json` when approval is needed or refused.
fn plan_json(
    app: &AppStatus,
    action: &Action,
    gate: Option<Color>,
    emergency: bool,
    approval_needed: bool,
) -> String {
    let (steps, interval) = match action {
        Action::Canary {
            steps, interval, ..
        } => (steps.clone(), interval.clone()),
        _ => (None, None),
    };
    serde_json::json!({
        "plan": {
            "app": app.name,
            "action": action.name(),
            "live": app.live,
            "to": gate.or(app.rollout.as_ref().map(|r| r.to)),
            "weights": app.weights,
            "weights_after": weights_after(app, action),
            "steps": steps,
            "step_interval": interval,
            "emergency": emergency,
            "target_healthy": gate.map(|c| app.colors.get(c).healthy),
        },
        "approval_needed": approval_needed,
    })
    .to_string()
}

/// Prints the plan where `switch` does when it refuses: JSON on stdout, or
/// text on stderr.
fn show_plan(json: bool, plan_json: String, plan: impl FnOnce() -> String) {
    if json {
        println!("{plan_json}");
    } else {
        eprint!("{}", plan());
    }
}

/// The two-step approval of `switch`: with `yes`, go; on a terminal, show
/// the plan and ask `Proceed? [y/N]`; otherwise print the plan and fail
/// with exit 3, nothing changed.
pub fn approve(
    yes: bool,
    json: bool,
    plan_json: impl FnOnce() -> String,
    plan: impl FnOnce() -> String,
) -> Result<(), Failure> {
    if yes {
        return Ok(());
    }
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal() && !json;
    if !interactive {
        if json {
            println!("{}", plan_json());
        } else {
            print!("{}", plan());
        }
        return Err(fail(
            EXIT_APPROVAL,
            "approval needed: nothing changed; re-run with --yes to proceed",
        ));
    }
    eprint!("{}", plan());
    eprint!("Proceed? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        return Err(fail(EXIT_REFUSED, "not confirmed: nothing changed"));
    }
    Ok(())
}

/// What the change did, in a line or two.
fn outcome(action: &Action, done: &RolloutResponse, took: Duration, style: &Style) -> String {
    if let Some(switch) = &done.switch {
        return render::done(switch, took, style);
    }
    let ok = style.paint("32", "OK");
    let now = OffsetDateTime::now_utc();
    let split = render::split(done.weights, style);
    let name = &done.app;
    match (action, &done.rollout) {
        (Action::Canary { to, .. }, Some(r)) => format!(
            "{ok} rollout of {} started for app '{name}': {split}, step 1/{} at {}%, {} a step; follow it with bgctl status\n",
            style.color(*to, &to.as_str().to_uppercase()),
            r.steps.len(),
            r.percent,
            seconds(r.step_interval_ms),
        ),
        (_, None) => format!(
            "{ok} rollout of app '{name}' ended: {split}; {} is still live\n",
            style.color(done.live, &done.live.as_str().to_uppercase())
        ),
        (_, Some(r)) => {
            let verb = match action {
                Action::Weight { .. } => "held",
                Action::Pause => "paused",
                Action::Resume => "resumed",
                _ => "now",
            };
            format!(
                "{ok} rollout of app '{name}' {verb}: {split}   rollout {}\n",
                render::rollout(r, now, style)
            )
        }
    }
}

/// `1s`, `1m`, `90s`, `1.5s` from milliseconds.
fn seconds(ms: u64) -> String {
    match ms {
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{:.1}s", ms as f64 / 1000.0),
    }
}

/// `canary --wait`: polls the app every [`POLL`] and prints each step
/// change and each analysis once, until the rollout ends. Ok when `to`
/// became live; exit 1 when the rollout was aborted or paused (then it
/// waits for a human: promote, resume or abort). With `--json`, each new
/// state of the app is one line of the API's JSON (`GET /v1/apps/{app}`).
fn follow(
    client: &Client,
    started: &RolloutResponse,
    to: Color,
    json: bool,
    style: &Style,
) -> Result<(), Failure> {
    let app = &started.app;
    let mut seen: Option<Seen> = started.rollout.as_ref().map(Seen::of);
    if started.rollout.is_none() {
        return if started.live == to {
            Ok(())
        } else {
            Err(fail(
                EXIT_REFUSED,
                format!(
                    "the rollout of {to} ended at once; {} is live",
                    started.live
                ),
            ))
        };
    }
    let mut lost_since: Option<Instant> = None;
    loop {
        std::thread::sleep(POLL);
        let text = match client.call_raw(
            reqwest::Method::GET,
            &format!("/v1/apps/{app}"),
            None::<&()>,
        ) {
            Ok(t) => {
                lost_since = None;
                t
            }
            Err(ClientError::Unreachable { .. })
                if lost_since.get_or_insert_with(Instant::now).elapsed() < UNREACHABLE_GRACE =>
            {
                continue
            }
            Err(e) => {
                let mut f = Failure::from(e);
                f.message += "; the rollout goes on on the daemon: see bgctl status";
                return Err(f);
            }
        };
        let status: AppStatus = serde_json::from_str(&text).map_err(|e| {
            fail(
                EXIT_REFUSED,
                format!("unexpected answer from the daemon: {e} in {text:.200}"),
            )
        })?;
        let now_seen = status.rollout.as_ref().map(Seen::of);
        if now_seen != seen {
            if json {
                println!("{}", one_line(&text));
            } else if let Some(r) = &status.rollout {
                print!("{}", progress(seen.as_ref(), r, style));
            }
        }
        seen = now_seen;
        let Some(r) = &status.rollout else {
            return ended(client, &status, to, json, style);
        };
        if r.to != to {
            return Err(fail(
                EXIT_REFUSED,
                format!(
                    "the rollout of {to} ended, and another one (of {}) started: see bgctl status",
                    r.to
                ),
            ));
        }
        if r.state == RolloutState::Paused {
            let why = r
                .last_analysis
                .as_ref()
                .map(|a| format!("; last analysis {}", render::analysis(a, style)))
                .unwrap_or_default();
            return Err(fail(
                EXIT_REFUSED,
                format!(
                    "the rollout of {to} for app '{app}' paused at {}% and waits for bgctl promote, resume or abort{why}",
                    r.percent
                ),
            ));
        }
    }
}

/// The API's JSON `text` on one line, whatever the daemon's layout.
fn one_line(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .map_or_else(|_| text.replace('\n', " "), |v| v.to_string())
}

/// What `--wait` has shown of a rollout: its step, state, share and the
/// time of its last analysis.
#[derive(PartialEq)]
struct Seen {
    step: usize,
    percent: u8,
    state: RolloutState,
    analysis: Option<OffsetDateTime>,
}

impl Seen {
    fn of(r: &RolloutStatus) -> Seen {
        Seen {
            step: r.step,
            percent: r.percent,
            state: r.state,
            analysis: r.last_analysis.as_ref().map(|a| a.at),
        }
    }
}

/// The lines for what changed since `before`: a new analysis, a new step.
fn progress(before: Option<&Seen>, r: &RolloutStatus, style: &Style) -> String {
    let mut out = String::new();
    let new_analysis = r
        .last_analysis
        .as_ref()
        .filter(|a| before.is_none_or(|b| b.analysis != Some(a.at)));
    if let Some(a) = new_analysis {
        let streak = match a.result {
            AnalysisResult::Inconclusive if r.inconclusive > 1 => {
                format!(" ({} in a row; the step holds)", r.inconclusive)
            }
            _ => String::new(),
        };
        out += &format!("  analysis: {}{streak}\n", render::analysis(a, style));
    }
    if before.is_none_or(|b| b.step != r.step || b.percent != r.percent) {
        out += &format!(
            "  step {}/{}: {} at {}%\n",
            r.step + 1,
            r.steps.len(),
            r.to,
            r.percent
        );
    }
    out
}

/// The rollout is gone: promoted (Ok), or aborted (exit 1, with the
/// history's kind, actor and reason).
fn ended(
    client: &Client,
    status: &AppStatus,
    to: Color,
    json: bool,
    style: &Style,
) -> Result<(), Failure> {
    let last = client
        .history(&status.name, Some(1))
        .ok()
        .and_then(|mut h| h.history.pop());
    if status.live == to {
        if !json {
            println!(
                "{} {} is now LIVE for app '{}' (switch #{}{})",
                style.paint("32", "OK"),
                style.color(to, &to.as_str().to_uppercase()),
                status.name,
                status.switch_count,
                last.map(|e| format!(
                    ", {} at {}{}",
                    e.kind,
                    render::when(e.time),
                    e.reason.map(|r| format!(": {r}")).unwrap_or_default()
                ))
                .unwrap_or_default()
            );
        }
        return Ok(());
    }
    let why = last
        .map(|e| {
            format!(
                " ({} by {}{})",
                e.kind,
                e.actor,
                e.reason.map(|r| format!(": {r}")).unwrap_or_default()
            )
        })
        .unwrap_or_default();
    Err(fail(
        EXIT_REFUSED,
        format!(
            "the rollout of {to} for app '{}' was aborted{why}; {} is still live",
            status.name, status.live
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_shares() {
        assert_eq!(parse_steps("10,25,50,100").unwrap().0, [10, 25, 50, 100]);
        assert_eq!(parse_steps("10%, 50% ,100").unwrap().0, [10, 50, 100]);
        assert_eq!(parse_steps("100").unwrap().0, [100]);
        for (bad, why) in [
            ("10,5,100", "must increase"),
            ("10,50", "last step must be 100"),
            ("0,100", "between 1 and 100"),
            ("10,150", "between 0 and 100"),
            ("10,,100", "invalid share"),
            ("", "invalid share"),
        ] {
            let e = parse_steps(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert_eq!(parse_share("30%"), Ok(30));
        assert!(parse_share("150").unwrap_err().contains("not 150"));
        assert!(parse_share("-1").is_err());
        assert_eq!(parse_interval("1s").as_deref(), Ok("1s"));
        assert!(parse_interval("0").is_err() && parse_interval("soon").is_err());
    }

    #[test]
    fn seconds_reads_like_the_config() {
        assert_eq!(seconds(60_000), "1m");
        assert_eq!(seconds(90_000), "90s");
        assert_eq!(seconds(1500), "1.5s");
    }
}
