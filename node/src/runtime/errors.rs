//! Errors of the runtime's operations, each with a stable code that HTTP
//! answers, metrics and scripts rely on.

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use super::cgroup::CgroupError;
use super::connection::{CallError, OwnedFailure};
use super::frame::{FailureCode, FrameError};

/// Why invoking a skill failed. [`InvokeError::code`] is stable.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum InvokeError {
    /// No skill is deployed under this package name.
    #[error("no skill {package} is deployed on this node")]
    NoSuchSkill {
        /// The package asked for.
        package: String,
    },
    /// The skill returned an error of its own.
    #[error("skill error {skill_code}: {message}")]
    Skill {
        /// The skill's own code.
        skill_code: String,
        /// The skill's message.
        message: String,
    },
    /// The call ran past its deadline and was interrupted.
    #[error("{message}")]
    DeadlineExceeded {
        /// The worker's detail.
        message: String,
    },
    /// The call hit the skill's memory limit.
    #[error("{message}")]
    MemoryLimit {
        /// The worker's detail.
        message: String,
    },
    /// The skill trapped; the worker replaced its instance.
    #[error("{message}")]
    Trap {
        /// The worker's detail.
        message: String,
    },
    /// The skill has no live worker (starting, restarting, failed) or the
    /// worker died during the call.
    #[error("worker for {package} is unavailable: {reason}")]
    WorkerUnavailable {
        /// The package.
        package: String,
        /// What the worker is doing instead.
        reason: String,
    },
    /// The worker has as many calls in flight as it may; try again later.
    #[error("worker for {package} is overloaded ({max_in_flight} calls in flight)")]
    Overloaded {
        /// The package.
        package: String,
        /// The in-flight bound.
        max_in_flight: usize,
    },
    /// The worker did not answer within the node's call timeout.
    #[error("worker for {package} did not answer within {timeout:?}")]
    WorkerTimeout {
        /// The package.
        package: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The skill's route stayed paused (a swap) longer than a call may wait,
    /// or too many calls were already waiting.
    #[error("skill {package} is paused: {reason}")]
    Paused {
        /// The package.
        package: String,
        /// The wait bound that was hit.
        reason: String,
    },
    /// The request cannot be sent (input too large, op name too long) or the
    /// worker refused it as malformed.
    #[error("bad request: {message}")]
    BadRequest {
        /// What was wrong.
        message: String,
    },
    /// The input is larger than one frame can carry.
    #[error("input of {length} bytes exceeds the {limit}-byte limit")]
    InputTooLarge {
        /// The input's size.
        length: usize,
        /// The bound.
        limit: usize,
    },
    /// Anything else inside the worker.
    #[error("worker error: {message}")]
    Internal {
        /// The detail.
        message: String,
    },
}

impl InvokeError {
    /// The stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoSuchSkill { .. } => "no_such_skill",
            Self::Skill { .. } => "skill_error",
            Self::DeadlineExceeded { .. } => "deadline_exceeded",
            Self::MemoryLimit { .. } => "memory_limit",
            Self::Trap { .. } => "trap",
            Self::WorkerUnavailable { .. } => "worker_unavailable",
            Self::Overloaded { .. } => "overloaded",
            Self::WorkerTimeout { .. } => "worker_timeout",
            Self::Paused { .. } => "paused",
            Self::BadRequest { .. } => "bad_request",
            Self::InputTooLarge { .. } => "input_too_large",
            Self::Internal { .. } => "internal",
        }
    }

    /// Every code [`InvokeError::code`] can return.
    pub const CODES: [&'static str; 12] = [
        "no_such_skill",
        "skill_error",
        "deadline_exceeded",
        "memory_limit",
        "trap",
        "worker_unavailable",
        "overloaded",
        "worker_timeout",
        "paused",
        "bad_request",
        "input_too_large",
        "internal",
    ];

    /// Maps a connection-level failure of a call to `package`'s worker.
    pub fn from_call(package: &str, error: CallError) -> Self {
        match error {
            CallError::Worker(OwnedFailure {
                code,
                skill_code,
                message,
            }) => match code {
                FailureCode::Skill => Self::Skill {
                    skill_code,
                    message,
                },
                FailureCode::DeadlineExceeded => Self::DeadlineExceeded { message },
                FailureCode::MemoryLimit => Self::MemoryLimit { message },
                FailureCode::Trap => Self::Trap { message },
                FailureCode::BadRequest => Self::BadRequest { message },
                FailureCode::LoadFailed | FailureCode::Internal => Self::Internal { message },
            },
            CallError::Closed { reason } => Self::WorkerUnavailable {
                package: package.to_string(),
                reason,
            },
            CallError::Overloaded { max_in_flight } => Self::Overloaded {
                package: package.to_string(),
                max_in_flight,
            },
            CallError::TimedOut { timeout } => Self::WorkerTimeout {
                package: package.to_string(),
                timeout,
            },
            CallError::Frame(FrameError::TooLarge { length }) => Self::InputTooLarge {
                length,
                limit: super::frame::MAX_PAYLOAD,
            },
            CallError::Frame(error) => Self::BadRequest {
                message: error.to_string(),
            },
        }
    }
}

