//! What the mesh tells its consumer.

use libp2p::{Multiaddr, PeerId};

/// An event from the mesh, delivered on the receiver `MeshNetwork::spawn` returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetEvent {
    /// The node is listening on this address.
    Listening(Multiaddr),
    /// The first connection to this peer was established.
    PeerConnected(PeerId),
    /// The last connection to this peer was closed.
    PeerDisconnected(PeerId),
    /// A sync frame arrived from a peer, intact and in the order it was sent.
    SyncFrame {
        /// The sender.
        from: PeerId,
        /// The frame's payload.
        bytes: Vec<u8>,
    },
    /// A heads announcement arrived over gossipsub.
    Heads {
        /// The peer that published it (its signature was verified).
        from: PeerId,
        /// The announcement's payload.
        bytes: Vec<u8>,
    },
    /// Sync frames queued for a peer were dropped: its stream could not be
    /// opened or broke mid-write. The sync session with that peer should
    /// restart, since the other end never saw these frames.
    SyncUndelivered {
        /// The intended receiver.
        to: PeerId,
        /// How many frames were dropped.
        frames: usize,
    },
}
