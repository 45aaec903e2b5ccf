//! Starting the mesh side of a node: identity, swarm, the peer core's
//! driver over the persisted documents, and the release loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clawmesh_crdt::PeerConfig;
use tokio::sync::watch;

use super::mesh_admin::MeshSide;
use super::mesh_fetch::MeshFetcher;
use super::release::BlobFetcher;
use super::{NodeArgs, NodeContext};
use crate::mesh::{
    DocStore, DriverConfig, MAX_SYNC_FRAME, MeshConfig, MeshHandle, MeshNetwork, spawn_driver,
};

/// Longest wait between two ticks of the peer core (it is also woken when
/// its `poll_timeout` asks); lost sync sessions restart on these ticks.
const CORE_TICK: Duration = Duration::from_millis(200);
/// Longest wait for the swarm to report its listen addresses.
const LISTEN_WAIT: Duration = Duration::from_secs(10);
/// Room a sync frame needs around the automerge message.
const SYNC_FRAME_OVERHEAD: usize = 64;

/// The running mesh side.
pub struct RunningMesh {
    /// The swarm.
    pub network: MeshHandle,
    /// This node's peer id.
    pub peer_id: String,
    /// Listen addresses with `/p2p/<id>`.
    pub addrs: Vec<String>,
}

/// Starts the mesh; the release loop stops with `stop`.
pub async fn start(
    args: &NodeArgs,
    ctx: &NodeContext,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<RunningMesh> {
    let identity = crate::mesh::load_or_create_identity(ctx.data.root())
        .context("loading the node identity")?;
    let mut config = MeshConfig::new(identity);
    config.listen = args.listen.clone();
    config.bootstrap = args.bootstrap.clone();
    let (network, events) = MeshNetwork::spawn(config).context("starting the mesh")?;
    // The mesh's counters (peers, sync, DHT provider records and lookups) on `/metrics`.
    ctx.supervisor
        .metrics()
        .register_more(|registry| network.metrics().register_under_clawmesh(registry));
    let peer_id = network.local_peer_id();

    let mut peer = PeerConfig {
        quarantine_threshold: args.quarantine_threshold,
        ..PeerConfig::default()
    };
    // One sync message must fit in one mesh frame.
    peer.limits.max_sync_message_bytes = peer
        .limits
        .max_sync_message_bytes
        .min(MAX_SYNC_FRAME - SYNC_FRAME_OVERHEAD);
    let store = DocStore::open(ctx.data.docs_dir()).context("opening the mesh document store")?;
    let mut seed_bytes = [0u8; 8];
    getrandom::fill(&mut seed_bytes)
        .map_err(|e| anyhow::anyhow!("no randomness for the peer core seed: {e}"))?;
    let (driver, notices) = spawn_driver(
        DriverConfig {
            peer,
            trust: (*ctx.trust).clone(),
            tick: CORE_TICK,
            seed: u64::from_le_bytes(seed_bytes),
        },
        network.clone(),
        events,
        store,
    )
    .context("starting the mesh driver")?;
    let fetcher: Arc<dyn BlobFetcher> =
        MeshFetcher::start(network.clone(), driver.clone(), ctx.blobs.clone())?;
    let (releases, _task) =
        super::release::spawn(ctx.clone(), driver.clone(), notices, Some(fetcher), stop);
    let _ = ctx.mesh.set(MeshSide {
        driver,
        releases,
        peer_id: peer_id.to_string(),
        network: network.clone(),
    });

    // The swarm reports its bound ports shortly after start; scripts need them.
    let deadline = Instant::now() + LISTEN_WAIT;
    let addrs = loop {
        let addrs = network
            .listen_addrs()
            .await
            .context("mesh stopped while starting")?;
        if !addrs.is_empty() || Instant::now() >= deadline {
            break addrs;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Ok(RunningMesh {
        peer_id: peer_id.to_string(),
        addrs: addrs.iter().map(|a| format!("{a}/p2p/{peer_id}")).collect(),
        network,
    })
}
