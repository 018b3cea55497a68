//! Each color's traffic over the last minute, for the status page
//! (`GET /v1/traffic`): request rate, 5xx ratio and p99, and the same per
//! [`PERIOD`] for a sparkline.
//!
//! ```text
//! TrafficSampler (background, every PERIOD): every app's pools' counters
//!     -> a ring of POINTS + 1 readings per app and color
//! GET /v1/traffic: the ring + a reading now -> analysis::Window per
//!     period and over the whole minute -> TrafficResponse
//! ```
//!
//! The readings are the data plane's own counters (the ones analysis
//! reads), so the numbers need no Prometheus and cost the request path
//! nothing. With `[cluster]` they are the sum over every instance (this
//! one's, plus what the others publish in etcd every 200 ms for the
//! leader's analysis): the page shows the site's traffic on any LB host.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bgproxy_control::api::{AppTraffic, Color, ColorTraffic, TrafficPoint, TrafficResponse};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::analysis::Window;
use super::controller::Controller;
use crate::dataplane::routing::{AppRoute, Snapshot};
use crate::metrics::Counts;

/// Time between two readings: one sparkline point.
pub const PERIOD: Duration = Duration::from_secs(5);

/// Points of a sparkline: a minute.
pub const POINTS: usize = 12;

/// The shortest period shown as a point.
const MIN_POINT: Duration = Duration::from_secs(1);

type Rings = HashMap<(Arc<str>, Color), VecDeque<(Instant, Counts)>>;

/// An app's counters by color ([`Color::index`]): this instance's, or with
/// `[cluster]` every instance's ([`Controller::app_counts`]).
pub type CountsOf<'a> = &'a dyn Fn(&AppRoute) -> [Counts; 2];

/// The readings, shared by the sampler and the API.
#[derive(Clone, Default)]
pub struct Traffic {
    rings: Arc<Mutex<Rings>>,
}

impl Traffic {
    /// Takes one reading of every color of every app of `snapshot`, and
    /// forgets apps it no longer has.
    pub fn sample(&self, snapshot: &Snapshot, now: Instant, counts: CountsOf<'_>) {
        let mut rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        rings.retain(|(app, _), _| snapshot.app(app).is_some());
        for app in &snapshot.apps {
            let read = counts(app);
            for color in Color::ALL {
                let ring = rings.entry((app.name.clone(), color)).or_default();
                ring.push_back((now, read[color.index()].clone()));
                while ring.len() > POINTS + 1 {
                    ring.pop_front();
                }
            }
        }
    }

    /// Every app's colors over the last minute, ending with a reading now;
    /// `instances`: how many instances' counters `counts` sums.
    pub fn report(
        &self,
        snapshot: &Snapshot,
        now: Instant,
        counts: CountsOf<'_>,
        instances: usize,
    ) -> TrafficResponse {
        let rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        let apps = snapshot
            .apps
            .iter()
            .map(|app| {
                let read = counts(app);
                let color = |c: Color| {
                    let readings = rings
                        .get(&(app.name.clone(), c))
                        .map(|r| r.iter().cloned().collect::<Vec<_>>())
                        .unwrap_or_default();
                    color_traffic(&readings, (now, read[c.index()].clone()))
                };
                AppTraffic {
                    name: app.name.to_string(),
                    live: app.live,
                    blue: color(Color::Blue),
                    green: color(Color::Green),
                }
            })
            .collect();
        TrafficResponse {
            generation: snapshot.generation,
            period_s: PERIOD.as_secs_f64(),
            instances,
            apps,
        }
    }
}

/// One color's numbers from `readings` (oldest first) and a reading `now`.
/// Pure.
pub fn color_traffic(readings: &[(Instant, Counts)], now: (Instant, Counts)) -> ColorTraffic {
    let mut all: Vec<&(Instant, Counts)> = readings.iter().collect();
    all.push(&now);
    let point = |a: &(Instant, Counts), b: &(Instant, Counts)| {
        let w = Window::between(&a.1, &b.1);
        let seconds = b.0.duration_since(a.0).as_secs_f64();
        TrafficPoint {
            rate: if seconds > 0.0 {
                w.responses as f64 / seconds
            } else {
                0.0
            },
            error_ratio: w.error_ratio(),
            p99_ms: w.p99_ms,
            requests: w.responses,
        }
    };
    let points: Vec<TrafficPoint> = all
        .windows(2)
        // The last point is the period in progress: left out while it is
        // under a second old (its rate would jump around).
        .filter(|w| w[1].0.duration_since(w[0].0) >= MIN_POINT)
        .map(|w| point(w[0], w[1]))
        .collect();
    let whole = match all.first() {
        Some(first) if all.len() > 1 => point(first, &now),
        _ => TrafficPoint::default(),
    };
    ColorTraffic {
        rate: whole.rate,
        error_ratio: whole.error_ratio,
        p99_ms: whole.p99_ms,
        requests: whole.requests,
        seconds: all
            .first()
            .map_or(0.0, |f| now.0.duration_since(f.0).as_secs_f64()),
        points,
    }
}

/// Reads every color's counters every [`PERIOD`].
pub struct TrafficSampler {
    pub controller: Arc<Controller>,
    pub traffic: Traffic,
}

#[async_trait]
impl BackgroundService for TrafficSampler {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let c = &self.controller;
            self.traffic
                .sample(&c.routing().load(), Instant::now(), &|a| c.app_counts(a));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(ok: u64, errors: u64) -> Counts {
        Counts {
            by_class: [0, ok, 0, 0, errors, 0],
            buckets: vec![(0.01, ok + errors), (0.1, ok + errors)],
            count: ok + errors,
        }
    }

    #[test]
    fn rate_error_ratio_and_points() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let readings = vec![
            (at(0), counts(0, 0)),
            (at(5), counts(50, 0)),
            (at(10), counts(90, 10)),
        ];
        let c = color_traffic(&readings, (at(12), counts(100, 20)));
        assert_eq!(c.requests, 120);
        assert!((c.rate - 10.0).abs() < 1e-9, "{}", c.rate);
        assert!((c.error_ratio - 20.0 / 120.0).abs() < 1e-9);
        assert!(c.p99_ms.is_some_and(|p| p <= 10.0));
        assert_eq!(c.points.len(), 3, "the period in progress too");
        assert!((c.points[0].rate - 10.0).abs() < 1e-9);
        assert!((c.points[1].error_ratio - 0.2).abs() < 1e-9);
        assert!((c.points[2].rate - 10.0).abs() < 1e-9);
        assert_eq!(c.seconds, 12.0);
        let c = color_traffic(
            &readings,
            (at(10) + Duration::from_millis(500), counts(95, 10)),
        );
        assert_eq!(c.points.len(), 2, "not under a second old");
    }

    #[test]
    fn nothing_yet() {
        let now = Instant::now();
        let c = color_traffic(&[], (now, counts(5, 0)));
        assert_eq!(c.requests, 0);
        assert!(c.points.is_empty());
        let c = color_traffic(&[(now, counts(0, 0))], (now + PERIOD, counts(5, 0)));
        assert_eq!(c.requests, 5);
        assert_eq!(c.points.len(), 1);
    }
}
