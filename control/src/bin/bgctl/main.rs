//! `bgctl`: the operator's command line for bgproxy.
//!
//! Flow of every command: parse arguments (clap; usage errors exit 2) ->
//! build a [`Client`] from `--addr`/`BGCTL_ADDR` and the token -> resolve the
//! app (`--app`, or the only one) from `GET /v1/status`, keeping its
//! `generation` -> call the API (a change carries that generation as
//! `expect_generation`: the daemon refuses it with `plan_stale` when
//! someone changed the state after the plan was shown) -> print (text, or
//! the API's JSON with `--json`) -> exit with the code of design.md:
//! 0 done, 1 refused or failed, 2 usage, 3 approval needed, 4 cannot reach
//! or authenticate.

mod certs;
mod deploy;
#[cfg(feature = "mcp")]
mod mcp;
mod render;
mod requests;
mod rollout;
mod verify;
mod watch;

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bgproxy_control::api::{
    AppStatus, Color, DeployRequest, RollbackRequest, SwitchRequest, SwitchResponse,
};
use bgproxy_control::client::{Client, ClientError};
use bgproxy_control::duration::parse_duration;
use clap::{CommandFactory, Parser, Subcommand};

use render::Style;

/// Exit codes (design.md).
pub const EXIT_REFUSED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_APPROVAL: u8 = 3;
const EXIT_UNREACHABLE: u8 = 4;

