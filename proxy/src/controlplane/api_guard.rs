//! What a mutating control call must look like before anything else is
//! looked at (pure functions of the request head; [`super::api`] calls
//! [`origin`] and [`content_type`] from its authorisation step and audits a refusal).
//!
//! Without a token the API accepts changes from loopback only, and a
//! browser on the load balancer's host is on loopback: a page from any site
//! could POST a switch cross-site. Two rules close that, as they do for
//! other local admin APIs:
//! - **Origin.** Browsers send `Origin` on every cross-origin POST (and
//!   on same-origin ones). A request that carries one must come from the
//!   control address itself: `http://<the address the connection reached>`
//!   (which is `http://<control.listen>` unless that is a wildcard), or
//!   `http://localhost:<port>` on a loopback connection. Host names are
//!   not trusted: DNS rebinding would make any name point here. Tools like
//!   bgctl and curl send no `Origin`. Else 403 `forbidden_origin`.
//! - **Content type.** A call with a body must say
//!   `Content-Type: application/json` (parameters such as `charset` are
//!   fine), which a browser cannot send cross-site without a CORS
//!   preflight, which this API never grants. A call without a body needs
//!   none (`bgctl reload`, a rollback without options). Else 415
//!   `unsupported_media_type`.
//!
//! - **Reads.** A `GET` of the API from a non-loopback client needs a
//!   token of either role when one is configured, unless
//!   `control.public_read = true` ([`read_needs_token`]): the status says
//!   which hosts and upstreams exist, and who changed what.
//!
//! Loopback also covers IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`),
//! which is how IPv4 clients of a dual-stack (`[::]`) listener appear.

use std::net::{IpAddr, SocketAddr};

use http::header::{CONTENT_LENGTH, CONTENT_TYPE, ORIGIN, TRANSFER_ENCODING};
use http::HeaderMap;

/// Why a mutating call was refused here.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    /// The API's error code: `forbidden_origin` or `unsupported_media_type`.
    pub code: &'static str,
    pub message: String,
}

/// Whether `ip` is a loopback address, IPv4-mapped IPv6 included.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Whether a read (`GET`) from `client` must carry a token: when a token
/// (`control.token_file` or `control.requester_token_file`) is configured,
/// the client is not on loopback (or unknown), and `control.public_read` is
/// off.
pub fn read_needs_token(client: Option<IpAddr>, token_configured: bool, public_read: bool) -> bool {
    token_configured && !public_read && !client.is_some_and(is_loopback)
}

/// Checks the `Origin` of a mutating call with `headers`, which reached
/// this process at `local` (the control listener's address as the client
/// connected to it; `None` if unknown: then only requests without an
/// `Origin` pass).
pub fn origin(headers: &HeaderMap, local: Option<SocketAddr>) -> Result<(), Refusal> {
    let Some(given) = headers.get(ORIGIN) else {
        return Ok(());
    };
    let given = given.as_bytes();
    let allowed = local.is_some_and(|local| {
        let local = SocketAddr::new(local.ip().to_canonical(), local.port());
        let mut own = vec![format!("http://{local}")];
        if is_loopback(local.ip()) {
            own.push(format!("http://localhost:{}", local.port()));
        }
        own.iter().any(|o| o.as_bytes().eq_ignore_ascii_case(given))
    });
    if allowed {
        return Ok(());
    }
    let shown = String::from_utf8_lossy(&given[..given.len().min(200)]).into_owned();
    Err(Refusal {
        status: 403,
        code: "forbidden_origin",
        message: format!(
            "requests from a web page of another origin ({shown:?}) may not change anything: use bgctl or an HTTP client that sends no Origin header{}",
            local
                .map(|l| format!(
                    ", or a page served from http://{}",
                    SocketAddr::new(l.ip().to_canonical(), l.port())
                ))
                .unwrap_or_default()
        ),
    })
}

