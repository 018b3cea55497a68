//! systemd integration: socket activation and service notifications.
//!
//! **Sockets.** [`take_inherited`] (called first thing in `main`, before any
//! thread) takes the listening sockets systemd passed (`LISTEN_FDS` from fd
//! 3, only when `LISTEN_PID` is this process; `LISTEN_FDNAMES` for their
//! names) and clears those variables. [`Sockets::prepare`] matches them to
//! the configured listeners by the address each is bound to: an inherited
//! socket that matches none stops the start, naming its address; a
//! configured listener not inherited is bound here, at start, so a taken
//! port fails the start with a clear message. With `--upgrade` nothing is
//! bound: the old process hands its sockets over.
//!
//! pingora opens a listener from its `Fds` table (address -> fd) when it
//! holds one for that address, and binds it otherwise (that table is what a
//! graceful upgrade passes on). [`WithSockets`] wraps a listening service
//! and puts our sockets into that table just before the service builds its
//! listeners, unless an upgrade already put one there. So the sockets from
//! systemd, and those bound here, are passed on to the next process of an
//! upgrade like any other. No `unsafe` here: `listenfd` turns the inherited
//! descriptors into `TcpListener`s (checking each is a TCP socket).
//!
//! **Notifications** (`controlplane::service_manager`, to `NOTIFY_SOCKET`
//! when set): `READY=1` once the listeners and the state are up and the
//! first health round is done ([`ReadyService`]); `MAINPID=` from the new
//! process of a graceful upgrade as soon as it holds the sockets;
//! `RELOADING=1` ... `READY=1` around a config reload; `STOPPING=1` on
//! SIGTERM (never from the old process of an upgrade); `WATCHDOG=1` every
//! half `WATCHDOG_USEC`.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{IntoRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::background::BackgroundService;
use pingora::services::Service as PingoraService;
use sd_notify::NotifyState;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::controlplane::controller::Controller;
use crate::controlplane::service_manager::{notify, stopping};

/// What went wrong with the sockets at start.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// An inherited descriptor is not a listening TCP socket.
    #[error("inherited socket {name} (fd {fd}) is not usable: {source}; pass TCP stream sockets only (ListenStream= in the .socket unit)")]
    NotTcp {
        name: String,
        fd: usize,
        #[source]
        source: std::io::Error,
    },
    /// An inherited socket is bound where no listener is configured.
    #[error("inherited socket {name} listens on {addr}, which is no listener of the configuration (proxy.listen, proxy.tls.listen, control.listen, metrics.listen): either add {addr} to the configuration or remove it from the .socket unit (ListenStream= there and the listen keys must name the same address)")]
    Unmatched { name: String, addr: SocketAddr },
    /// A configured listener could not be bound.
    #[error("cannot listen on {addr} ({key}): {source}: {hint}")]
    Bind {
        addr: SocketAddr,
        key: &'static str,
        #[source]
        source: std::io::Error,
        hint: &'static str,
    },
}

/// One listening socket passed by systemd.
#[derive(Debug)]
pub struct Inherited {
    /// Its name from `LISTEN_FDNAMES` (`FileDescriptorName=`), or `fd<N>`.
    pub name: String,
    /// Its descriptor number in this process (3 on).
    pub fd: usize,
    /// The socket, or why it is not a listening TCP socket.
    listener: Result<TcpListener, SocketError>,
}

/// Takes the sockets systemd passed to this process (socket activation) and
/// clears `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`, so no child
/// inherits them. Passed to another process (`LISTEN_PID` not ours, or
/// unset): ignored. Call it before any thread starts (it changes the
/// environment).
pub fn take_inherited() -> Vec<Inherited> {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        == Some(std::process::id());
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|n| n.split(':').map(String::from).collect())
        .unwrap_or_default();
    std::env::remove_var("LISTEN_FDNAMES");
    if !ours {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        return Vec::new();
    }
    // listenfd checks LISTEN_PID itself (we did, strictly) and removes both.
    let mut fds = listenfd::ListenFd::from_env();
    (0..fds.len())
        .map(|i| {
            let name = names
                .get(i)
                .filter(|n| !n.is_empty() && *n != "unknown")
                .cloned()
                .unwrap_or_else(|| format!("fd{}", 3 + i));
            let listener = match fds.take_tcp_listener(i) {
                Ok(Some(l)) => Ok(l),
                Ok(None) => Err(SocketError::NotTcp {
                    name: name.clone(),
                    fd: 3 + i,
                    source: std::io::ErrorKind::NotFound.into(),
                }),
                Err(source) => Err(SocketError::NotTcp {
                    name: name.clone(),
                    fd: 3 + i,
                    source,
                }),
            };
            Inherited {
                name,
                fd: 3 + i,
                listener,
            }
        })
        .collect()
}

