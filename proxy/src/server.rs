//! Wiring: [`build`] turns a [`Config`] into a pingora `Server` with its
//! services, ready to run. `main` only calls it and runs the server.
//!
//! Services: the front door (HTTP and optional HTTPS listeners, the
//! [`DataPlane`]), the control API, and the health checks (a background
//! service). Start-up order: load and recover the state, persist it (so a
//! read-only state directory fails here, before any port opens), build the
//! first snapshot, then the services.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use tracing::{error, info, warn};

use crate::audit::AuditLog;
use crate::config::Config;
use crate::control_api::{Auth, ControlApi};
use crate::controller::Controller;
use crate::dataplane::DataPlane;
use crate::health::HealthService;
use crate::metrics::Metrics;
use crate::metrics_http::MetricsEndpoint;
use crate::state::StateStore;

/// A built daemon: the server to run and the handles around it.
pub struct Daemon {
    pub server: Server,
    pub controller: Arc<Controller>,
    pub metrics: Arc<Metrics>,
}

/// Options that come from the command line rather than the config.
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// Take over the listening sockets of a running bgproxy (graceful
    /// upgrade).
    pub upgrade: bool,
}

/// Reads a bearer token file: the token is the file's content without
/// surrounding white space, and must not be empty.
pub fn read_token(path: &Path) -> anyhow::Result<Vec<u8>> {
    let raw = std::fs::read(path)
        .with_context(|| format!("failed to read control.token_file {}", path.display()))?;
    let token = raw.trim_ascii();
    if token.is_empty() {
        bail!("control.token_file {} is empty: put a long random token in it (e.g. `openssl rand -hex 32`)", path.display());
    }
    if token
        .iter()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        bail!(
            "control.token_file {} holds white space or control characters inside the token",
            path.display()
        );
    }
    Ok(token.to_vec())
}

/// Builds the daemon for `config`.
pub fn build(config: &Config, opts: &BuildOptions) -> anyhow::Result<Daemon> {
    let auth = match &config.control.token_file {
        Some(path) => Auth::Token(read_token(path)?),
        None => {
            warn!(
                "no control.token_file configured: changes through the control API are accepted from loopback only, without authentication"
            );
            Auth::LoopbackOnly
        }
    };

    let state_dir = config.state_dir();
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create state directory {}", state_dir.display()))?;
    let store = StateStore::new(&config.state.path);
    let (state, recoveries) = store.load();
    for r in &recoveries {
        error!("state file problem: {r}");
    }
    let metrics = Arc::new(Metrics::new());
    let audit = AuditLog::open(&state_dir)
        .with_context(|| format!("cannot open the audit log in {}", state_dir.display()))?;
    let controller =
        Controller::start(config, store, state, metrics.clone()).with_context(|| {
            format!(
                "cannot write the state file {}: make its directory writable by the bgproxy user",
                config.state.path.display()
            )
        })?;
    let controller = Arc::new(controller);
    for app in &controller.routing().load().apps {
        info!(app = %app.name, live = %app.live, "routing app");
    }

    let conf = ServerConf {
        threads: config.proxy.threads,
        grace_period_seconds: Some(config.proxy.grace_period.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(
            config.proxy.shutdown_timeout.as_secs_f64().ceil() as u64
        ),
        pid_file: state_dir.join("bgproxy.pid").to_string_lossy().into_owned(),
        upgrade_sock: state_dir
            .join("bgproxy-upgrade.sock")
            .to_string_lossy()
            .into_owned(),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: opts.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let mut front = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        DataPlane::new(controller.routing(), metrics.clone(), &config.log),
        "front door",
    );
    for addr in &config.proxy.listen {
        front.add_tcp(&addr.to_string());
    }
    if let Some(tls) = &config.proxy.tls {
        let (cert, key) = (tls.cert.to_string_lossy(), tls.key.to_string_lossy());
        for addr in &tls.listen {
            front.add_tls(&addr.to_string(), &cert, &key).map_err(|e| {
                anyhow::anyhow!("cannot set up TLS on {addr} with {cert} and {key}: {e}")
            })?;
        }
    }
    server.add_service(front);

    let mut control = Service::new(
        "control api".into(),
        ControlApi::new(controller.clone(), auth, audit),
    );
    control.add_tcp(&config.control.listen.to_string());
    control.threads = Some(1);
    server.add_service(control);

    if let Some(m) = &config.metrics {
        let mut svc = Service::new(
            "metrics".into(),
            MetricsEndpoint {
                metrics: metrics.clone(),
            },
        );
        svc.add_tcp(&m.listen.to_string());
        svc.threads = Some(1);
        server.add_service(svc);
    }

    let settings = config
        .apps
        .iter()
        .map(|a| {
            let host = a
                .hosts
                .first()
                .cloned()
                .unwrap_or_else(|| "localhost".into());
            (a.name.as_str().into(), a.health.clone(), host)
        })
        .collect();
    server.add_service(background_service(
        "health checks",
        HealthService::new(controller.routing(), settings),
    ));

    info!(
        listen = ?config.proxy.listen, control = %config.control.listen,
        state = %config.state.path.display(), "bgproxy ready to start"
    );
    Ok(Daemon {
        server,
        controller,
        metrics,
    })
}
