//! The swarm's protocols, composed into one `NetworkBehaviour`.

use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{allow_block_list, connection_limits, gossipsub, identify, kad, ping};

use super::config::{
    HEADS_TOPIC, IDENTIFY_PROTOCOL_VERSION, KAD_PROTOCOL, MAX_CONNECTIONS_PER_PEER, MAX_GOSSIP_RPC,
    MAX_HEADS_MESSAGE, MAX_PENDING_CONNECTIONS, MeshConfig, PROVIDER_PUBLICATION_INTERVAL,
    PROVIDER_RECORD_TTL,
};
use super::providers::ProviderStore;

/// Every protocol a clawmesh node speaks. The block list and connection
/// limits come first so they refuse a connection before the others set
/// anything up for it.
#[derive(NetworkBehaviour)]
pub(crate) struct MeshBehaviour {
    pub(crate) block_list: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub(crate) limits: connection_limits::Behaviour,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) kad: kad::Behaviour<ProviderStore>,
    pub(crate) gossipsub: gossipsub::Behaviour,
    pub(crate) streams: libp2p_stream::Behaviour,
}

/// Why the behaviour could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BehaviourError {
    /// The gossipsub configuration was refused.
    #[error("gossipsub config: {0}")]
    GossipsubConfig(#[from] gossipsub::ConfigBuilderError),
    /// Gossipsub refused to start.
    #[error("gossipsub: {0}")]
    Gossipsub(&'static str),
    /// Subscribing to the heads topic failed.
    #[error("subscribing to {HEADS_TOPIC}: {0}")]
    Subscribe(#[from] gossipsub::SubscriptionError),
}

/// The gossipsub topic heads are announced on.
pub(crate) fn heads_topic() -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(HEADS_TOPIC)
}

impl MeshBehaviour {
    /// Builds the behaviour for `cfg`, already subscribed to the heads topic.
    pub(crate) fn new(keypair: &Keypair, cfg: &MeshConfig) -> Result<Self, BehaviourError> {
        let local_peer_id = keypair.public().to_peer_id();
        let max_peers = u32::try_from(cfg.max_peers).unwrap_or(u32::MAX);

        let limits = connection_limits::ConnectionLimits::default()
            .with_max_pending_incoming(Some(MAX_PENDING_CONNECTIONS))
            .with_max_pending_outgoing(Some(MAX_PENDING_CONNECTIONS))
            .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
            .with_max_established(Some(max_peers.saturating_mul(MAX_CONNECTIONS_PER_PEER)));

        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL_VERSION.to_owned(), keypair.public())
                .with_agent_version(format!("clawmesh/{}", env!("CARGO_PKG_VERSION"))),
        );

        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        kad_config
            .set_query_timeout(cfg.request_timeout)
            .set_substreams_timeout(cfg.request_timeout)
            // We bootstrap on our own timer (MeshConfig::bootstrap_interval).
            .set_periodic_bootstrap_interval(None)
            // Nothing a peer sends is stored unchecked: the swarm task
            // validates provider records (ProviderStore::insert_remote) and
            // the store keeps no value records.
            .set_record_filtering(kad::StoreInserts::FilterBoth)
            // Kad re-publishes our own provider records (the store's
            // `provided()`) on this interval; remote ones expire after the TTL.
            .set_provider_publication_interval(Some(PROVIDER_PUBLICATION_INTERVAL))
            .set_provider_record_ttl(Some(PROVIDER_RECORD_TTL));
        let mut kad = kad::Behaviour::with_config(
            local_peer_id,
            ProviderStore::new(local_peer_id),
            kad_config,
        );
        // Without this, kad stays a client on loopback and private addresses
        // (no confirmed external address) and answers nobody's queries.
        kad.set_mode(Some(kad::Mode::Server));

        let topic = heads_topic();
        let gossip_config = gossipsub::ConfigBuilder::default()
            .max_transmit_size(MAX_GOSSIP_RPC)
            .max_transmit_size_for_topic(MAX_HEADS_MESSAGE, topic.hash())
            .validation_mode(gossipsub::ValidationMode::Strict)
            .build()?;
        let mut gossipsub = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(keypair.clone()),
            gossip_config,
        )
        .map_err(BehaviourError::Gossipsub)?;
        gossipsub.subscribe(&topic)?;

        Ok(Self {
            block_list: allow_block_list::Behaviour::default(),
            limits: connection_limits::Behaviour::new(limits),
            identify,
            ping: ping::Behaviour::default(),
            kad,
            gossipsub,
            streams: libp2p_stream::Behaviour::new(),
        })
    }
}
