//! The headers bgproxy adds to a request on its way to the upstream:
//! `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Forwarded-Host`; the rule
//! for the one it routes by, `Host` ([`valid_host`]); and the header line
//! the lean loop writes ([`put_header`]).
//!
//! This runs on every request of both paths (the lean loop and
//! pingora-proxy both call `upstream_request_filter`), so it is written for
//! the hot path: one allocation for `X-Forwarded-For`, no second header map.

use bytes::{BufMut, Bytes, BytesMut};
use pingora::http::RequestHeader;
use pingora::prelude::*;
use std::net::IpAddr;

/// What bgproxy tells the upstream about the client: its address (`None`:
/// not an IP client, and the client's own `X-Forwarded-For` passes as it
/// came) and the scheme it spoke.
#[derive(Clone, Copy, Debug)]
pub struct Forwarded {
    pub client: Option<IpAddr>,
    pub proto: &'static str,
}

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
    client: IpAddr,
) -> http::HeaderValue {
    let mut out = Vec::with_capacity(48);
    for value in prior {
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b", ");
    }
    match client {
        IpAddr::V4(v4) => {
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
        IpAddr::V6(v6) => {
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

/// The `X-Forwarded-Host` value: the client's Host, else the authority of
/// its target (`None`: neither, and the client's own passes as it came).
fn forwarded_host(req: &RequestHeader) -> Option<http::HeaderValue> {
    req.headers.get(http::header::HOST).cloned().or_else(|| {
        req.uri
            .authority()
            .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
    })
}

/// The forwarded headers for `req`, in the order they are added: each
/// name, its title case, and its value (`None`: the client's own passes).
fn forwarded_values(
    req: &RequestHeader,
    fwd: Forwarded,
) -> [(
    &'static http::HeaderName,
    &'static str,
    Option<http::HeaderValue>,
); 3] {
    let xff = fwd
        .client
        .map(|ip| forwarded_for(req.headers.get_all(&X_FORWARDED_FOR).iter(), ip));
    [
        (&X_FORWARDED_FOR, "X-Forwarded-For", xff),
        (
            &X_FORWARDED_PROTO,
            "X-Forwarded-Proto",
            Some(http::HeaderValue::from_static(fwd.proto)),
        ),
        (&X_FORWARDED_HOST, "X-Forwarded-Host", forwarded_host(req)),
    ]
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
pub fn add_forwarded_headers(req: &mut RequestHeader, fwd: Forwarded) -> Result<()> {
    let ours = forwarded_values(req, fwd);
    if !target_from_uri(req) {
        for (name, _, value) in ours {
            if let Some(value) = value {
                req.insert_header(name.clone(), value)?;
            }
        }
        return Ok(());
    }
    // Taken apart and put together again: moved, not copied.
    let send_end_stream = req.send_end_stream();
    let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts = http::request::Parts::from(std::mem::replace(req, placeholder));
    parts.headers.reserve(3);
    for (name, _, value) in ours {
        if let Some(value) = value {
            parts.headers.insert(name.clone(), value);
        }
    }
    *req = RequestHeader::from(parts);
    if let Some(end) = send_end_stream {
        req.set_send_end_stream(end);
    }
    Ok(())
}

/// The request head for an HTTP/1.1 upstream, written straight from the
/// client's HTTP/1 request: what [`upstream_copy`], then
/// [`add_forwarded_headers`], then pingora's writer make of it, without the
/// copy (its header map taken apart, grown and put together again: ~4k
/// instructions a request, callgrind). Version HTTP/1.1, `Connection` left
/// out (hop-by-hop), the forwarded headers replaced where the client had
/// them and added at the end otherwise, names title-cased as the lean loop
/// writes responses. `None` when the target is not written back byte for
/// byte from the URI, or has a byte a request line cannot carry: such a
/// request takes the general way.
pub fn upstream_wire(req: &RequestHeader, fwd: Forwarded) -> Option<BytesMut> {
    let path = req.raw_path();
    if !target_from_uri(req) || path.iter().any(|b| matches!(b, 0 | b'\n' | b'\r' | b' ')) {
        return None;
    }
    // Each with whether it was written yet.
    let mut ours =
        forwarded_values(req, fwd).map(|(name, titled, value)| (name, titled, value, false));
    let mut out = BytesMut::with_capacity(256);
    out.put_slice(req.method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(path);
    out.put_slice(b" HTTP/1.1\r\n");
    'headers: for (name, value) in req.headers.iter() {
        if name == http::header::CONNECTION {
            continue;
        }
        for (ours_name, titled, ours_value, written) in &mut ours {
            if let (true, Some(ours_value)) = (name == *ours_name, ours_value.as_ref()) {
                // In the place of the client's first line of that name.
                if !*written {
                    put_line(&mut out, titled, ours_value);
                    *written = true;
                }
                continue 'headers;
            }
        }
        put_header(&mut out, name, value);
    }
    for (_, titled, value, written) in &ours {
        if let (Some(value), false) = (value, written) {
            put_line(&mut out, titled, value);
        }
    }
    out.put_slice(b"\r\n");
    Some(out)
}

/// One header line, its name title-cased (`content-type` as
/// `Content-Type`, the way most clients and servers write them; the map
/// keeps names in lower case).
pub fn put_header(out: &mut BytesMut, name: &http::HeaderName, value: &http::HeaderValue) {
    match titled(name) {
        Some(titled) => out.put_slice(titled.as_bytes()),
        None => {
            let start = out.len();
            out.extend_from_slice(name.as_str().as_bytes());
            title_case(&mut out[start..]);
        }
    }
    put_value(out, value);
}

/// One header line under a name already in its case.
fn put_line(out: &mut BytesMut, name: &str, value: &http::HeaderValue) {
    out.put_slice(name.as_bytes());
    put_value(out, value);
}

/// A header line's rest after its name.
fn put_value(out: &mut BytesMut, value: &http::HeaderValue) {
    out.put_slice(b": ");
    out.put_slice(value.as_bytes());
    out.put_slice(b"\r\n");
}

/// Each letter at the start or after a `-` in upper case.
fn title_case(name: &mut [u8]) {
    let mut upper = true;
    for b in name {
        if upper {
            b.make_ascii_uppercase();
        }
        upper = *b == b'-';
    }
}

/// The title case of the names on most requests and responses, ready made
/// (a comparison each, not a pass over the bytes).
fn titled(name: &http::HeaderName) -> Option<&'static str> {
    use http::header;
    Some(match *name {
        header::HOST => "Host",
        header::CONTENT_LENGTH => "Content-Length",
        header::CONTENT_TYPE => "Content-Type",
        header::SERVER => "Server",
        header::USER_AGENT => "User-Agent",
        header::ACCEPT => "Accept",
        header::ACCEPT_ENCODING => "Accept-Encoding",
        header::ACCEPT_LANGUAGE => "Accept-Language",
        header::CACHE_CONTROL => "Cache-Control",
        header::CONTENT_ENCODING => "Content-Encoding",
        header::COOKIE => "Cookie",
        header::SET_COOKIE => "Set-Cookie",
        header::ETAG => "Etag",
        header::LAST_MODIFIED => "Last-Modified",
        header::TRANSFER_ENCODING => "Transfer-Encoding",
        header::VARY => "Vary",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

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

    fn fwd(proto: &'static str) -> Forwarded {
        Forwarded {
            client: Some("10.0.0.5".parse().unwrap()),
            proto,
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
        add_forwarded_headers(&mut req, fwd("https")).unwrap();
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
            add_forwarded_headers(&mut req, fwd("http")).unwrap();
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

    /// What the general way sends: the copy, without Connection, version
    /// 1.1, the forwarded headers, pingora's writer.
    fn general_way(req: &RequestHeader, fwd: Forwarded) -> String {
        let mut copy = upstream_copy(req);
        copy.set_version(http::Version::HTTP_11);
        copy.remove_header(&http::header::CONNECTION);
        add_forwarded_headers(&mut copy, fwd).unwrap();
        let wire = pingora::protocols::http::v1::client::http_req_header_to_wire(&copy).unwrap();
        String::from_utf8(wire.to_vec()).unwrap()
    }

    /// A head's request line, then each name's values in order.
    fn by_name(head: &str) -> (String, BTreeMap<String, Vec<String>>) {
        let mut lines = head.strip_suffix("\r\n\r\n").unwrap().split("\r\n");
        let first = lines.next().unwrap().to_string();
        let mut names = BTreeMap::<String, Vec<String>>::new();
        for line in lines {
            let (name, value) = line.split_once(": ").unwrap();
            names
                .entry(name.to_lowercase())
                .or_default()
                .push(value.into());
        }
        (first, names)
    }

    #[test]
    fn the_upstream_head_written_straight_is_the_general_ways() {
        let plain = |extra: &[(&str, &str)]| {
            let mut req = RequestHeader::build("POST", b"/cart?id=7", None).unwrap();
            req.set_version(http::Version::HTTP_10);
            for (name, value) in extra {
                req.append_header(name.to_string(), *value).unwrap();
            }
            req
        };
        let requests = [
            plain(&[("Host", "shop.test")]),
            plain(&[]),
            plain(&[
                ("Host", "shop.test:8080"),
                ("X-Forwarded-Proto", "gopher"),
                ("user-agent", "t"),
                ("X-Forwarded-For", "203.0.113.9"),
                ("Connection", "keep-alive"),
                ("x-forwarded-for", "198.51.100.2, 192.0.2.1"),
                ("Accept", "*/*"),
                ("X-Forwarded-Host", "elsewhere.test"),
                ("X-Forwarded-Host", "again.test"),
            ]),
            plain(&[("Cookie", "a=1"), ("cookie", "b=2"), ("Host", "")]),
            request(b"/"),
        ];
        for req in &requests {
            for fwd in [
                fwd("http"),
                fwd("https"),
                Forwarded {
                    client: Some("2001:db8::1".parse().unwrap()),
                    proto: "http",
                },
                Forwarded {
                    client: None,
                    proto: "http",
                },
            ] {
                let straight = upstream_wire(req, fwd).expect("a plain target");
                let straight = String::from_utf8(straight.to_vec()).unwrap();
                // The same request line and lines, but for the case of names
                // and the order of different names (the map's remove moves
                // its last entry into the gap; these keep the client's).
                assert_eq!(
                    by_name(&straight),
                    by_name(&general_way(req, fwd)),
                    "{req:?} {fwd:?}"
                );
                assert!(
                    straight.starts_with("POST /cart?id=7 HTTP/1.1\r\n")
                        || straight.starts_with("GET / HTTP/1.1\r\n")
                );
                assert!(
                    !straight.to_lowercase().contains("connection"),
                    "{straight}"
                );
            }
        }
        let titled =
            String::from_utf8(upstream_wire(&requests[2], fwd("http")).unwrap().to_vec()).unwrap();
        assert!(titled.contains("\r\nUser-Agent: t\r\n"), "{titled}");
        assert!(
            titled.contains(
                "\r\nX-Forwarded-For: 203.0.113.9, 198.51.100.2, 192.0.2.1, 10.0.0.5\r\n"
            ),
            "{titled}"
        );
        for raw in [&b"http://shop.example.net/cart"[..], &b"/caf\xe9"[..]] {
            assert!(
                upstream_wire(&request(raw), fwd("http")).is_none(),
                "the general way"
            );
        }
    }

    #[test]
    fn ready_made_title_cases_are_the_computed_ones() {
        use http::header::*;
        for name in [
            HOST,
            CONTENT_LENGTH,
            CONTENT_TYPE,
            SERVER,
            USER_AGENT,
            ACCEPT,
            ACCEPT_ENCODING,
            ACCEPT_LANGUAGE,
            CACHE_CONTROL,
            CONTENT_ENCODING,
            COOKIE,
            SET_COOKIE,
            ETAG,
            LAST_MODIFIED,
            TRANSFER_ENCODING,
            VARY,
            ACCEPT_RANGES,
            X_FORWARDED_FOR.clone(),
        ] {
            let mut computed = name.as_str().as_bytes().to_vec();
            title_case(&mut computed);
            let mut out = BytesMut::new();
            put_header(&mut out, &name, &HeaderValue::from_static("v"));
            assert_eq!(out, [&computed[..], b": v\r\n"].concat(), "{name}");
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