/// bgctl: run blue/green releases through bgproxy's control API.
#[derive(Parser)]
#[command(
    name = "bgctl",
    version = bgproxy_control::build_info::VERSION,
    about = "bgctl: run blue/green releases through bgproxy's control API",
    after_help = "Exit codes: 0 done, 1 refused or failed, 2 usage error, 3 approval needed, 4 cannot reach or authenticate to the API."
)]
struct Cli {
    /// Control API address.
    #[arg(
        long,
        global = true,
        env = "BGCTL_ADDR",
        default_value = "http://127.0.0.1:9900"
    )]
    addr: String,
    /// File holding the bearer token for changes (BGCTL_TOKEN may hold the
    /// token itself).
    #[arg(long, global = true, env = "BGCTL_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The app to act on; may be left out when only one app is configured.
    #[arg(long, global = true)]
    app: Option<String>,
    /// Print the API's JSON and nothing else.
    #[arg(long, global = true)]
    json: bool,
    /// How long to wait for the API, like 10s or 500ms.
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every app: live and standby color, upstream health, switches.
    Status,
    /// Make a color live (shows the plan and asks first).
    Switch {
        /// The color to make live.
        #[arg(value_parser = parse_color)]
        color: Color,
        #[command(flatten)]
        approval: Approval,
    },
    /// Switch back to the previous live color (same gates as switch).
    Rollback {
        #[command(flatten)]
        approval: Approval,
    },
    /// Start a rollout of the standby color, step by step (asks first).
    ///
    /// Moves a growing share of the requests to the standby color, each step
    /// analysed at its end, until it is live. Returns once the rollout has
    /// started; --wait follows it to its end.
    Canary {
        /// The new color (the standby).
        #[arg(value_parser = parse_color)]
        color: Color,
        /// Its share at each step, increasing, ending at 100 [default: the
        /// app's [app.rollout] steps].
        #[arg(long, value_name = "10,25,50,100", value_parser = rollout::parse_steps)]
        steps: Option<rollout::Steps>,
        /// Time at each step before its analysis, like 1m [default: the
        /// app's [app.rollout] step_interval].
        #[arg(long, value_parser = rollout::parse_interval)]
        interval: Option<String>,
        /// Follow the rollout to its end: exit 0 when the color is live, 1
        /// when it was aborted or paused (Ctrl-C leaves it running).
        #[arg(long)]
        wait: bool,
        /// Skip the health gate (and abort a deploy running on the color).
        #[arg(long)]
        emergency: bool,
        #[command(flatten)]
        confirm: Confirm,
    },
    /// Hold the standby color at a share by hand (asks first).
    ///
    /// The share holds until promote or abort (0 ends the rollout, 100 makes
    /// the color live).
    Weight {
        /// The standby color.
        #[arg(value_parser = parse_color)]
        color: Color,
        /// Its share, 0 to 100.
        #[arg(value_parser = rollout::parse_share)]
        percent: u32,
        /// Skip the health gate (and abort a deploy running on the color).
        #[arg(long)]
        emergency: bool,
        #[command(flatten)]
        confirm: Confirm,
    },
    /// Make the rollout's new color live now (asks first).
    Promote {
        /// Skip the health gate (and abort a deploy running on the color).
        #[arg(long)]
        emergency: bool,
        #[command(flatten)]
        confirm: Confirm,
    },
    /// End the rollout: its color back to 0% (asks first).
    ///
    /// The new color's share goes back to 0 at once; the live color does not
    /// change.
    Abort {
        #[command(flatten)]
        confirm: Confirm,
    },
    /// Hold the rollout at its step (asks first).
    Pause {
        #[command(flatten)]
        confirm: Confirm,
    },
    /// Go on with a paused rollout; its step starts anew (asks first).
    Resume {
        #[command(flatten)]
        confirm: Confirm,
    },
    /// The switch, rollout and deploy history of an app.
    History {
        /// Show at most this many entries, newest last.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Run the app's deploy steps against the STANDBY color, then wait until
    /// it is healthy. Never touches the live color; never asks.
    Deploy {
        /// Also run the steps marked `migrate`.
        #[arg(long)]
        migrate: bool,
        /// Show every step's output as it runs (a failing step's output is
        /// always shown).
        #[arg(long, short)]
        verbose: bool,
        #[command(flatten)]
        plan: PlanBound,
    },
    /// Run the app's [[app.verify]] checks against the STANDBY color,
    /// through the proxy, and print each; exit 0 when all passed, 1 when one
    /// failed. Changes nothing.
    Verify,
    /// The pending requests for a change, oldest first: made with bgctl
    /// request, by an assistant through bgctl mcp, or through the API.
    Requests,
    /// The bgproxy instances sharing this state through etcd ([cluster]):
    /// each one's applied revision, who leads, whether this one is
    /// connected.
    Cluster,
    /// Carry out a pending request (shows it and what it would do now, asks
    /// first). Needs the operator's token.
    Approve {
        /// The request's id, as bgctl requests lists it.
        #[arg(value_parser = requests::parse_id)]
        id: String,
        /// Proceed without asking.
        #[arg(long, short = 'y')]
        yes: bool,
        #[command(flatten)]
        plan: PlanBound,
    },
    /// Drop a pending request (shows it, asks first); nothing changes.
    Deny {
        /// The request's id, as bgctl requests lists it.
        #[arg(value_parser = requests::parse_id)]
        id: String,
        /// Proceed without asking.
        #[arg(long, short = 'y')]
        yes: bool,
        /// Why, recorded in the audit log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Ask for a change (a pending request) that an operator carries out
    /// with bgctl approve. Moves no traffic; a requester's token may.
    Ask {
        /// What to ask for.
        #[arg(value_enum)]
        action: requests::RequestAction,
        /// The color, for switch and canary [default: the standby].
        #[arg(value_parser = parse_color)]
        color: Option<Color>,
        /// Ask for it without the health gate.
        #[arg(long)]
        emergency: bool,
        /// Why, shown to whoever decides and recorded in the history.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        plan: PlanBound,
    },
    /// Serve the Model Context Protocol on stdin/stdout, for AI assistants.
    ///
    /// Tools: get_deployment_status, get_history (read-only),
    /// deploy_to_standby, and switch_traffic and rollback, which only create
    /// a pending request that a human carries out with bgctl approve. Meant
    /// to run with the requester's token (BGCTL_TOKEN or --token-file).
    #[cfg(feature = "mcp")]
    Mcp,
    /// Reload the daemon's configuration file (validated first; a bad file
    /// changes nothing).
    Reload,
    /// Follow the daemon's events as they happen, one line each (switches,
    /// health, rollouts, analyses, deploys, requests, reloads); --json
    /// prints each event's JSON. Reconnects (resuming where it stopped)
    /// until interrupted.
    Watch {
        /// Stop after this many events.
        #[arg(long, value_name = "N")]
        count: Option<usize>,
    },
    /// Every certificate the TLS listeners serve: hosts, source (file or
    /// acme), expiry, and the last ACME error.
    Certs,
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
}

#[derive(clap::Args)]
struct Approval {
    /// Proceed without asking.
    #[arg(long, short = 'y')]
    yes: bool,
    /// Skip the health gate: switch even if the target is not healthy.
    #[arg(long)]
    emergency: bool,
    /// Why, recorded in the history.
    #[arg(long)]
    reason: Option<String>,
    #[command(flatten)]
    plan: PlanBound,
}

/// The approval of a change that has no health gate to skip.
#[derive(clap::Args)]
struct Confirm {
    /// Proceed without asking.
    #[arg(long, short = 'y')]
    yes: bool,
    /// Why, recorded in the history.
    #[arg(long)]
    reason: Option<String>,
    #[command(flatten)]
    plan: PlanBound,
}

/// The generation a change is bound to.
#[derive(clap::Args)]
pub struct PlanBound {
    /// Refuse the change (exit 1, plan_stale) unless the state is still at
    /// generation N, the `generation` of `bgctl status --json` you decided
    /// on [default: that of the status the plan was made from].
    #[arg(long, value_name = "N")]
    pub expect_generation: Option<u64>,
}

impl PlanBound {
    /// `--expect-generation`, else `shown`: the generation of the status
    /// the plan was made from.
    pub fn generation(&self, shown: u64) -> Option<u64> {
        Some(self.expect_generation.unwrap_or(shown))
    }
}

fn parse_color(s: &str) -> Result<Color, String> {
    s.parse::<Color>().map_err(|e| e.to_string())
}

/// A failure with its exit code; the message goes to stderr.
pub struct Failure {
    code: u8,
    message: String,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        if let ClientError::Api { error, .. } = &e {
            if error.code == "plan_stale" {
                return fail(
                    EXIT_REFUSED,
                    format!(
                        "the state changed while you were deciding: {}; run the command again to see the new plan",
                        error.error.trim_end_matches('.')
                    ),
                );
            }
        }
        let code = match e {
            ClientError::Unreachable { .. } | ClientError::Unauthorized { .. } => EXIT_UNREACHABLE,
            ClientError::Api { .. } | ClientError::Protocol { .. } => EXIT_REFUSED,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

pub fn fail(code: u8, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

/// `bgctl cluster`: one line per instance.
fn cluster_text(c: &bgproxy_control::api::ClusterResponse) -> String {
    let mut out = format!(
        "cluster {} on {} ({}): this instance {} at revision {}\n",
        c.prefix,
        c.etcd.join(", "),
        if c.connected {
            "connected"
        } else {
            "NOT CONNECTED: routing by the last applied state, refusing changes"
        },
        c.name,
        c.revision
    );
    out.push_str(&format!("{:<24} {:>10}  ROLE\n", "INSTANCE", "APPLIED"));
    for m in &c.members {
        let role = if m.leader { "leader" } else { "" };
        let me = if m.name == c.name { " (this)" } else { "" };
        out.push_str(&format!(
            "{:<24} {:>10}  {role}{me}\n",
            m.name, m.applied_revision
        ));
    }
    if c.leader.is_none() {
        out.push_str("no leader elected: automatic actions wait\n");
    }
    out
}

fn main() -> ExitCode {
    // `bgctl package-assets DIR` (packaging/build-deb.sh; not for operators).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let (result, style) = match bgproxy_control::packaging::assets_dir(&args) {
        Some(dir) => (package_assets(&dir), Style::detect(false)),
        None => {
            let cli = Cli::parse();
            let style = Style::detect(cli.json);
            (run(cli, &style), style)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("{}", style.error(&format!("bgctl: {}", f.message)));
            }
            ExitCode::from(f.code)
        }
    }
}

/// `bgctl package-assets DIR`: the pages say what `--help` cannot.
fn package_assets(dir: &std::path::Path) -> Result<(), Failure> {
    use bgproxy_control::packaging::{write_assets, Page};
    let page = Page {
        section: "1",
        subcommand_pages: true,
        sections: &[
            (
                "EXIT STATUS",
                &[
                    "0: done.",
                    "1: refused or failed (the reason on stderr).",
                    "2: usage error.",
                    "3: approval needed: no terminal to ask on and no --yes; the plan was printed, nothing changed.",
                    "4: cannot reach or authenticate to the control API.",
                ],
            ),
            (
                "ENVIRONMENT",
                &[
                    "BGCTL_ADDR: the control API (default http://127.0.0.1:9900), like --addr.",
                    "BGCTL_TOKEN: the bearer token itself; BGCTL_TOKEN_FILE: a file holding it, like --token-file.",
                ],
            ),
            (
                "FILES",
                &["/etc/bgproxy/control.token: the token, when control.token_file in /etc/bgproxy/bgproxy.toml names it."],
            ),
        ],
        see_also: &["bgproxy(8)"],
    };
    let files = write_assets(Cli::command(), &page, dir).map_err(|e| {
        fail(
            EXIT_REFUSED,
            format!("cannot write into {}: {e}", dir.display()),
        )
    })?;
    for f in files {
        println!("{}", f.display());
    }
    Ok(())
}

fn token(cli: &Cli) -> Result<Option<String>, Failure> {
    if let Some(path) = &cli.token_file {
        let t = std::fs::read_to_string(path).map_err(|e| {
            fail(
                EXIT_USAGE,
                format!("cannot read --token-file {}: {e}", path.display()),
            )
        })?;
        return Ok(Some(t.trim().to_string()));
    }
    Ok(std::env::var("BGCTL_TOKEN")
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty()))
}

fn run(cli: Cli, style: &Style) -> Result<(), Failure> {
    if let Cmd::Completions { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "bgctl", &mut std::io::stdout());
        return Ok(());
    }
    let client = Client::new(&cli.addr, token(&cli)?, cli.timeout)?;
    match &cli.command {
        Cmd::Certs => {
            if cli.json {
                return print_raw(&client, "/v1/certs");
            }
            print!("{}", certs::render(&client.certs()?.certs, style));
            Ok(())
        }
        Cmd::Status => {
            if cli.json {
                return print_raw(&client, "/v1/status");
            }
            let status = client.status()?;
            let apps: Vec<&AppStatus> = status
                .apps
                .iter()
                .filter(|a| cli.app.as_ref().is_none_or(|n| &a.name == n))
                .collect();
            if let Some(name) = &cli.app {
                if apps.is_empty() {
                    return Err(unknown_app(name, &status.apps));
                }
            }
            print!("{}", render::status(&apps, style));
            if let Some(c) = status.cluster.as_ref().filter(|c| !c.connected) {
                println!(
                    "cluster: instance {} is NOT CONNECTED to etcd: it routes by the last state it applied (revision {}) and refuses changes (bgctl cluster)",
                    c.name, c.revision
                );
            }
            pending_hint(&client, &apps);
            Ok(())
        }
        Cmd::History { limit } => {
            let app = resolve_app(&client, cli.app.as_deref())?;
            if cli.json {
                return print_raw(
                    &client,
                    &format!("/v1/apps/{}/history?limit={limit}", app.name),
                );
            }
            let h = client.history(&app.name, Some(*limit))?;
            print!("{}", render::history(&h, style));
            Ok(())
        }
        Cmd::Switch { color, approval } => {
            let (app, generation) = resolve_app_at(&client, cli.app.as_deref())?;
            if app.live == *color {
                return Err(fail(
                    EXIT_REFUSED,
                    format!(
                        "{color} is already live for app '{}': nothing to do",
                        app.name
                    ),
                ));
            }
            let plan = Change {
                app: &app,
                to: *color,
                rollback: false,
                generation,
            };
            change(&client, &plan, approval, cli.json, style)
        }
        Cmd::Rollback { approval } => {
            let (app, generation) = resolve_app_at(&client, cli.app.as_deref())?;
            let last = client.history(&app.name, Some(1))?.history.pop();
            let Some(previous) = last.map(|h| h.from).filter(|_| app.switch_count > 0) else {
                return Err(fail(
                    EXIT_REFUSED,
                    format!("app '{}' has never been switched: there is no previous live color to roll back to", app.name),
                ));
            };
            let plan = Change {
                app: &app,
                to: previous,
                rollback: true,
                generation,
            };
            change(&client, &plan, approval, cli.json, style)
        }
        Cmd::Deploy {
            migrate,
            verbose,
            plan,
        } => {
            let (app, generation) = resolve_app_at(&client, cli.app.as_deref())?;
            let req = DeployRequest {
                migrate: *migrate,
                actor: Some(actor()),
                expect_generation: plan.generation(generation),
            };
            let stream = client.deploy(&app.name, &req)?;
            deploy::follow(&app, stream, *verbose, cli.json, style)
        }
        Cmd::Requests => requests::list(&client, cli.app.as_deref(), cli.json, style),
        Cmd::Cluster => {
            if cli.json {
                return print_raw(&client, "/v1/cluster");
            }
            print!("{}", cluster_text(&client.cluster()?));
            Ok(())
        }
        Cmd::Approve { id, yes, plan } => {
            let ask = requests::Decide {
                yes: *yes,
                reason: None,
                expect_generation: plan.expect_generation,
            };
            requests::decide(
                &client,
                id,
                requests::Decision::Approve,
                &ask,
                cli.json,
                style,
            )
        }
        Cmd::Deny { id, yes, reason } => {
            let ask = requests::Decide {
                yes: *yes,
                reason: reason.clone(),
                expect_generation: None,
            };
            requests::decide(&client, id, requests::Decision::Deny, &ask, cli.json, style)
        }
        Cmd::Ask {
            action,
            color,
            emergency,
            reason,
            plan,
        } => {
            let (app, generation) = resolve_app_at(&client, cli.app.as_deref())?;
            let generation = plan.expect_generation.unwrap_or(generation);
            requests::create(
                &client,
                &app,
                generation,
                *action,
                *color,
                *emergency,
                reason.clone(),
                cli.json,
                style,
            )
        }
        #[cfg(feature = "mcp")]
        Cmd::Mcp => mcp::serve(client, cli.app.clone()),
        Cmd::Verify => {
            let app = resolve_app(&client, cli.app.as_deref())?;
            verify::run(&client, &app, cli.json, style)
        }
        Cmd::Watch { count } => watch::run(&client, cli.app.as_deref(), *count, cli.json, style),
        Cmd::Reload => {
            if cli.json {
                let text = client.call_raw(reqwest::Method::POST, "/v1/reload", None::<&()>)?;
                print!("{text}");
                return Ok(());
            }
            let r = client.reload()?;
            print!("{}", render::reload(&r, style));
            Ok(())
        }
        Cmd::Canary {
            color,
            steps,
            interval,
            wait,
            emergency,
            confirm,
        } => {
            let action = rollout::Action::Canary {
                to: *color,
                steps: steps.as_ref().map(|s| s.0.clone()),
                interval: interval.clone(),
            };
            rollout_cmd(&client, &cli, action, *emergency, confirm, *wait, style)
        }
        Cmd::Weight {
            color,
            percent,
            emergency,
            confirm,
        } => {
            let action = rollout::Action::Weight {
                to: *color,
                percent: *percent,
            };
            rollout_cmd(&client, &cli, action, *emergency, confirm, false, style)
        }
        Cmd::Promote { emergency, confirm } => {
            let action = rollout::Action::Promote;
            rollout_cmd(&client, &cli, action, *emergency, confirm, false, style)
        }
        Cmd::Abort { confirm } => {
            let action = rollout::Action::Abort;
            rollout_cmd(&client, &cli, action, false, confirm, false, style)
        }
        Cmd::Pause { confirm } => {
            let action = rollout::Action::Pause;
            rollout_cmd(&client, &cli, action, false, confirm, false, style)
        }
        Cmd::Resume { confirm } => {
            let action = rollout::Action::Resume;
            rollout_cmd(&client, &cli, action, false, confirm, false, style)
        }
        Cmd::Completions { .. } => Ok(()),
    }
}

