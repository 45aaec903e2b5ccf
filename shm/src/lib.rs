//! The clawmesh state segment.
//!
//! Owns: one shared-memory segment per running skill (a sealed memfd with a
//! versioned header and two payload buffers), publishing a state by filling
//! the inactive buffer and flipping the generation, seqlock reads with
//! checksums (current and previous state), growth into a bigger segment,
//! waiting asleep (process-shared futex) for a generation another process
//! publishes, and passing the segment's fd between processes over a Unix
//! socket.
//!
//! Does not own: when to snapshot, who writes (one writer at a time across
//! processes: the node decides), or what the payload means. All `unsafe` in
//! clawmesh lives here; docs/SHM.md gives the layout and the safety argument.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod checksum;
pub mod fdpass;
pub mod grow;
pub mod header;
pub mod layout;
mod mapping;
pub mod read;
pub mod segment;
pub mod wait;
pub mod write;

pub use checksum::checksum;
pub use fdpass::{FdPassError, MAX_FDS_PER_MESSAGE, recv_fd, send_fd};
pub use grow::GrowError;
pub use header::{HeaderError, SegmentHeader, SlotMeta};
pub use layout::Slot;
pub use read::{MAX_READ_RETRIES, PayloadReader, ReadError, SnapshotMeta, StateSnapshot};
pub use segment::{AttachError, CreateError, REQUIRED_SEALS, StateSegment};
pub use wait::WaitTimedOut;
pub use write::{PublishError, WriteGuard};
