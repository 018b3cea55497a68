//! Observed health of one upstream, shared without a lock: the health
//! checker (control plane) writes it, the data plane and the control API
//! read it. It lives down here so that the routing table need not import
//! the checker.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bgproxy_control::api::Health;

/// Observed health of one upstream and since when, readable without a lock.
#[derive(Debug)]
pub struct HealthCell {
    state: AtomicU8,
    /// Unix milliseconds of the last change.
    since_ms: AtomicU64,
    /// Unix milliseconds of the last passing check (0: none yet).
    last_pass_ms: AtomicU64,
    /// Checks passed and failed in a row, and the rise and fall thresholds
    /// (for the status page's progress; 0 before the first check).
    streak: [AtomicU32; 4],
}

impl Default for HealthCell {
    fn default() -> Self {
        Self::new()
    }
}

impl HealthCell {
    /// A new cell: `unknown` since now.
    pub fn new() -> Self {
        HealthCell {
            state: AtomicU8::new(0),
            since_ms: AtomicU64::new(now_ms()),
            last_pass_ms: AtomicU64::new(0),
            streak: Default::default(),
        }
    }

    #[inline]
    pub fn get(&self) -> Health {
        match self.state.load(Ordering::Relaxed) {
            1 => Health::Up,
            2 => Health::Down,
            _ => Health::Unknown,
        }
    }

    /// Sets the state; `since` moves only when the state changes.
    pub fn set(&self, h: Health) {
        let v = match h {
            Health::Unknown => 0,
            Health::Up => 1,
            Health::Down => 2,
        };
        if self.state.swap(v, Ordering::Relaxed) != v {
            self.since_ms.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// Records a passing check.
    pub fn passed(&self) {
        self.last_pass_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Records the checker's progress: passes and failures in a row, and
    /// its rise and fall thresholds.
    pub fn set_streak(&self, passes: u32, fails: u32, rise: u32, fall: u32) {
        for (cell, v) in self.streak.iter().zip([passes, fails, rise, fall]) {
            cell.store(v, Ordering::Relaxed);
        }
    }

    /// `(passes, fails, rise, fall)` as last recorded by the checker.
    pub fn streak(&self) -> (u32, u32, u32, u32) {
        let [p, f, r, l] = &self.streak;
        let get = |c: &AtomicU32| c.load(Ordering::Relaxed);
        (get(p), get(f), get(r), get(l))
    }

    /// When the last check passed, as Unix milliseconds (0: never).
    pub fn last_pass_ms(&self) -> u64 {
        self.last_pass_ms.load(Ordering::Relaxed)
    }

    /// When the current state began, as Unix milliseconds.
    pub fn since_ms(&self) -> u64 {
        self.since_ms.load(Ordering::Relaxed)
    }
}

/// Now, as Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
