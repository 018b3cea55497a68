//! bgproxy control plane, shared by the daemon and `bgctl`.
//!
//! - [`api`]: the request and response types of the control API (`/v1`). The
//!   daemon serialises them and `bgctl` deserialises them, so the two can never
//!   disagree on a field.
//! - [`duration`]: the `500ms` / `2s` / `1m` duration syntax of the config
//!   and of `bgctl --timeout`.
//! - [`client`] (feature `client`): a typed blocking client of that API.
//! - [`build_info`]: the version and git commit both binaries print.
//! - [`packaging`] (feature `packaging`): man pages and shell completions
//!   from a clap definition, for the Debian package.

pub mod api;
pub mod build_info;
#[cfg(feature = "client")]
pub mod client;
pub mod duration;
#[cfg(feature = "packaging")]
pub mod packaging;