/// The listening sockets bgproxy holds before pingora's services start,
/// keyed by the configured address (as pingora keys its `Fds` table).
#[derive(Debug, Default)]
pub struct Sockets {
    held: Mutex<HashMap<String, OwnedFd>>,
    /// How many came from systemd.
    inherited: usize,
}

impl Sockets {
    /// Matches `inherited` to `config`'s listeners and, unless `upgrade`,
    /// binds the configured listeners that were not inherited.
    pub fn prepare(
        config: &Config,
        inherited: Vec<Inherited>,
        upgrade: bool,
    ) -> Result<Sockets, SocketError> {
        let configured = config.listeners();
        let mut held = HashMap::new();
        let count = inherited.len();
        for Inherited { name, fd, listener } in inherited {
            let listener = listener?;
            let addr = listener
                .local_addr()
                .map_err(|source| SocketError::NotTcp {
                    name: name.clone(),
                    fd,
                    source,
                })?;
            let Some((_, key)) = configured.iter().find(|(a, _)| *a == addr) else {
                return Err(SocketError::Unmatched { name, addr });
            };
            info!(socket = %name, %addr, key, "listening socket from systemd");
            held.insert(addr.to_string(), nonblocking(listener, addr, key)?);
        }
        if !upgrade {
            for (addr, key) in configured {
                if held.contains_key(&addr.to_string()) {
                    continue;
                }
                let listener = TcpListener::bind(addr).map_err(|source| SocketError::Bind {
                    addr,
                    key,
                    hint: bind_hint(source.kind()),
                    source,
                })?;
                held.insert(addr.to_string(), nonblocking(listener, addr, key)?);
            }
        }
        Ok(Sockets {
            held: Mutex::new(held),
            inherited: count,
        })
    }

    /// How many sockets came from systemd.
    pub fn inherited(&self) -> usize {
        self.inherited
    }

    /// Puts the sockets of `addrs` into pingora's table, unless it has one
    /// for that address already (passed on by the old process of an
    /// upgrade): then ours is closed.
    fn hand_to(&self, addrs: &[String], table: &ListenFds) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let mut table = table.lock();
        for addr in addrs {
            if let Some(fd) = held.remove(addr) {
                if table.get(addr).is_none() {
                    table.add(addr.clone(), fd.into_raw_fd());
                } else {
                    debug!(%addr, "listener passed on by the old process: ours is closed");
                }
            }
        }
    }
}

/// pingora's accept loop needs a non-blocking socket (systemd passes them
/// blocking; std binds them blocking).
fn nonblocking(
    listener: TcpListener,
    addr: SocketAddr,
    key: &'static str,
) -> Result<OwnedFd, SocketError> {
    listener
        .set_nonblocking(true)
        .map_err(|source| SocketError::Bind {
            addr,
            key,
            source,
            hint: "cannot make the socket non-blocking",
        })?;
    Ok(OwnedFd::from(listener))
}

fn bind_hint(kind: std::io::ErrorKind) -> &'static str {
    match kind {
        std::io::ErrorKind::AddrInUse => {
            "another process listens there (another bgproxy? then use --upgrade to take over from it)"
        }
        std::io::ErrorKind::PermissionDenied => {
            "ports below 1024 need CAP_NET_BIND_SERVICE (see systemd/bgproxy.service), socket activation (systemd/bgproxy.socket) or root"
        }
        std::io::ErrorKind::AddrNotAvailable => "no interface of this host has that address",
        _ => "check the address",
    }
}

/// A pingora listening service that opens its listeners on the sockets in
/// [`Sockets`] (see the module docs).
pub struct WithSockets<S> {
    inner: S,
    sockets: Arc<Sockets>,
}

impl<S> WithSockets<S> {
    /// Wraps `inner`, whose listeners take their sockets from `sockets`.
    pub fn new(inner: S, sockets: Arc<Sockets>) -> Self {
        WithSockets { inner, sockets }
    }
}

#[async_trait]
impl<S: PingoraService> PingoraService for WithSockets<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        if let (Some(table), Some(addrs)) = (&fds, self.inner.listen_addresses()) {
            self.sockets.hand_to(&addrs, table);
        }
        self.inner
            .start_service(fds, shutdown, listeners_per_fd)
            .await
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.inner.threads()
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.inner.listen_addresses()
    }
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, when systemd
/// set it for this process.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|t| t / 2)
}

/// Sends `READY=1` once the first health round is done (no upstream
/// `unknown`: the listeners and the state are up before the services start),
/// then `WATCHDOG=1` every half `WATCHDOG_USEC` if set.
pub struct ReadyService {
    pub controller: Arc<Controller>,
    /// Whether this process took over from another (graceful upgrade).
    pub upgrade: bool,
}

