//! Operations that arrive from outside the API: `SIGHUP` and changes of the
//! config file reload the configuration; the start of shutdown (SIGTERM, or
//! SIGQUIT for a graceful upgrade) closes the controller so the state file
//! can pass to the next process, then waits for the requests in flight and
//! exits.
//!
//! Why exit here: pingora stops accepting at the signal, then sleeps the
//! whole grace period before it drops every task, even when nothing is in
//! flight. So `grace_period` is the longest a drain may take, and this
//! service ends the process as soon as the last request has finished.
//!
//! Changes of the config file (and of the TLS files) come from
//! [`super::watch`], debounced here, and are acted on only when the bytes
//! changed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownWatch};
use pingora::services::background::BackgroundService;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use super::watch::{contents, watch};
use crate::controlplane::controller::Controller;
use crate::dataplane::connections::Tally;
use crate::dataplane::tls::CertStore;
use crate::metrics::Metrics;

/// How long the file must be quiet before a change is reloaded.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// How long a drain waits for a connection accepted but not yet handed to
/// the front door. Every accepted connection reaches it at once (TLS
/// handshakes come after the connection gate, dataplane/handshake.rs), so
/// this only bounds the wait should one ever fail on the way.
const ARRIVAL_WAIT: Duration = Duration::from_secs(2);

/// The background service for signals and the config watcher.
pub struct LifecycleService {
    pub controller: Arc<Controller>,
    /// The config file to reload.
    pub config_path: PathBuf,
    /// Whether to watch it for changes.
    pub watch: bool,
    /// For the requests in flight during a drain.
    pub metrics: Arc<Metrics>,
    /// The open client connections: a drain waits for them too.
    pub connections: Arc<Tally>,
    /// Pingora's execution phases (taken once, at start).
    pub phases: std::sync::Mutex<Option<tokio::sync::broadcast::Receiver<ExecutionPhase>>>,
    /// Set when an upgrade or shutdown begins (read by the data plane).
    pub draining: Arc<AtomicBool>,
    /// The TLS certificates, reloaded when their files change.
    pub certs: Option<Arc<CertStore>>,
}

impl LifecycleService {
    /// Reloads through the controller, which logs, counts and audits it.
    async fn reload(&self, trigger: &str) {
        let _ = self.controller.reload(trigger, None).await;
    }

    /// The files whose changes are acted on: the config (when watched) and
    /// the TLS certificates and keys.
    fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        if self.watch {
            files.push(self.config_path.clone());
        }
        if let Some(certs) = &self.certs {
            files.extend(certs.files());
        }
        files
    }
}

impl LifecycleService {
    /// Waits until no request is in flight and no client connection is
    /// open or on its way in, then exits the process with 0. (If the grace
    /// period ends first, pingora ends the process itself.)
    ///
    /// Why the connections too: between two requests of a keep-alive
    /// connection nothing is in flight, yet the client may be sending the
    /// next one; exiting then resets it (SIGTERM under keep-alive load lost
    /// a request per client that way). A connection closes after a response
    /// that says `Connection: close` (every response once draining), or at
    /// once when idle (the front door closes idle ones at shutdown).
    ///
    /// Why "on its way in": a connection accepted just before the listeners
    /// stopped is not handed to the front door until its task runs; exiting
    /// then closed it unanswered (an upgrade under load lost two requests
    /// that way). And why twice in a row: a
    /// listener may accept once more before it sees the shutdown.
    async fn drain_then_exit(&self) -> ! {
        let started = std::time::Instant::now();
        let mut quiet_before = false;
        loop {
            let quiet = self.metrics.in_flight() <= 0 && self.connections.quiet(ARRIVAL_WAIT);
            if quiet && quiet_before {
                info!("drained in {:?}: exiting", started.elapsed());
                crate::daemon::logging::flush();
                std::process::exit(0);
            }
            quiet_before = quiet;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[async_trait]
impl BackgroundService for LifecycleService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!("cannot listen for SIGHUP: {e}");
                None
            }
        };
        // Keep the watcher alive for the whole loop.
        let (_watcher, mut changes) = match watch(&self.watched_files()) {
            Some((w, rx)) => (Some(w), Some(rx)),
            None => (None, None),
        };
        let mut last = std::fs::read(&self.config_path).ok();
        let cert_files = self.certs.as_ref().map(|c| c.files()).unwrap_or_default();
        let mut last_certs = contents(&cert_files);
        let mut phases = self.phases.lock().unwrap_or_else(|p| p.into_inner()).take();
        loop {
            tokio::select! {
                Ok(phase) = async { match phases.as_mut() { Some(p) => p.recv().await, None => std::future::pending().await } } => {
                    if matches!(phase, ExecutionPhase::GracefulUpgradeTransferringFds | ExecutionPhase::GracefulTerminate | ExecutionPhase::ShutdownStarted)
                        && !self.draining.swap(true, Ordering::Relaxed)
                    {
                        info!("{phase:?}: closing client connections after their current response");
                    }
                }
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    info!("SIGHUP: reloading the configuration");
                    last = std::fs::read(&self.config_path).ok();
                    self.reload("SIGHUP").await;
                }
                Some(()) = async { match changes.as_mut() { Some(c) => c.recv().await, None => std::future::pending().await } } => {
                    // Debounce: wait until the file has been quiet for a while.
                    while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, async {
                        match changes.as_mut() { Some(c) => c.recv().await, None => None }
                    }).await {}
                    let certs_now = contents(&cert_files);
                    if certs_now != last_certs {
                        last_certs = certs_now;
                        if let Some(store) = &self.certs {
                            info!("a TLS certificate or key changed: reloading certificates");
                            let _ = store.reload();
                        }
                    }
                    let now = std::fs::read(&self.config_path).ok();
                    if self.watch && now.is_some() && now != last {
                        info!("{} changed: reloading the configuration", self.config_path.display());
                        last = now;
                        self.reload("config file change").await;
                    }
                }
                _ = shutdown.changed() => {
                    // Every response from now on closes its connection
                    // (the phase that says so may not have been seen yet:
                    // this branch can win the select).
                    if !self.draining.swap(true, Ordering::Relaxed) {
                        info!("shutdown: closing client connections after their current response");
                    }
                    self.controller.close().await;
                    self.drain_then_exit().await;
                }
            }
        }
    }
}