/// A rollout command against the resolved app.
fn rollout_cmd(
    client: &Client,
    cli: &Cli,
    action: rollout::Action,
    emergency: bool,
    confirm: &Confirm,
    wait: bool,
    style: &Style,
) -> Result<(), Failure> {
    let (app, generation) = resolve_app_at(client, cli.app.as_deref())?;
    let ask = rollout::Ask {
        yes: confirm.yes,
        emergency,
        reason: confirm.reason.clone(),
        expect_generation: confirm.plan.generation(generation),
    };
    rollout::run(client, &app, action, &ask, wait, cli.json, style)
}

/// After the status table: the pending requests of these apps, if any,
/// and how to decide on them. Silent when they cannot be read (a daemon
/// without requests): the status itself was shown.
fn pending_hint(client: &Client, apps: &[&AppStatus]) {
    let Ok(answer) = client.requests() else {
        return;
    };
    let ids: Vec<String> = answer
        .value
        .requests
        .iter()
        .filter(|r| apps.iter().any(|a| a.name == r.app))
        .map(|r| format!("{} ({} of {})", r.id, r.action, r.app))
        .collect();
    if !ids.is_empty() {
        println!(
            "\npending requests: {}; see them with bgctl requests, decide with bgctl approve <id> or bgctl deny <id>",
            ids.join(", ")
        );
    }
}

