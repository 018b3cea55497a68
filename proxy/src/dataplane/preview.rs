//! Preview: a request that asks for the STANDBY color, by header or by
//! cookie, guarded by the app's preview token (`[app.preview] token_file`).
//!
//! ```text
//! X-Bgproxy-Preview: <token>        -> the standby; a wrong token: 403
//! GET /.bgproxy/preview?token=<t>   -> 302 to / with Set-Cookie bgproxy_preview=<derived>
//! GET /.bgproxy/preview/off         -> 302 to / clearing the cookie
//! Cookie: bgproxy_preview=<derived> -> the standby; a stale value: 403
//! ```
//!
//! The cookie holds a value derived from the token ([`PreviewKey`]), never
//! the token itself. Tokens are compared as SHA-256 digests, in constant
//! time, so neither where a guess differs nor its length shows in the time
//! taken. Besides the app's own token, the process-wide verify secret
//! (made at start, handed to the controller's verify checks) makes any
//! request a preview request, for every app, with or without a token.
//!
//! Neither the header nor the cookie reaches an upstream: `hooks.rs` strips
//! them ([`strip_preview_cookie`]) on the way out, other cookies unchanged.
//! Without a token the header is still stripped (it is bgproxy's), and the
//! cookie and the `/.bgproxy/preview` paths are the app's like any other.
//!
//! Everything here is pure: `hooks.rs` asks [`judge`] and [`endpoint`] and
//! answers; both paths (the lean loop and pingora-proxy) call those hooks.

use http::header::HeaderName;
use pingora::http::RequestHeader;

use crate::config::Secret;

/// The request header that asks for the standby.
pub static PREVIEW_HEADER: HeaderName = HeaderName::from_static("x-bgproxy-preview");
/// The response header naming the color that answered a preview request,
/// or a request on a color host.
pub static COLOR_HEADER: HeaderName = HeaderName::from_static("x-bgproxy-color");
/// The cookie set by [`PREVIEW_PATH`].
pub const PREVIEW_COOKIE: &str = "bgproxy_preview";
/// `GET` with `?token=<token>`: sets the cookie, redirects to `/`.
pub const PREVIEW_PATH: &str = "/.bgproxy/preview";
/// `GET`: clears the cookie, redirects to `/`.
pub const PREVIEW_OFF_PATH: &str = "/.bgproxy/preview/off";

/// A SHA-256 digest of a secret: what candidates are compared with.
#[derive(Clone, PartialEq, Eq)]
pub struct Digest([u8; 32]);

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Digest(<redacted>)")
    }
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        let d = ring::digest::digest(&ring::digest::SHA256, bytes);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Digest(out)
    }

    /// Compares in time independent of where the digests differ.
    fn matches(&self, other: &Digest) -> bool {
        let diff = self
            .0
            .iter()
            .zip(&other.0)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

/// One app's preview token, as the data plane needs it: its digest and the
/// cookie value derived from it. Built with the routing snapshot.
#[derive(Clone, Debug)]
pub struct PreviewKey {
    token: Digest,
    /// Hex SHA-256 of a fixed label, the app's name and the token: a cookie
    /// for one app is worth nothing for another, and shows no token.
    cookie: Box<str>,
}

impl PreviewKey {
    /// The key of `app`'s `token`.
    pub fn new(app: &str, token: &Secret) -> PreviewKey {
        let mut material = Vec::with_capacity(32 + app.len() + token.as_bytes().len());
        material.extend_from_slice(b"bgproxy preview cookie v1\0");
        material.extend_from_slice(app.as_bytes());
        material.push(0);
        material.extend_from_slice(token.as_bytes());
        PreviewKey {
            token: Digest::of(token.as_bytes()),
            cookie: hex(&Digest::of(&material).0).into(),
        }
    }

    /// The cookie value a valid preview cookie holds.
    pub fn cookie(&self) -> &str {
        &self.cookie
    }

    fn cookie_matches(&self, value: &[u8]) -> bool {
        // Digests again: the comparison takes the same time for any value.
        Digest::of(value).matches(&Digest::of(self.cookie.as_bytes()))
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// What a request says about preview.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No preview asked (or the app has none): routed as usual.
    None,
    /// A valid token or cookie: the standby.
    Standby,
    /// A preview header or cookie that is not valid: 403, and why.
    Refused(&'static str),
}

/// What a request carries that must not reach an upstream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Strip {
    pub header: bool,
    pub cookie: bool,
}

/// Judges a request of an app whose preview key is `key` (`None`: no
/// `token_file`), with the process's verify secret `verify`.
///
/// The header decides when present: the app's token or the verify secret
/// is the standby; anything else is refused when the app has a token, and
/// ignored (but stripped) when it has none. Else a `bgproxy_preview`
/// cookie of an app with a token: its value, or refused (a cookie from an
/// old token must not silently show the live color).
pub fn judge(
    req: &RequestHeader,
    key: Option<&PreviewKey>,
    verify: Option<&Digest>,
) -> (Verdict, Strip) {
    let mut strip = Strip::default();
    let header = req.headers.get(&PREVIEW_HEADER);
    let cookie = key.and_then(|_| preview_cookie(req));
    strip.cookie = cookie.is_some();
    if let Some(value) = header {
        strip.header = true;
        let given = Digest::of(value.as_bytes());
        let valid = key.is_some_and(|k| k.token.matches(&given))
            | verify.is_some_and(|v| v.matches(&given));
        let verdict = match (valid, key) {
            (true, _) => Verdict::Standby,
            (false, Some(_)) => {
                Verdict::Refused("the X-Bgproxy-Preview token is not this app's preview token")
            }
            (false, None) => Verdict::None,
        };
        return (verdict, strip);
    }
    let verdict = match (cookie, key) {
        (Some(value), Some(k)) if k.cookie_matches(value) => Verdict::Standby,
        (Some(_), Some(_)) => Verdict::Refused(
            "the bgproxy_preview cookie is not valid (the preview token changed?): get a new one at /.bgproxy/preview?token=..., or drop it at /.bgproxy/preview/off",
        ),
        _ => Verdict::None,
    };
    (verdict, strip)
}

/// The value of the first `bgproxy_preview` cookie of a request.
fn preview_cookie(req: &RequestHeader) -> Option<&[u8]> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            pair.trim_ascii()
                .strip_prefix(PREVIEW_COOKIE.as_bytes())?
                .strip_prefix(b"=")
        })
}

