//! `MeshHandle`: the cloneable way the rest of the node talks to the mesh.

use std::time::Duration;

use libp2p::{Multiaddr, PeerId, gossipsub};
use tokio::sync::{mpsc, oneshot};

use super::command::Command;
use super::config::{
    MAX_HEADS_BYTES, MAX_LOOKUP_TIMEOUT, MAX_PENDING_LOOKUPS, MAX_PROVIDERS_PER_LOOKUP,
};
use super::metrics::MeshMetrics;
use super::providers::MAX_PROVIDED_BLOBS;

/// The swarm task has stopped (shut down, or it failed); nothing more can be done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the mesh has stopped")]
pub struct MeshStopped;

/// Why a sync frame was not queued for sending.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The frame is longer than `MeshConfig::max_frame`.
    #[error("sync frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Length of the frame.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The destination is this node.
    #[error("cannot send a sync frame to ourselves")]
    ToSelf,
    /// The destination is on the block list.
    #[error("peer {peer} is blocked")]
    Blocked {
        /// The destination.
        peer: PeerId,
    },
    /// The peer's send queue is full; the frame was dropped.
    #[error("send queue for peer {peer} is full ({capacity} frames); frame dropped")]
    QueueFull {
        /// The destination.
        peer: PeerId,
        /// The queue's capacity (`MeshConfig::send_queue`).
        capacity: usize,
    },
    /// The mesh has stopped.
    #[error(transparent)]
    Stopped(#[from] MeshStopped),
}

/// Why a heads announcement was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The payload is longer than `MAX_HEADS_BYTES`.
    #[error("heads announcement of {len} bytes exceeds the limit of {MAX_HEADS_BYTES} bytes")]
    TooLarge {
        /// Length of the payload.
        len: usize,
    },
    /// Gossipsub refused the message (signing or encoding failed).
    #[error("gossipsub refused the heads announcement: {0}")]
    Gossip(#[source] gossipsub::PublishError),
    /// The mesh has stopped.
    #[error(transparent)]
    Stopped(#[from] MeshStopped),
}

/// Why this node could not start providing a blob.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProvideError {
    /// The node already provides `MAX_PROVIDED_BLOBS` blobs.
    #[error("this node already provides {MAX_PROVIDED_BLOBS} blobs")]
    TooManyBlobs,
    /// The mesh has stopped.
    #[error(transparent)]
    Stopped(#[from] MeshStopped),
}

/// Why a provider lookup did not run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// `MAX_PENDING_LOOKUPS` lookups are already running.
    #[error("{MAX_PENDING_LOOKUPS} provider lookups are already running")]
    Busy,
    /// A limit of zero providers or a zero timeout.
    #[error("a provider lookup needs a positive limit and timeout")]
    Empty,
    /// The mesh has stopped.
    #[error(transparent)]
    Stopped(#[from] MeshStopped),
}

/// What became of a heads announcement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadsDelivery {
    /// Sent to the peers subscribed to the heads topic.
    Sent,
    /// No peer is subscribed yet: the latest announcement is kept and
    /// published as soon as one subscribes.
    Deferred,
}

/// A cloneable handle to a running mesh.
#[derive(Clone)]
pub struct MeshHandle {
    commands: mpsc::Sender<Command>,
    local_peer_id: PeerId,
    max_frame: usize,
    metrics: MeshMetrics,
    streams: libp2p_stream::Control,
}

impl MeshHandle {
    pub(crate) fn new(
        commands: mpsc::Sender<Command>,
        local_peer_id: PeerId,
        max_frame: usize,
        metrics: MeshMetrics,
        streams: libp2p_stream::Control,
    ) -> Self {
        Self {
            commands,
            local_peer_id,
            max_frame,
            metrics,
            streams,
        }
    }

    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// The mesh's metrics (register them with `MeshMetrics::register`).
    pub fn metrics(&self) -> &MeshMetrics {
        &self.metrics
    }

    /// A control for further stream protocols on the same swarm (the blob
    /// protocol). `/clawmesh/sync/1` is already taken by the mesh.
    pub fn stream_control(&self) -> libp2p_stream::Control {
        self.streams.clone()
    }

