//! Latency distributions of simulated links.

use serde::{Deserialize, Serialize};

use crate::rng::SimRng;

/// How long a message spends on a link, in virtual milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LatencyDist {
    /// Always `ms`.
    Fixed {
        /// The latency.
        ms: u64,
    },
    /// Uniform in `min_ms..=max_ms`.
    Uniform {
        /// Lower bound.
        min_ms: u64,
        /// Upper bound.
        max_ms: u64,
    },
    /// Approximately normal around `mean_ms`, never below `min_ms`.
    Normal {
        /// Mean.
        mean_ms: f64,
        /// Standard deviation.
        stddev_ms: f64,
        /// Floor (the speed of light of the link).
        min_ms: u64,
    },
}

impl Default for LatencyDist {
    fn default() -> Self {
        LatencyDist::Uniform {
            min_ms: 5,
            max_ms: 40,
        }
    }
}

impl LatencyDist {
    /// Draws one latency.
    pub fn sample(&self, rng: &mut SimRng) -> u64 {
        match *self {
            LatencyDist::Fixed { ms } => ms,
            LatencyDist::Uniform { min_ms, max_ms } => rng.between(min_ms, max_ms),
            LatencyDist::Normal {
                mean_ms,
                stddev_ms,
                min_ms,
            } => {
                let drawn = mean_ms + stddev_ms * rng.normalish();
                if drawn.is_finite() && drawn > min_ms as f64 {
                    drawn.round() as u64
                } else {
                    min_ms
                }
            }
        }
    }

    /// Why the parameters are unusable, if they are.
    pub fn problem(&self) -> Option<String> {
        match *self {
            LatencyDist::Fixed { .. } => None,
            LatencyDist::Uniform { min_ms, max_ms } if max_ms < min_ms => {
                Some(format!("uniform latency max_ms {max_ms} < min_ms {min_ms}"))
            }
            LatencyDist::Uniform { .. } => None,
            LatencyDist::Normal {
                mean_ms, stddev_ms, ..
            } if !(mean_ms.is_finite() && stddev_ms.is_finite() && stddev_ms >= 0.0) => {
                Some(format!(
                    "normal latency needs finite mean and stddev >= 0, got {mean_ms}/{stddev_ms}"
                ))
            }
            LatencyDist::Normal { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_respect_bounds() {
        let mut rng = SimRng::new(1);
        assert_eq!(LatencyDist::Fixed { ms: 7 }.sample(&mut rng), 7);
        let uniform = LatencyDist::Uniform {
            min_ms: 3,
            max_ms: 9,
        };
        assert!((0..500).all(|_| (3..=9).contains(&uniform.sample(&mut rng))));
        let normal = LatencyDist::Normal {
            mean_ms: 20.0,
            stddev_ms: 30.0,
            min_ms: 2,
        };
        assert!((0..500).all(|_| normal.sample(&mut rng) >= 2));
    }

    #[test]
    fn bad_parameters_are_named() {
        let bad = LatencyDist::Uniform {
            min_ms: 9,
            max_ms: 3,
        };
        assert!(bad.problem().unwrap().contains("max_ms"));
        assert!(LatencyDist::default().problem().is_none());
    }
}
