//! What the host grants a skill: a clock it may virtualise and a log sink.

use std::sync::Arc;
use std::time::Instant;

/// The clock behind the `now-ms` import. Implement it to virtualise time
/// (tests, replay); [`SystemClock`] is the real one.
pub trait HostClock: Send + Sync {
    /// Milliseconds since an origin the clock chooses; must never go backwards
    /// for one instance.
    fn now_ms(&self) -> u64;
}

/// Where a skill's log lines go (after the per-call byte bound).
pub trait HostLog: Send + Sync {
    /// Receives one log line from the skill.
    fn log(&self, level: LogLevel, message: &str);

    /// Told how many bytes of log lines the bound dropped during one call, once
    /// at the end of that call when it is not zero.
    fn dropped(&self, bytes: usize) {
        let _ = bytes;
    }
}

/// Severity of a skill's log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// Finest detail.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected the skill handled.
    Warn,
    /// Something failed.
    Error,
}

impl From<crate::bindings::clawmesh::skill::host::LogLevel> for LogLevel {
    fn from(level: crate::bindings::clawmesh::skill::host::LogLevel) -> Self {
        use crate::bindings::clawmesh::skill::host::LogLevel as Wit;
        match level {
            Wit::Trace => Self::Trace,
            Wit::Debug => Self::Debug,
            Wit::Info => Self::Info,
            Wit::Warn => Self::Warn,
            Wit::Error => Self::Error,
        }
    }
}

/// The real clock: milliseconds since this value was created, from the
/// monotonic system clock.
#[derive(Clone, Copy, Debug)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A clock starting at 0 now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }

    /// The same, shared as the `Arc` that [`crate::SkillEngine::instantiate`]
    /// takes.
    pub fn shared() -> Arc<dyn HostClock> {
        Arc::new(Self::new())
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl HostClock for SystemClock {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// Forwards skill log lines to `tracing` under the target `skill`, tagged with
/// the skill's name.
#[derive(Clone, Debug)]
pub struct TracingLog {
    skill: String,
}

impl TracingLog {
    /// A sink tagging every line with `skill` (e.g. `counter@1.2.0`).
    pub fn new(skill: impl Into<String>) -> Self {
        Self {
            skill: skill.into(),
        }
    }
}

impl HostLog for TracingLog {
    fn log(&self, level: LogLevel, message: &str) {
        let skill = self.skill.as_str();
        match level {
            LogLevel::Trace => tracing::trace!(target: "skill", skill, "{message}"),
            LogLevel::Debug => tracing::debug!(target: "skill", skill, "{message}"),
            LogLevel::Info => tracing::info!(target: "skill", skill, "{message}"),
            LogLevel::Warn => tracing::warn!(target: "skill", skill, "{message}"),
            LogLevel::Error => tracing::error!(target: "skill", skill, "{message}"),
        }
    }

    fn dropped(&self, bytes: usize) {
        tracing::warn!(target: "skill", skill = self.skill.as_str(), bytes, "log bound dropped bytes");
    }
}
