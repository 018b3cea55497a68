//! The `bgproxy` daemon's entry point: parse the command line, then wire
//! (`server::build`) and run. Nothing else lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use bgproxy::config::{Config, LogFormat};
use bgproxy::daemon::{build as server, check, demo};
use bgproxy_control::api::Color;
use clap::{Parser, Subcommand};

/// mimalloc: measured faster than the system allocator on pingora's hot
/// path (see benches/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// bgproxy: the traffic switch of a blue/green deployment.
#[derive(Parser)]
#[command(version = bgproxy_control::build_info::VERSION, about)]
struct Cli {
    /// Configuration file.
    #[arg(
        short,
        long,
        env = "BGPROXY_CONFIG",
        default_value = "/etc/bgproxy/bgproxy.toml"
    )]
    config: PathBuf,
    /// Validate the configuration (and the state, token and TLS files), print
    /// what is wrong, and exit: 0 when valid, 1 otherwise.
    #[arg(long, short = 't')]
    check: bool,
    /// Take over the listening sockets of a running bgproxy (zero-downtime
    /// upgrade); the old process is then sent SIGQUIT.
    #[arg(long)]
    upgrade: bool,
    /// Log format: text (default) or json; overrides `log.format`.
    #[arg(long, value_parser = |s: &str| s.parse::<LogFormat>())]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a self-contained demo on loopback: two sample backends and the
    /// proxy in front of them.
    Demo {
        /// Where the demo keeps its state.
        #[arg(long, default_value = "demo-state")]
        dir: PathBuf,
    },
    /// Upgrade the running bgproxy to this binary without dropping a
    /// connection: start `bgproxy --upgrade` on the same configuration, send
    /// SIGQUIT to PID once the new process waits, exit when it holds the
    /// sockets. The unit's ExecReload (`systemctl reload bgproxy`).
    Upgrade {
        /// The running bgproxy (under systemd: $MAINPID).
        #[arg(long)]
        pid: u32,
    },
}

fn main() -> ExitCode {
    // First, before any thread: it clears LISTEN_* from the environment.
    let inherited = bgproxy::daemon::systemd::take_inherited();
    // `bgproxy package-assets DIR` (packaging/build-deb.sh; not for operators).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(dir) = bgproxy_control::packaging::assets_dir(&args) {
        return package_assets(&dir);
    }
    let cli = Cli::parse();
    let opts = server::BuildOptions {
        upgrade: cli.upgrade,
    };

    let (config, extra) = match cli.command {
        Some(Command::Upgrade { pid }) => return upgrade(&cli.config, pid, cli.log_format),
        Some(Command::Demo { dir }) => match demo::config(&dir) {
            Ok(c) => {
                eprintln!("{}", demo::banner(&dir));
                (c, true)
            }
            Err(e) => return fail(format!("demo config: {e:#}")),
        },
        None if cli.check => {
            return match check::check(&cli.config) {
                Ok(c) => {
                    println!(
                        "configuration file {} is valid ({} app{})",
                        cli.config.display(),
                        c.apps.len(),
                        if c.apps.len() == 1 { "" } else { "s" }
                    );
                    ExitCode::SUCCESS
                }
                Err(problems) => {
                    for p in &problems {
                        eprintln!("{p}");
                    }
                    eprintln!(
                        "configuration file {} has {} error(s)",
                        cli.config.display(),
                        problems.len()
                    );
                    ExitCode::FAILURE
                }
            };
        }
        None => match Config::load(&cli.config) {
            Ok(c) => (c, false),
            Err(e) => {
                return fail(format!(
                "{e}\nbgproxy: not started; fix the configuration (bgproxy --check --config {})",
                cli.config.display()
            ))
            }
        },
    };

    bgproxy::daemon::logging::init(&config.log, cli.log_format);
    bgproxy::daemon::memory::use_small_pages();
    let mut daemon = match server::build_with(std::sync::Arc::new(config), &opts, inherited) {
        Ok(d) => d,
        Err(e) => return fail(format!("not started: {e:#}")),
    };
    if extra {
        daemon
            .server
            .add_service(demo::Backend::service(Color::Blue, "127.0.0.1:8081"));
        daemon
            .server
            .add_service(demo::Backend::service(Color::Green, "127.0.0.1:8082"));
    }
    // `run` returns once every service has stopped (pingora's
    // `run_forever` would exit the process there, past the log flush).
    daemon.server.run(pingora::server::RunArgs::default());
    bgproxy::daemon::logging::flush();
    ExitCode::SUCCESS
}

/// `bgproxy package-assets DIR`: the man page says what `--help` cannot.
fn package_assets(dir: &std::path::Path) -> ExitCode {
    use bgproxy_control::packaging::{write_assets, Page};
    use clap::CommandFactory;
    let page = Page {
        section: "8",
        subcommand_pages: true,
        sections: &[
            (
                "EXIT STATUS",
                &[
                    "0: stopped (SIGTERM), or --check found the configuration valid.",
                    "1: not started (a configuration, state, certificate or listener error, printed on stderr), or --check found errors (each with file, line and column).",
                ],
            ),
            (
                "SIGNALS",
                &[
                    "SIGHUP: reload the configuration; it is validated first, and a bad file changes nothing.",
                    "SIGTERM: stop accepting, let requests in flight finish (proxy.grace_period), exit 0. SIGINT: fast shutdown.",
                    "SIGQUIT: hand the listening sockets to the process started with --upgrade, finish the requests in flight, exit.",
                ],
            ),
            (
                "FILES",
                &[
                    "/etc/bgproxy/bgproxy.toml: the configuration, annotated (conf/bgproxy.toml in the sources).",
                    "/var/lib/bgproxy/: the state (state.json: live colors, switches, history), audit.log and the deploy logs, owned by the bgproxy user.",
                    "/usr/lib/systemd/system/bgproxy.service: the unit (journalctl -u bgproxy for the logs).",
                ],
            ),
        ],
        see_also: &["bgctl(1)", "systemctl(1)", "journalctl(1)"],
    };
    match write_assets(Cli::command(), &page, dir) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("cannot write into {}: {e}", dir.display())),
    }
}

/// `bgproxy upgrade --pid PID` (daemon/upgrade.rs).
fn upgrade(path: &std::path::Path, pid: u32, log_format: Option<LogFormat>) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            return fail(format!(
                "{e}\nbgproxy: not upgraded, pid {pid} serves on; fix the configuration (bgproxy --check --config {})",
                path.display()
            ))
        }
    };
    let args: Vec<String> = match log_format {
        Some(LogFormat::Text) => vec!["--log-format".into(), "text".into()],
        Some(LogFormat::Json) => vec!["--log-format".into(), "json".into()],
        None => Vec::new(),
    };
    match bgproxy::daemon::upgrade::run(&config, path, pid, &args) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => fail(format!("upgrade: {e}")),
    }
}

fn fail(message: String) -> ExitCode {
    // What was logged before comes first.
    bgproxy::daemon::logging::flush();
    eprintln!("bgproxy: {message}");
    ExitCode::FAILURE
}
