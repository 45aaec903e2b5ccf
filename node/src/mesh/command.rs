//! Requests from `MeshHandle`s to the swarm task, each with its reply channel.

use libp2p::{Multiaddr, PeerId};
use tokio::sync::oneshot;

use super::handle::{HeadsDelivery, PublishError, SendError};

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
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}
