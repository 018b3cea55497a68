//! `GET /metrics` on `metrics.listen`: the Prometheus text exposition.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::metrics::Metrics;

/// The metrics endpoint.
pub struct MetricsEndpoint {
    pub metrics: Arc<Metrics>,
}

#[async_trait]
impl ServeHttp for MetricsEndpoint {
    async fn response(&self, s: &mut ServerSession) -> http::Response<Vec<u8>> {
        let (status, ctype, body) = if s.req_header().uri.path() == "/metrics" {
            (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                self.metrics.render(),
            )
        } else {
            (
                404,
                "text/plain; charset=utf-8",
                b"only /metrics is served here\n".to_vec(),
            )
        };
        http::Response::builder()
            .status(status)
            .header("Content-Type", ctype)
            .header("Content-Length", body.len())
            .body(body)
            .unwrap_or_default()
    }
}
