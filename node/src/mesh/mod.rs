//! libp2p mesh networking: the node's swarm, driven by channels.
//!
//! Knows nothing of automerge: it carries opaque sync frames between peers
//! over `/clawmesh/sync/1` streams and small heads announcements over
//! gossipsub, finds peers through a private Kademlia DHT starting from the
//! bootstrap addresses, and reports what happens as `NetEvent`s. The same
//! DHT carries bounded provider records for blobs (`start_providing`,
//! `get_providers`).

mod behaviour;
mod command;
mod config;
mod doc_store;
mod driver;
mod event;
mod frame;
mod handle;
mod identity;
mod metrics;
mod network;
mod providers;
mod swarm_task;
mod sync_in;
mod sync_out;

#[cfg(test)]
mod tests;

pub use behaviour::BehaviourError;
pub use config::{
    COMMAND_QUEUE, ConfigError, DEFAULT_BOOTSTRAP_INTERVAL, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_PEERS, DEFAULT_REQUEST_TIMEOUT, DEFAULT_SEND_QUEUE, EVENT_QUEUE, HEADS_TOPIC,
    IDENTIFY_PROTOCOL_VERSION, KAD_PROTOCOL, MAX_ADDRS_PER_PEER, MAX_CONNECTIONS_PER_PEER,
    MAX_GOSSIP_RPC, MAX_HEADS_BYTES, MAX_HEADS_MESSAGE, MAX_INBOUND_SYNC_STREAMS, MAX_KNOWN_PEERS,
    MAX_LOOKUP_TIMEOUT, MAX_PENDING_CONNECTIONS, MAX_PENDING_LOOKUPS, MAX_PROVIDERS_PER_LOOKUP,
    MAX_SYNC_FRAME, MeshConfig, PROVIDER_PUBLICATION_INTERVAL, PROVIDER_RECORD_TTL, SYNC_PROTOCOL,
};
pub use doc_store::{DocStore, DocStoreError, MAX_DOC_FILE_BYTES};
pub use driver::{
    DEFAULT_TICK, DRIVER_QUEUE, DriverConfig, DriverError, DriverHandle, DriverNotice,
    DriverStopped, NOTICE_QUEUE, spawn_driver,
};
pub use event::NetEvent;
pub use frame::{FRAME_HEADER_LEN, WriteFrameError, read_frame_body, read_frame_len, write_frame};
pub use handle::{
    HeadsDelivery, LookupError, MeshHandle, MeshStopped, ProvideError, PublishError, SendError,
};
pub use identity::{
    IDENTITY_FILE, IDENTITY_FILE_MODE, IdentityError, MAX_IDENTITY_FILE_LEN, identity_path,
    load_identity, load_or_create_identity,
};
pub use metrics::{MeshMetrics, MeshMetricsSnapshot};
pub use network::{MeshError, MeshNetwork};
pub use providers::{
    BLOB_KEY_LEN, MAX_ADDRS_PER_RECORD, MAX_KEYS_PER_PROVIDER, MAX_PROVIDED_BLOBS,
    MAX_PROVIDER_RECORDS, MAX_PROVIDERS_PER_KEY, ProviderRefusal, ProviderStore, Stored,
};
