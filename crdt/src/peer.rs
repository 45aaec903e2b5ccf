//! The sans-I/O peer core: decides what to sync, with whom and when.
//!
//! Events and time go in through [`PeerCore::handle`]; messages to send,
//! announcements, bytes to persist and changes of the decided targets come
//! out as [`PeerAction`]s. The node's libp2p layer and the simulator drive
//! this very code. It is deterministic: no wall clock, no thread rng, no
//! hash-map iteration order in its outputs (peers and documents are kept in
//! ordered maps; anti-entropy peers are drawn from a seeded generator).
//!
//! Protocol (docs/MESH.md, "Sync"): one automerge sync state per (peer,
//! document); a connection starts a sync of every document; a local or
//! received change is offered to every connected peer at once, and a local
//! one is announced (heads only, under 1 KiB) over gossip; announced heads
//! still unknown here `announce_pull_delay_ms` later (pushes usually deliver
//! them first) restart the sync of that document with the announcer; every
//! `anti_entropy_interval_ms` one random connected peer gets a new sync round
//! of every document from the heads both sides last shared, which repairs
//! what gossip missed across a partition.
//!
//! Node statuses travel on the [`StatusBoard`] (docs/MESH.md, "Status
//! board"): records new here are pushed, `status_push_delay_ms` later and
//! together, to every peer not known to hold them; a connection and each
//! anti-entropy round compare board digests and, when they differ, exchange
//! the (node, seq) lists and then the missing records.
//!
//! Timers are the caller's: [`PeerCore::poll_timeout`] says when the core
//! next needs a [`PeerInput::Tick`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::hash::Hash;

use automerge::ChangeHash;
use automerge::sync;
use prost::Message as _;

use crate::arbitration::{IntentFacts, QuarantineSet, Target, arbitrate, derive_quarantine};
use crate::documents::catalog::{ManifestCatalog, read_catalog, write_manifest};
use crate::documents::intents::{read_intents, write_intent};
use crate::documents::{
    DocumentId, DocumentLimits, LoadError, MeshDocument, RejectedEntry, VerifyCache,
};
use crate::intent::SignedIntent;
use crate::manifest::{PackageName, SignedManifest};
use crate::proto::v1 as wire;
use crate::signing::digest;
use crate::status::{PackageStatus, StatusTable};
use crate::status_board::{
    Merged, NodeStatus, Slot, StatusBoard, StatusBoardLimits, StatusRecordError, record_header,
};
use crate::status_check::{CheckedRecord, check_record};
use crate::status_frame::{StatusExchangeRef, encode_status_frame, parse_status_frame};
use crate::trust::TrustRoot;

/// Largest heads announcement (gossipsub payload) the core sends or accepts.
pub const MAX_ANNOUNCEMENT_BYTES: usize = 1024;
/// Heads of one document listed in an announcement.
pub const MAX_ANNOUNCED_HEADS_PER_DOCUMENT: usize = 4;
/// Frames in a row from one peer about one document that change nothing
/// before the core stops answering (a healthy exchange settles in a few).
pub const MAX_FRUITLESS_ROUNDS: u32 = 16;
/// Bytes a sync frame adds around the automerge message.
const FRAME_OVERHEAD_BYTES: usize = 64;
/// Announced heads waiting to be pulled if pushes do not bring them.
pub const MAX_PENDING_PULLS: usize = 256;
/// Bytes of status records packed into one frame (a record is at most
/// [`crate::status_board::MAX_NODE_STATUS_BYTES`], so one always fits).
pub const MAX_STATUS_FRAME_BYTES: usize = 1024 * 1024;
/// Heads of one document an anti-entropy digest lists (a document with
/// more is left out, and the receiver syncs it); a digest listing more is
/// refused.
pub const MAX_DIGEST_HEADS_PER_DOCUMENT: usize = 16;

/// Tuning of a [`PeerCore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    /// Bounds of every document.
    pub limits: DocumentLimits,
    /// Bounds of the status board.
    pub status: StatusBoardLimits,
    /// How often one random connected peer gets a full re-sync.
    pub anti_entropy_interval_ms: u64,
    /// Distinct nodes reporting a version Failed that quarantine it (0: never).
    pub quarantine_threshold: usize,
    /// Connected peers tracked at once; more connections are ignored.
    pub max_peers: usize,
    /// Bytes of sync frames accepted from one peer per `rate_window_ms`.
    pub max_bytes_per_peer_per_window: usize,
    /// Length of the per-peer rate window.
    pub rate_window_ms: u64,
    /// Incremental bytes persisted for a document before a compacted full save.
    pub compact_after_bytes: usize,
    /// Frames sent to one peer since it last sent one; past this the core
    /// sends the peer nothing until its next frame or the next anti-entropy
    /// round with it.
    pub max_unanswered_frames_per_peer: usize,
    /// How long a status record new here waits before it is pushed to
    /// peers (each wait is drawn from [½, 1½] × this). Every node writes its
    /// status at each step of a release, so a mesh-wide release is a burst
    /// of records; pushing them together costs one frame per peer instead
    /// of one per record (and a node's records written within the delay
    /// travel as one). The spread keeps neighbours that received a record
    /// together from pushing it to each other together. Catalog and intent
    /// changes are offered at once.
    pub status_push_delay_ms: u64,
    /// How long after a change of the status board the core asks for it to
    /// be saved ([`PeerAction::PersistStatusBoard`]); changes within the
    /// delay are saved together.
    pub status_persist_delay_ms: u64,
    /// How long announced heads may stay unknown here before the core pulls
    /// them from the announcer (the pushes of connected peers usually bring
    /// them first, and a pull from every announcement would cost a sync round
    /// with the author per change per node).
    pub announce_pull_delay_ms: u64,
}

impl Default for PeerConfig {
    fn default() -> Self {
        PeerConfig {
            limits: DocumentLimits::default(),
            status: StatusBoardLimits::default(),
            anti_entropy_interval_ms: 5_000,
            quarantine_threshold: 3,
            max_peers: 256,
            max_bytes_per_peer_per_window: 96 * 1024 * 1024,
            rate_window_ms: 10_000,
            compact_after_bytes: 4 * 1024 * 1024,
            max_unanswered_frames_per_peer: 64,
            status_push_delay_ms: 250,
            status_persist_delay_ms: 1_000,
            announce_pull_delay_ms: 400,
        }
    }
}

/// An event fed to the core.
#[derive(Clone, Debug)]
pub enum PeerInput<P> {
    /// A sync stream to `P` is open.
    Connected(P),
    /// The stream to `P` is gone.
    Disconnected(P),
    /// A frame (mesh.proto `SyncFrame`) arrived from a peer.
    Message {
        /// Sender.
        from: P,
        /// The encoded frame.
        bytes: Vec<u8>,
    },
    /// A gossip announcement (mesh.proto `HeadsAnnouncement`) from a peer.
    HeadsAnnounced {
        /// Announcer.
        from: P,
        /// The encoded announcement.
        bytes: Vec<u8>,
    },
    /// Timers: anti-entropy and pending announcements.
    Tick,
    /// Add a signed manifest to the catalog.
    PublishManifest(SignedManifest),
    /// Add a signed intent.
    SubmitIntent(SignedIntent),
    /// This node's status of a package changed.
    ReportStatus {
        /// The package.
        package: PackageName,
        /// Its status; `known_intent_clock` is filled in by the core.
        status: PackageStatus,
    },
}

/// Something the caller must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerAction<P> {
    /// Send a frame on the sync stream to `to`.
    Send {
        /// Recipient.
        to: P,
        /// The encoded `SyncFrame`.
        bytes: Vec<u8>,
    },
    /// Publish an announcement on the heads gossip topic.
    AnnounceHeads {
        /// The encoded `HeadsAnnouncement` (at most [`MAX_ANNOUNCEMENT_BYTES`]).
        bytes: Vec<u8>,
    },
    /// Append these bytes to the document's file.
    Persist {
        /// The document.
        doc: DocumentId,
        /// An incremental save.
        bytes: Vec<u8>,
    },
    /// Replace the document's file with this compacted save.
    PersistCompacted {
        /// The document.
        doc: DocumentId,
        /// A full save.
        bytes: Vec<u8>,
    },
    /// Replace the status board's file with this save (`StatusBoardSave`);
    /// load it with [`PeerCore::load_status_board`].
    PersistStatusBoard {
        /// The whole board.
        bytes: Vec<u8>,
    },
    /// The decided targets changed; the full new map.
    TargetsChanged(BTreeMap<PackageName, Target>),
    /// A document entry that every node ignores (reported once).
    Rejected(RejectedEntry),
    /// A frame or announcement from a peer was refused; nothing was applied.
    Refused {
        /// Sender.
        from: P,
        /// Why.
        reason: String,
    },
    /// A local write (publish, intent, status) was refused.
    WriteFailed {
        /// What was written.
        what: String,
        /// Why.
        reason: String,
    },
}

/// Per connected peer.
#[derive(Debug, Default)]
struct PeerSession {
    sync: BTreeMap<DocumentId, sync::State>,
    window_start_ms: u64,
    window_bytes: usize,
    /// Frames sent since the peer last sent one (bounded by
    /// `PeerConfig::max_unanswered_frames_per_peer`).
    unanswered_frames: usize,
    /// Consecutive frames per document that changed nothing here.
    fruitless_rounds: BTreeMap<DocumentId, u32>,
    /// Board slot → the highest seq of that node's record the peer is known
    /// to hold (it sent it, was sent it, or listed it); bounded by the
    /// board's `max_nodes`.
    status_known: Vec<Option<u64>>,
    /// Nodes the peer listed that have no record (no slot) here yet → the
    /// seq listed; moved to `status_known` when their first record comes.
    /// At most one versions list (`max_nodes`).
    status_known_unslotted: BTreeMap<Box<str>, u64>,
}

/// Announced heads this core lacked when the announcement came.
#[derive(Debug)]
struct PendingPull {
    due_ms: u64,
    heads: Vec<ChangeHash>,
}

