//! The fetch planner: sans-I/O. It decides which chunks to ask which peer
//! for, verifies every chunk that comes back against the manifest's hash,
//! re-queues the work of peers that fail, vanish or lie, steals slow chunks
//! and says when the fetch is done or cannot finish. Time is passed in, so
//! the same code runs under tests, the proptest and the network driver.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::layout::ChunkLayout;

/// Default `PlanConfig::max_chunks_per_request`.
pub const DEFAULT_CHUNKS_PER_REQUEST: usize = 8;
/// Default `PlanConfig::max_requests_per_peer`.
pub const DEFAULT_REQUESTS_PER_PEER: usize = 4;
/// Default `PlanConfig::max_inflight_bytes`: the fetch's memory bound.
pub const DEFAULT_MAX_INFLIGHT_BYTES: u64 = 64 * 1024 * 1024;
/// Default `PlanConfig::steal_after`.
pub const DEFAULT_STEAL_AFTER: Duration = Duration::from_secs(5);
/// Default `PlanConfig::max_peer_failures`.
pub const DEFAULT_MAX_PEER_FAILURES: u32 = 3;
/// Default `PlanConfig::max_copies`.
pub const DEFAULT_MAX_COPIES: usize = 2;
/// Default `PlanConfig::max_peers`.
pub const DEFAULT_MAX_PEERS: usize = 32;

/// The planner's bounds.
#[derive(Debug, Clone, Copy)]
pub struct PlanConfig {
    /// Chunks asked for in one request (at most `wire::MAX_CHUNKS_PER_REQUEST`).
    pub max_chunks_per_request: usize,
    /// Requests in flight to one peer.
    pub max_requests_per_peer: usize,
    /// Bytes of chunks asked for and not yet received, over all peers. One
    /// request is always allowed when nothing is in flight, so a chunk larger
    /// than this bound still gets fetched.
    pub max_inflight_bytes: u64,
    /// A request older than this has its missing chunks asked again of
    /// another peer (work stealing), once nothing unasked is left.
    pub steal_after: Duration,
    /// Consecutive failed requests after which a peer is dropped for this blob.
    pub max_peer_failures: u32,
    /// Copies of one chunk in flight at once (1 = no stealing).
    pub max_copies: usize,
    /// Peers one fetch knows (asked, banned or gone), those it starts with
    /// and those that join it later together; more are not taken.
    pub max_peers: usize,
}

impl Default for PlanConfig {
    fn default() -> Self {
        Self {
            max_chunks_per_request: DEFAULT_CHUNKS_PER_REQUEST,
            max_requests_per_peer: DEFAULT_REQUESTS_PER_PEER,
            max_inflight_bytes: DEFAULT_MAX_INFLIGHT_BYTES,
            steal_after: DEFAULT_STEAL_AFTER,
            max_peer_failures: DEFAULT_MAX_PEER_FAILURES,
            max_copies: DEFAULT_MAX_COPIES,
            max_peers: DEFAULT_MAX_PEERS,
        }
    }
}

/// Identifies one request the planner issued.
pub type RequestId = u64;

/// A request to send: ask `peer` for `chunks` of the blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRequest<P> {
    /// The planner's id for it; pass it back with every reply.
    pub id: RequestId,
    /// Whom to ask.
    pub peer: P,
    /// Chunk indexes, ascending.
    pub chunks: Vec<u32>,
}

/// What the planner made of a chunk a peer sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkVerdict<P> {
    /// Verified and new: write it at its offset.
    Accept,
    /// Verified, but another peer delivered it first: drop it.
    Duplicate,
    /// The request was cancelled (its peer was banned or dropped): drop it.
    Stale,
    /// The request did not ask for this chunk: the peer breaks the protocol;
    /// the request is failed.
    Unexpected,
    /// The bytes do not hash to the manifest's chunk hash: `peer` is banned
    /// for this blob and its requests are cancelled.
    Lied {
        /// The liar.
        peer: P,
    },
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestEnd {
    /// The stream ended cleanly (chunks not answered are re-queued).
    Finished,
    /// The stream failed or timed out.
    Failed,
}

