//! Peer-to-peer verified blob fetch (`/clawmesh/blob/1`).
//!
//! `plan` decides (sans-I/O) which chunks to ask which peer for and
//! verifies every chunk against the manifest; `wire` is the protocol;
//! `source` asks peers, `server` answers them; `partial` writes verified
//! chunks into a resumable temp file that `client` installs in the blob
//! store only after the whole blob verifies.

pub mod bench;
mod buffers;
pub mod cli;
mod client;
mod join;
mod layout;
mod loopback;
mod metrics;
mod partial;
mod plan;
mod progress;
mod server;
mod source;
pub mod wire;

pub use buffers::{BufferPool, DEFAULT_POOL_BUFFERS};
pub use client::{
    DEFAULT_TICK, FetchConfig, FetchError, FetchReport, ProviderLookup, Providers, REPLY_QUEUE,
    fetch, fetch_blob,
};
pub use join::{
    DEFAULT_LOOKUP_EVERY, DEFAULT_MAX_LOOKUPS, DEFAULT_STALL_AFTER, DEFAULT_STARVED_WAIT,
    JoinConfig, Rejoin,
};
pub use layout::ChunkLayout;
pub use loopback::{LoopbackError, LoopbackNode, spawn_loopback_node};
pub use metrics::{ChunkFailure, FailureLabels, FetchMetrics};
pub use partial::{PartialBlob, PartialError};
pub use plan::{
    ChunkRequest, ChunkVerdict, DEFAULT_CHUNKS_PER_REQUEST, DEFAULT_MAX_COPIES,
    DEFAULT_MAX_INFLIGHT_BYTES, DEFAULT_MAX_PEER_FAILURES, DEFAULT_MAX_PEERS,
    DEFAULT_REQUESTS_PER_PEER, DEFAULT_STEAL_AFTER, FetchPlan, PeerStanding, PlanConfig,
    PlanStatus, Rediscovered, RequestEnd, RequestId,
};
pub use progress::{FetchProgress, ProgressSnapshot};
pub use server::{
    AlreadyServing, ChunkServe, DEFAULT_MAX_SERVE_STREAMS, DEFAULT_SERVE_CHUNK_TIMEOUT,
    DEFAULT_SERVE_REQUEST_TIMEOUT, ServeConfig, serve, spawn_blob_server,
};
pub use source::{
    ChunkSource, DEFAULT_CHUNK_TIMEOUT, Libp2pSource, ReplySink, SourceError, SourceReply,
    WantedChunk,
};