impl ReadyService {
    /// Whether every upstream has been checked once.
    async fn health_known(&self) -> bool {
        self.controller.status().await.apps.iter().all(|app| {
            [&app.colors.blue, &app.colors.green]
                .iter()
                .flat_map(|c| c.upstreams.iter())
                .all(|u| u.health != bgproxy_control::api::Health::Unknown)
        })
    }
}

#[async_trait]
impl BackgroundService for ReadyService {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let started = std::time::Instant::now();
        let watchdog = watchdog_interval();
        let mut beat = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
        // SIGTERM is a stop; SIGQUIT (the old process of an upgrade) is not:
        // the service goes on in the new process. pingora hears SIGTERM too
        // (every listener of a signal gets it).
        let mut term = signal(SignalKind::terminate())
            .map_err(|e| warn!("cannot listen for SIGTERM: {e}"))
            .ok();
        let mut ready = false;
        // On through a drain: the process is alive until it exits.
        loop {
            let wait = if ready {
                Duration::from_secs(3600)
            } else {
                Duration::from_millis(50)
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = beat.tick(), if watchdog.is_some() => notify(&[NotifyState::Watchdog]),
                Some(()) = async { match term.as_mut() { Some(t) => t.recv().await, None => std::future::pending().await } } => {
                    stopping();
                    term = None;
                }
            }
            if !ready && self.health_known().await {
                ready = true;
                info!(
                    upgrade = self.upgrade,
                    "ready: listeners, state and the first health round in {:?}",
                    started.elapsed()
                );
                if self.upgrade {
                    // Again, in case the first one raced with the old process.
                    notify(&[NotifyState::MainPid(std::process::id()), NotifyState::Ready]);
                } else {
                    crate::controlplane::service_manager::ready();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config file with the front door on `front` and the control API on
    /// `control`.
    fn config(dir: &std::path::Path, front: SocketAddr, control: SocketAddr) -> Config {
        let path = dir.join("bgproxy.toml");
        std::fs::write(
            &path,
            format!(
                "[proxy]\nlisten = [\"{front}\"]\n[control]\nlisten = \"{control}\"\n[state]\npath = \"s/state.json\"\n\
                 [[app]]\nname = \"web\"\n[app.blue]\nupstreams = [\"127.0.0.1:1\"]\n[app.green]\nupstreams = [\"127.0.0.1:2\"]\n"
            ),
        )
        .unwrap();
        Config::load(&path).unwrap()
    }

    fn inherited(listener: TcpListener, name: &str) -> Inherited {
        Inherited {
            name: name.into(),
            fd: 3,
            listener: Ok(listener),
        }
    }

    #[test]
    fn inherited_sockets_are_matched_by_address_and_the_rest_bound() {
        let dir = tempfile::tempdir().unwrap();
        let front = TcpListener::bind("127.0.0.1:0").unwrap();
        let front_addr = front.local_addr().unwrap();
        // The control port: free, for prepare to bind.
        let control_addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let c = config(dir.path(), front_addr, control_addr);
        let sockets = Sockets::prepare(&c, vec![inherited(front, "http")], false).unwrap();
        assert_eq!(sockets.inherited(), 1);
        let held = sockets.held.lock().unwrap();
        assert!(held.contains_key(&front_addr.to_string()));
        assert!(held.contains_key(&control_addr.to_string()), "bound here");
        drop(held);
        // Bound: a second bind of the control port fails, naming it.
        let again = Sockets::prepare(&c, Vec::new(), false).unwrap_err();
        assert!(
            again
                .to_string()
                .starts_with(&format!("cannot listen on {front_addr} (proxy.listen)")),
            "{again}"
        );
    }

    #[test]
    fn an_inherited_socket_of_no_listener_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let stray = TcpListener::bind("127.0.0.1:0").unwrap();
        let stray_addr = stray.local_addr().unwrap();
        let c = config(
            dir.path(),
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        let err = Sockets::prepare(&c, vec![inherited(stray, "extra")], true).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "inherited socket extra listens on {stray_addr}, which is no listener"
            )),
            "{err}"
        );
    }

    #[test]
    fn with_upgrade_nothing_is_bound() {
        let dir = tempfile::tempdir().unwrap();
        let front = TcpListener::bind("127.0.0.1:0").unwrap();
        let control = TcpListener::bind("127.0.0.1:0").unwrap();
        // Both ports taken (as by the old process): no error with --upgrade.
        let c = config(
            dir.path(),
            front.local_addr().unwrap(),
            control.local_addr().unwrap(),
        );
        let sockets = Sockets::prepare(&c, Vec::new(), true).unwrap();
        assert!(sockets.held.lock().unwrap().is_empty());
    }
}