/// Where the fetch stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanStatus {
    /// Work is in flight or can be issued.
    Running,
    /// Every chunk is held and verified.
    Done,
    /// Nothing is in flight and these chunks have no live peer left that
    /// might hold them.
    NoProviders {
        /// The chunks nobody can serve.
        missing: Vec<u32>,
    },
}

/// What `FetchPlan::rediscover` made of a peer a provider lookup named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rediscovered {
    /// A new peer: it joins the fetch.
    Joined,
    /// A known peer gets another chance: its "not held" answers are
    /// forgotten (it may hold the blob now) and a gone peer is live again.
    Refreshed,
    /// Nothing changes: a liar stays banned, a live peer that never said
    /// "not held" is already asked.
    Unchanged,
    /// The fetch already knows `max_peers` peers.
    Full,
}

/// Why a peer is no longer asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerStanding {
    /// Asked.
    Live,
    /// Served a chunk whose hash was wrong.
    Banned {
        /// The first chunk it lied about.
        chunk: u32,
    },
    /// Vanished, or failed `max_peer_failures` requests in a row.
    Gone,
}

#[derive(Debug)]
struct PeerSlot {
    standing: PeerStanding,
    lacks: BTreeSet<u32>,
    requests: usize,
    failures: u32,
    chunks_served: u64,
}

#[derive(Debug)]
struct RequestSlot<P> {
    peer: P,
    /// Every chunk asked for.
    chunks: BTreeSet<u32>,
    /// Asked for and not yet answered, nor delivered by another peer.
    pending: BTreeSet<u32>,
    started: Instant,
    stolen: bool,
}

/// The planner for one blob.
#[derive(Debug)]
pub struct FetchPlan<P> {
    layout: ChunkLayout,
    config: PlanConfig,
    held: Vec<bool>,
    held_count: usize,
    /// Per chunk, the requests it is in flight in.
    asked: Vec<Vec<RequestId>>,
    peers: BTreeMap<P, PeerSlot>,
    requests: BTreeMap<RequestId, RequestSlot<P>>,
    next_id: RequestId,
    inflight_bytes: u64,
}

impl<P: Clone + Ord + Debug> FetchPlan<P> {
    /// A plan for `layout`, where `held[i]` says chunk `i` is already held
    /// and verified (resume; missing entries count as not held).
    pub fn new(
        layout: ChunkLayout,
        held: &[bool],
        peers: impl IntoIterator<Item = P>,
        config: PlanConfig,
    ) -> Self {
        let count = layout.chunk_count();
        let held: Vec<bool> = (0..count)
            .map(|i| held.get(i).copied().unwrap_or(false))
            .collect();
        let held_count = held.iter().filter(|h| **h).count();
        let mut plan = Self {
            layout,
            config,
            held,
            held_count,
            asked: vec![Vec::new(); count],
            peers: BTreeMap::new(),
            requests: BTreeMap::new(),
            next_id: 0,
            inflight_bytes: 0,
        };
        for peer in peers {
            plan.add_peer(peer);
        }
        plan
    }

    /// The blob being fetched.
    pub fn layout(&self) -> &ChunkLayout {
        &self.layout
    }

    /// Adds a candidate peer (a banned or gone peer stays so); returns
    /// whether it is new. Past `max_peers` known peers, none is added.
    pub fn add_peer(&mut self, peer: P) -> bool {
        if self.peers.contains_key(&peer) || self.peers.len() >= self.config.max_peers.max(1) {
            return false;
        }
        self.peers.insert(
            peer,
            PeerSlot {
                standing: PeerStanding::Live,
                lacks: BTreeSet::new(),
                requests: 0,
                failures: 0,
                chunks_served: 0,
            },
        );
        true
    }

    /// A provider lookup made while the fetch runs named `peer`: a new peer
    /// joins (within `max_peers`); a known one that said "not held" or was
    /// dropped as gone is asked again, since it may have fetched the blob
    /// or come back since. A liar stays banned.
    pub fn rediscover(&mut self, peer: P) -> Rediscovered {
        let Some(slot) = self.peers.get_mut(&peer) else {
            return if self.add_peer(peer) {
                Rediscovered::Joined
            } else {
                Rediscovered::Full
            };
        };
        match slot.standing {
            PeerStanding::Banned { .. } => Rediscovered::Unchanged,
            PeerStanding::Gone => {
                slot.standing = PeerStanding::Live;
                slot.failures = 0;
                slot.lacks.clear();
                Rediscovered::Refreshed
            }
            PeerStanding::Live if slot.lacks.is_empty() => Rediscovered::Unchanged,
            PeerStanding::Live => {
                slot.lacks.clear();
                Rediscovered::Refreshed
            }
        }
    }

