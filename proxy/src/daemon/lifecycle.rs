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
//! The config file is watched through its directory (editors and config
//! management replace files by rename), debounced, and reloaded only when
//! its bytes changed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora::server::{ExecutionPhase, ShutdownWatch};
use pingora::services::background::BackgroundService;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::controlplane::controller::Controller;
use crate::dataplane::tls::CertStore;
use crate::metrics::Metrics;

/// How long the file must be quiet before a change is reloaded.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// The background service for signals and the config watcher.
pub struct OpsService {
    pub controller: Arc<Controller>,
    /// The config file to reload.
    pub config_path: PathBuf,
    /// Whether to watch it for changes.
    pub watch: bool,
    /// For the requests in flight during a drain.
    pub metrics: Arc<Metrics>,
    /// Pingora's execution phases (taken once, at start).
    pub phases: std::sync::Mutex<Option<tokio::sync::broadcast::Receiver<ExecutionPhase>>>,
    /// Set when an upgrade or shutdown begins (read by the data plane).
    pub draining: Arc<AtomicBool>,
    /// The TLS certificates, reloaded when their files change.
    pub certs: Option<Arc<CertStore>>,
}

impl OpsService {
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

/// Watches `files` through their directories (editors, config management
/// and ACME clients replace files by rename or re-point symlinks); sends a
/// unit per event about one of them.
fn watch(files: &[PathBuf]) -> Option<(notify::RecommendedWatcher, mpsc::UnboundedReceiver<()>)> {
    if files.is_empty() {
        return None;
    }
    let names: Vec<_> = files
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_owned()))
        .collect();
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = move |event: notify::Result<notify::Event>| {
        if let Ok(e) = event {
            // Opening or reading a file is not a change. Without this, our
            // own read of the file after an event is an event again: the
            // daemon would re-read its config every debounce period forever.
            if !matches!(e.kind, notify::EventKind::Access(_))
                && e.paths
                    .iter()
                    .any(|p| p.file_name().is_some_and(|n| names.iter().any(|m| m == n)))
            {
                let _ = tx.send(());
            }
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            warn!("cannot watch files for changes ({e}); reload with SIGHUP or `bgctl reload`");
            return None;
        }
    };
    let mut dirs: Vec<PathBuf> = files
        .iter()
        .map(|f| match f.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
            warn!(
                "cannot watch {} for changes ({e}); reload with SIGHUP or `bgctl reload`",
                dir.display()
            );
        }
    }
    Some((watcher, rx))
}

/// The bytes of `files`, to tell a real change from a touch.
fn contents(files: &[PathBuf]) -> Vec<Option<Vec<u8>>> {
    files.iter().map(|f| std::fs::read(f).ok()).collect()
}

impl OpsService {
    /// Waits until no request is in flight, then exits the process with 0.
    /// (If the grace period ends first, pingora ends the process itself.)
    async fn drain_then_exit(&self) -> ! {
        let started = std::time::Instant::now();
        loop {
            let n = self.metrics.in_flight();
            if n <= 0 {
                info!("drained in {:?}: exiting", started.elapsed());
                crate::daemon::logging::flush();
                std::process::exit(0);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[async_trait]
impl BackgroundService for OpsService {
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
                    self.controller.close().await;
                    self.drain_then_exit().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reading a watched file (as the daemon does after every event) is not
    /// a change; writing it, or replacing it by rename, is.
    #[tokio::test]
    async fn reads_are_not_changes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bgproxy.toml");
        std::fs::write(&file, "a").unwrap();
        let (_watcher, mut rx) = watch(std::slice::from_ref(&file)).unwrap();
        for _ in 0..3 {
            std::fs::read(&file).unwrap();
        }
        let quiet = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await;
        assert!(quiet.is_err(), "a read was reported as a change");

        std::fs::write(&file, "b").unwrap();
        let changed = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(changed, Ok(Some(())), "a write was not reported");
        while rx.try_recv().is_ok() {}

        let other = dir.path().join("bgproxy.toml.new");
        std::fs::write(&other, "c").unwrap();
        std::fs::rename(&other, &file).unwrap();
        let replaced = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(
            replaced,
            Ok(Some(())),
            "a rename over the file was not reported"
        );
    }
}
