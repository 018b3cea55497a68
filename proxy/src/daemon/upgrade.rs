//! `bgproxy upgrade --pid PID`: the zero-downtime upgrade in one command,
//! for systemd's `ExecReload=` (and for hands).
//!
//! 1. loads the configuration (a bad one stops here: nothing started);
//! 2. tells systemd `RELOADING=1` (with `MONOTONIC_USEC`), so `systemctl
//!    reload` waits for the new process's `READY=1`;
//! 3. starts this binary (the one on disk now) with `--upgrade` and the same
//!    configuration; it waits on the upgrade socket;
//! 4. once it listens there, sends SIGQUIT to `PID`, which hands its
//!    listening sockets over, then drains and exits;
//! 5. waits until the new process has taken them (the upgrade socket
//!    closes). The new process says `MAINPID=` itself at once, and `READY=1`
//!    after its first health round.
//!
//! If the new process exits before taking over, the old one was not told
//! to go (or its SIGQUIT came too late to matter: pingora's old process
//! then keeps its sockets) and still serves; this says why and exits 1
//! (`systemctl reload` fails, the service runs on). `WATCHDOG_USEC` of the
//! old process is passed on: systemd gives it to the main process only.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::config::Config;
use crate::controlplane::service_manager;

/// How long the new process may take to listen on the upgrade socket, and
/// then to take the sockets (pingora's new process waits 5 s for them).
const STEP: Duration = Duration::from_secs(10);

/// What went wrong with an upgrade.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("no bgproxy with pid {pid} runs here: {source} (under systemd: ExecReload=... upgrade --pid $MAINPID)")]
    NoOld { pid: u32, source: nix::Error },
    #[error("cannot start {exe}: {source}")]
    Spawn {
        exe: PathBuf,
        source: std::io::Error,
    },
    #[error("the new process exited ({status}) before taking over; the running one (pid {old}) serves on: see its log")]
    NewExited {
        status: std::process::ExitStatus,
        old: u32,
    },
    #[error("the new process (pid {new}) did not {what} within {STEP:?}; the running one (pid {old}) serves on")]
    Stuck {
        new: u32,
        old: u32,
        what: &'static str,
    },
}

/// Runs the upgrade of the bgproxy `old` running on `config` (from
/// `config_path`) to this binary; `args` are passed to the new process
/// (e.g. `--log-format json`). Returns the new process's pid.
pub fn run(
    config: &Config,
    config_path: &Path,
    old: u32,
    args: &[String],
) -> Result<u32, UpgradeError> {
    let old_pid = Pid::from_raw(old as i32);
    kill(old_pid, None).map_err(|source| UpgradeError::NoOld { pid: old, source })?;
    let sock = config.state_dir().join("bgproxy-upgrade.sock");
    service_manager::reloading();
    let result = hand_over(config_path, old, old_pid, &sock, args);
    if result.is_err() {
        // The old process serves on: the reload is over.
        service_manager::ready();
    }
    result
}

fn hand_over(
    config_path: &Path,
    old: u32,
    old_pid: Pid,
    sock: &Path,
    args: &[String],
) -> Result<u32, UpgradeError> {
    let exe = std::env::current_exe().map_err(|source| UpgradeError::Spawn {
        exe: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    let mut cmd = Command::new(&exe);
    cmd.arg("--config")
        .arg(config_path)
        .args(args)
        .arg("--upgrade");
    if let Some(usec) = environ_of(old, "WATCHDOG_USEC") {
        cmd.env("WATCHDOG_USEC", usec).env_remove("WATCHDOG_PID");
    }
    let mut child = cmd
        .spawn()
        .map_err(|source| UpgradeError::Spawn { exe, source })?;
    let new = child.id();
    eprintln!(
        "bgproxy upgrade: started pid {new}; waiting for it on {}",
        sock.display()
    );
    wait_for(&mut child, old, "wait on the upgrade socket", || {
        unix_socket_listens(sock)
    })?;
    // Sent only now: until the new process waits, the old one keeps its
    // sockets and serves on if the new one fails.
    let _ = kill(old_pid, Signal::SIGQUIT);
    eprintln!("bgproxy upgrade: SIGQUIT to pid {old}: handing over");
    wait_for(&mut child, old, "take the sockets", || {
        !unix_socket_listens(sock)
    })?;
    eprintln!("bgproxy upgrade: pid {new} holds the sockets; pid {old} drains and exits");
    Ok(new)
}

/// Polls `done` until it holds, the child exits or [`STEP`] passes.
fn wait_for(
    child: &mut Child,
    old: u32,
    what: &'static str,
    mut done: impl FnMut() -> bool,
) -> Result<(), UpgradeError> {
    let deadline = Instant::now() + STEP;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(UpgradeError::NewExited { status, old });
        }
        if done() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(UpgradeError::Stuck {
                new: child.id(),
                old,
                what,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of `name` in the environment of process `pid`, if readable.
fn environ_of(pid: u32, name: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|&b| b == 0).find_map(|kv| {
        let kv = std::str::from_utf8(kv).ok()?;
        kv.strip_prefix(name)?.strip_prefix('=').map(String::from)
    })
}

/// Whether some process listens on the Unix socket at `path` (an entry of
/// `/proc/net/unix` with that path and `__SO_ACCEPTCON`).
fn unix_socket_listens(path: &Path) -> bool {
    const ACCEPTING: u32 = 0x10000;
    let path = path.to_string_lossy();
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return false;
    };
    // Num RefCount Protocol Flags Type St Inode [Path]
    table.lines().skip(1).any(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        cols.len() >= 8
            && cols[7] == path
            && u32::from_str_radix(cols[3], 16).is_ok_and(|f| f & ACCEPTING != 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_variable_of_a_process() {
        let me = std::process::id();
        assert!(environ_of(me, "PATH").is_some() || std::env::var_os("PATH").is_none());
        assert_eq!(environ_of(me, "BGPROXY_SURELY_UNSET_VARIABLE"), None);
        assert_eq!(environ_of(u32::MAX, "PATH"), None);
    }

    #[test]
    fn sees_a_listening_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        assert!(!unix_socket_listens(&path));
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(unix_socket_listens(&path));
        drop(l);
        assert!(!unix_socket_listens(&path));
    }
}
