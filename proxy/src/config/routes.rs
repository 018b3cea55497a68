//! Apps made of several services, and the front door's rate limit:
//! `[[app.routes]]` (a path prefix with its own upstreams per color and
//! its own health settings, switched together with the app) and
//! `[app.rate_limit]` (a token bucket per client key).
//!
//! These are the typed values; `validate.rs` builds them from the file and
//! checks them (prefixes, names, upstreams shared between colors), and the
//! data plane (`dataplane/routes.rs`, `dataplane/rate_limit.rs`) uses them.

use std::net::SocketAddr;
use std::num::NonZeroU32;

use bgproxy_control::api::Color;

use super::HealthConfig;

/// One `[[app.routes]]`: a service of the app behind a path prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteConfig {
    /// Unique in the app: letters, digits, `-` and `_`. Names the route in
    /// status, metrics (`route` label), refusals and deploy variables
    /// ([`RouteConfig::env_name`]).
    pub name: String,
    /// Starts with `/`; the longest prefix matching a request's path (as
    /// sent, not decoded) wins. Byte-wise: `/api` also matches `/apix`,
    /// write `/api/` for the folder.
    pub path_prefix: String,
    /// Forward the path without the prefix (`/api/v2/items?q=1` ->
    /// `/items?q=1`). Default [`super::defaults::ROUTE_STRIP_PREFIX`].
    pub strip_prefix: bool,
    /// The route's health check: every field it does not set is the app's.
    pub health: HealthConfig,
    /// Upstreams per color, indexed by [`Color::index`].
    pub pools: [Vec<SocketAddr>; 2],
}

impl RouteConfig {
    /// The upstreams of one color.
    pub fn upstreams(&self, color: Color) -> &[SocketAddr] {
        &self.pools[color.index()]
    }

    /// The deploy variable holding this route's upstreams of the deployed
    /// color: `BG_UPSTREAMS_` and the name in upper case, `-` as `_`
    /// (`api-v2` -> `BG_UPSTREAMS_API_V2`).
    pub fn env_name(&self) -> String {
        env_name(&self.name)
    }
}

/// `BG_UPSTREAMS_<NAME>` for a route named `name` (validated names only
/// hold letters, digits, `-` and `_`).
pub fn env_name(name: &str) -> String {
    let upper: String = name
        .chars()
        .map(|c| match c {
            '-' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect();
    format!("BG_UPSTREAMS_{upper}")
}

/// What a rate limit counts requests by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RateLimitKey {
    /// The client's address (the TCP peer).
    ClientIp,
    /// The value of a request header (lower-case name); a request without
    /// it is counted by its client address.
    Header(http::HeaderName),
}

impl std::str::FromStr for RateLimitKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "client_ip" {
            return Ok(RateLimitKey::ClientIp);
        }
        let bad = || {
            format!(
                "unknown rate limit key '{s}': expected \"client_ip\" or \"header:<name>\", like \"header:X-Api-Key\""
            )
        };
        let name = s.strip_prefix("header:").ok_or_else(bad)?;
        http::HeaderName::from_bytes(name.trim().as_bytes())
            .map(RateLimitKey::Header)
            .map_err(|_| bad())
    }
}

impl std::fmt::Display for RateLimitKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RateLimitKey::ClientIp => f.write_str("client_ip"),
            RateLimitKey::Header(h) => write!(f, "header:{h}"),
        }
    }
}

/// `[app.rate_limit]`: a token bucket per key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Tokens added per second to each key's bucket (the sustained rate).
    pub requests_per_second: NonZeroU32,
    /// The bucket's size: requests a key may send at once after being idle.
    /// Default: `requests_per_second`.
    pub burst: NonZeroU32,
    /// Default [`super::defaults::RATE_LIMIT_KEY`] (the client address).
    pub key: RateLimitKey,
    /// Keys tracked at once; past it idle keys are evicted first, then the
    /// least recently limited. Default [`super::defaults::RATE_LIMIT_MAX_KEYS`].
    pub max_keys: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_print() {
        assert_eq!("client_ip".parse(), Ok(RateLimitKey::ClientIp));
        let h: RateLimitKey = "header:X-Api-Key".parse().unwrap();
        assert_eq!(
            h,
            RateLimitKey::Header(http::HeaderName::from_static("x-api-key"))
        );
        assert_eq!(h.to_string(), "header:x-api-key");
        for bad in ["ip", "header:", "header:a b", "cookie:x"] {
            let e = bad.parse::<RateLimitKey>().unwrap_err();
            assert!(e.contains("expected \"client_ip\""), "{bad}: {e}");
        }
    }

    #[test]
    fn deploy_variable_names() {
        assert_eq!(env_name("api"), "BG_UPSTREAMS_API");
        assert_eq!(env_name("api-v2"), "BG_UPSTREAMS_API_V2");
        assert_eq!(env_name("Auth_1"), "BG_UPSTREAMS_AUTH_1");
    }
}
