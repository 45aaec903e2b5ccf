//! Engine configuration: limits, deadline, pool size, compile cache.

use std::path::PathBuf;
use std::time::Duration;

/// Everything a [`crate::SkillEngine`] is built from. `Default` gives the
/// documented defaults (docs/ABI.md, "Limits").
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EngineConfig {
    /// Most bytes of linear memory one instance may hold; growing past it
    /// traps with [`crate::CallError::MemoryLimit`]. Default 64 MiB.
    pub max_memory_bytes: u64,
    /// Most elements one table may hold; growing past it traps with
    /// [`crate::CallError::TableLimit`]. Default 10 000.
    pub max_table_elements: u32,
    /// Longest one call may run before it is interrupted with
    /// [`crate::CallError::DeadlineExceeded`]. Default 1 s.
    pub call_deadline: Duration,
    /// Longest a `snapshot` or `restore` may run. They move the whole state
    /// (a 64 MiB state takes a good part of a second on a busy machine), so
    /// they get more than a call; the node's swap step timeouts bound them
    /// from outside as well. Default 10 s; never below `call_deadline`.
    pub state_call_deadline: Duration,
    /// How often the epoch ticker thread advances the engine's epoch: the
    /// deadline's resolution. Default 10 ms.
    pub epoch_tick: Duration,
    /// Most instances alive at once in this engine (the pooling allocator
    /// reserves slots for this many). Default 4.
    pub max_instances: u32,
    /// Where compiled components are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Most bytes of log messages one call may write; the rest is dropped and
    /// reported to [`crate::HostLog::dropped`]. Default 64 KiB.
    pub max_log_bytes_per_call: usize,
}

impl EngineConfig {
    /// Default [`EngineConfig::max_memory_bytes`]: 64 MiB.
    pub const DEFAULT_MAX_MEMORY_BYTES: u64 = 64 << 20;
    /// Default [`EngineConfig::max_table_elements`].
    pub const DEFAULT_MAX_TABLE_ELEMENTS: u32 = 10_000;
    /// Default [`EngineConfig::call_deadline`]: 1 s.
    pub const DEFAULT_CALL_DEADLINE: Duration = Duration::from_secs(1);
    /// Default [`EngineConfig::state_call_deadline`]: 10 s.
    pub const DEFAULT_STATE_CALL_DEADLINE: Duration = Duration::from_secs(10);
    /// Default [`EngineConfig::epoch_tick`]: 10 ms.
    pub const DEFAULT_EPOCH_TICK: Duration = Duration::from_millis(10);
    /// Default [`EngineConfig::max_instances`]: a worker hosts one skill and
    /// needs two instances only while replacing a poisoned one.
    pub const DEFAULT_MAX_INSTANCES: u32 = 4;
    /// Default [`EngineConfig::max_log_bytes_per_call`]: 64 KiB.
    pub const DEFAULT_MAX_LOG_BYTES_PER_CALL: usize = 64 << 10;

    /// Epoch ticks a call may run: the deadline rounded up to whole ticks,
    /// plus one because the first tick may come at any point after the call
    /// starts.
    pub(crate) fn deadline_ticks(&self) -> u64 {
        self.ticks(self.call_deadline)
    }

    /// The deadline of `snapshot` and `restore` (at least a call's).
    pub(crate) fn state_deadline(&self) -> Duration {
        self.state_call_deadline.max(self.call_deadline)
    }

    /// Epoch ticks a `snapshot` or `restore` may run.
    pub(crate) fn state_deadline_ticks(&self) -> u64 {
        self.ticks(self.state_deadline())
    }

    fn ticks(&self, deadline: Duration) -> u64 {
        let tick = self.epoch_tick.as_nanos().max(1);
        let ticks = deadline.as_nanos().div_ceil(tick);
        u64::try_from(ticks)
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_memory_bytes: Self::DEFAULT_MAX_MEMORY_BYTES,
            max_table_elements: Self::DEFAULT_MAX_TABLE_ELEMENTS,
            call_deadline: Self::DEFAULT_CALL_DEADLINE,
            state_call_deadline: Self::DEFAULT_STATE_CALL_DEADLINE,
            epoch_tick: Self::DEFAULT_EPOCH_TICK,
            max_instances: Self::DEFAULT_MAX_INSTANCES,
            cache_dir: None,
            max_log_bytes_per_call: Self::DEFAULT_MAX_LOG_BYTES_PER_CALL,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_ticks_round_up_and_add_one() {
        let cfg = EngineConfig {
            call_deadline: Duration::from_millis(95),
            epoch_tick: Duration::from_millis(10),
            ..EngineConfig::default()
        };
        assert_eq!(cfg.deadline_ticks(), 11);
        assert_eq!(EngineConfig::default().deadline_ticks(), 101);
        assert_eq!(EngineConfig::default().state_deadline_ticks(), 1001);
        let short = EngineConfig {
            call_deadline: Duration::from_secs(20),
            ..EngineConfig::default()
        };
        assert_eq!(short.state_deadline(), Duration::from_secs(20));
    }
}
