//! `clawmesh dev`: the sidecar for a skill author. Watches a component file
//! (or a skill crate, rebuilt with cargo on change) by polling mtimes, and
//! on every change deploys it to a running node as a new version of the
//! package, a hot swap that keeps the skill's state, printing one line per
//! swap with its step timings.

mod timeline;
mod watch;

pub use timeline::timeline_line;
pub use watch::{DevArgs, run_dev};
