//! Starting test nodes and waiting on their events.

use std::collections::HashSet;
use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;

use crate::mesh::{MeshConfig, MeshHandle, MeshNetwork, NetEvent};

/// Bound on any single wait; far above what a healthy loopback mesh needs.
pub(super) const WAIT: Duration = Duration::from_secs(60);

pub(super) struct TestNode {
    pub(super) handle: MeshHandle,
    pub(super) events: mpsc::Receiver<NetEvent>,
    /// The listen address, ending in `/p2p/<peer id>`.
    pub(super) addr: Multiaddr,
}

impl TestNode {
    pub(super) fn id(&self) -> PeerId {
        self.handle.local_peer_id()
    }
}

/// A config listening on a free loopback port, with short discovery rounds.
pub(super) fn test_config(identity: Keypair, bootstrap: &[Multiaddr]) -> MeshConfig {
    let mut cfg = MeshConfig::new(identity);
    cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    cfg.bootstrap = bootstrap.to_vec();
    cfg.bootstrap_interval = Duration::from_secs(1);
    cfg.request_timeout = Duration::from_secs(5);
    cfg
}

/// Spawns a node and waits until it listens.
pub(super) async fn start(cfg: MeshConfig) -> TestNode {
    let (handle, mut events) = MeshNetwork::spawn(cfg).unwrap();
    let listen = wait_for(&mut events, "listen address", |event| match event {
        NetEvent::Listening(addr) => Some(addr.clone()),
        _ => None,
    })
    .await;
    let addr = listen.with(Protocol::P2p(handle.local_peer_id()));
    TestNode {
        handle,
        events,
        addr,
    }
}

/// Starts `n` nodes that all know only node 0's address, and waits until
/// every node is connected to every other.
pub(super) async fn start_mesh(n: usize) -> Vec<TestNode> {
    let first = start(test_config(Keypair::generate_ed25519(), &[])).await;
    let bootstrap = [first.addr.clone()];
    let mut nodes = vec![first];
    for _ in 1..n {
        nodes.push(start(test_config(Keypair::generate_ed25519(), &bootstrap)).await);
    }
    let ids: Vec<PeerId> = nodes.iter().map(TestNode::id).collect();
    for node in &mut nodes {
        let others: HashSet<PeerId> = ids.iter().copied().filter(|id| *id != node.id()).collect();
        wait_connected_to(&mut node.events, &others).await;
    }
    nodes
}

/// Waits until the peers connected (per the event stream) include `want`.
pub(super) async fn wait_connected_to(
    events: &mut mpsc::Receiver<NetEvent>,
    want: &HashSet<PeerId>,
) {
    let mut connected = HashSet::new();
    wait_for(events, "connections to every peer", |event| {
        match event {
            NetEvent::PeerConnected(peer) => {
                connected.insert(*peer);
            }
            NetEvent::PeerDisconnected(peer) => {
                connected.remove(peer);
            }
            _ => {}
        }
        want.is_subset(&connected).then_some(())
    })
    .await;
}

/// Consumes events until `pick` returns something; panics after `WAIT`.
pub(super) async fn wait_for<T>(
    events: &mut mpsc::Receiver<NetEvent>,
    what: &str,
    mut pick: impl FnMut(&NetEvent) -> Option<T>,
) -> T {
    let found = tokio::time::timeout(WAIT, async {
        loop {
            let event = events.recv().await.expect("mesh event stream ended");
            if let Some(found) = pick(&event) {
                return found;
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Waits for the next sync frame from `from`.
pub(super) async fn next_frame(events: &mut mpsc::Receiver<NetEvent>, from: PeerId) -> Vec<u8> {
    wait_for(events, "a sync frame", |event| match event {
        NetEvent::SyncFrame { from: f, bytes } if *f == from => Some(bytes.clone()),
        _ => None,
    })
    .await
}
