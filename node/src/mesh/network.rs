//! `MeshNetwork::spawn`: builds the swarm and starts its task on tokio.

use libp2p::{Multiaddr, SwarmBuilder, noise, tcp, yamux};
use tokio::sync::mpsc;

use super::behaviour::{BehaviourError, MeshBehaviour};
use super::config::{COMMAND_QUEUE, ConfigError, EVENT_QUEUE, MeshConfig, SYNC_PROTOCOL};
use super::event::NetEvent;
use super::handle::MeshHandle;
use super::metrics::MeshMetrics;
use super::swarm_task::SwarmTask;
use super::sync_in::SyncReaders;

/// Why the mesh could not start.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// A config field is out of bounds.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `spawn` was called outside a tokio runtime.
    #[error("the mesh must be spawned from inside a tokio runtime")]
    NoRuntime,
    /// The noise handshake could not be set up with the node's key.
    #[error("setting up the noise transport: {0}")]
    Noise(#[from] noise::Error),
    /// A protocol could not be configured.
    #[error(transparent)]
    Behaviour(#[from] BehaviourError),
    /// A listen address was refused.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// The transport's complaint.
        source: libp2p::TransportError<std::io::Error>,
    },
    /// Something else already accepts the sync protocol on this swarm.
    #[error("stream protocol {SYNC_PROTOCOL} is already registered")]
    SyncProtocolTaken,
}

/// Entry point of the mesh.
pub struct MeshNetwork;

impl MeshNetwork {
    /// Builds the swarm, listens, dials the bootstrap peers and starts the
    /// swarm task. Events arrive on the returned receiver; dropping every
    /// handle (or `shutdown`) stops the task.
    pub fn spawn(cfg: MeshConfig) -> Result<(MeshHandle, mpsc::Receiver<NetEvent>), MeshError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| MeshError::NoRuntime)?;
        let bootstrap = cfg.validate()?;
        let behaviour = MeshBehaviour::new(&cfg.identity, &cfg)?;
        let idle_timeout = cfg.idle_timeout;
        let mut swarm = SwarmBuilder::with_existing_identity(cfg.identity.clone())
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )?
            .with_behaviour(|_| behaviour)
            .map_err(|never| -> MeshError { match never {} })?
            .with_swarm_config(|c| c.with_idle_connection_timeout(idle_timeout))
            .with_connection_timeout(cfg.request_timeout)
            .build();

        for addr in &cfg.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|source| MeshError::Listen {
                    addr: addr.clone(),
                    source,
                })?;
        }

        let metrics = MeshMetrics::default();
        let mut control = swarm.behaviour().streams.new_control();
        let incoming = control
            .accept(SYNC_PROTOCOL)
            .map_err(|_| MeshError::SyncProtocolTaken)?;
        let (command_tx, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let (event_tx, event_rx) = mpsc::channel(EVENT_QUEUE);
        let local_peer_id = *swarm.local_peer_id();
        let handle = MeshHandle::new(
            command_tx,
            local_peer_id,
            cfg.max_frame,
            metrics.clone(),
            control.clone(),
        );
        let readers = SyncReaders {
            events: event_tx.clone(),
            metrics: metrics.clone(),
            max_frame: cfg.max_frame,
            request_timeout: cfg.request_timeout,
            idle_timeout: cfg.idle_timeout,
        };
        let task = SwarmTask::new(
            swarm, &cfg, bootstrap, command_rx, event_tx, metrics, control,
        );
        runtime.spawn(task.run(readers.accept(incoming)));
        Ok((handle, event_rx))
    }
}
