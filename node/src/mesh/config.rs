//! Mesh configuration, protocol names and every bound the mesh enforces.

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, StreamProtocol};

/// Stream protocol carrying automerge sync messages as length-prefixed frames.
pub const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/clawmesh/sync/1");
/// Kademlia protocol name: a private DHT, so clawmesh nodes never mix with IPFS.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/clawmesh/kad/1.0.0");
/// Identify protocol version; peers announcing another one are not added to the DHT.
pub const IDENTIFY_PROTOCOL_VERSION: &str = "/clawmesh/id/1.0.0";
/// Gossipsub topic carrying document heads.
pub const HEADS_TOPIC: &str = "clawmesh/heads/v1";

/// Default and largest allowed `MeshConfig::max_frame`: one sync frame.
pub const MAX_SYNC_FRAME: usize = 4 * 1024 * 1024;
/// Largest gossipsub message on the heads topic, envelope included. Heads
/// are a few 32-byte hashes; documents travel over sync streams.
pub const MAX_HEADS_MESSAGE: usize = 4 * 1024;
/// Largest heads payload `publish_heads` accepts: the message limit minus
/// room for the signed envelope (source, sequence number, topic, signature).
pub const MAX_HEADS_BYTES: usize = MAX_HEADS_MESSAGE - 512;
/// Largest gossipsub RPC on the wire (control messages included).
pub const MAX_GOSSIP_RPC: usize = 64 * 1024;
/// Connections kept to one peer (two allow a simultaneous dial from both ends).
pub const MAX_CONNECTIONS_PER_PEER: u32 = 2;
/// Connections being negotiated at once, in each direction.
pub const MAX_PENDING_CONNECTIONS: u32 = 32;
/// Inbound sync streams read at once, over all peers.
pub const MAX_INBOUND_SYNC_STREAMS: usize = 256;
/// Listen addresses remembered per peer.
pub const MAX_ADDRS_PER_PEER: usize = 8;
/// Peers whose addresses we remember for redialling.
pub const MAX_KNOWN_PEERS: usize = 1024;
/// Commands queued from handles to the swarm task.
pub const COMMAND_QUEUE: usize = 256;
/// Events queued from the mesh to its consumer; beyond this, connection and
/// heads events are dropped (and counted) rather than stalling the swarm.
pub const EVENT_QUEUE: usize = 1024;

/// How long a provider record lives in a remote node's store (kad's
/// provider record TTL). Three publication intervals: a provider that
/// missed two re-publications is still listed.
pub const PROVIDER_RECORD_TTL: Duration = Duration::from_secs(3 * 60 * 60);
/// How often kad re-publishes this node's own provider records.
pub const PROVIDER_PUBLICATION_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// Provider lookups (`MeshHandle::get_providers`) running at once; more are
/// refused with `LookupError::Busy`.
pub const MAX_PENDING_LOOKUPS: usize = 32;
/// Most providers one lookup returns (Kademlia's k).
pub const MAX_PROVIDERS_PER_LOOKUP: usize = 20;
/// Longest a provider lookup may be given.
pub const MAX_LOOKUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Default `MeshConfig::max_peers`.
pub const DEFAULT_MAX_PEERS: usize = 64;
/// Default `MeshConfig::send_queue`.
pub const DEFAULT_SEND_QUEUE: usize = 64;
/// Default `MeshConfig::idle_timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `MeshConfig::request_timeout`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `MeshConfig::bootstrap_interval`.
pub const DEFAULT_BOOTSTRAP_INTERVAL: Duration = Duration::from_secs(30);

/// How a mesh node listens, whom it joins through, and its bounds.
#[derive(Clone, Debug)]
pub struct MeshConfig {
    /// Addresses to listen on (e.g. `/ip4/0.0.0.0/tcp/4001`).
    pub listen: Vec<Multiaddr>,
    /// Peers to join through; each must end in `/p2p/<peer id>`.
    pub bootstrap: Vec<Multiaddr>,
    /// The node's identity (see `load_or_create_identity`).
    pub identity: Keypair,
    /// Peers this node dials or keeps connections to, at most.
    pub max_peers: usize,
    /// Largest sync frame sent or accepted, in bytes (at most `MAX_SYNC_FRAME`).
    pub max_frame: usize,
    /// Sync frames queued per peer before new ones are refused.
    pub send_queue: usize,
    /// A connection or sync stream with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Bound on one dial, stream open, frame write or frame read.
    pub request_timeout: Duration,
    /// How often the DHT is re-bootstrapped and lost bootstrap peers redialled.
    pub bootstrap_interval: Duration,
}

