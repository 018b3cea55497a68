//! `control.nice`: the control API's thread can outrank the data plane for
//! the CPU.
//!
//! A switch is a few hundred microseconds of work and two waits for the
//! disk (the state file's fsync, then its directory's). When the data plane
//! keeps every core busy, the thread that makes the switch durable queues
//! behind it after each wait: on the project's 2-core box under
//! `benches/cutover.py`'s load, bgproxy's own time per switch was p99
//! 6.2-6.4 ms at the default priority and 2.6-5.5 ms at nice -10 (the same
//! write on an idle machine: p99 1.8 ms). The operator's `bgctl switch` is
//! the one request that should not wait for the traffic it redirects.
//!
//! Like nginx's `worker_priority`, it is asked for in the configuration,
//! never taken by default: lowering a nice value needs `CAP_SYS_NICE` or an
//! `RLIMIT_NICE` that allows it (`LimitNICE=-10` in systemd), and a
//! system-call filter that denies `setpriority` (systemd's `@resources`)
//! without an error number would kill the process. When the kernel refuses,
//! bgproxy says so once and serves at the default priority.

use std::cell::Cell;
use std::sync::Once;

use tracing::{info, warn};

thread_local! {
    static DONE: Cell<bool> = const { Cell::new(false) };
}

static REPORTED: Once = Once::new();

/// Gives the calling thread the nice value `nice` (Linux: -20 highest, 19
/// lowest, 0 default), the first time it is called on that thread; later
/// calls cost a thread-local read.
pub fn set_this_thread(nice: i32) {
    if DONE.with(|d| d.replace(true)) {
        return;
    }
    // On Linux, PRIO_PROCESS with a thread id changes that thread only.
    let tid = rustix::thread::gettid();
    let result = rustix::process::setpriority_process(Some(tid), nice);
    REPORTED.call_once(|| match result {
        Ok(()) => info!(nice, "control API thread runs at control.nice"),
        Err(e) => warn!(
            nice,
            "control API thread keeps the default priority: cannot set control.nice ({e}); \
             allow it with LimitNICE={nice} (systemd) or CAP_SYS_NICE"
        ),
    });
}

/// The calling thread's nice value.
pub fn this_thread() -> std::io::Result<i32> {
    let tid = rustix::thread::gettid();
    Ok(rustix::process::getpriority_process(Some(tid))?)
}

/// How many steps the calling thread's nice value is below the daemon's
/// own (its main thread's): what a process started from this thread would
/// inherit on top of the daemon's priority. 0 on threads left alone.
pub fn raised_by() -> i32 {
    // On Linux, PRIO_PROCESS with the process id reads the main thread.
    let pid = rustix::process::getpid();
    match (
        rustix::process::getpriority_process(Some(pid)),
        this_thread(),
    ) {
        (Ok(process), Ok(thread)) => process - thread,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_the_calling_thread_only_and_once() {
        // Raising a nice value (lowering the priority) needs no privilege.
        let (first, again) = std::thread::spawn(|| {
            set_this_thread(5);
            let first = this_thread().unwrap();
            set_this_thread(7);
            (first, this_thread().unwrap())
        })
        .join()
        .unwrap();
        assert_eq!((first, again), (5, 5));
        let other = std::thread::spawn(|| this_thread().unwrap())
            .join()
            .unwrap();
        assert_eq!(other, this_thread().unwrap(), "other threads keep theirs");
    }

    #[test]
    fn raised_by_compares_with_the_main_thread() {
        let base = this_thread().unwrap();
        let lowered = std::thread::spawn(move || {
            set_this_thread(base + 3);
            raised_by()
        })
        .join()
        .unwrap();
        assert_eq!(lowered, -3, "a thread below the process's priority");
        let plain = std::thread::spawn(raised_by).join().unwrap();
        assert_eq!(plain, 0);
    }
}