/// Checks that a mutating call with a body declares it JSON.
pub fn content_type(headers: &HeaderMap) -> Result<(), Refusal> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .map(|v| v.as_bytes().trim_ascii() != b"0");
    let has_body = declared.unwrap_or(false) || headers.contains_key(TRANSFER_ENCODING);
    let json = headers.get(CONTENT_TYPE).is_some_and(|v| {
        let media = v
            .as_bytes()
            .split(|b| *b == b';')
            .next()
            .unwrap_or_default();
        media.trim_ascii().eq_ignore_ascii_case(b"application/json")
    });
    if !has_body || json {
        return Ok(());
    }
    let given = headers
        .get(CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(&v.as_bytes()[..v.len().min(100)]).into_owned());
    Err(Refusal {
        status: 415,
        code: "unsupported_media_type",
        message: format!(
            "a request body must be JSON, sent with 'Content-Type: application/json' (got {})",
            given.map_or("no Content-Type".into(), |g| format!("{g:?}"))
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    const LOCAL: &str = "127.0.0.1:9900";

    fn check(pairs: &[(&str, &str)], local: &str) -> Result<(), &'static str> {
        let h = headers(pairs);
        origin(&h, local.parse().ok())
            .and_then(|()| content_type(&h))
            .map_err(|r| r.code)
    }

    #[test]
    fn reads_from_other_hosts_need_a_token_when_one_is_configured() {
        let other: IpAddr = "10.201.0.2".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(read_needs_token(Some(other), true, false));
        assert!(read_needs_token(None, true, false), "unknown: not loopback");
        assert!(!read_needs_token(Some(other), true, true), "public_read");
        assert!(
            !read_needs_token(Some(other), false, false),
            "no token at all"
        );
        assert!(!read_needs_token(Some(lo), true, false));
        assert!(!read_needs_token(Some(mapped), true, false));
    }

    #[test]
    fn loopback_includes_ipv4_mapped() {
        for ip in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["10.0.0.1", "::ffff:10.0.0.1", "::2", "0.0.0.0"] {
            assert!(!is_loopback(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn origin_must_be_the_control_address() {
        let json = ("content-type", "application/json");
        let body = ("content-length", "14");
        assert_eq!(check(&[json, body], LOCAL), Ok(()), "no Origin: a tool");
        for ok in [
            "http://127.0.0.1:9900",
            "HTTP://127.0.0.1:9900",
            "http://localhost:9900",
        ] {
            assert_eq!(check(&[("origin", ok), json, body], LOCAL), Ok(()), "{ok}");
        }
        for bad in [
            "http://evil.test",
            "null",
            "http://127.0.0.1:9901",
            "https://127.0.0.1:9900",
            "http://127.0.0.1:9900.evil.test",
            "http://localhost:9900@evil.test",
        ] {
            assert_eq!(
                check(&[("origin", bad), json, body], LOCAL),
                Err("forbidden_origin"),
                "{bad}"
            );
        }
        // A dual-stack listener: the address as IPv4.
        assert_eq!(
            check(
                &[("origin", "http://127.0.0.1:9900")],
                "[::ffff:127.0.0.1]:9900"
            ),
            Ok(())
        );
        assert_eq!(
            check(&[("origin", "http://[::1]:9900")], "[::1]:9900"),
            Ok(())
        );
        // localhost only for a loopback connection.
        assert_eq!(
            check(&[("origin", "http://localhost:9900")], "10.0.0.5:9900"),
            Err("forbidden_origin")
        );
        assert_eq!(
            check(&[("origin", "http://10.0.0.5:9900")], "10.0.0.5:9900"),
            Ok(())
        );
    }

    #[test]
    fn a_body_must_be_declared_json() {
        assert_eq!(check(&[], LOCAL), Ok(()), "no body, no type");
        assert_eq!(check(&[("content-length", "0")], LOCAL), Ok(()));
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
        ] {
            assert_eq!(
                check(&[("content-length", "2"), ("content-type", ok)], LOCAL),
                Ok(()),
                "{ok}"
            );
        }
        for (pairs, why) in [
            (vec![("content-length", "2")], "no type"),
            (
                vec![("content-length", "2"), ("content-type", "text/plain")],
                "text/plain: a form or no-cors fetch",
            ),
            (
                vec![
                    ("transfer-encoding", "chunked"),
                    ("content-type", "application/x-www-form-urlencoded"),
                ],
                "chunked form",
            ),
            (
                vec![
                    ("content-length", "2"),
                    ("content-type", "application/jsonx"),
                ],
                "not json",
            ),
        ] {
            assert_eq!(check(&pairs, LOCAL), Err("unsupported_media_type"), "{why}");
        }
    }
}