fn print_raw(client: &Client, path: &str) -> Result<(), Failure> {
    let text = client.call_raw(reqwest::Method::GET, path, None::<&()>)?;
    print!("{text}");
    Ok(())
}

fn unknown_app(name: &str, apps: &[AppStatus]) -> Failure {
    let names: Vec<&str> = apps.iter().map(|a| a.name.as_str()).collect();
    fail(
        EXIT_USAGE,
        format!("unknown app '{name}': the apps are {}", names.join(", ")),
    )
}

/// `--app`, or the only app; with several apps and no `--app`, a usage error
/// listing them.
fn resolve_app(client: &Client, name: Option<&str>) -> Result<AppStatus, Failure> {
    resolve_app_at(client, name).map(|(app, _)| app)
}

/// [`resolve_app`] and the `generation` of the status it came from: what a
/// plan made from that app is bound to.
pub fn resolve_app_at(client: &Client, name: Option<&str>) -> Result<(AppStatus, u64), Failure> {
    let status = client.status()?;
    let generation = status.generation;
    let mut apps = status.apps;
    let app = match name {
        Some(n) => match apps.iter().position(|a| a.name == n) {
            Some(i) => Ok(apps.swap_remove(i)),
            None => Err(unknown_app(n, &apps)),
        },
        None if apps.len() == 1 => Ok(apps.remove(0)),
        None => {
            let names: Vec<&str> = apps.iter().map(|a| a.name.as_str()).collect();
            Err(fail(
                EXIT_USAGE,
                format!(
                    "several apps are configured: choose one with --app ({})",
                    names.join(", ")
                ),
            ))
        }
    }?;
    Ok((app, generation))
}

