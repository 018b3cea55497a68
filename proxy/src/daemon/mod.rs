//! The daemon: turns a `Config` into a running process and looks after its
//! life. The top layer: it may use every other module; none uses it.
//!
//! ```text
//! build      build(Config): state -> Controller -> pingora services
//! lifecycle  SIGHUP and config-file reloads; drain and exit on shutdown
//! watch      file changes (config, certificates) through their directories
//! check      bgproxy --check
//! demo       bgproxy demo: two sample backends and the proxy on loopback
//! logging    stderr through a writer thread: no thread waits on log I/O
//! memory     small pages only: no huge-page fault stalls a switch or a request
//! systemd    socket activation (LISTEN_FDS), readiness and watchdog (sd_notify)
//! upgrade    bgproxy upgrade: --upgrade, then SIGQUIT to the old (ExecReload)
//! ```

pub mod build;
pub mod check;
pub mod demo;
pub mod lifecycle;
pub mod logging;
pub mod memory;
pub mod systemd;
pub mod upgrade;
pub mod watch;
