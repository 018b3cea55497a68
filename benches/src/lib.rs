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
use bgproxy::metrics::Metrics;
use bgproxy::routing::Snapshot;
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
            })
        })
        .collect();
    Snapshot::build(1, &configs, |_| Color::Blue, None, &Metrics::new())
}
