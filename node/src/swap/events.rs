//! What the swap machinery reports: one event per swap, rollback,
//! checkpoint or recovery, streamed to admin subscribers.

use serde::Serialize;

/// Microseconds spent in each step of a swap (0 for steps not reached).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StepTimings {
    /// Start and warm the new worker (outside the pause).
    pub prewarm_us: u64,
    /// Before the pause, with the route's window narrowed: until the calls
    /// at the old worker fit the narrow window (calls still flow; not part
    /// of the pause).
    pub narrow_us: u64,
    /// From pausing the route until every admitted call finished.
    pub drain_us: u64,
    /// Old worker's snapshot, published into the segment.
    pub snapshot_us: u64,
    /// New worker's restore (its migration included).
    pub restore_us: u64,
    /// New worker's `health`.
    pub health_us: u64,
    /// Route flip and resume.
    pub flip_us: u64,
    /// Whole time the route was paused.
    pub pause_us: u64,
}

/// One thing that happened to a package's state or route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SwapEvent {
    /// Package.
    pub package: String,
    /// `swap`, `swap_failed`, `rollback`, `rollback_failed`, `checkpoint`, `recovered`.
    pub kind: &'static str,
    /// Version serving before.
    pub from_version: Option<String>,
    /// Version serving after (or that was tried).
    pub to_version: Option<String>,
    /// How the state got there (`migration`; `migration+replay`: an early
    /// snapshot migrated before the pause plus the calls since replayed;
    /// `down_migration`, `replay`, `checkpoint+replay`).
    pub state_path: Option<&'static str>,
    /// Step timings.
    pub timings: StepTimings,
    /// Bytes of state carried.
    pub state_bytes: u64,
    /// Journal entries replayed.
    pub replayed: u64,
    /// Why it failed (failed kinds only), naming the step.
    pub error: Option<String>,
    /// When, ms since the Unix epoch.
    pub at_unix_ms: u64,
}

impl SwapEvent {
    /// An event of `kind` for `package`, now, with nothing else filled in.
    pub fn new(package: &str, kind: &'static str) -> Self {
        Self {
            package: package.to_string(),
            kind,
            from_version: None,
            to_version: None,
            state_path: None,
            timings: StepTimings::default(),
            state_bytes: 0,
            replayed: 0,
            error: None,
            at_unix_ms: unix_ms(),
        }
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
