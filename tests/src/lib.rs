//! End-to-end test harness: real `bgproxy` and `bgctl` binaries, real HTTP
//! backends, everything on 127.0.0.1 with ports the OS picks.
//!
//! - [`backends`]: the backends the tests start themselves, [`Backend`]
//!   (HTTP/1.1, health, slow paths, WebSocket echo) and [`H2Backend`] (h2c).
//! - [`daemon`]: the daemon under test. [`Daemon`] writes a config
//!   ([`AppSpec`], [`Options`]) into a temp dir, runs `bgproxy`, waits for
//!   its control API, kills it on drop; [`bin`] finds the binaries.
//! - [`etcd`]: a real three-member etcd cluster on loopback ([`etcd::Etcd`])
//!   and a TCP relay a test can cut ([`etcd::Relay`]), for `[cluster]`.
//! - [`load`]: keep-alive load ([`Load`]) on raw connections that never
//!   retry, recording every request ([`Sample`]).
//! - [`ports`]: ports for the daemon's listeners, held until the test ends
//!   ([`Port`]).
//! - [`procfs`]: what `/proc` says about the daemon (threads' nice values,
//!   huge pages, Unix sockets).
//! - [`wait`]: readiness ([`wait_until`]) by polling with a deadline, never a
//!   bare sleep.
//!
//! The binaries are found next to the test executable (`target/<profile>/`;
//! `cargo test --workspace` builds them), or in `$BGPROXY_BIN_DIR`.

pub mod backends;
pub mod daemon;
pub mod etcd;
pub mod load;
pub mod ports;
pub mod procfs;
pub mod wait;

pub use backends::{Backend, H2Backend};
pub use daemon::{bin, check_file, check_text, AppSpec, Daemon, Options};
pub use load::{Load, Report, Sample};
pub use ports::Port;
pub use procfs::{
    close_wait_to, may_lower_nice_to_minus_10, own_nice, thp_enabled, thread_nices,
    unix_socket_listens,
};
pub use wait::wait_until;