/// The `Cookie` value of `req` without its `bgproxy_preview` pairs (every
/// `Cookie` line joined with `; `, as RFC 6265 sends one); `None` when no
/// other cookie is left.
pub fn strip_preview_cookie(req: &RequestHeader) -> Option<http::HeaderValue> {
    let mut out: Vec<u8> = Vec::new();
    for pair in req
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
    {
        let pair = pair.trim_ascii();
        let ours = pair
            .strip_prefix(PREVIEW_COOKIE.as_bytes())
            .is_some_and(|rest| rest.first() == Some(&b'='));
        if pair.is_empty() || ours {
            continue;
        }
        if !out.is_empty() {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(pair);
    }
    // Every byte comes from a valid header value: always valid.
    (!out.is_empty())
        .then(|| http::HeaderValue::from_bytes(&out).ok())
        .flatten()
}

/// A request for one of the preview paths of an app with a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `/.bgproxy/preview` with the right token: set the cookie.
    On,
    /// `/.bgproxy/preview` with no token or a wrong one: 403, no cookie.
    WrongToken,
    /// `/.bgproxy/preview/off`: clear the cookie.
    Off,
    /// Either path with a method other than GET or HEAD: 405.
    Method,
}

/// Whether `req` is for a preview path (only apps with a token have them).
pub fn endpoint(req: &RequestHeader, key: &PreviewKey) -> Option<Endpoint> {
    let path = req.uri.path();
    if !path.starts_with(PREVIEW_PATH) {
        return None;
    }
    let on = path == PREVIEW_PATH;
    if !on && path != PREVIEW_OFF_PATH {
        return None;
    }
    if !matches!(req.method, http::Method::GET | http::Method::HEAD) {
        return Some(Endpoint::Method);
    }
    if !on {
        return Some(Endpoint::Off);
    }
    let token = req.uri.query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .map(percent_decode)
    });
    Some(match token {
        Some(t) if key.token.matches(&Digest::of(&t)) => Endpoint::On,
        _ => Endpoint::WrongToken,
    })
}

