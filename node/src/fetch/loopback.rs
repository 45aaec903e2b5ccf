//! In-process mesh nodes on 127.0.0.1, for the benchmark and tests.

use std::collections::HashSet;
use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::watch;

use crate::mesh::{MeshConfig, MeshError, MeshHandle, MeshNetwork, NetEvent};

/// A mesh node listening on a loopback port; its events are drained in the
/// background (so the mesh never reports a full queue) into the set of
/// connected peers.
pub struct LoopbackNode {
    /// The node's handle.
    pub mesh: MeshHandle,
    /// Where it listens, ending in `/p2p/<peer id>`.
    pub addr: Multiaddr,
    connected: watch::Receiver<HashSet<PeerId>>,
}

impl LoopbackNode {
    /// The node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.mesh.local_peer_id()
    }

    /// Waits until every peer of `peers` is connected, at most `within`.
    ///
    /// Opening a stream while the first connection to a peer is being set
    /// up can wait forever in `libp2p_stream` (the request is parked for a
    /// dial that never starts because a connection already exists); once
    /// the mesh has reported the connection, a stream opens on it at once.
    pub async fn wait_connected(
        &self,
        peers: &[PeerId],
        within: Duration,
    ) -> Result<(), LoopbackError> {
        let mut connected = self.connected.clone();
        let all = connected.wait_for(|set| peers.iter().all(|p| set.contains(p)));
        match tokio::time::timeout(within, all).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(LoopbackError::Stopped),
            Err(_) => {
                let set = self.connected.borrow();
                Err(LoopbackError::NotConnected {
                    missing: peers.iter().filter(|p| !set.contains(p)).count(),
                    after: within,
                })
            }
        }
    }
}

/// Why a loopback node did not start or connect.
#[derive(Debug, thiserror::Error)]
pub enum LoopbackError {
    /// The mesh refused to start.
    #[error(transparent)]
    Mesh(#[from] MeshError),
    /// The mesh stopped before saying where it listens.
    #[error("the mesh stopped before it was listening")]
    NotListening,
    /// The mesh stopped while waiting for connections.
    #[error("the mesh stopped")]
    Stopped,
    /// Some peers were still not connected.
    #[error("{missing} peers still not connected after {after:?}")]
    NotConnected {
        /// How many.
        missing: usize,
        /// The wait.
        after: Duration,
    },
}

/// Starts a node on `127.0.0.1` (a free port) that joins `bootstrap`, and
/// waits until it listens (at most `LISTEN_TIMEOUT`).
pub async fn spawn_loopback_node(bootstrap: Vec<Multiaddr>) -> Result<LoopbackNode, LoopbackError> {
    const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);
    let mut cfg = MeshConfig::new(Keypair::generate_ed25519());
    cfg.listen = vec![
        "/ip4/127.0.0.1/tcp/0"
            .parse()
            .map_err(|_| LoopbackError::NotListening)?,
    ];
    cfg.bootstrap = bootstrap;
    let (mesh, mut events) = MeshNetwork::spawn(cfg)?;
    let (connected_tx, connected) = watch::channel(HashSet::new());
    let listening = async {
        loop {
            match events.recv().await {
                Some(NetEvent::Listening(addr)) => break Some(addr),
                Some(event) => track(&connected_tx, event),
                None => break None,
            }
        }
    };
    let addr = match tokio::time::timeout(LISTEN_TIMEOUT, listening).await {
        Ok(Some(addr)) => addr,
        Ok(None) | Err(_) => {
            mesh.shutdown().await;
            return Err(LoopbackError::NotListening);
        }
    };
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            track(&connected_tx, event);
        }
    });
    let addr = addr.with(libp2p::multiaddr::Protocol::P2p(mesh.local_peer_id()));
    Ok(LoopbackNode {
        mesh,
        addr,
        connected,
    })
}

fn track(connected: &watch::Sender<HashSet<PeerId>>, event: NetEvent) {
    match event {
        NetEvent::PeerConnected(peer) => {
            connected.send_modify(|set| {
                set.insert(peer);
            });
        }
        NetEvent::PeerDisconnected(peer) => {
            connected.send_modify(|set| {
                set.remove(&peer);
            });
        }
        _ => {}
    }
}
