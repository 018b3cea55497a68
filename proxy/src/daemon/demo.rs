//! `bgproxy demo`: the whole thing on loopback, no root, no external service.
//!
//! Two sample backends (blue on 127.0.0.1:8081, green on 127.0.0.1:8082) run
//! as extra services inside the same process, with the proxy on
//! 127.0.0.1:8080 and the control API on 127.0.0.1:9900, configured by
//! `conf/demo.toml` (embedded) with the state under `--dir`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bgproxy_control::api::Color;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::services::listening::Service;

use crate::config::{self, Config};

/// The demo's configuration file, also checked in CI as `conf/demo.toml`.
pub const DEMO_TOML: &str = include_str!("../../../conf/demo.toml");

/// The demo config with its state under `dir`.
pub fn config(dir: &Path) -> anyhow::Result<Config> {
    let mut c = config::from_str(DEMO_TOML, Path::new("conf/demo.toml"))?;
    c.state.path = dir.join("state.json");
    Ok(c)
}

/// A sample backend: a page naming its color, and a `/health` that can be
/// failed on purpose (`POST /health/down`, `POST /health/up`) to watch the
/// health gate refuse a switch.
pub struct Backend {
    color: Color,
    healthy: AtomicBool,
}

impl Backend {
    /// A backend service for `color` listening on `addr`.
    pub fn service(color: Color, addr: &str) -> Service<Backend> {
        let mut s = Service::new(
            format!("demo backend {color}"),
            Backend {
                color,
                healthy: AtomicBool::new(true),
            },
        );
        s.add_tcp(addr);
        s.threads = Some(1);
        s
    }
}

#[async_trait]
impl ServeHttp for Backend {
    async fn response(&self, s: &mut ServerSession) -> http::Response<Vec<u8>> {
        let path = s.req_header().uri.path().to_string();
        let post = s.req_header().method == http::Method::POST;
        let (status, body) = match (post, path.as_str()) {
            (true, "/health/down") => {
                self.healthy.store(false, Ordering::Relaxed);
                (200, format!("{} /health now fails\n", self.color))
            }
            (true, "/health/up") => {
                self.healthy.store(true, Ordering::Relaxed);
                (200, format!("{} /health now passes\n", self.color))
            }
            (_, "/health") if self.healthy.load(Ordering::Relaxed) => (200, "ok\n".to_string()),
            (_, "/health") => (503, "failing on purpose\n".to_string()),
            _ => (
                200,
                format!(
                    "Hello from {}! (the {} backend of the bgproxy demo)\n",
                    self.color.as_str().to_uppercase(),
                    self.color
                ),
            ),
        };
        http::Response::builder()
            .status(status)
            .header("Content-Type", "text/plain; charset=utf-8")
            .header("Content-Length", body.len())
            .header("X-Backend-Color", self.color.as_str())
            .body(body.into_bytes())
            .unwrap_or_default()
    }
}

/// What the demo prints at start.
pub fn banner(dir: &Path) -> String {
    format!(
        "\
bgproxy demo
  front door   http://127.0.0.1:8080/      (blue backend 127.0.0.1:8081, green 127.0.0.1:8082)
  control API  http://127.0.0.1:9900/v1/status
  status page  http://127.0.0.1:9900/          (open it in a browser: it updates live)
  state        {}

Try, from another shell (bgctl watch in a third one shows every change):
  curl -s http://127.0.0.1:8080/                  # which color is live?
  bgctl status
  bgctl switch green --yes --reason 'first try'
  curl -s http://127.0.0.1:8080/                  # now green
  bgctl rollback --yes
  curl -s -X POST http://127.0.0.1:8082/health/down   # break green's /health...
  bgctl switch green --yes                        # ...and watch the health gate refuse
  bgctl history
(bgctl is in target/debug or target/release; or use curl on the control API, see README.)
Ctrl-C stops the demo.
",
        dir.join("state.json").display()
    )
}
