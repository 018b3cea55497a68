//! Ports for the daemon's listeners.

use std::net::TcpListener;

/// A port that was free a moment ago (bind 127.0.0.1:0, then release).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