/// A switch or rollback as planned: from the status of generation
/// `generation`.
#[derive(Clone, Copy)]
struct Change<'a> {
    app: &'a AppStatus,
    to: Color,
    rollback: bool,
    generation: u64,
}

/// The two-step approval and the change itself (switch or rollback), bound
/// to the generation the plan was made from.
fn change(
    client: &Client,
    plan: &Change,
    approval: &Approval,
    json: bool,
    style: &Style,
) -> Result<(), Failure> {
    let Change {
        app,
        to,
        rollback,
        generation,
    } = *plan;
    let target = app.colors.get(to);
    if !target.healthy && !approval.emergency {
        if json {
            println!(
                "{}",
                render::plan_json(app, to, rollback, approval.emergency, false)
            );
        } else {
            eprint!(
                "{}",
                render::plan(app, to, rollback, approval.emergency, style)
            );
        }
        return Err(fail(
            EXIT_REFUSED,
            format!(
                "refusing: {to} is not healthy ({}); wait until it is, or add --emergency to skip the health gate",
                render::app_unhealthy_summary(app, to)
            ),
        ));
    }
    if !approval.yes {
        let interactive =
            std::io::stdin().is_terminal() && std::io::stderr().is_terminal() && !json;
        if !interactive {
            if json {
                println!(
                    "{}",
                    render::plan_json(app, to, rollback, approval.emergency, true)
                );
            } else {
                print!(
                    "{}",
                    render::plan(app, to, rollback, approval.emergency, style)
                );
            }
            return Err(fail(
                EXIT_APPROVAL,
                "approval needed: nothing changed; re-run with --yes to proceed",
            ));
        }
        eprint!(
            "{}",
            render::plan(app, to, rollback, approval.emergency, style)
        );
        eprint!("Proceed? [y/N] ");
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
            return Err(fail(EXIT_REFUSED, "not confirmed: nothing changed"));
        }
    }
    let (emergency, reason, actor) = (approval.emergency, approval.reason.clone(), Some(actor()));
    let (path, body) = if rollback {
        let req = RollbackRequest {
            emergency,
            reason,
            actor,
            expect_generation: approval.plan.generation(generation),
        };
        (
            format!("/v1/apps/{}/rollback", app.name),
            serde_json::to_value(req),
        )
    } else {
        let req = SwitchRequest {
            to,
            emergency,
            reason,
            actor,
            expect_generation: approval.plan.generation(generation),
        };
        (
            format!("/v1/apps/{}/switch", app.name),
            serde_json::to_value(req),
        )
    };
    let body = body.map_err(|e| fail(EXIT_REFUSED, format!("cannot encode the request: {e}")))?;
    let started = Instant::now();
    let text = client.call_raw(reqwest::Method::POST, &path, Some(&body))?;
    if json {
        print!("{text}");
        return Ok(());
    }
    let done: SwitchResponse = serde_json::from_str(&text).map_err(|e| {
        fail(
            EXIT_REFUSED,
            format!("the change was made, but its answer is unreadable: {e}"),
        )
    })?;
    print!("{}", render::done(&done, started.elapsed(), style));
    Ok(())
}

