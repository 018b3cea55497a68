//! The rollout driver: the clock of progressive delivery.
//!
//! A background service that, every [`TICK`], reads each app's view from
//! the controller and its colors' counters from the pools, and
//! - ends **rollout steps**: a running rollout's step is a window that
//!   begins when the driver first sees the step (so a restart never
//!   shortens one) and lasts `step_interval`; at its end the new color is
//!   judged against the old one over that window ([`analysis::judge`]) and
//!   the verdict is handed to the controller as `Change::StepAnalysed`;
//! - runs the **watch** after a switch or promotion (`[app.analysis]
//!   watch`): every `interval` the new live color is judged against the
//!   previous live color's p99 over the `interval` before the switch, as
//!   `Change::WatchAnalysed`.
//!
//! It decides nothing itself: the controller's rules do (next step, pause,
//! abort, automatic rollback), and refuse a verdict as stale when the
//! rollout or the live color moved on meanwhile. For the baseline before a
//! switch it keeps a short history of every color's counters ([`Sampler`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bgproxy_control::api::{Color, RolloutState, SwitchKind};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use time::OffsetDateTime;

use super::analysis::{self, Window};
use super::change::{Change, Command};
use super::controller::Controller;
use super::rules::AppView;
use crate::metrics::Counts;

/// How often the driver looks.
pub const TICK: Duration = Duration::from_millis(100);

/// Who the audit log and the history name for the driver's changes.
pub const ACTOR: &str = "bgproxy";

/// The background service.
pub struct RolloutDriver {
    pub controller: Arc<Controller>,
}

/// A rollout step being measured.
struct StepWindow {
    step: usize,
    step_started: OffsetDateTime,
    begun: Instant,
    /// Counts of both colors when it began, indexed by [`Color::index`].
    start: [Counts; 2],
}

/// The watch after one switch.
struct Watch {
    /// The switch's time (its identity in the state).
    since: OffsetDateTime,
    /// When the watch ends.
    until: Instant,
    /// The previous live color's p99 over the interval before the switch.
    baseline_p99_ms: Option<f64>,
    window_begun: Instant,
    window_start: Counts,
}

/// Every color's counters over the last while, for baselines.
#[derive(Default)]
struct Sampler {
    rings: HashMap<(String, Color), VecDeque<(Instant, Counts)>>,
}

impl Sampler {
    /// Records a reading every `interval / 20` (at least a tick), keeping
    /// a little more than `interval`.
    fn sample(
        &mut self,
        app: &str,
        color: Color,
        counts: &Counts,
        interval: Duration,
        now: Instant,
    ) {
        let period = (interval / 20).max(TICK);
        let ring = self.rings.entry((app.to_string(), color)).or_default();
        if ring
            .back()
            .is_none_or(|(t, _)| now.duration_since(*t) >= period)
        {
            ring.push_back((now, counts.clone()));
        }
        while ring
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > interval + 2 * period)
        {
            ring.pop_front();
        }
    }

    /// The window of `color` over (about) the last `interval`, ending with
    /// `now_counts`; from the oldest reading kept when there is less.
    fn last(
        &self,
        app: &str,
        color: Color,
        now_counts: &Counts,
        interval: Duration,
        now: Instant,
    ) -> Option<Window> {
        let ring = self.rings.get(&(app.to_string(), color))?;
        let (_, start) = ring
            .iter()
            .find(|(t, _)| now.duration_since(*t) <= interval)
            .or(ring.front())?;
        Some(Window::between(start, now_counts))
    }
}

#[async_trait]
impl BackgroundService for RolloutDriver {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut sampler = Sampler::default();
        let mut steps: HashMap<String, StepWindow> = HashMap::new();
        let mut watches: HashMap<String, Watch> = HashMap::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => return,
            }
            // Every instance tells its own watchers when a request expires.
            self.controller.announce_expired().await;
            // [cluster]: automatic actions run on the elected instance only.
            if !self.controller.leads() {
                steps.clear();
                watches.clear();
                continue;
            }
            let now = Instant::now();
            let views = self.controller.views().await;
            // Apps a reload removed leave nothing behind.
            let known = |app: &String| views.iter().any(|v| &v.name == app);
            sampler.rings.retain(|(app, _), _| known(app));
            steps.retain(|app, _| known(app));
            watches.retain(|app, _| known(app));
            for view in views {
                // [cluster]: every instance's counters, summed.
                let counts = self.controller.summed_counts(
                    &view.name,
                    Color::ALL.map(|c| view.pools[c.index()].metrics.counts()),
                );
                for c in Color::ALL {
                    sampler.sample(
                        &view.name,
                        c,
                        &counts[c.index()],
                        view.analysis.interval,
                        now,
                    );
                }
                self.step(&view, &counts, &mut steps, now).await;
                self.watch(&view, &counts, &sampler, &mut watches, now)
                    .await;
            }
        }
    }
}