/// What the documents currently say, validated.
#[derive(Debug, Default)]
struct MeshView {
    catalog: ManifestCatalog,
    intents: Vec<SignedIntent>,
    rejected: BTreeMap<DocumentId, BTreeSet<RejectedEntry>>,
    quarantine: QuarantineSet<PackageName>,
    targets: BTreeMap<PackageName, Target>,
    manifest_cache: VerifyCache<SignedManifest>,
    intent_cache: VerifyCache<SignedIntent>,
}

/// The sans-I/O mesh peer, generic over the transport's peer id.
#[derive(Debug)]
pub struct PeerCore<P> {
    config: PeerConfig,
    node_id: String,
    trust: TrustRoot,
    rng_state: u64,
    /// A second splitmix64 stream for the status push delays, so they do
    /// not shift the anti-entropy peer choices.
    push_rng_state: u64,
    /// automerge actor id of this run.
    actor: Vec<u8>,
    docs: BTreeMap<DocumentId, MeshDocument>,
    unpersisted_bytes: BTreeMap<DocumentId, usize>,
    peers: BTreeMap<P, PeerSession>,
    /// Heads last shared with peers that disconnected, so a reconnection
    /// resumes the sync from there instead of from empty (bounded by
    /// `max_peers`).
    shared_with_departed: BTreeMap<P, BTreeMap<DocumentId, Vec<ChangeHash>>>,
    next_anti_entropy_ms: u64,
    announce_pending: BTreeSet<DocumentId>,
    /// Changed documents not yet offered to peers → when to offer them.
    push_due: BTreeMap<DocumentId, u64>,
    /// Announced heads to pull from the announcer if still unknown when due.
    pull_due: BTreeMap<(DocumentId, P), PendingPull>,
    /// Every node's status.
    board: StatusBoard,
    /// Board slots of the records new here and not yet pushed.
    status_dirty: BTreeSet<Slot>,
    /// When the records in `status_dirty` are pushed.
    status_push_at: Option<u64>,
    /// When the board is next saved (it changed since the last save).
    status_persist_at: Option<u64>,
    /// Time of the input being handled.
    now_ms: u64,
    view: MeshView,
    /// Raised on every change a reader can observe ([`PeerCore::generation`]).
    generation: u64,
}

impl<P: Clone + Ord + Hash + Debug> PeerCore<P> {
    /// A core with empty documents. `seed` drives the choice of anti-entropy
    /// peers and, with `local_node_id`, this run's automerge actor id (so a
    /// restarted node never reuses an actor's sequence numbers): pass a fresh
    /// random value per process start, or a fixed one in simulations.
    pub fn new(
        config: PeerConfig,
        local_node_id: String,
        trust_root: TrustRoot,
        seed: u64,
    ) -> Self {
        let mut actor_source = local_node_id.as_bytes().to_vec();
        actor_source.extend_from_slice(&seed.to_le_bytes());
        let actor = digest(&actor_source)[..16].to_vec();
        let docs = DocumentId::all()
            .map(|id| (id, MeshDocument::new(id, &actor, config.limits.clone())))
            .collect();
        PeerCore {
            board: StatusBoard::new(local_node_id.clone(), config.status.clone()),
            status_dirty: BTreeSet::new(),
            status_push_at: None,
            status_persist_at: None,
            config,
            node_id: local_node_id,
            trust: trust_root,
            rng_state: seed,
            push_rng_state: seed ^ 0x7075_7368_6A69_7474,
            actor,
            docs,
            unpersisted_bytes: BTreeMap::new(),
            peers: BTreeMap::new(),
            shared_with_departed: BTreeMap::new(),
            next_anti_entropy_ms: 0,
            announce_pending: BTreeSet::new(),
            push_due: BTreeMap::new(),
            pull_due: BTreeMap::new(),
            now_ms: 0,
            view: MeshView::default(),
            generation: 0,
        }
    }

    /// Replaces a document with saved bytes (at start-up, before any input).
    pub fn load_document(&mut self, id: DocumentId, bytes: &[u8]) -> Result<(), LoadError> {
        let doc = MeshDocument::load(id, &self.actor, self.config.limits.clone(), bytes)?;
        self.docs.insert(id, doc);
        self.generation += 1;
        let mut actions = Vec::new();
        self.refresh_view(id, &mut actions);
        Ok(())
    }

