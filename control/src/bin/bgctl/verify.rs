//! `bgctl verify`: runs the app's `[[app.verify]]` checks against its
//! STANDBY color, through the proxy (`POST /v1/apps/{app}/verify`), and
//! prints each check with its status, time and why it failed. Exit 0 when
//! every check passed (or none is configured), 1 otherwise. Changes
//! nothing.

use std::fmt::Write;

use bgproxy_control::api::{AppStatus, VerifyCheckResult, VerifyResponse};
use bgproxy_control::client::Client;

use crate::render::Style;
use crate::{fail, Failure, EXIT_REFUSED};

/// Runs the checks of `app` and prints them (the API's JSON with `json`).
pub fn run(client: &Client, app: &AppStatus, json: bool, style: &Style) -> Result<(), Failure> {
    let answer = client.verify(&app.name)?;
    let report = &answer.value;
    if json {
        println!("{}", answer.text.trim_end());
    } else {
        print!("{}", render(app, report, style));
    }
    let failed = report.checks.iter().filter(|c| !c.ok).count();
    if report.passed {
        return Ok(());
    }
    Err(fail(
        EXIT_REFUSED,
        format!(
            "{failed} of {} verify check(s) failed against {} of app '{}': a switch to it would be refused (verify_failed)",
            report.checks.len(),
            report.color,
            report.app
        ),
    ))
}

/// The report as text: a header, one line per check, a summary.
fn render(app: &AppStatus, r: &VerifyResponse, style: &Style) -> String {
    let color = |c: bgproxy_control::api::Color| style.color(c, &c.as_str().to_uppercase());
    let mut out = format!(
        "{} app '{}': checks against {} (the standby; live is {})\n",
        style.bold("VERIFY"),
        r.app,
        color(r.color),
        color(app.live)
    );
    if r.checks.is_empty() {
        let _ = writeln!(
            out,
            "  no [[app.verify]] checks are configured for app '{}': nothing to verify",
            r.app
        );
        return out;
    }
    let name_w = r.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let path_w = r.checks.iter().map(|c| c.path.len()).max().unwrap_or(0);
    for c in &r.checks {
        let _ = writeln!(out, "  {}", line(c, name_w, path_w, style));
    }
    let failed = r.checks.iter().filter(|c| !c.ok).count();
    if r.passed {
        let _ = writeln!(
            out,
            "{} all {} check(s) passed against {}; next: bgctl switch {} (or bgctl canary {})",
            style.paint("32", "OK"),
            r.checks.len(),
            r.color,
            r.color,
            r.color
        );
    } else {
        let _ = writeln!(
            out,
            "{} {failed} of {} check(s) failed against {}: fix it before switching, then run bgctl verify again",
            style.paint("1;31", "FAILED"),
            r.checks.len(),
            r.color
        );
    }
    out
}

/// `ok    home page  /             200    12 ms` or `FAIL  orders  /x  503
/// 3.1 ms  status 503, expected 200`.
fn line(c: &VerifyCheckResult, name_w: usize, path_w: usize, style: &Style) -> String {
    let verdict = if c.ok {
        style.paint("32", "ok  ")
    } else {
        style.paint("1;31", "FAIL")
    };
    let status = c.status.map_or("-".to_string(), |s| s.to_string());
    let mut l = format!(
        "{verdict}  {:<name_w$}  {:<path_w$}  {:>3}  {:>9}",
        c.name,
        c.path,
        status,
        millis(c.duration_ms)
    );
    if let Some(why) = c.error.as_deref().filter(|_| !c.ok) {
        let _ = write!(l, "  {why}");
    }
    l.trim_end().to_string()
}

/// `12 ms`, `3.1 ms`, `1.20 s`.
fn millis(ms: f64) -> String {
    match ms {
        ms if ms >= 1000.0 => format!("{:.2} s", ms / 1000.0),
        ms if ms >= 10.0 => format!("{ms:.0} ms"),
        ms => format!("{ms:.1} ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, ok: bool, status: Option<u16>, error: Option<&str>) -> VerifyCheckResult {
        VerifyCheckResult {
            name: name.into(),
            path: "/x".into(),
            ok,
            status,
            duration_ms: 3.12,
            error: error.map(String::from),
        }
    }

    #[test]
    fn a_line_says_verdict_name_status_time_and_why() {
        let style = Style::detect(true);
        let l = line(
            &check("orders", false, Some(503), Some("status 503, expected 200")),
            8,
            4,
            &style,
        );
        assert_eq!(
            l,
            "FAIL  orders    /x    503     3.1 ms  status 503, expected 200"
        );
        let l = line(&check("home", true, None, None), 4, 2, &style);
        assert_eq!(l, "ok    home  /x    -     3.1 ms");
        assert_eq!(millis(12.4), "12 ms");
        assert_eq!(millis(1234.0), "1.23 s");
    }
}
