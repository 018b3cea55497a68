//! The floor under bgproxy: a minimal pingora 0.9 proxy with bgproxy's
//! runtime settings (mimalloc, one thread, `work_stealing = false`, no L4
//! read buffer, upstream keep-alive) and nothing else: one upstream, no
//! routing, no health checks, no headers added, no metrics, no logs.
//! `benches/load.py` runs it beside bgproxy, so the difference between the
//! two is what bgproxy's own features cost per request, and the difference
//! from HAProxy is pingora's.
//!
//! Usage: `bare_pingora LISTEN UPSTREAM` (both `ip:port`).

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::upstreams::peer::HttpPeer;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    bgproxy_benches::run_reference("bare_pingora", |conf, upstream| {
        pingora::proxy::http_proxy(conf, Bare { upstream })
    });
}
