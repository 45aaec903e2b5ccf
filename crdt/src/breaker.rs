//! Deployment circuit breaker, one per package per node.
//!
//! The seed's breaker counts failures and refuses attempts past a threshold
//! until a reset timeout has passed. This one adds the half-open state: after
//! the timeout exactly one probe attempt is let through; its success closes
//! the breaker, its failure opens it for another full timeout. Time is passed
//! in by the caller (milliseconds since any fixed epoch), so tests and the
//! simulator drive it with a fake clock.

/// Tuning of a [`CircuitBreaker`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker (at least 1; 0 is taken as 1).
    pub failure_threshold: u32,
    /// How long the breaker stays open before letting one probe through.
    pub reset_timeout_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 3,
            reset_timeout_ms: 30_000,
        }
    }
}

/// The breaker's position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Attempts go ahead; `consecutive_failures` are below the threshold.
    Closed {
        /// Failures since the last success.
        consecutive_failures: u32,
    },
    /// Attempts are refused until `until_ms`.
    Open {
        /// When the breaker becomes half-open.
        until_ms: u64,
    },
    /// The reset timeout has passed: one probe may go ahead.
    HalfOpen {
        /// Whether the single probe has been handed out and not yet reported.
        probe_in_flight: bool,
    },
}

/// Why an attempt was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BreakerRefusal {
    /// Too many consecutive failures; try again at `retry_at_ms`.
    #[error("circuit breaker open until {retry_at_ms} ms")]
    Open {
        /// When the breaker lets a probe through.
        retry_at_ms: u64,
    },
    /// The single half-open probe is still running.
    #[error("circuit breaker half-open: a probe attempt is already in flight")]
    ProbeInFlight,
}

