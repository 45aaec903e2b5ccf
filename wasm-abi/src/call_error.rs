//! Errors of calling into a skill instance, and how wasmtime errors map to them.

use std::time::Duration;

use wasmtime::Trap;

use crate::limiter::{MemoryLimitExceeded, TableLimitExceeded};

/// Why a call into a skill failed. Every variant but [`CallError::Skill`]
/// poisons the instance: the caller must instantiate a new one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The skill returned an error on purpose; the instance stays usable.
    #[error("skill error {code}: {message}")]
    Skill {
        /// The skill's error code (docs/ABI.md lists the shared ones).
        code: String,
        /// The skill's message.
        message: String,
    },
    /// The call ran past its deadline and was interrupted.
    #[error("call exceeded its deadline of {deadline:?}")]
    DeadlineExceeded {
        /// The configured deadline.
        deadline: Duration,
    },
    /// The call tried to grow linear memory past the limit.
    #[error("call exceeded the memory limit of {limit} bytes")]
    MemoryLimit {
        /// The configured limit in bytes.
        limit: u64,
    },
    /// The call tried to grow a table past the limit.
    #[error("call exceeded the table limit of {limit} elements")]
    TableLimit {
        /// The configured limit in elements.
        limit: u32,
    },
    /// The skill trapped (panic, unreachable, out-of-bounds access, ...).
    #[error("skill trapped: {0}")]
    Trap(String),
    /// An earlier call trapped, so this instance refuses further calls.
    #[error("instance is poisoned by an earlier trap; instantiate a new one")]
    Poisoned,
}

impl CallError {
    /// Maps a wasmtime error from a call to the limit or deadline it hit, or
    /// else a trap with wasmtime's description (including the wasm backtrace).
    pub(crate) fn from_wasmtime(err: &wasmtime::Error, deadline: Duration) -> Self {
        for cause in err.chain() {
            if let Some(limit) = cause.downcast_ref::<MemoryLimitExceeded>() {
                return Self::MemoryLimit { limit: limit.limit };
            }
            if let Some(limit) = cause.downcast_ref::<TableLimitExceeded>() {
                return Self::TableLimit { limit: limit.limit };
            }
            if let Some(Trap::Interrupt) = cause.downcast_ref::<Trap>() {
                return Self::DeadlineExceeded { deadline };
            }
        }
        Self::Trap(format!("{err:#}"))
    }

    /// Whether the instance can serve again after this error.
    pub fn poisons_instance(&self) -> bool {
        !matches!(self, Self::Skill { .. })
    }
}

impl From<crate::bindings::SkillError> for CallError {
    fn from(e: crate::bindings::SkillError) -> Self {
        Self::Skill {
            code: e.code,
            message: e.message,
        }
    }
}
