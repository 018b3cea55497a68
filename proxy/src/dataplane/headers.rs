//! The headers bgproxy adds to a request on its way to the upstream:
//! `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Forwarded-Host`; and the
//! rule for the one it routes by, `Host` ([`valid_host`]).
//!
//! This runs on every request of both paths (the lean loop and
//! pingora-proxy both call `upstream_request_filter`), so it is written for
//! the hot path: one allocation for `X-Forwarded-For`, no second header map.

use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::prelude::*;

/// Whether `host` is a valid `Host` value (RFC 9110 7.2, RFC 3986 3.2.2):
/// empty (allowed by RFC 9112 3.2), or a host name or IPv4 address (letters,
/// digits, `-._~!$&'()*+,;=` and `%` escapes) or a bracketed IPv6 address,
/// then optionally `:` and a port of at most 5 digits. Anything else (a
/// userinfo `@`, a path, spaces, a second colon) is not a host to route by:
/// the request gets 400, on both paths.
pub fn valid_host(host: &[u8]) -> bool {
    if host.is_empty() {
        return true;
    }
    let (name_ok, port) = if let Some(literal) = host.strip_prefix(b"[") {
        let Some(end) = literal.iter().position(|&b| b == b']') else {
            return false;
        };
        let address = &literal[..end];
        let ok = address.contains(&b':')
            && address
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'));
        (ok, &literal[end + 1..])
    } else {
        let end = host.iter().position(|&b| b == b':').unwrap_or(host.len());
        (reg_name(&host[..end]), &host[end..])
    };
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    name_ok && port_ok
}

/// RFC 3986's `reg-name`, not empty: unreserved, sub-delims, `%` escapes.
fn reg_name(name: &[u8]) -> bool {
    let mut i = 0;
    while i < name.len() {
        match name[i] {
            b'%' => {
                let escape = name.get(i + 1..i + 3);
                if !escape.is_some_and(|e| e.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                i += 3;
                continue;
            }
            b if b.is_ascii_alphanumeric() => {}
            b'-' | b'.' | b'_' | b'~' => {}
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => {}
            _ => return false,
        }
        i += 1;
    }
    !name.is_empty()
}

static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

/// The `X-Forwarded-For` value for the upstream: every value the client
/// sent (all of its `X-Forwarded-For` lines, in order), then the client's
/// own address. One allocation, no formatting machinery: this runs on every
/// request.
fn forwarded_for<'a>(
    prior: impl Iterator<Item = &'a http::HeaderValue>,
    client: std::net::IpAddr,
) -> http::HeaderValue {
    let mut out = Vec::with_capacity(48);
    for value in prior {
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b", ");
    }
    match client {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        std::net::IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
    // Every byte is from a valid header value, ", " or an address: always a
    // valid value, so the fallback is never used.
    http::HeaderValue::from_maybe_shared(Bytes::from(out))
        .unwrap_or_else(|_| http::HeaderValue::from_static("unknown"))
}

static X_FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: http::HeaderName = http::HeaderName::from_static("x-forwarded-host");

/// The request's copy for the upstream, without pingora's second header
/// map (the one that keeps each name's original case) when the copy can do
/// without it: a copy of that map, dropped again by
/// [`add_forwarded_headers`], is work for nothing. Header names then reach
/// the upstream in lower case, as HAProxy sends them (RFC 9110: names are
/// case-insensitive). A request whose target would not be written back
/// byte for byte from its URI (absolute-form, non-UTF-8) is cloned whole.
pub fn upstream_copy(req: &RequestHeader) -> RequestHeader {
    if !target_from_uri(req) {
        return req.clone();
    }
    let mut copy = RequestHeader::from(req.as_owned_parts());
    if let Some(end) = req.send_end_stream() {
        copy.set_send_end_stream(end);
    }
    copy
}

/// Whether the request target is written back byte for byte from the URI.
fn target_from_uri(req: &RequestHeader) -> bool {
    req.raw_path_is_utf8()
        && req.uri.path_and_query().map(|p| p.as_str().as_bytes()) == Some(req.raw_path())
}