impl RolloutDriver {
    /// Measures a running rollout's step and hands in its verdict when the
    /// step's time is up.
    async fn step(
        &self,
        view: &AppView,
        counts: &[Counts; 2],
        steps: &mut HashMap<String, StepWindow>,
        now: Instant,
    ) {
        let Some(r) = view
            .rollout
            .as_ref()
            .filter(|r| r.state == RolloutState::Running)
        else {
            steps.remove(&view.name);
            return;
        };
        let window = steps
            .entry(view.name.clone())
            .or_insert_with(|| StepWindow {
                step: r.step,
                step_started: r.step_started,
                begun: now,
                start: counts.clone(),
            });
        if (window.step, window.step_started) != (r.step, r.step_started) {
            *window = StepWindow {
                step: r.step,
                step_started: r.step_started,
                begun: now,
                start: counts.clone(),
            };
        }
        if now.duration_since(window.begun) < Duration::from_millis(r.step_interval_ms) {
            return;
        }
        let new = Window::between(&window.start[r.to.index()], &counts[r.to.index()]);
        let old = Window::between(&window.start[view.live.index()], &counts[view.live.index()]);
        let baseline = old.p99_ms.filter(|_| old.responses > 0);
        let verdict = analysis::judge(&new, baseline, &view.analysis, OffsetDateTime::now_utc());
        let change = Change::StepAnalysed {
            step: window.step,
            step_started: window.step_started,
            analysis: Box::new(verdict),
        };
        steps.remove(&view.name);
        // Refusals (stale, shutting down) are logged by the controller.
        let _ = self
            .controller
            .apply(Command::new(&view.name, change, ACTOR, None))
            .await;
    }

    /// Runs the watch after the app's last switch, while it lasts.
    async fn watch(
        &self,
        view: &AppView,
        counts: &[Counts; 2],
        sampler: &Sampler,
        watches: &mut HashMap<String, Watch>,
        now: Instant,
    ) {
        let rules = &view.analysis;
        let watched = view.last_switch.as_ref().filter(|s| {
            !rules.watch.is_zero()
                && matches!(
                    s.kind,
                    SwitchKind::Switch | SwitchKind::Emergency | SwitchKind::Canary
                )
        });
        let Some(switch) = watched else {
            watches.remove(&view.name);
            return;
        };
        if watches
            .get(&view.name)
            .is_none_or(|w| w.since != switch.time)
        {
            let age = (OffsetDateTime::now_utc() - switch.time)
                .try_into()
                .unwrap_or(Duration::ZERO);
            let Some(left) = rules.watch.checked_sub(age) else {
                watches.remove(&view.name);
                return;
            };
            let previous = switch.from;
            let baseline = sampler
                .last(
                    &view.name,
                    previous,
                    &counts[previous.index()],
                    rules.interval,
                    now,
                )
                .filter(|w| w.responses > 0)
                .and_then(|w| w.p99_ms);
            watches.insert(
                view.name.clone(),
                Watch {
                    since: switch.time,
                    until: now + left,
                    baseline_p99_ms: baseline,
                    window_begun: now,
                    window_start: counts[view.live.index()].clone(),
                },
            );
        }
        let Some(w) = watches.get_mut(&view.name) else {
            return;
        };
        if now >= w.until {
            watches.remove(&view.name);
            return;
        }
        if now.duration_since(w.window_begun) < rules.interval {
            return;
        }
        let live = &counts[view.live.index()];
        let window = Window::between(&w.window_start, live);
        let verdict = analysis::judge(&window, w.baseline_p99_ms, rules, OffsetDateTime::now_utc());
        w.window_begun = now;
        w.window_start = live.clone();
        let change = Change::WatchAnalysed {
            since: w.since,
            analysis: Box::new(verdict),
        };
        let _ = self
            .controller
            .apply(Command::new(&view.name, change, ACTOR, None))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(ok: u64, errors: u64) -> Counts {
        Counts {
            by_class: [0, ok, 0, 0, errors, 0],
            buckets: vec![(0.01, ok + errors)],
            count: ok + errors,
        }
    }

    #[test]
    fn the_baseline_window_covers_the_last_interval_only() {
        let mut s = Sampler::default();
        let t0 = Instant::now();
        let interval = Duration::from_secs(10);
        // A reading every second for 30 s: 100 responses per second, the
        // first 15 s all failing, then none.
        for i in 0..=30u64 {
            let errors = 100 * i.min(15);
            let ok = 100 * i - errors;
            s.sample(
                "web",
                Color::Blue,
                &counts(ok, errors),
                interval,
                t0 + Duration::from_secs(i),
            );
        }
        let now = t0 + Duration::from_secs(30);
        let w = s
            .last("web", Color::Blue, &counts(1500, 1500), interval, now)
            .unwrap();
        // The last 10 s: 1000 responses, no errors (the failing ones are
        // older than the interval).
        assert_eq!((w.responses, w.errors), (1000, 0));
        // Old readings are dropped: a little more than the interval is kept.
        let ring = &s.rings[&("web".to_string(), Color::Blue)];
        assert!(ring.len() <= 13, "{}", ring.len());
        assert!(s
            .last("web", Color::Green, &counts(0, 0), interval, now)
            .is_none());
    }
}
