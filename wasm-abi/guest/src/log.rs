//! Logging through the host. The host bounds the bytes logged per call and
//! drops the excess, so logging never fails a call.

use crate::bindings::clawmesh::skill::host::{self, LogLevel};

/// Logs `message` at trace level.
pub fn trace(message: &str) {
    host::log(LogLevel::Trace, message);
}

/// Logs `message` at debug level.
pub fn debug(message: &str) {
    host::log(LogLevel::Debug, message);
}

/// Logs `message` at info level.
pub fn info(message: &str) {
    host::log(LogLevel::Info, message);
}

/// Logs `message` at warn level.
pub fn warn(message: &str) {
    host::log(LogLevel::Warn, message);
}

/// Logs `message` at error level.
pub fn error(message: &str) {
    host::log(LogLevel::Error, message);
}