/// Failure threshold, reset timeout and half-open single probe, with an
/// injected clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: BreakerState,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        CircuitBreaker {
            config,
            state: BreakerState::Closed {
                consecutive_failures: 0,
            },
        }
    }

    /// The breaker's position at `now_ms` (Open turns HalfOpen once its
    /// timeout has passed).
    pub fn state(&self, now_ms: u64) -> BreakerState {
        match self.state {
            BreakerState::Open { until_ms } if now_ms >= until_ms => BreakerState::HalfOpen {
                probe_in_flight: false,
            },
            state => state,
        }
    }

    /// Whether [`CircuitBreaker::try_acquire`] would succeed at `now_ms`,
    /// without taking the half-open probe.
    pub fn permits(&self, now_ms: u64) -> bool {
        match self.state(now_ms) {
            BreakerState::Closed { .. } => true,
            BreakerState::Open { .. } => false,
            BreakerState::HalfOpen { probe_in_flight } => !probe_in_flight,
        }
    }

    /// Asks to make an attempt at `now_ms`. In the half-open state this hands
    /// out the single probe; report its outcome with `record_success` or
    /// `record_failure`.
    pub fn try_acquire(&mut self, now_ms: u64) -> Result<(), BreakerRefusal> {
        match self.state(now_ms) {
            BreakerState::Closed { .. } => Ok(()),
            BreakerState::Open { until_ms } => Err(BreakerRefusal::Open {
                retry_at_ms: until_ms,
            }),
            BreakerState::HalfOpen {
                probe_in_flight: true,
            } => Err(BreakerRefusal::ProbeInFlight),
            BreakerState::HalfOpen {
                probe_in_flight: false,
            } => {
                self.state = BreakerState::HalfOpen {
                    probe_in_flight: true,
                };
                Ok(())
            }
        }
    }

    /// An attempt succeeded: the breaker closes and forgets past failures.
    pub fn record_success(&mut self, _now_ms: u64) {
        self.state = BreakerState::Closed {
            consecutive_failures: 0,
        };
    }

    /// An attempt failed at `now_ms`: counts toward the threshold when closed,
    /// reopens for a full timeout when half-open.
    pub fn record_failure(&mut self, now_ms: u64) {
        let threshold = self.config.failure_threshold.max(1);
        let open = BreakerState::Open {
            until_ms: now_ms.saturating_add(self.config.reset_timeout_ms),
        };
        self.state = match self.state(now_ms) {
            BreakerState::Closed {
                consecutive_failures,
            } => {
                let failures = consecutive_failures.saturating_add(1);
                if failures >= threshold {
                    open
                } else {
                    BreakerState::Closed {
                        consecutive_failures: failures,
                    }
                }
            }
            // A failure reported while open (a late result) restarts the timeout.
            BreakerState::Open { .. } | BreakerState::HalfOpen { .. } => open,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32, timeout: u64) -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig {
            failure_threshold: threshold,
            reset_timeout_ms: timeout,
        })
    }

    #[test]
    fn closed_allows_and_counts_failures_below_threshold() {
        let mut b = breaker(3, 100);
        assert_eq!(b.try_acquire(0), Ok(()));
        b.record_failure(0);
        b.record_failure(1);
        assert_eq!(
            b.state(1),
            BreakerState::Closed {
                consecutive_failures: 2
            }
        );
        assert!(b.permits(1));
        assert_eq!(b.try_acquire(1), Ok(()));
    }

    #[test]
    fn success_resets_the_failure_count() {
        let mut b = breaker(2, 100);
        b.record_failure(0);
        b.record_success(1);
        b.record_failure(2);
        assert_eq!(
            b.state(2),
            BreakerState::Closed {
                consecutive_failures: 1
            }
        );
    }

    #[test]
    fn threshold_opens_and_refuses_until_timeout() {
        let mut b = breaker(2, 100);
        b.record_failure(0);
        b.record_failure(10);
        assert_eq!(b.state(10), BreakerState::Open { until_ms: 110 });
        assert_eq!(
            b.try_acquire(109),
            Err(BreakerRefusal::Open { retry_at_ms: 110 })
        );
        assert!(!b.permits(109));
    }

    #[test]
    fn timeout_half_opens_with_a_single_probe() {
        let mut b = breaker(1, 100);
        b.record_failure(0);
        assert_eq!(
            b.state(100),
            BreakerState::HalfOpen {
                probe_in_flight: false
            }
        );
        assert!(b.permits(100));
        assert_eq!(b.try_acquire(100), Ok(()));
        assert!(!b.permits(101));
        assert_eq!(b.try_acquire(101), Err(BreakerRefusal::ProbeInFlight));
    }

    #[test]
    fn probe_success_closes() {
        let mut b = breaker(1, 100);
        b.record_failure(0);
        b.try_acquire(150).unwrap();
        b.record_success(160);
        assert_eq!(
            b.state(160),
            BreakerState::Closed {
                consecutive_failures: 0
            }
        );
        assert_eq!(b.try_acquire(161), Ok(()));
    }

    #[test]
    fn probe_failure_reopens_for_a_full_timeout() {
        let mut b = breaker(3, 100);
        for t in 0..3 {
            b.record_failure(t);
        }
        b.try_acquire(200).unwrap();
        b.record_failure(250);
        assert_eq!(b.state(250), BreakerState::Open { until_ms: 350 });
        assert!(!b.permits(349));
        assert!(b.permits(350));
    }

    #[test]
    fn zero_threshold_is_one() {
        let mut b = breaker(0, 10);
        b.record_failure(5);
        assert_eq!(b.state(5), BreakerState::Open { until_ms: 15 });
    }

    #[test]
    fn late_failure_while_open_restarts_the_timeout() {
        let mut b = breaker(1, 100);
        b.record_failure(0);
        b.record_failure(50);
        assert_eq!(b.state(100), BreakerState::Open { until_ms: 150 });
    }

    #[test]
    fn clock_near_the_end_of_time_saturates() {
        let mut b = breaker(1, 100);
        b.record_failure(u64::MAX - 1);
        assert_eq!(
            b.state(u64::MAX - 1),
            BreakerState::Open { until_ms: u64::MAX }
        );
    }
}
