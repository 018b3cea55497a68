//! Ports for the listeners the daemon binds itself, reserved for as long as
//! a test holds them.
//!
//! The daemon binds its listeners from its config (pingora), so a test
//! cannot hand it a bound socket. Binding 127.0.0.1:0 and releasing the port
//! for the daemon to bind later leaves a window in which another test's
//! bind(0) (a backend, another test process) or the local port of any
//! outgoing connection can take it.
//!
//! A [`Port`] keeps a socket bound to its port, with `SO_REUSEADDR` and
//! never listening, until it is dropped:
//! - the port comes from the kernel's bind(0), so no other socket on the host
//!   holds it: unique across test threads and processes, without a registry
//!   or lock files;
//! - while it is bound, the kernel skips it for every other bind(0) and for
//!   the local port of outgoing connections (`connect` never picks a port
//!   that has a bound socket), whether the daemon listens on it yet or not;
//! - the daemon's own bind succeeds: pingora's listeners and bgproxy's
//!   start-up check (a std bind) both set `SO_REUSEADDR`, and Linux lets
//!   sockets with it share a port as long as none of the others listens. A
//!   restart (kill -9, start again) binds it again the same way;
//! - a bind without `SO_REUSEADDR` (something else that asks for that
//!   number) fails.
//!
//! Checked on Linux 6.18 in a network namespace with a ten-port ephemeral
//! range and one port held: bind(0) (listening or not) and `connect` used
//! the nine others and never the held one, and a `SO_REUSEADDR` listener
//! bound it. The unit tests below check the daemon's side.
//!
//! Other options were weighed: a lock file per port outside the ephemeral
//! range works too, but needs a directory shared by every test process and
//! a range to scan; `SO_REUSEPORT` would need the daemon to set it (it does
//! not); the daemon reporting the ports it bound would need a daemon change.

use std::net::{Ipv4Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

/// A port on 127.0.0.1 reserved for a listener the daemon binds itself;
/// released when dropped (see the module doc).
#[derive(Debug)]
pub struct Port {
    addr: SocketAddr,
    // Bound with SO_REUSEADDR, never listening: holds the port without
    // taking connections meant for the daemon.
    _held: Socket,
}

impl Port {
    /// Reserves a port the kernel picks; panics if no socket can be bound.
    pub fn reserve() -> Port {
        let socket =
            Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("a TCP socket");
        socket.set_reuse_address(true).expect("SO_REUSEADDR");
        socket
            .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
            .expect("bind 127.0.0.1:0");
        let addr = socket
            .local_addr()
            .expect("local address")
            .as_socket()
            .expect("an IP address");
        Port {
            addr,
            _held: socket,
        }
    }

    /// The port number.
    pub fn number(&self) -> u16 {
        self.addr.port()
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    /// What the daemon does (bind with SO_REUSEADDR, listen) works on a held
    /// port, serves connections, and works again after a restart.
    #[test]
    fn the_daemons_bind_takes_a_held_port_again_and_again() {
        let port = Port::reserve();
        for round in 0..3 {
            // std sets SO_REUSEADDR, as pingora does.
            let listener = TcpListener::bind(port.addr()).expect("daemon-like bind");
            let mut client = TcpStream::connect(port.addr()).unwrap();
            let (mut served, _) = listener.accept().unwrap();
            served.write_all(&[round]).unwrap();
            let mut got = [0u8; 1];
            client.read_exact(&mut got).unwrap();
            assert_eq!(got, [round]);
            drop(served); // the server closes first: TIME_WAIT on the port
        }
    }

    /// A bind without SO_REUSEADDR cannot take a held port.
    #[test]
    fn a_plain_bind_cannot_take_a_held_port() {
        let port = Port::reserve();
        let other = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let err = other.bind(&port.addr().into()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    }

    /// Reservations from several threads at once are all different.
    #[test]
    fn concurrent_reservations_are_distinct() {
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..50).map(|_| Port::reserve()).collect::<Vec<_>>()))
            .collect();
        let held: Vec<Port> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let numbers: BTreeSet<u16> = held.iter().map(Port::number).collect();
        assert_eq!(numbers.len(), held.len());
    }
}