    /// Whether some missing chunk has no live peer left that might hold it,
    /// requests in flight or not: the fetch is short of peers.
    pub fn short_of_peers(&self) -> bool {
        self.unservable().next().is_some()
    }

    /// Missing chunks no live peer might hold.
    fn unservable(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.held.len())
            .filter(|&i| !self.held[i])
            .filter_map(|i| u32::try_from(i).ok())
            .filter(|&c| !self.peers.values().any(|s| self.can_serve(s, c)))
    }

    /// Chunks held and verified so far.
    pub fn held_chunks(&self) -> usize {
        self.held_count
    }

    /// Bytes of chunks asked for and not yet received.
    pub fn inflight_bytes(&self) -> u64 {
        self.inflight_bytes
    }

    /// Peers banned for lying, with the first chunk each lied about.
    pub fn liars(&self) -> Vec<(P, u32)> {
        self.peers
            .iter()
            .filter_map(|(p, s)| match s.standing {
                PeerStanding::Banned { chunk } => Some((p.clone(), chunk)),
                _ => None,
            })
            .collect()
    }

    /// Peers that delivered at least one accepted chunk, with how many.
    pub fn peers_used(&self) -> Vec<(P, u64)> {
        self.peers
            .iter()
            .filter(|(_, s)| s.chunks_served > 0)
            .map(|(p, s)| (p.clone(), s.chunks_served))
            .collect()
    }

    /// How `peer` stands, if it is known.
    pub fn standing(&self, peer: &P) -> Option<PeerStanding> {
        self.peers.get(peer).map(|s| s.standing)
    }

    /// Live peers.
    pub fn live_peers(&self) -> usize {
        self.peers
            .values()
            .filter(|s| s.standing == PeerStanding::Live)
            .count()
    }

    fn can_serve(&self, peer: &PeerSlot, chunk: u32) -> bool {
        peer.standing == PeerStanding::Live && !peer.lacks.contains(&chunk)
    }

    /// `max_chunks_per_request`, within what the wire carries.
    fn chunks_per_request(&self) -> usize {
        self.config
            .max_chunks_per_request
            .clamp(1, super::wire::MAX_CHUNKS_PER_REQUEST)
    }

    fn budget_allows(&self, len: u32) -> bool {
        self.inflight_bytes == 0
            || self.inflight_bytes + u64::from(len) <= self.config.max_inflight_bytes
    }

    /// The requests to send now: unasked chunks spread over the live peers
    /// with room, then (when nothing is unasked) copies of chunks whose
    /// request is older than `steal_after`, to another peer.
    pub fn next_requests(&mut self, now: Instant) -> Vec<ChunkRequest<P>> {
        let mut out = Vec::new();
        let per_request = self.chunks_per_request();
        let unasked: Vec<u32> = (0..self.held.len())
            .filter(|&i| !self.held[i] && self.asked[i].is_empty())
            .filter_map(|i| u32::try_from(i).ok())
            .collect();
        let mut unasked: BTreeSet<u32> = unasked.into_iter().collect();
        // Fill the least busy peer first, one request at a time, so the work
        // spreads over every peer.
        loop {
            let Some(peer) = self
                .peers
                .iter()
                .filter(|(_, s)| {
                    s.standing == PeerStanding::Live
                        && s.requests < self.config.max_requests_per_peer
                })
                .filter(|(_, s)| unasked.iter().any(|c| !s.lacks.contains(c)))
                .min_by_key(|(_, s)| s.requests)
                .map(|(p, _)| p.clone())
            else {
                break;
            };
            let mut chunks = Vec::new();
            for &c in &unasked {
                if chunks.len() >= per_request {
                    break;
                }
                let fits = self.budget_allows(self.layout.chunk_len(c));
                if !fits {
                    break;
                }
                if self.peers.get(&peer).is_some_and(|s| !s.lacks.contains(&c)) {
                    chunks.push(c);
                    self.inflight_bytes += u64::from(self.layout.chunk_len(c));
                }
            }
            if chunks.is_empty() {
                break;
            }
            for c in &chunks {
                unasked.remove(c);
            }
            out.push(self.issue(peer, chunks, now));
        }
        if unasked.is_empty() && self.config.max_copies > 1 {
            out.extend(self.steal(now));
        }
        out
    }

    fn steal(&mut self, now: Instant) -> Vec<ChunkRequest<P>> {
        let mut out = Vec::new();
        let slow: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, r)| {
                !r.stolen && now.saturating_duration_since(r.started) >= self.config.steal_after
            })
            .map(|(id, _)| *id)
            .collect();
        for id in slow {
            let Some(req) = self.requests.get_mut(&id) else {
                continue;
            };
            req.stolen = true;
            let slow_peer = req.peer.clone();
            let pending: Vec<u32> = req.pending.iter().copied().collect();
            // Group the copies by the peer that will serve them.
            let mut by_peer: BTreeMap<P, Vec<u32>> = BTreeMap::new();
            for c in pending {
                let i = c as usize;
                if self.held[i] || self.asked[i].len() >= self.config.max_copies {
                    continue;
                }
                let asked_peers: BTreeSet<&P> = self.asked[i]
                    .iter()
                    .filter_map(|r| self.requests.get(r))
                    .map(|r| &r.peer)
                    .collect();
                let candidate = self
                    .peers
                    .iter()
                    .filter(|(p, s)| {
                        **p != slow_peer
                            && !asked_peers.contains(p)
                            && self.can_serve(s, c)
                            && s.requests < self.config.max_requests_per_peer
                    })
                    .min_by_key(|(_, s)| s.requests)
                    .map(|(p, _)| p.clone());
                let Some(peer) = candidate else { continue };
                let list = by_peer.entry(peer).or_default();
                if list.len() < self.chunks_per_request()
                    && self.budget_allows(self.layout.chunk_len(c))
                {
                    list.push(c);
                    self.inflight_bytes += u64::from(self.layout.chunk_len(c));
                }
            }
            for (peer, chunks) in by_peer {
                if !chunks.is_empty() {
                    out.push(self.issue(peer, chunks, now));
                }
            }
        }
        out
    }

    fn issue(&mut self, peer: P, chunks: Vec<u32>, now: Instant) -> ChunkRequest<P> {
        let id = self.next_id;
        self.next_id += 1;
        for &c in &chunks {
            self.asked[c as usize].push(id);
        }
        if let Some(slot) = self.peers.get_mut(&peer) {
            slot.requests += 1;
        }
        self.requests.insert(
            id,
            RequestSlot {
                peer: peer.clone(),
                chunks: chunks.iter().copied().collect(),
                pending: chunks.iter().copied().collect(),
                started: now,
                stolen: false,
            },
        );
        ChunkRequest { id, peer, chunks }
    }

    /// Forgets chunk `c` of request `id` (answered or abandoned).
    fn settle(&mut self, id: RequestId, c: u32) {
        if let Some(req) = self.requests.get_mut(&id)
            && req.pending.remove(&c)
        {
            self.inflight_bytes = self
                .inflight_bytes
                .saturating_sub(u64::from(self.layout.chunk_len(c)));
        }
        if let Some(asked) = self.asked.get_mut(c as usize) {
            asked.retain(|r| *r != id);
        }
    }

    /// Drops request `id`, re-queueing whatever it had not delivered.
    fn cancel(&mut self, id: RequestId) {
        let Some(req) = self.requests.get(&id) else {
            return;
        };
        let pending: Vec<u32> = req.pending.iter().copied().collect();
        for c in pending {
            self.settle(id, c);
        }
        if let Some(req) = self.requests.remove(&id)
            && let Some(slot) = self.peers.get_mut(&req.peer)
        {
            slot.requests = slot.requests.saturating_sub(1);
        }
    }

    fn drop_peer(&mut self, peer: &P, standing: PeerStanding) {
        if let Some(slot) = self.peers.get_mut(peer) {
            // A ban is never softened into "gone".
            if !matches!(slot.standing, PeerStanding::Banned { .. }) {
                slot.standing = standing;
            }
        }
        let ids: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, r)| &r.peer == peer)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.cancel(id);
        }
    }

    /// A peer sent chunk `index` for request `id`: verifies it against the
    /// manifest's hash. Only `Accept` means the bytes may be written.
    pub fn on_chunk(&mut self, id: RequestId, index: u32, bytes: &[u8]) -> ChunkVerdict<P> {
        self.on_chunk_digest(id, index, bytes.len(), &Sha256::digest(bytes).into())
    }

    /// `on_chunk` for a chunk already hashed by the caller (off the driver's
    /// thread): `len` and `sha256` must be those of the received bytes.
    pub fn on_chunk_digest(
        &mut self,
        id: RequestId,
        index: u32,
        len: usize,
        sha256: &[u8; 32],
    ) -> ChunkVerdict<P> {
        let Some(req) = self.requests.get(&id) else {
            return ChunkVerdict::Stale;
        };
        if !req.pending.contains(&index) {
            // Asked, but another peer delivered it first.
            if req.chunks.contains(&index) && self.held.get(index as usize) == Some(&true) {
                return ChunkVerdict::Duplicate;
            }
            return ChunkVerdict::Unexpected;
        }
        let peer = req.peer.clone();
        self.settle(id, index);
        let i = index as usize;
        let expected = self.layout.chunk_sha256.get(i);
        let good =
            len == self.layout.chunk_len(index) as usize && expected.is_some_and(|h| h == sha256);
        if !good {
            self.drop_peer(&peer, PeerStanding::Banned { chunk: index });
            return ChunkVerdict::Lied { peer };
        }
        if let Some(slot) = self.peers.get_mut(&peer) {
            slot.failures = 0;
        }
        if self.held[i] {
            return ChunkVerdict::Duplicate;
        }
        self.held[i] = true;
        self.held_count += 1;
        if let Some(slot) = self.peers.get_mut(&peer) {
            slot.chunks_served += 1;
        }
        // Other copies in flight are now useless: stop counting them.
        let others: Vec<RequestId> = self.asked[i].clone();
        for other in others {
            self.settle(other, index);
        }
        ChunkVerdict::Accept
    }

    /// The peer of request `id` said it does not hold chunk `index`.
    pub fn on_not_held(&mut self, id: RequestId, index: u32) {
        let Some(req) = self.requests.get(&id) else {
            return;
        };
        if !req.pending.contains(&index) {
            return;
        }
        let peer = req.peer.clone();
        self.settle(id, index);
        if let Some(slot) = self.peers.get_mut(&peer) {
            slot.lacks.insert(index);
        }
    }

    /// Request `id` ended; unanswered chunks are re-queued. A failure counts
    /// against its peer, which is dropped after `max_peer_failures` in a row;
    /// a clean end that left chunks unanswered counts the same.
    pub fn on_request_end(&mut self, id: RequestId, end: RequestEnd) {
        let Some(req) = self.requests.get(&id) else {
            return;
        };
        let peer = req.peer.clone();
        let incomplete = !req.pending.is_empty();
        self.cancel(id);
        if end == RequestEnd::Failed || incomplete {
            let limit = self.config.max_peer_failures.max(1);
            let drop = self.peers.get_mut(&peer).is_some_and(|slot| {
                slot.failures += 1;
                slot.failures >= limit
            });
            if drop {
                self.drop_peer(&peer, PeerStanding::Gone);
            }
        }
    }

    /// `peer` vanished (disconnected, swarm gone): its requests are re-queued.
    pub fn on_peer_gone(&mut self, peer: &P) {
        self.drop_peer(peer, PeerStanding::Gone);
    }

    /// Where the fetch stands.
    pub fn status(&self) -> PlanStatus {
        if self.held_count == self.held.len() {
            return PlanStatus::Done;
        }
        if !self.requests.is_empty() {
            return PlanStatus::Running;
        }
        let missing: Vec<u32> = self.unservable().collect();
        if missing.is_empty() {
            PlanStatus::Running
        } else {
            PlanStatus::NoProviders { missing }
        }
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
