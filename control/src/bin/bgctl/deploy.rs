//! `bgctl deploy`: follows the daemon's event stream. On a terminal each
//! step shows a spinner with its elapsed time (indicatif); piped, each step
//! is a plain line. A failing step's output is always shown; `--verbose`
//! shows every step's output as it runs.

use std::time::Duration;

use bgproxy_control::api::{AppStatus, DeployEvent, DeployResult};
use bgproxy_control::client::DeployStream;
use indicatif::{ProgressBar, ProgressStyle};

use crate::render::Style;
use crate::{fail, Failure, EXIT_REFUSED};

/// Prints the deploy as it happens; `Ok` only when it succeeded.
pub fn follow(
    app: &AppStatus,
    stream: DeployStream,
    verbose: bool,
    json: bool,
    style: &Style,
) -> Result<(), Failure> {
    let mut spinner: Option<ProgressBar> = None;
    let mut output: Vec<String> = Vec::new();
    let mut current = String::new();
    let say = |spinner: &Option<ProgressBar>, line: String| match spinner {
        Some(s) => s.println(line),
        None => println!("{line}"),
    };
    let spin = |message: String| {
        let pb = ProgressBar::new_spinner();
        pb.set_style(
            ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        pb.set_message(message);
        pb.enable_steady_tick(Duration::from_millis(100));
        pb
    };
    for item in stream {
        let (raw, event) = item?;
        if json {
            println!("{raw}");
            if let DeployEvent::Done { result, error, .. } = event {
                return outcome(result, error);
            }
            continue;
        }
        match event {
            DeployEvent::Started {
                color,
                steps,
                skipped,
                log,
                ..
            } => {
                println!(
                    "Deploying app '{}' to {} (the STANDBY; live is {}): {} step(s){}",
                    app.name,
                    style.paint("1", &color.as_str().to_uppercase()),
                    app.live,
                    steps.len(),
                    if skipped.is_empty() {
                        String::new()
                    } else {
                        format!(", skipping {} (no --migrate)", skipped.join(", "))
                    }
                );
                println!("  log: {log}");
            }
            DeployEvent::StepStarted {
                step,
                index,
                total,
                command,
            } => {
                output.clear();
                current = format!("[{index}/{total}] {step}");
                if style.is_terminal() {
                    spinner = Some(spin(current.clone()));
                } else {
                    println!("{current}: {command}");
                }
            }
            DeployEvent::Output { stream, line, .. } => {
                let line = if stream == "stderr" {
                    format!("    ! {line}")
                } else {
                    format!("    | {line}")
                };
                if verbose {
                    say(&spinner, line.clone());
                }
                output.push(line);
            }
            DeployEvent::StepFinished {
                duration_ms,
                ok,
                error,
                ..
            } => {
                if let Some(s) = spinner.take() {
                    s.finish_and_clear();
                }
                let took = duration_ms as f64 / 1000.0;
                if ok {
                    println!("{} {current} ({took:.1}s)", style.paint("32", "ok  "));
                } else {
                    println!(
                        "{} {current} ({took:.1}s): {}",
                        style.paint("1;31", "FAIL"),
                        error.unwrap_or_default()
                    );
                    if !verbose {
                        for line in &output {
                            println!("{line}");
                        }
                    }
                }
            }
            DeployEvent::HealthWait { color, timeout_ms } => {
                current = format!(
                    "waiting for {color} to be healthy (at most {}s)",
                    timeout_ms / 1000
                );
                if style.is_terminal() {
                    spinner = Some(spin(current.clone()));
                } else {
                    println!("{current}");
                }
            }
            DeployEvent::Healthy { color, duration_ms } => {
                if let Some(s) = spinner.take() {
                    s.finish_and_clear();
                }
                println!(
                    "{} {color} is healthy ({:.1}s)",
                    style.paint("32", "ok  "),
                    duration_ms as f64 / 1000.0
                );
            }
            DeployEvent::Done {
                result,
                duration_ms,
                failed_step,
                error,
                log,
            } => {
                if let Some(s) = spinner.take() {
                    s.finish_and_clear();
                }
                let took = duration_ms as f64 / 1000.0;
                let standby = app.live.other();
                match result {
                    DeployResult::Success => println!(
                        "{} {} deployed and healthy in {took:.1}s; live is still {}. Next: bgctl verify (the app's [[app.verify]] checks, if it has any), then bgctl switch {}",
                        style.paint("32", "OK"),
                        standby.as_str().to_uppercase(),
                        app.live,
                        standby
                    ),
                    _ => println!(
                        "{} deploy of {} {}{} after {took:.1}s; live {} was not touched. Full output: {log}",
                        style.paint("1;31", "FAILED"),
                        standby,
                        result.as_str(),
                        failed_step.map(|s| format!(" at step '{s}'")).unwrap_or_default(),
                        app.live,
                    ),
                }
                return outcome(result, error);
            }
        }
    }
    Err(fail(EXIT_REFUSED, "the deploy stream ended early; the deploy goes on on the daemon: see bgctl status and bgctl history"))
}

fn outcome(result: DeployResult, error: Option<String>) -> Result<(), Failure> {
    match result {
        DeployResult::Success => Ok(()),
        _ => Err(fail(
            EXIT_REFUSED,
            error.unwrap_or_else(|| format!("deploy {}", result.as_str())),
        )),
    }
}
