//! Wiring: [`build`] turns a [`Config`] into a pingora `Server` with its
//! services, ready to run. `main` only calls it and runs the server.
//!
//! Services: the front door (HTTP and optional HTTPS listeners, the
//! [`DataPlane`]), the control API, and the health checks (a background
//! service). Start-up order: take the listening sockets (from systemd, or
//! bound here; see [`systemd`]), load and recover the state, persist it (so
//! a read-only state directory fails here, before any request is served),
//! build the first snapshot, then the services.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use tracing::{info, warn};

use crate::config::{Config, Secret};
use crate::controlplane::api::{Auth, ControlApi};
use crate::controlplane::audit::AuditLog;
use crate::controlplane::cluster::{Cluster, ClusterService};
use crate::controlplane::controller::Controller;
use crate::controlplane::health::HealthService;
use crate::controlplane::rollout::RolloutDriver;
use crate::controlplane::state::StateStore;
use crate::controlplane::state_dir;
use crate::controlplane::traffic::{Traffic, TrafficSampler};
use crate::controlplane::verify::Verifier;
use crate::daemon::lifecycle::LifecycleService;
use crate::daemon::systemd;
use crate::dataplane::connections::{Gate, Tally};
use crate::dataplane::front_door::FrontDoor;
use crate::dataplane::handshake::TlsHandshake;
use crate::dataplane::hooks::{DataPlane, Limits};
use crate::dataplane::idle_pool::IdlePool;
use crate::dataplane::lean::LeanLoop;
use crate::dataplane::tls::CertStore;
use crate::dataplane::upgrades::{DrainService, Upgrades};
use crate::metrics::http::MetricsEndpoint;
use crate::metrics::Metrics;

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

/// Reads `control.token_file` (see [`crate::config::preview::read_token`]).
pub fn read_token(path: &Path) -> anyhow::Result<Vec<u8>> {
    crate::config::preview::read_token(path, "control.token_file").map_err(anyhow::Error::msg)
}

/// 32 random bytes, hex-encoded: a secret no client can guess.
fn random_secret() -> std::io::Result<Secret> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(Secret::new(hex.into_bytes()))
}

/// Per-connection buffers of the front door's listeners: pingora reads with
/// a 64 KiB buffer per connection by default, which is most of what an idle
/// keep-alive connection costs (~99 KB each, against ~37 KB with none,
/// bgproxy's default; measured in benches/README.md).
fn read_buffer(read: usize) -> pingora::protocols::l4::stream::L4BufferSettings {
    pingora::protocols::l4::stream::L4BufferSettings::new(
        read,
        pingora::protocols::l4::stream::DEFAULT_L4_WRITE_BUFFER_SIZE,
    )
}

/// How long a process started with `--upgrade` waits for the old one to
/// release the state file (the old one releases it when its grace period
/// ends).
const UPGRADE_LOCK_WAIT: Duration = Duration::from_secs(60);

/// Idle upstream connections kept per worker thread, by each of the two
/// pools (the lean loop's, pingora-proxy's). pingora's default, 128, is
/// fewer than the requests one thread has in flight under HTTP/2 (`h2load
/// -c 20 -m 10`: 200): past it every released connection was closed and the
/// next request connected anew, a quarter of the requests (benches/README).
const UPSTREAM_POOL_PER_THREAD: usize = 1024;

/// Builds the daemon for `config`.
///
/// Order matters: the pingora server bootstraps first (with `--upgrade` this
/// receives the listening sockets from the old process, which then stops
/// accepting changes), and only then is the state file locked and loaded, so
/// a switch answered by the old process is never missed by the new one.
pub fn build(config: Arc<Config>, opts: &BuildOptions) -> anyhow::Result<Daemon> {
    build_with(config, opts, Vec::new())
}