/// Why a skill could not be deployed (or a worker started).
#[derive(Debug, Error)]
pub enum DeployError {
    /// The spec itself is unusable.
    #[error("invalid skill spec: {field} {why}")]
    InvalidSpec {
        /// The offending field.
        field: &'static str,
        /// Why.
        why: String,
    },
    /// The worker refused the skill at load; `message` names the problem
    /// (not a component, wrong world, missing export, sha256 mismatch...).
    #[error("skill {package}@{version} refused at load: {message}")]
    Load {
        /// The package.
        package: String,
        /// The version.
        version: String,
        /// The worker's description of the problem.
        message: String,
    },
    /// The worker's cgroup could not be made.
    #[error("cgroup for {package}: {source}")]
    Cgroup {
        /// The package.
        package: String,
        /// What failed.
        source: CgroupError,
    },
    /// The worker's socket could not be made.
    #[error("worker socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The worker process could not be started.
    #[error("starting worker {exe}: {source}")]
    Spawn {
        /// The executable.
        exe: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The worker exited before it was ready.
    #[error("worker for {package} exited before it was ready: {status}")]
    ExitedEarly {
        /// The package.
        package: String,
        /// Its exit status.
        status: String,
    },
    /// The worker did not get ready in time.
    #[error("worker for {package} was not ready within {timeout:?} ({stage})")]
    StartTimeout {
        /// The package.
        package: String,
        /// The bound.
        timeout: Duration,
        /// What it was waiting for.
        stage: &'static str,
    },
    /// The worker broke the protocol during startup.
    #[error("worker for {package} broke the startup protocol: {detail}")]
    Protocol {
        /// The package.
        package: String,
        /// What was wrong.
        detail: String,
    },
    /// The skill's `health()` failed on the fresh worker.
    #[error("skill {package} failed its health check: {source}")]
    Unhealthy {
        /// The package.
        package: String,
        /// The failure.
        source: InvokeError,
    },
}

impl DeployError {
    /// The stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidSpec { .. } => "invalid_spec",
            Self::Load { .. } => "load_failed",
            Self::Cgroup { .. } => "cgroup_failed",
            Self::Socket { .. } => "socket_failed",
            Self::Spawn { .. } => "spawn_failed",
            Self::ExitedEarly { .. } => "worker_exited",
            Self::StartTimeout { .. } => "start_timeout",
            Self::Protocol { .. } => "protocol_error",
            Self::Unhealthy { .. } => "unhealthy",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_list_matches_every_variant() {
        let samples = [
            InvokeError::NoSuchSkill {
                package: "p".into(),
            },
            InvokeError::Skill {
                skill_code: "c".into(),
                message: "m".into(),
            },
            InvokeError::DeadlineExceeded {
                message: "m".into(),
            },
            InvokeError::MemoryLimit {
                message: "m".into(),
            },
            InvokeError::Trap {
                message: "m".into(),
            },
            InvokeError::WorkerUnavailable {
                package: "p".into(),
                reason: "r".into(),
            },
            InvokeError::Overloaded {
                package: "p".into(),
                max_in_flight: 1,
            },
            InvokeError::WorkerTimeout {
                package: "p".into(),
                timeout: Duration::ZERO,
            },
            InvokeError::Paused {
                package: "p".into(),
                reason: "r".into(),
            },
            InvokeError::BadRequest {
                message: "m".into(),
            },
            InvokeError::InputTooLarge {
                length: 2,
                limit: 1,
            },
            InvokeError::Internal {
                message: "m".into(),
            },
        ];
        let codes: Vec<_> = samples.iter().map(InvokeError::code).collect();
        assert_eq!(codes, InvokeError::CODES);
    }

    #[test]
    fn worker_failures_map_to_their_codes() {
        let failure = |code| {
            CallError::Worker(OwnedFailure {
                code,
                skill_code: "k".into(),
                message: "m".into(),
            })
        };
        assert_eq!(
            InvokeError::from_call("p", failure(FailureCode::DeadlineExceeded)).code(),
            "deadline_exceeded"
        );
        assert_eq!(
            InvokeError::from_call("p", failure(FailureCode::MemoryLimit)).code(),
            "memory_limit"
        );
        assert_eq!(
            InvokeError::from_call("p", failure(FailureCode::Trap)).code(),
            "trap"
        );
        assert_eq!(
            InvokeError::from_call("p", failure(FailureCode::Skill)),
            InvokeError::Skill {
                skill_code: "k".into(),
                message: "m".into()
            }
        );
        assert_eq!(
            InvokeError::from_call(
                "p",
                CallError::Closed {
                    reason: "gone".into()
                }
            )
            .code(),
            "worker_unavailable"
        );
        assert_eq!(
            InvokeError::from_call("p", CallError::Frame(FrameError::TooLarge { length: 9 }))
                .code(),
            "input_too_large"
        );
    }
}
