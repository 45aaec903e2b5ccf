//! When a running fetch looks for more providers: sans-I/O. A fetch starts
//! with the providers its caller knew; a holder that appears later (it
//! starts, fetches the blob itself, or connects) joins only if the fetch
//! asks again. It asks when it runs short (some missing chunk has no live
//! peer left that might hold it) or stalls (no chunk accepted for a while),
//! at most `max_lookups` times, and a fetch with no peer left waits up to
//! `starved_wait` for one before it ends with `NoProviders`.

use std::time::{Duration, Instant};

/// Default `JoinConfig::max_lookups`.
pub const DEFAULT_MAX_LOOKUPS: u32 = 16;
/// Default `JoinConfig::retry_every`.
pub const DEFAULT_LOOKUP_EVERY: Duration = Duration::from_secs(1);
/// Default `JoinConfig::stall_after`.
pub const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(5);
/// Default `JoinConfig::starved_wait`.
pub const DEFAULT_STARVED_WAIT: Duration = Duration::from_secs(10);

/// Bounds on the provider lookups of one running fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinConfig {
    /// Lookups one fetch makes after it started (0: providers never join
    /// a running fetch).
    pub max_lookups: u32,
    /// Least time between two lookups.
    pub retry_every: Duration,
    /// No chunk accepted for this long (requests in flight or not): look.
    pub stall_after: Duration,
    /// How long a fetch with no live peer for some chunk and nothing in
    /// flight keeps looking before it ends with `NoProviders`.
    pub starved_wait: Duration,
}

impl Default for JoinConfig {
    fn default() -> Self {
        Self {
            max_lookups: DEFAULT_MAX_LOOKUPS,
            retry_every: DEFAULT_LOOKUP_EVERY,
            stall_after: DEFAULT_STALL_AFTER,
            starved_wait: DEFAULT_STARVED_WAIT,
        }
    }
}

/// The lookup policy of one fetch.
#[derive(Debug)]
pub struct Rejoin {
    config: JoinConfig,
    lookups: u32,
    in_flight: bool,
    last_lookup: Option<Instant>,
    last_progress: Instant,
    starved_since: Option<Instant>,
}

impl Rejoin {
    /// The policy of a fetch that started at `now`.
    pub fn new(config: JoinConfig, now: Instant) -> Self {
        Self {
            config,
            lookups: 0,
            in_flight: false,
            last_lookup: None,
            last_progress: now,
            starved_since: None,
        }
    }

    /// Lookups started so far.
    pub fn lookups(&self) -> u32 {
        self.lookups
    }

    /// A chunk was accepted.
    pub fn on_progress(&mut self, now: Instant) {
        self.last_progress = now;
    }

    /// Whether to start a lookup now; `short` says (lazily: it costs a walk
    /// over the chunks) whether some missing chunk has no live peer left.
    /// A `true` counts the lookup as started.
    pub fn want_lookup(&mut self, now: Instant, short: impl FnOnce() -> bool) -> bool {
        if self.in_flight || self.lookups >= self.config.max_lookups {
            return false;
        }
        let since_lookup = self.last_lookup.map(|t| now.saturating_duration_since(t));
        if since_lookup.is_some_and(|d| d < self.config.retry_every) {
            return false;
        }
        // A stall asks again only once per `stall_after`.
        let quiet = now.saturating_duration_since(self.last_progress);
        let stalled = quiet >= self.config.stall_after
            && since_lookup.is_none_or(|d| d >= self.config.stall_after);
        if !stalled && !short() {
            return false;
        }
        self.in_flight = true;
        self.lookups += 1;
        self.last_lookup = Some(now);
        true
    }

    /// The lookup started last has answered.
    pub fn on_lookup_done(&mut self) {
        self.in_flight = false;
    }

    /// The plan has peers that might serve every missing chunk again (or
    /// requests in flight).
    pub fn fed(&mut self) {
        self.starved_since = None;
    }

    /// The plan has nothing in flight and no live peer for some chunk:
    /// whether to keep waiting for a lookup (one in flight, or one more
    /// allowed within `starved_wait`) rather than end the fetch.
    pub fn keep_waiting(&mut self, now: Instant) -> bool {
        let since = *self.starved_since.get_or_insert(now);
        if self.in_flight {
            return true;
        }
        self.lookups < self.config.max_lookups
            && now.saturating_duration_since(since) < self.config.starved_wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn config() -> JoinConfig {
        JoinConfig {
            max_lookups: 3,
            retry_every: S,
            stall_after: 5 * S,
            starved_wait: 10 * S,
        }
    }

    #[test]
    fn a_short_fetch_looks_at_once_then_once_per_interval_within_the_bound() {
        let t0 = Instant::now();
        let mut r = Rejoin::new(config(), t0);
        assert!(!r.want_lookup(t0, || false), "fed and moving: no lookup");
        assert!(r.want_lookup(t0, || true));
        assert!(
            !r.want_lookup(t0 + 2 * S, || true),
            "one in flight at a time"
        );
        r.on_lookup_done();
        assert!(!r.want_lookup(t0 + S / 2, || true), "spaced by retry_every");
        assert!(r.want_lookup(t0 + S, || true));
        r.on_lookup_done();
        assert!(r.want_lookup(t0 + 2 * S, || true));
        r.on_lookup_done();
        assert!(!r.want_lookup(t0 + 9 * S, || true), "max_lookups reached");
        assert_eq!(r.lookups(), 3);
    }

    #[test]
    fn a_stalled_fetch_looks_once_per_stall_interval() {
        let t0 = Instant::now();
        let mut r = Rejoin::new(config(), t0);
        assert!(!r.want_lookup(t0 + 4 * S, || false));
        assert!(r.want_lookup(t0 + 5 * S, || false));
        r.on_lookup_done();
        assert!(!r.want_lookup(t0 + 7 * S, || false));
        assert!(r.want_lookup(t0 + 10 * S, || false));
        r.on_lookup_done();
        r.on_progress(t0 + 11 * S);
        assert!(!r.want_lookup(t0 + 15 * S, || false));
        assert!(r.want_lookup(t0 + 16 * S, || false));
    }

    #[test]
    fn a_starved_fetch_waits_for_a_lookup_in_flight_then_gives_up_after_the_wait() {
        let t0 = Instant::now();
        let mut r = Rejoin::new(config(), t0);
        assert!(r.keep_waiting(t0));
        assert!(r.want_lookup(t0, || true));
        assert!(r.keep_waiting(t0 + 60 * S), "a lookup in flight is awaited");
        r.on_lookup_done();
        assert!(!r.keep_waiting(t0 + 10 * S), "starved_wait is over");
        r.fed();
        assert!(r.keep_waiting(t0 + 20 * S), "starved again: a new wait");
        assert!(r.keep_waiting(t0 + 29 * S));
        assert!(!r.keep_waiting(t0 + 30 * S));
    }

    #[test]
    fn no_lookups_allowed_means_no_wait() {
        let t0 = Instant::now();
        let mut r = Rejoin::new(
            JoinConfig {
                max_lookups: 0,
                ..config()
            },
            t0,
        );
        assert!(!r.want_lookup(t0 + 60 * S, || true));
        assert!(!r.keep_waiting(t0));
    }
}