impl MeshConfig {
    /// A config with the default bounds, listening nowhere and joining no one.
    pub fn new(identity: Keypair) -> Self {
        Self {
            listen: Vec::new(),
            bootstrap: Vec::new(),
            identity,
            max_peers: DEFAULT_MAX_PEERS,
            max_frame: MAX_SYNC_FRAME,
            send_queue: DEFAULT_SEND_QUEUE,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            bootstrap_interval: DEFAULT_BOOTSTRAP_INTERVAL,
        }
    }

    /// Checks every bound and splits the bootstrap addresses into peer and address.
    pub(crate) fn validate(&self) -> Result<Vec<(PeerId, Multiaddr)>, ConfigError> {
        let nonzero = [
            ("max_peers", self.max_peers == 0),
            ("max_frame", self.max_frame == 0),
            ("send_queue", self.send_queue == 0),
            ("idle_timeout", self.idle_timeout.is_zero()),
            ("request_timeout", self.request_timeout.is_zero()),
            ("bootstrap_interval", self.bootstrap_interval.is_zero()),
        ];
        if let Some((field, _)) = nonzero.iter().find(|(_, zero)| *zero) {
            return Err(ConfigError::Zero { field });
        }
        if self.max_frame > MAX_SYNC_FRAME {
            return Err(ConfigError::FrameLimitTooLarge {
                max_frame: self.max_frame,
            });
        }
        if u32::try_from(self.max_peers).is_err() {
            return Err(ConfigError::TooManyPeers {
                max_peers: self.max_peers,
            });
        }
        self.bootstrap
            .iter()
            .map(|addr| match addr.iter().last() {
                Some(Protocol::P2p(peer)) => Ok((peer, addr.clone())),
                _ => Err(ConfigError::BootstrapWithoutPeerId { addr: addr.clone() }),
            })
            .collect()
    }
}

/// A `MeshConfig` field that is out of bounds.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A count or duration that must be positive is zero.
    #[error("mesh config field `{field}` must be greater than zero")]
    Zero {
        /// The field.
        field: &'static str,
    },
    /// `max_frame` exceeds `MAX_SYNC_FRAME`.
    #[error(
        "mesh config field `max_frame` is {max_frame}, above the ceiling of {MAX_SYNC_FRAME} bytes"
    )]
    FrameLimitTooLarge {
        /// The configured value.
        max_frame: usize,
    },
    /// `max_peers` does not fit the connection limiter's counter.
    #[error("mesh config field `max_peers` is {max_peers}, more than a u32 can count")]
    TooManyPeers {
        /// The configured value.
        max_peers: usize,
    },
    /// A bootstrap address does not name the peer expected there.
    #[error("bootstrap address {addr} must end in /p2p/<peer id>")]
    BootstrapWithoutPeerId {
        /// The address.
        addr: Multiaddr,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> MeshConfig {
        MeshConfig::new(Keypair::generate_ed25519())
    }

    #[test]
    fn defaults_are_valid() {
        assert!(config().validate().unwrap().is_empty());
    }

    #[test]
    fn zero_send_queue_is_named() {
        let mut cfg = config();
        cfg.send_queue = 0;
        let err = cfg.validate().unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Zero {
                    field: "send_queue"
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn frame_limit_above_ceiling_is_refused() {
        let mut cfg = config();
        cfg.max_frame = MAX_SYNC_FRAME + 1;
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::FrameLimitTooLarge { .. })
        ));
    }

    #[test]
    fn bootstrap_needs_peer_id() {
        let mut cfg = config();
        cfg.bootstrap = vec!["/ip4/127.0.0.1/tcp/4001".parse().unwrap()];
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::BootstrapWithoutPeerId { .. })
        ));
        let peer = PeerId::random();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/4001/p2p/{peer}")
            .parse()
            .unwrap();
        cfg.bootstrap = vec![addr.clone()];
        assert_eq!(cfg.validate().unwrap(), vec![(peer, addr)]);
    }
}
