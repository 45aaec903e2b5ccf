//! What the engine needs from a simulated node: feed it events, carry out
//! the effects it returns, look at its state for the invariants.
//!
//! The engine is generic over [`SimPeer`] so it can be tested on its own;
//! [`crate::mesh_peer::MeshPeer`] implements it over the crdt peer core, the
//! very code a real node runs.

use std::collections::{BTreeMap, BTreeSet};

use crate::network::NodeIndex;
use crate::scenario::Command;

/// Something that happens to a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerEvent<W> {
    /// A connection to `peer` opened.
    Connected(NodeIndex),
    /// The connection to `peer` closed.
    Disconnected(NodeIndex),
    /// Bytes `from` sent on the sync stream.
    Message {
        /// Sender.
        from: NodeIndex,
        /// The encoded message, exactly as the sender produced it.
        bytes: Vec<u8>,
    },
    /// A heads announcement `from` gossiped.
    Heads {
        /// Sender.
        from: NodeIndex,
        /// The encoded announcement.
        bytes: Vec<u8>,
    },
    /// Periodic timer.
    Tick,
    /// A scenario step performed on this node (publish, release, ...).
    Command(Command),
    /// Local work the node asked for earlier finished (blob fetch,
    /// verification, deployment: the node's I/O, which the simulator plays).
    WorkDone(W),
}

/// One write the node asked to make durable, kept as its "disk".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskWrite {
    /// What is written (e.g. a document name); later writes to the same key
    /// either replace or extend it.
    pub key: String,
    /// The bytes.
    pub bytes: Vec<u8>,
    /// Whether `bytes` replace everything stored under `key` (a full save)
    /// rather than append to it (an incremental save).
    pub replace: bool,
}

/// The persisted state of one node: per key, the chunks written since the
/// last full save.
pub type Disk = BTreeMap<String, Vec<Vec<u8>>>;

/// Applies `write` to `disk`.
pub fn apply_disk_write(disk: &mut Disk, write: DiskWrite) {
    let chunks = disk.entry(write.key).or_default();
    if write.replace {
        chunks.clear();
    }
    chunks.push(write.bytes);
}

/// Something a node asks the world to do, or tells the simulator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerEffect<W> {
    /// Send `bytes` to `to` on the sync stream.
    Send {
        /// Receiver.
        to: NodeIndex,
        /// The encoded message.
        bytes: Vec<u8>,
    },
    /// Gossip `bytes` (a heads announcement) to every connected peer.
    Announce {
        /// The encoded announcement.
        bytes: Vec<u8>,
    },
    /// Make this write durable.
    Persist(DiskWrite),
    /// Deliver [`PeerEvent::WorkDone`]`(work)` to this node after `after_ms`.
    Schedule {
        /// Delay in virtual milliseconds.
        after_ms: u64,
        /// What finished.
        work: W,
    },
    /// A fact for the invariant checker's oracle.
    Fact(Fact),
    /// A line for the event trace (e.g. "rejected intents/x: bad signature").
    Note(String),
}

/// Ground truth the checker learns as scenario steps are performed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fact {
    /// A manifest for `package@version` was written to the catalog.
    Published {
        /// Package name.
        package: String,
        /// Version.
        version: String,
        /// Whether it was signed by a key of the trust root.
        trusted: bool,
    },
    /// An intent was written to the intents document.
    IntentSubmitted {
        /// How the node's view names it ([`PeerView::intents`]).
        id: String,
        /// Package.
        package: String,
        /// Version it names.
        version: String,
        /// Whether it was signed by a key of the trust root.
        trusted: bool,
    },
    /// A release state transition happened on this node.
    Transition {
        /// Package.
        package: String,
        /// `from -> to (event)`, for the trace.
        description: String,
        /// Whether the state machine allows it.
        legal: bool,
    },
    /// A message or document exceeded a bound the core promises.
    OverBound {
        /// What, and by how much.
        description: String,
    },
}

/// A node's state as the invariants see it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerView {
    /// Digest of the heads of all of the node's documents: equal digests mean
    /// identical documents.
    pub heads: Vec<u8>,
    /// Target version of each package the node knows (`None`: no valid target).
    pub targets: BTreeMap<String, Option<String>>,
    /// Ids of the valid intents the node holds.
    pub intents: BTreeSet<String>,
    /// `(package, version)` pairs the node considers quarantined.
    pub quarantined: BTreeSet<(String, String)>,
    /// Size in bytes of the node's largest document.
    pub largest_document_bytes: usize,
    /// Number of entries the node rejects.
    pub rejected: usize,
}

/// A node under simulation.
pub trait SimPeer: Sized {
    /// Local work the node schedules (see [`PeerEffect::Schedule`]).
    type Work: Clone + std::fmt::Debug;
    /// Shared set-up every node of a run is built from (keys, trust root).
    type Setup;

    /// Starts node `index` for the `life`-th time (0 at the start of the
    /// run, +1 per restart), from `disk` when it restarts with its disk.
    fn start(
        setup: &Self::Setup,
        index: NodeIndex,
        life: u64,
        disk: Option<&Disk>,
    ) -> Result<Self, String>;

    /// Feeds one event at the node's own clock `now_ms`.
    fn handle(&mut self, now_ms: u64, event: PeerEvent<Self::Work>) -> Vec<PeerEffect<Self::Work>>;

    /// The node's state for the invariants.
    fn view(&mut self) -> PeerView;

    /// A number that changes whenever [`SimPeer::view`] may answer
    /// differently; `None` (the default): assume it always may. The engine
    /// builds and checks a node's view again only after it changed.
    fn view_generation(&self) -> Option<u64> {
        None
    }
}
