//! Requests from `MeshHandle`s to the swarm task, each with its reply channel.

use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use tokio::sync::oneshot;

use super::handle::{HeadsDelivery, LookupError, ProvideError, PublishError, SendError};

/// One request to the swarm task.
pub(crate) enum Command {
    SendSync {
        peer: PeerId,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<(), SendError>>,
    },
    PublishHeads {
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<HeadsDelivery, PublishError>>,
    },
    Block {
        peer: PeerId,
        reply: oneshot::Sender<()>,
    },
    Unblock {
        peer: PeerId,
        reply: oneshot::Sender<()>,
    },
    ConnectedPeers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    StartProviding {
        blob: [u8; 32],
        reply: oneshot::Sender<Result<(), ProvideError>>,
    },
    StopProviding {
        blob: [u8; 32],
        reply: oneshot::Sender<()>,
    },
    ProvidedBlobs {
        reply: oneshot::Sender<Vec<[u8; 32]>>,
    },
    GetProviders {
        blob: [u8; 32],
        limit: usize,
        timeout: Duration,
        reply: oneshot::Sender<Result<Vec<PeerId>, LookupError>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}
