//! In-process mesh nodes on 127.0.0.1, for the benchmark and tests.

use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};

use crate::mesh::{MeshConfig, MeshError, MeshHandle, MeshNetwork, NetEvent};

/// A mesh node listening on a loopback port; its events are drained in the
/// background so the mesh never reports a full queue.
pub struct LoopbackNode {
    /// The node's handle.
    pub mesh: MeshHandle,
    /// Where it listens, ending in `/p2p/<peer id>`.
    pub addr: Multiaddr,
}

impl LoopbackNode {
    /// The node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.mesh.local_peer_id()
    }
}

/// Why a loopback node did not start.
#[derive(Debug, thiserror::Error)]
pub enum LoopbackError {
    /// The mesh refused to start.
    #[error(transparent)]
    Mesh(#[from] MeshError),
    /// The mesh stopped before saying where it listens.
    #[error("the mesh stopped before it was listening")]
    NotListening,
}

/// Starts a node on `127.0.0.1` (a free port) that joins `bootstrap`, and
/// waits until it listens.
pub async fn spawn_loopback_node(bootstrap: Vec<Multiaddr>) -> Result<LoopbackNode, LoopbackError> {
    let mut cfg = MeshConfig::new(Keypair::generate_ed25519());
    cfg.listen = vec![
        "/ip4/127.0.0.1/tcp/0"
            .parse()
            .map_err(|_| LoopbackError::NotListening)?,
    ];
    cfg.bootstrap = bootstrap;
    let (mesh, mut events) = MeshNetwork::spawn(cfg)?;
    let addr = loop {
        match events.recv().await {
            Some(NetEvent::Listening(addr)) => break addr,
            Some(_) => {}
            None => return Err(LoopbackError::NotListening),
        }
    };
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let addr = addr.with(libp2p::multiaddr::Protocol::P2p(mesh.local_peer_id()));
    Ok(LoopbackNode { mesh, addr })
}
