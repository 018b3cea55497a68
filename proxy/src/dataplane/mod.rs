//! The data plane: everything on a request's path. Each request loads the
//! routing snapshot once (one `ArcSwap` load, by the front door or else by
//! `request_filter`) and carries it in its context to every later hook; the
//! data plane never waits on the control plane, and nothing here imports
//! `controlplane` or `daemon`.
//!
//! ```text
//! connections the connection limits, in all and per client address
//! front_door  every request comes in here: plain requests (HTTP/1, and
//!             HTTP/2 streams) to the lean loop, the rest (bodies, upgrades,
//!             HTTP/2 upstreams) to pingora-proxy; HTTP/1 request heads are
//!             read here, within their limits
//! lean        the lean loop: one plain request to an HTTP/1 upstream on a
//!             straight line
//! idle_pool   the lean loop's idle upstream connections, without a task each
//! upstream_h1 the lean loop's HTTP/1.1 client: request head out, response in
//! hooks       the ProxyHttp hooks both paths call: limits, routing, retries,
//!             error pages, metrics and the access log
//! access_log  the access log's lines, per-thread buffers and their one writer
//! headers     X-Forwarded-For/-Proto/-Host for the upstream; which Hosts are valid
//! routing     Snapshot -> AppRoute (by Host) -> color -> Pool::pick; Routed,
//!             one request's snapshot and app
//! routes      an app's services by path prefix ([[app.routes]]), their pools
//! rate_limit  [app.rate_limit]: a token bucket per client key, 429 past it
//! health_cell an upstream's observed health, written by the health checker
//! upgrades    WebSocket connections: tracked per color, closed after drain
//! preview     preview by header and cookie (the standby), its token and paths
//! mirror      copies of sampled live requests to the standby, fire and forget
//! handshake   the TLS listeners' handshakes, inside the connection limits
//! tls         certificates by SNI, reloaded without a restart
//! acme        ACME challenge answers (HTTP-01 paths, TLS-ALPN-01 certificates)
//! ```

pub mod access_log;
pub mod acme;
pub mod connections;
pub mod front_door;
pub mod handshake;
pub mod headers;
pub mod health_cell;
pub mod hooks;
pub mod idle_pool;
pub mod lean;
pub mod mirror;
pub mod preview;
pub mod rate_limit;
pub mod routes;
pub mod routing;
pub mod tls;
pub mod upgrades;
pub mod upstream_h1;
