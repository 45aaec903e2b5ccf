//! Peer-to-peer verified blob fetch (`/clawmesh/blob/1`).
//!
//! `plan` decides (sans-I/O) which chunks to ask which peer for and
//! verifies every chunk against the manifest; `wire` is the protocol;
//! `partial` writes verified chunks into a resumable temp file that is
//! renamed into the blob store only after the whole blob verifies.

mod layout;
mod plan;
pub mod wire;

pub use layout::ChunkLayout;
pub use plan::{
    ChunkRequest, ChunkVerdict, DEFAULT_CHUNKS_PER_REQUEST, DEFAULT_MAX_COPIES, DEFAULT_MAX_INFLIGHT_BYTES,
    DEFAULT_MAX_PEER_FAILURES, DEFAULT_REQUESTS_PER_PEER, DEFAULT_STEAL_AFTER, FetchPlan, PeerStanding, PlanConfig,
    PlanStatus, RequestEnd, RequestId,
};
