//! Analysis: judging a window of the new color's traffic from bgproxy's own
//! counters, never from Prometheus.
//!
//! The data plane already counts every response per app and color by
//! status class, and observes its latency in a histogram
//! ([`PoolMetrics`](crate::metrics::PoolMetrics)). A window is the
//! difference of two readings of those counters ([`Counts`]); [`Window`]
//! turns it into responses, 5xx and a p99 (interpolated inside the bucket,
//! as Prometheus' `histogram_quantile` does); [`judge`] compares the new
//! color against the old one under the app's `[app.analysis]` rules. All of
//! it is pure: the driver (`rollout.rs`) takes the readings.

use bgproxy_control::api::{AnalysisResult, AnalysisStatus};
use time::OffsetDateTime;

use crate::config::AnalysisConfig;
use crate::metrics::Counts;

/// What one color did between two readings.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    /// Responses (any status).
    pub responses: u64,
    /// 5xx responses.
    pub errors: u64,
    /// p99 latency in milliseconds, when there were responses.
    pub p99_ms: Option<f64>,
}

impl Window {
    /// The window from reading `start` to reading `end` of one color's
    /// counters.
    pub fn between(start: &Counts, end: &Counts) -> Window {
        let responses: u64 = end
            .by_class
            .iter()
            .zip(&start.by_class)
            .take(5) // 1xx..5xx; the last class is "no response"
            .map(|(e, s)| e.saturating_sub(*s))
            .sum();
        let errors = end.by_class[4].saturating_sub(start.by_class[4]);
        let buckets: Vec<(f64, u64)> = end
            .buckets
            .iter()
            .zip(&start.buckets)
            .map(|(&(le, e), &(_, s))| (le, e.saturating_sub(s)))
            .collect();
        let observed = end.count.saturating_sub(start.count);
        Window {
            responses,
            errors,
            p99_ms: quantile(0.99, &buckets, observed).map(|s| s * 1000.0),
        }
    }

    /// 5xx / responses; 0 without responses.
    pub fn error_ratio(&self) -> f64 {
        if self.responses == 0 {
            0.0
        } else {
            self.errors as f64 / self.responses as f64
        }
    }
}

/// The `q` quantile of a histogram given as cumulative counts per upper
/// bound (`+Inf` excluded) and the total count: linear inside the bucket it
/// falls in; the highest finite bound when it falls beyond them. `None`
/// without observations.
pub fn quantile(q: f64, buckets: &[(f64, u64)], count: u64) -> Option<f64> {
    if count == 0 {
        return None;
    }
    let rank = q * count as f64;
    let mut lower = 0.0;
    let mut below = 0u64;
    for &(upper, cumulative) in buckets {
        if cumulative as f64 >= rank {
            let inside = (cumulative - below) as f64;
            if inside == 0.0 {
                return Some(upper);
            }
            return Some(lower + (upper - lower) * (rank - below as f64) / inside);
        }
        lower = upper;
        below = cumulative;
    }
    buckets.last().map(|&(upper, _)| upper)
}

