//! Zero-downtime hot swap, instant rollback and crash safety (issue 5).
//!
//! docs/SWAP.md describes the design: each running package has a state
//! segment (`clawmesh-shm`) holding its last checkpoint and the one before,
//! a journal of calls acknowledged since the last checkpoint (on its
//! route), durable checkpoints in the data dir, and the orchestrator that
//! swaps, rolls back, checkpoints and recovers restarted workers.

pub mod bench;
mod checkpoint;
pub mod durable;
pub mod events;
pub mod fault;
pub mod journal;
pub mod orchestrator;
pub mod package_state;
mod rollback;
mod standby;
mod steps;
mod takeover;
pub mod worker_segment;

pub use bench::{BenchSwapArgs, run_bench_swap};
pub use checkpoint::{checkpoint, recover_restarted};
pub use durable::{Checkpoint, CheckpointMeta, DeployedEntry, DurableError};
pub use events::{StepTimings, SwapEvent};
pub use journal::{Journal, JournalEntry};
pub use orchestrator::{SwapConfig, SwapError, deploy_or_swap, swap};
pub use package_state::{PackageState, PackageSwapStatus, SegmentError, WarmWindow};
pub use rollback::rollback;
pub use takeover::EARLY_SNAPSHOT_MIN_BYTES;
