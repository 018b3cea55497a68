//! The control plane: the one writer of routing and state, and what feeds
//! it.
//!
//! ```text
//! api         /v1 HTTP/JSON -> a Command -> Controller::apply
//! api_guard   what a mutating call must be: origin, content type, loopback
//! change      the vocabulary: Change, Command, ControlError
//! cluster     [cluster]: the state in etcd, watched and applied by every
//!             instance; acks, partitions, the leader of automatic actions
//! controller  the writer: decide (rules) -> commit: persist -> publish ->
//!             metrics -> audit
//! rules       the decisions, pure: gates, targets, next state, reports
//! backend     where a commit writes: the state file, or etcd ([cluster])
//! state       the JSON state file: atomic writes, recovery from corruption
//! state_dir   the state directory: created 0700, files opened O_NOFOLLOW
//! audit       audit.log: one fsync'd JSON line per control action
//! health      per upstream: pingora HTTP probe -> rise/fall Tracker -> HealthCell
//! deploy      bgctl deploy: the configured steps against the STANDBY color
//! priority    control.nice: the control API thread may outrank the data plane
//! analysis    a window of a color's own counters -> pass / fail / inconclusive
//! rollout     the driver: ends rollout steps and watch windows, submits verdicts
//! service_manager  what systemd hears: READY, RELOADING, STOPPING, MAINPID
//! verify      [[app.verify]] checks against the standby, through the front door
//! acme        [proxy.tls.acme]: orders and renews certificates, keeps them on disk
//! events      GET /v1/events: one event per change, a ring to resume from
//! traffic     each color's last minute (rate, 5xx, p99) for the status page
//! status_page GET /: the self-contained page (HTML, CSS, JS in the binary)
//! ```

pub mod acme;
pub mod analysis;
pub mod api;
pub mod api_guard;
pub mod audit;
pub mod backend;
pub mod change;
pub mod cluster;
pub mod controller;
pub mod deploy;
pub mod events;
pub mod health;
pub mod priority;
pub mod rollout;
pub mod rules;
pub mod service_manager;
pub mod state;
pub mod state_dir;
pub mod status_page;
pub mod traffic;
pub mod verify;
