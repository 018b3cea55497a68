//! What the service manager (systemd, `Type=notify`) is told, through
//! `NOTIFY_SOCKET` when it is set (`sd-notify`); nothing otherwise. Here, in
//! the control plane, because the one writer reports its reloads
//! (`RELOADING=1` ... `READY=1`, `Controller::reload`); the daemon layer
//! sends the rest (`daemon::systemd`).

use sd_notify::NotifyState;
use tracing::{debug, warn};

/// Sends `states` to the service manager when `NOTIFY_SOCKET` is set; a
/// failure is logged, never fatal.
pub fn notify(states: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let text: Vec<String> = states.iter().map(|s| s.to_string()).collect();
    match sd_notify::notify(states) {
        Ok(()) => debug!(states = %text.join(" "), "told systemd"),
        Err(e) => warn!("cannot notify systemd ({}): {e}", text.join(" ")),
    }
}

/// `RELOADING=1` with `MONOTONIC_USEC` (systemd 253 and later require it).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

/// `READY=1`.
pub fn ready() {
    notify(&[NotifyState::Ready]);
}

/// `STOPPING=1`.
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// Sent by the new process of a graceful upgrade once it holds the sockets:
/// it is now the service's main process (`NotifyAccess=all` lets a process
/// systemd did not start say so).
pub fn main_pid() {
    notify(&[NotifyState::MainPid(std::process::id())]);
}
