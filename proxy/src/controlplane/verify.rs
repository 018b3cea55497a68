//! Verify checks: `[[app.verify]]` HTTP checks run against an app's
//! STANDBY color *through bgproxy itself*, the way a preview request goes:
//! the app's real host name, bgproxy's own listener (plain HTTP, else
//! HTTPS), and the process's internal preview secret in
//! `X-Bgproxy-Preview`, which the data plane takes as a preview request for
//! any app. So a check exercises the proxy path too, and never the live
//! color: an answer whose `X-Bgproxy-Color` is not the standby fails.
//!
//! Run by `POST /v1/apps/{app}/verify` (`bgctl verify`), and by the
//! controller before a switch, canary or promote when checks are
//! configured (refused with `verify_failed` unless emergency). Checks run
//! one after the other, each with [`CHECK_TIMEOUT`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use bgproxy_control::api::{Color, VerifyCheckResult, VerifyResponse};

use crate::config::{Config, Secret, VerifyCheck};
use crate::dataplane::preview::{COLOR_HEADER, PREVIEW_HEADER};
use crate::dataplane::routing::AppRoute;

/// The longest one check may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the checks go, and the secret that makes them preview requests.
pub struct Verifier {
    /// A front-door listener reachable from this host.
    target: Option<(SocketAddr, bool)>,
    secret: Secret,
}

impl Verifier {
    /// Checks go to the first plain listener of `config` (an unspecified
    /// address becomes loopback), else to the first HTTPS one.
    pub fn new(config: &Config, secret: Secret) -> Verifier {
        let reachable = |a: &SocketAddr| {
            let mut a = *a;
            if a.ip().is_unspecified() {
                a.set_ip(match a.ip() {
                    IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                });
            }
            a
        };
        let plain = config.proxy.listen.first().map(|a| (reachable(a), false));
        let tls = config
            .proxy
            .tls
            .as_ref()
            .and_then(|t| t.listen.first())
            .map(|a| (reachable(a), true));
        Verifier {
            target: plain.or(tls),
            secret,
        }
    }

    /// Runs `route`'s checks against its standby.
    pub async fn run(&self, route: &AppRoute) -> VerifyResponse {
        let color = route.live.other();
        let mut checks = Vec::new();
        for check in &route.config.verify {
            checks.push(self.check(route, color, check).await);
        }
        VerifyResponse {
            app: route.name.to_string(),
            color,
            passed: checks.iter().all(|c| c.ok),
            checks,
        }
    }

    async fn check(
        &self,
        route: &AppRoute,
        color: Color,
        check: &VerifyCheck,
    ) -> VerifyCheckResult {
        let started = Instant::now();
        let outcome = self.fetch(route, check).await;
        let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        let (status, error) = match outcome {
            Err(e) => (None, Some(e)),
            Ok((status, answered_by, body)) => {
                let error = if answered_by.as_deref() != Some(color.as_str()) {
                    Some(format!(
                        "answered by {}, not the standby {color}",
                        answered_by.as_deref().unwrap_or("an unknown color")
                    ))
                } else if status != check.expect_status {
                    Some(format!("status {status}, expected {}", check.expect_status))
                } else {
                    check
                        .expect_body
                        .as_ref()
                        .filter(|want| !body.contains(want.as_str()))
                        .map(|want| format!("the body does not contain {want:?}"))
                };
                (Some(status), error)
            }
        };
        VerifyCheckResult {
            name: check.name.clone(),
            path: check.path.clone(),
            ok: error.is_none(),
            status,
            duration_ms,
            error,
        }
    }

    /// GETs the check's path with the app's host name through the front
    /// door: the status, the color that answered, the body.
    async fn fetch(
        &self,
        route: &AppRoute,
        check: &VerifyCheck,
    ) -> Result<(u16, Option<String>, String), String> {
        let Some((addr, tls)) = self.target else {
            return Err("bgproxy has no listener to send the check through".into());
        };
        // A wildcard host stands for any name under it.
        let host = route
            .config
            .hosts
            .first()
            .map_or_else(|| "localhost".to_string(), |h| h.replace('*', "verify"));
        let scheme = if tls { "https" } else { "http" };
        // Our own certificate, reached through loopback: whether it is
        // trusted here says nothing about the standby.
        let client = reqwest::Client::builder()
            .resolve(&host, addr)
            .danger_accept_invalid_certs(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(CHECK_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        let url = format!("{scheme}://{host}:{}{}", addr.port(), check.path);
        let answer = client
            .get(&url)
            .header(PREVIEW_HEADER.clone(), self.secret.as_bytes())
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = answer.status().as_u16();
        let color = answer
            .headers()
            .get(&COLOR_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = answer
            .text()
            .await
            .map_err(|e| format!("reading the body of GET {url}: {e}"))?;
        Ok((status, color, body))
    }
}

/// The first failed check of `r`, as `'name': why`.
pub fn first_failure(r: &VerifyResponse) -> Option<(String, String)> {
    r.checks.iter().find(|c| !c.ok).map(|c| {
        (
            c.name.clone(),
            c.error.clone().unwrap_or_else(|| "failed".into()),
        )
    })
}
