//! `[app.rollout]` and `[app.analysis]`: how a canary moves the new color's
//! share, and how each window of its traffic is judged. The step list
//! validator is shared with the control API (a `canary` call may bring its
//! own steps).

use std::time::Duration;

use super::defaults;

/// How a client keeps its color while the split is between 0 and 100.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sticky {
    /// A cookie bgproxy sets holds the client's bucket.
    Cookie,
    /// The bucket is a hash of the client address.
    ClientIp,
    /// Every request draws anew.
    None,
}

impl std::str::FromStr for Sticky {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cookie" => Ok(Sticky::Cookie),
            "client_ip" => Ok(Sticky::ClientIp),
            "none" => Ok(Sticky::None),
            _ => Err(format!(
                "unknown sticky mode '{s}': expected \"cookie\", \"client_ip\" or \"none\""
            )),
        }
    }
}

/// `[app.rollout]`: the defaults of `bgctl canary`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutConfig {
    /// The new color's share at each step: increasing, ending at 100.
    /// Default [`defaults::ROLLOUT_STEPS`].
    pub steps: Vec<u8>,
    /// Time at each step before its analysis decides. Default
    /// [`defaults::STEP_INTERVAL`].
    pub step_interval: Duration,
    /// Default [`defaults::STICKY`].
    pub sticky: Sticky,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            steps: defaults::ROLLOUT_STEPS.to_vec(),
            step_interval: defaults::STEP_INTERVAL,
            sticky: defaults::STICKY,
        }
    }
}

/// `[app.analysis]`: how a window of the new color's traffic is judged.
#[derive(Clone, Debug, PartialEq)]
pub struct AnalysisConfig {
    /// Window length of the watch after a switch. Default
    /// [`defaults::ANALYSIS_INTERVAL`].
    pub interval: Duration,
    /// Fewer responses of the new color in a window: inconclusive. Default
    /// [`defaults::MIN_REQUESTS`].
    pub min_requests: u64,
    /// 5xx / responses of the new color above this: fail. Default
    /// [`defaults::MAX_ERROR_RATIO`].
    pub max_error_ratio: f64,
    /// New color's p99 / old color's p99 above this: fail. Default
    /// [`defaults::MAX_LATENCY_RATIO`].
    pub max_latency_ratio: f64,
    /// Inconclusive windows in a row before the rollout pauses. Default
    /// [`defaults::MAX_INCONCLUSIVE`].
    pub max_inconclusive: u32,
    /// How long the new live color is watched after a switch or promotion;
    /// zero: no watch. Default [`defaults::WATCH`].
    pub watch: Duration,
    /// On a failed window: abort the rollout, or roll the switch back.
    /// Default [`defaults::AUTO_ROLLBACK`].
    pub auto_rollback: bool,
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        AnalysisConfig {
            interval: defaults::ANALYSIS_INTERVAL,
            min_requests: defaults::MIN_REQUESTS,
            max_error_ratio: defaults::MAX_ERROR_RATIO,
            max_latency_ratio: defaults::MAX_LATENCY_RATIO,
            max_inconclusive: defaults::MAX_INCONCLUSIVE,
            watch: defaults::WATCH,
            auto_rollback: defaults::AUTO_ROLLBACK,
        }
    }
}

/// Checks a list of rollout steps: the one rule, shared with the control
/// API and bgctl.
pub use bgproxy_control::api::rollout_steps as steps;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_increase_to_100() {
        assert_eq!(steps(&[10, 25, 50, 100]), Ok(vec![10, 25, 50, 100]));
        assert_eq!(steps(&[100]), Ok(vec![100]));
        for (bad, why) in [
            (vec![], "at least one"),
            (vec![0, 100], "step 0"),
            (vec![10, 101], "step 101"),
            (vec![50, 25, 100], "25 comes after 50"),
            (vec![10, 10, 100], "10 comes after 10"),
            (vec![10, 50], "last step must be 100"),
        ] {
            let e = steps(&bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }
}
