//! Trying the standby before the switch: `[app.preview]` (a token that
//! routes a request to the standby, and host names pinned to one color),
//! `[app.mirror]` (copies of live requests sent to the standby) and
//! `[[app.verify]]` (HTTP checks run against the standby through the proxy).
//! Also the one reader of secret files (bearer and preview tokens).

use std::fmt;
use std::path::{Path, PathBuf};

use super::defaults;

/// A secret read from a file: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Reads a token file: the token is the file's content without surrounding
/// white space; it must not be empty nor hold white space or control
/// characters. `key` names the setting in messages.
pub fn read_token(path: &Path, key: &str) -> Result<Vec<u8>, String> {
    let raw =
        std::fs::read(path).map_err(|e| format!("failed to read {key} {}: {e}", path.display()))?;
    let token = raw.trim_ascii();
    if token.is_empty() {
        return Err(format!(
            "{key} {} is empty: put a long random token in it (e.g. `openssl rand -hex 32`)",
            path.display()
        ));
    }
    if token
        .iter()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(format!(
            "{key} {} holds white space or control characters inside the token",
            path.display()
        ));
    }
    Ok(token.to_vec())
}

/// `[app.preview]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PreviewConfig {
    /// The preview token (from `token_file`): enables the
    /// `X-Bgproxy-Preview` header and the `/.bgproxy/preview` cookie.
    pub token: Option<Secret>,
    /// Where the token was read from (re-read on reload).
    pub token_file: Option<PathBuf>,
    /// Lowercase host names always routed to blue (`blue_hosts`) and to
    /// green (`green_hosts`), indexed by `Color::index`.
    pub hosts: [Vec<String>; 2],
}

/// `[app.mirror]`: copies of live requests sent to the standby.
#[derive(Clone, Debug, PartialEq)]
pub struct MirrorConfig {
    /// Share of live requests copied, 0-100. Default
    /// [`defaults::MIRROR_PERCENT`] (off).
    pub percent: u8,
    /// Only these methods are copied (upper case). Default
    /// [`defaults::MIRROR_METHODS`].
    pub methods: Vec<String>,
    /// Larger request bodies are not copied. Default
    /// [`defaults::MIRROR_MAX_BODY`].
    pub max_body: u64,
    /// Copies in flight at once per app; more are dropped and counted.
    /// Default [`defaults::MIRROR_MAX_IN_FLIGHT`].
    pub max_in_flight: usize,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            percent: defaults::MIRROR_PERCENT,
            methods: defaults::MIRROR_METHODS.map(String::from).to_vec(),
            max_body: defaults::MIRROR_MAX_BODY,
            max_in_flight: defaults::MIRROR_MAX_IN_FLIGHT,
        }
    }
}

/// One `[[app.verify]]` check against the standby.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyCheck {
    pub name: String,
    /// Path and query of the GET request.
    pub path: String,
    /// Default [`defaults::VERIFY_EXPECT_STATUS`].
    pub expect_status: u16,
    /// A substring the body must contain.
    pub expect_body: Option<String>,
}