/// [`build`], with the listening sockets systemd passed
/// ([`systemd::take_inherited`]): each must match a configured listener.
/// Every other configured listener is bound here, before anything else
/// starts, so a taken port or a missing privilege stops the start with a
/// clear message (pingora itself would retry in the background while the
/// rest of the daemon runs); with `--upgrade` the old process hands them
/// over instead.
pub fn build_with(
    config: Arc<Config>,
    opts: &BuildOptions,
    inherited: Vec<systemd::Inherited>,
) -> anyhow::Result<Daemon> {
    let requester = match &config.control.requester_token_file {
        Some(path) => Some(
            crate::config::preview::read_token(path, "control.requester_token_file")
                .map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    let auth = match &config.control.token_file {
        Some(path) => Auth::Token {
            operator: read_token(path)?,
            requester,
        },
        None => {
            warn!(
                "no control.token_file configured: changes through the control API are accepted from loopback only, without authentication"
            );
            Auth::LoopbackOnly { requester }
        }
    };

    let sockets = Arc::new(systemd::Sockets::prepare(&config, inherited, opts.upgrade)?);
    let state_dir = config.state_dir();
    // Created 0700; files in it are never opened through a link (state_dir.rs).
    let loose = state_dir::prepare(&state_dir)
        .with_context(|| format!("cannot create state directory {}", state_dir.display()))?;
    if let Some(warning) = loose {
        warn!("{warning}");
    }

    let conf = ServerConf {
        threads: config.proxy.threads,
        work_stealing: config.proxy.work_stealing,
        grace_period_seconds: Some(config.proxy.grace_period.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(
            config.proxy.shutdown_timeout.as_secs_f64().ceil() as u64
        ),
        pid_file: state_dir.join("bgproxy.pid").to_string_lossy().into_owned(),
        upgrade_sock: state_dir
            .join("bgproxy-upgrade.sock")
            .to_string_lossy()
            .into_owned(),
        upstream_keepalive_pool_size: UPSTREAM_POOL_PER_THREAD,
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: opts.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    if opts.upgrade {
        // This process holds the sockets now (bootstrap exits otherwise):
        // under systemd it becomes the main process before the old one exits.
        crate::controlplane::service_manager::main_pid();
    }

    let metrics = Arc::new(Metrics::new());
    // pingora's own error lines that need no operator are counted here.
    crate::daemon::logging::count_benign_in(&metrics);
    crate::dataplane::access_log::count_drops_in(metrics.access_log_dropped.clone());
    let audit = AuditLog::open(&state_dir)
        .with_context(|| format!("cannot open the audit log in {}", state_dir.display()))?;
    let lock_wait = if opts.upgrade {
        UPGRADE_LOCK_WAIT
    } else {
        Duration::ZERO
    };
    // The process's own preview secret: verify checks go through the front
    // door as preview requests of the standby (controlplane/verify.rs).
    let verify_secret = random_secret().context("cannot read /dev/urandom")?;
    // [cluster]: the state in etcd, the file as its last applied copy.
    let store = Arc::new(StateStore::new(&config.state.path));
    let cluster = config
        .cluster
        .as_ref()
        .map(|c| Arc::new(Cluster::new(c.clone(), store.clone(), metrics.clone())));
    let controller = Controller::start(
        config.clone(),
        store,
        cluster.clone(),
        metrics.clone(),
        audit,
        Verifier::new(&config, verify_secret.clone()),
        lock_wait,
    )
    .with_context(|| {
        format!(
            "cannot take over the state file {}",
            config.state.path.display()
        )
    })?;
    let controller = Arc::new(controller);
    for app in &controller.routing().load().apps {
        info!(app = %app.name, live = %app.live, "routing app");
    }

    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let upgrades = Arc::new(Upgrades::default());
    let phases = server.watch_execution_phase();
    // The certificates, files and ACME, before the data plane: it answers
    // the ACME HTTP-01 challenges (dataplane/acme.rs).
    let certs = match &config.proxy.tls {
        Some(tls) => {
            let store = CertStore::load(tls)
                .map_err(|e| anyhow::anyhow!("cannot load TLS certificates: {e}"))?
                .with_metrics(metrics.clone());
            Some(Arc::new(store))
        }
        None => None,
    };
    let acme_challenges = certs
        .as_ref()
        .filter(|c| c.config().acme.is_some())
        .map(|c| c.challenges());
    let data = DataPlane::new(
        controller.routing(),
        metrics.clone(),
        &config.log,
        Limits::from(&config.proxy),
        draining.clone(),
        upgrades.clone(),
    )
    .with_https_port(
        config
            .proxy
            .tls
            .as_ref()
            .and_then(|t| t.listen.first())
            .map(|a| a.port()),
    )
    // The same secret makes the checks' requests preview requests.
    .with_verify_secret(&verify_secret)
    .with_acme_challenges(acme_challenges);
    // pingora-proxy serves what the lean loop leaves (front_door.rs).
    let mut proxy = pingora::proxy::http_proxy(&server.configuration, data.clone());
    // HTTP/2 client connections get the same idle limit as HTTP/1 ones.
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h2_idle_timeout = Some(config.proxy.client_idle_timeout);
    proxy.server_options = Some(options);
    // The lean loop's connections (HTTP/1 upstreams only), and its own
    // pool of idle ones (dataplane/idle_pool.rs: pingora's spawns a task per
    // request), as large as pingora's would be.
    let connector = pingora::connectors::TransportConnector::new(Some(
        pingora::connectors::ConnectorOptions::from_server_conf(&server.configuration),
    ));
    let idle = IdlePool::new(UPSTREAM_POOL_PER_THREAD.saturating_mul(config.proxy.threads.max(1)));
    // Every client connection passes the connection limits first, from its
    // accept: a TLS one through its handshake (done in front of the front
    // door, dataplane/handshake.rs says why).
    let tally = Tally::new(
        config.proxy.max_connections,
        config.proxy.max_connections_per_ip,
    );
    let door = FrontDoor::new(proxy, LeanLoop::new(data, connector, idle));
    let door = match (&config.proxy.tls, &certs) {
        (Some(tls), Some(store)) => {
            let acme_alpn = tls
                .acme
                .as_ref()
                .is_some_and(|a| a.challenge == crate::config::AcmeChallenge::TlsAlpn01);
            TlsHandshake::new(
                door,
                store.clone(),
                tls.listen.iter().map(|a| a.port()).collect(),
                acme_alpn,
                config.proxy.client_timeout,
                &metrics,
            )
            .map_err(|e| anyhow::anyhow!("cannot set up TLS: {e}"))?
        }
        _ => TlsHandshake::pass(door),
    };
    let door = Gate::new(door, tally.clone(), &metrics);
    let mut front = Service::new("front door".into(), door);
    // Counts each connection as it is accepted, so a drain sees it.
    front.set_connection_filter(tally.clone());
    for addr in &config.proxy.listen {
        front.add_listener(
            pingora::listeners::ListenerConfig::tcp(addr.to_string())
                .l4_buffer(read_buffer(config.proxy.read_buffer)),
        );
    }
    if certs.is_some() {
        for addr in config.proxy.tls.iter().flat_map(|t| &t.listen) {
            front.add_listener(pingora::listeners::ListenerConfig::tcp(addr.to_string()));
        }
    }
    server.add_service(systemd::WithSockets::new(front, sockets.clone()));
    if let (Some(acme), Some(store)) = (
        config.proxy.tls.as_ref().and_then(|t| t.acme.clone()),
        &certs,
    ) {
        server.add_service(background_service(
            "acme",
            crate::controlplane::acme::AcmeService::new(acme, &state_dir, store.clone()),
        ));
    }

    // Each color's last minute for the status page (GET /v1/traffic).
    let traffic = Traffic::default();
    let mut control = Service::new(
        "control api".into(),
        ControlApi::new(controller.clone(), auth)
            .with_nice(config.control.nice)
            .with_certs(certs.clone())
            .with_public_read(config.control.public_read)
            .with_traffic(traffic.clone()),
    );
    control.add_tcp(&config.control.listen.to_string());
    control.threads = Some(1);
    server.add_service(systemd::WithSockets::new(control, sockets.clone()));

    if let Some(m) = &config.metrics {
        let mut svc = Service::new(
            "metrics".into(),
            MetricsEndpoint {
                metrics: metrics.clone(),
            },
        );
        svc.add_tcp(&m.listen.to_string());
        svc.threads = Some(1);
        server.add_service(systemd::WithSockets::new(svc, sockets.clone()));
    }

    server.add_service(background_service(
        "health checks",
        HealthService::new(controller.routing(), controller.subscribe())
            .with_events(controller.events()),
    ));
    server.add_service(background_service(
        "traffic sampler",
        TrafficSampler {
            controller: controller.clone(),
            traffic,
        },
    ));
    server.add_service(background_service(
        "systemd",
        systemd::ReadyService {
            controller: controller.clone(),
            upgrade: opts.upgrade,
        },
    ));
    server.add_service(background_service(
        "rollouts",
        RolloutDriver {
            controller: controller.clone(),
        },
    ));
    if let Some(cluster) = cluster {
        server.add_service(background_service(
            "cluster",
            ClusterService {
                cluster,
                controller: controller.clone(),
            },
        ));
    }
    server.add_service(background_service(
        "websocket drain",
        DrainService {
            routing: controller.routing(),
            upgrades,
            metrics: metrics.clone(),
        },
    ));
    server.add_service(background_service(
        "operations",
        LifecycleService {
            controller: controller.clone(),
            config_path: config.path.clone(),
            watch: config.control.watch_config,
            metrics: metrics.clone(),
            connections: tally,
            phases: std::sync::Mutex::new(Some(phases)),
            draining,
            certs,
        },
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
