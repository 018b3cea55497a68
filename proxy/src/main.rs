//! The `bgproxy` daemon's entry point: parse the command line, then wire
//! (`server::build`) and run. Nothing else lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use bgproxy::config::{Config, LogConfig, LogFormat};
use bgproxy::{check, demo, server};
use bgproxy_control::api::Color;
use clap::{Parser, Subcommand};

/// mimalloc: measured faster than the system allocator on pingora's hot
/// path (see benches/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// bgproxy: the traffic switch of a blue/green deployment.
#[derive(Parser)]
#[command(version, about)]
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let opts = server::BuildOptions {
        upgrade: cli.upgrade,
    };

    let (config, extra) = match cli.command {
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

    init_logging(&config.log, cli.log_format);
    let mut daemon = match server::build(std::sync::Arc::new(config), &opts) {
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
    daemon.server.run_forever()
}

/// Logs go to stderr: the level from `RUST_LOG`, else `log.level`; the
/// format from `--log-format`, else `log.format`. Colors only on a terminal.
fn init_logging(log: &LogConfig, format: Option<LogFormat>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format.unwrap_or(log.format) {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

fn fail(message: String) -> ExitCode {
    eprintln!("bgproxy: {message}");
    ExitCode::FAILURE
}
