//! Benchmarks of bgproxy.
//!
//! - `benches/hot_path.rs` (criterion, `cargo bench -p bgproxy-benches`):
//!   the per-request routing decision and a durable state write.
//! - `load.sh`: the whole proxy under wrk, side by side with HAProxy and
//!   nginx on the same machine.
//!
//! Results and the commands that produced them are in `benches/README.md`.
//! This library holds the fixtures the benchmarks share.

use std::net::SocketAddr;
use std::sync::Arc;

use bgproxy::config::{AppConfig, DeployConfig, HealthConfig};
use bgproxy::dataplane::routing::Snapshot;
use bgproxy::metrics::Metrics;
use bgproxy_control::api::Color;

/// A snapshot of `apps` apps, each with `hosts` host names and four
/// upstreams per color, as a large front door would have.
pub fn snapshot(apps: usize, hosts: usize) -> Snapshot {
    let configs: Vec<Arc<AppConfig>> = (0..apps)
        .map(|a| {
            let addrs = |base: u16| {
                (0..4)
                    .map(|i| {
                        SocketAddr::from(([10, 0, (a / 250) as u8, (a % 250) as u8], base + i))
                    })
                    .collect()
            };
            Arc::new(AppConfig {
                name: format!("app{a}"),
                hosts: (0..hosts)
                    .map(|h| format!("h{h}.app{a}.example.net"))
                    .collect(),
                initial_live: Color::Blue,
                redirect_https: false,
                max_body: 1 << 20,
                connect_timeout: std::time::Duration::from_secs(3),
                read_timeout: std::time::Duration::from_secs(60),
                h2: false,
                drain_timeout: None,
                tunnel_timeout: None,
                health: HealthConfig::default(),
                pools: [addrs(3000), addrs(4000)],
                deploy: DeployConfig::default(),
                rollout: Default::default(),
                analysis: Default::default(),
                preview: Default::default(),
                mirror: Default::default(),
                verify: Vec::new(),
                routes: Vec::new(),
                rate_limit: None,
            })
        })
        .collect();
    Snapshot::build(1, &configs, |_| Color::Blue, None, &Metrics::new())
}

/// Runs one of the reference proxies in `src/bin` (`NAME LISTEN UPSTREAM`,
/// both `ip:port`) with bgproxy's runtime settings: one thread, no work
/// stealing, short grace periods, a plain listener without an L4 read
/// buffer. `app` builds the service's application from the server's
/// configuration and the upstream address.
pub fn run_reference<A, F>(name: &str, app: F)
where
    A: pingora::apps::ServerApp + Send + Sync + 'static,
    F: FnOnce(&Arc<pingora::server::configuration::ServerConf>, SocketAddr) -> A,
{
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: {name} LISTEN UPSTREAM");
        std::process::exit(2);
    };
    let upstream: SocketAddr = upstream.parse().unwrap_or_else(|e| {
        eprintln!("bad UPSTREAM {upstream}: {e}");
        std::process::exit(2);
    });
    let conf = pingora::server::configuration::ServerConf {
        threads: 1,
        work_stealing: false,
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        ..Default::default()
    };
    let mut server = pingora::server::Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let app = app(&server.configuration, upstream);
    let mut svc = pingora::services::listening::Service::new(name.to_string(), app);
    svc.add_listener(
        pingora::listeners::ListenerConfig::tcp(listen.clone()).l4_buffer(
            pingora::protocols::l4::stream::L4BufferSettings::new(
                0,
                pingora::protocols::l4::stream::DEFAULT_L4_WRITE_BUFFER_SIZE,
            ),
        ),
    );
    server.add_service(svc);
    server.run_forever();
}
