//! bgproxy: the traffic switch of a blue/green deployment, on pingora.
//!
//! The folders are the layers; imports point down only:
//!
//! ```text
//! daemon/        wiring and process life: build the pingora server from a
//!                Config, signals and reloads, --check, demo, logging, memory
//!   |
//! controlplane/  the one writer: controller (decide with rules, commit:
//!                persist -> publish -> metrics -> audit), the /v1 API, the
//!                state file, the audit log, health checker, deploy runner
//!   |
//! dataplane/     per request: front door (lean HTTP/1 loop, else
//!                pingora-proxy) -> hooks -> routing Snapshot -> Pool::pick;
//!                WebSocket upgrades, TLS certificates
//!   |
//! config/ metrics/   bgproxy.toml -> FileConfig -> validate() -> Config;
//!                Prometheus names and handles, the /metrics endpoint
//! ```
//!
//! How a request flows: `dataplane::front_door` reads the request head and
//! loads the routing snapshot once -> app by Host -> color -> upstream.
//! How a switch flows: `controlplane::api` -> `Controller::apply(change)` ->
//! `rules` decide (pure) -> one commit: state file (fsync) -> `store` of the
//! new snapshot -> metrics -> audit line -> answer.

pub mod config;
pub mod controlplane;
pub mod daemon;
pub mod dataplane;
pub mod metrics;