    /// Queues a sync frame for `peer`. Frames to one peer arrive in order
    /// over one reused stream. `Ok` means queued, not delivered: if the
    /// stream later fails, a `NetEvent::SyncUndelivered` says so.
    pub async fn send_sync(&self, peer: PeerId, bytes: Vec<u8>) -> Result<(), SendError> {
        if bytes.len() > self.max_frame {
            return Err(SendError::TooLarge {
                len: bytes.len(),
                max: self.max_frame,
            });
        }
        if peer == self.local_peer_id {
            return Err(SendError::ToSelf);
        }
        self.request(|reply| Command::SendSync { peer, bytes, reply })
            .await?
    }

    /// Announces document heads to every node subscribed to the heads topic.
    /// Nobody being subscribed yet is not an error: see `HeadsDelivery::Deferred`.
    pub async fn publish_heads(&self, bytes: Vec<u8>) -> Result<HeadsDelivery, PublishError> {
        if bytes.len() > MAX_HEADS_BYTES {
            return Err(PublishError::TooLarge { len: bytes.len() });
        }
        self.request(|reply| Command::PublishHeads { bytes, reply })
            .await?
    }

    /// Closes every connection to `peer` and refuses new ones in both
    /// directions until `unblock`.
    pub async fn block(&self, peer: PeerId) -> Result<(), MeshStopped> {
        self.request(|reply| Command::Block { peer, reply }).await
    }

    /// Lifts a block and redials the peer at its last known addresses.
    pub async fn unblock(&self, peer: PeerId) -> Result<(), MeshStopped> {
        self.request(|reply| Command::Unblock { peer, reply }).await
    }

    /// Peers with at least one established connection.
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, MeshStopped> {
        self.request(|reply| Command::ConnectedPeers { reply })
            .await
    }

    /// Addresses the node is listening on.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, MeshStopped> {
        self.request(|reply| Command::ListenAddrs { reply }).await
    }

    /// Announces on the DHT that this node holds the blob whose sha256 is
    /// `blob` (the record key is the 32 digest bytes): stores our own
    /// provider record and sends it to the peers closest to the key. Kad
    /// re-publishes it every `PROVIDER_PUBLICATION_INTERVAL` until
    /// `stop_providing`. Providing a blob already provided does nothing.
    pub async fn start_providing(&self, blob: [u8; 32]) -> Result<(), ProvideError> {
        self.request(|reply| Command::StartProviding { blob, reply })
            .await?
    }

    /// Stops announcing `blob` (our record elsewhere expires after its TTL).
    pub async fn stop_providing(&self, blob: [u8; 32]) -> Result<(), MeshStopped> {
        self.request(|reply| Command::StopProviding { blob, reply })
            .await
    }

    /// The blobs this node announces as provider.
    pub async fn provided_blobs(&self) -> Result<Vec<[u8; 32]>, MeshStopped> {
        self.request(|reply| Command::ProvidedBlobs { reply }).await
    }

    /// Asks the DHT which peers provide `blob`: at most `limit` (capped at
    /// `MAX_PROVIDERS_PER_LOOKUP`) peers, this node excluded, answered when
    /// the query ends, when `limit` are found or after `timeout` (capped at
    /// `MAX_LOOKUP_TIMEOUT`) with whatever was found by then. Providers
    /// that are not connected are dialled at the addresses the query
    /// learnt before the answer, so the caller can open streams to them.
    pub async fn get_providers(
        &self,
        blob: [u8; 32],
        limit: usize,
        timeout: Duration,
    ) -> Result<Vec<PeerId>, LookupError> {
        if limit == 0 || timeout.is_zero() {
            return Err(LookupError::Empty);
        }
        let limit = limit.min(MAX_PROVIDERS_PER_LOOKUP);
        let timeout = timeout.min(MAX_LOOKUP_TIMEOUT);
        self.request(|reply| Command::GetProviders {
            blob,
            limit,
            timeout,
            reply,
        })
        .await?
    }

    /// Stops the swarm task, closing every connection and stream. Returns
    /// once it has stopped; calling it again is harmless.
    pub async fn shutdown(&self) {
        // An already stopped mesh is what the caller wants.
        let _ = self.request(|reply| Command::Shutdown { reply }).await;
    }

    async fn request<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, MeshStopped> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| MeshStopped)?;
        answer.await.map_err(|_| MeshStopped)
    }
}
