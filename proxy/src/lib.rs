//! bgproxy: the traffic switch of a blue/green deployment, on pingora.
//!
//! How a request and a switch flow through the modules:
//!
//! ```text
//! config      bgproxy.toml -> FileConfig -> validate() -> Config
//! server      build(Config): state -> Controller -> pingora services
//! lean        HTTP/1: plain requests on a straight loop, the rest to pingora-proxy
//! dataplane   per request: load Snapshot (routing) -> app by Host -> color -> Pool::pick
//! health      per upstream: pingora HTTP probe -> rise/fall Tracker -> HealthCell
//! control_api /v1 HTTP/JSON -> Controller::apply
//! priority    control.nice: the control API thread may outrank the data plane
//! controller  validate -> StateStore::persist (fsync) -> ArcSwap::store -> answer
//! deploy      bgctl deploy: the configured steps against the STANDBY color
//! state       the JSON state file, atomic writes, recovery from corruption
//! metrics     Prometheus names and pre-resolved handles; metrics_http serves them
//! audit       audit.log: one fsync'd JSON line per control action
//! upgrades    WebSocket connections: tracked per color, closed after drain_timeout
//! ops         SIGHUP and config-file reloads; closing the state on shutdown
//! check       bgproxy --check
//! logging     stderr through a writer thread: no thread waits on log I/O
//! memory      small pages only: no huge-page fault stalls a switch or a request
//! demo        bgproxy demo: two sample backends and the proxy on loopback
//! ```

pub mod audit;
pub mod check;
pub mod config;
pub mod control_api;
pub mod controller;
pub mod dataplane;
pub mod demo;
pub mod deploy;
pub mod health;
pub mod lean;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod metrics_http;
pub mod ops;
pub mod priority;
pub mod routing;
pub mod server;
pub mod state;
pub mod tls;
pub mod upgrades;
