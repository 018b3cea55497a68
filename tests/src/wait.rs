//! Readiness by polling a condition with a deadline, never a bare sleep.

use std::thread;
use std::time::{Duration, Instant};

/// Polls `f` every 20ms until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}
