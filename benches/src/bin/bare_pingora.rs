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
use pingora::server::configuration::ServerConf;
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
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: bare_pingora LISTEN UPSTREAM");
        std::process::exit(2);
    };
    let upstream: SocketAddr = upstream.parse().unwrap_or_else(|e| {
        eprintln!("bad UPSTREAM {upstream}: {e}");
        std::process::exit(2);
    });
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut svc = http_proxy_service(&server.configuration, Bare { upstream });
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