/// `%XX` escapes decoded; anything else as it is (`+` stays `+`: tokens
/// hold no spaces).
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// The `Set-Cookie` value that sets (`Some(value)`) or clears (`None`) the
/// preview cookie; `Secure` over HTTPS.
pub fn set_cookie(value: Option<&str>, tls: bool) -> String {
    let secure = if tls { "; Secure" } else { "" };
    match value {
        Some(v) => format!("{PREVIEW_COOKIE}={v}; Path=/; HttpOnly; SameSite=Lax{secure}"),
        None => format!("{PREVIEW_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax{secure}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PreviewKey {
        PreviewKey::new("web", &Secret::new(b"s3cret+/x".to_vec()))
    }

    fn req(path: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn the_cookie_is_derived_from_app_and_token_and_is_not_the_token() {
        let k = key();
        assert_eq!(k.cookie().len(), 64);
        assert!(!k.cookie().contains("s3cret"));
        let other_app = PreviewKey::new("api", &Secret::new(b"s3cret+/x".to_vec()));
        let other_token = PreviewKey::new("web", &Secret::new(b"s3cret+/y".to_vec()));
        assert_ne!(k.cookie(), other_app.cookie());
        assert_ne!(k.cookie(), other_token.cookie());
        assert_eq!(k.cookie(), key().cookie(), "stable across builds");
    }

    #[test]
    fn header_and_cookie_verdicts() {
        let k = key();
        let verify = Digest::of(b"internal");
        let judge_with = |r: &RequestHeader, key| judge(r, key, Some(&verify));
        let yes = Strip {
            header: true,
            cookie: false,
        };
        assert_eq!(
            judge_with(&req("/", &[]), Some(&k)),
            (Verdict::None, Strip::default())
        );
        assert_eq!(
            judge_with(&req("/", &[("X-Bgproxy-Preview", "s3cret+/x")]), Some(&k)),
            (Verdict::Standby, yes)
        );
        assert!(matches!(
            judge_with(&req("/", &[("X-Bgproxy-Preview", "s3cret+/")]), Some(&k)).0,
            Verdict::Refused(_)
        ));
        // The verify secret works for every app, with a token or without.
        for key in [Some(&k), None] {
            assert_eq!(
                judge_with(&req("/", &[("X-Bgproxy-Preview", "internal")]), key),
                (Verdict::Standby, yes)
            );
        }
        // Without a token a wrong header is nobody's business, but stripped.
        assert_eq!(
            judge_with(&req("/", &[("X-Bgproxy-Preview", "guess")]), None),
            (Verdict::None, yes)
        );
        let cookie = format!("a=1; {PREVIEW_COOKIE}={}; b=2", k.cookie());
        let both = Strip {
            header: false,
            cookie: true,
        };
        assert_eq!(
            judge_with(&req("/", &[("Cookie", &cookie)]), Some(&k)),
            (Verdict::Standby, both)
        );
        let stale = format!("{PREVIEW_COOKIE}=0123");
        assert!(matches!(
            judge_with(&req("/", &[("Cookie", &stale)]), Some(&k)),
            (Verdict::Refused(_), s) if s == both
        ));
        // Without a token the cookie is the app's own business.
        assert_eq!(
            judge_with(&req("/", &[("Cookie", &stale)]), None),
            (Verdict::None, Strip::default())
        );
        assert_eq!(
            judge_with(&req("/", &[("Cookie", "bgproxy_previewx=1")]), Some(&k)).0,
            Verdict::None
        );
    }

    #[test]
    fn only_the_preview_cookie_is_stripped() {
        let r = req(
            "/",
            &[
                ("Cookie", "a=1; bgproxy_preview=abc;b=2"),
                ("Cookie", "bgproxy_previewx=3"),
            ],
        );
        assert_eq!(
            strip_preview_cookie(&r).unwrap(),
            "a=1; b=2; bgproxy_previewx=3"
        );
        let r = req("/", &[("Cookie", "bgproxy_preview=abc")]);
        assert_eq!(strip_preview_cookie(&r), None);
    }

    #[test]
    fn preview_paths() {
        let k = key();
        let at = |path: &str| endpoint(&req(path, &[]), &k);
        assert_eq!(
            at("/.bgproxy/preview?token=s3cret%2B%2fx"),
            Some(Endpoint::On)
        );
        assert_eq!(
            at("/.bgproxy/preview?a=b&token=s3cret+/x"),
            Some(Endpoint::On)
        );
        assert_eq!(
            at("/.bgproxy/preview?token=s3cret"),
            Some(Endpoint::WrongToken)
        );
        assert_eq!(at("/.bgproxy/preview"), Some(Endpoint::WrongToken));
        assert_eq!(at("/.bgproxy/preview/off"), Some(Endpoint::Off));
        assert_eq!(at("/.bgproxy/previews"), None);
        assert_eq!(at("/.bgproxy/preview/other"), None);
        assert_eq!(at("/"), None);
        let mut post = req("/.bgproxy/preview/off", &[]);
        post.set_method(http::Method::POST);
        assert_eq!(endpoint(&post, &k), Some(Endpoint::Method));
        assert_eq!(percent_decode("%zz%4"), b"%zz%4");
    }

    #[test]
    fn cookie_attributes() {
        assert_eq!(
            set_cookie(Some("ab"), false),
            "bgproxy_preview=ab; Path=/; HttpOnly; SameSite=Lax"
        );
        assert!(set_cookie(Some("ab"), true).ends_with("; Secure"));
        assert!(set_cookie(None, true).contains("Max-Age=0"));
        assert_eq!(hex(&[0, 15, 255]), "000fff");
    }
}
