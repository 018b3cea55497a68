//! The data plane: everything on a request's path. It reads the routing
//! snapshot (one `ArcSwap::load` per request) and never waits on the control
//! plane; nothing here imports `controlplane` or `daemon`.
//!
//! ```text
//! front_door every request comes in here: plain HTTP/1 requests to the
//!            lean loop, everything else (bodies, HTTP/2, upgrades) to
//!            pingora-proxy
//! lean       the lean loop: one plain HTTP/1 request on a straight line
//! hooks      the ProxyHttp hooks both paths call: limits, routing, retries,
//!            error pages, metrics and the access log
//! headers    X-Forwarded-For/-Proto/-Host for the upstream
//! routing    Snapshot -> AppRoute (by Host) -> color -> Pool::pick; the
//!            per-upstream HealthCell the health checker writes
//! upgrades   WebSocket connections: tracked per color, closed after drain
//! tls        certificates by SNI, reloaded without a restart
//! ```

pub mod front_door;
pub mod headers;
pub mod health_cell;
pub mod hooks;
pub mod lean;
pub mod routing;
pub mod tls;
pub mod upgrades;
