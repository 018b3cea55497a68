//! What a binary was built from: the workspace version and the git commit
//! (recorded by `build.rs`). Both `bgproxy --version` and `bgctl --version`
//! print [`VERSION`], so the two always agree.

/// The git commit the binaries were built from (`git rev-parse --short
/// HEAD`), or "unknown" when built outside a git checkout.
pub const GIT_COMMIT: &str = env!("BGPROXY_GIT_COMMIT");

/// `--version` of both binaries: `0.1.0 (commit 1a2b3c4)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BGPROXY_GIT_COMMIT"),
    ")"
);
