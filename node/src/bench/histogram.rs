//! A log-linear latency histogram in the spirit of HdrHistogram: exact below
//! [`SUB_BUCKETS`] nanoseconds, then [`SUB_BUCKETS`] equal buckets per power
//! of two, so every recorded value is kept within 1 / [`SUB_BUCKETS`] of its
//! true value with constant memory and O(1) recording.

use std::time::Duration;

/// log2 of the buckets per power of two.
const SUB_BUCKET_BITS: u32 = 7;
/// Buckets per power of two: the relative precision is 1 / this (< 1 %).
pub const SUB_BUCKETS: u64 = 1 << SUB_BUCKET_BITS;
/// Largest value told apart, in nanoseconds (~68.7 s); larger values are
/// counted in the top bucket and still reported exactly by [`LatencyHistogram::max`].
pub const MAX_TRACKABLE_NANOS: u64 = (1 << 36) - 1;
/// Buckets needed to cover `0..=MAX_TRACKABLE_NANOS`.
const BUCKETS: usize = bucket_of(MAX_TRACKABLE_NANOS) + 1;

/// Bucket index of `nanos` (values past the range clamp to the last bucket).
const fn bucket_of(nanos: u64) -> usize {
    let v = if nanos > MAX_TRACKABLE_NANOS {
        MAX_TRACKABLE_NANOS
    } else {
        nanos
    };
    if v < SUB_BUCKETS {
        return v as usize;
    }
    let exponent = 63 - v.leading_zeros();
    let shift = exponent - SUB_BUCKET_BITS;
    let mantissa = (v >> shift) - SUB_BUCKETS;
    (SUB_BUCKETS + ((shift as u64) << SUB_BUCKET_BITS) + mantissa) as usize
}

/// Largest value that falls into `bucket`.
const fn highest_in_bucket(bucket: usize) -> u64 {
    let b = bucket as u64;
    if b < SUB_BUCKETS {
        return b;
    }
    let shift = (b - SUB_BUCKETS) >> SUB_BUCKET_BITS;
    let mantissa = (b - SUB_BUCKETS) & (SUB_BUCKETS - 1);
    ((SUB_BUCKETS + mantissa + 1) << shift) - 1
}

