//! The host's clock.

use crate::bindings::clawmesh::skill::host;

/// Milliseconds on the clock the host grants. The host may virtualise it (tests,
/// replay), so use it instead of WASI wall-clock time for anything the skill
/// stores or compares.
pub fn now_ms() -> u64 {
    host::now_ms()
}