    /// Replaces the status board with a save (at start-up, before any
    /// input); returns how many saved records were skipped (invalid, or
    /// past the board's bounds).
    pub fn load_status_board(&mut self, bytes: &[u8]) -> Result<usize, StatusRecordError> {
        let mut board = StatusBoard::new(self.node_id.clone(), self.config.status.clone());
        let skipped = board.load(bytes)?;
        self.board = board;
        self.generation += 1;
        // Slots belong to the board they were taken from.
        self.status_dirty.clear();
        for session in self.peers.values_mut() {
            session.status_known.clear();
            session.status_known_unslotted.clear();
        }
        let mut actions = Vec::new();
        self.refresh_targets(true, &mut actions);
        Ok(skipped)
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// A counter raised whenever something a reader of the core can
    /// observe may have changed: a document (so its heads and what it
    /// means), the status board, the quarantine or the decided targets.
    /// Equal generations mean none of them changed, so a caller may keep
    /// what it derived from them (the simulator keeps each node's view).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Decided targets.
    pub fn targets(&self) -> &BTreeMap<PackageName, Target> {
        &self.view.targets
    }

    /// Valid catalog entries.
    pub fn catalog(&self) -> &ManifestCatalog {
        &self.view.catalog
    }

    /// Valid intents, in key order.
    pub fn intents(&self) -> &[SignedIntent] {
        &self.view.intents
    }

    /// Current quarantine set.
    pub fn quarantine(&self) -> &QuarantineSet<PackageName> {
        &self.view.quarantine
    }

    /// Node id → package → status (a copy of the board's content).
    pub fn status_table(&self) -> StatusTable {
        self.board.table()
    }

    /// The status board.
    pub fn status_board(&self) -> &StatusBoard {
        &self.board
    }

    /// A save of the status board (for the node's shutdown).
    pub fn save_status_board(&mut self) -> Vec<u8> {
        self.status_persist_at = None;
        self.board.sort();
        self.board.save()
    }

    /// Every entry currently rejected, in path order.
    pub fn rejected(&self) -> Vec<RejectedEntry> {
        let mut all: Vec<RejectedEntry> = self.view.rejected.values().flatten().cloned().collect();
        all.sort();
        all
    }

    /// Heads of every document.
    pub fn heads(&mut self) -> BTreeMap<DocumentId, Vec<ChangeHash>> {
        self.docs
            .iter_mut()
            .map(|(id, doc)| (*id, doc.heads()))
            .collect()
    }

    /// A compacted save of a document (for the node's periodic compaction).
    pub fn save_document(&mut self, id: DocumentId) -> Option<Vec<u8>> {
        self.unpersisted_bytes.remove(&id);
        self.docs.get_mut(&id).map(MeshDocument::save)
    }

    /// Connected peers.
    pub fn peers(&self) -> impl Iterator<Item = &P> {
        self.peers.keys()
    }

    /// When the core next needs a [`PeerInput::Tick`]: the earliest of a
    /// delayed push, a pending pull and the next anti-entropy round (none
    /// while no peer is connected and nothing waits).
    pub fn poll_timeout(&self) -> Option<u64> {
        let anti_entropy = (!self.peers.is_empty()).then_some(self.next_anti_entropy_ms);
        [self.pending_offer_due(), anti_entropy]
            .into_iter()
            .flatten()
            .min()
    }

    /// When the earliest delayed push or pending pull falls due, if any:
    /// the part of [`PeerCore::poll_timeout`] that is not the periodic
    /// anti-entropy.
    pub fn pending_offer_due(&self) -> Option<u64> {
        let announce = (!self.announce_pending.is_empty()).then_some(self.now_ms);
        let push = self.push_due.values().min().copied();
        let pull = self.pull_due.values().map(|p| p.due_ms).min();
        [
            announce,
            push,
            pull,
            self.status_push_at,
            self.status_persist_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Feeds one event; returns what to do, in order.
    pub fn handle(&mut self, now_ms: u64, input: PeerInput<P>) -> Vec<PeerAction<P>> {
        let mut actions = Vec::new();
        self.now_ms = self.now_ms.max(now_ms);
        match input {
            PeerInput::Connected(peer) => {
                if !self.peers.contains_key(&peer) && self.peers.len() < self.config.max_peers {
                    let sync = self
                        .shared_with_departed
                        .remove(&peer)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(id, heads)| (id, resumed_sync(heads)))
                        .collect();
                    self.peers.insert(
                        peer.clone(),
                        PeerSession {
                            sync,
                            window_start_ms: now_ms,
                            ..PeerSession::default()
                        },
                    );
                    self.sync_all_documents(&peer, &mut actions);
                    self.send_status_digest(&peer, false, &mut actions);
                }
            }
            PeerInput::Disconnected(peer) => {
                if let Some(session) = self.peers.remove(&peer) {
                    self.remember_shared_heads(peer, session);
                }
                self.pull_due
                    .retain(|(_, from), _| self.peers.contains_key(from));
            }
            PeerInput::Message { from, bytes } => self.on_frame(now_ms, from, &bytes, &mut actions),
            PeerInput::HeadsAnnounced { from, bytes } => {
                self.on_announcement(from, &bytes, &mut actions)
            }
            PeerInput::Tick => {
                if now_ms >= self.next_anti_entropy_ms {
                    self.next_anti_entropy_ms =
                        now_ms.saturating_add(self.config.anti_entropy_interval_ms);
                    if let Some(peer) = self.random_peer() {
                        if let Some(session) = self.peers.get_mut(&peer) {
                            // A new round from the heads both sides last
                            // shared: stuck or lost exchanges start over, and
                            // the bloom filter covers only what changed since.
                            for state in session.sync.values_mut() {
                                *state = resumed_sync(state.shared_heads.clone());
                            }
                            session.fruitless_rounds.clear();
                            session.unanswered_frames = 0;
                        }
                        // One frame: the board digest and every document's
                        // heads. The peer starts a sync of each document
                        // whose heads differ (and the versions exchange if
                        // the boards differ); a converged pair stops there.
                        self.send_status_digest(&peer, true, &mut actions);
                    }
                }
            }
            PeerInput::PublishManifest(manifest) => {
                let what = format!(
                    "manifest {}@{}",
                    manifest.manifest.name, manifest.manifest.version
                );
                let result = self
                    .docs
                    .get_mut(&DocumentId::Catalog)
                    .map(|doc| write_manifest(doc, &manifest));
                self.after_local_write(DocumentId::Catalog, what, result, &mut actions);
            }
            PeerInput::SubmitIntent(intent) => {
                let what = format!(
                    "intent {} {}",
                    intent.intent.package,
                    hex::encode(intent.digest)
                );
                let result = self
                    .docs
                    .get_mut(&DocumentId::Intents)
                    .map(|doc| write_intent(doc, &intent));
                self.after_local_write(DocumentId::Intents, what, result, &mut actions);
            }
            PeerInput::ReportStatus {
                package,
                mut status,
            } => {
                status.known_intent_clock = self
                    .view
                    .intents
                    .iter()
                    .filter(|i| i.intent.package == package)
                    .map(|i| i.intent.clock)
                    .max()
                    .unwrap_or(0);
                let what = format!("status of {package}");
                let failures_before = self.board.own_failures().to_vec();
                match self.board.report(package, status) {
                    Ok(()) => {
                        let failures_changed = self.board.own_failures() != failures_before;
                        if let Some(own) = self.board.slot(&self.node_id) {
                            self.status_changed(own, failures_changed, &mut actions);
                        }
                    }
                    Err(err) => actions.push(PeerAction::WriteFailed {
                        what,
                        reason: err.to_string(),
                    }),
                }
            }
        }
        self.offer_due_changes(&mut actions);
        self.offer_due_status(&mut actions);
        self.persist_due_status(&mut actions);
        self.pull_due_heads(&mut actions);
        self.flush_announcements(&mut actions);
        actions
    }

    fn remember_shared_heads(&mut self, peer: P, session: PeerSession) {
        // Full: forget the lowest peer id's heads (deterministic, not the
        // oldest); that peer's next connection syncs from empty.
        if self.shared_with_departed.len() >= self.config.max_peers
            && let Some(evicted) = self.shared_with_departed.keys().next().cloned()
        {
            self.shared_with_departed.remove(&evicted);
        }
        let shared = session
            .sync
            .into_iter()
            .filter(|(_, state)| !state.shared_heads.is_empty())
            .map(|(id, state)| (id, state.shared_heads))
            .collect();
        self.shared_with_departed.insert(peer, shared);
    }

    /// Offers the documents whose push delay is over to every connected peer.
    fn offer_due_changes(&mut self, actions: &mut Vec<PeerAction<P>>) {
        let now = self.now_ms;
        let due: Vec<DocumentId> = self
            .push_due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(id, _)| *id)
            .collect();
        if due.is_empty() {
            return;
        }
        let peers: Vec<P> = self.peers.keys().cloned().collect();
        for id in due {
            self.push_due.remove(&id);
            for peer in &peers {
                self.sync_document(peer, id, actions);
            }
        }
    }

    /// Pulls announced heads that pushes did not bring in time.
    fn pull_due_heads(&mut self, actions: &mut Vec<PeerAction<P>>) {
        let now = self.now_ms;
        let due: Vec<(DocumentId, P)> = self
            .pull_due
            .iter()
            .filter(|(_, pull)| pull.due_ms <= now)
            .map(|(key, _)| key.clone())
            .collect();
        for key in due {
            let Some(pull) = self.pull_due.remove(&key) else {
                continue;
            };
            let (id, from) = key;
            let Some(doc) = self.docs.get_mut(&id) else {
                continue;
            };
            if pull.heads.iter().all(|head| doc.has_change(head)) {
                continue;
            }
            if let Some(state) = self
                .peers
                .get_mut(&from)
                .and_then(|session| session.sync.get_mut(&id))
            {
                *state = resumed_sync(state.shared_heads.clone());
            }
            self.sync_document(&from, id, actions);
        }
    }

    fn after_local_write<E: ToString>(
        &mut self,
        id: DocumentId,
        what: String,
        result: Option<Result<(), E>>,
        actions: &mut Vec<PeerAction<P>>,
    ) {
        match result {
            Some(Ok(())) => self.document_changed(id, None, actions),
            Some(Err(err)) => actions.push(PeerAction::WriteFailed {
                what,
                reason: err.to_string(),
            }),
            None => actions.push(PeerAction::WriteFailed {
                what,
                reason: format!("document {id} missing"),
            }),
        }
    }

    fn on_frame(&mut self, now_ms: u64, from: P, bytes: &[u8], actions: &mut Vec<PeerAction<P>>) {
        let max_frame = self.config.limits.max_sync_message_bytes + FRAME_OVERHEAD_BYTES;
        let refuse = |reason: String, actions: &mut Vec<PeerAction<P>>| {
            actions.push(PeerAction::Refused {
                from: from.clone(),
                reason,
            });
        };
        if bytes.len() > max_frame {
            return refuse(
                format!(
                    "frame is {} bytes, at most {max_frame} allowed",
                    bytes.len()
                ),
                actions,
            );
        }
        let Some(session) = self.peers.get_mut(&from) else {
            return refuse(
                "frame from a peer that is not connected".to_string(),
                actions,
            );
        };
        if now_ms.saturating_sub(session.window_start_ms) >= self.config.rate_window_ms {
            session.window_start_ms = now_ms;
            session.window_bytes = 0;
        }
        session.window_bytes = session.window_bytes.saturating_add(bytes.len());
        // The peer is alive and reading: frames sent to it are being answered.
        session.unanswered_frames = 0;
        if session.window_bytes > self.config.max_bytes_per_peer_per_window {
            return refuse(
                format!(
                    "peer sent over {} bytes within {} ms",
                    self.config.max_bytes_per_peer_per_window, self.config.rate_window_ms
                ),
                actions,
            );
        }
        // Status frames are read in place (most of their records are held
        // here already); anything else, or anything unusual, through prost.
        if let Some(exchange) = parse_status_frame(bytes) {
            return self.on_status_exchange(from, exchange, actions);
        }
        let frame = match wire::SyncFrame::decode(bytes) {
            Ok(frame) => frame,
            Err(err) => return refuse(format!("malformed sync frame: {err}"), actions),
        };
        if let Some(exchange) = &frame.status {
            return self.on_status_exchange(from, StatusExchangeRef::of(exchange), actions);
        }
        let Some(id) = frame.document.as_ref().and_then(DocumentId::from_wire) else {
            return refuse("sync frame names no known document".to_string(), actions);
        };
        let (Some(doc), Some(session)) = (self.docs.get_mut(&id), self.peers.get_mut(&from)) else {
            return;
        };
        let state = session.sync.entry(id).or_default();
        match doc.receive_sync_message(state, &frame.sync_message) {
            Ok(changed) => {
                let fruitless = session.fruitless_rounds.entry(id).or_default();
                *fruitless = if changed { 0 } else { *fruitless + 1 };
                let give_up = *fruitless > MAX_FRUITLESS_ROUNDS;
                if changed {
                    self.document_changed(id, Some(&from), actions);
                }
                if give_up {
                    // A pair that keeps talking without changing anything
                    // (e.g. both need a change neither holds) stops here;
                    // the next anti-entropy round starts it afresh.
                    if let Some(session) = self.peers.get_mut(&from) {
                        session.sync.remove(&id);
                        session.fruitless_rounds.remove(&id);
                    }
                    return;
                }
                self.sync_document(&from, id, actions);
            }
            Err(err) => {
                // Start this document's sync with the peer afresh.
                *state = sync::State::new();
                refuse(format!("document {id}: {err}"), actions);
            }
        }
    }

    fn on_announcement(&mut self, from: P, bytes: &[u8], actions: &mut Vec<PeerAction<P>>) {
        if bytes.len() > MAX_ANNOUNCEMENT_BYTES {
            actions.push(PeerAction::Refused {
                from,
                reason: format!(
                    "announcement is {} bytes, at most {MAX_ANNOUNCEMENT_BYTES}",
                    bytes.len()
                ),
            });
            return;
        }
        let announcement = match wire::HeadsAnnouncement::decode(bytes) {
            Ok(announcement) => announcement,
            Err(err) => {
                actions.push(PeerAction::Refused {
                    from,
                    reason: format!("malformed announcement: {err}"),
                });
                return;
            }
        };
        if !self.peers.contains_key(&from) {
            return;
        }
        let due_ms = self
            .now_ms
            .saturating_add(self.config.announce_pull_delay_ms);
        for entry in &announcement.documents {
            let Some(id) = entry.document.as_ref().and_then(DocumentId::from_wire) else {
                continue;
            };
            let Some(doc) = self.docs.get_mut(&id) else {
                continue;
            };
            let unknown: Vec<ChangeHash> = entry
                .heads
                .iter()
                .filter_map(|head| ChangeHash::try_from(head.as_slice()).ok())
                .filter(|hash| !doc.has_change(hash))
                .collect();
            if unknown.is_empty() {
                continue;
            }
            let key = (id, from.clone());
            if !self.pull_due.contains_key(&key) && self.pull_due.len() >= MAX_PENDING_PULLS {
                // Anti-entropy repairs what a full pull table misses.
                continue;
            }
            // A later announcement names newer heads; keep the first due time.
            let due_ms = self.pull_due.get(&key).map_or(due_ms, |p| p.due_ms);
            self.pull_due.insert(
                key,
                PendingPull {
                    due_ms,
                    heads: unknown,
                },
            );
        }
    }

    /// A document changed (locally, or by a frame from `source`): persist,
    /// schedule its offer to the peers, announce, and refresh what it means.
    fn document_changed(
        &mut self,
        id: DocumentId,
        source: Option<&P>,
        actions: &mut Vec<PeerAction<P>>,
    ) {
        self.generation += 1;
        if let Some(doc) = self.docs.get_mut(&id) {
            let bytes = doc.save_incremental();
            let pending = self.unpersisted_bytes.entry(id).or_default();
            *pending += bytes.len();
            if *pending > self.config.compact_after_bytes {
                *pending = 0;
                actions.push(PeerAction::PersistCompacted {
                    doc: id,
                    bytes: doc.save(),
                });
            } else if !bytes.is_empty() {
                actions.push(PeerAction::Persist { doc: id, bytes });
            }
        }
        // The source already has the change; the offer to it is the reply
        // `on_frame` sends, and at offer time automerge's state says it
        // needs nothing more.
        self.push_due.entry(id).or_insert(self.now_ms);
        // Only the author announces: a received change has already been
        // announced by its author and is pushed on to every other peer above,
        // so re-announcing would cost N² gossip messages per change.
        if source.is_none() {
            self.announce_pending.insert(id);
        }
        self.refresh_view(id, actions);
    }

    fn sync_all_documents(&mut self, peer: &P, actions: &mut Vec<PeerAction<P>>) {
        let ids: Vec<DocumentId> = self.docs.keys().copied().collect();
        for id in ids {
            self.sync_document(peer, id, actions);
        }
    }

    /// Sends the next sync message of `id` to `peer`, if automerge has one.
    fn sync_document(&mut self, peer: &P, id: DocumentId, actions: &mut Vec<PeerAction<P>>) {
        let (Some(doc), Some(session)) = (self.docs.get_mut(&id), self.peers.get_mut(peer)) else {
            return;
        };
        if !admits_frame(session, &self.config) {
            return;
        }
        let state = session.sync.entry(id).or_default();
        let Some(message) = doc.generate_sync_message(state) else {
            return;
        };
        if message.len() > self.config.limits.max_sync_message_bytes {
            // The peer would refuse it; start afresh at the next anti-entropy.
            *state = sync::State::new();
            tracing::warn!(document = %id, size = message.len(), "sync message over the limit not sent");
            return;
        }
        let frame = wire::SyncFrame {
            document: Some(id.to_wire()),
            sync_message: message,
            status: None,
        };
        emit_frame(session, peer, frame.encode_to_vec(), actions);
    }

    fn flush_announcements(&mut self, actions: &mut Vec<PeerAction<P>>) {
        if self.announce_pending.is_empty() {
            return;
        }
        let mut announcement = wire::HeadsAnnouncement::default();
        let pending: Vec<DocumentId> = self.announce_pending.iter().copied().collect();
        for id in pending {
            let Some(doc) = self.docs.get_mut(&id) else {
                self.announce_pending.remove(&id);
                continue;
            };
            let entry = wire::DocumentHeads {
                document: Some(id.to_wire()),
                heads: doc
                    .heads()
                    .iter()
                    .take(MAX_ANNOUNCED_HEADS_PER_DOCUMENT)
                    .map(|h| h.0.to_vec())
                    .collect(),
            };
            announcement.documents.push(entry);
            if announcement.encoded_len() > MAX_ANNOUNCEMENT_BYTES {
                // Left pending for the next call.
                announcement.documents.pop();
                break;
            }
            self.announce_pending.remove(&id);
        }
        if !announcement.documents.is_empty() {
            actions.push(PeerAction::AnnounceHeads {
                bytes: announcement.encode_to_vec(),
            });
        }
    }

    /// A record is new on the board: push it later, save the board later,
    /// and decide again if the failures it reports changed.
    fn status_changed(
        &mut self,
        node: Slot,
        failures_changed: bool,
        actions: &mut Vec<PeerAction<P>>,
    ) {
        self.generation += 1;
        self.status_dirty.insert(node);
        let now = self.now_ms;
        if self.status_push_at.is_none() {
            // Drawn from [½, 1½] × the delay: neighbours that got a record
            // at the same moment do not push it to each other at the same
            // moment, so the later one usually learns the earlier holds it.
            let delay = self.config.status_push_delay_ms;
            let jitter = splitmix64(&mut self.push_rng_state) % delay.saturating_add(1);
            self.status_push_at = Some(now.saturating_add(delay / 2).saturating_add(jitter));
        }
        self.status_persist_at
            .get_or_insert(now.saturating_add(self.config.status_persist_delay_ms));
        if failures_changed {
            self.refresh_targets(true, actions);
        }
    }

    /// Sends `peer` this board's digest (a connection, an anti-entropy
    /// round), and with `heads` every document's heads (an anti-entropy
    /// round: the peer syncs the documents whose heads differ).
    fn send_status_digest(&mut self, peer: &P, heads: bool, actions: &mut Vec<PeerAction<P>>) {
        let digest = self.board.digest();
        let documents = if heads {
            self.docs
                .iter_mut()
                .filter_map(|(id, doc)| {
                    let heads = doc.heads();
                    // Left out: the peer syncs a document not listed.
                    (heads.len() <= MAX_DIGEST_HEADS_PER_DOCUMENT).then(|| wire::DocumentHeads {
                        document: Some(id.to_wire()),
                        heads: heads.iter().map(|h| h.0.to_vec()).collect(),
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        let exchange = StatusExchangeRef {
            phase: wire::StatusPhase::Digest as i32,
            digest: &digest,
            documents,
            ..Default::default()
        };
        let frame = encode_status_frame(&exchange);
        self.send_status_frame(peer, frame, actions);
    }

    /// Sends `peer` this board's whole (node, seq) list.
    fn send_status_versions(&mut self, peer: &P, ask: bool, actions: &mut Vec<PeerAction<P>>) {
        let phase = if ask {
            wire::StatusPhase::VersionsAsk
        } else {
            wire::StatusPhase::Versions
        };
        self.board.sort();
        let digest = self.board.digest();
        let exchange = StatusExchangeRef {
            phase: phase as i32,
            digest: &digest,
            versions: self.board.versions().collect(),
            ..Default::default()
        };
        let frame = encode_status_frame(&exchange);
        self.send_status_frame(peer, frame, actions);
    }

    /// Sends `peer` the records in `slots` it is not known to hold, packed
    /// into frames of at most [`MAX_STATUS_FRAME_BYTES`], and notes that it
    /// holds them now.
    fn send_status_records(&mut self, peer: &P, slots: &[Slot], actions: &mut Vec<PeerAction<P>>) {
        let Some(session) = self.peers.get_mut(peer) else {
            return;
        };
        let mut frames: Vec<Vec<&[u8]>> = Vec::new();
        let mut current: Vec<&[u8]> = Vec::new();
        let mut current_bytes = 0;
        for &slot in slots {
            let Some((_, seq, bytes)) = self.board.at(slot) else {
                continue;
            };
            if is_known(&session.status_known, slot, seq) {
                continue;
            }
            if current_bytes + bytes.len() > MAX_STATUS_FRAME_BYTES && !current.is_empty() {
                frames.push(std::mem::take(&mut current));
                current_bytes = 0;
            }
            current_bytes += bytes.len();
            current.push(bytes);
            note_known(&mut session.status_known, slot, seq);
        }
        if !current.is_empty() {
            frames.push(current);
        }
        for records in frames {
            if !admits_frame(session, &self.config) {
                // The peer is silent; anti-entropy repairs what it misses.
                return;
            }
            let frame = encode_status_frame(&StatusExchangeRef {
                phase: wire::StatusPhase::Records as i32,
                records,
                ..Default::default()
            });
            emit_frame(session, peer, frame, actions);
        }
    }

    fn send_status_frame(&mut self, peer: &P, frame: Vec<u8>, actions: &mut Vec<PeerAction<P>>) {
        let Some(session) = self.peers.get_mut(peer) else {
            return;
        };
        if admits_frame(session, &self.config) {
            emit_frame(session, peer, frame, actions);
        }
    }

    /// A status exchange frame from `from`: merge its records, then answer
    /// what its phase asks. Any invalid part refuses the whole frame before
    /// anything is applied.
    fn on_status_exchange(
        &mut self,
        from: P,
        exchange: StatusExchangeRef<'_>,
        actions: &mut Vec<PeerAction<P>>,
    ) {
        let refuse = |reason: String, actions: &mut Vec<PeerAction<P>>| {
            actions.push(PeerAction::Refused {
                from: from.clone(),
                reason: format!("status exchange: {reason}"),
            });
        };
        let Ok(phase) = wire::StatusPhase::try_from(exchange.phase) else {
            return refuse(format!("unknown phase {}", exchange.phase), actions);
        };
        if !exchange.digest.is_empty() && exchange.digest.len() != 32 {
            return refuse(
                format!("digest of {} bytes", exchange.digest.len()),
                actions,
            );
        }
        if let Some(bad) = exchange.documents.iter().find(|d| {
            d.heads.len() > MAX_DIGEST_HEADS_PER_DOCUMENT
                || d.heads
                    .iter()
                    .any(|h| ChangeHash::try_from(h.as_slice()).is_err())
        }) {
            return refuse(
                format!(
                    "digest lists {} heads of a document (at most {MAX_DIGEST_HEADS_PER_DOCUMENT}, 32 bytes each)",
                    bad.heads.len()
                ),
                actions,
            );
        }
        if exchange.versions.len() > self.config.status.max_nodes {
            return refuse(
                format!(
                    "{} versions listed, at most {}",
                    exchange.versions.len(),
                    self.config.status.max_nodes
                ),
                actions,
            );
        }
        // Records held here already (most of a push, with several peers
        // relaying) are recognised from their header and one lookup.
        let mut records: Vec<(Incoming<'_>, &str, &[u8])> = Vec::new();
        let mut held: Vec<(Slot, u64)> = Vec::new();
        for bytes in &exchange.records {
            // A copy of a record held here: nothing to read in it.
            if let Some(copy) = self.board.held_exactly(bytes) {
                held.push(copy);
                continue;
            }
            let (node, seq) = match record_header(bytes) {
                Ok(header) => header,
                Err(err) => return refuse(err.to_string(), actions),
            };
            let slot = self.board.slot(node);
            if !self.board.would_take_at(slot, node, seq, bytes) {
                // Not taken means held: `slot` is set.
                if let Some(slot) = slot {
                    held.push((slot, seq));
                }
                continue;
            }
            // Most records take the walk; anything unusual is decoded.
            if let Some(record) = check_record(bytes) {
                records.push((Incoming::Checked(record), node, bytes));
                continue;
            }
            match NodeStatus::decode(bytes) {
                Ok(record) => records.push((Incoming::Decoded(record), node, bytes)),
                Err(err) => return refuse(err.to_string(), actions),
            }
        }
        if let Some(session) = self.peers.get_mut(&from) {
            for (slot, seq) in held {
                note_known(&mut session.status_known, slot, seq);
            }
        }
        let mut full = false;
        for (record, node, bytes) in records {
            let nodes_before = self.board.len();
            let (seq, merged) = match record {
                Incoming::Checked(record) => (record.seq, self.board.merge_checked(record, bytes)),
                Incoming::Decoded(record) => (record.seq, self.board.merge_decoded(record, bytes)),
            };
            let Some(slot) = self.board.slot(node) else {
                // Not on the board (it is full): nothing to note.
                if merged == Merged::BoardFull {
                    full = true;
                }
                continue;
            };
            if self.board.len() > nodes_before {
                self.slot_created(slot, node);
            }
            if let Some(session) = self.peers.get_mut(&from) {
                note_known(&mut session.status_known, slot, seq);
            }
            match merged {
                Merged::Stored { failures_changed } => {
                    self.status_changed(slot, failures_changed, actions)
                }
                Merged::OwnRefuted => self.status_changed(slot, false, actions),
                Merged::Stale => {}
                Merged::BoardFull => full = true,
            }
        }
        if full {
            refuse(
                format!(
                    "status board full ({} nodes, {} bytes at most): records of new nodes ignored",
                    self.config.status.max_nodes, self.config.status.max_bytes
                ),
                actions,
            );
        }
        match phase {
            wire::StatusPhase::Records => {}
            wire::StatusPhase::Digest => {
                if !exchange.documents.is_empty() {
                    self.sync_documents_that_differ(&from, &exchange.documents, actions);
                }
                if exchange.digest != self.board.digest().as_slice() {
                    self.send_status_versions(&from, true, actions);
                }
            }
            wire::StatusPhase::VersionsAsk | wire::StatusPhase::Versions => {
                // What the peer holds now is exactly its list (a node listed
                // twice: the last entry counts).
                let mut known: Vec<Option<u64>> = vec![None; self.board.len()];
                let mut unslotted: BTreeMap<Box<str>, u64> = BTreeMap::new();
                for (node, seq) in &exchange.versions {
                    match self.board.slot(node) {
                        Some(slot) => {
                            if let Some(held) = known.get_mut(slot as usize) {
                                *held = Some(*seq);
                            }
                        }
                        None => {
                            unslotted.insert((*node).into(), *seq);
                        }
                    }
                }
                let they_hold_more = !unslotted.is_empty()
                    || known.iter().enumerate().any(|(slot, theirs)| {
                        theirs.is_some_and(|theirs| {
                            self.board
                                .seq_at(slot as Slot)
                                .is_some_and(|mine| mine < theirs)
                        })
                    });
                self.board.sort();
                if let Some(session) = self.peers.get_mut(&from) {
                    session.status_known = known;
                    session.status_known_unslotted = unslotted;
                }
                let slots = self.board.slots();
                self.send_status_records(&from, &slots, actions);
                if phase == wire::StatusPhase::VersionsAsk && they_hold_more {
                    self.send_status_versions(&from, false, actions);
                }
            }
        }
    }

    /// An anti-entropy digest from `from` listed its heads of `documents`
    /// (validated): every document of ours whose heads differ, or that it
    /// did not list, gets a new sync round with `from`, from the heads both
    /// last shared (what the sender of the digest did on its side).
    fn sync_documents_that_differ(
        &mut self,
        from: &P,
        documents: &[wire::DocumentHeads],
        actions: &mut Vec<PeerAction<P>>,
    ) {
        let ids: Vec<DocumentId> = self.docs.keys().copied().collect();
        for id in ids {
            let theirs = documents
                .iter()
                .find(|d| d.document.as_ref().and_then(DocumentId::from_wire) == Some(id));
            let same = match (theirs, self.docs.get_mut(&id)) {
                (Some(theirs), Some(doc)) => {
                    let mut ours = doc.heads();
                    let mut theirs: Vec<ChangeHash> = theirs
                        .heads
                        .iter()
                        .filter_map(|h| ChangeHash::try_from(h.as_slice()).ok())
                        .collect();
                    ours.sort_unstable();
                    theirs.sort_unstable();
                    theirs.dedup();
                    ours == theirs
                }
                _ => false,
            };
            if same {
                continue;
            }
            if let Some(session) = self.peers.get_mut(from) {
                if let Some(state) = session.sync.get_mut(&id) {
                    *state = resumed_sync(state.shared_heads.clone());
                }
                session.fruitless_rounds.remove(&id);
            }
            self.sync_document(from, id, actions);
        }
    }

    /// A node's first record is on the board: what peers listed of it
    /// before it had a slot now counts for the slot.
    fn slot_created(&mut self, slot: Slot, node: &str) {
        for session in self.peers.values_mut() {
            if let Some(seq) = session.status_known_unslotted.remove(node) {
                note_known(&mut session.status_known, slot, seq);
            }
        }
    }

    /// Pushes the records new here, once their delay is over, to every
    /// peer not known to hold them.
    fn offer_due_status(&mut self, actions: &mut Vec<PeerAction<P>>) {
        if self.status_push_at.is_none_or(|at| at > self.now_ms) {
            return;
        }
        self.status_push_at = None;
        let dirty: Vec<Slot> = std::mem::take(&mut self.status_dirty).into_iter().collect();
        let peers: Vec<P> = self.peers.keys().cloned().collect();
        for peer in &peers {
            self.send_status_records(peer, &dirty, actions);
        }
    }

    /// Asks for the board to be saved once its delay is over.
    fn persist_due_status(&mut self, actions: &mut Vec<PeerAction<P>>) {
        if self.status_persist_at.is_none_or(|at| at > self.now_ms) {
            return;
        }
        self.status_persist_at = None;
        self.board.sort();
        actions.push(PeerAction::PersistStatusBoard {
            bytes: self.board.save(),
        });
    }

    /// splitmix64 over the seed: deterministic peer choice.
    fn random_peer(&mut self) -> Option<P> {
        if self.peers.is_empty() {
            return None;
        }
        let z = splitmix64(&mut self.rng_state);
        let index = (z % self.peers.len() as u64) as usize;
        self.peers.keys().nth(index).cloned()
    }

    /// Re-reads the meaning of document `id`; reports new rejections and
    /// changed targets.
    fn refresh_view(&mut self, id: DocumentId, actions: &mut Vec<PeerAction<P>>) {
        let Some(doc) = self.docs.get(&id) else {
            return;
        };
        let max_entries = self.config.limits.max_entries;
        let mut rejected = Vec::new();
        match id {
            DocumentId::Catalog => {
                let mut catalog = ManifestCatalog::new();
                read_catalog(
                    doc,
                    &self.trust,
                    max_entries,
                    &mut self.view.manifest_cache,
                    &mut catalog,
                    &mut rejected,
                );
                self.view.catalog = catalog;
            }
            DocumentId::Intents => {
                let mut intents = Vec::new();
                read_intents(
                    doc,
                    &self.trust,
                    max_entries,
                    &mut self.view.intent_cache,
                    &mut intents,
                    &mut rejected,
                );
                self.view.intents = intents;
            }
        }
        let rejected: BTreeSet<RejectedEntry> = rejected.into_iter().collect();
        let previous = self.view.rejected.remove(&id).unwrap_or_default();
        for entry in rejected.difference(&previous) {
            actions.push(PeerAction::Rejected(entry.clone()));
        }
        self.view.rejected.insert(id, rejected);
        if id == DocumentId::Intents {
            self.refresh_targets(false, actions);
        }
    }

    /// Decides the targets again from the intents and the quarantine
    /// (derived again from the board first if `failures_changed`).
    fn refresh_targets(&mut self, failures_changed: bool, actions: &mut Vec<PeerAction<P>>) {
        if failures_changed {
            self.view.quarantine = derive_quarantine(
                self.board.failure_reports(),
                self.config.quarantine_threshold,
            );
        }
        let targets = arbitrate(
            self.view.intents.iter().map(IntentFacts::from),
            &self.view.quarantine,
        );
        if targets != self.view.targets {
            self.generation += 1;
            self.view.targets = targets.clone();
            actions.push(PeerAction::TargetsChanged(targets));
        }
    }
}

/// A record new to the board, read by the walk or decoded.
enum Incoming<'a> {
    Checked(CheckedRecord<'a>),
    Decoded(NodeStatus),
}

/// Notes that a peer holds the record in `slot` up to `seq`.
fn note_known(known: &mut Vec<Option<u64>>, slot: Slot, seq: u64) {
    let index = slot as usize;
    if known.len() <= index {
        known.resize(index + 1, None);
    }
    let held = &mut known[index];
    *held = Some(held.map_or(seq, |held| held.max(seq)));
}

/// Whether the peer is known to hold the record in `slot` at `seq` or above.
fn is_known(known: &[Option<u64>], slot: Slot, seq: u64) -> bool {
    known
        .get(slot as usize)
        .copied()
        .flatten()
        .is_some_and(|held| held >= seq)
}

/// The unanswered-frame gate both sync and status frames pass: at most
/// `max_unanswered_frames_per_peer` frames go to a peer since it last sent
/// one. A silent peer is sent nothing more until it speaks again (its next
/// frame is answered as usual) or anti-entropy restarts the exchange.
fn admits_frame(session: &PeerSession, config: &PeerConfig) -> bool {
    session.unanswered_frames < config.max_unanswered_frames_per_peer
}

/// Sends a frame the gate admitted, counting it as unanswered.
fn emit_frame<P: Clone>(
    session: &mut PeerSession,
    to: &P,
    bytes: Vec<u8>,
    actions: &mut Vec<PeerAction<P>>,
) {
    session.unanswered_frames += 1;
    actions.push(PeerAction::Send {
        to: to.clone(),
        bytes,
    });
}

/// The next value of a splitmix64 stream.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A sync state that starts a new round from `shared_heads` (the heads both
/// sides were known to hold), as automerge does for a reconnecting peer. If
/// the peer has since lost them, automerge's reset brings it back to a full
/// sync.
fn resumed_sync(shared_heads: Vec<ChangeHash>) -> sync::State {
    let mut state = sync::State::new();
    state.shared_heads = shared_heads;
    state
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::intent::{Intent, IntentAction};
    use crate::manifest::Manifest;
    use crate::proto::v1::{SemVer, SkillPackage};
    use crate::release_state::{Health, ReleaseState};
    use crate::signing::PublisherKey;
    use crate::trust::TrustedPublisher;
    use semver::Version;

    fn publisher(n: u8) -> PublisherKey {
        PublisherKey::from_secret_bytes(&[n; 32])
    }

    fn trust() -> TrustRoot {
        let key = publisher(1);
        TrustRoot::new(1, [TrustedPublisher::new("release", key.verifying_key())]).unwrap()
    }

    fn package() -> PackageName {
        "com.example.counter".parse().unwrap()
    }

    fn signed_manifest(version: &str) -> SignedManifest {
        let v = Version::parse(version).unwrap();
        let proto = SkillPackage {
            package_name: package().to_string(),
            version: Some(SemVer {
                major: v.major,
                minor: v.minor,
                patch: v.patch,
                pre: String::new(),
                build: String::new(),
            }),
            dependencies: vec![],
            sha256: vec![7; 32],
            size: 10,
            chunk_size: 64 * 1024,
            chunk_sha256: vec![vec![7; 32]],
            abi_world: "clawmesh:skill/skill@0.1.0".to_string(),
            state_schema: 1,
            capabilities: None,
            description: String::new(),
        };
        let manifest = Manifest::from_proto(proto).unwrap();
        SignedManifest::sign(manifest, &[&publisher(1)]).unwrap()
    }

    fn signed_intent(
        key: &PublisherKey,
        version: &str,
        action: IntentAction,
        clock: u64,
    ) -> SignedIntent {
        let intent = Intent {
            package: package(),
            version: Version::parse(version).unwrap(),
            action,
            clock,
            author: key.key_id().clone(),
            issued_at_ms: 0,
            rollout_max_parallel_percent: 100,
        };
        SignedIntent::sign(intent, key).unwrap()
    }

    /// Cores wired by hand: every Send is queued and delivered in order;
    /// frames between blocked pairs are dropped.
    struct Net {
        cores: Vec<PeerCore<usize>>,
        queue: VecDeque<(usize, usize, PeerInput<usize>)>,
        blocked: BTreeSet<(usize, usize)>,
        refused: Vec<(usize, String)>,
        now: u64,
    }

    impl Net {
        fn new(count: usize) -> Net {
            let cores = (0..count)
                .map(|n| {
                    PeerCore::new(
                        PeerConfig::default(),
                        format!("node-{n}"),
                        trust(),
                        n as u64,
                    )
                })
                .collect();
            Net {
                cores,
                queue: VecDeque::new(),
                blocked: BTreeSet::new(),
                refused: Vec::new(),
                now: 0,
            }
        }

        fn input(&mut self, who: usize, input: PeerInput<usize>) {
            let actions = self.cores[who].handle(self.now, input);
            self.apply(who, actions);
        }

        fn connect_all(&mut self) {
            for a in 0..self.cores.len() {
                for b in 0..self.cores.len() {
                    if a != b {
                        self.input(a, PeerInput::Connected(b));
                    }
                }
            }
        }

        fn apply(&mut self, who: usize, actions: Vec<PeerAction<usize>>) {
            for action in actions {
                match action {
                    PeerAction::Send { to, bytes } => {
                        self.queue
                            .push_back((who, to, PeerInput::Message { from: who, bytes }))
                    }
                    PeerAction::AnnounceHeads { bytes } => {
                        for to in 0..self.cores.len() {
                            if to != who {
                                self.queue.push_back((
                                    who,
                                    to,
                                    PeerInput::HeadsAnnounced {
                                        from: who,
                                        bytes: bytes.clone(),
                                    },
                                ));
                            }
                        }
                    }
                    PeerAction::Refused { reason, .. } => self.refused.push((who, reason)),
                    _ => {}
                }
            }
        }

        /// Delivers every queued input; when the queue is empty, moves the
        /// clock to the earliest delayed push or pull and ticks that core.
        fn run(&mut self) {
            for _ in 0..100_000 {
                if let Some((from, to, input)) = self.queue.pop_front() {
                    if !self.blocked.contains(&(from, to)) {
                        self.input(to, input);
                    }
                    continue;
                }
                let next = (0..self.cores.len())
                    .filter_map(|who| self.cores[who].pending_offer_due().map(|at| (at, who)))
                    .min();
                let Some((at, who)) = next else {
                    return;
                };
                self.now = self.now.max(at);
                self.input(who, PeerInput::Tick);
            }
            panic!("network did not settle");
        }

        fn partition(&mut self, node: usize) {
            for other in 0..self.cores.len() {
                self.blocked.insert((node, other));
                self.blocked.insert((other, node));
            }
        }

        fn converged(&mut self) -> bool {
            let first = self.cores[0].heads();
            let board = self.cores[0].status_board().digest();
            self.cores
                .iter_mut()
                .all(|core| core.heads() == first && core.status_board().digest() == board)
        }

        /// Anti-entropy rounds (every core ticks every 5 s) until converged.
        fn anti_entropy_until_converged(&mut self) -> bool {
            for _ in 0..20 {
                self.now += 5_000;
                for who in 0..self.cores.len() {
                    self.input(who, PeerInput::Tick);
                }
                self.run();
                if self.converged() {
                    return true;
                }
            }
            false
        }
    }

    fn active(minor: u64) -> PackageStatus {
        PackageStatus {
            state: ReleaseState::Active,
            version: Some(Version::new(1, minor, 0)),
            running: Some(Version::new(1, minor, 0)),
            failed_version: None,
            health: Health::Healthy,
            updated_at_ms: 0,
            blobs_held: vec![],
            known_intent_clock: 0,
            detail: String::new(),
        }
    }

    fn report(package: PackageName, status: PackageStatus) -> PeerInput<usize> {
        PeerInput::ReportStatus { package, status }
    }

    #[test]
    fn statuses_written_during_a_partition_arrive_by_anti_entropy() {
        let mut net = Net::new(4);
        net.connect_all();
        net.run();
        net.partition(3);
        net.input(0, report(package(), active(0)));
        net.input(3, report(package(), active(1)));
        net.run();
        assert!(!net.cores[3].status_table().contains_key("node-0"));
        assert!(!net.cores[1].status_table().contains_key("node-3"));
        net.blocked.clear();
        assert!(net.anti_entropy_until_converged());
        for core in &net.cores {
            let table = core.status_table();
            assert_eq!(
                table["node-0"][&package()].version,
                Some(Version::new(1, 0, 0))
            );
            assert_eq!(
                table["node-3"][&package()].version,
                Some(Version::new(1, 1, 0))
            );
        }
        assert!(net.refused.is_empty(), "{:?}", net.refused);
    }

    #[test]
    fn a_node_restarted_without_its_disk_outranks_its_old_status() {
        let other: PackageName = "com.example.other".parse().unwrap();
        let mut net = Net::new(3);
        net.connect_all();
        net.run();
        for minor in 0..4 {
            net.input(0, report(package(), active(minor)));
        }
        net.run();
        assert_eq!(net.cores[2].status_board().seq("node-0"), Some(4));
        // node-0 comes back with no disk and reports only another package.
        for peer in [1, 2] {
            net.input(peer, PeerInput::Disconnected(0));
        }
        net.cores[0] = PeerCore::new(PeerConfig::default(), "node-0".into(), trust(), 99);
        net.input(0, report(other.clone(), active(7)));
        net.connect_all();
        net.run();
        assert!(net.anti_entropy_until_converged());
        for core in &net.cores {
            let mine = core.status_board().get("node-0").unwrap();
            assert!(mine.seq > 4, "seq {}", mine.seq);
            assert!(mine.packages.contains_key(&other));
            assert!(
                !mine.packages.contains_key(&package()),
                "the old life's status is gone"
            );
        }
    }

    #[test]
    fn the_saved_status_board_loads_back_with_its_quarantine() {
        let config = PeerConfig {
            quarantine_threshold: 1,
            ..PeerConfig::default()
        };
        let mut core: PeerCore<usize> = PeerCore::new(config.clone(), "n".into(), trust(), 1);
        core.handle(
            0,
            PeerInput::SubmitIntent(signed_intent(
                &publisher(1),
                "1.0.0",
                IntentAction::Deploy,
                1,
            )),
        );
        let mut failed = active(0);
        failed.state = ReleaseState::Failed;
        failed.running = None;
        core.handle(0, report(package(), failed));
        assert!(core.targets().is_empty(), "one failure quarantines 1.0.0");
        // Nothing is saved before the persist delay; then the whole board.
        // The push falls due within [½, 1½] × its delay.
        let push_at = core.poll_timeout().unwrap();
        let delay = config.status_push_delay_ms;
        assert!(
            (delay / 2..=delay + delay / 2).contains(&push_at),
            "{push_at}"
        );
        let saves: Vec<Vec<u8>> = core
            .handle(config.status_persist_delay_ms, PeerInput::Tick)
            .into_iter()
            .filter_map(|a| match a {
                PeerAction::PersistStatusBoard { bytes } => Some(bytes),
                _ => None,
            })
            .collect();
        assert_eq!(saves.len(), 1);
        let intents = core.save_document(DocumentId::Intents).unwrap();
        let mut restarted: PeerCore<usize> = PeerCore::new(config, "n".into(), trust(), 2);
        restarted
            .load_document(DocumentId::Intents, &intents)
            .unwrap();
        assert_eq!(
            restarted.targets().len(),
            1,
            "without the board, no quarantine"
        );
        assert_eq!(restarted.load_status_board(&saves[0]).unwrap(), 0);
        assert!(restarted.targets().is_empty(), "the quarantine is back");
        assert_eq!(
            restarted.status_board().digest(),
            core.status_board().digest()
        );
        restarted.handle(5_000, report(package(), active(1)));
        assert_eq!(restarted.status_board().seq("n"), Some(2));
        assert!(restarted.load_status_board(b"not a board").is_err());
    }

    #[test]
    fn hostile_status_exchanges_are_refused_without_change() {
        let mut core: PeerCore<usize> =
            PeerCore::new(PeerConfig::default(), "n".into(), trust(), 1);
        core.handle(0, PeerInput::Connected(7));
        core.handle(0, report(package(), active(0)));
        let before = core.status_board().digest();
        let good = NodeStatus {
            node_id: "m".into(),
            seq: 1,
            packages: BTreeMap::new(),
        }
        .encode();
        let frame = |exchange: wire::StatusExchange| {
            wire::SyncFrame {
                document: None,
                sync_message: vec![],
                status: Some(exchange),
            }
            .encode_to_vec()
        };
        let too_many_versions = wire::StatusExchange {
            phase: wire::StatusPhase::Versions as i32,
            versions: vec![
                wire::StatusVersion::default();
                StatusBoardLimits::default().max_nodes + 1
            ],
            ..Default::default()
        };
        let one_bad_record = wire::StatusExchange {
            records: vec![good, vec![0xff; 5]],
            ..Default::default()
        };
        let bad_phase = wire::StatusExchange {
            phase: 42,
            ..Default::default()
        };
        let short_digest = wire::StatusExchange {
            phase: wire::StatusPhase::Digest as i32,
            digest: vec![1; 7],
            ..Default::default()
        };
        for exchange in [too_many_versions, one_bad_record, bad_phase, short_digest] {
            let actions = core.handle(
                1,
                PeerInput::Message {
                    from: 7,
                    bytes: frame(exchange),
                },
            );
            assert!(
                actions.iter().any(|a| matches!(a, PeerAction::Refused { from: 7, reason } if reason.starts_with("status exchange"))),
                "{actions:?}"
            );
            assert_eq!(core.status_board().digest(), before);
        }
    }

    /// Sends in `actions`, as (to, bytes).
    fn sends(actions: &[PeerAction<usize>]) -> Vec<(usize, Vec<u8>)> {
        actions
            .iter()
            .filter_map(|a| match a {
                PeerAction::Send { to, bytes } => Some((*to, bytes.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_converged_pair_spends_one_digest_frame_per_anti_entropy_round() {
        let mut net = Net::new(2);
        net.connect_all();
        net.input(0, PeerInput::PublishManifest(signed_manifest("1.0.0")));
        net.input(
            1,
            PeerInput::SubmitIntent(signed_intent(
                &publisher(1),
                "1.0.0",
                IntentAction::Deploy,
                1,
            )),
        );
        net.input(0, report(package(), active(0)));
        net.run();
        assert!(net.converged());
        let generation = net.cores[1].generation();
        // The round: one frame (board digest and both documents' heads).
        net.now += 5_000;
        let round = net.cores[0].handle(net.now, PeerInput::Tick);
        let frames = sends(&round);
        assert_eq!(frames.len(), 1, "{round:?}");
        let (to, digest) = frames.into_iter().next().unwrap();
        assert_eq!(to, 1);
        let exchange = parse_status_frame(&digest).unwrap();
        assert_eq!(exchange.documents.len(), DocumentId::all().count());
        // The converged peer answers nothing and changes nothing.
        let answer = net.cores[1].handle(
            net.now,
            PeerInput::Message {
                from: 0,
                bytes: digest.clone(),
            },
        );
        assert!(answer.is_empty(), "{answer:?}");
        assert_eq!(net.cores[1].generation(), generation);
        // A peer that lacks a change answers with a sync of that document
        // alone, and the exchange brings it over.
        net.cores[0].handle(
            net.now,
            PeerInput::SubmitIntent(signed_intent(
                &publisher(1),
                "1.0.0",
                IntentAction::Pause,
                2,
            )),
        );
        let newer = sends(&net.cores[0].handle(net.now + 5_000, PeerInput::Tick));
        let digest = newer
            .into_iter()
            .find(|(_, bytes)| parse_status_frame(bytes).is_some())
            .map(|(_, bytes)| bytes)
            .unwrap();
        let answer = net.cores[1].handle(
            net.now,
            PeerInput::Message {
                from: 0,
                bytes: digest,
            },
        );
        let answered: Vec<Option<DocumentId>> = sends(&answer)
            .iter()
            .map(|(_, bytes)| {
                wire::SyncFrame::decode(bytes.as_slice())
                    .unwrap()
                    .document
                    .as_ref()
                    .and_then(DocumentId::from_wire)
            })
            .collect();
        assert_eq!(answered, vec![Some(DocumentId::Intents)]);
        net.apply(1, answer);
        net.run();
        assert!(net.converged());
        assert!(net.cores[1].targets()[&package()].paused);
    }

    #[test]
    fn digests_with_bad_heads_are_refused() {
        let mut core: PeerCore<usize> =
            PeerCore::new(PeerConfig::default(), "n".into(), trust(), 1);
        core.handle(0, PeerInput::Connected(7));
        let board = core.status_board().digest().to_vec();
        let digest = |heads: Vec<Vec<u8>>| {
            let exchange = wire::StatusExchange {
                phase: wire::StatusPhase::Digest as i32,
                digest: board.clone(),
                documents: vec![wire::DocumentHeads {
                    document: Some(DocumentId::Intents.to_wire()),
                    heads,
                }],
                ..Default::default()
            };
            encode_status_frame(&StatusExchangeRef::of(&exchange))
        };
        for heads in [
            vec![vec![1; 31]],
            vec![vec![2; 32]; MAX_DIGEST_HEADS_PER_DOCUMENT + 1],
        ] {
            let frame = digest(heads);
            let actions = core.handle(
                1,
                PeerInput::Message {
                    from: 7,
                    bytes: frame,
                },
            );
            assert!(
                matches!(actions.as_slice(), [PeerAction::Refused { from: 7, reason }] if reason.contains("heads of a document")),
                "{actions:?}"
            );
        }
    }

    #[test]
    fn three_cores_converge_on_catalog_intents_status_and_targets() {
        let mut net = Net::new(3);
        net.connect_all();
        net.run();
        net.input(0, PeerInput::PublishManifest(signed_manifest("1.0.0")));
        net.input(
            1,
            PeerInput::SubmitIntent(signed_intent(
                &publisher(1),
                "1.0.0",
                IntentAction::Deploy,
                1,
            )),
        );
        let status = PackageStatus {
            state: ReleaseState::Active,
            version: Some(Version::new(1, 0, 0)),
            running: Some(Version::new(1, 0, 0)),
            failed_version: None,
            health: Health::Healthy,
            updated_at_ms: 5,
            blobs_held: vec![[7; 32]],
            known_intent_clock: 0,
            detail: String::new(),
        };
        net.run();
        net.input(
            2,
            PeerInput::ReportStatus {
                package: package(),
                status,
            },
        );
        net.run();
        assert!(net.converged());
        for core in &net.cores {
            assert_eq!(core.targets()[&package()].version, Version::new(1, 0, 0));
            assert_eq!(core.catalog()[&package()].len(), 1);
            let table = core.status_table();
            let reported = &table["node-2"][&package()];
            assert_eq!(reported.state, ReleaseState::Active);
            assert_eq!(reported.known_intent_clock, 1);
            assert!(core.rejected().is_empty());
        }
        assert!(net.refused.is_empty(), "{:?}", net.refused);
    }

    #[test]
    fn partitioned_core_catches_up_by_anti_entropy() {
        let mut net = Net::new(3);
        net.connect_all();
        net.run();
        net.partition(2);
        net.input(
            0,
            PeerInput::SubmitIntent(signed_intent(
                &publisher(1),
                "1.0.0",
                IntentAction::Deploy,
                1,
            )),
        );
        net.input(
            1,
            PeerInput::SubmitIntent(signed_intent(
                &publisher(1),
                "2.0.0",
                IntentAction::Deploy,
                2,
            )),
        );
        net.run();
        assert!(net.cores[2].targets().is_empty());
        net.blocked.clear();
        // Only anti-entropy can repair: gossip already went by.
        for round in 1..=20 {
            net.now = round * 5_000;
            for who in 0..3 {
                net.input(who, PeerInput::Tick);
            }
            net.run();
            if net.converged() {
                break;
            }
        }
        assert!(net.converged());
        for core in &net.cores {
            assert_eq!(core.targets()[&package()].version, Version::new(2, 0, 0));
        }
    }

    #[test]
    fn forged_and_untrusted_intents_are_ignored_identically() {
        let mut net = Net::new(3);
        net.connect_all();
        net.run();
        net.input(
            0,
            PeerInput::SubmitIntent(signed_intent(
                &publisher(1),
                "1.0.0",
                IntentAction::Deploy,
                1,
            )),
        );
        // Signed by a key outside the trust root.
        net.input(
            1,
            PeerInput::SubmitIntent(signed_intent(
                &publisher(9),
                "9.0.0",
                IntentAction::Deploy,
                50,
            )),
        );
        // A trusted intent whose payload was altered after signing.
        let mut forged = signed_intent(&publisher(1), "8.0.0", IntentAction::Deploy, 60);
        forged.envelope.payload.push(0);
        net.input(2, PeerInput::SubmitIntent(forged));
        net.run();
        assert!(net.converged());
        let rejected = net.cores[0].rejected();
        assert_eq!(rejected.len(), 2, "{rejected:?}");
        for core in &net.cores {
            assert_eq!(core.rejected(), rejected);
            assert_eq!(core.targets()[&package()].version, Version::new(1, 0, 0));
        }
    }

    #[test]
    fn malformed_frames_and_announcements_are_refused_without_loss() {
        let mut core: PeerCore<usize> =
            PeerCore::new(PeerConfig::default(), "n".into(), trust(), 1);
        core.handle(0, PeerInput::Connected(7));
        core.handle(
            0,
            PeerInput::SubmitIntent(signed_intent(
                &publisher(1),
                "1.0.0",
                IntentAction::Deploy,
                1,
            )),
        );
        let before = core.heads();
        let bad_doc = wire::SyncFrame {
            document: Some(wire::DocumentId { kind: 99, shard: 0 }),
            sync_message: vec![],
            status: None,
        }
        .encode_to_vec();
        let bad_sync = wire::SyncFrame {
            document: Some(DocumentId::Intents.to_wire()),
            sync_message: vec![0x42, 1, 2, 3],
            status: None,
        }
        .encode_to_vec();
        for bytes in [vec![0xff; 9], bad_doc, bad_sync] {
            let actions = core.handle(1, PeerInput::Message { from: 7, bytes });
            assert!(
                actions
                    .iter()
                    .any(|a| matches!(a, PeerAction::Refused { from: 7, .. }))
            );
        }
        let actions = core.handle(
            1,
            PeerInput::HeadsAnnounced {
                from: 7,
                bytes: vec![0; 2_000],
            },
        );
        assert!(matches!(actions.as_slice(), [PeerAction::Refused { .. }]));
        assert_eq!(core.heads(), before);
        assert_eq!(core.targets().len(), 1);
    }

    #[test]
    fn quarantine_from_failed_reports_moves_every_core_back() {
        let mut net = Net::new(3);
        net.connect_all();
        net.run();
        net.input(
            0,
            PeerInput::SubmitIntent(signed_intent(
                &publisher(1),
                "1.0.0",
                IntentAction::Deploy,
                1,
            )),
        );
        net.input(
            0,
            PeerInput::SubmitIntent(signed_intent(
                &publisher(1),
                "2.0.0",
                IntentAction::Deploy,
                2,
            )),
        );
        net.run();
        for who in 0..3 {
            let status = PackageStatus {
                state: ReleaseState::Active,
                version: Some(Version::new(1, 0, 0)),
                running: Some(Version::new(1, 0, 0)),
                failed_version: Some(Version::new(2, 0, 0)),
                health: Health::Healthy,
                updated_at_ms: 1,
                blobs_held: vec![],
                known_intent_clock: 0,
                detail: "deployment failed".into(),
            };
            net.input(
                who,
                PeerInput::ReportStatus {
                    package: package(),
                    status,
                },
            );
        }
        net.run();
        for core in &net.cores {
            assert_eq!(core.targets()[&package()].version, Version::new(1, 0, 0));
            assert_eq!(core.quarantine().len(), 1);
        }
        // Only a newer intent (clock above every failing node's known clock, 2) lifts it.
        net.input(
            1,
            PeerInput::SubmitIntent(signed_intent(
                &publisher(1),
                "2.0.0",
                IntentAction::Deploy,
                3,
            )),
        );
        net.run();
        for core in &net.cores {
            assert_eq!(core.targets()[&package()].version, Version::new(2, 0, 0));
        }
    }

    #[test]
    fn announced_unknown_heads_start_a_sync_with_the_announcer() {
        let mut net = Net::new(2);
        net.connect_all();
        net.run();
        let actions = net.cores[0].handle(
            0,
            PeerInput::SubmitIntent(signed_intent(
                &publisher(1),
                "1.0.0",
                IntentAction::Deploy,
                1,
            )),
        );
        // Drop the direct offer; keep only the gossip announcement.
        let announcement = actions
            .into_iter()
            .find_map(|action| match action {
                PeerAction::AnnounceHeads { bytes } => Some(bytes),
                _ => None,
            })
            .unwrap();
        assert!(announcement.len() <= MAX_ANNOUNCEMENT_BYTES);
        let actions = net.cores[1].handle(
            0,
            PeerInput::HeadsAnnounced {
                from: 0,
                bytes: announcement,
            },
        );
        // A push may still bring the change: no pull yet.
        assert!(actions.is_empty(), "{actions:?}");
        let due = PeerConfig::default().announce_pull_delay_ms;
        assert_eq!(net.cores[1].pending_offer_due(), Some(due));
        let actions = net.cores[1].handle(due, PeerInput::Tick);
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, PeerAction::Send { to: 0, .. }))
        );
        net.apply(1, actions);
        net.run();
        assert!(net.converged());
        assert_eq!(
            net.cores[1].targets()[&package()].version,
            Version::new(1, 0, 0)
        );
    }

    #[test]
    fn frames_to_a_silent_peer_are_bounded() {
        let config = PeerConfig {
            max_unanswered_frames_per_peer: 5,
            ..PeerConfig::default()
        };
        let mut core: PeerCore<u32> = PeerCore::new(config, "n".into(), trust(), 1);
        let mut sent = core
            .handle(0, PeerInput::Connected(1))
            .into_iter()
            .filter(|a| matches!(a, PeerAction::Send { .. }))
            .count();
        for clock in 1..20 {
            let intent = signed_intent(&publisher(1), "1.0.0", IntentAction::Deploy, clock);
            sent += core
                .handle(0, PeerInput::SubmitIntent(intent))
                .into_iter()
                .filter(|a| matches!(a, PeerAction::Send { .. }))
                .count();
        }
        assert_eq!(sent, 5);
    }

    #[test]
    fn same_seed_and_inputs_give_the_same_actions() {
        let run = || {
            let mut core: PeerCore<u32> =
                PeerCore::new(PeerConfig::default(), "n".into(), trust(), 42);
            let mut all = Vec::new();
            for peer in [5, 3, 9] {
                all.extend(core.handle(0, PeerInput::Connected(peer)));
            }
            all.extend(core.handle(
                1,
                PeerInput::SubmitIntent(signed_intent(
                    &publisher(1),
                    "1.0.0",
                    IntentAction::Deploy,
                    1,
                )),
            ));
            for t in 0..5 {
                all.extend(core.handle(t * 10_000, PeerInput::Tick));
            }
            all
        };
        assert_eq!(run(), run());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        #[test]
        fn any_delivery_order_and_loss_converges_to_the_same_targets(
            submissions in proptest::collection::vec((0usize..3, 0u64..3, 0u8..3, 1u64..6), 1..8),
            picks in proptest::collection::vec(proptest::prelude::any::<u16>(), 0..400),
            drop_every in 2usize..9,
        ) {
            let mut net = Net::new(3);
            net.connect_all();
            let mut all = Vec::new();
            for (who, minor, action, clock) in submissions {
                let action = [IntentAction::Deploy, IntentAction::Rollback, IntentAction::Pause][action as usize];
                let intent = signed_intent(&publisher(1), &format!("1.{minor}.0"), action, clock);
                all.push(IntentFacts::from(&intent));
                net.input(who, PeerInput::SubmitIntent(intent));
            }
            // Deliver in a random order, dropping some frames.
            for (n, pick) in picks.into_iter().enumerate() {
                if net.queue.is_empty() {
                    break;
                }
                // A random pair, but each pair's frames in order: a stream is ordered.
                let (from, to) = {
                    let (from, to, _) = &net.queue[pick as usize % net.queue.len()];
                    (*from, *to)
                };
                let index = net.queue.iter().position(|(f, t, _)| (*f, *t) == (from, to)).unwrap_or(0);
                let Some((_, to, input)) = net.queue.remove(index) else { break };
                if n % drop_every != 0 {
                    net.input(to, input);
                }
            }
            net.queue.clear();
            for round in 1..=30u64 {
                net.now = round * 5_000;
                for who in 0..3 {
                    net.input(who, PeerInput::Tick);
                }
                net.run();
                if net.converged() {
                    break;
                }
            }
            proptest::prop_assert!(net.converged());
            let expected = arbitrate(all, &QuarantineSet::new());
            for core in &net.cores {
                proptest::prop_assert_eq!(core.targets(), &expected);
            }
        }

        #[test]
        fn arbitrary_frames_never_panic_nor_lose_documents(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600), document in 0i32..5) {
            let mut core: PeerCore<usize> = PeerCore::new(PeerConfig::default(), "n".into(), trust(), 1);
            core.handle(0, PeerInput::Connected(7));
            core.handle(0, PeerInput::SubmitIntent(signed_intent(&publisher(1), "1.0.0", IntentAction::Deploy, 1)));
            let before = core.heads();
            core.handle(1, PeerInput::Message { from: 7, bytes: bytes.clone() });
            let board_before = core.status_board().digest();
            let framed = wire::SyncFrame {
                document: Some(wire::DocumentId { kind: document, shard: 0 }),
                sync_message: bytes.clone(),
                status: None,
            }
            .encode_to_vec();
            core.handle(1, PeerInput::Message { from: 7, bytes: framed });
            let status = wire::SyncFrame {
                document: None,
                sync_message: vec![],
                status: Some(wire::StatusExchange {
                    phase: document,
                    digest: bytes.iter().copied().take(32).collect(),
                    versions: vec![],
                    records: vec![bytes.clone()],
                    documents: vec![],
                }),
            }
            .encode_to_vec();
            core.handle(1, PeerInput::Message { from: 7, bytes: status });
            core.handle(1, PeerInput::HeadsAnnounced { from: 7, bytes });
            proptest::prop_assert_eq!(core.heads(), before);
            proptest::prop_assert_eq!(core.status_board().digest(), board_before);
            proptest::prop_assert_eq!(core.targets().len(), 1);
        }
    }

    #[test]
    fn persisted_documents_load_back() {
        let mut core: PeerCore<usize> =
            PeerCore::new(PeerConfig::default(), "n".into(), trust(), 1);
        let actions = core.handle(
            0,
            PeerInput::SubmitIntent(signed_intent(
                &publisher(1),
                "1.0.0",
                IntentAction::Deploy,
                1,
            )),
        );
        let mut file = Vec::new();
        for action in actions {
            if let PeerAction::Persist {
                doc: DocumentId::Intents,
                bytes,
            } = action
            {
                file.extend(bytes);
            }
        }
        let mut restarted: PeerCore<usize> =
            PeerCore::new(PeerConfig::default(), "n".into(), trust(), 2);
        restarted.load_document(DocumentId::Intents, &file).unwrap();
        assert_eq!(restarted.targets(), core.targets());
    }
}