/// Counts of latencies, mergeable across connections.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    counts: Vec<u64>,
    total: u64,
    min: u64,
    max: u64,
    sum: u128,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            // Zeroed allocation: pages a connection never records into are
            // never touched, so a thousand of these stay cheap.
            counts: vec![0; BUCKETS],
            total: 0,
            min: u64::MAX,
            max: 0,
            sum: 0,
        }
    }

    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        self.record_nanos(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Records one latency in nanoseconds.
    pub fn record_nanos(&mut self, nanos: u64) {
        self.counts[bucket_of(nanos)] += 1;
        self.total += 1;
        self.min = self.min.min(nanos);
        self.max = self.max.max(nanos);
        self.sum += u128::from(nanos);
    }

    /// Adds every count of `other` into this one.
    pub fn merge(&mut self, other: &Self) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// How many latencies were recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The largest latency recorded (exact), zero when empty.
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max)
    }

    /// The smallest latency recorded (exact), zero when empty.
    pub fn min(&self) -> Duration {
        if self.total == 0 {
            Duration::ZERO
        } else {
            Duration::from_nanos(self.min)
        }
    }

    /// The mean latency, zero when empty.
    pub fn mean(&self) -> Duration {
        if self.total == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(u64::try_from(self.sum / u128::from(self.total)).unwrap_or(u64::MAX))
    }

    /// The latency at `percentile` (0–100): the smallest bucket bound that at
    /// least that share of the recorded values does not exceed, never more
    /// than the recorded maximum. Zero when empty.
    pub fn percentile(&self, percentile: f64) -> Duration {
        if self.total == 0 {
            return Duration::ZERO;
        }
        let share = percentile.clamp(0.0, 100.0) / 100.0;
        // The rank of the value asked for, 1-based (the 0th percentile is
        // the smallest value).
        let rank = ((share * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (bucket, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let bound = highest_in_bucket(bucket).max(self.min);
                return Duration::from_nanos(bound.min(self.max));
            }
        }
        Duration::from_nanos(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn within_precision(actual: Duration, expected_nanos: u64) -> bool {
        let actual = actual.as_nanos() as f64;
        let expected = expected_nanos as f64;
        (actual - expected).abs() <= expected / SUB_BUCKETS as f64 + 1.0
    }

    #[test]
    fn percentiles_of_one_to_a_hundred_thousand() {
        let mut h = LatencyHistogram::new();
        for v in 1..=100_000 {
            h.record_nanos(v);
        }
        assert_eq!(h.count(), 100_000);
        for (p, expected) in [
            (50.0, 50_000),
            (90.0, 90_000),
            (99.0, 99_000),
            (99.9, 99_900),
        ] {
            let got = h.percentile(p);
            assert!(
                within_precision(got, expected),
                "p{p}: {got:?} vs {expected} ns"
            );
        }
        assert_eq!(h.percentile(100.0), Duration::from_nanos(100_000));
        assert_eq!(h.percentile(0.0), Duration::from_nanos(1));
        assert_eq!(h.max(), Duration::from_nanos(100_000));
        assert_eq!(h.min(), Duration::from_nanos(1));
        assert_eq!(h.mean(), Duration::from_nanos(50_000));
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = LatencyHistogram::new();
        for v in [3, 3, 3, 7, 100] {
            h.record_nanos(v);
        }
        assert_eq!(h.percentile(50.0), Duration::from_nanos(3));
        assert_eq!(h.percentile(80.0), Duration::from_nanos(7));
        assert_eq!(h.percentile(99.0), Duration::from_nanos(100));
    }

    #[test]
    fn a_skewed_distribution_keeps_its_tail() {
        // 990 fast calls at 100 µs and 10 slow ones at 20 ms: the p99 is
        // still fast, the p99.5 and max are the slow ones.
        let mut h = LatencyHistogram::new();
        for _ in 0..990 {
            h.record(Duration::from_micros(100));
        }
        for _ in 0..10 {
            h.record(Duration::from_millis(20));
        }
        assert!(within_precision(h.percentile(99.0), 100_000));
        assert!(within_precision(h.percentile(99.5), 20_000_000));
        assert_eq!(h.max(), Duration::from_millis(20));
    }

    #[test]
    fn empty_histogram_reports_zero() {
        let h = LatencyHistogram::new();
        assert_eq!(h.percentile(50.0), Duration::ZERO);
        assert_eq!(h.max(), Duration::ZERO);
        assert_eq!(h.min(), Duration::ZERO);
        assert_eq!(h.mean(), Duration::ZERO);
    }

    #[test]
    fn values_past_the_range_clamp_but_max_stays_exact() {
        let mut h = LatencyHistogram::new();
        h.record(Duration::from_secs(1000));
        assert_eq!(h.max(), Duration::from_secs(1000));
        assert_eq!(h.percentile(50.0), Duration::from_secs(1000));
    }

    proptest! {
        #[test]
        fn every_value_lands_in_a_bucket_that_bounds_it(v in 0..=MAX_TRACKABLE_NANOS) {
            let bucket = bucket_of(v);
            prop_assert!(bucket < BUCKETS);
            let high = highest_in_bucket(bucket);
            prop_assert!(high >= v);
            prop_assert!((high - v) as f64 <= v as f64 / SUB_BUCKETS as f64 + 1.0);
            if bucket > 0 {
                prop_assert!(highest_in_bucket(bucket - 1) < v);
            }
        }

        #[test]
        fn merging_equals_recording_into_one(
            a in proptest::collection::vec(0u64..10_000_000, 0..200),
            b in proptest::collection::vec(0u64..10_000_000, 0..200),
        ) {
            let mut left = LatencyHistogram::new();
            let mut right = LatencyHistogram::new();
            let mut all = LatencyHistogram::new();
            for &v in &a { left.record_nanos(v); all.record_nanos(v); }
            for &v in &b { right.record_nanos(v); all.record_nanos(v); }
            left.merge(&right);
            prop_assert_eq!(left.count(), all.count());
            for p in [0.0, 50.0, 90.0, 99.0, 100.0] {
                prop_assert_eq!(left.percentile(p), all.percentile(p));
            }
            prop_assert_eq!(left.max(), all.max());
        }
    }
}