/// `user@host`, recorded as the actor in the history; the user as
/// [`user`] finds it.
fn actor() -> String {
    let user = user(
        |name| std::env::var(name).ok(),
        || {
            let uid = nix::unistd::getuid();
            nix::unistd::User::from_uid(uid)
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_else(|| format!("uid {uid}"))
        },
    );
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if host.is_empty() {
        user
    } else {
        format!("{user}@{host}")
    }
}

/// Who runs bgctl: the user behind sudo (`$SUDO_USER`), else `$USER`, else
/// `$LOGNAME`, else `of_uid` (the user name of the uid, which cron, systemd
/// units or a root shell under tmux may leave in no variable). Empty
/// variables do not count.
fn user(var: impl Fn(&str) -> Option<String>, of_uid: impl FnOnce() -> String) -> String {
    ["SUDO_USER", "USER", "LOGNAME"]
        .into_iter()
        .find_map(|name| var(name).filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(of_uid)
}

#[cfg(test)]
mod tests {
    use super::user;

    #[test]
    fn user_prefers_sudo_then_env_then_uid() {
        fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        }
        let uid = || "root".to_string();
        let all = [("SUDO_USER", "ann"), ("USER", "root"), ("LOGNAME", "x")];
        assert_eq!(user(env(&all), uid), "ann");
        assert_eq!(user(env(&[("USER", "bob"), ("LOGNAME", "x")]), uid), "bob");
        assert_eq!(user(env(&[("LOGNAME", "carl")]), uid), "carl");
        assert_eq!(user(env(&[("USER", " "), ("SUDO_USER", "")]), uid), "root");
        assert_eq!(user(env(&[]), uid), "root");
    }
}
