//! bgproxy control plane, shared by the daemon and `bgctl`.
//!
//! - [`api`]: the request and response types of the control API (`/v1`). The
//!   daemon serialises them and `bgctl` deserialises them, so the two can never
//!   disagree on a field.
//! - [`client`] (feature `client`): a typed blocking client of that API.

pub mod api;
#[cfg(feature = "client")]
pub mod client;