/// Judges the new color's window against `rules`:
/// - fewer than `min_requests` responses: inconclusive;
/// - error ratio above `max_error_ratio`: fail;
/// - p99 above `max_latency_ratio` times the baseline p99 (the old color's in
///   the same window, or before the switch): fail; skipped without a
///   baseline;
/// - else pass.
pub fn judge(
    new: &Window,
    baseline_p99_ms: Option<f64>,
    rules: &AnalysisConfig,
    at: OffsetDateTime,
) -> AnalysisStatus {
    let error_ratio = new.error_ratio();
    let (result, detail) = if new.responses < rules.min_requests {
        (
            AnalysisResult::Inconclusive,
            format!(
                "{} responses, fewer than min_requests {}",
                new.responses, rules.min_requests
            ),
        )
    } else if error_ratio > rules.max_error_ratio {
        (
            AnalysisResult::Fail,
            format!(
                "error ratio {error_ratio:.3} ({} of {} responses 5xx) > max_error_ratio {}",
                new.errors, new.responses, rules.max_error_ratio
            ),
        )
    } else {
        match (new.p99_ms, baseline_p99_ms) {
            (Some(p99), Some(base)) if base > 0.0 && p99 / base > rules.max_latency_ratio => (
                AnalysisResult::Fail,
                format!(
                    "p99 {p99:.1} ms is {:.2}x the baseline {base:.1} ms > max_latency_ratio {}",
                    p99 / base,
                    rules.max_latency_ratio
                ),
            ),
            _ => (
                AnalysisResult::Pass,
                format!(
                    "error ratio {error_ratio:.3} over {} responses, p99 {}",
                    new.responses,
                    new.p99_ms
                        .map_or_else(|| "-".to_string(), |p| format!("{p:.1} ms"))
                ),
            ),
        }
    };
    AnalysisStatus {
        result,
        requests: new.responses,
        error_ratio,
        p99_ms: new.p99_ms,
        baseline_p99_ms,
        detail,
        at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> AnalysisConfig {
        AnalysisConfig {
            min_requests: 50,
            max_error_ratio: 0.05,
            max_latency_ratio: 2.0,
            ..AnalysisConfig::default()
        }
    }

    fn window(responses: u64, errors: u64, p99_ms: Option<f64>) -> Window {
        Window {
            responses,
            errors,
            p99_ms,
        }
    }

    #[test]
    fn quantile_interpolates_inside_its_bucket() {
        // 100 observations: 50 under 10 ms, 50 between 10 and 20 ms.
        let b = [(0.010, 50), (0.020, 100), (0.050, 100)];
        let p99 = quantile(0.99, &b, 100).unwrap();
        assert!((p99 - 0.0198).abs() < 1e-9, "{p99}");
        let p50 = quantile(0.5, &b, 100).unwrap();
        assert!((p50 - 0.010).abs() < 1e-9, "{p50}");
        assert_eq!(quantile(0.99, &b, 0), None);
        // Beyond every finite bound: the highest one.
        assert_eq!(quantile(0.99, &[(0.01, 0)], 10), Some(0.01));
    }

    #[test]
    fn a_window_is_the_difference_of_two_readings() {
        let start = Counts {
            by_class: [0, 10, 0, 1, 2, 7],
            buckets: vec![(0.01, 10), (0.1, 13)],
            count: 13,
        };
        let end = Counts {
            by_class: [0, 110, 0, 1, 12, 9],
            buckets: vec![(0.01, 100), (0.1, 123)],
            count: 123,
        };
        let w = Window::between(&start, &end);
        assert_eq!((w.responses, w.errors), (110, 10));
        assert!((w.error_ratio() - 10.0 / 110.0).abs() < 1e-12);
        assert!(w.p99_ms.unwrap() > 10.0 && w.p99_ms.unwrap() <= 100.0);
    }

    #[test]
    fn too_few_requests_are_inconclusive_even_when_failing() {
        let a = judge(
            &window(49, 49, Some(1.0)),
            None,
            &rules(),
            OffsetDateTime::UNIX_EPOCH,
        );
        assert_eq!(a.result, AnalysisResult::Inconclusive);
        assert_eq!(a.requests, 49);
        assert!(a.detail.contains("min_requests 50"), "{}", a.detail);
    }

    #[test]
    fn errors_above_the_ratio_fail_with_the_numbers() {
        let a = judge(
            &window(100, 6, Some(1.0)),
            Some(1.0),
            &rules(),
            OffsetDateTime::UNIX_EPOCH,
        );
        assert_eq!(a.result, AnalysisResult::Fail);
        assert!((a.error_ratio - 0.06).abs() < 1e-12);
        assert!(a.detail.contains("6 of 100"), "{}", a.detail);
        // At the limit passes.
        let a = judge(
            &window(100, 5, Some(1.0)),
            Some(1.0),
            &rules(),
            OffsetDateTime::UNIX_EPOCH,
        );
        assert_eq!(a.result, AnalysisResult::Pass);
    }

    #[test]
    fn latency_above_the_baseline_ratio_fails_and_needs_a_baseline() {
        let slow = window(100, 0, Some(30.0));
        let a = judge(&slow, Some(10.0), &rules(), OffsetDateTime::UNIX_EPOCH);
        assert_eq!(a.result, AnalysisResult::Fail);
        assert!(a.detail.contains("3.00x"), "{}", a.detail);
        assert_eq!(a.baseline_p99_ms, Some(10.0));
        let a = judge(&slow, Some(20.0), &rules(), OffsetDateTime::UNIX_EPOCH);
        assert_eq!(a.result, AnalysisResult::Pass);
        // No baseline (the old color had no traffic): latency is not judged.
        let a = judge(&slow, None, &rules(), OffsetDateTime::UNIX_EPOCH);
        assert_eq!(a.result, AnalysisResult::Pass);
    }
}