/// Adds `X-Forwarded-For` (the client appended to what it sent),
/// `X-Forwarded-Proto` and `X-Forwarded-Host` (the client's Host) to the
/// request for the upstream, replacing whatever the client sent under the
/// last two names.
///
/// The request is taken apart and its header map written directly: pingora's
/// inserts go through its names' case map, and each turns the name into its
/// title case and parses it back (~1.2k instructions an insert, callgrind),
/// even for a request without that map. It ends up without the map (see
/// [`upstream_copy`]), unless its target needs pingora's representation,
/// which then keeps the slower inserts.
pub fn add_forwarded_headers(
    req: &mut RequestHeader,
    client: Option<std::net::IpAddr>,
    proto: &'static str,
) -> Result<()> {
    let host = req.headers.get(http::header::HOST).cloned().or_else(|| {
        req.uri
            .authority()
            .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
    });
    let xff = client.map(|ip| forwarded_for(req.headers.get_all(&X_FORWARDED_FOR).iter(), ip));
    let proto = http::HeaderValue::from_static(proto);
    if !target_from_uri(req) {
        if let Some(xff) = xff {
            req.insert_header(X_FORWARDED_FOR.clone(), xff)?;
        }
        req.insert_header(X_FORWARDED_PROTO.clone(), proto)?;
        if let Some(host) = host {
            req.insert_header(X_FORWARDED_HOST.clone(), host)?;
        }
        return Ok(());
    }
    // Taken apart and put together again: moved, not copied.
    let send_end_stream = req.send_end_stream();
    let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts = http::request::Parts::from(std::mem::replace(req, placeholder));
    parts.headers.reserve(3);
    if let Some(xff) = xff {
        parts.headers.insert(X_FORWARDED_FOR.clone(), xff);
    }
    parts.headers.insert(X_FORWARDED_PROTO.clone(), proto);
    if let Some(host) = host {
        parts.headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    *req = RequestHeader::from(parts);
    if let Some(end) = send_end_stream {
        req.set_send_end_stream(end);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(prior: &[&'static str], client: &str) -> String {
        let prior: Vec<_> = prior
            .iter()
            .map(|v| http::HeaderValue::from_static(v))
            .collect();
        let value = forwarded_for(prior.iter(), client.parse().unwrap());
        value.to_str().unwrap().to_string()
    }

    #[test]
    fn forwarded_for_appends_the_client_to_every_prior_value() {
        assert_eq!(xff(&[], "127.0.0.1"), "127.0.0.1");
        assert_eq!(xff(&[], "0.0.0.0"), "0.0.0.0");
        assert_eq!(xff(&[], "10.200.9.255"), "10.200.9.255");
        assert_eq!(xff(&[], "192.168.100.10"), "192.168.100.10");
        assert_eq!(xff(&["203.0.113.9"], "10.0.0.1"), "203.0.113.9, 10.0.0.1");
        assert_eq!(
            xff(&["203.0.113.9, 198.51.100.2", "192.0.2.1"], "10.0.0.1"),
            "203.0.113.9, 198.51.100.2, 192.0.2.1, 10.0.0.1"
        );
        assert_eq!(xff(&[], "2001:db8::1"), "2001:db8::1");
        assert_eq!(xff(&["192.0.2.1"], "::1"), "192.0.2.1, ::1");
    }

    #[test]
    fn forwarded_for_formats_every_ipv4_octet_like_the_standard_library() {
        for octet in 0..=255u8 {
            let ip = std::net::Ipv4Addr::new(octet, 0, 10, octet);
            assert_eq!(xff(&[], &ip.to_string()), ip.to_string());
        }
    }

    fn request(raw: &[u8]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", raw, None).unwrap();
        req.append_header("Host", "Shop.example.net").unwrap();
        req.append_header("User-Agent", "t").unwrap();
        req.append_header("X-Forwarded-For", "203.0.113.9").unwrap();
        req.append_header("X-Forwarded-Proto", "gopher").unwrap();
        req
    }

    fn wire(req: &RequestHeader) -> String {
        let mut buf = Vec::new();
        req.header_to_h1_wire(&mut buf);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn forwarded_headers_are_added_and_the_client_ones_replaced() {
        let mut req = request(b"/cart?id=7");
        add_forwarded_headers(&mut req, Some("10.0.0.5".parse().unwrap()), "https").unwrap();
        assert_eq!(req.raw_path(), b"/cart?id=7");
        assert_eq!(req.method, http::Method::GET);
        assert!(
            !req.has_case(),
            "names go out in lower case, like HAProxy's"
        );
        let wire = wire(&req);
        assert!(
            wire.contains("x-forwarded-for: 203.0.113.9, 10.0.0.5\r\n"),
            "{wire}"
        );
        assert!(wire.contains("x-forwarded-proto: https\r\n"), "{wire}");
        assert!(
            wire.contains("x-forwarded-host: Shop.example.net\r\n"),
            "{wire}"
        );
        assert!(wire.contains("Host: Shop.example.net\r\n"), "{wire}");
        assert!(wire.contains("user-agent: t\r\n"), "{wire}");
        assert!(!wire.contains("gopher"), "{wire}");
    }

    #[test]
    fn a_target_the_uri_cannot_write_back_keeps_its_bytes() {
        for raw in [&b"http://shop.example.net/cart"[..], &b"/caf\xe9"[..]] {
            let mut req = request(raw);
            add_forwarded_headers(&mut req, Some("10.0.0.5".parse().unwrap()), "http").unwrap();
            assert_eq!(req.raw_path(), raw);
            assert!(req.has_case(), "the original representation is kept");
            assert_eq!(req.headers["x-forwarded-for"], "203.0.113.9, 10.0.0.5");
            assert_eq!(req.headers["x-forwarded-proto"], "http");
            assert_eq!(req.headers["x-forwarded-host"], "Shop.example.net");
        }
    }

    #[test]
    fn the_upstream_copy_drops_only_the_case_of_names() {
        let req = request(b"/cart?id=7");
        let copy = upstream_copy(&req);
        assert!(!copy.has_case());
        assert_eq!(copy.raw_path(), b"/cart?id=7");
        assert_eq!(copy.method, req.method);
        assert_eq!(copy.headers, req.headers);
        assert_eq!(wire(&copy).to_lowercase(), wire(&req).to_lowercase());
        for raw in [&b"http://shop.example.net/cart"[..], &b"/caf\xe9"[..]] {
            let req = request(raw);
            let copy = upstream_copy(&req);
            assert!(copy.has_case(), "a whole clone");
            assert_eq!(copy.raw_path(), raw);
        }
    }

    #[test]
    fn hosts_to_route_by_and_hosts_to_refuse() {
        for ok in [
            "",
            "shop.test",
            "Shop.Test:8080",
            "shop.test:",
            "127.0.0.1",
            "127.0.0.1:80",
            "[::1]",
            "[2001:db8::1]:443",
            "xn--bcher-kva.example",
            "under_score.local",
            "%41.test",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok:?} is a host");
        }
        for bad in [
            "shop.test:80@evil.test",
            "user@shop.test",
            "shop.test/admin",
            "shop.test:80:80",
            "shop.test:http",
            "shop.test:123456",
            "shop test",
            ":80",
            "[::1",
            "[::1]x",
            "[shop.test]",
            "[]",
            "%4",
            "%zz.test",
            "shop.test\\x",
            "caf\u{e9}.test",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?} is no host");
        }
    }
}
